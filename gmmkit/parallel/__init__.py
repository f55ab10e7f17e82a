"""Running on many processes: Horovod (:mod:`.distributed`), starting ranks (:mod:`.launch`), the program
the ranks run (:mod:`.ranks`) and the notebook's MPI cluster (:mod:`.cluster`, :mod:`.training_run`)."""
