"""The CaseOps data variant: data.variant and its vocab check, the demo's CaseOps build (sidecar = the
original bytes, operators as user symbols), BPB from the sidecar in the eval paths, the load check that
recounts it (a tampered or missing sidecar is exit 3 naming the file), and the CaseOps FineWeb export."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from pgolf.datasets import DataError, download_fineweb, ensure_demo, variant_repo
from pgolf.trainers.caseops import OPERATORS
from pgolf.trainers.config import ConfigError, TrainConfig, set_field
from pgolf.trainers.config.data import variant_layout
from pgolf.trainers.shards import HEADER_BYTES, list_shards, read_shard, write_shard
from pgolf.trainers.sidecar import load_val_bytes

VARIANT = "sp1024_caseops"
DATASET, TOKENIZER = variant_layout(VARIANT)


@pytest.fixture(scope="session")
def caseops_demo(data_root):
    """The demo's CaseOps build where `data = "demo"` runs look for it (shared with the pr1855 smoke run)."""
    return ensure_demo(data_root / f"demo_{VARIANT}", variant=VARIANT, progress=None)


def _sp(manifest):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(manifest.tokenizer_path))


def test_caseops_demo_sidecar_counts_the_original_bytes(caseops_demo, demo_data):
    m = caseops_demo
    assert m.variant == VARIANT and m.data_path.name == DATASET and m.tokenizer_path.name == TOKENIZER
    sp = _sp(m)
    assert [sp.id_to_piece(i) for i in range(4, 8)] == list(OPERATORS)  # one user symbol each, as the record's
    assert [sp.encode("x" + op + "y")[1] for op in OPERATORS] == [4, 5, 6, 7]  # never merged into a neighbour
    (val,) = list_shards(m.data_path, "val")
    side = read_shard(m.data_path / "fineweb_val_bytes_000000.bin")
    tokens = read_shard(val)
    assert side.size == tokens.size and (side[tokens == sp.bos_id()] == 0).all()
    # the same documents and bytes as the plain demo (its byte tables count the normalised text)
    assert int(side.sum()) == m.raw["bytes"]["val"] == demo_data.raw["bytes"]["val"]
    assert m.docs == demo_data.docs and m.tokens["val"] > demo_data.tokens["val"]  # operators cost tokens
    ops = np.isin(tokens, np.arange(4, 8))
    assert ops.any() and (side[ops] == 0).all()  # case operators stand for no original byte
    vb, totals = load_val_bytes([val], tokens.size, sp, sp.bos_id())
    assert totals["sidecar_bytes"] == totals["recount_bytes"] == int(side.sum()) and totals["documents"] == m.docs["val"]
    assert vb.dtype == torch.int32 and int(vb.sum()) == int(side.sum())


def test_variant_config_checks():
    cfg = TrainConfig()
    assert cfg.data.variant == "sp1024" and not cfg.data.caseops
    set_field(cfg, "data.variant", "sp8192_caseops")
    with pytest.raises(ConfigError, match=r"model.vocab_size = 1024 conflicts with data.variant = 'sp8192_caseops' "
                                          r"\(8192 pieces\).*set model.vocab_size = 8192 or a data.variant of that size "
                                          r"\(sp1024, sp1024_caseops\)"):
        cfg.validate()
    cfg.model.vocab_size = 8192
    cfg.validate()
    assert cfg.data.caseops
    with pytest.raises(ConfigError, match="data.variant = 'sp2048': expected one of 'sp1024', .*'sp8192_caseops'"):
        set_field(cfg, "data.variant", "sp2048")
    # a tokenizer of one's own: any vocab, the piece count is checked against the model at load
    cfg = TrainConfig()
    cfg.model.vocab_size = 2048
    with pytest.raises(ConfigError, match=r"a data.variant of that size \(custom\)"):
        cfg.validate()
    set_field(cfg, "data.variant", "custom")
    cfg.validate()
    assert not cfg.data.caseops


def test_smoke_keeps_caseops_at_the_smoke_vocab(monkeypatch):
    from pgolf import smoke
    from pgolf.experiment import load_experiment

    assert load_experiment("experiments/stacks/pr1855.toml", smoke=True).config.data.variant == "sp8192_caseops"
    monkeypatch.setitem(smoke.SMOKE_SHAPE, "model.vocab_size", 1024)
    assert load_experiment("experiments/stacks/pr1855.toml", smoke=True).config.data.variant == "sp1024_caseops"
    assert load_experiment("experiments/stacks/pr1394.toml", smoke=True).config.data.variant == "sp1024"


