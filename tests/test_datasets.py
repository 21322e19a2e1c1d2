from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pgolf.datasets import (
    DataError,
    build_demo,
    default_data_dir,
    download_fineweb,
    ensure_demo,
    verify_manifest,
)
from pgolf.trainers.shards import list_shards, read_shard, write_shard


def _copy(demo_data, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(demo_data.root, dst)
    return dst


def test_demo_layout_and_manifest(demo_data):
    root = demo_data.root
    raw = json.loads((root / "manifest.json").read_text())
    assert raw["kind"] == "demo" and demo_data.kind == "demo"
    assert demo_data.data_path == root / "datasets" / "fineweb10B_sp1024"
    assert demo_data.tokenizer_path == root / "tokenizers" / "fineweb_1024_bpe.model"
    assert (root / "tokenizers" / "fineweb_1024_bpe.vocab").is_file()
    train = list_shards(demo_data.data_path, "train")
    val = list_shards(demo_data.data_path, "val")
    assert [p.name for p in train] == ["fineweb_train_000000.bin", "fineweb_train_000001.bin"]
    assert [p.name for p in val] == ["fineweb_val_000000.bin"]
    for rel, meta in raw["files"].items():
        data = (root / rel).read_bytes()
        assert len(data) == meta["bytes"] and hashlib.sha256(data).hexdigest() == meta["sha256"]
    tr = np.concatenate([read_shard(p, vocab_size=1024) for p in train])
    va = read_shard(val[0], vocab_size=1024)
    assert raw["tokens"] == {"train": tr.size, "val": va.size}
    assert va.size >= 30_000
    assert tr[0] == 1 and va[0] == 1  # every document starts with BOS, there is no EOS
    assert int((va == 1).sum()) == raw["docs"]["val"] and int((tr == 1).sum()) == raw["docs"]["train"]
    assert not (tr == 2).any()
    assert raw["docs"]["val"] + raw["docs"]["train"] == raw["docs"]["total"]
    assert 0.08 <= raw["docs"]["val"] / raw["docs"]["total"] <= 0.2
    assert 1_000_000 <= raw["bytes"]["train"] + raw["bytes"]["val"] <= 3_500_000
    assert raw["build_seconds"] is not None


def test_demo_build_is_deterministic(demo_data, tmp_path):
    other = build_demo(tmp_path / "again", progress=None)
    assert other.built
    assert {k: v["sha256"] for k, v in other.files.items()} == {k: v["sha256"] for k, v in demo_data.files.items()}


def test_second_build_is_a_noop(demo_data, tmp_path):
    root = _copy(demo_data, tmp_path)
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    said = []
    m = build_demo(root, progress=said.append)
    assert not m.built
    assert any("up to date" in s for s in said)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == mtimes
    assert ensure_demo(root, progress=None).tokens == demo_data.tokens


def test_corruption_is_detected_and_force_rebuilds(demo_data, tmp_path):
    root = _copy(demo_data, tmp_path)
    shard = root / "datasets/fineweb10B_sp1024/fineweb_train_000001.bin"
    data = bytearray(shard.read_bytes())
    data[5000] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError) as exc:
        verify_manifest(root)
    assert str(shard) in str(exc.value) and "sha256" in str(exc.value) and "--force" in str(exc.value)
    with pytest.raises(DataError, match="damaged.*fineweb_train_000001.bin"):
        build_demo(root, progress=None)
    m = build_demo(root, force=True, progress=None)
    assert m.built
    verify_manifest(root)
    assert shard.read_bytes() == (demo_data.root / "datasets/fineweb10B_sp1024/fineweb_train_000001.bin").read_bytes()


def test_missing_truncated_and_stray_files_are_detected(demo_data, tmp_path):
    root = _copy(demo_data, tmp_path)
    tok = root / "tokenizers/fineweb_1024_bpe.model"
    tok.unlink()
    with pytest.raises(DataError) as exc:
        verify_manifest(root)
    assert str(tok) in str(exc.value) and "missing" in str(exc.value)
    shutil.copy(demo_data.tokenizer_path, tok)
    val = root / "datasets/fineweb10B_sp1024/fineweb_val_000000.bin"
    val.write_bytes(val.read_bytes()[:-10])
    with pytest.raises(DataError, match="fineweb_val_000000.bin has .* bytes"):
        verify_manifest(root)
    shutil.copy(demo_data.data_path / val.name, val)
    stray = root / "datasets/fineweb10B_sp1024/fineweb_train_000002.bin"
    write_shard(stray, [1, 2, 3])
    with pytest.raises(DataError, match="fineweb_train_000002.bin is not part of the demo build"):
        verify_manifest(root)
    # ensure_demo repairs a damaged demo build (it is derived data) and drops the stray shard
    m = ensure_demo(root, progress=None)
    assert m.built and not stray.exists()
    verify_manifest(root)


