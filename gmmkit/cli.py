"""The ``gmmkit`` command line (also ``python -m gmmkit``).

Every subcommand turns its flags into a configuration (:class:`~gmmkit.config.RunConfig`, or the
command's own, read with ``--config`` where it has one) and calls the library; nothing here computes or
checks anything itself. Errors in flags, fields or files print one line naming them and exit with status 2:
the library's errors carry the config field they are about, and :func:`main` shows the field's flag.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from . import __version__
from .config import DEFAULT_TARGET_LOSS, RunConfig
from .errors import CLIError, ConfigError, InputError
from .parallel import placement

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
    g.add_argument("--dataset", default=d.data.dataset,
                   help="'lidc' (LIDC-IDRI's nodules, the default), 'phantoms' (synthetic) or a cubes.npz")
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
    g.add_argument("--exact", action="store_true",
                   help="the same optimisation path to the last bit on any number of ranks (micro-shards, exact sums)")
    g.add_argument("--micro-shards", type=int, default=None, metavar="M",
                   help="exact mode: micro-shards per base batch (default: the batch size, one sample each)")
    p.add_argument("--out", default=out_default, metavar="DIR")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="start from this config.json; flags given explicitly override it")


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser,
                     base: RunConfig | None = None) -> RunConfig:
    """A validated RunConfig from the flags: explicit flags override ``base`` (default: the ``--config``
    file, else the defaults); its dataset exists and its output folder can be written
    (:meth:`RunConfig.check_paths`)."""
    from_file = base is not None or bool(args.config)
    if base is None:
        try:
            base = RunConfig.load(args.config) if args.config else RunConfig()
        except ConfigError as exc:
            raise CLIError(f"--config {exc}") from None
    explicit = {dest for dest, value in vars(args).items() if value != parser.get_default(dest)}

    def pick(dest, current):
        return getattr(args, dest) if (dest in explicit or not from_file) else current

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
                        seed=pick("seed", base.train.seed), threads=pick("threads", base.train.threads),
                        exact=pick("exact", base.train.exact), micro_shards=pick("micro_shards", base.train.micro_shards))
    for dest, key in (("strategy", "strategy"), ("workers", "workers")):
        if dest in vars(args):
            raw["train"][key] = pick(dest, base.train.__dict__[key])
    raw["out"] = pick("out", base.out)
    return RunConfig.from_dict(raw).check_paths()


def add_placement_flags(p: argparse.ArgumentParser) -> None:
    """``--hosts`` and ``--hostfile``: where real ranks run (default: the SLURM allocation this runs in, else
    this machine); see :mod:`gmmkit.parallel.placement`."""
    g = p.add_argument_group("hosts (default: the SLURM allocation gmmkit runs in, else this machine)")
    where = g.add_mutually_exclusive_group()
    where.add_argument("--hosts", default=None, metavar="H:N,H:N",
                       help="hosts and their slots, e.g. node1:2,node2:2 (OpenMPI's --host)")
    where.add_argument("--hostfile", default=None, metavar="FILE",
                       help="an OpenMPI hostfile: one 'HOST slots=N' per line")


def placement_from_args(args: argparse.Namespace) -> "placement.Placement":
    """The :class:`~gmmkit.parallel.placement.Placement` of ``--hosts``/``--hostfile``, or of the SLURM
    allocation, or this machine."""
    return placement.resolve(args.hosts, args.hostfile)


# The flag of each config field that add_run_flags sets; a command adds its own with set_defaults(flags=...).
FLAG_OF_FIELD = {
    "data.dataset": "--dataset", "data.size": "--phantoms", "data.train_size": "--train-size",
    "data.val_size": "--val-size", "data.cube": "--cube", "data.seed": "--seed",
    "model.components": "--components", "train.batch_size": "--batch-size", "train.lr": "--lr",
    "train.epochs": "--epochs", "train.target_loss": "--target-loss", "train.seed": "--seed",
    "train.warmup_epochs": "--warmup-epochs", "train.threads": "--threads", "train.strategy": "--strategy",
    "train.exact": "--exact", "train.micro_shards": "--micro-shards",
    "train.workers": "--workers", "out": "--out",
    "placement.hosts": "--hosts", "placement.hostfile": "--hostfile",  # add_placement_flags
}


def describe(exc: InputError, flags: dict) -> str:
    """The one-line message of ``exc``, naming the flag of the field it is about when there is one."""
    flag = flags.get(exc.field) if exc.field else None
    if flag is None:
        return str(exc)
    return f"{flag} ({exc.field}): {exc.detail}" if exc.detail else f"{flag}: {exc}"


# --- commands --------------------------------------------------------------------------------

# Each subcommand lives in gmmkit/commands/<name>.py and exposes register(subparsers), which adds its
# parser, sets func=run(args, parser) -> exit code, and returns the parser. Order here is `gmmkit --help`'s.
COMMANDS = ("train", "sweep", "lr-find", "demo", "reproduce", "stop", "prepare-luna", "prepare-lidc", "synthesize",
            "bench")


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
        flags = {**FLAG_OF_FIELD, **getattr(args, "flags", {})}
        print(f"gmmkit {args.command}: error: {describe(exc, flags)}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
