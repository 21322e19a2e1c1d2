"""Constants the packer's branch decisions (packer.py, item 1) carry past one function (never shipped):

- Arguments: a module-level function, or a class through its `__init__`, that is only ever called by
  name, and whose every call passes one decided value for a parameter (a literal, or a value the pruner
  decided from the config at the call), sees that parameter as a constant: `SmearGate(cfg.smear_gate,
  ...)` decides `version == "v3"` inside the class.
- Attributes: `self.x = <decided value>` in a class's `__init__`, on its straight-line path, with no
  other store of any `.x` anywhere and no method, class field or string named `x`, makes `self.x` a
  constant in that class's methods.

Each constant carries the config fields it was worked out from: a decision that uses it depends on them
(codebundle.check_packed refuses, at start, a config that differs in one). The packer runs its pruner
again with what this finds, until nothing new is found."""
from __future__ import annotations

import ast

from .packargs import _params, init_of

MISS = object()  # a call whose value for a parameter the pruner could not decide


def _key(v) -> tuple:
    return type(v), v  # 1, 1.0 and True are equal but are not the same constant


def _blocked(trees: dict[str, ast.Module]) -> set[str]:
    """Names used some other way than as the callee of a plain call: as a value, an attribute, a string
    (getattr and friends), a base class; and names defined twice (which one a call means is unknown)."""
    callees = {id(n.func) for t in trees.values() for n in ast.walk(t) if isinstance(n, ast.Call)
               and isinstance(n.func, ast.Name)}
    out, seen = set(), set()
    for t in trees.values():
        for stmt in t.body:
            if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
                (out if stmt.name in seen else seen).add(stmt.name)
        for n in ast.walk(t):
            if isinstance(n, ast.Name) and id(n) not in callees and isinstance(n.ctx, ast.Load):
                out.add(n.id)
            elif isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load):
                out.add(n.id)  # rebound somewhere
            elif isinstance(n, ast.Attribute):
                out.add(n.attr)
        out |= _strings(t)
    return out


def argument_constants(trees: dict[str, ast.Module], calls: dict[str, list]) -> dict[str, dict[str, tuple]]:
    """{function or class name: {parameter: (value, config fields it depends on)}} for parameters every
    call passes the same decided value (`calls`: name -> [(positional, {keyword: ...}) of (value,
    fields) or MISS, or None for a call with * or **])."""
    blocked = _blocked(trees)
    out: dict[str, dict[str, object]] = {}
    for t in trees.values():
        for stmt in t.body:
            fn = init_of(stmt) if isinstance(stmt, ast.ClassDef) else stmt if isinstance(stmt, ast.FunctionDef) else None
            if fn is None or stmt.name in blocked or not calls.get(stmt.name) or None in calls[stmt.name] \
                    or fn.decorator_list:
                continue
            params = _params(fn)
            if params is None:
                continue
            params = params[1:] if fn is not stmt else params  # __init__'s self
            found = {}
            for i, (p, default) in enumerate(params):
                vals, fields = set(), set()
                for pos, kw in calls[stmt.name]:
                    v = pos[i] if i < len(pos) else kw.get(p.arg, (default.value, frozenset())
                                                            if isinstance(default, ast.Constant) else MISS)
                    vals.add(MISS if v is MISS else _key(v[0]))
                    fields |= v[1] if v is not MISS else set()
                if len(vals) == 1 and MISS not in vals:
                    found[p.arg] = (next(iter(vals))[1], frozenset(fields))
            if found:
                out[stmt.name] = found
    return out


def straight_stores(body: list, me: str, is_gone) -> list[ast.Assign]:
    """`self.x = ...` statements of an `__init__` body that run whenever it returns: its own statements,
    and the arm of an `if` whose other arm is `_gone`."""
    out = []
    for s in body:
        if isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Attribute) \
                and isinstance(s.targets[0].value, ast.Name) and s.targets[0].value.id == me:
            out.append(s)
        elif isinstance(s, ast.If) and is_gone(s.orelse):
            out += straight_stores(s.body, me, is_gone)
        elif isinstance(s, ast.If) and is_gone(s.body):
            out += straight_stores(s.orelse, me, is_gone)
    return out


