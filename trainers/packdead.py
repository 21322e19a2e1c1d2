"""Dead code in the trainer sources a counted train_gpt.py ships (see packer.py, item 2): top-level
definitions and imported names nothing reachable from the entry point names, and the modules no live
import reaches. Names are matched by spelling (a call, an attribute, a string such as getattr's), so a
name is kept whenever anything could refer to it. Runs where the package is installed; never shipped.
"""
from __future__ import annotations

import ast

ROOT = ("codebundle", "run_packed")  # the wrapper's entry point


def _defined(stmt: ast.stmt) -> list[str]:
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [stmt.name]
    if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets) \
            and not _calls(stmt.value):
        return [t.id for t in stmt.targets]
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and not _calls(stmt.value or stmt.target):
        return [stmt.target.id]
    return []


_PURE = {"get_args", "os.path.dirname", "os.path.abspath"}  # module-level calls that only compute a value


def _calls(node: ast.AST) -> bool:
    """Whether evaluating `node` calls anything (a lambda's body runs later, not here)."""
    if isinstance(node, ast.Call) and ast.unparse(node.func) not in _PURE:
        return True
    if isinstance(node, ast.Lambda):  # only its defaults are evaluated now
        return any(_calls(d) for d in node.args.defaults + node.args.kw_defaults if d is not None)
    return any(_calls(c) for c in ast.iter_child_nodes(node))


def _outside(tree: ast.AST) -> frozenset[str]:
    """Names `import x` binds anywhere in the module: `x.y` reads another package's y, not ours."""
    return frozenset((a.asname or a.name).split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                     for a in n.names if not a.name.startswith("pgolf"))


def _root(node: ast.AST) -> ast.AST:
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.value if not isinstance(node, ast.Call) else node.func
    return node


def _annotations(node: ast.AST) -> set[int]:
    """ids of the nodes under the annotations python-minifier removes: every one but a class field's."""
    fields = {id(s) for n in ast.walk(node) if isinstance(n, ast.ClassDef) for s in n.body}
    anns = []
    for n in ast.walk(node):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = n.args
            anns += [x.annotation for x in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg] if x]
            anns.append(n.returns)
        elif isinstance(n, ast.AnnAssign) and id(n) not in fields:
            anns.append(n.annotation)
    return {id(x) for a in anns if a is not None for x in ast.walk(a)}


_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
_COMPS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _binds(scope: ast.AST) -> tuple[set[str], set[str]]:
    """(locals, globals) of a function or comprehension: a name bound anywhere in the body is local
    everywhere in it (Python's rule) unless declared global or nonlocal there."""
    if isinstance(scope, _COMPS):
        return {n.id for g in scope.generators for n in ast.walk(g.target) if isinstance(n, ast.Name)}, set()
    a = scope.args
    bound = {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg] if x}
    glob: set[str] = set()
    nonlocal_: set[str] = set()
    todo = list(scope.body) if isinstance(scope.body, list) else [scope.body]
    while todo:
        n = todo.pop()
        if isinstance(n, ast.Global):
            glob.update(n.names)
        elif isinstance(n, ast.Nonlocal):
            nonlocal_.update(n.names)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(n.name)  # its body is another scope
        elif isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load):
            bound.add(n.id)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            bound.update((x.asname or x.name).split(".")[0] for x in n.names)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            bound.add(n.name)
        if not isinstance(n, _FUNCS + _COMPS + (ast.ClassDef,)):
            todo += ast.iter_child_nodes(n)
    return bound - glob - nonlocal_, glob


def _is_local(name: str, scopes: list) -> bool:
    for bound, glob in reversed(scopes):
        if name in glob:
            return False
        if name in bound:
            return True
    return False


def _local_names(node: ast.AST) -> set[int]:
    """ids of the Name nodes that refer to a function's or comprehension's own local, not a global."""
    out: set[int] = set()

    def visit(n, scopes):
        if isinstance(n, _FUNCS + _COMPS):
            inner = scopes + [_binds(n)]
            if isinstance(n, _COMPS):  # the first iterable is evaluated outside
                first = n.generators[0]
                visit(first.iter, scopes)
                here = [first.target, *first.ifs, *n.generators[1:]]
                here += [n.key, n.value] if isinstance(n, ast.DictComp) else [n.elt]
            else:  # defaults and decorators are evaluated outside; annotations do not count
                a = n.args
                for c in a.defaults + [d for d in a.kw_defaults if d] + getattr(n, "decorator_list", []):
                    visit(c, scopes)
                here = n.body if isinstance(n.body, list) else [n.body]
            for c in here:
                visit(c, inner)
            return
        if isinstance(n, ast.Name) and _is_local(n.id, scopes):
            out.add(id(n))
        for c in ast.iter_child_nodes(n):
            visit(c, scopes)

    visit(node, [])
    return out


def uses_of(node: ast.AST, outside: frozenset[str] = frozenset()) -> set[str]:
    """Every name `node` may refer to: names (not a function's own locals), attributes (not of another
    package's module), and identifier strings; annotations the minifier removes are no use."""
    out, skip = set(), _annotations(node) | _local_names(node)
    for n in ast.walk(node):
        if id(n) in skip:
            continue
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            root = _root(n.value)  # zstandard.ZstdDecompressor().decompress is not our decompress
            if not (isinstance(root, ast.Name) and root.id in outside):
                out.add(n.attr)
        elif isinstance(n, ast.ImportFrom):  # inside a function: binds a local, and reads the module's name
            out.update(a.name for a in n.names)
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.isidentifier():
            out.add(n.value)  # getattr(obj, "name") and friends
    return out


