"""Hosts from a host discovery script (``--host-discovery-script PATH``), as horovodrun takes one.

The script is a program that prints the hosts available now, one a line: ``HOST:SLOTS``, or ``HOST`` alone
for one slot (horovodrun's ``--host-discovery-script`` contract, its default of one slot a host); blank lines
are skipped, a line printed twice counts once. It exits 0; printing no host is allowed at a restart (none
is available now) but not at the start. gmmkit runs it at the start of a run, when an elastic run restarts
after a loss, and every few seconds while an elastic run has fewer workers than it asked for, to take back
hosts that came back (:mod:`gmmkit.training.growth`).

Errors name the flag's field (``placement.discovery``), so the command line shows ``--host-discovery-script``.
"""

from __future__ import annotations

import os

from ..errors import ConfigError
from . import launch
from .placement import HOST_NAME, Placement

FIELD = "placement.discovery"
TIMEOUT_S = 30.0  # a script that has not ended by then is killed, and its run refused (or not restarted)


def _bad(detail: str) -> ConfigError:
    return ConfigError(f"{FIELD}: {detail}", field=FIELD, detail=detail)


def check_script(path: str) -> str:
    """The absolute path of the script ``path`` names: a file this process may execute."""
    if not isinstance(path, str) or not path:
        raise _bad(f"expected the path of an executable script, received {path!r}")
    full = os.path.abspath(path)
    if not os.path.isfile(full):
        raise _bad(f"{path}: no such file")
    if not os.access(full, os.X_OK):
        raise _bad(f"{path}: not executable (chmod +x {path})")
    return full


def parse_output(text: str, script: str, allow_empty: bool = False) -> Placement:
    """The placement a script's output ``text`` lists (``HOST[:SLOTS]`` lines); errors name the script and the line.
    With ``allow_empty``, no host at all is a placement of none (a local placement is never what it means)."""
    pairs: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        name, colon, count = line.partition(":")
        if not HOST_NAME.match(name) or (colon and not (count.isdigit() and int(count) > 0)):
            raise _bad(f"{script} printed {line!r} on line {number}: expected HOST or HOST:SLOTS such as 'node1:2'")
        slots = int(count) if colon else 1
        if pairs.setdefault(name, slots) != slots:
            raise _bad(f"{script} printed host {name!r} twice, with {pairs[name]} and {slots} slots")
    if not pairs and not allow_empty:
        raise _bad(f"{script} printed no host (expected lines HOST:SLOTS)")
    if not pairs:  # none available now: no slot to restart on (never validated: a placement has hosts)
        return Placement((), "discovery", script)
    return Placement(tuple(pairs.items()), "discovery", script).validate()


def discover(path: str, allow_empty: bool = False) -> Placement:
    """Run the script ``path`` and return the hosts it prints (:func:`parse_output`); a script that cannot
    run, exits non-zero or runs past :data:`TIMEOUT_S` is an error naming it."""
    script = check_script(path)
    try:
        done = launch.run_program([script], TIMEOUT_S)
    except TimeoutError:
        raise _bad(f"{path} did not end within {TIMEOUT_S:g} s") from None
    except OSError as exc:
        raise _bad(f"{path}: cannot run it ({exc.strerror or exc})") from None
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or [""])[-1]
        raise _bad(f"{path} exited with status {done.returncode}" + (f": {said}" if said else ""))
    return parse_output(done.stdout, script, allow_empty)
