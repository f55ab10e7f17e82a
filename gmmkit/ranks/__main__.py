"""``python -m gmmkit.ranks TASK ...``: see :mod:`gmmkit.ranks`."""

import sys

from . import main

sys.exit(main())
