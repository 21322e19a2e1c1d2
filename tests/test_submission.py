"""`pgolf submission`: a records folder from three real tiny CPU runs logged in MLflow (logs byte for
byte, the counted train_gpt.py, submission.json against the schema, a self-check from a clean copy),
and every refusal with its reasons."""
import contextlib
import hashlib
import io
import json
import os

import pytest

import report_store as S
from pgolf import submission as SUB
from pgolf.cli import main as cli

ISSUE_KEYS = ("author", "github_id", "name", "blurb", "date", "val_loss", "val_bpb", "bytes_total", "bytes_code",
              "seeds", "seed_results", "val_bpb_std", "val_loss_std", "hardware", "pytorch_version", "track",
              "compliance", "t_statistic", "p_value", "baseline")
SEED_KEYS = ("val_bpb", "val_loss", "steps", "step_avg_ms", "artifact_bytes", "train_time_s", "eval_time_s")


def sha(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli(list(argv))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def store(demo_data, tmp_path_factory):
    """Three seeds of one tiny config, trained for real and logged the way a trial logs them."""
    where = tmp_path_factory.mktemp("sub_store")
    uri, root = S.new_store(S.template_db(), where / "s")
    exp = S.experiment(uri, root, "tiny")
    runs = S.real_runs(demo_data, where / "runs", seeds=(1, 2, 3))
    pid, ids = S.log_real_runs(uri, exp, runs, variant="tiny", config_hash="feedc0ffee12")
    return dict(uri=uri, root=root, exp=exp, runs=runs, pid=pid, ids=ids, where=where, demo=demo_data)


@pytest.fixture(scope="module")
def built(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("records") / "2026-01-01_Tiny"
    res = SUB.build_submission(store["uri"], "feedc0ffee", str(out), author="A. Golfer", github_id="agolfer",
                               baseline="3.9", data_dir=str(store["demo"].root.parent), today="2026-01-01",
                               progress=None)
    return res, out


def test_folder_contents_and_untouched_logs(store, built):
    res, out = built
    assert sorted(os.listdir(out)) == ["README.md", "requirements.txt", "submission.json", "train_gpt.py",
                                       "train_seed1.log", "train_seed2.log", "train_seed3.log"]
    for run_dir, result, _ in store["runs"]:
        assert sha(out / f"train_seed{result['seed']}.log") == sha(os.path.join(run_dir, "train.log"))
    seed1_dir = store["runs"][0][0]
    assert sha(out / "train_gpt.py") == sha(os.path.join(seed1_dir, "train_gpt.py"))
    req = (out / "requirements.txt").read_text()
    assert "torch==" in req and "sentencepiece" in req and "zstandard" in req and "numpy" in req and "brotli" in req


def test_submission_json_keys_values_and_schema(store, built):
    from pgolf import stats

    res, out = built
    doc = json.loads((out / "submission.json").read_text())
    for k in ISSUE_KEYS:
        assert k in doc, k
    assert SUB.validate_json(doc) == []
    try:
        import jsonschema
    except ImportError:
        pass
    else:
        jsonschema.validate(doc, SUB.load_schema())
    results = {r["seed"]: r for _, r, _ in store["runs"]}
    assert doc["seeds"] == [1, 2, 3] and doc["track"] == "10min_16mb" and doc["date"] == "2026-01-01"
    assert doc["author"] == "A. Golfer" and doc["github_id"] == "agolfer" and doc["name"] == "tiny"
    s = stats.describe([r["final/val_bpb"] for r in results.values()])
    assert doc["val_bpb"] == pytest.approx(s.mean) and doc["val_bpb_std"] == pytest.approx(s.std)
    assert doc["bytes_code"] == os.path.getsize(out / "train_gpt.py")
    assert doc["bytes_total"] == max(r["artifact/bytes"] for r in results.values())
    for seed, r in results.items():
        sr = doc["seed_results"][str(seed)]
        assert all(k in sr for k in SEED_KEYS)
        assert sr["val_bpb"] == pytest.approx(r["final/val_bpb"]) and sr["steps"] == r["steps"] == 6
        assert sr["artifact_bytes"] == r["artifact/bytes"] and sr["mlflow_run_id"] in store["ids"]
    comp = doc["compliance"]
    assert comp["compliant"] and comp["artifact_under_16mb"] and comp["train_under_600s"] and comp["three_seeds"]
    assert comp["record_hardware"] is False and doc["hardware"] == "cpu"
    # --baseline 3.9 (BPB): a one-sample test in nats against 3.9 BPB - 0.005 nats
    tpb = sum(r["data/tokens_per_byte"] for r in results.values()) / 3
    t = stats.one_sample_vs_record([r["final/val_loss"] for r in results.values()], stats.bpb_to_nats(3.9, tpb),
                                   tokens_per_byte=tpb)
    assert doc["p_value"] == pytest.approx(t.p, rel=1e-6, abs=1e-12)
    assert doc["t_statistic"] == pytest.approx(t.t, rel=1e-6)
    assert doc["baseline"] == "record 3.9 bpb" and doc["significance"]["test"] == t.test
    assert any("not 8xH100 SXM" in w for w in res.warnings)


def test_readme_and_self_check(built):
    res, out = built
    assert res.self_check is not None and res.self_check.ok, res.self_check
    assert res.self_check.val_bpb > 0 and "--set" in res.self_check.command
    readme = (out / "README.md").read_text()
    for part in ("# tiny", "## Per-seed results", "## Statistics", "## Compliance", "## What this variant changes",
                 "## Reproduce", "## Self-check", "train_seed3.log", "`model.num_layers`", "one-sample t"):
        assert part in readme, part
    assert "✅ 2-step CPU run from a clean copy finished" in readme


def test_cli_with_parent_and_child_run_ids(store, tmp_path):
    rc, out, err = run_cli("submission", store["pid"], "--out", str(tmp_path / "p"), "--tracking-uri", store["uri"],
                           "--no-self-check", "--author", "x")
    assert rc == 0, err
    assert "records folder:" in out and "track 10min_16mb" in out and "note: no baseline" in out
    doc = json.loads((tmp_path / "p" / "submission.json").read_text())
    assert doc["t_statistic"] is None and doc["p_value"] is None and doc["baseline"] is None
    rc, out, err = run_cli("submission", store["ids"][1], "--out", str(tmp_path / "c"), "--tracking-uri", store["uri"],
                           "--no-self-check", "--author", "x")
    assert rc == 0, err
    assert json.loads((tmp_path / "c" / "submission.json").read_text())["seeds"] == [1, 2, 3]
    rc, _, err = run_cli("submission", store["pid"], "--out", str(tmp_path / "p"), "--tracking-uri", store["uri"],
                         "--no-self-check")
    assert rc == 2 and "not empty" in err


def test_fewer_seeds_than_asked_is_refused_unless_non_record(store, tmp_path):
    with pytest.raises(SUB.SubmissionRefused) as exc:
        SUB.build_submission(store["uri"], "feedc0ffee12", str(tmp_path / "r"), min_seeds=4, run_self_check=False,
                             progress=None)
    assert any("need >= 4" in r for r in exc.value.reasons)
    assert not (tmp_path / "r").exists()  # nothing written when refused
    rc, out, err = run_cli("submission", "feedc0ffee12", "--out", str(tmp_path / "nr"), "--tracking-uri", store["uri"],
                           "--min-seeds", "4", "--non-record", "--no-self-check", "--author", "x")
    assert rc == 0, err
    doc = json.loads((tmp_path / "nr" / "submission.json").read_text())
    assert doc["track"] == "non_record_16mb" and not doc["compliance"]["compliant"]
    assert any("need >= 4" in r for r in doc["compliance"]["reasons"])
    assert "Reasons this is not a record" in (tmp_path / "nr" / "README.md").read_text()


def test_parent_with_two_config_hashes_is_refused(store, tmp_path):
    uri, exp = store["uri"], store["exp"]
    pid = S.parent(uri, exp, name="validation-two")
    for h in ("aaaa11112222", "bbbb33334444"):
        S.trial(uri, exp, pid, variant=h[:4], seed=1, config_hash=h,
                result=S.synthetic_result(seed=1, config_hash=h, bpb=1.2))
    rc, _, err = run_cli("submission", pid, "--out", str(tmp_path / "x"), "--tracking-uri", uri, "--non-record",
                         "--no-self-check")
    assert rc == 1 and "mixes 2 config hashes" in err and "aaaa11112222" in err and "bbbb33334444" in err


def _bundle(files: dict, config: dict) -> bytes:
    """A counted file in the packer's format carrying `files` (never run by these tests)."""
    from pgolf.trainers import codebundle
    saved, codebundle.PACKED = codebundle.PACKED, {"files": files, "config": config, "code_version": "test"}
    try:
        return codebundle.build_wrapper(config)[0]
    finally:
        codebundle.PACKED = saved


def test_compliance_failure_and_mixed_code(store, tmp_path):
    uri, exp = store["uri"], store["exp"]
    pid = S.parent(uri, exp, name="validation-over")
    cfg = {"run": {"seed": 1}, "model": {"num_layers": 2}}
    for seed in (1, 2, 3):
        S.trial(uri, exp, pid, variant="over", seed=seed, config_hash="0ve2cap00000",
                result=S.synthetic_result(seed=seed, config_hash="0ve2cap00000", bpb=1.2,
                                          artifact_bytes=16_000_001 if seed == 2 else 15_000_000),
                files={"train_gpt.py": _bundle({"a.py": "x"}, {**cfg, "run": {"seed": seed}})})
    with pytest.raises(SUB.SubmissionRefused) as exc:
        SUB.build_submission(uri, "0ve2cap0", str(tmp_path / "o"), run_self_check=False, progress=None)
    assert any("seed 2" in r and "16,000,001" in r for r in exc.value.reasons)
    res = SUB.build_submission(uri, "0ve2cap0", str(tmp_path / "o"), run_self_check=False, non_record=True,
                               progress=None)
    assert res.track == "non_record_16mb" and not res.submission["compliance"]["artifact_under_16mb"]
    assert res.submission["bytes_total"] == 16_000_001

    pid = S.parent(uri, exp, name="validation-mixed")
    for seed, body in ((1, "x"), (2, "y")):
        S.trial(uri, exp, pid, variant="mixed", seed=seed, config_hash="m1xedc0de000",
                result=S.synthetic_result(seed=seed, config_hash="m1xedc0de000", bpb=1.2),
                files={"train_gpt.py": _bundle({"a.py": body}, {**cfg, "run": {"seed": seed}})})
    with pytest.raises(SUB.SubmissionRefused) as exc:
        SUB.build_submission(uri, "m1xedc0de000", str(tmp_path / "m"), run_self_check=False, non_record=True,
                             progress=None)
    assert "mixes configs" in str(exc.value) and "seed 2 ran different trainer code" in str(exc.value)


def test_failed_seed_blocks_a_record(store, tmp_path):
    uri, exp = store["uri"], store["exp"]
    pid = S.parent(uri, exp, name="validation-fail")
    for seed in (1, 2, 3):
        S.trial(uri, exp, pid, variant="f", seed=seed, config_hash="fa11edseed00",
                result=S.synthetic_result(seed=seed, config_hash="fa11edseed00", bpb=1.2),
                files={"train_gpt.py": "print('x')\n"})
    S.trial(uri, exp, pid, variant="f", seed=4, config_hash="fa11edseed00", status="FAILED",
            reason="over budget: artifact 16,100,000 bytes > cap")
    with pytest.raises(SUB.SubmissionRefused) as exc:
        SUB.build_submission(uri, "fa11edseed00", str(tmp_path / "f"), run_self_check=False, progress=None)
    assert any("seed 4" in r and "FAILED" in r for r in exc.value.reasons)
    res = SUB.build_submission(uri, "fa11edseed00", str(tmp_path / "f"), run_self_check=False, non_record=True,
                               progress=None)
    assert "| 4 | – |" in (tmp_path / "f" / "README.md").read_text()  # the failed seed is listed, not hidden
    assert res.submission["seeds"] == [1, 2, 3]


def test_unknown_refs(store, tmp_path):
    rc, _, err = run_cli("submission", "0123456789ab", "--out", str(tmp_path / "u"), "--tracking-uri", store["uri"])
    assert rc == 2 and "no trial run with config hash" in err
    rc, _, err = run_cli("submission", "x", "--out", str(tmp_path / "u"), "--tracking-uri", store["uri"])
    assert rc == 2 and "neither a 32-character MLflow run id nor a config hash" in err


def test_schema_validator_agrees_with_jsonschema(built):
    _, out = built
    good = json.loads((out / "submission.json").read_text())
    bad_docs = []
    for mutate in (lambda d: d.pop("val_bpb"), lambda d: d.update(track="16mb"), lambda d: d.update(p_value=1.5),
                   lambda d: d.update(date="1/1/26"), lambda d: d["seed_results"]["1"].pop("steps"),
                   lambda d: d["seed_results"].update(x={}), lambda d: d["compliance"].update(compliant="yes"),
                   lambda d: d.update(bytes_total=1.5), lambda d: d.update(seeds=[])):
        d = json.loads(json.dumps(good))
        mutate(d)
        bad_docs.append(d)
    for d in bad_docs:
        assert SUB.validate_json(d), d
    try:
        import jsonschema
    except ImportError:
        return
    v = jsonschema.Draft202012Validator(SUB.load_schema())
    for d in bad_docs:
        assert list(v.iter_errors(d))


def test_self_check_reports_a_broken_train_gpt(store, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "train_gpt.py").write_text("import sys\nprint('boom')\nsys.exit(3)\n")
    demo = store["demo"]
    chk = SUB.self_check(str(folder), data_path=str(demo.data_path), tokenizer_path=str(demo.tokenizer_path))
    # refused before it runs: it is not the canonical wrapper of a packed payload (#12.8)
    assert not chk.ok and "not a pgolf train_gpt.py" in chk.detail and chk.command == []


def test_self_check_cannot_lean_on_the_installed_pgolf(store, tmp_path):
    """A train_gpt.py that imports the installed pgolf instead of carrying its code must fail, while
    third-party packages stay importable."""
    folder = tmp_path / "leaning"
    folder.mkdir()
    (folder / "train_gpt.py").write_text("import numpy\nimport pgolf.trainers.gpt\n")
    demo = store["demo"]
    chk = SUB.self_check(str(folder), data_path=str(demo.data_path), tokenizer_path=str(demo.tokenizer_path))
    assert not chk.ok and "not a pgolf train_gpt.py" in chk.detail  # refused by verify_wrapper, never run


def test_bundle_contents_reads_the_packed_trainer(store):
    b = SUB.bundle_contents(os.path.join(store["runs"][0][0], "train_gpt.py"))
    # the shipped trainer (one merged module when the packer can merge, one file per module otherwise)
    assert b is not None and any("def run_packed" in src for src in b["files"].values())
    assert b["config"]["run"]["seed"] == 1
    assert SUB.bundle_contents(__file__) is None
