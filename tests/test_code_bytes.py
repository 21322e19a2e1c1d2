"""The packer's cuts (packcuts.py) and `pgolf inspect --bytes`: cheap, no training run."""
from __future__ import annotations

import ast
import json
import os

import pytest

from pgolf.trainers.packcuts import cut, drop_unnamed_methods

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SRC = '''
def check_tokenizer(path):
    raise ValueError(f"the manifest of {path} is long prose the platform already checked")

def scale(x, limit):
    check_tokenizer(x)
    if x > limit:
        raise RuntimeError(f"x = {x} is over the limit {limit}: lower it or raise the limit")
    return 2 * x
'''


def test_checks_go_and_errors_keep_type_values_and_source_line():
    tree = ast.parse(SRC)
    cut(tree, "m.py")
    text = ast.unparse(tree)
    assert "check_tokenizer(x)" not in text and "prose" not in text and "lower it" not in text
    ns: dict = {}
    exec(compile(tree, "m.py", "exec"), ns)
    assert ns["scale"]("a/b", "a/c") == "a/ba/b"  # the check no longer runs
    with pytest.raises(RuntimeError) as err:
        ns["scale"](5, 3)
    assert str(err.value) == "m.py:8 5 3"  # line 8 of the readable source holds the full message


def test_methods_nothing_names_go_but_those_torch_calls_stay():
    trees = {"m": ast.parse('''
import torch
class Net(torch.nn.Module):
    def forward(self, x):
        return self.used(x)
    def used(self, x):
        return x
    def unused(self, x):
        return self.also_unused(x)
    def also_unused(self, x):
        return x
''')}
    while drop_unnamed_methods(trees):
        pass
    names = [m.name for m in trees["m"].body[1].body]
    assert names == ["forward", "used"]


def test_inspect_bytes_reports_the_packed_file(capsys):
    from pgolf.cli import main
    from pgolf.experiment import load_experiment
    from pgolf.trainers.codebundle import build_wrapper
    from pgolf.trainers.posttrain import embedded_config

    path = os.path.join(ROOT, "experiments", "baseline.toml")
    assert main(["inspect", path, "--bytes", "--json"]) == 0
    b = json.loads(capsys.readouterr().out)["code_bytes"]
    text, codec = build_wrapper(embedded_config(load_experiment(path).resolved(None)))
    assert b["packed_bytes"] == len(text) and b["codec"] == codec
    assert b["raw_bytes"] > b["minified_bytes"] > b["packed_bytes"]
    # what the file is packed for: a decided switch, never a per-run field (seeds share one file)
    assert "schedule.warmup_steps" in b["decided_fields"] and not {"run.seed", "data.data_path"} & set(b["decided_fields"])
    assert main(["inspect", path, "--bytes"]) == 0
    out = capsys.readouterr().out
    assert f"code bytes: {b['packed_bytes']:,} packed" in out and f"decided:    {len(b['decided_fields'])} config" in out


def test_merge_keeps_each_modules_meaning_or_gives_up():
    from pgolf.trainers.packdead import relative_froms
    from pgolf.trainers.packmerge import merge

    def trees(b_src):
        return {"a": ast.parse("X = 1\ndef f():\n    return X\n"), "b": ast.parse(b_src)}

    # b's own X clashes with a's: the later one is renamed; `a.X` of the module object becomes a's X
    src = "from .a import f\nfrom . import a\nX = 2\ndef g():\n    return 100 * f() + 10 * X + a.X\n"
    merged = merge(trees(src), ["a", "b"], relative_froms)
    ns: dict = {}
    exec(compile(merged, "m", "exec"), ns)
    assert ns["f"]() == 1 and ns["g"]() == 121
    # the clashing name is also a parameter inside b: no safe rewrite, the modules ship apart
    assert merge(trees("X = 2\ndef g(X):\n    return X\n"), ["a", "b"], relative_froms) is None


