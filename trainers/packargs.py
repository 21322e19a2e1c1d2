"""Positional-only parameters for the merged module's own functions (never shipped itself).

python-minifier keeps the names of ordinary parameters (a caller may pass them by keyword) and binds
a short alias inside instead (`A=model;...`); positional-only ones it renames outright. A module-level
function (or class, for its `__init__`) whose every use is a plain call in the merged module can take
its arguments by position: each call's keywords become positional arguments (a skipped default in
between is written out when it is a literal) and the parameters become positional-only, so neither
the keywords nor the aliases are shipped."""
from __future__ import annotations

import ast

_PASS_THROUGH = {"no_grad", "inference_mode", "contextmanager"}  # decorators that forward *args, **kwargs


def _decorator_ok(d: ast.expr) -> bool:
    d = d.func if isinstance(d, ast.Call) else d
    return (d.attr if isinstance(d, ast.Attribute) else d.id if isinstance(d, ast.Name) else "") in _PASS_THROUGH


def _params(fn: ast.FunctionDef) -> list[tuple[ast.arg, ast.expr | None]] | None:
    a = fn.args
    if a.vararg or a.kwarg:
        return None
    pos = a.posonlyargs + a.args
    out = [(p, None) for p in pos[:len(pos) - len(a.defaults)]] + list(zip(pos[len(pos) - len(a.defaults):], a.defaults))
    out += list(zip(a.kwonlyargs, a.kw_defaults))
    has_default = [d is not None for _, d in out]
    return out if has_default == sorted(has_default) else None  # no parameter without a default after one with


def _positional(call: ast.Call, params: list) -> list[ast.expr] | None:
    if any(isinstance(x, ast.Starred) for x in call.args) or any(k.arg is None for k in call.keywords):
        return None
    given = dict(enumerate(call.args))
    names = [p.arg for p, _ in params]
    for k in call.keywords:
        if k.arg not in names or names.index(k.arg) in given:
            return None
        given[names.index(k.arg)] = k.value
    if len(call.args) > len(params):
        return None
    order = list(range(len(call.args))) + [names.index(k.arg) for k in call.keywords]
    if order != sorted(order) and any(isinstance(n, (ast.Call, ast.Await, ast.NamedExpr, ast.Yield, ast.YieldFrom))
                                      for k in call.keywords for n in ast.walk(k.value)):
        return None  # keywords written out of order with side effects: keep their evaluation order
    last = max(given, default=-1)
    out = []
    for i in range(last + 1):
        if i in given:
            out.append(given[i])
        elif isinstance(params[i][1], ast.Constant):
            out.append(ast.Constant(params[i][1].value))
        else:
            return None
    return out


def init_of(cls: ast.ClassDef) -> ast.FunctionDef | None:
    """The class's undecorated `__init__`, if its first parameter (self) is positional without a default."""
    init = next((s for s in cls.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"
                 and not s.decorator_list), None)
    pos = init.args.posonlyargs + init.args.args if init else []
    return init if pos and len(init.args.defaults) < len(pos) else None


def positional_only(tree: ast.Module, keep: set[str]) -> int:
    """Rewrite the module in place; returns how many functions changed. `keep`: names called from
    outside the module (the wrapper's entry point)."""
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name not in keep
             and all(_decorator_ok(d) for d in n.decorator_list)}
    owner = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef) and not n.decorator_list and n.name not in keep}
    remade = any(isinstance(n, ast.Attribute) and n.attr == "__class__" or isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Call) for n in ast.walk(tree))  # type(x)(...) builds any class
    inits = {name: init for name, n in owner.items() if not remade and (init := init_of(n)) is not None
             and not any(isinstance(d, ast.Name) and d.id == "classmethod"
                         for s in n.body if isinstance(s, ast.FunctionDef) for d in s.decorator_list)}
    funcs.update(inits)
    calls: dict[str, list[ast.Call]] = {f: [] for f in funcs}
    call_funcs = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in funcs:
            calls[n.func.id].append(n)
            call_funcs.add(id(n.func))
    not_uses = set()  # annotations (the minifier removes them), class fields and methods (their own scope)
    for n in ast.walk(tree):
        for a in [x.annotation for x in ast.walk(n.args) if isinstance(x, ast.arg)] + [n.returns] \
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) else []:
            not_uses.update(id(x) for x in (ast.walk(a) if a is not None else ()))
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        not_uses.update(id(t) for s in cls.body if isinstance(s, (ast.AnnAssign, ast.Assign))
                   for t in (s.targets if isinstance(s, ast.Assign) else [s.target]) if isinstance(t, ast.Name))
        not_uses.update(id(s) for s in cls.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))
    bad = set()
    for n in ast.walk(tree):  # any other use or binding of the name: leave the function as it is
        if isinstance(n, ast.Name) and n.id in funcs and id(n) not in call_funcs and id(n) not in not_uses:
            bad.add(n.id)
        elif isinstance(n, ast.arg) and n.arg in funcs:
            bad.add(n.arg)
        elif isinstance(n, (ast.Global, ast.Nonlocal)):
            bad.update(set(n.names) & set(funcs))
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name in funcs \
                and n is not funcs[n.name] and n is not owner.get(n.name) and id(n) not in not_uses:
            bad.add(n.name)
        elif isinstance(n, ast.alias) and (n.asname or n.name) in funcs:
            bad.add(n.asname or n.name)
    changed = 0
    for name, fn in funcs.items():
        params = None if name in bad else _params(fn)
        if params is None:
            continue
        me, params = (params[:1], params[1:]) if name in inits else ([], params)
        if not params:
            continue
        new = [_positional(c, params) for c in calls[name]]
        if any(a is None for a in new):
            continue
        for c, args in zip(calls[name], new):
            c.args, c.keywords = args, []
        a = fn.args
        a.posonlyargs, a.args, a.defaults = [p for p, _ in me + params], [], [d for _, d in params if d is not None]
        a.kwonlyargs, a.kw_defaults = [], []
        changed += 1
    return changed
