"""recipes/shared.py serves a recipe of any name, not only the shipped ones; --run-dir holds a run."""

from common.config import parse_config
from recipes.shared import mnist_parser, run_dirs


def test_a_new_recipe_gets_its_own_run_folder():
    assert run_dirs("newcomer/wine") == {"run_dir": "runs/newcomer/wine"}
    assert run_dirs("pytorch/mnist") == {"run_dir": "runs/mnist"}  # kept
    cfg, _ = parse_config(mnist_parser("wine", "newcomer/wine"), [])
    assert cfg.checkpoint.checkpoint_dir == "runs/newcomer/wine/checkpoints"
    assert cfg.output.metrics_file == "runs/newcomer/wine/metrics.jsonl"


def test_run_dir_moves_checkpoints_and_metrics_together_each_still_overridable():
    parser = mnist_parser("wine", "newcomer/wine")
    cfg, _ = parse_config(parser, ["--run-dir", "runs/try2"])
    assert cfg.checkpoint.checkpoint_dir == "runs/try2/checkpoints"
    assert cfg.output.metrics_file == "runs/try2/metrics.jsonl"
    cfg, _ = parse_config(parser, ["--run-dir", "runs/try2", "--metrics-file", "m.jsonl"])
    assert (cfg.checkpoint.checkpoint_dir, cfg.output.metrics_file) == ("runs/try2/checkpoints",
                                                                        "m.jsonl")
    cfg, _ = parse_config(parser, ["--checkpoint-dir", ""])  # off stays off
    assert cfg.checkpoint.checkpoint_dir == "" and cfg.output.metrics_file.startswith("runs/")
    cfg, _ = parse_config(parser, ["--run-dir", "r", "--mpi-groups", "1"])
    assert cfg.changed == ("run_dir",)
