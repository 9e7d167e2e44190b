"""Config owns every recipe's core flags: names, defaults, YAML config file, and the per-component configs.

Each component of the core has its own small, self-validating config: :class:`RunConfig` (the
training loop), :class:`OptimizerConfig`, :class:`ScheduleConfig` (the LR schedule),
:class:`GradientConfig` (Horovod's gradient averaging), :class:`CheckpointConfig` and
:class:`OutputConfig`. :class:`TrainConfig` holds one of each. A field has the name of its flag
(``--batch-size`` is ``run.batch_size``), so flags, YAML keys, the printed configuration and the
code say the same name. A recipe builds its parser with :func:`core_parser`, adds its own flags,
and calls :func:`parse_config`. Invalid input raises :class:`ConfigError` with a one-line message.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from common.failure import UserError

LR_SCALING_RULES = ("linear", "sqrt", "none")
LR_DECAYS = ("none", "step", "cosine")
ON_DIVERGENCE = ("stop", "rollback")


class ConfigError(UserError):
    """A bad flag or config-file value."""


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _at_least_one(cfg, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{_flag(name)} must be at least 1, got {getattr(cfg, name)}")


@dataclass(frozen=True)
class RunConfig:
    """The training loop: how long, how big, which data, how many threads and groups."""

    epochs: int = 10
    batch_size: int = 32
    seed: int = 42
    max_steps: int | None = None
    data_dir: str | None = None
    data_workers: int = 0
    amp: bool = False
    threads_per_worker: int | None = None
    mpi_groups: int = 1
    folds: int | None = None
    fold: int | None = None
    divergence_factor: float = 1000.0
    on_divergence: str = "stop"
    max_rollbacks: int = 3
    rollback_lr_factor: float = 0.5
    stop_signals: tuple[str, ...] = ("TERM", "INT", "USR1")
    stall_timeout: float = 300.0

    def validate(self) -> None:
        _at_least_one(self, "epochs", "batch_size", "mpi_groups")
        if not self.stall_timeout >= 0:
            raise ConfigError(f"--stall-timeout must be >= 0 seconds (0: off), got {self.stall_timeout}")
        if not self.divergence_factor >= 0 or 0 < self.divergence_factor <= 1:
            raise ConfigError("--divergence-factor must be 0 (off) or greater than 1, "
                              f"got {self.divergence_factor}")
        if self.on_divergence not in ON_DIVERGENCE:
            raise ConfigError(f"--on-divergence must be one of {', '.join(ON_DIVERGENCE)}")
        if self.max_rollbacks < 0 or not 0 < self.rollback_lr_factor < 1:
            raise ConfigError("--max-rollbacks must be >= 0 and --rollback-lr-factor in (0, 1)")
        from common.preemption import signal_number

        for name in self.stop_signals:
            try:
                signal_number(name)
            except (KeyError, ValueError):
                raise ConfigError(f"--stop-signals: {name!r} is not a signal (e.g. TERM, INT, "
                                  "USR1)") from None
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"--max-steps must be at least 1, got {self.max_steps}")
        if self.threads_per_worker is not None and self.threads_per_worker < 1:
            raise ConfigError("--threads-per-worker must be at least 1")
        if self.data_workers < 0:
            raise ConfigError("--data-workers must be >= 0")
        if self.data_dir is not None and not os.path.isdir(self.data_dir):
            raise ConfigError(f"--data-dir {self.data_dir!r} is not a directory")
        self._validate_folds()

    def _validate_folds(self) -> None:
        """K-fold: ``--folds K`` with ``--fold I`` (one fold) or ``--mpi-groups K`` (every fold)."""
        k, i = self.folds, self.fold
        if k is None:
            if i is not None:
                raise ConfigError("--fold needs --folds K (the number of folds)")
            return
        if k < 2:
            raise ConfigError(f"--folds must be at least 2 (K-fold cross-validation), got {k}")
        if self.mpi_groups > 1:
            if self.mpi_groups != k:
                raise ConfigError(f"--folds {k} with --mpi-groups trains one fold per group: "
                                  f"--mpi-groups must be {k}, got {self.mpi_groups}")
            if i is not None:
                raise ConfigError("--fold with --mpi-groups: each group trains its own fold; "
                                  "drop --fold")
        elif i is None:
            raise ConfigError(f"--folds {k} needs --fold I (0..{k - 1}), or --mpi-groups {k} to "
                              "train every fold at once")
        if i is not None and not 0 <= i < k:
            raise ConfigError(f"--fold must be in 0..{k - 1} for --folds {k}, got {i}")


@dataclass(frozen=True)
class OptimizerConfig:
    """SGD's momentum and weight decay (the LR belongs to the schedule)."""

    momentum: float = 0.9
    weight_decay: float = 0.0

    def validate(self) -> None:
        if self.momentum < 0 or self.weight_decay < 0:
            raise ConfigError("--momentum and --weight-decay must be non-negative")


