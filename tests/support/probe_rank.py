"""What one MPI rank sees, as one JSON line on stdout: ``python probe_rank.py [--horovod] [--loop]``.

Run by the emulated-host tests under mpirun (directly, or inside SLURM jobs). Reports the rank's
hostname, OpenMPI's local rank, the CPUs it may run on, and the sum of an mpi4py allreduce of
(rank + 1); with ``--horovod`` also Horovod's (horovod.tensorflow) rank, local rank, cross size and
allreduce sum. ``--loop`` reports with ``ready`` and then allreduces forever (the lost-host test
loses a host during it).
"""

import json
import os
import socket
import sys


def say(report: dict) -> None:
    """One write per line: mpirun forwards each rank's output in the pieces it was written in, and
    print()'s separate newline let two ranks' lines run together."""
    os.write(1, (json.dumps(report) + "\n").encode())


def main(argv):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    report = {
        "rank": comm.rank,
        "size": comm.size,
        "hostname": socket.gethostname(),
        "local_rank_env": os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK"),
        "cpus": sorted(os.sched_getaffinity(0)),
        "mpi_sum": comm.allreduce(comm.rank + 1),
    }
    if "--loop" in argv:
        say({"ready": True, **report})
        while True:
            comm.allreduce(1)
    if "--horovod" in argv:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import horovod.tensorflow as hvd
        import tensorflow as tf

        hvd.init()
        total = hvd.allreduce(tf.constant(float(hvd.rank() + 1)), op=hvd.Sum)
        report.update(
            hvd_rank=hvd.rank(),
            hvd_size=hvd.size(),
            hvd_local_rank=hvd.local_rank(),
            hvd_cross_size=hvd.cross_size(),
            hvd_sum=float(total.numpy()),
        )
        hvd.shutdown()
    say(report)


if __name__ == "__main__":
    main(sys.argv[1:])