def test_token_bytes_reads_the_sidecar_by_position():
    from pgolf.trainers.bpb import ByteLUTs, token_bytes

    luts = ByteLUTs(torch.ones(8, dtype=torch.int16), torch.zeros(8, dtype=torch.bool), torch.zeros(8, dtype=torch.bool),
                    val_bytes=torch.tensor([0, 5, 0, 3, 7], dtype=torch.int32))
    x, y = torch.tensor([[1, 2]]), torch.tensor([[2, 3]])
    assert token_bytes(x, y, luts, torch.tensor([[3, 4]])).tolist() == [[3, 7]]
    with pytest.raises(ValueError, match="must pass the targets' positions"):
        token_bytes(x, y, luts)


def test_eval_paths_count_the_sidecar_bytes(caseops_demo):
    """Non-overlapping and sliding eval score every position once: both byte totals are the sidecar's."""
    import dataclasses

    from pgolf.trainers.bpb import build_byte_luts
    from pgolf.trainers.config import ModelConfig
    from pgolf.trainers.evaluate import evaluate
    from pgolf.trainers.model import GPT
    from pgolf.trainers.sliding import evaluate_sliding

    sp = _sp(caseops_demo)
    (val,) = list_shards(caseops_demo.data_path, "val")
    seq, n = 64, 64 * 24 + 1
    tokens = torch.from_numpy(read_shard(val)[:n].astype(np.int64))
    vb, _ = load_val_bytes([val], n, sp, sp.bos_id())
    plain = build_byte_luts(sp, 1024)
    luts = dataclasses.replace(plain, val_bytes=vb)
    torch.manual_seed(0)
    model = GPT(ModelConfig(num_layers=1, model_dim=32, num_heads=2, num_kv_heads=1, vocab_size=1024))
    cpu = torch.device("cpu")
    a = evaluate(model, tokens, luts, seq_len=seq, batch_tokens=seq * 8, device=cpu)
    b = evaluate_sliding(model, tokens, luts, seq_len=seq, stride=32, batch_seqs=4, device=cpu)
    lut = evaluate(model, tokens, plain, seq_len=seq, batch_tokens=seq * 8, device=cpu)
    assert a.bytes == b.bytes == int(vb[1:].sum())
    assert lut.bytes > a.bytes  # the byte tables would also count the operators' 3 bytes each
    assert a.val_loss == pytest.approx(lut.val_loss) and a.val_bpb > lut.val_bpb


