"""Core owns the core's per-component configs (each field its flag), ``core_parser`` and the YAML file.

Each component of the core has its own small, self-validating config: :class:`RunConfig` (the
training loop), :class:`OptimizerConfig`, :class:`ScheduleConfig` (the LR schedule),
:class:`GradientConfig` (Horovod's gradient averaging), :class:`CheckpointConfig` and
:class:`OutputConfig`. :class:`TrainConfig` holds one of each. A field has the name of its flag
(``--batch-size`` is ``run.batch_size``), so flags, YAML keys, the printed configuration and the
code say the same name, and the field's declaration (``common.config.flags.flag``) is the only
place that gives its default, help text, ``--help`` section and check. A recipe builds its
parser with :func:`core_parser`, adds its own flags, and calls :func:`parse_config`. Invalid
input raises :class:`ConfigError` with a one-line message.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
from dataclasses import dataclass, field
from typing import Any

import yaml

from common.base.files import atomic_write
from common.base.signals import HELD_SIGNALS
from common.config.flags import (
    ConfigError,
    FlagConfig,
    add_flags,
    at_least,
    flag,
    flag_name,
    values_of,
)
from common.world.runtime import mpi_group

LR_SCALING_RULES = ("linear", "sqrt", "none")
LR_DECAYS = ("none", "step", "cosine")
ON_DIVERGENCE = ("stop", "rollback")
TRACKERS = ("none", "mlflow")
CHECKPOINT_MODES = ("async", "sync")

# The sections of ``--help``, in this order.
TRAINING = "training"
SCHEDULE = "learning-rate schedule"
GRADIENTS = "gradient averaging (Horovod)"
OUTPUT = "checkpoints and output"
MONITORING = "monitoring and tuning (Horovod's timeline and autotuner)"
SECTIONS = (TRAINING, SCHEDULE, GRADIENTS, OUTPUT, MONITORING)


def signal_number(name: str) -> signal.Signals:
    """``TERM``, ``SIGTERM`` or ``15`` as a signal (``--stop-signals``); ValueError if none."""
    text = name.upper()
    if text.isdigit():
        return signal.Signals(int(text))
    return signal.Signals[text if text.startswith("SIG") else f"SIG{text}"]


def _signals(names) -> str | None:
    for name in names:
        try:
            signal_number(name)
        except (KeyError, ValueError):
            return f": {name!r} is not a signal (e.g. TERM, INT, USR1)"
    return None


def _directory(path: str | None) -> str | None:
    return None if path is None or os.path.isdir(path) else f"{path!r} is not a directory"


@dataclass(frozen=True)
class RunConfig(FlagConfig):
    """The training loop: how long, how big, which data, how many threads and groups."""

    epochs: int = flag(10, "total epochs to train", section=TRAINING, check=at_least(1), type=int)
    batch_size: int = flag(32, "samples per worker per backward pass", section=TRAINING,
                           check=at_least(1), type=int)
    seed: int = flag(42, "seed shared by all ranks (model init, data order)", section=TRAINING,
                     type=int)
    max_steps: int | None = flag(
        None, "stop after this many optimizer steps in total (for smoke tests)", section=TRAINING,
        check=at_least(1), type=int)
    data_dir: str | None = flag(
        None, "directory with the recipe's dataset files (default: offline data)",
        section=TRAINING, check=_directory, opt_in="data")
    data_workers: int = flag(
        0, "DataLoader worker processes per rank (0: load in the training process)",
        section=TRAINING, check=lambda v: None if v >= 0 else "must be >= 0", type=int,
        opt_in="data")
    amp: bool = flag(False, "automatic mixed precision on CUDA (bf16, or fp16 with a grad "
                     "scaler); ignored with a notice on CPU", section=TRAINING)
    compile: bool = flag(
        False, "torch.compile the model (PyTorch): its forward and backward run compiled; "
        "checkpoints hold the plain module's state, so they load with or without --compile",
        section=TRAINING)
    sync_bn: bool = flag(
        False, "synchronized batch norm: every batch norm layer normalises with the statistics "
        "of the global batch, every worker's samples (PyTorch: Horovod's SyncBatchNorm; "
        "Keras 3: the core's, through Horovod's allreduce)",
        section=TRAINING)
    threads_per_worker: int | None = flag(
        None, "CPU threads per worker (default: cores / local workers)", section=GRADIENTS,
        check=at_least(1, show=False), type=int)
    mpi_groups: int = flag(
        1, "under mpirun: split the processes into N independent trainings (mpi4py "
        "sub-communicators); group k uses --seed + k and writes to group<k>/ folders (with "
        "--folds N: group k trains fold k)", section=GRADIENTS, check=at_least(1), type=int)
    folds: int | None = flag(
        None, "K-fold cross-validation: split the training set into K folds, train on K-1 and "
        "validate on --fold I; outputs go to fold<I>/ folders", section=TRAINING, opt_in="kfold",
        type=int, metavar="K")
    fold: int | None = flag(
        None, "the fold (0..K-1) to validate on with --folds K; or give --mpi-groups K instead "
        "to train every fold at once and get a summary", section=TRAINING, opt_in="kfold", type=int,
        metavar="I")
    divergence_factor: float = flag(
        1000.0, "stop when the loss exceeds this many times the run's first step's loss (0: "
        "off); a NaN or infinite loss always stops", section=TRAINING, type=float,
        check=lambda v: None if v >= 0 and not 0 < v <= 1 else
        f"must be 0 (off) or greater than 1, got {v}")
    on_divergence: str = flag(
        "stop", "stop: end the job (every checkpoint kept); rollback: reload the last good "
        "checkpoint, multiply the LR by --rollback-lr-factor and go on, at most --max-rollbacks "
        "times, then stop", section=TRAINING, choices=ON_DIVERGENCE)
    max_rollbacks: int = flag(3, "rollbacks allowed per run with --on-divergence rollback",
                              section=TRAINING, type=int)
    rollback_lr_factor: float = flag(
        0.5, "the LR is multiplied by this at each rollback (kept in checkpoints)",
        section=TRAINING, type=float)
    stop_signals: tuple[str, ...] = flag(
        tuple(sig.name.removeprefix("SIG") for sig in HELD_SIGNALS),
        "signals that stop training cleanly: every rank stops at the "
        "next step, a checkpoint of that step is written, exit status 75 (none: off)",
        section=TRAINING, check=_signals, nargs="*", metavar="SIG")
    stall_timeout: float = flag(
        300.0, "end the whole job, naming the rank, when any rank makes no progress for S "
        "seconds (a stopped or frozen worker; exit status 124; 0: off)", section=TRAINING,
        type=float, metavar="S",
        check=lambda v: None if v >= 0 else f"must be >= 0 seconds (0: off), got {v}")

    def check(self) -> None:
        if self.max_rollbacks < 0 or not 0 < self.rollback_lr_factor < 1:
            raise ConfigError(f"{flag_name('max_rollbacks')} must be >= 0 and "
                              f"{flag_name('rollback_lr_factor')} in (0, 1)")
        self._check_folds()

    def _check_folds(self) -> None:
        """K-fold: ``--folds K`` with ``--fold I`` (one fold) or ``--mpi-groups K`` (every fold)."""
        k, i = self.folds, self.fold
        folds, fold, groups = flag_name("folds"), flag_name("fold"), flag_name("mpi_groups")
        if k is None:
            if i is not None:
                raise ConfigError(f"{fold} needs {folds} K (the number of folds)")
            return
        if k < 2:
            raise ConfigError(f"{folds} must be at least 2 (K-fold cross-validation), got {k}")
        if self.mpi_groups > 1:
            if self.mpi_groups != k:
                raise ConfigError(f"{folds} {k} with {groups} trains one fold per group: "
                                  f"{groups} must be {k}, got {self.mpi_groups}")
            if i is not None:
                raise ConfigError(f"{fold} with {groups}: each group trains its own fold; "
                                  f"drop {fold}")
        elif i is None:
            raise ConfigError(f"{folds} {k} needs {fold} I (0..{k - 1}), or {groups} {k} to "
                              "train every fold at once")
        if i is not None and not 0 <= i < k:
            raise ConfigError(f"{fold} must be in 0..{k - 1} for {folds} {k}, got {i}")


@dataclass(frozen=True)
class OptimizerConfig(FlagConfig):
    """SGD's momentum and weight decay (the LR belongs to the schedule)."""

    momentum: float = flag(0.9, "SGD momentum", section=TRAINING, type=float)
    weight_decay: float = flag(
        0.0, "L2 weight decay, as torch's SGD applies it in every recipe of both frameworks: "
        "weight_decay x w joins the averaged gradient before momentum (not Keras's decoupled "
        "weight_decay)", section=TRAINING, type=float)

    def check(self) -> None:
        if self.momentum < 0 or self.weight_decay < 0:
            raise ConfigError(f"{flag_name('momentum')} and {flag_name('weight_decay')} must be "
                              "non-negative")


