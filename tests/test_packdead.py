"""packdead.py: what a shipped train_gpt.py leaves out as dead code. Each case runs the module before and
after, so a rule that drops something still needed fails here, not in a 10-minute run."""
from __future__ import annotations

import ast

from pgolf.trainers.packdead import drop_dead

ENTRY = "def run_packed(d, argv):\n    return main(d)\n"


def _kept(src: str, others: dict[str, str] | None = None, run: bool = True) -> tuple[list[str], dict]:
    trees = {"codebundle": ast.parse(ENTRY + "from .m import main\n"), "m": ast.parse(src)}
    trees.update({k: ast.parse(v) for k, v in (others or {}).items()})
    before: dict = {}
    exec(compile(src, "m", "exec"), before)
    live = drop_dead(trees)
    after: dict = {}
    exec(compile(trees["m"], "m", "exec"), after)
    if run:  # (a relative import inside main cannot run outside a package)
        assert after["main"](3) == before["main"](3)
    names = [n for s in trees["m"].body for n in
             ([s.name] if hasattr(s, "name") else [t.id for t in ast.walk(s) if isinstance(t, ast.Name)
                                                    and isinstance(t.ctx, ast.Store)]
              + [(a.asname or a.name) for a in getattr(s, "names", [])])]
    return names, {"live": live, "trees": trees}


def test_a_tuple_of_constants_is_split_so_each_name_goes_alone():
    names, _ = _kept("A, B, C = 1, 2, 3\ndef main(d):\n    return B + d\n")
    assert "B" in names and "A" not in names and "C" not in names
    src = "A, B = 1, 2\nA, B = B, A\ndef main(d):\n    return A * 10 + B\n"  # a swap reads its own targets
    assert _kept(src)[0].count("A") == 2


def test_a_local_named_like_a_global_does_not_keep_the_global():
    names, _ = _kept('''
def choices(sec):
    return sec
LIMIT = 4
STEP = 2
SCALE = 3
def main(d):
    choices = [d]  # a local: the global function is not called
    f = lambda STEP=STEP: STEP  # the default is the global, read where the lambda is made
    def inner():
        global SCALE
        return SCALE
    return [c + LIMIT for c in choices] + [f(), inner(), [LIMIT for LIMIT in range(2)]]
''')
    assert "choices" not in names
    assert {"LIMIT", "STEP", "SCALE", "main"} <= set(names)


def test_an_argument_annotation_is_no_use_but_a_class_field_is():
    names, _ = _kept('''
from dataclasses import dataclass
Path = str
Count = int
@dataclass
class Box:
    n: Count
def main(d: Path) -> Path:
    return Box(d).n
''')
    assert "Path" not in names and "Count" in names


def test_an_unused_import_and_an_annotated_constant_go():
    names, _ = _kept("import signal\nimport os.path\nCACHE: dict = {}\ndef main(d):\n    return os.sep * d\n")
    assert names == ["os.path", "main"]


def test_a_module_nothing_imports_keeps_nothing_alive():
    """`orphan` names helper, but no live import reaches orphan: both go (helper stayed in every
    shipped file while a module left out still counted as a user)."""
    src = "def helper():\n    return 1\ndef main(d):\n    return d\n"
    names, out = _kept(src, {"orphan": "from .m import helper\nVALUE = helper()\n"})
    assert "helper" not in names and "orphan" not in out["trees"] and out["live"] == {"codebundle", "m"}


def test_an_import_inside_a_function_keeps_what_it_imports():
    names, out = _kept("def main(d):\n    from .util import twice\n    return twice(d)\n",
                       {"util": "def twice(x):\n    return 2 * x\ndef unused():\n    return 0\n"}, run=False)
    util = [s.name for s in out["trees"]["util"].body]
    assert util == ["twice"] and "util" in out["live"]
