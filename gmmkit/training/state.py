"""A run's state: ``metrics.jsonl``, ``summary.json`` and ``checkpoint.npz``, which agree at every instant.

The three files are links into ``state``, itself a link to one folder of ``.state/`` that is never changed once
written. Each commit writes a new state folder, then swaps the ``state`` link with one ``rename``: a reader, a
crash or a kill at any moment sees either the previous state or the next, never a mix of the two, and never a
half-written file. Only the folder before the current one is kept beside it (a reader may still be in it).
:class:`~gmmkit.training.rundir.RunDir` decides who may commit and when; this module is how.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import RunDirError
from ..files import atomic_write_text, to_json, umask, write_jsonl
from ..signals import deferred

STATE_FILES = ("metrics.jsonl", "summary.json", "checkpoint.npz")


class RunState:
    """The state folders of the run directory ``path``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.link = self.path / "state"

    def commit(self, records: list[dict], summary: dict, checkpoint: Optional[dict] = None) -> None:
        """Publish the next state: ``records``, ``summary`` and, when given, a new checkpoint (else the current
        one is kept, as a hard link)."""
        staged = None
        try:
            with deferred():  # a signal (gmmkit.signals) cannot fall between making the folder and knowing its name
                staged = self._new_folder()
            write_jsonl(staged / "metrics.jsonl", records)
            atomic_write_text(staged / "summary.json", to_json(summary, indent=2) + "\n")
            if checkpoint is not None:
                save_checkpoint(staged / "checkpoint.npz", checkpoint, records)
            elif (self.link / "checkpoint.npz").exists():
                os.link(self.link / "checkpoint.npz", staged / "checkpoint.npz")
            self._publish(staged)
        except BaseException:
            if staged is not None:
                shutil.rmtree(staged, ignore_errors=True)
            raise

    def link_files(self) -> None:
        """``metrics.jsonl`` and the others as links into ``state`` (replacing the plain files of an older
        layout, or of a copy that followed the links)."""
        if self.link.is_dir() and not self.link.is_symlink():  # a copy made with cp -L
            staged = self._copy_of(self.link)
            shutil.rmtree(self.link)
            self._publish(staged)
        for name in STATE_FILES:
            file = self.path / name
            if file.is_symlink():
                continue
            if file.exists() and not self.link.is_symlink():  # a run written before state folders
                self._publish(self._copy_of(self.path))
            tmp = self.path / f".{name}.link.tmp"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(Path("state") / name)
            os.replace(tmp, file)

    def remove(self) -> None:
        for name in ("state", *STATE_FILES):
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.path / ".state", ignore_errors=True)

    def _copy_of(self, folder: Path) -> Path:
        """A new (unpublished) state folder holding copies of the state files found in ``folder``."""
        staged = self._new_folder()
        for name in STATE_FILES:
            if (folder / name).is_file():
                shutil.copy2(folder / name, staged / name)
        return staged

    def _new_folder(self) -> Path:
        root = self.path / ".state"
        root.mkdir(exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".state.", suffix=".tmp", dir=root))

    def _publish(self, staged: Path) -> None:
        """Make ``staged`` the current state: rename it into place, swap the ``state`` link, then drop all but
        the previous state."""
        root = staged.parent
        staged.chmod(0o777 & ~umask())
        number = 1 + max((int(p.name) for p in root.iterdir() if p.name.isdigit()), default=0)
        final = root / f"{number:06d}"
        os.replace(staged, final)
        tmp = self.path / ".state.link.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(Path(".state") / final.name)
        os.replace(tmp, self.link)
        fsync_dir(self.path)
        for old in sorted(p for p in root.iterdir() if p.name.isdigit() and int(p.name) < number - 1):
            shutil.rmtree(old, ignore_errors=True)


def checkpoint_bytes(checkpoint: dict) -> int:
    """Bytes of a checkpoint's arrays (weights and optimiser state)."""
    return sum(np.asarray(a).nbytes for key in ("weights", "optimizer") for a in checkpoint[key])


# Where in its epoch a checkpoint was taken (0 for every key at an epoch's end), with their types: see
# gmmkit.training.epochs.Position. A checkpoint written before mid-epoch states holds none of them.
POSITION = {"step": int, "loss_sum": float, "epoch_time_s": float, "step_time_s": float, "steps_timed": int}


def read_checkpoint(path: Path) -> dict:
    """A checkpoint file as ``{"epoch", "time_s", "weights", "optimizer", "records"}`` and the place in the next
    epoch it was taken at (:data:`POSITION`'s keys: ``step`` 0 at an epoch's end)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            names = sorted(n for n in f.files if n[:1] in "wo" and n[1:].isdigit())
            records = json.loads(str(f["records"])) if "records" in f.files else []
            return {
                "epoch": int(f["epoch"]),
                "time_s": float(f["time_s"]),
                "weights": [f[n] for n in names if n.startswith("w")],
                "optimizer": [f[n] for n in names if n.startswith("o")],
                "records": records,
                **{key: kind(f[key]) if key in f.files else kind(0) for key, kind in POSITION.items()},
            }
    except Exception as exc:
        raise RunDirError(f"{path}: unreadable checkpoint ({exc})") from None


def save_checkpoint(path: Path, checkpoint: dict, records: list[dict]) -> None:
    """Write ``checkpoint`` (``{"weights", "optimizer", "epoch", "time_s"}``, and inside an epoch
    :data:`POSITION`'s keys) and the epoch ``records`` up to it, flushed to disk, with the user's umask."""
    arrays = {f"w{i:04d}": w for i, w in enumerate(checkpoint["weights"])}
    arrays.update({f"o{i:04d}": v for i, v in enumerate(checkpoint["optimizer"])})
    # float64 and int64 scalars: the epoch's loss sum so far comes back with every bit
    arrays.update(
        {
            key: np.asarray(checkpoint[key], np.float64 if kind is float else np.int64)
            for key, kind in POSITION.items()
            if checkpoint.get(key)
        }
    )
    with open(path, "wb") as fh:
        np.savez(
            fh,
            epoch=np.int64(checkpoint["epoch"]),
            time_s=np.float64(checkpoint["time_s"]),
            records=np.array(to_json(records)),
            **arrays,
        )
        fh.flush()
        os.fsync(fh.fileno())
    path.chmod(0o666 & ~umask())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
