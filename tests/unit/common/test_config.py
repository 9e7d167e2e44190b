"""Tests of the core flags: defaults, YAML config, and validation with one-line errors."""

import pytest

from common.config.core import ConfigError, TrainConfig, core_parser, parse_config


def parse(argv, **defaults):
    return parse_config(core_parser("test", data=True, **defaults), argv)[0]


def test_defaults_and_recipe_overrides():
    cfg = parse([], epochs=7)
    assert cfg.run.epochs == 7 and cfg.run.batch_size == TrainConfig().run.batch_size


def test_flags_parse():
    cfg = parse(["--epochs", "3", "--fp16-allreduce", "--batches-per-allreduce", "2",
                 "--use-adasum", "--lr-decay", "step", "--decay-epochs", "1", "2"])
    g = cfg.gradients
    assert (cfg.run.epochs, g.fp16_allreduce, g.batches_per_allreduce, g.use_adasum) == (
        3, True, 2, True)
    assert cfg.schedule.decay_epochs == (1, 2)


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--batch-size", "-4"], "--batch-size must be at least 1"),
    (["--base-lr", "0"], "--base-lr must be positive"),
    (["--epochs", "ten"], "invalid int value"),
    (["--lr-decay", "step"], "needs --decay-epochs"),
    (["--decay-epochs", "5", "3"], "increasing"),
    (["--use-adasum", "--gradient-predivide-factor", "2"], "only with averaging"),
    (["--data-dir", "/does/not/exist"], "is not a directory"),
    (["--bogus"], "unrecognized arguments"),
    (["--divergence-factor", "0.5"], "--divergence-factor must be 0 .off. or greater than 1"),
])
def test_bad_values_are_one_line_errors(argv, message):
    with pytest.raises(ConfigError, match=message) as e:
        parse(argv)
    assert "\n" not in str(e.value)


def test_yaml_config_with_flag_override(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 5\nbase-lr: 0.5\nfp16_allreduce: true\n")
    cfg = parse(["--config", str(f), "--epochs", "9"])
    assert (cfg.run.epochs, cfg.schedule.base_lr, cfg.gradients.fp16_allreduce) == (9, 0.5, True)


@pytest.mark.parametrize("text, message", [
    ("epochz: 5\n", "unknown key 'epochz'"),
    ("epochs: 2.5\n", "epochs must be int"),
    ("- 1\n- 2\n", "must be a mapping"),
    ("epochs: [\n", "not valid YAML"),
])
def test_bad_yaml(tmp_path, text, message):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        parse(["--config", str(f)])


def test_resolved_config_round_trips_through_yaml(tmp_path):
    import yaml

    from common.config.core import resolved, save_resolved

    cfg = parse(["--epochs", "4", "--decay-epochs", "2", "3", "--lr-decay", "step"])
    doc = resolved("pytorch/x", cfg, {"depth": 20, "epochs": 4, "config": None}, 2)
    save_resolved(str(tmp_path / "config.yaml"), doc)
    back = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert back["recipe"] == "pytorch/x" and back["world_size"] == 2 and back["depth"] == 20
    assert back["decay_epochs"] == [2, 3] and "config" not in back
    # what was saved can be fed back with --config and gives the same run
    parser = core_parser("test")
    parser.add_argument("--depth", type=int, default=56)
    again, args = parse_config(parser, ["--config", str(tmp_path / "config.yaml")])
    assert again == cfg and args.depth == 20


def test_mpi_group_config_has_its_own_seed_and_folders():
    from common.config.core import TrainConfig

    cfg = TrainConfig.from_flags(seed=7, checkpoint_dir="runs/x/ckpt",
                                 metrics_file="runs/x/metrics.jsonl", log_dir=None, mpi_groups=3)
    g2 = cfg.for_group(2)
    assert g2.run.seed == 9 and g2.run.mpi_groups == 3
    assert g2.checkpoint.checkpoint_dir == "runs/x/ckpt/group2"
    assert g2.output.metrics_file == "runs/x/group2/metrics.jsonl"
    assert g2.output.log_dir is None
    assert cfg.for_group(0).checkpoint.checkpoint_dir == "runs/x/ckpt/group0"


def test_mpi_groups_must_be_positive():
    from common.config.core import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match="--mpi-groups must be at least 1"):
        TrainConfig.from_flags(mpi_groups=0).validate()


