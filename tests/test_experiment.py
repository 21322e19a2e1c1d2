"""Experiment files: extends, --set, variants, and errors that name the file and key."""
import os
import textwrap

import pytest

from pgolf.experiment import ExperimentError, load_experiment
from pgolf.trainers.config import ConfigError, TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def test_baseline_file_equals_dataclass_defaults():
    exp = load_experiment(os.path.join(ROOT, "experiments", "baseline.toml"))
    defaults = TrainConfig().to_dict()
    resolved = exp.config.to_dict()
    for section in ("model", "optim", "schedule", "quant"):
        assert resolved[section] == defaults[section], section


def test_extends_and_override(tmp_path):
    write(tmp_path, "parent.toml", """
        [experiment]
        seeds = [1, 2]
        [config.model]
        num_layers = 4
        model_dim = 128
    """)
    child = write(tmp_path, "child.toml", """
        extends = "parent.toml"
        [config.model]
        num_layers = 6
    """)
    exp = load_experiment(child, overrides=["config.optim.matrix_lr=0.02", "experiment.seeds=[7]"])
    assert exp.config.model.num_layers == 6
    assert exp.config.model.model_dim == 128
    assert exp.config.optim.matrix_lr == 0.02
    assert exp.meta.seeds == [7]
    assert [os.path.basename(p) for p in exp.lineage] == ["parent.toml", "child.toml"]
    assert exp.meta.name == "child"


def test_unknown_key_names_file_and_key(tmp_path):
    parent = write(tmp_path, "parent.toml", """
        [config.model]
        num_layer = 4
    """)
    child = write(tmp_path, "child.toml", 'extends = "parent.toml"\n')
    with pytest.raises(ConfigError) as err:
        load_experiment(child)
    msg = str(err.value)
    assert parent in msg and "config.model.num_layer" in msg and "num_layers" in msg


def test_wrong_type_names_expected_type(tmp_path):
    path = write(tmp_path, "bad.toml", """
        [config.optim]
        matrix_lr = "fast"
    """)
    with pytest.raises(ConfigError, match=r"bad.toml: config.optim.matrix_lr: expected float, got str 'fast'"):
        load_experiment(path)


def test_int_widens_to_float_but_bool_is_not_int(tmp_path):
    ok = write(tmp_path, "ok.toml", "[config.optim]\nmatrix_lr = 1\n")
    assert load_experiment(ok).config.optim.matrix_lr == 1.0
    bad = write(tmp_path, "bad.toml", "[config.model]\nnum_layers = true\n")
    with pytest.raises(ConfigError, match="expected int"):
        load_experiment(bad)


def test_unknown_section_and_table(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown section \[config.modle\]"):
        load_experiment(write(tmp_path, "a.toml", "[config.modle]\nx = 1\n"))
    with pytest.raises(ExperimentError, match="unknown top-level key 'sweeps'"):
        load_experiment(write(tmp_path, "b.toml", "[sweeps]\nx = 1\n"))
    with pytest.raises(ExperimentError, match=r"unknown key 'gpu' in \[resources\]"):
        load_experiment(write(tmp_path, "c.toml", "[resources]\ngpu = 1\n"))


def test_missing_parent_and_cycle(tmp_path):
    with pytest.raises(ExperimentError, match="does not exist"):
        load_experiment(write(tmp_path, "a.toml", 'extends = "nope.toml"\n'))
    write(tmp_path, "x.toml", 'extends = "y.toml"\n')
    with pytest.raises(ExperimentError, match="cycle"):
        load_experiment(write(tmp_path, "y.toml", 'extends = "x.toml"\n'))


def test_bad_set_override_is_an_error(tmp_path):
    path = write(tmp_path, "a.toml", "")
    with pytest.raises(ConfigError, match="--set"):
        load_experiment(path, overrides=["config.model.num_layers=abc"])
    with pytest.raises(ExperimentError, match="KEY=VALUE"):
        load_experiment(path, overrides=["config.model.num_layers"])


def test_variants_are_type_checked(tmp_path):
    good = write(tmp_path, "v.toml", """
        [variants.deep]
        "model.num_layers" = 12
        [variants.wide.model]
        model_dim = 768
    """)
    exp = load_experiment(good)
    assert exp.variant_names() == ["deep", "wide"]
    assert exp.resolved("deep").model.num_layers == 12
    assert exp.resolved("wide").model.model_dim == 768
    bad = write(tmp_path, "w.toml", '[variants.x]\n"model.num_layers" = "many"\n')
    with pytest.raises(ConfigError, match=r"\[variants.x\].*expected int"):
        load_experiment(bad)


def test_config_hash_ignores_seed_but_not_hyperparameters():
    exp = load_experiment(os.path.join(ROOT, "experiments", "smoke.toml"))
    a = exp.hash_of(exp.resolved(seed=1))
    b = exp.hash_of(exp.resolved(seed=2))
    exp2 = load_experiment(os.path.join(ROOT, "experiments", "smoke.toml"), overrides=["config.optim.matrix_lr=0.03"])
    assert a == b
    assert exp2.hash_of(exp2.resolved(seed=1)) != a


def test_explicit_set_beats_the_smoke_shrink():
    path = os.path.join(ROOT, "experiments", "stacks", "pr691.toml")
    shrunk = load_experiment(path, smoke=True)
    assert shrunk.config.model.model_dim < 512 and shrunk.config.run.device == "cpu"
    exp = load_experiment(path, smoke=True, overrides=["config.schedule.iterations=5"])
    assert exp.config.schedule.iterations == 5
    assert exp.config.model.model_dim == shrunk.config.model.model_dim
