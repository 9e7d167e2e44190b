"""The one loop and the checkpoint protocol in one process, on a small numpy backend.

``NumpyBackend`` is a complete ``common.frameworks.backend.Backend`` for linear regression by SGD with a
world of one (collectives are identities): enough to check what the loop and the checkpoint
manager decide, without Horovod. The multi-process tests run the same code for real.
"""

from __future__ import annotations

import json
import pickle
import time

import numpy as np
import pytest

from common.base.errors import UserError
from common.checkpoint.manager import CheckpointManager
from common.config.core import TrainConfig
from common.frameworks.backend import Backend
from common.loop.trainer import fit
from common.monitor.metrics import MetricSums
from common.world.runtime import Runtime

pytestmark = pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning",
                                        "ignore:invalid value:RuntimeWarning")


class NumpyBackend(Backend):
    checkpoint_suffix = "pkl"

    def __init__(self, cfg: TrainConfig, n: int = 40, dim: int = 3, size: int = 1) -> None:
        rng = np.random.default_rng(0)
        self.x = rng.normal(size=(n, dim))
        self.y = self.x @ np.arange(1.0, dim + 1)
        self.w = np.zeros(dim)
        self.v = np.zeros(dim)  # momentum
        self.cfg, self.lr, self.size = cfg, 0.0, size
        self.samples_per_step = cfg.run.batch_size
        self.n_train = self.n_val = n
        self.notices = []
        self.rng = np.random.default_rng(cfg.run.seed)

    def runtime(self):
        return Runtime(0, self.size, 0, 1)

    def allreduce_sum(self, values):
        return np.asarray(values, dtype=np.float64)

    def broadcast_object(self, obj, root_rank=0, name=None):
        return obj

    def allgather_object(self, obj, name=None):
        return [obj] * self.size

    def elastic_run(self, func):
        return func

    def seed(self, seed):
        self.rng = np.random.default_rng(seed)

    def rng_state(self):
        return self.rng.bit_generator.state

    def set_rng_state(self, state):
        self.rng.bit_generator.state = state

    def state(self):
        return {"w": self.w.copy(), "v": self.v.copy()}

    def snapshot(self):
        return self.state()

    def load_state(self, state, source):
        self.w, self.v = state["w"].copy(), state["v"].copy()

    def signature(self):
        return [["w", [len(self.w)]], ["v", [len(self.v)]]]

    def weights_finite(self):
        return bool(np.all(np.isfinite(self.w)))

    def broadcast_state(self):
        pass

    def write_checkpoint(self, f, record):
        pickle.dump(record, f)

    def read_checkpoint(self, path):
        with open(path, "rb") as f:
            return pickle.load(f)

    def train_batches(self, epoch, start):
        idx = self.train_indices(self.cfg.run.seed, epoch, start)
        for i in range(0, len(idx), self.samples_per_step):
            yield idx[i:i + self.samples_per_step]

    def set_lr(self, lr):
        self.lr = lr

    def zero_counters(self):
        return np.zeros(3)

    def read_counters(self, c):
        return np.asarray(c, dtype=np.float64)

    def train_step(self, batch):
        err = self.x[batch] @ self.w - self.y[batch]
        grad = self.x[batch].T @ err / len(batch)
        self.v = self.cfg.optimizer.momentum * self.v + grad
        self.w = self.w - self.lr * self.v
        self.rng.random()  # an RNG draw per step, as dropout would make
        return np.array([float(np.mean(err**2)) * len(batch), len(batch), 0.0])

    def evaluate(self):
        err = self.x @ self.w - self.y
        return MetricSums(self.val_layout, [float(np.sum(err**2)), len(err), 0.0])

    def scalar_writer(self, log_dir):
        raise AssertionError("no TensorBoard in these tests")


# The checkpoint mode of every config() (the default's, unless a test takes ``both_modes``).
MODE = {"checkpoint_mode": "async"}


@pytest.fixture(params=["async", "sync"])
def both_modes(request, monkeypatch):
    """The test once with background checkpoint writes (the default) and once without."""
    monkeypatch.setitem(MODE, "checkpoint_mode", request.param)
    return request.param


