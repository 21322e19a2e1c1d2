"""Merges the shipped trainer modules into one module, so python-minifier can rename globals (it never
renames across modules) and the import lines go. Runs where the package is installed; never shipped.

Every top-level name of a module is keyed by what it is (its own definition, a stdlib import, or the
definition a relative import reaches); two modules binding one name to different things keep both,
the later one renamed. `from . import m` then `m.x` becomes `x`. Anything this cannot rewrite safely
(a renamed name also bound inside a function, a module object used bare or assigned to) returns None,
and the packer ships the modules separately as before.
"""
from __future__ import annotations

import ast

_BUNDLE = "pgolf.trainers."


class _Abort(Exception):
    pass


def _top_stores(tree: ast.Module) -> list[tuple[ast.stmt, str]]:
    """Names bound by top-level code (not inside a def, class, lambda or comprehension)."""
    out = []

    def walk(node, stmt):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.append((stmt, node.name))
            return
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.append((stmt, node.id))
        for child in ast.iter_child_nodes(node):
            walk(child, stmt)

    for stmt in tree.body:
        if not isinstance(stmt, (ast.Import, ast.ImportFrom)):
            walk(stmt, stmt)
    return out


def _nested_bound(tree: ast.Module) -> set[str]:
    """Names bound in any inner scope (function, class body, lambda, comprehension)."""
    out = set()
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            out |= {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs}
            out |= {x.arg for x in (a.vararg, a.kwarg) if x}
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and id(node) not in top:
            out.add(node.name)
        if isinstance(node, ast.ExceptHandler) and node.name:
            out.add(node.name)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.comprehension)):
            for n in ast.walk(node):
                if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)) and n is not node:
                    out.add(n.id)
                elif isinstance(n, ast.Import) or isinstance(n, ast.ImportFrom) and not n.level \
                        and not (n.module or "").startswith(_BUNDLE):  # bundle imports are rewritten
                    out |= {(a.asname or a.name).split(".")[0] for a in n.names}
    return out


def merge(trees: dict[str, ast.Module], live: list[str], resolve_froms) -> ast.Module | None:
    """One module holding `live` (module names, e.g. "config.model") in import order, or None."""
    try:
        return _merge(trees, live, resolve_froms)
    except _Abort:
        return None


