"""Helper job: an MNIST recipe with its distributed line left out (the optimizer not wrapped).

``forgotten_distributed_line.py pytorch|keras [recipe flags]``: the recipe's own main, with its
``distributed_optimizer`` replaced by one that hands the plain optimizer back, as a user who
forgot that line would have it.
"""

import sys

from common.faults.ending import run_main

if __name__ == "__main__":
    framework, argv = sys.argv[1], sys.argv[2:]
    if framework == "keras":
        import recipes.tensorflow.keras_mnist as recipe  # sets TF_USE_LEGACY_KERAS first

        recipe.distributed_optimizer = lambda optimizer, cfg: optimizer
    else:
        import recipes.pytorch.mnist as recipe

        recipe.distributed_optimizer = lambda optimizer, model, cfg: optimizer
    run_main(lambda: recipe.main(argv))