def config(tmp_path, **flags):
    base = dict(epochs=4, batch_size=8, base_lr=0.05, momentum=0.9, warmup_epochs=1,
                checkpoint_dir=str(tmp_path / "ckpt"), metrics_file=str(tmp_path / "m.jsonl"),
                progress=False, **MODE)
    return TrainConfig.from_flags(**{**base, **flags})


def epoch_records(tmp_path):
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "epoch"]


def test_loop_resumes_mid_epoch_exactly(tmp_path, both_modes):
    full = NumpyBackend(config(tmp_path / "a"))
    fit(full, config(tmp_path / "a"), "test/linear")
    part = NumpyBackend(config(tmp_path / "b", max_steps=7))
    fit(part, config(tmp_path / "b", max_steps=7), "test/linear")  # 5 steps/epoch: 2 into epoch 2
    again = NumpyBackend(config(tmp_path / "b"))
    fit(again, config(tmp_path / "b"), "test/linear")
    np.testing.assert_array_equal(full.w, again.w)
    np.testing.assert_array_equal(full.v, again.v)
    assert full.rng.random() == again.rng.random()  # the RNG stream continued where it stopped
    a, b = epoch_records(tmp_path / "a"), epoch_records(tmp_path / "b")
    # Epoch 2 was cut by --max-steps; its partial record is replaced by the whole epoch's.
    assert [r["epoch"] for r in b] == [1, 2, 3, 4]
    assert b[1]["train_loss"] == pytest.approx(a[1]["train_loss"], rel=1e-12)  # partial sums kept
    assert [r["lr"] for r in b] == [r["lr"] for r in a]


def test_policy_decides_every_save(tmp_path):
    cfg = config(tmp_path, checkpoint_epochs=0, checkpoint_steps=5, keep_checkpoints=10, epochs=3)
    fit(NumpyBackend(cfg), cfg, "test/linear")
    steps = sorted(int(p.name[-13:-4]) for p in (tmp_path / "ckpt").glob("ckpt-*.pkl"))
    assert steps == [5, 10, 15]  # step checkpoints on epoch boundaries included


def test_checkpoint_of_another_world_restarts_its_epoch(tmp_path):
    cfg = config(tmp_path, max_steps=7)
    fit(NumpyBackend(cfg), cfg, "test/linear")
    cfg = config(tmp_path)
    two = NumpyBackend(cfg, size=2)  # 2 "workers": 2 steps per epoch now
    resume = CheckpointManager(two, cfg, "test/linear", steps_per_epoch=2).restore()
    assert (resume.epoch, resume.step, resume.epoch_sums) == (1, 2, None)
    assert "continuing from the start of epoch 2" in resume.notices[0]


def test_older_checkpoints_without_rng_or_sums_still_resume(tmp_path):
    cfg = config(tmp_path, max_steps=7)
    fit(NumpyBackend(cfg), cfg, "test/linear")
    [path] = [p for p in (tmp_path / "ckpt").glob("ckpt-*.pkl") if p.name.endswith("07.pkl")]
    record = pickle.loads(path.read_bytes())
    del record["rng"], record["epoch_sums"], record["config"]
    path.write_bytes(pickle.dumps(record))
    backend = NumpyBackend(config(tmp_path))
    resume = CheckpointManager(backend, config(tmp_path), "test/linear", 5).restore()
    assert (resume.epoch, resume.step, resume.epoch_sums) == (1, 7, None)
    np.testing.assert_array_equal(backend.w, record["state"]["w"])


def test_other_recipe_or_model_is_a_one_line_error(tmp_path):
    cfg = config(tmp_path, epochs=1)
    fit(NumpyBackend(cfg), cfg, "test/linear")
    with pytest.raises(UserError, match="saved by recipe 'test/linear', not 'test/other'"):
        CheckpointManager(NumpyBackend(cfg), cfg, "test/other").restore()
    with pytest.raises(UserError, match=r"different model or optimizer \(first differences: "
                                             r"\['v', \[3\]\]; \['v', \[4\]\]\)"):
        CheckpointManager(NumpyBackend(cfg, dim=4), cfg, "test/linear").restore()


