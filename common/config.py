"""Config owns every recipe's core flags: their names, defaults, YAML config file and validation.

A recipe builds its parser with :func:`core_parser`, adds its own flags, and calls
:func:`parse_config`. The result is a :class:`TrainConfig` (the core's settings) plus the
recipe's own values. Invalid input raises :class:`ConfigError` with a one-line message.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import yaml

from common.failure import UserError

LR_SCALING_RULES = ("linear", "sqrt", "none")
LR_DECAYS = ("none", "step", "cosine")


class ConfigError(UserError):
    """A bad flag or config-file value."""


@dataclass(frozen=True)
class TrainConfig:
    """The core's settings, shared by every recipe (one field per core flag)."""

    epochs: int = 10
    batch_size: int = 32
    base_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_scaling: str = "linear"
    warmup_epochs: float = 0.0
    lr_decay: str = "none"
    decay_epochs: tuple[int, ...] = ()
    decay_factor: float = 0.1
    seed: int = 42
    checkpoint_dir: str | None = None
    keep_checkpoints: int = 3
    checkpoint_epochs: int = 1
    checkpoint_steps: int = 0
    metrics_file: str | None = None
    log_dir: str | None = None
    amp: bool = False
    data_workers: int = 0
    fp16_allreduce: bool = False
    batches_per_allreduce: int = 1
    use_adasum: bool = False
    gradient_predivide_factor: float = 1.0
    max_steps: int | None = None
    threads_per_worker: int | None = None
    data_dir: str | None = None
    progress: bool = True
    mpi_groups: int = 1

    def validate(self) -> None:
        """Raise ConfigError for the first value that cannot work."""
        positive_ints = ("epochs", "batch_size", "batches_per_allreduce", "keep_checkpoints",
                         "mpi_groups")
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{_flag(name)} must be at least 1, got {getattr(self, name)}")
        if not self.base_lr > 0:
            raise ConfigError(f"--base-lr must be positive, got {self.base_lr}")
        if self.momentum < 0 or self.weight_decay < 0:
            raise ConfigError("--momentum and --weight-decay must be non-negative")
        if self.warmup_epochs < 0:
            raise ConfigError(f"--warmup-epochs must be non-negative, got {self.warmup_epochs}")
        if self.lr_scaling not in LR_SCALING_RULES:
            raise ConfigError(f"--lr-scaling must be one of {', '.join(LR_SCALING_RULES)}")
        if self.lr_decay not in LR_DECAYS:
            raise ConfigError(f"--lr-decay must be one of {', '.join(LR_DECAYS)}")
        if list(self.decay_epochs) != sorted(set(self.decay_epochs)) or any(
            e < 1 for e in self.decay_epochs
        ):
            raise ConfigError("--decay-epochs must be increasing positive epoch numbers")
        if self.lr_decay == "step" and not self.decay_epochs:
            raise ConfigError("--lr-decay step needs --decay-epochs (e.g. --decay-epochs 30 60)")
        if not 0 < self.decay_factor <= 1:
            raise ConfigError(f"--decay-factor must be in (0, 1], got {self.decay_factor}")
        if self.gradient_predivide_factor <= 0:
            raise ConfigError("--gradient-predivide-factor must be positive")
        if self.use_adasum and self.gradient_predivide_factor != 1.0:
            raise ConfigError("--gradient-predivide-factor works only with averaging, not --use-adasum")
        if self.checkpoint_epochs < 0 or self.checkpoint_steps < 0 or self.data_workers < 0:
            raise ConfigError("--checkpoint-epochs, --checkpoint-steps and --data-workers must be >= 0")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"--max-steps must be at least 1, got {self.max_steps}")
        if self.threads_per_worker is not None and self.threads_per_worker < 1:
            raise ConfigError("--threads-per-worker must be at least 1")
        if self.data_dir is not None and not os.path.isdir(self.data_dir):
            raise ConfigError(f"--data-dir {self.data_dir!r} is not a directory")
        if self.checkpoint_dir is not None and os.path.exists(self.checkpoint_dir) and not (
            os.path.isdir(self.checkpoint_dir)
        ):
            raise ConfigError(f"--checkpoint-dir {self.checkpoint_dir!r} exists and is not a directory")

    def for_group(self, index: int) -> TrainConfig:
        """The config of MPI group ``index`` of ``mpi_groups``: seed + index, own output folders.

        Group k writes to <checkpoint-dir>/group<k>, <log-dir>/group<k> and
        <metrics folder>/group<k>/<metrics file>, so groups never share a file.
        """
        def sub(path: str | None, is_file: bool = False) -> str | None:
            if path is None:
                return None
            if is_file:
                head, tail = os.path.split(path)
                return os.path.join(head, f"group{index}", tail)
            return os.path.join(path, f"group{index}")

        return dataclasses.replace(
            self, seed=self.seed + index, checkpoint_dir=sub(self.checkpoint_dir),
            log_dir=sub(self.log_dir), metrics_file=sub(self.metrics_file, is_file=True))

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["decay_epochs"] = list(self.decay_epochs)
        return d