def _merge(trees, live, resolve_froms):
    modules = set(live)

    froms: dict[str, dict[int, str]] = {}

    def target_of(mod, node):
        if node.level:
            if mod not in froms:
                froms[mod] = {id(n): t for t, n in resolve_froms(trees[mod], mod, modules)}
            return froms[mod][id(node)]
        return node.module.removeprefix(_BUNDLE) if node.module and node.module.startswith(_BUNDLE) else None

    # what each top-level local name of a module is bound to
    raw: dict[str, dict[str, tuple]] = {m: {} for m in live}
    mod_alias: dict[str, dict[str, str]] = {m: {} for m in live}
    deps: dict[str, set[str]] = {m: set() for m in live}
    for m in live:
        for stmt, name in _top_stores(trees[m]):
            raw[m][name] = ("def", m, name)
        for node in ast.walk(trees[m]):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                t = target_of(m, node)
                for a in node.names:
                    local = a.asname or a.name
                    if t is None:
                        if node in trees[m].body:
                            raw[m][local] = ("abs", node.module, a.name)
                        continue
                    sub = f"{t}.{a.name}" if t else a.name
                    if sub in modules:
                        mod_alias[m][local] = sub
                    elif t not in modules:
                        if node in trees[m].body:
                            raise _Abort(f"{m}: import from {t}, not shipped")
                    else:
                        if node in trees[m].body:
                            raw[m][local] = ("ref", t, a.name)
                        if node in trees[m].body:
                            deps[m].add(t)
            elif isinstance(node, ast.Import) and node in trees[m].body:
                for a in node.names:
                    if a.name.startswith("pgolf"):
                        raise _Abort("absolute import of pgolf")
                    raw[m][a.asname or a.name.split(".")[0]] = ("abs", a.asname and a.name or a.name.split(".")[0], "")

    def key(m, name, seen=()):
        b = raw[m].get(name)
        if b is None:
            raise _Abort(f"{m}.{name} is not defined")
        if b[0] == "ref":
            if (m, name) in seen:
                raise _Abort("import cycle")
            return key(b[1], b[2], seen + ((m, name),))
        return b

    # import order: a module after everything its top-level imports reach (packages before nothing)
    order, state = [], {}

    def visit(m):
        if state.get(m) == 1:
            raise _Abort(f"import cycle at {m}")
        if state.get(m) == 2:
            return
        state[m] = 1
        for d in sorted(deps[m]):
            visit(d)
        state[m] = 2
        order.append(m)

    for m in sorted(live):
        visit(m)

    # one global name per distinct key; a later module's clash gets a suffix
    owner: dict[str, tuple] = {}
    gname: dict[tuple, str] = {}
    for m in order:
        for name in raw[m]:
            k = key(m, name)
            if k in gname:
                continue
            new = name if k[0] != "ref" else k[2]
            if owner.get(new, k) != k:
                if k[0] == "abs":
                    raise _Abort(f"stdlib name {new} clashes")
                new = f"{new}_{m.replace('.', '_')}"
                if new in owner:
                    raise _Abort(f"{new} taken")
            owner[new], gname[k] = k, new

    body: list[ast.stmt] = [ast.ImportFrom("__future__", [ast.alias("annotations")], 0)]
    seen_imports = set()
    for m in order:
        tree = trees[m]
        ren = {n: gname[key(m, n)] for n in raw[m]}
        ren = {n: g for n, g in ren.items() if n != g}
        inner = _nested_bound(tree)
        if (set(ren) | set(mod_alias[m])) & inner:
            raise _Abort(f"{m}: {sorted((set(ren) | set(mod_alias[m])) & inner)} also bound inside a function")
        doc = ast.get_docstring(tree, clean=False)
        _Rewriter(m, ren, mod_alias[m], lambda t, x: gname[key(t, x)], target_of, doc, modules).visit(tree)
        for stmt in tree.body:
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
                continue  # docstring
            if isinstance(stmt, ast.If) and "__main__" in ast.unparse(stmt.test) \
                    or isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__":
                continue
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                text = ast.unparse(stmt)
                if text in seen_imports:
                    continue
                seen_imports.add(text)
            body.append(stmt)
    out = ast.Module(body, [])
    ast.fix_missing_locations(out)
    return out


class _Rewriter(ast.NodeTransformer):
    def __init__(self, mod, ren, aliases, global_of, target_of, doc, modules):
        self.mod, self.ren, self.aliases, self.global_of, self.target_of, self.doc, self.modules = \
            mod, ren, aliases, global_of, target_of, doc, modules
        self.depth = 0

    def visit_FunctionDef(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1
        if self.depth == 0 and node.name in self.ren:
            node.name = self.ren[node.name]
        return node

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef

    def visit_ImportFrom(self, node):
        t = self.target_of(self.mod, node) if node.module != "__future__" else None
        if t is None:
            return node
        if self.depth == 0:
            return None  # the merged module defines every name it reached
        out = []  # inside a function: `from .x import a as b` binds a local b
        for a in node.names:
            local = a.asname or a.name
            if (f"{t}.{a.name}" if t else a.name) in self.modules:
                continue  # a module: its attributes are rewritten to globals
            if t not in self.modules:  # e.g. codebundle's packer import: never reached in a packed run
                return ast.Raise(ast.Call(ast.Name("ImportError", ast.Load()), [ast.Constant(f"{t} is not shipped")], []))
            g = self.global_of(t, a.name)
            if g != local:
                out.append(ast.Assign([ast.Name(local, ast.Store())], ast.Name(g, ast.Load())))
        return out or ast.Pass()

    def visit_Global(self, node):
        node.names = [self.ren.get(n, n) for n in node.names]
        return node

    def visit_Attribute(self, node):
        if isinstance(node.value, ast.Name) and node.value.id in self.aliases:
            if not isinstance(node.ctx, ast.Load):
                raise _Abort(f"{self.mod}: assigns {node.value.id}.{node.attr}")
            return ast.copy_location(ast.Name(self.global_of(self.aliases[node.value.id], node.attr), ast.Load()), node)
        return self.generic_visit(node)

    def visit_Name(self, node):
        if node.id in self.aliases:
            raise _Abort(f"{self.mod}: module {node.id} used as an object")
        if node.id == "__doc__":
            return ast.copy_location(ast.Constant(self.doc or ""), node)
        if node.id in self.ren:
            node.id = self.ren[node.id]
        return node