def test_renamed_recipe_resumes_its_older_checkpoints(tmp_path):
    cfg = config(tmp_path, epochs=1)
    fit(NumpyBackend(cfg), cfg, "pytorch/imagenet")  # the ImageNet recipe's name before
    resume = CheckpointManager(NumpyBackend(cfg), cfg, "pytorch/imagenet_resnet50", 5).restore()
    assert (resume.epoch, resume.step) == (1, 5)


def test_divergence_stops_before_any_checkpoint_and_keeps_the_good_ones(tmp_path, capsys, both_modes):
    cfg = config(tmp_path, epochs=2, checkpoint_steps=2)
    fit(NumpyBackend(cfg), cfg, "test/linear")
    good = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").glob("ckpt-*")}
    assert len(good) == 4  # keep-3 vouched for, and the newest
    wild = config(tmp_path, epochs=4, checkpoint_steps=2, base_lr=1e200)
    with pytest.raises(UserError, match=r"training diverged: the loss is not finite \(NaN or inf\) "
                                        r"between step 11 and step 12 .* or use --on-divergence "
                                        r"rollback, then run again"):
        fit(NumpyBackend(wild), wild, "test/linear")
    assert {p.name: p.read_bytes() for p in (tmp_path / "ckpt").glob("ckpt-*")} == good
    assert "resuming with settings that differ from the saved run's: base_lr 0.05 -> 1e+200" \
        in capsys.readouterr().out


def test_checkpoints_nothing_vouched_for_yet_never_push_out_good_ones(tmp_path, both_modes):
    """The fault battery's case: a run resumed at a bad LR saves steps that pass the check
    before they diverge. Each counts toward keep-K only once a later check passed, so the
    good run's three newest checkpoints all survive (before: its saves pushed them out and the
    divergence left two)."""
    cfg = config(tmp_path, epochs=2, checkpoint_steps=1, keep_checkpoints=3)
    fit(NumpyBackend(cfg), cfg, "test/linear")
    saved = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").glob("ckpt-*")}
    good = {n: b for n, b in saved.items() if n != "ckpt-e00001-s000000007.pkl"}
    assert sorted(saved) == ["ckpt-e00001-s000000007.pkl", *sorted(good)]  # 3 and the newest
    wild = config(tmp_path, epochs=4, checkpoint_steps=1, keep_checkpoints=3, base_lr=3.0)
    with pytest.raises(UserError, match=r"ckpt-e00002-s000000011\.pkl set aside as \*\.diverged"):
        fit(NumpyBackend(wild), wild, "test/linear")
    left = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").glob("ckpt-*")
            if not p.name.endswith(".diverged")}
    assert left == good  # steps 8, 9 and 10, untouched


def test_a_loss_that_explodes_but_stays_finite_is_divergence_too(tmp_path):
    cfg = config(tmp_path, epochs=1)
    fit(NumpyBackend(cfg), cfg, "test/linear")
    wild = config(tmp_path, epochs=3, base_lr=1e4)  # finite, ever larger losses (seen above)
    with pytest.raises(UserError, match=r"training diverged: the loss \S+ is more than 1000 "
                                        r"times the run's first \("):
        fit(NumpyBackend(wild), wild, "test/linear")
    lenient = config(tmp_path, epochs=3, base_lr=1e4, divergence_factor=0)
    fit(NumpyBackend(lenient), lenient, "test/linear")  # the rule is off: trains to the end


