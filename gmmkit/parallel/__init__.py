"""Running on many processes: Horovod and MPI (:mod:`.distributed`), where ranks run (:mod:`.placement`) and
starting them (:mod:`.launch`, the only place mpirun starts). Below :mod:`gmmkit.training`; the program the
ranks run is :mod:`gmmkit.ranks`, the notebook's MPI cluster :mod:`gmmkit.cluster`."""
