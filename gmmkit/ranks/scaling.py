"""The strong-scaling probe that runs on every rank of a benchmark job (``python -m gmmkit.ranks scaling``):
one-worker and n-worker epochs and single steps in turns, for ``gmmkit bench``'s ``strong_efficiency_n2`` and
its factors (:func:`gmmkit.study.bench.efficiency_factors`)."""

from __future__ import annotations

import os
import tempfile

import numpy as np

from .. import strategies
from ..config import RunConfig
from ..parallel import distributed
from ..study.bench import epoch_times
from ..timing import mean_seconds
from ..training import Trainer


def scaling_probe(cfg_json: str, rounds: int = 3) -> dict:
    """In a job of n ranks: one-worker epochs (rank 0 alone while the others sleep) and n-worker
    strong-scaling epochs, taking turns ``rounds`` times, each epoch from the config's initial weights on
    traced models. Measured in turns for the reason :func:`gmmkit.timing.take_turns` gives: a shared
    host's speed drifts by more than the efficiency's distance from 1.

    Then single steps, also in turns, that split the efficiency into factors (``steps_s``):
    ``alone_batch`` and ``alone_share``, rank 0 stepping the global batch and one rank's share with the
    other ranks asleep; ``side_by_side_share``, every rank stepping its share at once without a collective;
    ``collective_share``, the real n-worker step (on the config's backend: Horovod or mpi4py)."""
    cfg = RunConfig.from_json(cfg_json).replace(train={"strategy": "strong"})
    ctx = distributed.init(1, backend=cfg.train.backend)
    alone = cfg.replace(train={"workers": 1})
    together = cfg.replace(train={"workers": ctx.size})
    solo = Trainer(alone, ctx=distributed.LocalContext())
    team = Trainer(together, ctx=ctx)
    times: dict = {"1": [], str(ctx.size): []}
    with tempfile.TemporaryDirectory(prefix="gmmkit-scaling-") as tmp:
        for i in range(rounds):
            if ctx.is_chief:
                times["1"] += epoch_times(alone, os.path.join(tmp, f"one-{i}"), solo)
            ctx.barrier()
            times[str(ctx.size)] += epoch_times(together, os.path.join(tmp, f"all-{i}"), team)

    batch = cfg.train.batch_size
    plan = strategies.plan("strong", ctx.size, batch, cfg.train.lr)
    start = plan.offset(ctx.rank)
    # each trainer's input for the same samples (exact mode: micro-shards, the team's cut by rank)
    x_batch, x_share = solo.batch_of(np.arange(batch)), solo.batch_of(np.arange(start, start + plan.shares[ctx.rank]))
    x_team = team.batch_of(np.arange(batch)) if cfg.train.exact else x_share
    steps = {
        "alone_batch": (True, lambda: solo.step(x_batch, batch)),
        "alone_share": (True, lambda: solo.step(x_share, batch)),
        "side_by_side_share": (False, lambda: solo.step(x_share, batch)),
        "collective_share": (False, lambda: team.step(x_team, batch)),
    }
    return {"epochs_s": times, "ranks": ctx.size, "steps_s": _step_times(ctx, steps, rounds)}


def contention_probe(cfg_json: str, rounds: int = 3) -> dict:
    """In a job of n ranks on one host: a strong-scaling share's step on rank 0 alone, on every rank at once
    (no Horovod: the ranks only share the host), and the real n-worker step, in turns (their seconds: ``alone``,
    ``side_by_side``, ``team``). ``shared_host``, the second over the first: ranks on one host share its memory
    bandwidth and caches; ``step_overhead_s``, the third less the second: what the step's collectives and the
    ranks' waiting for each other add (one allreduce in default mode, a max and a sum in exact mode); and
    ``allreduce_s``, one allreduce of the gradients' bytes (the config's backend). The wall-time model's terms
    (:class:`gmmkit.study.perfmodel.PerfModel`)."""
    cfg = RunConfig.from_json(cfg_json).replace(train={"strategy": "strong"})
    ctx = distributed.init(1, backend=cfg.train.backend)
    solo = Trainer(cfg.replace(train={"workers": 1}), ctx=distributed.LocalContext())
    team = Trainer(cfg.replace(train={"workers": ctx.size}), ctx=ctx)
    batch = cfg.train.batch_size
    plan = strategies.plan("strong", ctx.size, batch, cfg.train.lr)
    start = plan.offset(ctx.rank)
    x_share = solo.batch_of(np.arange(start, start + plan.shares[ctx.rank]))
    x_team = team.batch_of(np.arange(batch)) if cfg.train.exact else x_share
    steps = {
        "alone": (True, lambda: solo.step(x_share, batch)),
        "side_by_side": (False, lambda: solo.step(x_share, batch)),
        "team": (False, lambda: team.step(x_team, batch)),
    }
    rounds_s = _step_times(ctx, steps, rounds, each=True)
    allreduce_s = ctx.time_gradient_allreduce(team.gradient_bytes())  # the model's c, in the same job
    if not rounds_s:  # the other ranks
        return {"ranks": ctx.size, "allreduce_s": allreduce_s}
    # each term from the steps of one round, taken minutes apart the machine's speed drifts by more than the
    # collectives cost (two medians apart, 2 and 15 ms were found for the same overhead): the median of the rounds
    alone, side, together = (np.asarray(rounds_s[key]) for key in ("alone", "side_by_side", "team"))
    return {
        "ranks": ctx.size,
        "allreduce_s": allreduce_s,
        **{key: float(np.median(t)) for key, t in rounds_s.items()},
        "shared_host": float(np.median(side / alone)),
        "step_overhead_s": float(np.median(together - side)),
    }


def _step_times(ctx, steps: dict, rounds: int, each: bool = False) -> dict:
    """Median seconds of each step of ``{key: (chief only, step)}`` (``each``: every round's), the steps taking
    turns, every rank waiting for the others before each (rank 0's figures; {} on the other ranks)."""
    step_times: dict = {key: [] for key in steps}
    for i in range(1 + 2 * rounds):  # the first round is untimed: oneDNN sets up its kernels per shape
        for key, (chief_only, step) in steps.items():
            ctx.barrier()
            if ctx.is_chief or not chief_only:
                seconds = mean_seconds(step, 4)
                if i:
                    step_times[key].append(seconds)
    if not ctx.is_chief:
        return {}
    return step_times if each else {key: float(np.median(t)) for key, t in step_times.items()}
