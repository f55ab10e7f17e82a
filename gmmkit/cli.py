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
import signal
import sys
from typing import Sequence

from . import __version__
from .commands.flags import describe, flag_of_field
from .errors import InputError
from .signals import Interrupted, raise_on_signals, signal_name

EXIT_BAD_INPUT = 2
EXIT_STOPPED = 1  # as a run or a study that ends stopped
# What a command stopped before its end leaves (each writes its results only once complete)
STOPPED = {
    None: "nothing was written",
    "train": "the run in its directory is as it was before",
    "reproduce": "nothing was evaluated; run it again with the same flags to continue",
    "sweep": "no table was written (the study's folder holds its study.json only)",
    "demo": "no table was written (the study's folder holds its study.json only)",
}


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
        with raise_on_signals():  # SIGTERM ends a command as Ctrl-C does: unwinding, cleaning up on the way
            return args.func(args, args.command_parser)
    except InputError as exc:
        print(f"gmmkit {args.command}: error: {describe(exc, flag_of_field(args))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:  # Interrupted, or a Ctrl-C that came before the handlers
        name = signal_name(exc.signum if isinstance(exc, Interrupted) else signal.SIGINT)
        print(f"gmmkit {args.command}: stopped by {name}; {STOPPED.get(args.command, STOPPED[None])}", file=sys.stderr)
        return EXIT_STOPPED


if __name__ == "__main__":
    sys.exit(main())
