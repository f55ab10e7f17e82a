"""The ``gmmkit`` command line (also ``python -m gmmkit``).

Every subcommand turns its flags into a :class:`~gmmkit.config.RunConfig` (or reads one with
``--config``) and calls the library; nothing here computes anything itself. Errors in flags, fields or
files print one line naming them and exit with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from . import __version__
from .config import DEFAULT_TARGET_LOSS, RunConfig
from .errors import CLIError, ConfigError, InputError

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors (unknown flag, bad number, unknown choice) in one line like gmmkit's own."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --- flags -----------------------------------------------------------------------------------

def _target(text: str):
    if text.lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', received {text!r}") from None


def add_run_flags(p: argparse.ArgumentParser, out_default: str = "runs/latest") -> None:
    d = RunConfig()
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.data.dataset, help="'phantoms' (built-in synthetic set) or cubes.npz")
    g.add_argument("--phantoms", type=int, default=d.data.size, metavar="N",
                   help="how many synthetic cubes to generate (default %(default)s)")
    g.add_argument("--train-size", type=int, default=None, metavar="N", help="default: all but the validation set")
    g.add_argument("--val-size", type=int, default=d.data.val_size, metavar="N")
    g.add_argument("--cube", type=int, default=d.data.cube, metavar="S")
    g = p.add_argument_group("model")
    g.add_argument("--components", type=int, default=d.model.components, metavar="K")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=d.train.batch_size, metavar="B")
    g.add_argument("--lr", type=float, default=d.train.lr, metavar="X")
    g.add_argument("--epochs", type=int, default=d.train.epochs, metavar="MAX")
    g.add_argument("--target-loss", type=_target, default=DEFAULT_TARGET_LOSS, metavar="X",
                   help="stop when the validation loss reaches X ('none': never; default %(default)s)")
    g.add_argument("--warmup-epochs", type=int, default=d.train.warmup_epochs, metavar="E")
    g.add_argument("--seed", type=int, default=d.train.seed)
    g.add_argument("--threads", type=int, default=None, help="CPU threads per rank (default: cores / ranks)")
    p.add_argument("--out", default=out_default, metavar="DIR")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="start from this config.json; flags given explicitly override it")


def input_path(flag: str, path: str, kind: str = "file") -> Path:
    """The ``path`` an input flag names, checked: an existing ``kind`` ("file" or "folder")."""
    p = Path(path)
    if not p.exists():
        raise CLIError(f"{flag} {path}: no such {kind}")
    if p.is_dir() != (kind == "folder"):
        raise CLIError(f"{flag} {path}: expected a {kind}, found a {'folder' if p.is_dir() else 'file'}")
    return p


def output_path(flag: str, path: str, kind: str = "folder") -> Path:
    """The ``path`` an output flag names, checked without creating anything: a ``kind`` ("file" or
    "folder") that exists or can be created, in a folder this process may write."""
    p = Path(path).absolute()
    existing = next(q for q in (p, *p.parents) if q.exists())
    if existing == p:
        if p.is_dir() != (kind == "folder"):
            raise CLIError(f"{flag} {path}: expected a {kind}, found a {'folder' if p.is_dir() else 'file'}")
        where = p if kind == "folder" else p.parent
    elif not existing.is_dir():
        raise CLIError(f"{flag} {path}: expected a {kind} that can be created, but {existing} is a file")
    else:
        where = existing
    if not os.access(where, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} {path}: cannot write in {where} (permission denied)")
    return p


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> RunConfig:
    """A validated RunConfig from the flags (explicit flags override ``--config``); its dataset exists and
    its output folder can be written."""
    try:
        base = RunConfig.load(args.config) if args.config else RunConfig()
    except ConfigError as exc:
        raise CLIError(f"--config {exc}") from None
    explicit = {a.dest for a in parser._actions if a.dest in vars(args)
                and getattr(args, a.dest) != parser.get_default(a.dest)}

    def pick(dest, current):
        return getattr(args, dest) if (dest in explicit or not args.config) else current

    raw = base.to_dict()
    raw["data"].update(dataset=pick("dataset", base.data.dataset), size=pick("phantoms", base.data.size),
                       train_size=pick("train_size", base.data.train_size),
                       val_size=pick("val_size", base.data.val_size), cube=pick("cube", base.data.cube),
                       seed=pick("seed", base.data.seed))
    raw["model"].update(components=pick("components", base.model.components))
    raw["train"].update(batch_size=pick("batch_size", base.train.batch_size), lr=pick("lr", base.train.lr),
                        epochs=pick("epochs", base.train.epochs),
                        target_loss=pick("target_loss", base.train.target_loss),
                        warmup_epochs=pick("warmup_epochs", base.train.warmup_epochs),
                        seed=pick("seed", base.train.seed), threads=pick("threads", base.train.threads))
    for dest, key in (("strategy", "strategy"), ("workers", "workers")):
        if dest in vars(args):
            raw["train"][key] = pick(dest, base.train.__dict__[key])
    raw["out"] = pick("out", base.out)
    try:
        cfg = RunConfig.from_dict(raw)
    except ConfigError as exc:
        raise CLIError(_flag_name(str(exc))) from None
    if cfg.data.dataset != "phantoms":
        input_path("--dataset", cfg.data.dataset)
    output_path("--out", cfg.out)
    return cfg


_FLAG_OF_FIELD = {
    "data.dataset": "--dataset", "data.size": "--phantoms", "data.train_size": "--train-size",
    "data.val_size": "--val-size", "data.cube": "--cube", "data.seed": "--seed",
    "model.components": "--components", "train.batch_size": "--batch-size", "train.lr": "--lr",
    "train.epochs": "--epochs", "train.target_loss": "--target-loss", "train.seed": "--seed",
    "train.warmup_epochs": "--warmup-epochs", "train.threads": "--threads", "train.strategy": "--strategy",
    "train.workers": "--workers", "out": "--out",
}


def _flag_name(message: str) -> str:
    """Rewrite 'train.lr: expected ...' as '--lr (train.lr): expected ...'."""
    field, _, rest = message.partition(":")
    flag = _FLAG_OF_FIELD.get(field)
    return f"{flag} ({field}):{rest}" if flag else message


# --- commands --------------------------------------------------------------------------------

# Each subcommand lives in gmmkit/commands/<name>.py and exposes register(subparsers), which adds its
# parser and sets func=run(args, parser) -> exit code. Order here is the order of `gmmkit --help`.
COMMANDS = ("train", "sweep", "lr-find", "demo", "stop", "prepare-luna", "prepare-lidc", "synthesize", "bench")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = _Parser(prog="gmmkit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"gmmkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"gmmkit.commands.{name.replace('-', '_')}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    sub = parser._subparsers._group_actions[0].choices[args.command]
    try:
        return args.func(args, sub)
    except InputError as exc:
        print(f"gmmkit {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
