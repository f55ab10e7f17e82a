"""What a resumed run may change: the rules of ``gmmkit train --resume`` (:meth:`RunDir.claim`)."""

from __future__ import annotations

from pathlib import Path

from ..config import BUILT_IN, RunConfig
from ..errors import RunDirError

# Settings a resumed run may change: they do not change the experiment, only how long or on what it runs, or
# how often it commits its state.
RESUMABLE = (
    "train.checkpoint_every",
    "train.epochs",
    "train.threads",
    "train.elastic",
    "train.min_workers",
    "train.max_restarts",
)


def resume_config(stored: RunConfig, requested: RunConfig) -> RunConfig:
    """The config a resumed run goes on with: ``stored`` (the run's own) with the changes of ``requested``
    that keep the experiment: more or fewer epochs, other threads, another ``checkpoint_every``, and another
    worker count for strong
    scaling (whose path does not depend on it); its folder is the requested one (where the run is now, also
    when it was copied or renamed since it was made). Any other difference raises, naming every field."""
    allowed = set(RESUMABLE) | ({"train.workers"} if stored.train.strategy == "strong" else set())
    old, new = _flat(stored.to_dict()), _flat(requested.to_dict())
    old["data.dataset"], new["data.dataset"] = _resolved(old["data.dataset"]), _resolved(new["data.dataset"])
    old["out"] = new["out"]  # a run's folder is where it is now: a copied or renamed run continues there
    changed = sorted(k for k in old if old[k] != new.get(k))
    refused = [k for k in changed if k not in allowed]
    if refused:
        raise RunDirError(
            f"--resume: the run in {requested.out} was made with other values of "
            f"{', '.join(refused)}; a resumed run continues the same experiment (it may change "
            f"{', '.join(sorted(allowed))})",
            field=refused[0],
            detail=f"the run in {requested.out} was made with {_show(old, refused)}; a resumed run "
            f"continues the same experiment (it may change {', '.join(sorted(allowed))})",
        )
    return requested.replace(out=_resolved(requested.out), data={"dataset": stored.data.dataset})


def changes(old: RunConfig, new: RunConfig) -> dict:
    """``{field: [old, new]}`` of every setting that differs between two configs."""
    a, b = _flat(old.to_dict()), _flat(new.to_dict())
    return {k: [a[k], b.get(k)] for k in sorted(a) if a[k] != b.get(k)}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _resolved(path: str) -> str:
    return path if path in BUILT_IN else str(Path(path).resolve())


def _show(values: dict, keys: list[str]) -> str:
    return ", ".join(f"{k}={values[k]!r}" for k in keys)
