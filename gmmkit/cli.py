"""The ``gmmkit`` command line (also ``python -m gmmkit``).

Every subcommand turns its flags into a configuration (:class:`~gmmkit.config.RunConfig`, or the
command's own, read with ``--config`` where it has one) and calls the library; nothing here computes or
checks anything itself. Errors in flags, fields or files print one line naming them and exit with status 2:
the library's errors carry the config field they are about, and :func:`main` shows the field's flag (each flag
is declared once, with its fields: :mod:`gmmkit.commands.flags`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from . import __version__
from .commands.flags import describe, flag_of_field
from .errors import InputError

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors (unknown flag, bad number, unknown choice) in one line like gmmkit's own."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --- commands --------------------------------------------------------------------------------

# Each subcommand lives in gmmkit/commands/<name>.py and exposes register(subparsers), which adds its
# parser (its flags declared in gmmkit/commands/flags.py's way), sets func=run(args, parser) -> exit code, and
# returns the parser. Order here is `gmmkit --help`'s.
COMMANDS = (
    "train",
    "sweep",
    "lr-find",
    "demo",
    "reproduce",
    "stop",
    "prepare-luna",
    "prepare-lidc",
    "synthesize",
    "bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gmmkit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"gmmkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        command = importlib.import_module(f"gmmkit.commands.{name.replace('-', '_')}").register(sub)
        command.set_defaults(command_parser=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args, args.command_parser)
    except InputError as exc:
        print(f"gmmkit {args.command}: error: {describe(exc, flag_of_field(args))}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
