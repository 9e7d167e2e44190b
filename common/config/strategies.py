"""Strategies owns the configs of elastic mode, pipelines and parameter servers: their flags, declared once.

They follow the core's pattern (``common.config.flags``): each field is its flag, with help,
default and check; a recipe calls ``X.add_flags(parser)`` and ``X.from_args(args[, cfg])``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from common.config.core import TrainConfig
from common.config.flags import ConfigError, FlagConfig, at_least, flag, flag_name

MODES = ("sync", "async")


@dataclass(frozen=True)
class ElasticConfig(FlagConfig):
    """Elastic mode: commit the loop's state every ``commit_steps`` steps (the rollback point)."""

    commit_steps: int = flag(10, "commit the elastic state every N steps (rollback point on "
                             "failure)", section=None, check=at_least(1, show=False), type=int)


@dataclass(frozen=True)
class PipelineConfig(FlagConfig):
    """The layout: S stages (model parallelism) x R replicas (data parallelism), M micro-batches."""

    stages: int = flag(2, "S: cut the model into S stages on S ranks",
                       section="pipeline (model parallelism)", check=at_least(1), type=int)
    replicas: int | None = flag(
        None, "R: data-parallel copies of the pipeline (default: ranks / S; S x R must equal the "
        "number of ranks)", section="pipeline (model parallelism)", check=at_least(1), type=int)
    micro_batches: int = flag(
        1, "M: micro-batches each --batch-size batch is split into (GPipe)",
        section="pipeline (model parallelism)", check=at_least(1), type=int)

    @classmethod
    def from_args(cls, args: argparse.Namespace, cfg: TrainConfig) -> PipelineConfig:
        pc = super().from_args(args)
        if cfg.run.batch_size < pc.micro_batches:
            raise ConfigError(f"{flag_name('batch_size')} {cfg.run.batch_size} is smaller than "
                              f"{flag_name('micro_batches')} {pc.micro_batches}")
        # fp32 only; it accumulates over its micro-batches; it uses the whole MPI world.
        cfg.require_defaults("the pipeline (hybrid_parallel.py)", "batches_per_allreduce", "amp",
                             "mpi_groups")
        return pc


@dataclass(frozen=True)
class ServerConfig(FlagConfig):
    """P server ranks, the update mode, and async's staleness bound."""

    servers: int = flag(1, "P: the last P ranks hold the parameters (sharded); the rest work",
                        section="parameter servers", check=at_least(1), type=int)
    mode: str = flag("sync", "sync: each step averages every worker's gradient; async: each push "
                     "is applied when it arrives", section="parameter servers", choices=MODES)
    # async only; None: bounded by the loop's collectives
    max_staleness: int | None = flag(
        None, "async: a worker may be at most K steps ahead of the slowest",
        section="parameter servers", type=int, metavar="K")

    def check(self) -> None:
        if self.max_staleness is not None:
            if self.mode != "async":
                raise ConfigError(f"{flag_name('max_staleness')} applies to "
                                  f"{flag_name('mode')} async only")
            if self.max_staleness < 0:
                raise ConfigError(f"{flag_name('max_staleness')} must be >= 0, got "
                                  f"{self.max_staleness}")

    @classmethod
    def from_args(cls, args: argparse.Namespace, cfg: TrainConfig) -> ServerConfig:
        sc = super().from_args(args)
        # No Horovod allreduce of gradients; fp32 only; they use the whole MPI world.
        cfg.require_defaults("parameter servers (parameter_server.py)", "batches_per_allreduce",
                             "use_adasum", "fp16_allreduce", "gradient_predivide_factor", "amp",
                             "mpi_groups")
        return sc
