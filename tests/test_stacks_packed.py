"""Every stack file: the train_gpt.py its smoke run shipped, run alone in an empty folder with pgolf not
importable, reproduces the run bit for bit (same metrics, same blob sha256); the blob is no larger than
the records' layout (torch.save of the same tensors, same compressor and level). The package runs are
test_stacks.py's smoke runs (shared, not repeated) when that file ran first in the session."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import test_stacks as ts
from test_export import SITECUSTOMIZE

from pgolf.experiment import load_experiment
from pgolf.trainers import serialize

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from quant_bench import records_layout  # noqa: E402

COMPARED = ("final/val_loss", "final/val_bpb", "prequant/val_loss", "quant/val_loss", "steps", "artifact/model_bytes",
            "artifact/code_bytes", "config_hash")


@pytest.fixture(scope="module")
def no_editable(tmp_path_factory):
    block = tmp_path_factory.mktemp("no_editable")
    (block / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return block


def _package_run(name, data_root, tmp_path_factory) -> str:
    if name in ts.SMOKE_RUNS:
        return ts.SMOKE_RUNS[name]
    with pytest.MonkeyPatch.context() as mp:  # the same shrink test_stacks uses
        for k, v in ts.FAST_SMOKE.items():
            mp.setitem(ts.smoke.SMOKE_SHAPE, k, v)
        run_dir = tmp_path_factory.mktemp(f"pkg_{name}") / name
        ts.run_smoke(name, data_root, run_dir)
    return str(run_dir)


@pytest.mark.parametrize("name", sorted(n for n in ts.EXPECTED if n not in ts.LINEAGE_ONLY))
def test_shipped_script_reproduces_the_stack_run(name, data_root, tmp_path_factory, tmp_path, no_editable):
    a = _package_run(name, data_root, tmp_path_factory)
    ra = json.loads(open(os.path.join(a, "result.json")).read())
    cfg = json.loads(open(os.path.join(a, "resolved_config.json")).read())
    shutil.copy(os.path.join(a, "train_gpt.py"), tmp_path / "train_gpt.py")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RUN_DIR", "SEED")}
    env.update(PYTHONPATH=str(no_editable), DATA_PATH=cfg["data"]["data_path"],
               TOKENIZER_PATH=cfg["data"]["tokenizer_path"], SEED=str(cfg["run"]["seed"]))
    proc = subprocess.run([sys.executable, "train_gpt.py"], cwd=str(tmp_path), env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    b = tmp_path / "run1"
    rb = json.loads((b / "result.json").read_text())
    for key in COMPARED:
        assert ra[key] == rb[key], (name, key)
    sha = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()  # noqa: E731
    assert sha(os.path.join(a, ra["artifact/blob"])) == sha(b / rb["artifact/blob"])
    assert sha(os.path.join(a, "train_gpt.py")) == sha(b / "train_gpt.py") == sha(tmp_path / "train_gpt.py")


@pytest.mark.parametrize("name", sorted(n for n in ts.EXPECTED if n not in ts.LINEAGE_ONLY))
def test_blob_is_no_larger_than_the_records_layout(name, data_root, tmp_path_factory):
    from pgolf.trainers.model import GPT

    a = _package_run(name, data_root, tmp_path_factory)
    r = json.loads(open(os.path.join(a, "result.json")).read())
    cfg = load_experiment(ts._path(name), smoke=True).config
    with open(os.path.join(a, r["artifact/blob"]), "rb") as fh:
        blob = fh.read()
    tensors, meta = serialize.unpack(serialize.decompress(blob))
    with torch.device("meta"):
        order = list(GPT(cfg.model).state_dict())
    theirs = serialize.compress(records_layout(tensors, order), cfg.quant.compressor, cfg.quant.compress_level)
    assert len(blob) <= len(theirs), (name, len(blob), len(theirs))