def test_rollback_reloads_the_last_good_checkpoint_with_a_lower_lr(tmp_path, capsys, both_modes):
    cfg = config(tmp_path, epochs=1, checkpoint_steps=2)
    before = fit(NumpyBackend(cfg), cfg, "test/linear")["val_loss"]
    wild = config(tmp_path, epochs=4, checkpoint_steps=2, base_lr=8.0, on_divergence="rollback",
                  rollback_lr_factor=0.01)
    backend = NumpyBackend(wild)
    final = fit(backend, wild, "test/linear")
    out = capsys.readouterr().out
    rollbacks = [line for line in out.splitlines() if line.startswith("training diverged")]
    assert rollbacks and "training diverged: the loss" in rollbacks[0]
    assert "rollback 1 of 3: back to " in rollbacks[0] and "the LR now x0.01" in rollbacks[0]
    assert "ckpt-e00001-s000000005.pkl (step 5)" in rollbacks[0]  # the last sound weights
    assert "note: set aside as *.diverged (written after the last sound weights): " \
           "ckpt-e00001-s000000006.pkl" in out
    assert final["val_loss"] < before  # it went on learning at the lower LR
    assert [r["epoch"] for r in epoch_records(tmp_path)] == [1, 2, 3, 4]  # each epoch once
    newest = max((tmp_path / "ckpt").glob("ckpt-*.pkl"), key=lambda p: p.name)
    record = pickle.loads(newest.read_bytes())
    assert record["lr_factor"] == pytest.approx(0.01 ** len(rollbacks))
    assert np.all(np.isfinite(record["state"]["w"]))
    more = config(tmp_path, epochs=5, checkpoint_steps=2, base_lr=8.0, on_divergence="rollback",
                  rollback_lr_factor=0.01)
    fit(NumpyBackend(more), more, "test/linear")  # a restart keeps the lowered LR
    assert f"the LR stays x{0.01 ** len(rollbacks):g}" in capsys.readouterr().out


def test_rollbacks_that_do_not_help_end_in_the_divergence_error(tmp_path):
    cfg = config(tmp_path, epochs=1, checkpoint_steps=2)
    fit(NumpyBackend(cfg), cfg, "test/linear")
    good = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").glob("ckpt-*")}
    hopeless = config(tmp_path, epochs=4, checkpoint_steps=2, base_lr=1e200,
                      on_divergence="rollback", max_rollbacks=2, rollback_lr_factor=0.9)
    with pytest.raises(UserError, match=r"training diverged: .*set aside as \*\.diverged\); "
                                        r"2 rollback\(s\) did not help; last good checkpoint: "
                                        r"\S+ckpt-e00001-s000000005\.pkl\. Lower --base-lr or "
                                        r"raise --warmup-epochs, then run again") as failed:
        fit(NumpyBackend(hopeless), hopeless, "test/linear")
    assert "--on-divergence rollback" not in str(failed.value)  # it was on, and did not help
    kept = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").glob("ckpt-*")
            if not p.name.endswith(".diverged")}
    # Nothing from the diverged steps is left to resume from, and the newest good one stays
    # (keep-3 rotation at the one unvouched save may have dropped the oldest).
    assert kept.items() <= good.items() and "ckpt-e00001-s000000005.pkl" in kept
    assert (tmp_path / "ckpt" / "ckpt-e00001-s000000006.pkl.diverged").exists()


def test_loop_state_is_saved_and_loaded_whole():
    from common.loop.state import LoopState

    s = LoopState(epoch=2, step=31, samples_done=64, checkpoint="c", checked_step=30,
                  lr_factor=0.5, rollbacks=1, loss_reference=2.5)
    back = LoopState()
    back.load_state_dict(s.state_dict())
    assert back == s
    partial = s.state_dict()
    del partial["lr_factor"]
    with pytest.raises(KeyError):  # a position missing a field is refused, not half-loaded
        LoopState().load_state_dict(partial)


def test_an_elastic_commit_holds_the_loop_state_and_the_model(tmp_path):
    from common.loop.elastic import ElasticState
    from common.loop.trainer import Trainer

    cfg = config(tmp_path)
    trainer = Trainer(NumpyBackend(cfg), cfg, "test")
    trainer.state.step, trainer.state.samples_done = 3, 24
    trainer.backend.w[:] = 1.0
    committed = ElasticState(trainer)  # commits at once
    trainer.state.step, trainer.state.lr_factor = 7, 0.5
    trainer.backend.w[:] = 2.0
    committed.restore()
    assert (trainer.state.step, trainer.state.samples_done, trainer.state.lr_factor) == (3, 24, 1.0)
    assert np.all(trainer.backend.w == 1.0)