def test_no_manifest_and_foreign_data_are_not_overwritten(demo_data, tmp_path):
    with pytest.raises(DataError, match="no demo data"):
        verify_manifest(tmp_path / "nothing")
    foreign = tmp_path / "fineweb"
    foreign.mkdir()
    (foreign / "manifest.json").write_text(json.dumps({"datasets": [], "tokenizers": []}))
    with pytest.raises(DataError, match="non-demo data"):
        build_demo(foreign, force=True, progress=None)
    with pytest.raises(DataError, match="non-demo data"):
        ensure_demo(foreign, progress=None)
    loose = tmp_path / "loose"
    write_shard(loose / "datasets/fineweb10B_sp1024/fineweb_val_000000.bin", [1, 2])
    with pytest.raises(DataError, match="already exists but .* has no demo manifest"):
        build_demo(loose, progress=None)


def test_default_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("PGOLF_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_data_dir() == (tmp_path / "data").resolve()
    monkeypatch.setenv("PGOLF_DATA_DIR", str(tmp_path / "elsewhere"))
    assert default_data_dir() == (tmp_path / "elsewhere").resolve()


# ----------------------------------------------------------------------------- fineweb download


@pytest.fixture()
def hub_standin(demo_data, tmp_path):
    """A local directory with the hub layout of willdepueoai/parameter-golf (root folder `datasets/`)."""
    base = tmp_path / "hub"
    export = base / "datasets"
    ds = export / "datasets" / "fineweb10B_sp1024"
    ds.mkdir(parents=True)
    (export / "tokenizers").mkdir()
    for ext in ("model", "vocab"):
        shutil.copy(demo_data.root / f"tokenizers/fineweb_1024_bpe.{ext}", export / f"tokenizers/fineweb_1024_bpe.{ext}")
    shutil.copy(demo_data.data_path / "fineweb_val_000000.bin", ds / "fineweb_val_000000.bin")
    for i in range(3):
        write_shard(ds / f"fineweb_train_{i:06d}.bin", np.arange(100) + i)
    manifest = {
        "version": "10B",
        "num_docs": 1000,
        "num_val_docs": 50,
        "shard_size": 100,
        "append_eos": False,
        "tokenizers": [
            {"name": "pure_byte_260", "kind": "byte", "path": "tokenizers/fineweb_pure_byte_260.json"},
            {"name": "sp_bpe_1024", "kind": "sentencepiece_bpe", "vocab_size": 1024,
             "model_path": "tokenizers/fineweb_1024_bpe.model", "vocab_path": "tokenizers/fineweb_1024_bpe.vocab"},
        ],
        "datasets": [
            {"name": "fineweb10B_byte260", "tokenizer_name": "pure_byte_260", "stats": {"files_train": 9, "files_val": 2}},
            {"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024", "vocab_size": 1024,
             "stats": {"files_train": 3, "files_val": 1, "files_total": 4}},
        ],
    }
    (export / "manifest.json").write_text(json.dumps(manifest))
    calls: list[str] = []

    def fetch(repo_path: str):
        calls.append(repo_path)
        path = base / repo_path
        if not path.is_file():
            raise FileNotFoundError(repo_path)
        return path

    return fetch, calls


def test_fineweb_download_from_standin(hub_standin, tmp_path):
    fetch, calls = hub_standin
    out = tmp_path / "out"
    res = download_fineweb("sp1024", 2, out, fetch=fetch, progress=None)
    assert calls == [
        "datasets/manifest.json",
        "datasets/tokenizers/fineweb_1024_bpe.model",
        "datasets/tokenizers/fineweb_1024_bpe.vocab",
        "datasets/datasets/fineweb10B_sp1024/fineweb_val_000000.bin",
        "datasets/datasets/fineweb10B_sp1024/fineweb_train_000000.bin",
        "datasets/datasets/fineweb10B_sp1024/fineweb_train_000001.bin",
    ]
    assert res.data_path == out / "datasets/fineweb10B_sp1024"
    assert res.tokenizer_path == out / "tokenizers/fineweb_1024_bpe.model"
    assert [p.name for p in list_shards(res.data_path, "train")] == ["fineweb_train_000000.bin", "fineweb_train_000001.bin"]
    assert (out / "manifest.json").is_file() and len(res.val_files) == 1
    np.testing.assert_array_equal(read_shard(res.train_files[1]), np.arange(100) + 1)
    # a second run keeps intact shards and only refreshes the small files
    calls.clear()
    download_fineweb("sp1024", 2, out, fetch=fetch, progress=None)
    assert not any(c.endswith(".bin") for c in calls)
    with pytest.raises(DataError, match="has 3 train shards .* requested 4"):
        download_fineweb("sp1024", 4, out, fetch=fetch, progress=None)
    with pytest.raises(DataError, match="no dataset 'fineweb10B_sp4096'"):
        download_fineweb("sp4096", 1, out, fetch=fetch, progress=None)


def test_fineweb_download_replaces_demo(hub_standin, demo_data, tmp_path):
    fetch, _ = hub_standin
    root = _copy(demo_data, tmp_path)
    download_fineweb("sp1024", 1, root, fetch=fetch, progress=None)
    assert [p.name for p in list_shards(root / "datasets/fineweb10B_sp1024", "train")] == ["fineweb_train_000000.bin"]
    assert "kind" not in json.loads((root / "manifest.json").read_text())


@pytest.mark.parametrize("exc", [ConnectionError("Connection refused"), OSError("Network is unreachable")])
def test_fineweb_download_without_network_is_a_clear_error(exc, tmp_path):
    def fetch(repo_path):
        raise exc

    with pytest.raises(DataError) as err:
        download_fineweb("sp1024", 1, tmp_path / "out", fetch=fetch, progress=None)
    msg = str(err.value)
    assert "could not reach the Hugging Face hub" in msg and "HF_ENDPOINT" in msg and "pgolf data demo" in msg


def test_fineweb_download_other_fetch_failures_are_not_called_network(tmp_path):
    def fetch(repo_path):
        raise ValueError("bad stand-in")

    with pytest.raises(DataError, match="fetching datasets/manifest.json .* failed: ValueError: bad stand-in"):
        download_fineweb("sp1024", 1, tmp_path / "out", fetch=fetch, progress=None)
    assert not (tmp_path / "out").exists()


def test_fineweb_download_unreachable_endpoint(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "2")
    with pytest.raises(DataError) as err:
        download_fineweb("sp1024", 1, tmp_path / "out", progress=None)
    msg = str(err.value)
    assert "could not reach the Hugging Face hub at http://127.0.0.1:9" in msg and "pgolf data demo" in msg
    assert not (tmp_path / "out" / ".hf-download").exists()


def test_fineweb_hub_path_asks_one_snapshot_with_allow_patterns(hub_standin, tmp_path, monkeypatch):
    """Without a stand-in `fetch`: the manifest by hf_hub_download, then every wanted file in one
    snapshot_download(allow_patterns=...) into the staging folder."""
    import huggingface_hub

    from pgolf import fineweb

    fetch, _ = hub_standin
    snaps: list[list[str]] = []

    def fake_snapshot(repo_id, *, repo_type, allow_patterns, local_dir, **kw):
        assert repo_type == "dataset"
        snaps.append(list(allow_patterns))
        for rel in allow_patterns:
            dest = Path(local_dir) / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fetch(rel), dest)
        return str(local_dir)

    def fake_file(repo_id, name, *, subfolder, local_dir, **kw):
        rel = f"{subfolder}/{name}" if subfolder else name
        dest = Path(local_dir) / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fetch(rel), dest)
        return str(dest)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_file)
    monkeypatch.setattr(fineweb, "_probe_hub", lambda *a: None)
    out = tmp_path / "out"
    res = download_fineweb("sp1024", 2, out, progress=None)
    assert snaps == [["datasets/tokenizers/fineweb_1024_bpe.model", "datasets/tokenizers/fineweb_1024_bpe.vocab",
                      "datasets/datasets/fineweb10B_sp1024/fineweb_val_000000.bin",
                      "datasets/datasets/fineweb10B_sp1024/fineweb_train_000000.bin",
                      "datasets/datasets/fineweb10B_sp1024/fineweb_train_000001.bin"]]
    assert len(res.train_files) == 2 and all(p.is_file() for p in res.train_files)
    download_fineweb("sp1024", 2, out, progress=None)  # intact shards are not asked for again
    assert [p for p in snaps[1] if p.endswith(".bin")] == []


def test_variant_repos_and_demo_vocab_errors(tmp_path, demo_data):
    from pgolf.datasets import build_demo, demo_dir_name, demo_layout, variant_repo

    assert variant_repo("sp1024") == "willdepueoai/parameter-golf"
    assert variant_repo("sp8192") == variant_repo("sp4096") == "kevclark/parameter-golf"
    assert demo_layout(8192) == ("fineweb10B_sp8192", "tokenizers/fineweb_8192_bpe.model")
    assert demo_dir_name(1024) == "demo" and demo_dir_name(4096) == "demo_sp4096"
    with pytest.raises(DataError, match="demo vocab 2048 is not one of 1024, 4096, 8192"):
        demo_layout(2048)
    with pytest.raises(DataError, match="holds the sp1024 demo, not sp8192"):
        build_demo(demo_data.root, vocab=8192, progress=None)
