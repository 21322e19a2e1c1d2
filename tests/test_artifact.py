"""Artifact accounting: code + model bytes from the real files against the decimal cap (16,000,000
passes, 16,000,001 fails), headroom, and the raw vs packed size of the counted code."""
import os

import pytest

from pgolf.compliance import check_seed
import pgolf.trainers as _trainers
from pgolf.trainers.codebundle import (_literal, build_wrapper, code_version, payload_of, trainer_sources,
                                       verify_wrapper, write_code_artifact)
from pgolf.trainers.posttrain import artifact_report, embedded_config
from pgolf.trainers.config import TrainConfig

CAP = 16_000_000
trainers_init = _trainers.__file__
SITECUSTOMIZE = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")
                    and not type(f).__module__.startswith("__editable__")]
"""


def _files(tmp_path, code_bytes, model_bytes):
    code, blob = tmp_path / "train_gpt.py", tmp_path / "final_model.ptz"
    code.write_bytes(b"#" * code_bytes)
    with open(blob, "wb") as fh:
        fh.truncate(model_bytes)  # sparse: the size is what counts
    return str(blob), str(code)


@pytest.mark.parametrize("total,ok", [(CAP - 1, True), (CAP, True), (CAP + 1, False)])
def test_cap_boundary_is_decimal_and_inclusive(tmp_path, total, ok):
    code_bytes = 70_001
    blob, code = _files(tmp_path, code_bytes, total - code_bytes)
    r = artifact_report(blob, code, CAP)
    assert r["artifact/bytes"] == total == os.path.getsize(blob) + os.path.getsize(code)
    assert r["artifact/code_bytes"] == code_bytes
    assert r["artifact/under_cap"] is ok
    assert r["artifact/headroom_bytes"] == CAP - total
    # the platform's compliance check agrees with the trainer's report at the boundary
    assert check_seed(r).checks[0].passed is ok


def test_16_mib_is_not_the_cap(tmp_path):
    blob, code = _files(tmp_path, 1000, 16 * 1024 * 1024 - 2000)
    assert not artifact_report(blob, code, CAP)["artifact/under_cap"]


def test_code_artifact_reports_packed_and_raw_sizes(tmp_path):
    cfg = TrainConfig()
    art = write_code_artifact(str(tmp_path), embedded_config(cfg))
    assert art.packed_bytes == os.path.getsize(tmp_path / "train_gpt.py")
    assert art.raw_source_bytes == sum(len(t.encode()) for t in trainer_sources().values())
    assert art.packed_bytes < art.shipped_source_bytes / 2 < art.raw_source_bytes / 2
    text = (tmp_path / "train_gpt.py").read_bytes()
    compile(text, "train_gpt.py", "exec")  # the counted file is valid Python
    assert text == build_wrapper(embedded_config(cfg))[0]  # deterministic bytes
    assert payload_of(text)["code_version"] == code_version()


def test_embedded_config_is_location_independent(tmp_path, monkeypatch):
    cfg = TrainConfig()
    cfg.run.run_dir = str(tmp_path / "somewhere")
    dicts = []
    for root in (tmp_path / "a", tmp_path / "deeper" / "clone b"):
        cfg.data.data_path = str(root / "data" / "datasets" / "fineweb10B_sp1024")
        cfg.data.tokenizer_path = str(root / "data" / "tokenizers" / "fineweb_1024_bpe.model")
        dicts.append(embedded_config(cfg))
    assert dicts[0] == dicts[1]
    assert dicts[0]["run"]["run_dir"] == ""  # the packed script picks a fresh folder
    assert dicts[0]["data"]["data_path"] == "data/datasets/fineweb10B_sp1024"
    assert dicts[0]["data"]["tokenizer_path"] == "data/tokenizers/fineweb_1024_bpe.model"
    cfg.data.data_path = "data/x"  # relative paths are kept as given
    assert embedded_config(cfg)["data"]["data_path"] == "data/x"


def test_two_clones_at_different_paths_pack_byte_identical_files(tmp_path):
    """Two copies of the trainer package at different depths, each packing a config whose data lives in
    its own checkout: the counted files are the same bytes."""
    import json
    import shutil
    import subprocess
    import sys

    cfg = TrainConfig()
    outs = []
    for i, root in enumerate((tmp_path / "one", tmp_path / "two" / "deeper")):
        shutil.copytree(os.path.dirname(trainers_init), root / "pgolf" / "trainers",
                        ignore=shutil.ignore_patterns("__pycache__"))
        (root / "pgolf" / "__init__.py").write_text("")
        (root / "sitecustomize.py").write_text(SITECUSTOMIZE)
        cfg.data.data_path = str(root / "data" / "datasets" / "fineweb10B_sp1024")
        (root / "config.json").write_text(json.dumps(embedded_config(cfg)))
        code = ("import json,sys; from pgolf.trainers import codebundle as c; assert c.__file__.startswith(sys.argv[1]);"
                "open(sys.argv[1] + '/train_gpt.py', 'wb').write(c.build_wrapper(json.load(open(sys.argv[1] + '/config.json')))[0])")
        env = {**os.environ, "PYTHONPATH": str(root)}
        proc = subprocess.run([sys.executable, "-c", code, str(root)], cwd=str(root), env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append((root / "train_gpt.py").read_bytes())
    assert outs[0] == outs[1]


@pytest.mark.parametrize("data", [bytes(range(256)) * 3 + b"\x00\x31\x00" + b"\x00", b'"' * 7, b'a""', b'\\"',
                                  b'"', b"\r\n\r" + b"\\" * 3, b'"' * 3 + b" + x", b"\\", b""])
def test_the_latin1_literal_carries_every_byte(data):
    ns: dict = {}
    exec(compile(("# -*- coding: latin-1 -*-\nx=" + _literal(data) + "\n").encode("latin-1"), "t", "exec"), ns)
    assert ns["x"] == data


def test_the_literal_escapes_about_three_bytes_in_256():
    import random

    data = random.Random(0).randbytes(200_000)  # compressed payloads look like this
    # base85 would be 1.25x; a "..." literal escaping NUL, LF, CR, quote and backslash ~1.020x
    assert len(_literal(data)) < len(data) * 1.014


def test_verify_wrapper_refuses_a_line_added_outside_the_payload(tmp_path):
    from pgolf.submission import self_check

    write_code_artifact(str(tmp_path), embedded_config(TrainConfig()))
    path = tmp_path / "train_gpt.py"
    assert verify_wrapper(str(path))["config"]["run"]["run_dir"] == ""
    path.write_bytes(path.read_bytes() + b"print('not part of the packed code')\n")
    with pytest.raises(ValueError, match="outside the packed code"):
        verify_wrapper(str(path))
    check = self_check(str(tmp_path), data_path="unused", tokenizer_path="unused")
    assert not check.ok and "outside the packed code" in check.detail and check.command == []


def test_packer_leaves_out_what_the_config_never_reaches():
    from pgolf.trainers.codebundle import decided_fields
    from pgolf.trainers.packer import ship_sources

    cfg = TrainConfig()
    off = ship_sources(trainer_sources(), embedded_config(cfg), merge=False)
    cfg.quant.gptq = True
    on = ship_sources(trainer_sources(), embedded_config(cfg), merge=False)
    assert "gptq.py" not in off and "gptq.py" in on and "packer.py" not in on
    # the decided test goes with its arm; the field it read is in the mask check_packed compares at start
    assert "collect_hessians" not in off["posttrain.py"] and "_gone" not in "".join(off.values())
    for files, cfg_gptq in ((off, False), (on, True)):
        assert "quant.gptq" in decided_fields({"files": files, "code_version": code_version()}), cfg_gptq
    assert "_BODY" not in off["codebundle.py"] and "_read_sources" not in off["codebundle.py"]  # package-only code
    cfg.ttt.mode = "score_first"  # the trace is written by the run, judged by the platform (ttt_audit.py)
    ttt = ship_sources(trainer_sources(), embedded_config(cfg), merge=False)
    assert "TraceWriter" in ttt["ttt_trace.py"] and "verify_trace" not in ttt["ttt_trace.py"]
    for files in (off, on):
        for rel, text in files.items():
            compile(text, rel, "exec")
            assert '"""' not in text  # docstrings go


def test_a_packed_run_never_asks_git(monkeypatch):
    """TMPDIR inside a checkout made the packed script record that checkout's sha (#12.8)."""
    import subprocess

    from pgolf.trainers import codebundle, fingerprint

    def no_git(*a, **k):
        raise AssertionError(f"git ran: {a}")

    monkeypatch.setattr(subprocess, "run", no_git)
    monkeypatch.setattr(codebundle, "PACKED", {"code_version": "abc123def456", "files": {}, "config": {}})
    assert fingerprint.git_sha() == "packed:abc123def456"
