"""Elastic MNIST recipe (PyTorch): the MNIST CNN under Horovod elastic, surviving workers that leave or join.

Run (hosts come and go as discover_hosts.sh prints them):
    horovodrun -np 4 --min-np 2 --max-np 8 --host-discovery-script ./discover_hosts.sh \
        python recipes/pytorch/elastic_mnist.py

Horovod's elastic state (``hvd.elastic.TorchState``: model, optimizer, sampler, epoch, step) is
committed every --commit-steps steps and at each epoch end. When a worker fails or hosts change,
the surviving workers roll back to the last commit, the sampler re-shards the epoch's remaining
samples over the new world, and the LR target is rescaled to the new world size. Rank 0 also
writes the core's checkpoints at epoch ends, so a job stopped whole resumes from them.
"""

from __future__ import annotations

import horovod.torch as hvd
import torch
import torch.nn.functional as F

from common import torch_backend as tb
from common.config import MNIST_DEFAULTS, ConfigError, core_parser, one_line, parse_config, resolved, run_dirs
from common.data import load_mnist_or_digits
from common.failure import run_main
from common.metrics import MetricSums
from common.output import Reporter
from common.schedule import LRSchedule
from recipes.pytorch.mnist import Net, as_tensors

RECIPE = "pytorch/elastic_mnist"


def main(argv: list[str] | None = None) -> None:
    parser = core_parser(__doc__.splitlines()[0], **MNIST_DEFAULTS,
                         **run_dirs("elastic_mnist"))
    parser.add_argument("--commit-steps", type=int, default=10,
                        help="commit the elastic state every N steps (rollback point on failure)")
    cfg, args = parse_config(parser, argv)
    if args.commit_steps < 1:
        raise ConfigError("--commit-steps must be at least 1")
    rt, device = tb.init(cfg)

    train_data, val_data = load_mnist_or_digits(cfg.data_dir)
    train_set, val_set = as_tensors(train_data), as_tensors(val_data)
    samples_per_step = cfg.batch_size * cfg.batches_per_allreduce
    model = Net().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.base_lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    optimizer = tb.distributed_optimizer(optimizer, model, cfg)
    sampler = hvd.elastic.ElasticSampler(train_set, shuffle=True, seed=cfg.seed)
    loader = torch.utils.data.DataLoader(train_set, batch_size=samples_per_step,
                                         sampler=sampler, drop_last=True)

    def steps_now() -> int:
        return max(len(train_set) // hvd.size() // samples_per_step, 1)

    checkpointer = tb.Checkpointer(rt, cfg, RECIPE, model, optimizer, steps_now())
    progress, notices = checkpointer.restore()
    out = Reporter(rt.is_root, cfg.metrics_file, cfg.progress, cfg.log_dir)
    out.print(f"config: {one_line(resolved(RECIPE, cfg, vars(args), rt.size))}")
    for notice in notices:
        out.print(f"note: {notice}")
    state = hvd.elastic.TorchState(model=model, optimizer=optimizer, train_sampler=sampler,
                                   epoch=progress.epoch)
    sampler.set_epoch(progress.epoch)

    def on_reset() -> None:
        nonlocal out
        out = Reporter(hvd.rank() == 0, cfg.metrics_file, cfg.progress, cfg.log_dir)
        checkpointer.rt = tb.Runtime(hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size())
        checkpointer.steps_per_epoch = steps_now()
        out.print(f"world changed: {hvd.size()} worker(s) now; resuming epoch {state.epoch + 1} "
                  f"from its last commit, LR target rescaled")

    state.register_reset_callbacks([on_reset])

    last_saved = [progress.checkpoint]

    @hvd.elastic.run
    def train(state) -> tuple[MetricSums, MetricSums]:
        train_sums = val_sums = MetricSums()
        while state.epoch < cfg.epochs:
            n_steps = steps_now()
            schedule = LRSchedule.from_config(cfg, hvd.size(), n_steps)  # rescaled per world
            local = MetricSums()
            for x, y in loader:
                done = state.train_sampler.processed_num / len(train_set)  # of this epoch
                tb.set_lr(optimizer, schedule(int((state.epoch + done) * n_steps)))
                loss, correct, n = tb.train_step(model, optimizer, F.cross_entropy,
                                                 x.to(device), y.to(device),
                                                 cfg.batches_per_allreduce)
                local.add(loss, correct, n)
                state.train_sampler.record_batch(0, samples_per_step)
                if state.train_sampler.processed_num // (samples_per_step * hvd.size()) \
                        % args.commit_steps == 0:
                    state.commit()
            train_sums = local.global_sums(tb.allreduce_sum)
            val_sums = tb.evaluate(model, F.cross_entropy, val_loader(), device
                                   ).global_sums(tb.allreduce_sum)
            state.epoch += 1
            state.train_sampler.set_epoch(state.epoch)
            saved = checkpointer.save(tb.Progress(state.epoch, state.epoch * n_steps))
            last_saved[0] = saved or last_saved[0]
            out.print(f"epoch {state.epoch}/{cfg.epochs} on {hvd.size()} worker(s): train loss "
                      f"{train_sums.loss:.4f} | val loss {val_sums.loss:.4f} "
                      f"acc {val_sums.accuracy:.4f}")
            out.record("epoch", epoch=state.epoch, world_size=hvd.size(),
                       train_loss=train_sums.loss, train_accuracy=train_sums.accuracy,
                       val_loss=val_sums.loss, val_accuracy=val_sums.accuracy, checkpoint=saved)
            state.commit()
        return train_sums, val_sums

    def val_loader():
        shard = tb.ShardSampler(len(val_set), tb.Runtime(hvd.rank(), hvd.size(), 0, 1), 0,
                                shuffle=False, drop_tail=False)
        return torch.utils.data.DataLoader(val_set, batch_size=256, sampler=shard)

    train_sums, val_sums = train(state)
    out.record("final", recipe=RECIPE, world_size=hvd.size(), epochs=cfg.epochs,
               train_loss=train_sums.loss, train_accuracy=train_sums.accuracy,
               val_loss=val_sums.loss, val_accuracy=val_sums.accuracy, checkpoint=last_saved[0])
    out.print(f"final: val accuracy {val_sums.accuracy:.4f} on {hvd.size()} worker(s)")


if __name__ == "__main__":
    run_main(main)
