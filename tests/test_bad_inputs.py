"""The bad-input matrix (issue #12): every bad input gives its documented exit code and one line that
names the file, key or value, never a traceback. Most cases need no training and no Ray: experiment
files go through `pgolf inspect`, data and tokenizer cases through the trainer's entry point (which
stops at its data checks, before a model is built), tracking-store cases through commands that fail
before Ray starts. docs/reliability.md lists the classes these cases keep true.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil

import numpy as np
import pytest

from pgolf import cli
from pgolf.trainers import gpt
from pgolf.trainers.shards import HEADER_BYTES, write_shard


def _cli(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main([str(a) for a in argv])
    return rc, err.getvalue()


def _assert_one_line(text: str) -> None:
    assert "Traceback" not in text
    assert len([line for line in text.strip().splitlines() if line.strip()]) == 1, text


# --------------------------------------------------------------------------------------------------
# experiment files and --set: exit 2, the file (or --set) and the key named

BASE = '''[experiment]
name = "tiny"
seeds = [1]
data = "custom"
[resources]
gpus = 0
cpus = 1
[config.model]
num_layers = 2
model_dim = 32
num_heads = 2
num_kv_heads = 1
[config.data]
train_seq_len = 32
train_batch_tokens = 256
grad_accum_steps = 1
[config.run]
device = "cpu"
'''
def sub(old, new):
    assert old in BASE, old
    return BASE.replace(old, new)
def add(text):
    return BASE + text

EXP = [
 # (id, toml text or None (file missing) or bytes, extra args, needles)
 ("toml-syntax", "[experiment\nname='x'\n", [], ["invalid TOML"]),
 ("toml-dup-key", add("[config.optim]\nmatrix_lr = 1\nmatrix_lr = 2\n"), [], ["invalid TOML"]),
 ("non-utf8", b'[experiment]\nname = "caf\xe9"\n', [], ["not UTF-8", "0xe9"]),
 ("unknown-top", add("[foo]\nx = 1\n"), [], ["unknown top-level key 'foo'"]),
 ("unknown-exp-key", sub('data = "custom"', 'data = "custom"\nseedz = [1]'), [], ["unknown key 'seedz'", "[experiment]"]),
 ("seeds-empty", sub("seeds = [1]", "seeds = []"), [], ["seeds"]),
 ("seeds-type", sub("seeds = [1]", 'seeds = "1"'), [], ["seeds"]),
 ("seeds-float", sub("seeds = [1]", 'seeds = [1.5]'), [], ["seeds"]),
 ("data-bad", sub('data = "custom"', 'data = "fineweb"'), [], ["[experiment] data", "'fineweb'", "'custom'"]),
 ("trainer-bad", sub('data = "custom"', 'data = "custom"\ntrainer = "llama"'), [], ["[experiment] trainer", "'llama'", "'gpt'"]),
 ("name-type", sub('name = "tiny"', 'name = 5'), [], ["name"]),
 ("name-slash", sub('name = "tiny"', 'name = "a/b"'), [], ["[experiment] name 'a/b'", "not a safe name"]),
 ("name-dotdot", sub('name = "tiny"', 'name = "../../../../tmp/x"'), [], ["'../../../../tmp/x'", "not a safe name"]),
 ("name-space", sub('name = "tiny"', 'name = "my exp"'), [], ["'my exp'", "not a safe name"]),
 ("name-leading-dot", sub('name = "tiny"', 'name = ".hidden"'), [], ["'.hidden'", "not a safe name"]),
 ("name-double-dot-inside", sub('name = "tiny"', 'name = "a..b"'), [], ["'a..b'", "not a safe name"]),
 ("name-backslash", sub('name = "tiny"', 'name = "a\\\\b"'), [], ["not a safe name"]),
 ("name-too-long", sub('name = "tiny"', 'name = "' + "a"*101 + '"'), [], ["not a safe name"]),
 ("name-newline", sub('name = "tiny"', 'name = "a\\nb"'), [], ["not a safe name"]),
 ("variant-slash", add('[variants."x/y"]\n"optim.matrix_lr" = 0.02\n'), [], ["variant name 'x/y'", "[variants.x/y]"]),
 ("variant-dotdot", add('[variants.".."]\n"optim.matrix_lr" = 0.02\n'), [], ["variant name '..'"]),
 ("variant-space", add('[variants."a b"]\n"optim.matrix_lr" = 0.02\n'), [], ["variant name 'a b'"]),
 ("variant-unknown-key", add('[variants.v1]\n"optim.matrix_lrr" = 0.02\n'), [], ["matrix_lrr"]),
 ("variant-unknown-section", add('[variants.v1]\n"optimx.matrix_lr" = 0.02\n'), [], ["optimx"]),
 ("variant-bad-type", add('[variants.v1]\n"optim.matrix_lr" = "fast"\n'), [], ["matrix_lr", "'fast'"]),
 ("resources-unknown", sub("gpus = 0", "gpus = 0\ntpus = 1"), [], ["unknown key 'tpus'", "[resources]"]),
 ("resources-gpus-type", sub("gpus = 0", 'gpus = "eight"'), [], ["gpus", "'eight'"]),
 ("budget-unknown", add("[budget]\ntrain_secs = 5\n"), [], ["unknown key 'train_secs'", "[budget]"]),
 ("budget-type", add("[budget]\ntrain_seconds = \"ten\"\n"), [], ["train_seconds", "'ten'"]),
 ("config-unknown-section", add("[config.optimizer]\nlr = 1\n"), [], ["unknown section [config.optimizer]"]),
 ("config-unknown-key-model", sub("num_layers = 2", "num_layer = 2"), [], ["num_layer"]),
 ("config-unknown-key-data", sub("train_seq_len = 32", "seq_len = 32"), [], ["seq_len"]),
 ("config-unknown-key-run", sub('device = "cpu"', 'devise = "cpu"'), [], ["devise"]),
 ("config-type-int", sub("num_layers = 2", 'num_layers = "two"'), [], ["num_layers", "'two'"]),
 ("config-type-float-for-int", sub("num_layers = 2", 'num_layers = 2.5'), [], ["num_layers"]),
 ("config-type-bool", sub('device = "cpu"', 'device = "cpu"\ncompile = "yes"'), [], ["compile"]),
 ("config-type-str", sub('device = "cpu"', 'device = 3'), [], ["device"]),
 ("config-type-list", sub("num_layers = 2", 'num_layers = [2]'), [], ["num_layers"]),
 ("config-section-not-table", add("[config]\nmodel = 3\n").replace("[config.model]\nnum_layers = 2\nmodel_dim = 32\nnum_heads = 2\nnum_kv_heads = 1\n",""), [], ["config.model"]),
 ("extends-missing", "extends = \"nope.toml\"\n" + BASE, [], ["extends 'nope.toml'", "does not exist"]),
 ("extends-type", "extends = 3\n" + BASE, [], ["'extends' must be a file name string"]),
 ("extends-self", "extends = \"bad.toml\"\n" + BASE, [], ["'extends' cycle"]),
 ("baseline-unknown", add("[baseline]\nfoo = 1\n"), [], ["unknown key 'foo'", "[baseline]"]),
 ("sweep-unknown", add("[sweep]\nfoo = 1\n"), [], ["unknown key 'foo'", "[sweep]"]),
 ("sweep-axis-unknown", add("[sweep]\n[sweep.axes]\n\"optim.nope\" = [1, 2]\n"), [], ["optim.nope"]),
 ("sweep-axis-bad-value", add("[sweep]\n[sweep.axes]\n\"model.num_layers\" = [\"a\", \"b\"]\n"), [], ["num_layers"]),
 ("set-no-equals", BASE, ["--set", "config.optim.matrix_lr"], ["--set 'config.optim.matrix_lr'", "KEY=VALUE"]),
 ("set-unknown-key", BASE, ["--set", "config.optim.matrix_lrr=0.1"], ["matrix_lrr"]),
 ("set-bad-type", BASE, ["--set", "config.model.num_layers=abc"], ["num_layers"]),
 ("set-through-scalar", BASE, ["--set", "experiment.name.x=1"], ["'name' is not a table"]),
 ("set-unsafe-name", BASE, ["--set", "experiment.name=../x"], ["'../x'", "not a safe name"]),
 ("set-data-bad", BASE, ["--set", "experiment.data=web"], ["'web'"]),
 ("set-unknown-section", BASE, ["--set", "config.optimx.lr=0.1"], ["[config.optimx]", "did you mean 'optim'"]),
 ("set-empty-seeds", BASE, ["--set", "experiment.seeds=[]"], ["--set experiment.seeds", "at least one seed"]),
]

EXP += [
 ("variant-not-table", "variants = 3\n" + BASE, [], ["[variants] must hold"]),
 ("config-not-table", "config = 3\n" + BASE.split("[config.model]")[0], [], ["'config' must be a table"]),
 ("experiment-not-table", BASE.replace("[experiment]\n", "experiment = 1\n[x]\n", 1), [], []),
 ("resources-cpus-type", sub("cpus = 1", "cpus = [1]"), [], ["cpus"]),
 ("budget-bytes-type", add("[budget]\nartifact_bytes = \"16MB\"\n"), [], ["artifact_bytes", "'16MB'"]),
 ("eval-unknown-key", add("[config.eval]\nval_every = 5\n"), [], ["config.eval.val_every"]),
 ("quant-unknown-key", add("[config.quant]\nbitz = 6\n"), [], ["config.quant.bitz"]),
 ("ttt-type", add("[config.ttt]\nenabled = \"on\"\n"), [], ["config.ttt"]),
 ("schedule-type", add("[config.schedule]\niterations = \"many\"\n"), [], ["config.schedule.iterations", "'many'"]),
 ("optim-type", add("[config.optim]\nmatrix_lr = [0.1]\n"), [], ["config.optim.matrix_lr"]),
 ("avg-unknown-key", add("[config.avg]\nema = 0.99\n"), [], ["config.avg.ema"]),
 ("faults-unknown-key", add("[config.faults]\ncrash = 1\n"), [], ["config.faults.crash"]),
 ("data-type", sub("train_seq_len = 32", "train_seq_len = true"), [], ["config.data.train_seq_len"]),
 ("baseline-type", add("[baseline]\nmargin_nats = \"x\"\n"), [], ["margin_nats", "'x'"]),
 ("sweep-search-type", add("[sweep]\nnum_samples = \"x\"\n"), [], ["num_samples", "'x'"]),
]
SET_IDS = {c[0] for c in EXP if c[0].startswith("set-")}
TUNE_IDS = {"sweep-axis-unknown", "sweep-axis-bad-value"}


@pytest.mark.parametrize("case", EXP, ids=[c[0] for c in EXP])
def test_bad_experiment_file(case, tmp_path):
    cid, text, args, needles = case
    path = tmp_path / "bad.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    command = ["tune", path, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"] if cid in TUNE_IDS else ["inspect", path]
    rc, err = _cli([*command, *args])
    assert rc == 2, err
    _assert_one_line(err)
    assert ("--set" if cid in SET_IDS else str(path)) in err
    for needle in needles:
        assert needle in err


def test_missing_or_directory_experiment_file(tmp_path):
    rc, err = _cli(["inspect", tmp_path / "nope.toml"])
    assert rc == 2 and "experiment file not found" in err and "nope.toml" in err
    rc, err = _cli(["inspect", tmp_path])
    assert rc == 2 and f"{tmp_path} is a directory" in err
    _assert_one_line(err)


def test_unreadable_experiment_file(tmp_path, monkeypatch):
    path = tmp_path / "locked.toml"
    path.write_text(BASE)
    real_open = open

    def deny(p, *a, **k):  # tests run as root, where chmod 000 would not stop a read
        if os.fspath(p) == str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(p, *a, **k)

    monkeypatch.setattr("builtins.open", deny)
    rc, err = _cli(["inspect", path])
    assert rc == 2 and "permission denied" in err and str(path) in err


# --------------------------------------------------------------------------------------------------
# data and tokenizer at load time: exit 3 (2 for a run dir), the file named, before step 0


@pytest.fixture(scope="module")
def tokenizer_600(demo_data, tmp_path_factory):
    """A valid SentencePiece model with 600 pieces: ids of the 1024-piece demo shards it cannot spell."""
    import sentencepiece as spm

    from pgolf.demo_corpus import DEMO_TOKENIZER_SETTINGS
    from pgolf.trainers.shards import read_shard

    sp = spm.SentencePieceProcessor(model_file=str(demo_data.tokenizer_path))
    ids = read_shard(sorted(demo_data.data_path.glob("fineweb_val_*.bin"))[0])[:20000].tolist()
    text = sp.decode(ids).split("\n")
    out = tmp_path_factory.mktemp("tok600") / "tok600.model"
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter([t for t in text if t.strip()]), model_writer=model,
                                   minloglevel=2, **dict(DEMO_TOKENIZER_SETTINGS, vocab_size=600))
    out.write_bytes(model.getvalue())
    return out


@pytest.fixture
def data_copy(demo_data, tmp_path):
    """A private copy of the demo corpus (manifest, tokenizer, shards) that a case may damage."""
    root = tmp_path / "data"
    shutil.copytree(demo_data.root, root)
    return root


def _shards(root, split):
    return sorted((root / "datasets" / "fineweb10B_sp1024").glob(f"fineweb_{split}_*.bin"))


def _tiny_config(root, tmp_path, *, tokenizer=None, data_path=None, run_dir=None, iterations=2, variant=None):
    return {
        "model": {"num_layers": 2, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1},
        "data": {**({"variant": variant} if variant else {}), "data_path": str(data_path or root / "datasets" / "fineweb10B_sp1024"),
                 "tokenizer_path": str(tokenizer or root / "tokenizers" / "fineweb_1024_bpe.model"),
                 "train_seq_len": 32, "train_batch_tokens": 256, "grad_accum_steps": 1, "val_tokens_limit": 2048},
        "schedule": {"iterations": iterations, "warmdown_iters": 1, "warmup_steps": 0, "max_wallclock_seconds": 0},
        "eval": {"val_loss_every": 0, "val_batch_size": 1024, "train_log_every": 0},
        "run": {"device": "cpu", "compile": False, "threads": 1, "run_dir": str(run_dir or tmp_path / "run")},
    }


def _trainer(root, tmp_path, monkeypatch, *, sets=(), **kwargs):
    """The trainer's entry point in this process on a tiny config; returns (exit code, stderr)."""
    cfg = _tiny_config(root, tmp_path, **kwargs)
    for env in ("DATA_PATH", "TOKENIZER_PATH", "RUN_DIR", "SEED"):
        monkeypatch.delenv(env, raising=False)
    argv = ["--config-json", json.dumps(cfg)]
    for s in sets:
        argv += ["--set", s]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = gpt.main(argv)
    return rc, err.getvalue()