def test_shipped_sources_are_cached_by_the_config_fields_the_packer_read(tmp_path, monkeypatch):
    """A sweep's trials differ in seeds (never a packer decision): they share one cached result, which
    equals a fresh pack; a config that differs in a field the pruner read packs again."""
    import copy

    from pgolf.experiment import load_experiment
    from pgolf.trainers import packcache, packer
    from pgolf.trainers.codebundle import trainer_sources
    from pgolf.trainers.posttrain import embedded_config

    monkeypatch.setenv("PGOLF_CACHE", str(tmp_path))
    src = trainer_sources()
    cfg = embedded_config(load_experiment(os.path.join(ROOT, "experiments", "stacks", "pr691.toml"),
                                          smoke=True).resolved(None, 1))
    reads: dict = {}
    fresh = packer._ship(src, copy.deepcopy(cfg), True, reads)
    assert "ttt.mode" in reads and not any(k.startswith("run.seed") for k in reads)
    key = packcache.sources_key(src, "merge=True")
    assert packcache.lookup_shipped(key, cfg) is None
    packcache.store_shipped(key, reads, fresh)
    other_seed = copy.deepcopy(cfg)
    other_seed["run"]["seed"] = 7
    assert packer.ship_sources(src, other_seed) == fresh  # a hit: nothing repacked
    no_ttt = copy.deepcopy(cfg)
    no_ttt["ttt"]["mode"] = "off"
    assert packcache.lookup_shipped(key, no_ttt) is None
    one_int = copy.deepcopy(cfg)  # JSON comparison: 1 is not True, 1.0 is not 1
    one_int["avg"]["swa_apply"] = 0
    assert packcache.lookup_shipped(key, one_int) is None
    (entry,) = (tmp_path / "shipped" / key).iterdir()
    entry.write_text("{not json")
    assert packcache.lookup_shipped(key, cfg) is None  # a damaged entry is a miss, not a crash


def test_dead_code_is_what_the_entry_point_cannot_reach():
    """Two definitions that only name each other go, and `zlib.decompress` is not a use of our own
    `decompress` (the strict blob loader stayed in every packed file that way)."""
    from pgolf.trainers.packdead import _drop_dead

    trees = {"codebundle": ast.parse("def run_packed(d, argv):\n    return used(d)\n"), "m": ast.parse('''
import zlib
def decompress(data):
    return Reader(data).read()
class Reader:
    def read(self):
        return decompress(self)
def used(data):
    return zlib.decompress(data)
def helper():
    return 1
LIMIT = helper()
''')}
    _drop_dead(trees)
    kept = [getattr(s, "name", None) or ast.unparse(s) for s in trees["m"].body]
    assert kept == ["import zlib", "used", "helper", "LIMIT = helper()"]


def test_a_table_of_lambdas_is_a_definition_but_a_call_is_not():
    from pgolf.trainers.packdead import _defined

    assert _defined(ast.parse("T = {'a': lambda b: len(b)}").body[0]) == ["T"]  # nothing runs at import
    assert _defined(ast.parse("T = {'a': lambda b=len('x'): b}").body[0]) == []  # its default does
    assert _defined(ast.parse("T = make()").body[0]) == []


def test_the_benchmark_packs_a_readable_script_into_one_that_runs_the_same(tmp_path, monkeypatch):
    """benchmarks/code_bytes.py --script: a record's own readable script packed like the trainer (the
    like-for-like comparison in benchmarks/RESULTS.md) must still be that script."""
    import subprocess
    import sys

    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    from code_bytes import pack_script

    script = tmp_path / "rec.py"
    # a docstring, comments and long names for the minifier; forty near-copies for the compressor
    script.write_text('"""A record-like script."""\nimport sys\n\n'
                      + "".join(f"def helper_number_{i}(value):\n    # why: {i}\n    return value * {i} + len(sys.argv)\n\n"
                                for i in range(40))
                      + f"print(sum(f(2) for f in [{', '.join(f'helper_number_{i}' for i in range(40))}]))\n")
    want = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout
    out = tmp_path / "packed.py"
    r = pack_script(str(script), str(out))
    assert r["packed_bytes"] == out.stat().st_size < r["minified_bytes"] < r["raw_bytes"] == script.stat().st_size
    got = subprocess.run([sys.executable, str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert got.returncode == 0 and got.stdout == want == "1600\n", got.stderr
    bad = tmp_path / "new_syntax.py"
    bad.write_text("x = 1\nprint(f\"{', '.join(['a'])}\" if x else (\n")
    with pytest.raises(SystemExit, match=r"new_syntax.py:\d+: not valid Python"):
        pack_script(str(bad))