def test_elastic_mode_without_a_world_change_trains_as_the_plain_loop(tmp_path):
    from common.config.strategies import ElasticConfig

    plain = NumpyBackend(config(tmp_path / "a"))
    fit(plain, config(tmp_path / "a"), "test")
    elastic = NumpyBackend(config(tmp_path / "b"))
    fit(elastic, config(tmp_path / "b", on_divergence="stop"), "test",
        elastic=ElasticConfig(commit_steps=2))
    assert np.array_equal(plain.w, elastic.w)
    assert [r["train_loss"] for r in epoch_records(tmp_path / "a")] == [
        r["train_loss"] for r in epoch_records(tmp_path / "b")]


def test_max_steps_counts_steps_in_all_on_a_rerun(tmp_path, capsys):
    """--max-steps 5 run twice: the second run resumes at step 5 and trains nothing more."""
    first = NumpyBackend(config(tmp_path, max_steps=5))
    assert fit(first, config(tmp_path, max_steps=5), "test")["step"] == 5
    capsys.readouterr()
    again = NumpyBackend(config(tmp_path, max_steps=5))
    record = fit(again, config(tmp_path, max_steps=5), "test")
    said = capsys.readouterr()
    assert "already trained: step 5 done (--max-steps 5), " in said.out + said.err
    assert record["step"] == 5
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("ckpt-*"))[-1].endswith("s000000005.pkl")
    assert np.array_equal(first.w, again.w)


class WorldBackend(NumpyBackend):
    """A rank of a world of ``size``: each collective's name is logged; a broadcast returns what
    ``root`` holds for its name (rank 0's objects, as a joiner would receive them)."""

    def __init__(self, cfg, rank=0, size=1, root=None):
        super().__init__(cfg, size=size)
        self.rank, self.root, self.collectives = rank, root or {}, []

    def runtime(self):
        return Runtime(self.rank, self.size, self.rank, self.size)

    def broadcast_object(self, obj, root_rank=0, name=None):
        self.collectives.append(name)
        return self.root.get(name, obj)

    def allreduce_sum(self, values):
        self.collectives.append("allreduce")
        return super().allreduce_sum(values)

    def broadcast_state(self):
        self.collectives.append("state")

    def elastic_run(self, func):
        """As Horovod's ``elastic.run``: every process syncs as it enters."""

        def run(state):
            state.sync()
            return func(state)

        return run


def test_an_elastic_start_makes_no_collective_before_its_first_sync_and_resumes_exactly(tmp_path):
    """A worker that joins a running job meets the others in their sync: before it, nothing may
    wait for them. Rank 0 reads the checkpoint alone; its first sync hands it on."""
    from common.config.strategies import ElasticConfig

    plain = NumpyBackend(config(tmp_path / "a"))
    fit(plain, config(tmp_path / "a"), "test")
    elastic = ElasticConfig(commit_steps=2)
    first = WorldBackend(config(tmp_path / "b", max_steps=7, on_divergence="stop"))
    fit(first, config(tmp_path / "b", max_steps=7, on_divergence="stop"), "test", elastic=elastic)
    again = WorldBackend(config(tmp_path / "b", on_divergence="stop"))
    fit(again, config(tmp_path / "b", on_divergence="stop"), "test", elastic=elastic)
    assert again.collectives[:2] == ["elastic_position", "state"], again.collectives[:4]
    assert np.array_equal(plain.w, again.w) and np.array_equal(plain.v, again.v)
    # epochs 2 to 4 as the uninterrupted run's (the resumed epoch 2 with its saved counters)
    assert [r["train_loss"] for r in epoch_records(tmp_path / "a")][1:] == [
        r["train_loss"] for r in epoch_records(tmp_path / "b")][-3:]


def elastic_rank(tmp_path, rank, root, size=2):
    from common.loop.elastic import ElasticState
    from common.loop.trainer import Trainer

    cfg = config(tmp_path, on_divergence="stop")
    trainer = Trainer(WorldBackend(cfg, rank, size, root), cfg, "test")
    trainer.restore(elastic=True)
    return trainer, ElasticState(trainer)


