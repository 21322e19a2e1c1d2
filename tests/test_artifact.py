"""Artifact accounting: code + model bytes from the real files against the decimal cap (16,000,000
passes, 16,000,001 fails), headroom, and the raw vs packed size of the counted code."""
import os

import pytest

from pgolf.compliance import check_seed
from pgolf.trainers.codebundle import build_wrapper, trainer_sources, write_code_artifact
from pgolf.trainers.posttrain import artifact_report, embedded_config
from pgolf.trainers.config import TrainConfig

CAP = 16_000_000


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
    assert art.packed_bytes < art.raw_source_bytes / 2
    text = (tmp_path / "train_gpt.py").read_text()
    compile(text, "train_gpt.py", "exec")  # the counted file is valid Python
    assert text == build_wrapper(embedded_config(cfg))  # deterministic bytes


def test_embedded_config_is_location_independent(tmp_path, monkeypatch):
    cfg = TrainConfig()
    cfg.data.data_path = "data/x"
    cfg.run.run_dir = str(tmp_path / "somewhere")
    monkeypatch.chdir(tmp_path)
    d = embedded_config(cfg)
    assert d["run"]["run_dir"] == "."
    assert d["data"]["data_path"] == str(tmp_path / "data" / "x")
    assert os.path.isabs(d["data"]["tokenizer_path"])