@dataclass(frozen=True)
class ScheduleConfig:
    """The LR schedule (``common.schedule``): base LR, scaling rule, warmup and decay."""

    base_lr: float = 0.01
    lr_scaling: str = "linear"
    warmup_epochs: float = 0.0
    lr_decay: str = "none"
    decay_epochs: tuple[int, ...] = ()
    decay_factor: float = 0.1

    def validate(self) -> None:
        if not self.base_lr > 0:
            raise ConfigError(f"--base-lr must be positive, got {self.base_lr}")
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


@dataclass(frozen=True)
class GradientConfig:
    """Horovod's gradient averaging: compression, accumulation, Adasum, pre-division."""

    fp16_allreduce: bool = False
    batches_per_allreduce: int = 1
    use_adasum: bool = False
    gradient_predivide_factor: float = 1.0

    def validate(self) -> None:
        _at_least_one(self, "batches_per_allreduce")
        if self.gradient_predivide_factor <= 0:
            raise ConfigError("--gradient-predivide-factor must be positive")
        if self.use_adasum and self.gradient_predivide_factor != 1.0:
            raise ConfigError("--gradient-predivide-factor works only with averaging, not --use-adasum")


@dataclass(frozen=True)
class CheckpointConfig:
    """Where checkpoints go, how many stay, and when they are written (``SavePolicy``)."""

    checkpoint_dir: str | None = None
    keep_checkpoints: int = 3
    checkpoint_epochs: int = 1
    checkpoint_steps: int = 0

    def validate(self) -> None:
        _at_least_one(self, "keep_checkpoints")
        if self.checkpoint_epochs < 0 or self.checkpoint_steps < 0:
            raise ConfigError("--checkpoint-epochs and --checkpoint-steps must be >= 0")
        if self.checkpoint_dir is not None and os.path.exists(self.checkpoint_dir) and not (
            os.path.isdir(self.checkpoint_dir)
        ):
            raise ConfigError(f"--checkpoint-dir {self.checkpoint_dir!r} exists and is not a directory")


@dataclass(frozen=True)
class OutputConfig:
    """What rank 0 writes besides checkpoints: the metrics file, TensorBoard, the progress bar."""

    metrics_file: str | None = None
    log_dir: str | None = None
    progress: bool = True

    def validate(self) -> None:
        pass


@dataclass(frozen=True)
class ProfilingConfig:
    """Horovod's own instruments (``common.profiling``): its timeline and its autotuner."""

    # Not --timeline: horovodrun reads that as an abbreviation of its own --timeline-* flags
    # wherever it stands on the command line, and stops.
    timeline_out: str | None = None
    autotune: bool = False

    def validate(self) -> None:
        if self.timeline_out is not None and (not self.timeline_out
                                              or os.path.isdir(self.timeline_out)):
            raise ConfigError(f"--timeline-out must be a file path, got {self.timeline_out!r}")


_COMPONENTS = {"run": RunConfig, "optimizer": OptimizerConfig, "schedule": ScheduleConfig,
               "gradients": GradientConfig, "checkpoint": CheckpointConfig,
               "output": OutputConfig, "profiling": ProfilingConfig}
# Which component holds each flag (field names are the flags' dests).
_HOME = {f.name: part for part, kind in _COMPONENTS.items() for f in dataclasses.fields(kind)}