def _strings(tree: ast.AST) -> set[str]:
    """String constants that code may read (a docstring is none)."""
    docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs}


_WRITERS = {"setattr": 1, "delattr": 1, "register_buffer": 0, "register_parameter": 0, "register_module": 0,
            "add_module": 0}  # calls that store an attribute named by a string, and which argument names it


def _written_names(tree: ast.AST) -> set[str]:
    """Attribute names a call stores by string (`setattr(x, "a", v)`, `register_buffer("a", t)`): a
    string that is only read (getattr, a name pattern) stores nothing."""
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Call):
            f = n.func.attr if isinstance(n.func, ast.Attribute) else n.func.id if isinstance(n.func, ast.Name) else ""
            at = _WRITERS.get(f)
            if at is not None and len(n.args) > at and isinstance(n.args[at], ast.Constant):
                out.add(n.args[at].value)
    return out


def _self_stores(trees: dict[str, ast.Module]) -> tuple[dict[str, list], dict[str, set[str]]]:
    """attribute -> the class of each store (None: not through a method's own `self`), and each
    class's base class names (by name, as written)."""
    owner: dict[int, str] = {}  # id of an Attribute store -> the class whose method stores it on self
    bases: dict[str, set[str]] = {}
    for t in trees.values():
        for cls in t.body:
            if not isinstance(cls, ast.ClassDef):
                continue
            bases[cls.name] = {n.id for b in cls.bases for n in ast.walk(b) if isinstance(n, ast.Name)}
            for fn in cls.body:
                if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.args.args and not fn.decorator_list:
                    me = fn.args.args[0].arg
                    owner.update((id(n), cls.name) for n in ast.walk(fn) if isinstance(n, ast.Attribute)
                                 and not isinstance(n.ctx, ast.Load) and isinstance(n.value, ast.Name)
                                 and n.value.id == me)
    stores: dict[str, list] = {}
    for t in trees.values():
        for n in ast.walk(t):
            if isinstance(n, ast.Attribute) and not isinstance(n.ctx, ast.Load):
                stores.setdefault(n.attr, []).append(owner.get(id(n)))
    return stores, bases


def attribute_constants(trees: dict[str, ast.Module], found: dict[str, dict[str, tuple]]
                        ) -> dict[str, dict[str, tuple]]:
    """`found` ({class: {attribute: value}} from `__init__`s) less every attribute stored anywhere else
    on that class or one of its bases (a store not through a method's own `self` may be on any), of a
    class something derives from, or named by a method, a class field or a string a setattr-like call
    stores by."""
    stores, bases = _self_stores(trees)
    derived = set().union(*bases.values())
    strings = set().union(*(_written_names(t) for t in trees.values()))
    members: dict[str, set[str]] = {}  # a class's methods and class fields: a property would read instead
    twice = set()  # class names two modules define: which one a `self` is, is unknown
    for t in trees.values():
        for c in t.body:
            if isinstance(c, ast.ClassDef):
                if c.name in members:
                    twice.add(c.name)
                defs = {s.name for s in c.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
                members[c.name] = defs | {x.id for s in c.body if isinstance(s, (ast.Assign, ast.AnnAssign))
                                          for x in ast.walk(s) if isinstance(x, ast.Name) and isinstance(x.ctx, ast.Store)}
    out = {}
    for cls, attrs in found.items():
        line, todo = {cls}, list(bases.get(cls, ()))  # the class and its bases
        while todo:
            b = todo.pop()
            if b not in line:
                line.add(b)
                todo += bases.get(b, ())
        named = strings.union(*(members.get(c, set()) for c in line))
        keep = {a: v for a, v in attrs.items() if cls not in derived | twice and a not in named
                and None not in stores.get(a, [None]) and stores[a].count(cls) == 1
                and not (line - {cls}) & set(stores[a])}
        if keep:
            out[cls] = keep
    return out