def resolved(recipe: str, cfg: TrainConfig, recipe_args: dict[str, Any],
             world_size: int) -> dict[str, Any]:
    """The run's whole configuration: recipe, world size, core values, then the recipe's own."""
    core = cfg.as_dict()
    return {"recipe": recipe, "world_size": world_size, **core,
            **{k: v for k, v in sorted(recipe_args.items()) if k not in core and k != "config"}}


def one_line(config: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items())


def save_resolved(path: str, config: dict[str, Any]) -> None:
    """Write a resolved configuration as YAML, atomically (rank 0 only)."""
    from common.checkpoint import atomic_write

    text = yaml.safe_dump(config, sort_keys=False)
    atomic_write(path, lambda f: f.write(text), mode="w")


def _flag(name: str) -> str:
    return name.replace("_", "-")


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (every rank parses, so every rank says it)."""

    def error(self, message: str):  # noqa: D401 - argparse's signature
        raise ConfigError(f"{message} (see --help)")


# The MNIST recipes' shared hyper-parameters (PyTorch, TF custom loop, Keras, both elastic ones):
# one place, so that every framework trains the same run for the same flags.
MNIST_DEFAULTS: dict[str, Any] = {"epochs": 12, "batch_size": 32, "base_lr": 0.05,
                                  "warmup_epochs": 2, "lr_decay": "cosine"}


def run_dirs(name: str) -> dict[str, str]:
    """Default checkpoint folder and metrics file of a recipe: runs/<name>/..."""
    return {"checkpoint_dir": f"runs/{name}/checkpoints",
            "metrics_file": f"runs/{name}/metrics.jsonl"}


def core_parser(description: str, **defaults: Any) -> argparse.ArgumentParser:
    """A parser holding the core flags; ``defaults`` override TrainConfig's defaults per recipe."""
    base = TrainConfig(**defaults)
    p = _OneLineErrorParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file with the same keys as the "
                   "flags (dashes or underscores); flags given on the command line override it")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=base.epochs, help="total epochs to train")
    g.add_argument("--batch-size", type=int, default=base.batch_size,
                   help="samples per worker per backward pass")
    g.add_argument("--base-lr", type=float, default=base.base_lr,
                   help="learning rate of a single worker; the core scales it (see --lr-scaling)")
    g.add_argument("--momentum", type=float, default=base.momentum, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=base.weight_decay, help="L2 weight decay")
    g.add_argument("--seed", type=int, default=base.seed,
                   help="seed shared by all ranks (model init, data order)")
    g.add_argument("--max-steps", type=int, default=base.max_steps,
                   help="stop after this many optimizer steps in total (for smoke tests)")
    g.add_argument("--data-dir", default=base.data_dir,
                   help="directory with the recipe's dataset files (default: offline data)")
    g.add_argument("--data-workers", type=int, default=base.data_workers,
                   help="DataLoader worker processes per rank (0: load in the training process)")
    g.add_argument("--amp", action="store_true", default=base.amp,
                   help="automatic mixed precision on CUDA (bf16, or fp16 with a grad scaler); "
                        "ignored with a notice on CPU")
    s = p.add_argument_group("learning-rate schedule")
    s.add_argument("--lr-scaling", choices=LR_SCALING_RULES, default=base.lr_scaling,
                   help="how the LR grows with workers x batches-per-allreduce")
    s.add_argument("--warmup-epochs", type=float, default=base.warmup_epochs,
                   help="epochs of gradual warmup from --base-lr to the scaled LR, per step")
    s.add_argument("--lr-decay", choices=LR_DECAYS, default=base.lr_decay,
                   help="schedule after warmup")
    s.add_argument("--decay-epochs", type=int, nargs="*", default=list(base.decay_epochs),
                   help="epochs at which --lr-decay step multiplies the LR by --decay-factor")
    s.add_argument("--decay-factor", type=float, default=base.decay_factor,
                   help="factor of each step decay")
    h = p.add_argument_group("gradient averaging (Horovod)")
    h.add_argument("--fp16-allreduce", action="store_true", default=base.fp16_allreduce,
                   help="compress gradients to fp16 for the allreduce")
    h.add_argument("--batches-per-allreduce", type=int, default=base.batches_per_allreduce,
                   help="backward passes accumulated locally per allreduce (gradient accumulation)")
    h.add_argument("--use-adasum", action="store_true", default=base.use_adasum,
                   help="combine gradients with Adasum instead of averaging")
    h.add_argument("--gradient-predivide-factor", type=float,
                   default=base.gradient_predivide_factor,
                   help="divide gradients by this before the sum and by size/factor after")
    h.add_argument("--threads-per-worker", type=int, default=base.threads_per_worker,
                   help="CPU threads per worker (default: cores / local workers)")
    h.add_argument("--mpi-groups", type=int, default=base.mpi_groups,
                   help="under mpirun: split the processes into N independent trainings "
                        "(mpi4py sub-communicators); group k uses --seed + k and writes to "
                        "group<k>/ folders")
    o = p.add_argument_group("checkpoints and output")
    o.add_argument("--checkpoint-dir", default=base.checkpoint_dir,
                   help="rank 0 writes checkpoints here and every run resumes from the newest")
    o.add_argument("--keep-checkpoints", type=int, default=base.keep_checkpoints,
                   help="how many recent checkpoints to keep")
    o.add_argument("--checkpoint-epochs", type=int, default=base.checkpoint_epochs,
                   help="checkpoint every N epochs (0: only at the end)")
    o.add_argument("--checkpoint-steps", type=int, default=base.checkpoint_steps,
                   help="also checkpoint every N optimizer steps, mid-epoch too (0: off)")
    o.add_argument("--log-dir", default=base.log_dir,
                   help="TensorBoard scalars (loss, accuracy, LR, samples/s) from rank 0")
    o.add_argument("--metrics-file", default=base.metrics_file,
                   help="JSON Lines summary: one record per epoch and a final record")
    o.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (one line per epoch only)")
    return p