def relative_froms(tree: ast.AST, mod: str, modules: set[str]):
    """(target module, ImportFrom node) for every relative `from .x import ...` in `tree`."""
    pkg = mod if any(m.startswith(mod + ".") for m in modules) else mod.rpartition(".")[0]
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.level:
            base = pkg
            for _ in range(n.level - 1):
                base = base.rpartition(".")[0]
            yield ".".join(p for p in (base, n.module or "") if p), n


def _relative_imports(tree: ast.AST, mod: str, modules: set[str]) -> set[str]:
    out = set()
    for target, n in relative_froms(tree, mod, modules):
        for a in n.names:
            sub = ".".join(p for p in (target, a.name) if p)
            out.add(sub if sub in modules else target)
    return out & modules


def _reached(trees: dict[str, ast.Module], uses) -> set[str]:
    """Names reached from the statements that run at import (and the entry point), through the
    definitions of each reached name: two definitions that only name each other are not reached."""
    defs: dict[str, list[ast.stmt]] = {}
    todo: list[str] = []
    alias: dict[str, set[str]] = {}  # `from .x import a as b`: reaching b reaches x's a
    for mod, tree in trees.items():
        for stmt in tree.body:
            names = _defined(stmt)
            if isinstance(stmt, ast.ImportFrom):
                for a in stmt.names:
                    if a.asname and a.asname != a.name:
                        alias.setdefault(a.asname, set()).add(a.name)
            elif names == ["__all__"]:
                continue  # the export list reaches nothing
            elif not names or (mod, names[0]) == ROOT:
                todo += uses(stmt)
            else:
                for n in names:
                    defs.setdefault(n, []).append(stmt)
    live: set[str] = set()
    while todo:
        n = todo.pop()
        if n not in live:
            live.add(n)
            todo += alias.get(n, ())
            for stmt in defs.get(n, ()):
                todo += uses(stmt)
    return live


def _drop_dead(trees: dict[str, ast.Module]) -> None:
    """Remove top-level definitions nothing live reaches, and imported names, to a fixed point."""
    cache: dict[int, set[str]] = {}
    outside = {id(s): ext for tree in trees.values() for ext in [_outside(tree)] for s in tree.body}

    def uses(stmt: ast.stmt) -> set[str]:
        # an import is not a use (the importing module's own code is); nor is __all__
        if isinstance(stmt, (ast.Import, ast.ImportFrom)) or _defined(stmt) == ["__all__"]:
            return set()
        if id(stmt) not in cache:
            cache[id(stmt)] = uses_of(stmt, outside[id(stmt)])
        return cache[id(stmt)]

    # `from .x import a` elsewhere keeps x's own import of a alive (a re-export, e.g. context's exit codes)
    reexported = {(target, a.name) for mod, tree in trees.items()
                  for target, n in relative_froms(tree, mod, set(trees)) for a in n.names}

    while True:
        changed = False
        reached = _reached(trees, uses)
        owns = {mod: set().union(*(uses(s) for s in tree.body)) for mod, tree in trees.items()}
        for mod, tree in trees.items():
            own = owns[mod]
            keep = []
            for stmt in tree.body:
                names = _defined(stmt)
                if names == ["__all__"]:
                    changed = True
                    continue
                if names and (mod, names[0]) != ROOT and not any(n in reached for n in names):
                    changed = True
                    continue
                if isinstance(stmt, ast.ImportFrom) and stmt.module != "__future__":
                    live = [a for a in stmt.names if (a.asname or a.name) in own or a.name == "*"
                            or (mod, a.asname or a.name) in reexported]
                    if len(live) != len(stmt.names):
                        changed = True
                        if not live:
                            continue
                        stmt.names = live
                if isinstance(stmt, ast.Import):  # `import os.path` binds os
                    live = [a for a in stmt.names if (a.asname or a.name.split(".")[0]) in own]
                    if len(live) != len(stmt.names):
                        changed = True
                        if not live:
                            continue
                        stmt.names = live
                keep.append(stmt)
            tree.body = keep
        if not changed:
            return


def _split_tuples(tree: ast.Module) -> None:
    """`A, B = 1, 2` becomes `A = 1` and `B = 2`, so each name can go alone."""
    body = []
    for stmt in tree.body:
        t = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None
        if isinstance(t, ast.Tuple) and isinstance(stmt.value, ast.Tuple) and len(t.elts) == len(stmt.value.elts) \
                and all(isinstance(e, ast.Name) for e in t.elts) \
                and not {e.id for e in t.elts} & {n.id for n in ast.walk(stmt.value) if isinstance(n, ast.Name)}:
            body += [ast.copy_location(ast.Assign([e], v), stmt) for e, v in zip(t.elts, stmt.value.elts)]
        else:
            body.append(stmt)
    tree.body = body


def live_modules(trees: dict[str, ast.Module]) -> set[str]:
    """The modules the entry point's module imports, through relative imports, with their packages."""
    modules = set(trees)
    live, todo = ({""} & modules) | {ROOT[0]}, [ROOT[0]]
    while todo:
        mod = todo.pop()
        for dep in _relative_imports(trees[mod], mod, modules):
            parents = {".".join(dep.split(".")[:k]) for k in range(1, dep.count(".") + 1)}
            for d in {dep} | (parents & modules):
                if d not in live:
                    live.add(d)
                    todo.append(d)
    return live


def drop_dead(trees: dict[str, ast.Module]) -> set[str]:
    """Drop dead definitions, unnamed methods (packcuts) and unreached modules from `trees`, to a fixed
    point (a module left out names nothing); returns the live modules."""
    from .packcuts import drop_unnamed_methods

    for tree in trees.values():
        _split_tuples(tree)
    while True:
        _drop_dead(trees)
        while drop_unnamed_methods(trees):
            _drop_dead(trees)
        live = live_modules(trees)
        if live == set(trees):
            return live
        for mod in set(trees) - live:
            del trees[mod]