def _rewrite_header(path, index, value):
    raw = bytearray(path.read_bytes())
    raw[index * 4:(index + 1) * 4] = int(value).to_bytes(4, "little", signed=True)
    path.write_bytes(bytes(raw))


def _damage(kind):
    """Returns f(root, tok600) -> (trainer kwargs, the file the message must name)."""
    def train0(root):
        return _shards(root, "train")[0]

    def lastshard(root):
        return _shards(root, "train")[-1]

    def val0(root):
        return _shards(root, "val")[0]

    def f(root, tok600):
        ds = root / "datasets" / "fineweb10B_sp1024"
        tok = root / "tokenizers" / "fineweb_1024_bpe.model"
        if kind == "tokenizer-is-dir":
            return {"tokenizer": root / "tokenizers"}, "tokenizers"
        if kind == "tokenizer-missing":
            return {"tokenizer": root / "none.model"}, "none.model"
        if kind == "tokenizer-garbage":
            (root / "junk.model").write_bytes(b"not a model")
            return {"tokenizer": root / "junk.model"}, "junk.model"
        if kind == "tokenizer-600-pieces":
            return {"tokenizer": tok600}, "600 pieces"
        if kind == "vocab-larger-than-tokenizer":  # a variant whose vocab the data's tokenizer does not have
            return {"sets": ["data.variant=sp4096", "model.vocab_size=4096"]}, "model.vocab_size = 4096"
        if kind in ("manifest-tokenizer-hash", "manifest-vocab"):
            m = json.loads((root / "manifest.json").read_text())
            if kind == "manifest-tokenizer-hash":
                m["files"][m["tokenizer_path"]]["sha256"] = "0" * 64
            else:
                m["vocab_size"] = 512
            (root / "manifest.json").write_text(json.dumps(m))
            return {}, "manifest.json"
        if kind == "tokenizer-not-the-datas":
            other = root / "other.model"
            shutil.copyfile(tok, other)
            m = json.loads((root / "manifest.json").read_text())
            m["files"][m["tokenizer_path"]]["sha256"] = "f" * 64
            (root / "manifest.json").write_text(json.dumps(m))
            return {"tokenizer": other}, "other.model"
        if kind == "data-dir-missing":
            return {"data_path": root / "gone"}, "gone"
        if kind == "data-path-is-file":
            return {"data_path": tok}, "fineweb_1024_bpe.model"
        if kind == "no-train-shards":
            for p in _shards(root, "train"):
                p.unlink()
            return {}, "no train shards"
        if kind == "no-val-shards":
            val0(root).unlink()
            return {}, "no val shards"
        target = {"train": train0, "last": lastshard, "val": val0}[kind.split("-")[0]](root)
        what = kind.split("-", 1)[1]
        if what == "shorter-than-header":
            target.write_bytes(target.read_bytes()[:HEADER_BYTES - 24])
        elif what == "empty-file":
            target.write_bytes(b"")
        elif what == "truncated-tail":
            target.write_bytes(target.read_bytes()[:-7])
        elif what == "oversized":
            target.write_bytes(target.read_bytes() + b"\0\0\0\0")
        elif what == "bad-magic":
            _rewrite_header(target, 0, 12345)
        elif what == "bad-version":
            _rewrite_header(target, 1, 7)
        elif what == "negative-count":
            _rewrite_header(target, 2, -5)
        elif what == "id-out-of-range":
            tokens = np.fromfile(target, dtype="<u2", offset=HEADER_BYTES)
            tokens[5] = 5000
            write_shard(target, tokens)
        else:
            raise AssertionError(kind)
        return {}, target.name
    return f