def test_a_joining_worker_takes_rank_0s_position_and_rng_streams_of_its_own(tmp_path):
    from common.loop.elastic import JOIN_SEED_STRIDE
    from common.loop.state import LoopState

    position = LoopState(epoch=1, step=13, samples_done=24, checked_step=13).state_dict()
    trainer, state = elastic_rank(tmp_path, 2, {"elastic_position": {"position": position,
                                                                      "start": None}}, size=3)
    state.sync()
    # 40 samples, 8 per rank and step on 3 ranks: 1 step an epoch; 24 samples done are 1 step
    assert (trainer.state.epoch, trainer.state.samples_done, trainer.state.step) == (1, 24, 2)
    seeded = np.random.default_rng(trainer.cfg.run.seed + JOIN_SEED_STRIDE * 14 + 2)
    assert trainer.backend.rng.random() == seeded.random()
    assert trainer.backend.collectives == ["elastic_position", "state"]


def test_at_an_elastic_start_each_rank_takes_its_own_rng_from_rank_0s_checkpoint(tmp_path):
    from common.loop.state import LoopState

    streams = [np.random.default_rng(100 + r).bit_generator.state for r in range(2)]
    meta = {"epoch": 1, "step": 3, "rng": streams, "world_size": 2, "steps_per_epoch": 2,
            "epoch_sums": [[1.0, 8.0, 0.0], [2.0, 8.0, 0.0]], "lr_factor": 1.0,
            "path": "ckpt-x", "set_aside": []}
    position = LoopState(epoch=1, step=3, samples_done=16).state_dict()
    trainer, state = elastic_rank(tmp_path, 1, {"elastic_position": {
        "position": position, "start": {"error": "", "meta": meta}}})
    state.sync()
    assert trainer.backend.rng.random() == np.random.default_rng(101).random()
    assert list(trainer.epoch_sums.values) == [2.0, 8.0, 0.0]  # rank 1's partial epoch
    assert (trainer.state.epoch, trainer.state.step) == (1, 3)


def test_an_error_in_rank_0s_elastic_start_ends_every_rank_together(tmp_path):
    from common.base.errors import AgreedError
    from common.loop.state import LoopState

    _, state = elastic_rank(tmp_path, 1, {"elastic_position": {
        "position": LoopState().state_dict(), "start": {"error": "bad checkpoint", "meta": None}}})
    with pytest.raises(AgreedError, match="bad checkpoint"):
        state.sync()


def test_every_world_change_is_a_line_and_a_record(tmp_path, capsys):
    from common.loop.elastic import HOSTS_CHANGED, WORKER_FAILED

    trainer, state = elastic_rank(tmp_path, 0, {}, size=2)
    trainer.backend.size = 3
    state.reset()
    trainer.backend.size = 2
    state.restore()
    state.reset()
    worlds = [(r["previous_world_size"], r["world_size"], r["cause"])
              for r in map(json.loads, (tmp_path / "m.jsonl").read_text().splitlines())
              if r["type"] == "world"]
    assert worlds == [(2, 3, HOSTS_CHANGED), (3, 2, WORKER_FAILED)]
    assert "world changed: 2 worker(s) now (a worker failed)" in capsys.readouterr().out


class InPlaceBackend(NumpyBackend):
    """Updates its weights in place and hands out live arrays (as torch's ``state_dict()``
    does), and its writes take a while: an async checkpoint that did not copy the state at the
    step would hold a later step's weights."""

    def __init__(self, cfg, fail_at_write: int = 0) -> None:
        super().__init__(cfg)
        self.writes, self.fail_at_write = 0, fail_at_write
        self.steps_during_writes = 0
        self._writing = False

    def state(self):
        return {"w": self.w, "v": self.v}

    def train_step(self, batch):
        err = self.x[batch] @ self.w - self.y[batch]
        grad = self.x[batch].T @ err / len(batch)
        self.v *= self.cfg.optimizer.momentum
        self.v += grad
        self.w -= self.lr * self.v
        self.rng.random()
        self.steps_during_writes += self._writing
        return np.array([float(np.mean(err**2)) * len(batch), len(batch), 0.0])

    def write_checkpoint(self, f, record):
        self.writes += 1
        if self.writes == self.fail_at_write:
            raise OSError(28, "No space left on device")
        self._writing = True
        time.sleep(0.02)
        super().write_checkpoint(f, record)
        self._writing = False