@dataclass(frozen=True)
class TrainConfig:
    """The core's settings: one small config per component."""

    run: RunConfig = field(default_factory=RunConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    gradients: GradientConfig = field(default_factory=GradientConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    profiling: ProfilingConfig = field(default_factory=ProfilingConfig)

    @classmethod
    def from_flags(cls, **values: Any) -> TrainConfig:
        """A config from flag values by name (``batch_size=16``); the rest keep their defaults."""
        parts: dict[str, dict[str, Any]] = {part: {} for part in _COMPONENTS}
        for name, value in values.items():
            if name not in _HOME:
                raise TypeError(f"no core flag named {name!r}")
            if name in ("decay_epochs", "stop_signals"):
                value = tuple(value or ())
            parts[_HOME[name]][name] = value
        return cls(**{part: _COMPONENTS[part](**v) for part, v in parts.items()})

    def validate(self) -> None:
        """Raise ConfigError for the first value that cannot work."""
        for part in _COMPONENTS:
            getattr(self, part).validate()
        if self.profiling.autotune and not self.output.metrics_file:
            raise ConfigError("--autotune writes its log beside --metrics-file: give one")

    def for_group(self, index: int) -> TrainConfig:
        """The config of MPI group ``index`` of ``mpi_groups``: seed + index, outputs under
        ``group<index>/`` (see :meth:`in_subfolder`); with ``--folds`` the group trains fold
        ``index`` instead, with the same seed (:meth:`for_fold`)."""
        if self.run.folds:
            return self.for_fold(index)
        return dataclasses.replace(
            self, run=dataclasses.replace(self.run, seed=self.run.seed + index),
        ).in_subfolder(f"group{index}")

    def for_fold(self, fold: int) -> TrainConfig:
        """The config of K-fold fold ``fold``: outputs under ``fold<fold>/``, so the folds of
        one ``--mpi-groups K`` run and K separate ``--fold`` runs write the same files."""
        return dataclasses.replace(
            self, run=dataclasses.replace(self.run, fold=fold)).in_subfolder(f"fold{fold}")

    def in_subfolder(self, name: str) -> TrainConfig:
        """The same config writing to <checkpoint-dir>/<name>, <log-dir>/<name> and
        <metrics folder>/<name>/<metrics file>, so that runs side by side never share a file."""
        def sub(path: str | None, is_file: bool = False) -> str | None:
            if path is None:
                return None
            if is_file:
                head, tail = os.path.split(path)
                return os.path.join(head, name, tail)
            return os.path.join(path, name)

        return dataclasses.replace(
            self, checkpoint=dataclasses.replace(self.checkpoint,
                                                 checkpoint_dir=sub(self.checkpoint.checkpoint_dir)),
            output=dataclasses.replace(self.output, log_dir=sub(self.output.log_dir),
                                       metrics_file=sub(self.output.metrics_file, is_file=True)),
            profiling=dataclasses.replace(self.profiling,
                                          timeline_out=sub(self.profiling.timeline_out, is_file=True)))

    def require_defaults(self, who: str, *names: str) -> None:
        """ConfigError for the first of these flags not at its default: it does not apply to
        ``who`` (a recipe or strategy that has no use for it)."""
        default = TrainConfig().as_dict()
        mine = self.as_dict()
        for name in names:
            if mine[name] != default[name]:
                raise ConfigError(f"--{_flag(name)} does not apply to {who}")

    def as_dict(self) -> dict[str, Any]:
        """Every flag's value by name, flat (as flags and YAML keys spell them); the K-fold
        flags only when set (recipes without ``--folds`` have no such flags)."""
        d = {k: v for part in _COMPONENTS for k, v in dataclasses.asdict(getattr(self, part)).items()}
        d["decay_epochs"] = list(self.schedule.decay_epochs)
        d["stop_signals"] = list(self.run.stop_signals)
        if self.run.folds is None:
            del d["folds"], d["fold"]
        return d


def resolved(recipe: str, cfg: TrainConfig, recipe_args: dict[str, Any], world_size: int,
             runtime_settings: dict[str, str] | None = None) -> dict[str, Any]:
    """The run's whole configuration: recipe, world size, core values, then the recipe's own;
    last the runtime settings Horovod and MPI started with (``common.runtime.SETTINGS``)."""
    core = cfg.as_dict()
    config = {"recipe": recipe, "world_size": world_size, **core,
              **{k: v for k, v in sorted(recipe_args.items()) if k not in core and k != "config"}}
    if runtime_settings:
        config["runtime_settings"] = dict(runtime_settings)
    return config


def one_line(config: dict[str, Any]) -> str:
    """The flags' values as ``name=value`` (a mapping, such as the runtime settings, on its own
    line: see ``Reporter.start``)."""
    return " ".join(f"{k}={v}" for k, v in config.items() if not isinstance(v, dict))


def save_resolved(path: str, config: dict[str, Any]) -> None:
    """Write a resolved configuration as YAML, atomically (rank 0 only)."""
    from common.checkpoint import atomic_write

    text = yaml.safe_dump(config, sort_keys=False)
    atomic_write(path, lambda f: f.write(text), mode="w")


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (every rank parses, so every rank says it)."""

    def error(self, message: str):  # noqa: D401 - argparse's signature
        raise ConfigError(f"{message} (see --help)")


def core_parser(description: str, kfold: bool = False, **defaults: Any) -> argparse.ArgumentParser:
    """A parser holding the core flags; ``defaults`` override TrainConfig's defaults per recipe.

    ``kfold``: the recipe's data supports ``--folds`` / ``--fold`` (``common.folds``)."""
    base = TrainConfig.from_flags(**defaults).as_dict()
    p = _OneLineErrorParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file with the same keys as the "
                   "flags (dashes or underscores); flags given on the command line override it")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=base["epochs"], help="total epochs to train")
    g.add_argument("--batch-size", type=int, default=base["batch_size"],
                   help="samples per worker per backward pass")
    g.add_argument("--base-lr", type=float, default=base["base_lr"],
                   help="learning rate of a single worker; the core scales it (see --lr-scaling)")
    g.add_argument("--momentum", type=float, default=base["momentum"], help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=base["weight_decay"],
                   help="L2 weight decay, as torch's SGD applies it in every recipe of both "
                        "frameworks: weight_decay x w joins the averaged gradient before "
                        "momentum (not Keras's decoupled weight_decay)")
    g.add_argument("--seed", type=int, default=base["seed"],
                   help="seed shared by all ranks (model init, data order)")
    g.add_argument("--max-steps", type=int, default=base["max_steps"],
                   help="stop after this many optimizer steps in total (for smoke tests)")
    g.add_argument("--data-dir", default=base["data_dir"],
                   help="directory with the recipe's dataset files (default: offline data)")
    g.add_argument("--data-workers", type=int, default=base["data_workers"],
                   help="DataLoader worker processes per rank (0: load in the training process)")
    g.add_argument("--divergence-factor", type=float, default=base["divergence_factor"],
                   help="stop when the loss exceeds this many times the run's first step's "
                        "loss (0: off); a NaN or infinite loss always stops")
    g.add_argument("--on-divergence", choices=ON_DIVERGENCE, default=base["on_divergence"],
                   help="stop: end the job (every checkpoint kept); rollback: reload the last "
                        "good checkpoint, multiply the LR by --rollback-lr-factor and go on, at "
                        "most --max-rollbacks times, then stop")
    g.add_argument("--max-rollbacks", type=int, default=base["max_rollbacks"],
                   help="rollbacks allowed per run with --on-divergence rollback")
    g.add_argument("--rollback-lr-factor", type=float, default=base["rollback_lr_factor"],
                   help="the LR is multiplied by this at each rollback (kept in checkpoints)")
    g.add_argument("--stop-signals", nargs="*", default=base["stop_signals"], metavar="SIG",
                   help="signals that stop training cleanly: every rank stops at the next step, "
                        "a checkpoint of that step is written, exit status 75 (none: off)")
    g.add_argument("--stall-timeout", type=float, default=base["stall_timeout"], metavar="S",
                   help="end the whole job, naming the rank, when any rank makes no progress "
                        "for S seconds (a stopped or frozen worker; exit status 124; 0: off)")
    g.add_argument("--amp", action="store_true", default=base["amp"],
                   help="automatic mixed precision on CUDA (bf16, or fp16 with a grad scaler); "
                        "ignored with a notice on CPU")
    s = p.add_argument_group("learning-rate schedule")
    s.add_argument("--lr-scaling", choices=LR_SCALING_RULES, default=base["lr_scaling"],
                   help="how the LR grows with workers x batches-per-allreduce")
    s.add_argument("--warmup-epochs", type=float, default=base["warmup_epochs"],
                   help="epochs of gradual warmup from --base-lr to the scaled LR, per step")
    s.add_argument("--lr-decay", choices=LR_DECAYS, default=base["lr_decay"],
                   help="schedule after warmup")
    s.add_argument("--decay-epochs", type=int, nargs="*", default=base["decay_epochs"],
                   help="epochs at which --lr-decay step multiplies the LR by --decay-factor")
    s.add_argument("--decay-factor", type=float, default=base["decay_factor"],
                   help="factor of each step decay")
    h = p.add_argument_group("gradient averaging (Horovod)")
    h.add_argument("--fp16-allreduce", action="store_true", default=base["fp16_allreduce"],
                   help="compress gradients to fp16 for the allreduce")
    h.add_argument("--batches-per-allreduce", type=int, default=base["batches_per_allreduce"],
                   help="backward passes accumulated locally per allreduce (gradient accumulation)")
    h.add_argument("--use-adasum", action="store_true", default=base["use_adasum"],
                   help="combine gradients with Adasum instead of averaging")
    h.add_argument("--gradient-predivide-factor", type=float,
                   default=base["gradient_predivide_factor"],
                   help="divide gradients by this before the sum and by size/factor after")
    h.add_argument("--threads-per-worker", type=int, default=base["threads_per_worker"],
                   help="CPU threads per worker (default: cores / local workers)")
    h.add_argument("--mpi-groups", type=int, default=base["mpi_groups"],
                   help="under mpirun: split the processes into N independent trainings "
                        "(mpi4py sub-communicators); group k uses --seed + k and writes to "
                        "group<k>/ folders (with --folds N: group k trains fold k)")
    if kfold:
        g.add_argument("--folds", type=int, default=None, metavar="K",
                       help="K-fold cross-validation: split the training set into K folds, train "
                            "on K-1 and validate on --fold I; outputs go to fold<I>/ folders")
        g.add_argument("--fold", type=int, default=None, metavar="I",
                       help="the fold (0..K-1) to validate on with --folds K; or give --mpi-groups "
                            "K instead to train every fold at once and get a summary")
    o = p.add_argument_group("checkpoints and output")
    o.add_argument("--checkpoint-dir", default=base["checkpoint_dir"],
                   help="rank 0 writes checkpoints here and every run resumes from the newest")
    o.add_argument("--keep-checkpoints", type=int, default=base["keep_checkpoints"],
                   help="how many recent checkpoints to keep")
    o.add_argument("--checkpoint-epochs", type=int, default=base["checkpoint_epochs"],
                   help="checkpoint every N epochs (0: only at the end)")
    o.add_argument("--checkpoint-steps", type=int, default=base["checkpoint_steps"],
                   help="also checkpoint every N optimizer steps, mid-epoch too (0: off)")
    o.add_argument("--log-dir", default=base["log_dir"],
                   help="TensorBoard scalars (loss, accuracy, LR, samples/s) from rank 0")
    o.add_argument("--metrics-file", default=base["metrics_file"],
                   help="JSON Lines summary: one record per epoch and a final record")
    o.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (one line per epoch only)")
    m = p.add_argument_group("monitoring and tuning (Horovod's timeline and autotuner)")
    m.add_argument("--timeline-out", metavar="PATH", default=base["timeline_out"],
                   help="record Horovod's timeline (rank 0 writes PATH, a chrome://tracing "
                        "file) and print its summary at the end: time negotiating, waiting and "
                        "communicating, bytes reduced, fusion buffer use")
    m.add_argument("--autotune", action="store_true", default=base["autotune"],
                   help="let Horovod's autotuner tune fusion threshold, cycle time and cache; "
                        "its log goes beside --metrics-file and the final record says what it "
                        "chose")
    return p


_INFORMATIONAL = {"recipe", "world_size", "runtime_settings"}


def parse_config(
    parser: argparse.ArgumentParser, argv: list[str] | None = None
) -> tuple[TrainConfig, argparse.Namespace]:
    """Parse flags (over an optional --config YAML file) into the core config and the recipe's args."""
    first, _ = parser.parse_known_args(argv)
    if first.config:
        parser.set_defaults(**_read_yaml(first.config, parser))
    args = parser.parse_args(argv)
    cfg = TrainConfig.from_flags(**{k: getattr(args, k) for k in _HOME if hasattr(args, k)})
    cfg.validate()
    if cfg.run.mpi_groups > 1:
        from common.runtime import mpi_group

        cfg = cfg.for_group(mpi_group(cfg.run.mpi_groups)[0])
    elif cfg.run.folds:
        cfg = cfg.for_fold(cfg.run.fold)
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
