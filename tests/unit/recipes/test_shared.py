"""recipes/shared.py serves a recipe of any name, not only the shipped ones."""

from recipes.shared import mnist_parser, run_dirs


def test_a_new_recipe_gets_its_own_run_folder():
    assert run_dirs("newcomer/wine") == {"checkpoint_dir": "runs/newcomer/wine/checkpoints",
                                         "metrics_file": "runs/newcomer/wine/metrics.jsonl"}
    assert run_dirs("pytorch/mnist")["checkpoint_dir"] == "runs/mnist/checkpoints"  # kept
    args = mnist_parser("wine", "newcomer/wine").parse_args([])
    assert args.checkpoint_dir == "runs/newcomer/wine/checkpoints"