def _increasing_epochs(epochs) -> str | None:
    if list(epochs) != sorted(set(epochs)) or any(e < 1 for e in epochs):
        return "must be increasing positive epoch numbers"
    return None


@dataclass(frozen=True)
class ScheduleConfig(FlagConfig):
    """The LR schedule (``common.loop.schedule``): base LR, scaling rule, warmup and decay."""

    base_lr: float = flag(
        0.01, "learning rate of a single worker; the core scales it (see --lr-scaling)",
        section=TRAINING, type=float,
        check=lambda v: None if v > 0 else f"must be positive, got {v}")
    lr_scaling: str = flag("linear", "how the LR grows with workers x batches-per-allreduce",
                           section=SCHEDULE, choices=LR_SCALING_RULES)
    warmup_epochs: float = flag(
        0.0, "epochs of gradual warmup from --base-lr to the scaled LR, per step",
        section=SCHEDULE, type=float,
        check=lambda v: None if v >= 0 else f"must be non-negative, got {v}")
    lr_decay: str = flag("none", "schedule after warmup", section=SCHEDULE, choices=LR_DECAYS)
    decay_epochs: tuple[int, ...] = flag(
        (), "epochs at which --lr-decay step multiplies the LR by --decay-factor",
        section=SCHEDULE, check=_increasing_epochs, type=int, nargs="*")
    decay_factor: float = flag(
        0.1, "factor of each step decay", section=SCHEDULE, type=float,
        check=lambda v: None if 0 < v <= 1 else f"must be in (0, 1], got {v}")

    def check(self) -> None:
        if self.lr_decay == "step" and not self.decay_epochs:
            raise ConfigError(f"{flag_name('lr_decay')} step needs {flag_name('decay_epochs')} "
                              "(e.g. --decay-epochs 30 60)")


