"""Test infrastructure for issue 17 ("Tested for real on this one machine").

* :mod:`.hosts`: emulated hosts (network + UTS namespaces on a bridge), :class:`~.hosts.EmulatedHosts`;
* ``gmk-rsh``: the rsh agent that lets OpenMPI's mpirun start daemons on them;
* :mod:`.slurm`: a real SLURM (munged, slurmctld, one slurmd per emulated host),
  :class:`~.slurm.SlurmCluster`;
* :mod:`.fixtures`: the pytest fixtures ``emulated_hosts`` and ``slurm_cluster`` (registered by
  ``tests/conftest.py``).
"""
