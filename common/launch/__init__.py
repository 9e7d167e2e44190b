"""Launch: the commands a user runs around the workers: hvd-launch and the machine doctor."""