@dataclass(frozen=True)
class GradientConfig(FlagConfig):
    """Horovod's gradient averaging: compression, accumulation, Adasum, pre-division."""

    fp16_allreduce: bool = flag(False, "compress gradients to fp16 for the allreduce",
                                section=GRADIENTS)
    batches_per_allreduce: int = flag(
        1, "backward passes accumulated locally per allreduce (gradient accumulation)",
        section=GRADIENTS, check=at_least(1), type=int)
    use_adasum: bool = flag(False, "combine gradients with Adasum instead of averaging",
                            section=GRADIENTS)
    clip_grad_norm: float | None = flag(
        None, "clip the global L2 norm of the averaged gradient to X: after Horovod's allreduce "
        "(and --amp's unscaling), before the optimizer step, once per --batches-per-allreduce; "
        "each epoch record carries the norm before clipping (mean, max) and the share of steps "
        "clipped", section=GRADIENTS, type=float, metavar="X",
        check=lambda v: None if v is None or v > 0 else f"must be positive, got {v}")
    gradient_predivide_factor: float = flag(
        1.0, "divide gradients by this before the sum and by size/factor after",
        section=GRADIENTS, type=float, check=lambda v: None if v > 0 else "must be positive")

    def check(self) -> None:
        if self.use_adasum and self.gradient_predivide_factor != 1.0:
            raise ConfigError(f"{flag_name('gradient_predivide_factor')} works only with "
                              f"averaging, not {flag_name('use_adasum')}")


def _not_a_file(path: str | None) -> str | None:
    if path is not None and os.path.exists(path) and not os.path.isdir(path):
        return f"{path!r} exists and is not a directory"
    return None


