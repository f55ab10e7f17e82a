"""Command-line flags, each declared once: its name, the config fields it sets, its type and its help.

A command adds the :class:`Flag` objects it takes with :func:`add_flags`; from the same declarations come
the parser's arguments, the reading of a run's flags into a :class:`~gmmkit.config.RunConfig`
(:func:`config_from_args`) and the flag an error names for a config field (:func:`flag_of_field`).

Flags that set a run's fields take their defaults from ``RunConfig()`` and count only when given: a flag
given with the default's value still overrides a ``--config`` file or a resumed run's own config.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from ..config import BACKENDS, RunConfig
from ..errors import CLIError, ConfigError, InputError
from ..parallel import placement
from ..strategies import STRATEGIES

FROM_CONFIG = object()  # the default of a run flag: RunConfig()'s value, and the flag counts only when given


@dataclass(frozen=True)
class Flag:
    """One flag: ``name`` (``--batch-size``), the config ``fields`` it sets (``train.batch_size``; none for a
    flag that sets no field), and argparse's ``type``, ``help``, ``metavar``, ``choices``, ``action``,
    ``default`` (``FROM_CONFIG``: the run config's, for flags that set run fields), ``dest`` and ``required``."""

    name: str
    fields: tuple = ()
    type: Optional[Callable] = None
    help: Optional[str] = None
    metavar: Optional[str] = None
    choices: Optional[tuple] = None
    action: Any = None
    default: Any = None
    dest: Optional[str] = None
    required: bool = False

    @property
    def key(self) -> str:
        """The attribute of the parsed arguments that holds the flag's value."""
        return self.dest or self.name.lstrip("-").replace("-", "_")

    def add_to(self, parser) -> None:
        kwargs = {
            k: v
            for k, v in (
                ("type", self.type),
                ("metavar", self.metavar),
                ("choices", self.choices),
                ("action", self.action),
                ("required", self.required or None),
            )
            if v is not None
        }
        default, help_text = self.default, self.help
        if default is FROM_CONFIG:
            shown = _run_default(self.fields[0])
            default = argparse.SUPPRESS
            if shown is not None and self.action is None and self.fields != ("out",):
                help_text = f"{help_text + ' ' if help_text else ''}(default {shown})"
        if default is not None:  # else argparse's own: None, or False for store_true
            kwargs["default"] = default
        parser.add_argument(self.name, dest=self.key, help=help_text, **kwargs)


def _run_default(field: str):
    value: Any = RunConfig()
    for part in field.split("."):
        value = getattr(value, part)
    return value


def target_loss(text: str) -> Optional[float]:
    """``--target-loss``: a number, or ``none``/``off`` for no target."""
    if text.lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', received {text!r}") from None


def run_flag(name: str, *fields: str, **kwargs) -> Flag:
    return Flag(name, fields, default=FROM_CONFIG, **kwargs)


# --- the declarations ----------------------------------------------------------------------------

DATA_FLAGS = (
    run_flag("--dataset", "data.dataset", help="'lidc' (LIDC-IDRI's nodules), 'phantoms' (synthetic) or a cubes.npz"),
    run_flag("--phantoms", "data.size", type=int, metavar="N", help="how many synthetic cubes to generate"),
    Flag("--train-size", ("data.train_size",), int, "default: all but the validation set", "N", default=FROM_CONFIG),
    run_flag("--val-size", "data.val_size", type=int, metavar="N"),
    run_flag("--cube", "data.cube", type=int, metavar="S"),
    run_flag(
        "--min-readers", "data.min_readers", type=int, metavar="N", help="lidc: nodules at least N readers marked"
    ),
    run_flag(
        "--max-slice-thickness",
        "data.max_slice_thickness",
        type=float,
        metavar="MM",
        help="lidc: scans whose slices are at most MM thick",
    ),
    run_flag(
        "--min-diameter",
        "data.min_diameter_mm",
        type=float,
        metavar="MM",
        help="lidc: nodules whose mean reader diameter is at least MM",
    ),
)
MODEL_FLAGS = (run_flag("--components", "model.components", type=int, metavar="K"),)
CHECKPOINT_EVERY = Flag(
    "--checkpoint-every",
    ("train.checkpoint_every",),
    help="also commit the run's state inside an epoch, every N steps (200) or seconds (30s): weights, Adam's "
    "state and the step reached, from which --resume continues the same samples (default: at epoch ends only)",
    metavar="N|Ns",
    default=FROM_CONFIG,
)
OPTIMISATION_FLAGS = (
    run_flag("--batch-size", "train.batch_size", type=int, metavar="B"),
    run_flag("--lr", "train.lr", type=float, metavar="X"),
    run_flag("--epochs", "train.epochs", type=int, metavar="MAX"),
    Flag(
        "--target-loss",
        ("train.target_loss",),
        target_loss,
        "stop when the validation loss reaches X ('none': never)",
        "X",
        default=FROM_CONFIG,
    ),
    run_flag("--warmup-epochs", "train.warmup_epochs", type=int, metavar="E"),
    run_flag("--seed", "data.seed", "train.seed", type=int),
    Flag("--threads", ("train.threads",), int, "CPU threads per rank (default: cores / ranks)", default=FROM_CONFIG),
    run_flag(
        "--exact",
        "train.exact",
        action="store_true",
        help="the same optimisation path to the last bit on any number of ranks (micro-shards, exact sums)",
    ),
    Flag(
        "--micro-shards",
        ("train.micro_shards",),
        int,
        "exact mode: micro-shards per base batch (default: the batch size, one sample each); a rank computes "
        "its micro-shards together, in calls of a multiple of 16 samples (G micro-shards, at most 64 samples)",
        "M",
        default=FROM_CONFIG,
    ),
    CHECKPOINT_EVERY,
)
STRATEGY = run_flag("--strategy", "train.strategy", choices=STRATEGIES)
WORKERS = run_flag("--workers", "train.workers", type=int, metavar="N", help="Horovod ranks (one per GPU)")
BACKEND = run_flag(
    "--backend",
    "train.backend",
    choices=BACKENDS,
    help="the ranks' collectives: horovod, or mpi (mpi4py, no Horovod needed) (default: horovod where it is "
    "installed, else mpi)",
)
ELASTIC_FLAGS = (
    run_flag(
        "--elastic",
        "train.elastic",
        action="store_true",
        help="strong scaling: when a rank or a host is lost, restart on the hosts that answer (the hostfile read "
        "again) from the last checkpoint, up to --max-restarts times; exact mode keeps the path to the last bit",
    ),
    run_flag(
        "--min-workers", "train.min_workers", type=int, metavar="N", help="with --elastic: the fewest to go on with"
    ),
    run_flag("--max-restarts", "train.max_restarts", type=int, metavar="N", help="with --elastic: restarts allowed"),
)
CONFIG = Flag("--config", metavar="FILE", help="start from this config.json; flags given explicitly override it")
HOSTS = Flag(
    "--hosts",
    ("placement.hosts",),
    metavar="H:N,H:N",
    help="hosts and their slots, e.g. node1:2,node2:2 (OpenMPI's --host)",
)
HOSTFILE = Flag(
    "--hostfile", ("placement.hostfile",), metavar="FILE", help="an OpenMPI hostfile: one 'HOST slots=N' per line"
)


# --- parsers -------------------------------------------------------------------------------------


def add_command(sub, name: str, help: str, run: Callable, doc: Optional[str] = None) -> argparse.ArgumentParser:
    """A subcommand's parser, described by its module's docstring ``doc`` (``--help``), calling ``run(args,
    parser)``; the command adds its flags with :func:`add_flags`."""
    description = doc.replace("``", "").strip() if doc else None
    p = sub.add_parser(name, help=help, description=description)
    p.set_defaults(func=run)
    return p


def add_flags(parser: argparse.ArgumentParser, flags: Sequence[Flag], container=None) -> None:
    """Add ``flags`` to ``container`` (default ``parser``; an argument group) and record them on ``parser``, so
    that errors about their fields name them (:func:`flag_of_field`)."""
    for flag in flags:
        flag.add_to(container if container is not None else parser)
    parser.set_defaults(declared=(*(parser.get_default("declared") or ()), *flags))


def add_run_flags(p: argparse.ArgumentParser, out_default: str = "runs/latest") -> None:
    """The flags of a run's data, model and optimisation, ``--out`` (default ``out_default``) and ``--config``."""
    for title, flags in (("data", DATA_FLAGS), ("model", MODEL_FLAGS), ("optimisation", OPTIMISATION_FLAGS)):
        add_flags(p, flags, p.add_argument_group(title))
    add_flags(p, (run_flag("--out", "out", metavar="DIR", help=f"the run's folder (default {out_default})"), CONFIG))
    p.set_defaults(run_defaults=RunConfig().replace(out=out_default))


def run_out(args: argparse.Namespace) -> str:
    """The run folder the flags name: ``--out``, else the command's default."""
    return getattr(args, "out", None) or args.run_defaults.out


def add_placement_flags(p: argparse.ArgumentParser) -> None:
    """``--hosts`` and ``--hostfile``: where real ranks run (default: the SLURM allocation this runs in, else
    this machine); see :mod:`gmmkit.parallel.placement`."""
    g = p.add_argument_group("hosts (default: the SLURM allocation gmmkit runs in, else this machine)")
    add_flags(p, (HOSTS, HOSTFILE), g.add_mutually_exclusive_group())


def placement_from_args(args: argparse.Namespace) -> placement.Placement:
    """The :class:`~gmmkit.parallel.placement.Placement` of ``--hosts``/``--hostfile``, or of the SLURM
    allocation, or this machine."""
    return placement.resolve(args.hosts, args.hostfile)


def config_from_args(args: argparse.Namespace, base: Optional[RunConfig] = None) -> RunConfig:
    """A validated RunConfig: the flags given override ``base`` (default: the ``--config`` file, else the
    defaults); its dataset exists and its output folder can be written (:meth:`RunConfig.check_paths`)."""
    if base is None:
        try:
            base = RunConfig.load(args.config) if getattr(args, "config", None) else args.run_defaults
        except ConfigError as exc:
            raise CLIError(f"--config {exc}") from None
    raw = base.to_dict()
    for flag in getattr(args, "declared", ()):
        if hasattr(args, flag.key) and flag.default is FROM_CONFIG:  # given: it overrides
            for field in flag.fields:
                section, _, name = field.partition(".")
                if name:
                    raw[section][name] = getattr(args, flag.key)
                else:
                    raw[section] = getattr(args, flag.key)
    return RunConfig.from_dict(raw).check_paths()


def values_of(args: argparse.Namespace, section: str) -> dict:
    """``{name: value}`` of the declared flags that set fields of ``section`` (``--n`` sets ``synthesis.n``: n),
    the keyword arguments of that section's config."""
    found = {}
    for flag in getattr(args, "declared", ()):
        for field in flag.fields:
            head, _, name = field.partition(".")
            if head == section and name and hasattr(args, flag.key):
                found[name] = getattr(args, flag.key)
    return found


def flag_of_field(args: argparse.Namespace) -> dict:
    """``{config field: flag}`` of the flags the command declared."""
    return {field: flag.name for flag in getattr(args, "declared", ()) for field in flag.fields}


def describe(exc: InputError, flags: dict) -> str:
    """The one-line message of ``exc``, naming the flag of the field it is about when there is one."""
    flag = flags.get(exc.field) if exc.field else None
    if flag is None:
        return str(exc)
    return f"{flag} ({exc.field}): {exc.detail}" if exc.detail else f"{flag}: {exc}"
