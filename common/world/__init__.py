"""World: a process's place in the job: Horovod's init and settings, threads, MPI groups, first screen."""