@dataclass(frozen=True)
class CheckpointConfig(FlagConfig):
    """Where checkpoints go, how many stay, and when they are written (``SavePolicy``)."""

    checkpoint_dir: str | None = flag(
        None, "rank 0 writes checkpoints here and every run resumes from the newest",
        section=OUTPUT, check=_not_a_file)
    keep_checkpoints: int = flag(
        3, "how many recent checkpoints to keep (besides the newest, until a later check "
        "vouches for it)", section=OUTPUT, check=at_least(1), type=int)
    checkpoint_epochs: int = flag(1, "checkpoint every N epochs (0: only at the end)",
                                  section=OUTPUT, type=int)
    checkpoint_steps: int = flag(
        0, "also checkpoint every N optimizer steps, mid-epoch too (0: off)", section=OUTPUT,
        type=int)
    checkpoint_mode: str = flag(
        "async", "async: rank 0 writes a copy of the state in the background while training "
        "goes on; sync: every rank waits for the write", section=OUTPUT,
        choices=CHECKPOINT_MODES)

    def check(self) -> None:
        if self.checkpoint_epochs < 0 or self.checkpoint_steps < 0:
            raise ConfigError(f"{flag_name('checkpoint_epochs')} and "
                              f"{flag_name('checkpoint_steps')} must be >= 0")


@dataclass(frozen=True)
class OutputConfig(FlagConfig):
    """What rank 0 writes besides checkpoints: the run folder, the metrics file, TensorBoard,
    progress."""

    run_dir: str | None = flag(
        None, "the run's folder: checkpoints/ (with config.yaml) and metrics.jsonl go here "
        "unless --checkpoint-dir or --metrics-file say otherwise; a new folder starts a new run",
        section=OUTPUT, check=_not_a_file, metavar="DIR")
    metrics_file: str | None = flag(
        None, "JSON Lines summary: one record per epoch and a final record", section=OUTPUT)
    log_dir: str | None = flag(
        None, "TensorBoard scalars (loss, accuracy, LR, samples/s) from rank 0", section=OUTPUT)
    progress: bool = flag(True, "no progress (one line per epoch only)", section=OUTPUT,
                          negated=True)
    progress_every: float = flag(
        30.0, "seconds between rank 0's progress lines (step, loss, samples/s, ETA) when its "
        "output is not a terminal, as under horovodrun or mpirun (a terminal gets a bar)",
        section=OUTPUT, type=float, metavar="S",
        check=lambda v: None if v > 0 else f"must be positive, got {v}")
    tracker: str = flag(
        "none", "send the run to an experiment tracker: mlflow logs the resolved config as "
        "params and every epoch's record as metrics from rank 0, off the training thread; a "
        "resumed run goes on in the same tracked run; a tracker that fails warns once and "
        "training goes on", section=OUTPUT, choices=TRACKERS)
    tracking_uri: str | None = flag(
        None, "where --tracker mlflow sends the run (default: $MLFLOW_TRACKING_URI, else MLflow's "
        "own default, sqlite:///mlflow.db in the working folder)", section=OUTPUT, metavar="URI")
    experiment: str | None = flag(
        None, "the tracker's experiment name (default: the recipe's name)", section=OUTPUT,
        metavar="NAME")


def _file_path(path: str | None) -> str | None:
    if path is not None and (not path or os.path.isdir(path)):
        return f"must be a file path, got {path!r}"
    return None


@dataclass(frozen=True)
class ProfilingConfig(FlagConfig):
    """Horovod's own instruments (``common.monitor.profiling``): its timeline and its autotuner."""

    # Not --timeline: horovodrun reads that as an abbreviation of its own --timeline-* flags
    # wherever it stands on the command line, and stops.
    timeline_out: str | None = flag(
        None, "record Horovod's timeline (rank 0 writes PATH, a chrome://tracing file) and print "
        "its summary at the end: time negotiating, waiting and communicating, bytes reduced, "
        "fusion buffer use", section=MONITORING, check=_file_path, metavar="PATH")
    autotune: bool = flag(
        False, "let Horovod's autotuner tune fusion threshold, cycle time and cache; its log "
        "goes beside --metrics-file and the final record says what it chose",
        section=MONITORING)


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

    # The flags whose values differ from the recipe's defaults (``parse_config`` fills it): the
    # printed ``config:`` line shows only these.
    changed: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_flags(cls, **values: Any) -> TrainConfig:
        """A config from flag values by name (``batch_size=16``); the rest keep their defaults.
        ``--run-dir`` gives the checkpoint folder and the metrics file not given themselves
        (``None``; an empty ``--checkpoint-dir`` stays off)."""
        parts: dict[str, dict[str, Any]] = {part: {} for part in _COMPONENTS}
        for name, value in values.items():
            if name not in _HOME:
                raise TypeError(f"no core flag named {name!r}")
            parts[_HOME[name]][name] = value
        run_dir = parts["output"].get("run_dir")
        if run_dir:
            if parts["checkpoint"].get("checkpoint_dir") is None:
                parts["checkpoint"]["checkpoint_dir"] = os.path.join(run_dir, "checkpoints")
            if parts["output"].get("metrics_file") is None:
                parts["output"]["metrics_file"] = os.path.join(run_dir, "metrics.jsonl")
        return cls(**{part: kind(**values_of(kind, parts[part])) for part, kind in _COMPONENTS.items()})

    def validate(self) -> None:
        """Raise ConfigError for the first value that cannot work."""
        for part in _COMPONENTS:
            getattr(self, part).validate()
        if self.profiling.autotune and not self.output.metrics_file:
            raise ConfigError(f"{flag_name('autotune')} writes its log beside "
                              f"{flag_name('metrics_file')}: give one")

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
                                       run_dir=sub(self.output.run_dir),
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
                raise ConfigError(f"{flag_name(name)} does not apply to {who}")

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
    last the runtime settings Horovod and MPI started with (``common.world.runtime.SETTINGS``)."""
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
    text = yaml.safe_dump(config, sort_keys=False)
    atomic_write(path, lambda f: f.write(text), mode="w")


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (every rank parses, so every rank says it)."""

    def error(self, message: str):  # noqa: D401 - argparse's signature
        raise ConfigError(f"{message} (see --help)")


