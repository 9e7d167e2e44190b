"""Checkpoint: the store of a run's files, the save policy, and the save/restore protocol every rank runs."""
