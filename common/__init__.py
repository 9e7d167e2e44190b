"""Shared core of horovod-recipes: runtime, config, LR schedule, checkpoints, metrics and output.

Framework-agnostic modules (config, schedule, metrics, checkpoint, output, data, failure) hold the
concepts; ``common.torch_backend`` adapts them to PyTorch and Horovod's ``horovod.torch``.
"""
