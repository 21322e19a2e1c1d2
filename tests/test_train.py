"""The baseline trainer end to end on the demo corpus (CPU): run directory contract, determinism,
loss goes down, exit codes."""
import json
import os
import subprocess
import sys

import pytest

from pgolf.trainers.config import TrainConfig
from pgolf.trainers.train import RunFailure, run_training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(demo_data, run_dir, seed=1, iterations=30) -> TrainConfig:
    cfg = TrainConfig()
    m, d, s = cfg.model, cfg.data, cfg.schedule
    m.num_layers, m.model_dim, m.num_heads, m.num_kv_heads = 2, 64, 4, 2
    d.data_path, d.tokenizer_path = str(demo_data.data_path), str(demo_data.tokenizer_path)
    d.train_seq_len, d.train_batch_tokens, d.grad_accum_steps, d.val_tokens_limit = 64, 1024, 1, 4096
    s.iterations, s.warmdown_iters, s.warmup_steps, s.max_wallclock_seconds = iterations, 10, 2, 0.0
    cfg.eval.val_loss_every, cfg.eval.val_batch_size, cfg.eval.train_log_every = 10, 2048, 5
    cfg.run.device, cfg.run.compile, cfg.run.seed, cfg.run.run_dir, cfg.run.threads = "cpu", False, seed, str(run_dir), 1
    return cfg