def _copy(manifest, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(manifest.root, root)
    return root


def _trainer(root, tmp_path, monkeypatch, sets=()):
    from test_bad_inputs import _trainer as run

    return run(root, tmp_path, monkeypatch, variant=VARIANT, data_path=root / "datasets" / DATASET,
               tokenizer=root / "tokenizers" / TOKENIZER, sets=sets, iterations=1)


@pytest.mark.parametrize("damage", ["shift-a-byte", "missing", "short", "plain-variant"])
def test_bad_sidecar_is_exit_3_naming_the_file(damage, caseops_demo, tmp_path, monkeypatch):
    root = _copy(caseops_demo, tmp_path)
    path = root / "datasets" / DATASET / "fineweb_val_bytes_000000.bin"
    sets = ()
    side = read_shard(path).copy()
    if damage == "shift-a-byte":  # one byte moved to the next document: the total is unchanged
        tokens = read_shard(root / "datasets" / DATASET / "fineweb_val_000000.bin")
        bos = np.flatnonzero(tokens == 1)
        side[bos[1] - 1] -= 1
        side[bos[1] + 1] += 1
        write_shard(path, side)
    elif damage == "missing":
        path.unlink()
    elif damage == "short":
        write_shard(path, side[:-1])
    else:
        sets = ("data.variant=sp1024",)
    rc, err = _trainer(root, tmp_path, monkeypatch, sets)
    assert rc == 3, err
    assert "bad data" in err and path.name in err
    if damage == "shift-a-byte":
        assert "val document 0" in err and "canonical recount" in err


def test_sidecar_bound_mode_accepts_extra_raw_bytes_but_not_fewer(caseops_demo, tmp_path):
    root = _copy(caseops_demo, tmp_path)
    path = root / "datasets" / DATASET / "fineweb_val_bytes_000000.bin"
    val = root / "datasets" / DATASET / "fineweb_val_000000.bin"
    sp = _sp(caseops_demo)
    side = read_shard(path).copy()
    side[5] += 2  # e.g. a collapsed double newline the export counts as raw bytes
    write_shard(path, side)
    _, totals = load_val_bytes([val], 4096, sp, 1, exact=False)
    assert totals["sidecar_bytes"] == totals["recount_bytes"] + 2
    with pytest.raises(ValueError, match="sidecar_recount = \"at_least\""):
        load_val_bytes([val], 4096, sp, 1, exact=True)
    side[5] -= 4
    write_shard(path, side)
    with pytest.raises(ValueError, match=path.name):
        load_val_bytes([val], 4096, sp, 1, exact=False)


def test_data_demo_cli_variant_and_vocab_alias(capsys, tmp_path):
    from pgolf.cli import main

    assert main(["data", "demo", "--variant", "sp8192_caseops", "--vocab", "1024", "--out", str(tmp_path / "x")]) == 3
    assert "--vocab 1024 conflicts with --variant sp8192_caseops" in capsys.readouterr().err


def test_fineweb_caseops_export_from_standin(caseops_demo, tmp_path):
    """The #1729 export's layout (romeerp/parameter-golf-caseops-v1): the val byte sidecars come too."""
    name, tok = variant_layout("sp8192_caseops")
    base = tmp_path / "hub"
    export = base / "datasets"
    ds = export / "datasets" / name
    ds.mkdir(parents=True)
    (export / "tokenizers").mkdir()
    shutil.copy(caseops_demo.tokenizer_path, export / "tokenizers" / tok)
    for f in ("fineweb_val_000000.bin", "fineweb_val_bytes_000000.bin", "fineweb_train_000000.bin"):
        shutil.copy(caseops_demo.data_path / f, ds / f)
    manifest = {"tokenizers": [{"name": "sp_caseops", "model_path": f"tokenizers/{tok}"}],
                "datasets": [{"name": name, "tokenizer_name": "sp_caseops", "val_bytes_glob": "x",
                              "stats": {"files_train": 1, "files_val": 1}}]}
    (export / "manifest.json").write_text(json.dumps(manifest))
    calls = []

    def fetch(rel):
        calls.append(rel)
        if not (base / rel).is_file():
            raise FileNotFoundError(rel)
        return base / rel

    out = tmp_path / "out"
    res = download_fineweb("sp8192_caseops", 1, out, fetch=fetch, progress=None)
    assert f"datasets/datasets/{name}/fineweb_val_bytes_000000.bin" in calls
    assert [p.name for p in res.val_files] == ["fineweb_val_000000.bin"]
    assert [p.name for p in res.val_bytes_files] == ["fineweb_val_bytes_000000.bin"]
    assert (out / "datasets" / name / "fineweb_val_bytes_000000.bin").read_bytes()[HEADER_BYTES:] == \
        (caseops_demo.data_path / "fineweb_val_bytes_000000.bin").read_bytes()[HEADER_BYTES:]
    assert variant_repo("sp8192_caseops") == "romeerp/parameter-golf-caseops-v1"
    (ds / "fineweb_val_bytes_000000.bin").unlink()
    with pytest.raises(DataError, match="fineweb_val_bytes_000000.bin"):
        download_fineweb("sp8192_caseops", 1, tmp_path / "out2", fetch=fetch, progress=None)
    with pytest.raises(DataError, match="no published FineWeb export.*demo --variant sp1024_caseops"):
        download_fineweb("sp1024_caseops", 1, tmp_path / "out3", fetch=fetch, progress=None)


@pytest.mark.parametrize("mode", ["lora_doc", "phased"])
def test_lora_ttt_counts_the_sidecar_bytes(mode, tmp_path):
    """The per-document LoRA scorer builds its own rows; it scores every position once, so its byte total
    is the sidecar's (positions 1..n-1). Score-first TTT scores through the sliding scorer (tested above)."""
    import dataclasses

    import test_ttt as tt

    from pgolf.trainers.ttt import run_ttt

    cfg, model, val = tt.setup(mode, tmp_path, **({"phased_prefix_docs": 2, "phased_phases": 1} if mode == "phased" else {}))
    val = val[:200]  # three documents
    g = torch.Generator().manual_seed(2)
    vb = torch.randint(0, 9, (val.numel(),), generator=g, dtype=torch.int32)
    luts = dataclasses.replace(tt.synthetic_luts(), val_bytes=vb)
    res = run_ttt(model, val, luts, cfg, torch.device("cpu"), 0, 1, cfg.run.run_dir, bos_id=1)
    assert res.tokens == val.numel() - 1 and res.bytes == int(vb[1:].sum())


def test_caseops_test_in_the_trainer_names_every_caseops_variant():
    """train.py tests the variant against a literal (the packer can decide that); it must list them all."""
    import inspect

    from pgolf.trainers import train
    from pgolf.trainers.config.data import VARIANTS

    want = tuple(n for n, (_, caseops) in VARIANTS.items() if caseops)
    assert "if cfg.data.variant in (%s):" % ", ".join(f'"{n}"' for n in want) in inspect.getsource(train)


def test_trial_node_uses_the_demo_of_its_variant(caseops_demo, data_root):
    from pgolf.demo_corpus import ensure_variant_demo

    m = ensure_variant_demo(data_root, VARIANT)  # what a trial runs before its trainer (trial.execute_trial)
    assert m.variant == VARIANT and m.root == caseops_demo.root and not m.built
