"""The silent failures of issue #11: every documented --set form applies, every key that does not resolve
is an error naming it, every cap has one source, every config error is found before anything starts."""
import os
import textwrap

import pytest

from pgolf.cli import main
from pgolf.experiment import ExperimentError, load_experiment
from pgolf.trainers.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "experiments", "smoke.toml")


def write(tmp_path, text, name="exp.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


# 1. --set section.key=value (README, train_gpt.py) applies like config.section.key=value


@pytest.mark.parametrize("form", ["optim.matrix_lr=0.02", "config.optim.matrix_lr=0.02"])
def test_set_short_and_long_form_apply(form):
    exp = load_experiment(SMOKE, overrides=[form])
    assert exp.config.optim.matrix_lr == 0.02
    base = load_experiment(SMOKE)
    assert exp.hash_of(exp.config) != base.hash_of(base.config)


@pytest.mark.parametrize("item, named, closest", [
    ("optim.matrix_lrr=0.02", "matrix_lrr", "matrix_lr"),
    ("config.optim.matrix_lrr=0.02", "matrix_lrr", "matrix_lr"),
    ("budgett.train_seconds=5", "budgett", "budget"),
    ("exprement.seeds=[7]", "exprement", "experiment"),
    ("budget.train_secs=5", "train_secs", "train_seconds"),
])
def test_set_unknown_key_is_an_error_naming_the_closest(item, named, closest):
    with pytest.raises(ConfigError) as err:
        load_experiment(SMOKE, overrides=[item])
    msg = str(err.value)
    assert named in msg and closest in msg, msg


@pytest.mark.parametrize("item", ["=5", "optim.matrix_lr", " =0.1"])
def test_set_malformed_is_an_error(item):
    with pytest.raises(ConfigError, match="--set"):
        load_experiment(SMOKE, overrides=[item])


def test_cli_set_short_form_reaches_inspect(capsys):
    assert main(["inspect", SMOKE, "--json", "--set", "optim.matrix_lr=0.02"]) == 0
    assert '"matrix_lr": 0.02' in capsys.readouterr().out


# 2. unknown variants


def test_unknown_variant_is_an_error(capsys):
    exp = load_experiment(SMOKE)
    with pytest.raises(ExperimentError, match="nope"):
        exp.resolved("nope", 1)
    assert main(["inspect", SMOKE, "--variant", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


# 3. one source of truth for every cap


def test_config_cap_conflicting_with_budget_is_an_error(tmp_path):
    path = write(tmp_path, """
        [budget]
        artifact_bytes = 16_000_000
        [config.run]
        artifact_cap_bytes = 1000
    """)
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert "artifact_cap_bytes" in str(err.value) and "artifact_bytes" in str(err.value)


def test_budget_train_seconds_ties_the_wallclock_cap(tmp_path):
    path = write(tmp_path, """
        [budget]
        train_seconds = 300
    """)
    exp = load_experiment(path)
    assert exp.config.schedule.max_wallclock_seconds == 300
    over = write(tmp_path, """
        [budget]
        train_seconds = 300
        [config.schedule]
        max_wallclock_seconds = 900
    """, "over.toml")
    with pytest.raises(ConfigError, match="max_wallclock_seconds"):
        load_experiment(over)


def test_variant_cap_conflict_is_an_error(tmp_path):
    path = write(tmp_path, """
        [variants.small]
        "run.eval_cap_seconds" = 5
    """)
    with pytest.raises(ConfigError, match="eval_cap_seconds"):
        load_experiment(path)


# 4. enum values and the metric


@pytest.mark.parametrize("item, key", [
    ("config.run.device=tpu", "run.device"),
    ("experiment.metric=no/such_metric", "metric"),
    ("config.ttt.mode=sometimes", "ttt.mode"),
])
def test_enum_value_outside_its_choices_is_an_error(item, key):
    with pytest.raises(ConfigError) as err:
        load_experiment(SMOKE, overrides=[item])
    assert key in str(err.value)


# 5. cross-field checks before anything starts


@pytest.mark.parametrize("item, key", [
    ("config.model.num_heads=3", "num_heads"),
    ("config.data.train_seq_len=0", "train_seq_len"),
    ("config.data.train_batch_tokens=0", "train_batch_tokens"),
    ("budget.train_seconds=-1", "train_seconds"),
    ("budget.artifact_bytes=-1", "artifact_bytes"),
])
def test_cross_field_errors_found_at_load(item, key):
    with pytest.raises(ConfigError) as err:
        load_experiment(SMOKE, overrides=[item])
    assert key in str(err.value)


@pytest.mark.parametrize("table, line, key", [
    ("budget", "eval_seconds = nan", "eval_seconds"),
    ("config.optim", "matrix_lr = nan", "matrix_lr"),
    ("config.optim", "matrix_lr = -inf", "matrix_lr"),
])
def test_non_finite_numbers_are_errors(tmp_path, table, line, key):
    path = write(tmp_path, f"[{table}]\n{line}\n")
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert key in str(err.value)


def test_validate_exits_2_before_mlflow_or_ray(tmp_path, monkeypatch, capsys):
    import ray

    def boom(*a, **k):
        raise AssertionError("Ray must not start for a bad config")

    monkeypatch.setattr(ray, "init", boom)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    db = tmp_path / "mlflow.db"
    rc = main(["validate", SMOKE, "--set", "config.model.num_heads=3", "--tracking-uri", f"sqlite:///{db}",
               "--runs-dir", str(tmp_path / "runs")])
    assert rc == 2
    assert "num_heads" in capsys.readouterr().err
    assert not db.exists()