@pytest.fixture(scope="module")
def first_run(demo_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run_a")
    return run_dir, run_training(tiny_config(demo_data, run_dir))


def test_run_directory_contract(first_run):
    run_dir, result = first_run
    files = set(os.listdir(run_dir))
    assert {"metrics.jsonl", "train.log", "result.json", "train_gpt.py"} <= files
    assert result["artifact/blob"] in files
    log = (run_dir / "train.log").read_text()
    assert log.startswith("pgolf trainer: resolved config")
    assert "environment:" in log and "config_hash:" in log
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    kinds = {e["event"] for e in events}
    assert {"start", "train", "val", "phase", "final"} <= kinds
    assert json.loads((run_dir / "result.json").read_text())["final/val_bpb"] == result["final/val_bpb"]


def test_artifact_bytes_are_real_file_sizes(first_run):
    run_dir, result = first_run
    model_bytes = os.path.getsize(run_dir / result["artifact/blob"])
    code_bytes = os.path.getsize(run_dir / "train_gpt.py")
    assert result["artifact/model_bytes"] == model_bytes
    assert result["artifact/code_bytes"] == code_bytes
    assert result["artifact/bytes"] == model_bytes + code_bytes
    assert result["artifact/headroom_bytes"] == 16_000_000 - model_bytes - code_bytes
    assert result["artifact/code_raw_bytes"] > code_bytes  # the wrapper compresses the sources


def test_metrics_are_finite_and_loss_goes_down(first_run):
    run_dir, result = first_run
    for key in ("final/val_bpb", "final/val_loss", "data/tokens_per_byte", "prequant/val_bpb"):
        assert result[key] == result[key] and 0 < result[key] < 20, key
    vals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val_losses = [e["val/loss"] for e in vals if e["event"] == "val"]
    assert val_losses[-1] < val_losses[0] - 0.5
    assert result["steps"] == 30
    # bpb = loss / ln2 * tokens_per_byte, on the same scored positions
    import math
    assert result["final/val_bpb"] == pytest.approx(result["final/val_loss"] / math.log(2) * result["data/tokens_per_byte"], rel=1e-12)


def test_same_seed_is_bit_identical_and_seeds_differ(first_run, demo_data, tmp_path):
    _, a = first_run
    b = run_training(tiny_config(demo_data, tmp_path / "b"))
    c = run_training(tiny_config(demo_data, tmp_path / "c", seed=2))
    for key in ("final/val_loss", "final/val_bpb", "prequant/val_loss", "artifact/model_bytes"):
        assert a[key] == b[key], key
    assert a["final/val_loss"] != c["final/val_loss"]
    assert a["config_hash"] == c["config_hash"]  # seeds of one variant


def test_bad_data_path_is_exit_code_3(demo_data, tmp_path):
    cfg = tiny_config(demo_data, tmp_path / "r")
    cfg.data.data_path = str(tmp_path / "nowhere")
    with pytest.raises(RunFailure) as err:
        run_training(cfg)
    assert err.value.code == 3 and "nowhere" in str(err.value)


def test_artifact_over_cap_is_reported_and_exit_code_4(demo_data, tmp_path):
    cfg = tiny_config(demo_data, tmp_path / "r", iterations=2)
    cfg.run.artifact_cap_bytes = 1000
    with pytest.raises(RunFailure) as err:
        run_training(cfg)
    assert err.value.code == 4 and "> cap 1,000" in str(err.value)
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert result["status"] == "over_budget" and result["artifact/headroom_bytes"] < 0


def test_trainer_module_entry_point(demo_data, tmp_path):
    cfg = tiny_config(demo_data, tmp_path / "r", iterations=3)
    path = tmp_path / "resolved_config.json"
    cfg.write_json(str(path))
    out = subprocess.run([sys.executable, "-m", "pgolf.trainers.gpt", "--config", str(path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "final/val_bpb=" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "pgolf.trainers.gpt", "--config", str(path), "--set", "model.num_layer=2"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown key config.model.num_layer" in bad.stderr


def test_cli_train_and_inspect(data_root, tmp_path):
    env = dict(os.environ, PGOLF_DATA_DIR=str(data_root))  # the session's demo corpus: no second build
    out = subprocess.run([sys.executable, "-m", "pgolf.cli", "inspect", os.path.join(ROOT, "experiments", "baseline.toml")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert "params:     17,059,912" in out.stdout
    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "pgolf.cli", "train", os.path.join(ROOT, "experiments", "smoke.toml"),
                          "--seed", "5", "--run-dir", str(run_dir), "--set", "config.schedule.iterations=3",
                          "--set", "config.eval.val_loss_every=0", "--set", "config.data.val_tokens_limit=4096"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert "final/val_bpb" in out.stdout and "artifact/bytes" in out.stdout and "data/tokens_per_byte" in out.stdout
    resolved = json.loads((run_dir / "resolved_config.json").read_text())
    assert resolved["run"]["seed"] == 5 and resolved["data"]["data_path"].startswith(str(data_root))


def test_wallclock_cap_costs_one_clock_all_reduce_per_step(demo_data, tmp_path, monkeypatch):
    """Under a cap every rank must agree on the clock (LR, SWA and late QAT follow it); each
    agreement is a device sync, so the loop does one per step and reuses it for the next step's
    schedule. Only a restart of the clock (after a validation) costs one more."""
    from pgolf.trainers import train as train_mod

    calls = []

    def counting_max(value, device):
        calls.append(value)
        return value

    monkeypatch.setattr(train_mod, "_all_reduce_max", counting_max)
    cfg = tiny_config(demo_data, tmp_path, iterations=12)
    cfg.schedule.max_wallclock_seconds = 3600.0
    cfg.eval.val_loss_every = 5  # validations at steps 0, 5, 10 and at the end
    result = run_training(cfg)
    assert result["steps"] == 12
    assert len(calls) == 12 + 3, calls  # one per step + one per clock restart after steps 0, 5, 10
    assert calls == sorted(calls)  # one clock, never running backwards

    calls.clear()
    cfg = tiny_config(demo_data, tmp_path / "nocap", iterations=4)
    run_training(cfg)
    assert calls == []  # without a cap nothing needs agreeing


def test_wallclock_cap_stops_on_the_agreed_clock(demo_data, tmp_path, monkeypatch):
    """The stop decision follows the all-reduced clock: when the ranks' agreed time passes the cap
    after step 5, step 5 is the last (here a stand-in all-reduce reports the cap reached)."""
    from pgolf.trainers import train as train_mod

    calls = []

    def fake_max(value, device):
        calls.append(value)
        return 3600e3 if len(calls) == 6 else value  # call 1: before step 1; calls 2..6: after steps 1..5

    monkeypatch.setattr(train_mod, "_all_reduce_max", fake_max)
    cfg = tiny_config(demo_data, tmp_path, iterations=20)
    cfg.schedule.max_wallclock_seconds = 3600.0
    cfg.eval.val_loss_every = 0
    result = run_training(cfg)
    assert result["steps"] == 5
    assert "stopping_early: wallclock_cap train_time:3600000ms step:5" in (tmp_path / "train.log").read_text()