DATA_CASES = [
    "tokenizer-is-dir", "tokenizer-missing", "tokenizer-garbage", "tokenizer-600-pieces",
    "vocab-larger-than-tokenizer", "manifest-tokenizer-hash", "manifest-vocab",
    "tokenizer-not-the-datas", "data-dir-missing", "data-path-is-file", "no-train-shards", "no-val-shards",
] + [f"{split}-{what}" for split in ("train", "last", "val")
     for what in ("shorter-than-header", "empty-file", "truncated-tail", "oversized", "bad-magic", "bad-version",
                  "negative-count", "id-out-of-range") if (split, what) != ("last", "id-out-of-range")]


@pytest.mark.parametrize("kind", DATA_CASES)
def test_bad_data_is_exit_3_before_step_0(kind, data_copy, tokenizer_600, tmp_path, monkeypatch):
    kwargs, named = _damage(kind)(data_copy, tokenizer_600)
    rc, err = _trainer(data_copy, tmp_path, monkeypatch, **kwargs)
    assert rc == 3, err
    _assert_one_line(err)
    assert "bad data" in err and named in err
    assert not (tmp_path / "run" / "result.json").exists()
    events = (tmp_path / "run" / "metrics.jsonl")
    assert not events.exists() or '"start"' not in events.read_text()  # rejected before the model was built