def add_benchmark_flags(parser: argparse.ArgumentParser, default_model: str,
                        model_help: str) -> None:
    """The synthetic benchmarks' flags (both frameworks): model, image size and timing loop."""
    b = parser.add_argument_group("benchmark")
    b.add_argument("--model", default=default_model, help=model_help)
    b.add_argument("--image-size", type=int, default=224, help="image side in pixels")
    b.add_argument("--num-classes", type=int, default=1000, help="classifier outputs")
    b.add_argument("--num-warmup-batches", type=int, default=10,
                   help="untimed batches before measuring")
    b.add_argument("--num-batches-per-iter", type=int, default=10,
                   help="batches per timed iteration")
    b.add_argument("--num-iters", type=int, default=10, help="timed iterations")


def check_benchmark_args(args: argparse.Namespace) -> None:
    if args.num_iters < 1 or args.num_batches_per_iter < 1 or args.num_warmup_batches < 0:
        raise ConfigError("--num-iters and --num-batches-per-iter must be >= 1, "
                          "--num-warmup-batches >= 0")
    if args.image_size < 8 or args.num_classes < 1:
        raise ConfigError("--image-size must be >= 8 and --num-classes >= 1")


_CORE_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_INFORMATIONAL = {"recipe", "world_size"}


def parse_config(
    parser: argparse.ArgumentParser, argv: list[str] | None = None
) -> tuple[TrainConfig, argparse.Namespace]:
    """Parse flags (over an optional --config YAML file) into the core config and the recipe's args."""
    first, _ = parser.parse_known_args(argv)
    if first.config:
        parser.set_defaults(**_read_yaml(first.config, parser))
    args = parser.parse_args(argv)
    values = {k: getattr(args, k) for k in _CORE_FIELDS}
    values["decay_epochs"] = tuple(values["decay_epochs"] or ())
    cfg = TrainConfig(**values)
    cfg.validate()
    if cfg.mpi_groups > 1:
        from common.runtime import mpi_group

        cfg = cfg.for_group(mpi_group(cfg.mpi_groups)[0])
    return cfg, args


def _read_yaml(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"cannot read --config {path!r}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path!r} is not valid YAML: {e}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path!r} must be a mapping of flag names to values")
    actions = {a.dest: a for a in parser._actions}
    out = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest in _INFORMATIONAL:  # written by save_resolved; describes the run, sets nothing
            continue
        if dest not in actions or dest in ("help", "config"):
            raise ConfigError(f"--config {path!r}: unknown key {key!r}")
        kind = actions[dest].type
        if kind in (int, float) and value is not None and not isinstance(value, str):
            items = value if isinstance(value, list) else [value]
            if any(isinstance(v, bool) or not isinstance(v, int | float) or kind(v) != v
                   for v in items):
                raise ConfigError(f"--config {path!r}: {key} must be {kind.__name__}, got {value!r}")
        out[dest] = value
    return out
