"""The program every rank of a gmmkit job runs, other than ``gmmkit train`` itself: an entry point, like the CLI.

``mpirun -np N python -m gmmkit.ranks TASK ...`` (started by :mod:`gmmkit.parallel.launch`):

``batch PLAN.json``
    train the runs listed in the file (``[{"config": RunConfig as a dict, "resume": bool}, ...]``) one after
    another in this job, reusing one traced model (a sweep's real runs of one worker count:
    :func:`gmmkit.study.sweep.run_real_batch`); ``PLAN.stop`` appearing beside it stops the run in progress
    after its step and skips the rest;
``allreduce --bytes B [--repeats R]``
    time each backend's allreduce (Horovod's, mpi4py's) and plain MPI's, in turns
    (:func:`gmmkit.parallel.distributed.allreduce_probe`);
``scaling --config JSON [--rounds R]``
    time 1-worker and n-worker epochs and steps in turns (:func:`gmmkit.ranks.scaling.scaling_probe`);
``contention --config JSON [--rounds R]``
    time a share's step alone and on every rank at once (:func:`gmmkit.ranks.scaling.contention_probe`).

Rank 0 prints the result: one line per run for ``batch``, one JSON object on a line for the probes
(:func:`gmmkit.parallel.launch.run_json` reads it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import RunConfig
from ..parallel.distributed import allreduce_probe
from ..parallel.launch import launcher_rank
from ..signals import StopFlag
from ..training import train_many


def _batch(args) -> int:
    plan = json.loads(Path(args.plan).read_text())
    cfgs = [RunConfig.from_dict(item["config"]) for item in plan]
    stop = StopFlag().watch(Path(args.plan).with_suffix(".stop").exists)  # the sweep's stop, on every rank
    summaries = train_many(cfgs, resume=[bool(item.get("resume")) for item in plan], stop=stop)
    for cfg, summary in zip(cfgs, summaries if launcher_rank() == 0 else []):
        print(
            f"{cfg.train.strategy} n={cfg.train.workers}: {summary['status']} after {summary.get('epochs')} "
            f"epochs" + (f" ({summary['error']})" if summary.get("error") else ""),
            flush=True,
        )
    return 0


def _allreduce(args) -> dict:
    return allreduce_probe(args.bytes, args.repeats)


def _scaling(args) -> dict:
    from .scaling import contention_probe, scaling_probe

    return (scaling_probe if args.task == "scaling" else contention_probe)(args.config, args.rounds)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gmmkit.ranks")
    sub = p.add_subparsers(dest="task", required=True)
    b = sub.add_parser("batch")
    b.add_argument("plan", metavar="PLAN.json", help='a JSON list of {"config": ..., "resume": ...}')
    a = sub.add_parser("allreduce")
    a.add_argument("--bytes", type=int, default=4 << 20)
    a.add_argument("--repeats", type=int, default=20)
    for task in ("scaling", "contention"):
        s = sub.add_parser(task)
        s.add_argument("--config", required=True, help="a RunConfig as JSON")
        s.add_argument("--rounds", type=int, default=3, help="rounds of each measurement")
    args = p.parse_args(argv)
    if args.task == "batch":
        return _batch(args)
    result = _allreduce(args) if args.task == "allreduce" else _scaling(args)
    if launcher_rank() == 0:
        print(json.dumps(result), flush=True)
    return 0
