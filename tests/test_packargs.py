"""The packer's size passes that need no run: positional-only parameters (packargs.py) and config
attributes of `self` (packer._field_types)."""
from __future__ import annotations

import ast
import textwrap

from pgolf.trainers.packargs import positional_only
from pgolf.trainers.packer import _field_types, _Pruner

SRC = textwrap.dedent('''
    import random
    log = []
    def tick(x):
        log.append(x)
        return x
    def area(w, h=2, *, scale=1.0, name="a"):
        return (w * h * scale, name)
    def passed_around(a, b=1):
        return a - b
    def ordered(a, b):
        return (a, b)
    class Box:
        def __init__(self, w, h=1, *, tag="t"):
            self.w, self.h, self.tag = w, h, tag
    class Checked:
        area = 0  # a class field and a method named like module functions do not rebind them
        def __init__(self, v):
            self.v = v
        def tick(self):
            return 0
    def main():
        out = [area(3), area(3, scale=2.0), area(w=1, name="b"), area(2, name="c")]
        out.append(ordered(b=tick(1), a=tick(2)))  # side effects written out of order: kept as keywords
        f = passed_around
        out.append(f(5, b=2))
        box = Box(2, tag="x")
        c = Checked(v=4)
        out.append((box.w, box.h, box.tag, isinstance(c, Checked), c.v, tuple(log)))
        return out
''')


def _run(tree: ast.Module):
    ns: dict = {}
    exec(compile(ast.fix_missing_locations(tree), "<packed>", "exec"), ns)
    return ns["main"]()


def _fn(tree, name):
    return next(n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name)


def test_positional_only_rewrites_calls_and_keeps_behaviour():
    tree = ast.parse(SRC)
    before = _run(ast.parse(SRC))
    changed = positional_only(tree, keep={"main"})
    assert _run(tree) == before
    area = _fn(tree, "area")
    assert [a.arg for a in area.args.posonlyargs] == ["w", "h", "scale", "name"] and not area.args.kwonlyargs
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "area"]
    assert all(not c.keywords for c in calls)
    # area(w=1, name="b") skips h and scale: their literal defaults are written out
    assert any(len(c.args) == 4 and [getattr(a, "value", None) for a in c.args[1:]] == [2, 1.0, "b"] for c in calls)
    init = _fn(_fn(tree, "Box"), "__init__")
    assert [a.arg for a in init.args.posonlyargs] == ["self", "w", "h", "tag"]
    # left alone: used as a value, named by isinstance, keywords reordered around side effects
    assert _fn(tree, "passed_around").args.args and not _fn(tree, "passed_around").args.posonlyargs
    assert _fn(_fn(tree, "Checked"), "__init__").args.args
    assert _fn(tree, "ordered").args.args and not _fn(tree, "ordered").args.posonlyargs
    assert _fn(tree, "main").args.posonlyargs == [] and changed == 3  # area, tick, Box


def test_a_name_bound_twice_is_left_alone():
    tree = ast.parse("def f(a, b=1):\n    return a + b\ndef g():\n    f = 3\n    return f\ndef main():\n    return f(1, b=2)\n")
    assert positional_only(tree, keep={"main"}) == 0
    assert _run(tree) == 3


CFG_SRC = textwrap.dedent('''
    class Net:
        def __init__(self, cfg: ModelConfig, width: int):
            self.cfg = cfg
            self.width = width
        def forward(self, x):
            if self.cfg.doc_attention:
                return x + 1
            return x
    class Other:
        def __init__(self, cfg: ModelConfig):
            self.cfg = cfg
        def go(self):
            return 1 if self.cfg.doc_attention else 0
''')


def _decided(src: str) -> str:
    trees = {"m": ast.parse(src)}
    p = _Pruner({"model": {"doc_attention": False}}, _field_types(trees))
    p.visit(trees["m"])
    return ast.unparse(trees["m"])


def test_a_config_stored_on_self_in_init_decides_the_methods_branches():
    out = _decided(CFG_SRC)
    # both classes (each stores cfg once): the arms doc_attention=False never takes are markers
    assert out.count("_gone()") == 2 and "x + 1" not in out and "1 if" not in out
    # a second store of the attribute anywhere (here: outside the classes) means it may not be the run's
    out = _decided(CFG_SRC + "\ndef swap(n: Net, c):\n    n.cfg = c\n")
    assert "_gone" not in out
