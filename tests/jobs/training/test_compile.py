"""--compile (torch.compile) with Horovod's DistributedOptimizer: 2 compiled workers train as eager
ones do, and a checkpoint written compiled resumes eager and the other way round."""

from __future__ import annotations

from tests.support import (
    MNIST,
    copy_run,
    final_checkpoint,
    horovodrun,
    load_checkpoint,
    max_abs_diff,
    run_recipe,
)

EQUIV = ["--momentum", "0", "--lr-scaling", "none", "--warmup-epochs", "0", "--lr-decay", "none",
         "--base-lr", "0.1", "--epochs", "1", "--batch-size", "8", "--checkpoint-steps", "3"]


def test_compiled_workers_train_as_eager_ones_and_checkpoints_cross_over(tmp_path):
    # eager to step 6 (a checkpoint at 3); compiled to step 3, resumed eager to 6; the eager
    # step-3 checkpoint resumed compiled to 6: all three end at the same weights
    eager, _ = run_recipe(horovodrun, 2, MNIST, tmp_path / "eager", *EQUIV, "--max-steps", "6")
    compiled, _ = run_recipe(horovodrun, 2, MNIST, tmp_path / "compiled", *EQUIV, "--max-steps",
                             "3", "--compile")
    at3 = load_checkpoint(next((compiled / "ckpt").glob("ckpt-*-s000000003.pt")))
    assert not [k for k in at3["model"] if k.startswith("_orig_mod.")]  # the plain module's keys
    assert at3["config"]["compile"] is True
    _, then_eager = run_recipe(horovodrun, 2, MNIST, compiled, *EQUIV, "--max-steps", "6")
    assert then_eager.stdout.startswith("resumed from ")
    assert "differ from the saved" not in then_eager.stdout  # the same training, compiled or not
    later = copy_run(eager, tmp_path / "later")
    next((later / "ckpt").glob("ckpt-*-s000000006.pt")).unlink()
    run_recipe(horovodrun, 2, MNIST, later, *EQUIV, "--max-steps", "6", "--compile")
    reference = final_checkpoint(eager)
    for out in (compiled, later):
        weights = final_checkpoint(out)
        assert weights["step"] == 6
        assert max_abs_diff(weights["model"], reference["model"]) < 1e-5