def test_an_async_checkpoint_holds_its_step_while_training_goes_on(tmp_path):
    files = {}
    for mode in ("async", "sync"):
        cfg = config(tmp_path / mode, epochs=2, checkpoint_steps=1, keep_checkpoints=20,
                     checkpoint_mode=mode)
        backend = InPlaceBackend(cfg)
        final = fit(backend, cfg, "test/linear")
        files[mode] = {p.name: pickle.loads(p.read_bytes())
                       for p in (tmp_path / mode / "ckpt").glob("ckpt-*")}
        if mode == "async":  # the loop trained on while the thread wrote
            assert backend.steps_during_writes > 0
            assert final["checkpoints"] == 10 and final["checkpoint_pause_s"] >= 0
        else:
            assert backend.steps_during_writes == 0
    assert sorted(files["async"]) == sorted(files["sync"]) and len(files["sync"]) == 10
    for name, record in files["sync"].items():  # the weights of the step each was taken at
        np.testing.assert_array_equal(files["async"][name]["state"]["w"], record["state"]["w"])
        np.testing.assert_array_equal(files["async"][name]["state"]["v"], record["state"]["v"])
        assert files["async"][name]["rng"] == record["rng"]


def test_a_failed_background_write_stops_the_run_with_one_line_and_keeps_the_rest(tmp_path):
    cfg = config(tmp_path, epochs=3, checkpoint_steps=2, keep_checkpoints=10)
    with pytest.raises(UserError, match=r"^cannot write checkpoint '\S+ckpt-e00001-s000000005"
                                        r"\.pkl': No space left on device; the checkpoints "
                                        r"already there are kept$"):
        fit(InPlaceBackend(cfg, fail_at_write=3), cfg, "test/linear")
    kept = sorted(p.name for p in (tmp_path / "ckpt").glob("ckpt-*"))
    assert kept == ["ckpt-e00000-s000000002.pkl", "ckpt-e00000-s000000004.pkl"]
    assert not list((tmp_path / "ckpt").glob(".tmp-*"))


def test_the_background_writer_hands_its_error_back_once():
    from common.checkpoint.writer import BackgroundWriter

    writer, order = BackgroundWriter(), []
    writer.submit(lambda: (time.sleep(0.05), order.append("first")))
    writer.submit(lambda: order.append("second"))  # after the first has ended
    assert writer.wait() == "" and order == ["first", "second"]

    def full():
        raise OSError(28, "No space left on device")

    writer.submit(full)
    deadline = time.monotonic() + 5
    while not writer.failed():
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert writer.wait() == "[Errno 28] No space left on device"
    assert writer.wait() == "" and not writer.failed()


def test_a_background_save_is_one_collective(tmp_path):
    """What holds every rank at an async save is one allgather (RNG states, epoch counters,
    finite weights, rank 0's news of its previous write); sync adds the wait and one broadcast."""
    counts = {}
    for mode in ("async", "sync"):
        cfg = config(tmp_path / mode, epochs=1, checkpoint_mode=mode)
        backend = NumpyBackend(cfg)
        manager = CheckpointManager(backend, cfg, "test/linear")
        calls = []
        backend.allgather_object = lambda obj, name=None, calls=calls: calls.append(name) or [obj]
        backend.broadcast_object = (lambda obj, root_rank=0, name=None, calls=calls:
                                    calls.append(name) or obj)
        backend.allreduce_sum = lambda v, calls=calls: calls.append("allreduce") or v
        path = manager.save({"epoch": 0, "step": 3, "lr_factor": 1.0},
                            MetricSums(backend.train_layout, [1.0, 2.0, 0.0]),
                            check=lambda sums, finite: None)
        manager.flush()
        assert path.endswith("ckpt-e00000-s000000003.pkl")
        assert pickle.loads(open(path, "rb").read())["step"] == 3
        counts[mode] = calls
    assert counts["async"] == ["save_state", None]  # the save's one; flush's agreement after it
    assert counts["sync"] == ["save_state", None, None]