def test_each_component_validates_itself():
    from common.config.core import CheckpointConfig, GradientConfig, RunConfig, ScheduleConfig

    for bad, message in [(RunConfig(epochs=0), "--epochs"),
                         (ScheduleConfig(lr_decay="step"), "needs --decay-epochs"),
                         (GradientConfig(batches_per_allreduce=0), "--batches-per-allreduce"),
                         (CheckpointConfig(keep_checkpoints=0), "--keep-checkpoints")]:
        with pytest.raises(ConfigError, match=message):
            bad.validate()
    with pytest.raises(TypeError, match="no core flag named 'epochz'"):
        TrainConfig.from_flags(epochz=3)


def test_flags_and_yaml_keys_map_one_to_one_onto_component_fields():
    """Every core flag has exactly one home, named as the flag."""
    parser = core_parser("test", data=True)
    dests = {a.dest for a in parser._actions} - {"help", "config"}
    assert dests == set(TrainConfig().as_dict())
    parser = core_parser("test")  # a recipe that reads no data from disk: no data flags
    dests = {a.dest for a in parser._actions} - {"help", "config"}
    assert dests == set(TrainConfig().as_dict()) - {"data_dir", "data_workers"}
    parser = core_parser("test", kfold=True, data=True)  # the MNIST family's K-fold flags
    dests = {a.dest for a in parser._actions} - {"help", "config"}
    assert dests == set(TrainConfig.from_flags(folds=2, fold=0).as_dict())


@pytest.mark.parametrize("flags, message", [
    (dict(folds=1, fold=0), "--folds must be at least 2"),
    (dict(fold=1), "--fold needs --folds K"),
    (dict(folds=4), r"--folds 4 needs --fold I \(0..3\), or --mpi-groups 4"),
    (dict(folds=4, fold=4), "--fold must be in 0..3 for --folds 4, got 4"),
    (dict(folds=4, fold=-1), "--fold must be in 0..3 for --folds 4, got -1"),
    (dict(folds=4, mpi_groups=2), "--mpi-groups must be 4, got 2"),
    (dict(folds=2, fold=0, mpi_groups=2), "each group trains its own fold; drop --fold"),
])
def test_bad_fold_settings_are_one_line_errors(flags, message):
    from common.config.core import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_flags(**flags).validate()


def test_fold_configs_write_to_fold_folders_and_keep_the_seed():
    from common.config.core import TrainConfig

    cfg = TrainConfig.from_flags(seed=7, checkpoint_dir="runs/x/ckpt", folds=3, mpi_groups=3,
                                 metrics_file="runs/x/metrics.jsonl", log_dir="runs/x/tb")
    cfg.validate()
    g2 = cfg.for_group(2)
    alone = TrainConfig.from_flags(seed=7, checkpoint_dir="runs/x/ckpt", folds=3, fold=2,
                                   metrics_file="runs/x/metrics.jsonl", log_dir="runs/x/tb")
    alone.validate()
    alone = alone.for_fold(2)
    assert g2.run.seed == alone.run.seed == 7 and g2.run.fold == alone.run.fold == 2
    for c in (g2, alone):
        assert c.checkpoint.checkpoint_dir == "runs/x/ckpt/fold2"
        assert c.output.metrics_file == "runs/x/fold2/metrics.jsonl"
        assert c.output.log_dir == "runs/x/tb/fold2"


def test_only_recipes_with_folds_take_the_flags():
    from common.config.core import ConfigError, core_parser, parse_config

    cfg, _ = parse_config(core_parser("t", kfold=True), ["--folds", "3", "--fold", "1"])
    assert (cfg.run.folds, cfg.run.fold) == (3, 1)
    with pytest.raises(ConfigError, match="unrecognized arguments: --folds"):
        parse_config(core_parser("t"), ["--folds", "3", "--fold", "1"])