def core_parser(description: str, kfold: bool = False, data: bool = False,
                **defaults: Any) -> argparse.ArgumentParser:
    """A parser holding the core flags; ``defaults`` override TrainConfig's defaults per recipe
    (``run_dir="runs/<recipe>"`` gives the run its folder).

    ``kfold``: the recipe's data supports ``--folds`` / ``--fold`` (``common.data.folds``);
    ``data``: the recipe reads its data from disk (``--data-dir``, ``--data-workers``)."""
    TrainConfig.from_flags(**defaults)  # a TypeError for a name that is no core flag
    base = dict(defaults)  # as given: --run-dir's folders are resolved after parsing
    p = _OneLineErrorParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file with the same keys as the "
                   "flags (dashes or underscores); flags given on the command line override it")
    sections = {name: p.add_argument_group(name) for name in SECTIONS}
    for kind in _COMPONENTS.values():
        add_flags(p, kind, base, sections,
                  opt_in=[group for group, on in (("kfold", kfold), ("data", data)) if on])
    return p


_INFORMATIONAL = {"recipe", "world_size", "runtime_settings"}


def parse_config(
    parser: argparse.ArgumentParser, argv: list[str] | None = None
) -> tuple[TrainConfig, argparse.Namespace]:
    """Parse flags (over an optional --config YAML file) into the core config and the recipe's args."""
    recipe_defaults = {a.dest: a.default for a in parser._actions}
    first, _ = parser.parse_known_args(argv)
    if first.config:
        parser.set_defaults(**_read_yaml(first.config, parser))
    args = parser.parse_args(argv)
    changed = tuple(k for k, v in vars(args).items()
                    if k != "config" and v != recipe_defaults.get(k))
    cfg = TrainConfig.from_flags(**{k: getattr(args, k) for k in _HOME if hasattr(args, k)})
    cfg = dataclasses.replace(cfg, changed=changed)
    cfg.validate()
    if cfg.run.mpi_groups > 1:
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
    # Each flag's own spelling too: ``no-progress: true`` is ``progress: false``.
    negated = {opt[2:].replace("-", "_"): a.dest for a in parser._actions
               if isinstance(a, argparse._StoreFalseAction) for opt in a.option_strings}
    out = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest in _INFORMATIONAL:  # written by save_resolved; describes the run, sets nothing
            continue
        if dest in negated and dest not in actions:
            if not isinstance(value, bool):
                raise ConfigError(f"--config {path!r}: {key} must be true or false, got {value!r}")
            dest, value = negated[dest], not value
        if dest in _HOME and dest not in actions:  # a core flag this recipe does not show
            kind = _COMPONENTS[_HOME[dest]]
            default = {f.name: f.default for f in dataclasses.fields(kind)}[dest]
            if value == default or (value == [] and default == ()):
                continue  # the config.yaml of another recipe: it sets nothing here
            raise ConfigError(f"--config {path!r}: {key} does not apply to this recipe")
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
