"""A run's ``summary.json`` as its epochs finish, and an elastic run's restarts in words: plain functions of the
records, no TensorFlow."""

from __future__ import annotations

from typing import Optional

from ..checks import is_finite_number


def record_epoch(summary: dict, record: dict, target_loss: Optional[float]) -> bool:
    """Update ``summary`` with a finished epoch's metrics ``record``: the epochs, the final and best validation
    losses, and the status the epoch ends the run in (``diverged`` at a NaN or infinite loss, ``reached_target``
    at the target). Returns whether the epoch's losses are finite, so its weights are worth a checkpoint."""
    val_loss = record["val_loss"]
    summary.update(epochs=record["epoch"], final_val_loss=val_loss)
    summary["tensorflow"] = tensorflow_of_epochs(summary.get("tensorflow", []), [record])
    if is_finite_number(val_loss) and (summary["best_val_loss"] is None or val_loss < summary["best_val_loss"]):
        summary["best_val_loss"] = val_loss
    if not (is_finite_number(record["train_loss"]) and is_finite_number(val_loss)):
        summary["status"] = "diverged"
        return False
    if target_loss is not None and val_loss <= target_loss:
        summary.update(status="reached_target", time_to_target_s=record["time_s"])
    return True


def resumed_at(epoch: int, step: int) -> str:
    """Where a run goes on from, in words: epochs finished and steps of the next one done."""
    if step:
        return f"step {step} of epoch {epoch + 1}"
    return f"the end of epoch {epoch}" if epoch else "the start"


def restart_line(entry: dict, max_restarts: Optional[int] = None) -> str:
    """One restart of an elastic run (an entry of ``summary.json``'s ``restarts``, :mod:`gmmkit.training.elastic`)
    in one line: its cause, the workers before and after (and the hosts, when they changed), where the run went
    on from and the steps done again."""
    n, before, after = entry.get("restart", "?"), entry.get("workers_before"), entry.get("workers_after")
    hosts = list(dict.fromkeys(entry.get("hosts_after") or ()))
    moved = entry.get("dropped") or list(dict.fromkeys(entry.get("hosts_before") or ())) != hosts
    where = f" on {', '.join(hosts)}" if hosts and moved else ""
    dropped = f" (dropped {', '.join(entry['dropped'])})" if entry.get("dropped") else ""
    head = "grown" if entry.get("grown") else f"restart {n}{f'/{max_restarts}' if max_restarts is not None else ''}"
    line = (
        f"{head}: {entry.get('cause', 'unknown cause')}; "
        f"going on with {after} worker{'' if after == 1 else 's'} ({before} before){where}{dropped} from "
        f"{resumed_at(entry.get('from_epoch') or 0, entry.get('from_step') or 0)}"
    )
    redone = entry.get("steps_redone")
    if redone is not None:
        line += f", {redone} step{'' if redone == 1 else 's'} done again"
    lost = entry.get("lost_s")
    return line + (f" ({lost:.1f} s since that state)" if is_finite_number(lost) else "")


def tensorflow_of_epochs(lanes: list[dict], records: list[dict]) -> list[dict]:
    """Which TensorFlow made which epochs (which lane: README "Two lanes"; their kernels give other bits, so an
    exact run continued in the other lane is exact from the switch on): ``lanes`` (runs of consecutive epochs,
    ``[{"tensorflow": "2.15.1", "epochs": [1, 3]}, {"tensorflow": "2.21.0", "epochs": [4, 4]}]``) followed by
    ``records``. A record from before the field was written counts as made by ``None``."""
    lanes = [dict(lane, epochs=list(lane["epochs"])) for lane in lanes]
    for record in records:
        version, epoch = record.get("tensorflow"), record["epoch"]
        if lanes and lanes[-1]["tensorflow"] == version and lanes[-1]["epochs"][1] == epoch - 1:
            lanes[-1]["epochs"][1] = epoch
        else:
            lanes.append({"tensorflow": version, "epochs": [epoch, epoch]})
    return lanes