@pytest.mark.parametrize("kind", ["manifest-tokenizer-hash", "last-truncated-tail"])
def test_the_shipped_script_checks_the_data_too(kind, data_copy, tokenizer_600, tmp_path):
    """The packed train_gpt.py reads whatever DATA_PATH / TOKENIZER_PATH name, so the packer keeps the data
    checks (manifest tokenizer hash, every train shard's size) that it cuts for the config."""
    import subprocess
    import sys

    from pgolf.trainers.codebundle import build_wrapper
    from pgolf.trainers.config import TrainConfig

    kwargs, named = _damage(kind)(data_copy, tokenizer_600)
    cfg = TrainConfig.from_dict(_tiny_config(data_copy, tmp_path, **kwargs), source="test").to_dict()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "train_gpt.py").write_bytes(build_wrapper(cfg)[0])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RUN_DIR", "SEED")}
    env.update(DATA_PATH=cfg["data"]["data_path"], TOKENIZER_PATH=cfg["data"]["tokenizer_path"])
    proc = subprocess.run([sys.executable, "train_gpt.py"], cwd=tmp_path / "sub", env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    # its prose is cut to the readable source's file:line (packcuts), the values stay
    assert named in proc.stderr and "shards.py:" in proc.stderr and "Traceback" not in proc.stderr


def test_vocab_off_the_data_variant_is_exit_2(data_copy, tmp_path, monkeypatch):
    """A vocab no data.variant has (600 with the default sp1024) is a config error, before any data is read."""
    rc, err = _trainer(data_copy, tmp_path, monkeypatch, sets=["model.vocab_size=600"])
    assert rc == 2, err
    _assert_one_line(err)
    assert "model.vocab_size = 600 conflicts with data.variant = 'sp1024'" in err


def test_out_of_range_id_in_a_later_shard_is_exit_3_when_reached(data_copy, tmp_path, monkeypatch):
    """Only the first train shard's ids are read before step 0 (all 80 FineWeb shards would be 16 GB of
    I/O); a later one fails the same way when the stream reaches it: exit 3, the file named."""
    first, second = _shards(data_copy, "train")[:2]
    tokens = np.fromfile(first, dtype="<u2", offset=HEADER_BYTES)
    write_shard(first, tokens[:600])
    bad = np.fromfile(second, dtype="<u2", offset=HEADER_BYTES)[:600]
    bad[3] = 4000
    write_shard(second, bad)
    rc, err = _trainer(data_copy, tmp_path, monkeypatch, iterations=6)
    assert rc == 3, err
    assert second.name in err and "outside the vocabulary" in err


@pytest.mark.parametrize("kind", ["file", "under-a-file"])
def test_run_dir_env_that_cannot_hold_the_run_is_exit_2(kind, data_copy, tmp_path, monkeypatch):
    f = tmp_path / "afile"
    f.write_text("x")
    run_dir = f if kind == "file" else f / "run"
    rc, err = _trainer(data_copy, tmp_path, monkeypatch, run_dir=run_dir)
    assert rc == 2 and "run.run_dir" in err and str(run_dir) in err
    _assert_one_line(err)


# --------------------------------------------------------------------------------------------------
# tracking URI and store, submission, data, train: exit 2 with the value named


TINY_CUSTOM = BASE.replace('data = "custom"', 'data = "custom"')


@pytest.mark.parametrize("uri,needle", [
    ("file:///x", "refuses the file store"), ("file:mlruns", "refuses the file store"),
    ("not a uri", "is not a URI"), ("mlruns", "is not a URI"), ("sqlite://x.db", "three slashes"),
    ("sqlite:/x.db", "is not a URI"), ("http//host:5000", "is not a URI"),
])
def test_malformed_tracking_uri(uri, needle):
    rc, err = _cli(["report", "--tracking-uri", uri])
    assert rc == 2 and repr(uri) in err and needle in err
    _assert_one_line(err)


@pytest.fixture
def custom_exp(demo_data, tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(BASE.replace("[config.data]\n", f"[config.data]\ndata_path = \"{demo_data.data_path}\"\n"
                                                     f"tokenizer_path = \"{demo_data.tokenizer_path}\"\n"))
    return path


@pytest.mark.parametrize("kind", ["folder-missing", "folder-is-file", "store-is-dir", "not-sqlite", "read-only"])
def test_unusable_sqlite_store_is_named_before_ray(kind, custom_exp, tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    db = {"folder-missing": tmp_path / "no" / "mlflow.db", "folder-is-file": tmp_path / "afile" / "mlflow.db",
          "store-is-dir": tmp_path / "dbdir", "not-sqlite": tmp_path / "junk.db",
          "read-only": tmp_path / "ro.db"}[kind]
    if kind == "store-is-dir":
        db.mkdir()
    if kind == "not-sqlite":
        db.write_text("this is not a database")
    if kind == "read-only":
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m, **k: False if os.fspath(p) == str(tmp_path) else real(p, m, **k))
    rc, err = _cli(["validate", custom_exp, "--tracking-uri", f"sqlite:///{db}", "--runs-dir", tmp_path / "runs"])
    assert rc == 2, err
    _assert_one_line(err)
    assert str(db) in err


def test_submission_unknown_run_and_out_file(tmp_path, tracking_uri):
    rc, err = _cli(["submission", "0123456789abcdef0123456789abcdef", "--out", tmp_path / "rec",
                    "--tracking-uri", tracking_uri])
    assert rc == 2 and "no MLflow run 0123456789abcdef0123456789abcdef" in err
    _assert_one_line(err)
    (tmp_path / "afile").write_text("x")
    rc, err = _cli(["submission", "abcdef0123", "--out", tmp_path / "afile", "--tracking-uri", tracking_uri])
    assert rc == 2 and f"--out {tmp_path / 'afile'} is a file" in err
    _assert_one_line(err)
    rc, err = _cli(["submission", "abcdef0123", "--out", tmp_path / "rec",
                    "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"])
    assert rc == 2 and "no MLflow store" in err and "none.db" in err


@pytest.mark.parametrize("kind", ["under-a-file", "read-only"])
def test_data_demo_onto_unwritable_storage(kind, tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "demo" if kind == "under-a-file" else tmp_path / "ro" / "demo"
    if kind == "read-only":
        real_mkdir = os.mkdir

        def rofs(p, *a, **k):
            if str(tmp_path / "ro") in os.fspath(p):
                raise OSError(errno.EROFS, "Read-only file system", os.fspath(p))
            return real_mkdir(p, *a, **k)

        monkeypatch.setattr(os, "mkdir", rofs)
    rc, err = _cli(["data", "demo", "--out", out])
    assert rc == 2, err
    assert "cannot write" in err and str(tmp_path) in err and "--out" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("kind", ["file", "under-a-file"])
def test_train_run_dir_that_is_a_file(kind, custom_exp, tmp_path):
    (tmp_path / "afile").write_text("x")
    run_dir = tmp_path / "afile" if kind == "file" else tmp_path / "afile" / "r"
    rc, err = _cli(["train", custom_exp, "--run-dir", run_dir])
    assert rc == 2 and f"run directory {run_dir}" in err
    _assert_one_line(err)