def test_a_strategy_refuses_core_flags_it_has_no_use_for():
    from common.config.core import ConfigError, TrainConfig

    TrainConfig().require_defaults("x", "amp", "mpi_groups")
    with pytest.raises(ConfigError, match="--mpi-groups does not apply to the pipeline"):
        TrainConfig.from_flags(mpi_groups=2).require_defaults("the pipeline", "amp", "mpi_groups")


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_stall_timeout_flag_is_validated(value):
    with pytest.raises(ConfigError, match="--stall-timeout"):
        TrainConfig.from_flags(stall_timeout=float(value)).validate()


def _declared_flags() -> dict[str, list[str]]:
    """Every flag of the core and the strategies' configs -> the config classes declaring it."""
    import dataclasses

    from common.config import strategies
    from common.config.core import _COMPONENTS

    found: dict[str, list[str]] = {}
    kinds = [*_COMPONENTS.values(), strategies.ElasticConfig, strategies.PipelineConfig,
             strategies.ServerConfig]
    for kind in kinds:
        for f in dataclasses.fields(kind):
            assert "flag" in f.metadata, f"{kind.__name__}.{f.name} is not declared with flag()"
            found.setdefault("--" + f.name.replace("_", "-"), []).append(kind.__name__)
    return found


def test_each_flag_is_declared_once():
    """One field per flag, and no hand-written add_argument of it anywhere in the core or the
    recipes: its help, default, section and check come from that field alone."""
    import ast
    from pathlib import Path

    declared = _declared_flags()
    assert {k: v for k, v in declared.items() if len(v) > 1} == {}
    root = Path(__file__).resolve().parents[3]
    written = []
    for path in sorted([*root.glob("common/**/*.py"), *root.glob("recipes/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"
                    and node.args and isinstance(node.args[0], ast.Constant)
                    and node.args[0].value in declared):
                written.append(f"{path.relative_to(root)}:{node.lineno} {node.args[0].value}")
    assert written == []
    # The parser's flags are exactly the declared ones (and --no-progress for progress).
    parser = core_parser("test", kfold=True, data=True)
    options = {o for a in parser._actions for o in a.option_strings} - {"-h", "--help", "--config"}
    core = {k for k, v in declared.items() if not set(v) & {"ElasticConfig", "PipelineConfig",
                                                            "ServerConfig"}}
    assert options == (core - {"--progress"}) | {"--no-progress"}


def test_a_field_check_names_its_flag():
    from common.config.core import RunConfig

    with pytest.raises(ConfigError, match=r"^--data-workers must be >= 0$"):
        RunConfig(data_workers=-1).validate()
    with pytest.raises(ConfigError, match=r"^--stop-signals: 'NOPE' is not a signal"):
        RunConfig(stop_signals=("NOPE",)).validate()


def test_yaml_takes_the_flags_own_spellings_and_the_changed_settings_are_known(tmp_path):
    """``no-progress: true`` is ``progress: false``; ``cfg.changed`` names what differs from the
    recipe's defaults (what the ``config:`` line shows), from the command line or the file."""
    path = tmp_path / "c.yaml"
    path.write_text("no-progress: true\nbatch-size: 64\n")
    cfg = parse(["--config", str(path), "--epochs", "3"], epochs=5)
    assert cfg.output.progress is False and cfg.run.batch_size == 64
    assert set(cfg.changed) == {"progress", "batch_size", "epochs"}
    path.write_text("no-progress: 1\n")
    with pytest.raises(ConfigError, match="no-progress must be true or false"):
        parse(["--config", str(path)])
    assert parse(["--epochs", "5"], epochs=5).changed == ()  # the recipe's default is no change


def test_a_config_yaml_of_a_recipe_with_other_flags_loads_where_it_sets_nothing(tmp_path):
    """config.yaml lists every core field, data flags too; a recipe without them takes the file
    unless it sets one of them."""
    path = tmp_path / "c.yaml"
    path.write_text("data_dir: null\ndata_workers: 0\nepochs: 4\n")
    no_data = parse_config(core_parser("test"), ["--config", str(path)])[0]
    assert no_data.run.epochs == 4
    path.write_text("data_workers: 2\n")
    with pytest.raises(ConfigError, match="data_workers does not apply to this recipe"):
        parse_config(core_parser("test"), ["--config", str(path)])
