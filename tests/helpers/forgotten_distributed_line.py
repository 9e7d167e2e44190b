"""Helper job: an MNIST recipe with its distributed line left out (the optimizer not wrapped).

``forgotten_distributed_line.py pytorch|keras [recipe flags]``: the recipe's own main, with the
core's ``distributed_optimizer`` (what ``sgd(...)`` wraps the optimizer in) replaced by one that
hands the plain optimizer back, as a user who built a plain optimizer would have it.
"""

import sys

from common.faults.ending import run_main

if __name__ == "__main__":
    framework, argv = sys.argv[1], sys.argv[2:]
    if framework == "keras":
        import recipes.tensorflow.keras_mnist as recipe
        from common.loop import keras_fit as core
    else:
        import recipes.pytorch.mnist as recipe
        from common.frameworks import torch_backend as core

    core.distributed_optimizer = lambda optimizer, *_: optimizer
    run_main(lambda: recipe.main(argv))
