"""Failures stay contained: every injected fault ends as a recorded FAILED/KILLED run with its reason
while the healthy trials complete, and --resume finishes only what is missing."""
import glob
import os
import signal
import textwrap
import threading
import time

from orch_helpers import SMOKE, alive as _alive, children, run_cli, tiny_args


def test_each_fault_is_recorded_and_the_others_complete(ray_session, tracking_uri, data_root, tmp_path, capsys):
    demo = os.path.join(data_root, "demo")
    exp = tmp_path / "faults.toml"
    # Custom data (not "demo") so a variant can point at a missing directory; the artifact cap is lowered so
    # 2 MB of padding pushes a tiny model over it; the deadline ends the hang quickly but leaves the healthy
    # trials ample time on a loaded 2-core box.
    exp.write_text(textwrap.dedent(f"""
        extends = "{SMOKE}"
        [experiment]
        name = "faults"
        seeds = [1]
        data = "custom"
        [budget]
        artifact_bytes = 2_000_000
        trial_timeout_seconds = 30
        [config.data]
        data_path = "{demo}/datasets/fineweb10B_sp1024"
        tokenizer_path = "{demo}/tokenizers/fineweb_1024_bpe.model"
        [variants.ok]
        [variants.raise]
        "faults.raise_at_step" = 2
        [variants.sigkill]
        "faults.sigkill_at_step" = 2
        [variants.hang]
        "faults.hang_at_step" = 2
        [variants.padded]
        "faults.pad_artifact_bytes" = 2_000_000
        [variants.baddata]
        "data.data_path" = "{tmp_path}/no/such/shards"
    """))
    rc, out = run_cli(["validate", str(exp), "--data-dir", str(data_root), "--runs-dir", str(tmp_path / "runs"),
                       *tiny_args()], capsys)
    assert rc == 1, out  # not every requested seed finished OK
    parents, kids = children(tracking_uri, "faults")
    assert parents[0].info.status == "FAILED"
    runs = {r.data.tags["variant"]: r for r in kids}
    assert sorted(runs) == ["baddata", "hang", "ok", "padded", "raise", "sigkill"]
    expect = {
        "ok": ("FINISHED", "ok"),
        "raise": ("FAILED", "injected fault: exception at step 2"),
        "sigkill": ("FAILED", "trainer killed by SIGKILL"),
        "hang": ("KILLED", "timed out"),
        "padded": ("FAILED", "over budget: artifact"),
        "baddata": ("FAILED", "bad data (exit 3)"),
    }
    for variant, (status, reason) in expect.items():
        run = runs[variant]
        assert run.info.status == status, (variant, run.data.tags["status_reason"])
        assert reason in run.data.tags["status_reason"], (variant, run.data.tags["status_reason"])
        if status != "FINISHED":
            assert f"{variant}-s1: {status}" in out  # the table's details name every failed seed
    assert "no/such/shards" in runs["baddata"].data.tags["status_reason"]
    assert runs["padded"].data.metrics["artifact/bytes"] > 2_000_000  # recorded, not hidden
    assert runs["padded"].data.tags["compliant"] == "no"
    # No trainer outlived its trial.
    for pidfile in glob.glob(str(tmp_path / "runs" / "**" / "trainer.pid"), recursive=True):
        pid = int(open(pidfile).read())
        assert not _alive(pid), pidfile


def _kill_when_started(runs_dir, pattern, stop):
    """Play the out-of-memory killer: SIGKILL the trainer of one seed as soon as it starts."""
    while not stop.is_set():
        for pidfile in glob.glob(os.path.join(runs_dir, "**", pattern, "trainer.pid"), recursive=True):
            try:
                os.kill(int(open(pidfile).read()), signal.SIGKILL)
                return
            except (ValueError, ProcessLookupError):
                pass
        time.sleep(0.05)


def test_resume_runs_only_the_missing_seeds(ray_session, tracking_uri, data_root, tmp_path, capsys):
    runs_dir = str(tmp_path / "runs")
    common = [SMOKE, "--data-dir", str(data_root), "--runs-dir", runs_dir, *tiny_args(["experiment.seeds=[1, 2]"])]
    stop = threading.Event()
    killer = threading.Thread(target=_kill_when_started, args=(runs_dir, "smoke-s2-*", stop), daemon=True)
    killer.start()
    try:
        rc, out = run_cli(["validate", *common], capsys)
    finally:
        stop.set()
        killer.join()
    assert rc == 1, out
    first_parent, kids = children(tracking_uri, "smoke")
    status = {r.info.run_name: r.info.status for r in kids}
    assert status == {"smoke-s1": "FINISHED", "smoke-s2": "FAILED"}

    rc, out = run_cli(["validate", *common, "--resume"], capsys)
    assert rc == 0, out
    assert "skip smoke-s1: finished earlier" in out and "skip smoke-s2" not in out
    assert "smoke    " in out and "2/2" in out
    parents, _ = children(tracking_uri, "smoke")
    second = next(p for p in parents if p.info.run_id != first_parent[0].info.run_id)
    _, new_kids = children(tracking_uri, "smoke", second.info.run_id)
    assert [r.info.run_name for r in new_kids] == ["smoke-s2"] and new_kids[0].info.status == "FINISHED"
    assert second.data.metrics["smoke/n_ok"] == 2  # the table counts the resumed seed too

    # Everything is finished now: a third --resume trains nothing and starts no Ray trial.
    rc, out = run_cli(["validate", *common, "--resume"], capsys)
    assert rc == 0 and "Ray:" not in out
    _, all_kids = children(tracking_uri, "smoke")
    assert len(all_kids) == 3


def test_duplicate_variants_train_once(ray_session, tracking_uri, data_root, tmp_path, capsys):
    exp = tmp_path / "dups.toml"
    exp.write_text(textwrap.dedent(f"""
        extends = "{SMOKE}"
        [experiment]
        name = "dups"
        seeds = [1]
        [variants.a]
        "optim.matrix_lr" = 0.03
        [variants.b]
        "optim.matrix_lr" = 0.03
    """))
    rc, out = run_cli(["validate", str(exp), "--data-dir", str(data_root), "--runs-dir", str(tmp_path / "runs"),
                       *tiny_args()], capsys)
    assert rc == 0, out
    assert "skip b-s1: same config hash and seed as a-s1" in out
    _, kids = children(tracking_uri, "dups")
    assert [r.info.run_name for r in kids] == ["a-s1"]
