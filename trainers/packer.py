"""Builds the trainer sources a counted train_gpt.py ships: only the code the resolved config reaches,
minified. Runs where the package is installed (it needs python-minifier); never shipped itself.

1. Constant branches: an `if`/conditional expression whose test reads only config fields (through a
   parameter annotated with a config class, an alias of one, or a field typed as one, or `self.cfg` in
   a method when `__init__` stored a config parameter there and nothing else stores that attribute),
   literals, and the constants packconst.py carries between functions (arguments every call passes
   the same, attributes `__init__` sets once) is decided with the packed config, and becomes the arm
   it takes. The fields the decisions read are written into the file (`codebundle._DECIDED`), and
   `codebundle.check_packed` stops the run at start when a `--set` or env override changes one: the
   code for the other value is not there. Per-run fields (seed, run dir, data paths, threads) and
   fields a run rebuilds (`dataclasses.replace(cfg.schedule, ...)`) are never decided.
2. Dead code: top-level functions, classes, constants and imported names that nothing reachable from
   the entry point refers to are dropped, to a fixed point; modules no live import reaches are left
   out (import graph from the wrapper's entry point, `codebundle.run_packed`).
3. Cuts (packcuts.py): platform-only checks, error prose, methods nothing names, asserts.
4. One module (packmerge.py) when it can be merged safely, else one file per reached module.
5. packargs.py, on the merged module: functions and classes only ever called get positional-only
   parameters, so calls carry no keywords and the minifier renames the parameters.
6. python-minifier: docstrings, comments and annotations (class fields keep theirs: dataclasses need
   them), local renaming, and global renaming on the merged module.
"""
from __future__ import annotations

import ast
import operator

from .config import PER_RUN_FIELDS, SECTIONS
from .packargs import init_of, positional_only
from .packconst import MISS, argument_constants, attribute_constants, straight_stores
from .packdead import ROOT, drop_dead, relative_froms, uses_of
from .packcache import cached_minify, field_value, lookup_shipped, sources_key, store_shipped

_CLASS_SECTION = {cls.__name__: name for name, cls in SECTIONS.items()}
_OPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
        ast.GtE: operator.ge, ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
        ast.Is: operator.is_, ast.IsNot: operator.is_not}
_BIN = {ast.Mod: operator.mod, ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
_GONE = "_gone"
_NOT_SHIPPED = ("packer.py", "packcuts.py", "packmerge.py", "packcache.py", "packargs.py")


class _Unknown(Exception):
    pass


_PACKED = object()  # what the pruner takes codebundle.PACKED to be: not None, true


def _modname(rel: str) -> str:
    parts = rel[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _ann_kind(ann: ast.AST | None) -> str | None:
    """'train' for TrainConfig, a section name for a section class, else None."""
    name = ann.value if isinstance(ann, ast.Constant) and isinstance(ann.value, str) else \
        ann.id if isinstance(ann, ast.Name) else ann.attr if isinstance(ann, ast.Attribute) else None
    if name == "TrainConfig":
        return "train"
    return _CLASS_SECTION.get(name)


class _Pruner(ast.NodeTransformer):
    """Decides config-constant tests inside functions (see the module docstring)."""

    def __init__(self, config: dict, field_types: dict[str, dict[str, str]], reads: dict | None = None,
                 args: dict | None = None, attrs: dict | None = None, volatile: frozenset = frozenset()):
        self.config, self.field_types, self.scope, self.cls = config, field_types, [{}], None
        self.reads = {} if reads is None else reads  # every config field a decision looked at (packcache)
        self.args, self.attrs = args or {}, attrs or {}  # packconst's constants from the previous pass
        self.fixed = PER_RUN_FIELDS | volatile  # never decided: seeds share one file; a run may rebuild these
        self.calls: dict[str, list] = {}  # callee name -> [(positional values, {keyword: value}) or None]
        self.found: dict[str, dict] = {}  # class -> {attribute: value} its __init__ stores
        self.once: set[str] = set()
        self.using: set[str] = set()  # the config fields the value being worked out depends on
        self.decided: set[str] = set()  # the fields some decision depends on (codebundle.check_packed)

    def kind_of(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            for s in reversed(self.scope):
                if node.id in s:
                    return s[node.id] if isinstance(s[node.id], str) else None
            return None
        if isinstance(node, ast.Attribute):
            base = self.kind_of(node.value)
            if base == "train" and node.attr in SECTIONS:
                return node.attr
            if isinstance(base, str) and base.startswith("class:"):
                return self.field_types.get(base[6:], {}).get(node.attr)
        return None

    def tracked(self, fn, node: ast.AST):
        """(fn(node), the config fields it depends on), or None where it is unknown."""
        outer, self.using = self.using, set()
        try:
            return fn(node), frozenset(self.using)
        except _Unknown:
            return None
        finally:
            self.using = outer

    def scalar(self, node: ast.AST):
        """(value, fields) of a decided immutable value (what packconst may carry), else MISS."""
        got = self.tracked(self.value, node)
        return got if got and (got[0] is None or isinstance(got[0], (bool, int, float, str))) else MISS

    def value(self, node: ast.AST):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name) and node.id == "PACKED" or isinstance(node, ast.Attribute) \
                and node.attr == "PACKED" and isinstance(node.value, ast.Name) and node.value.id == "codebundle":
            return _PACKED  # codebundle.PACKED: never None in a shipped script, so package-only code goes
        if isinstance(node, ast.Name):  # a local bound once to a config-constant value
            for s in reversed(self.scope):
                if node.id in s:
                    if isinstance(s[node.id], tuple):  # (value, fields)
                        self.using |= s[node.id][1]
                        return s[node.id][0]
                    break
            raise _Unknown
        if isinstance(node, (ast.Tuple, ast.List)):
            return tuple(self.value(e) for e in node.elts)
        if isinstance(node, ast.Attribute):
            base = self.kind_of(node.value)
            if isinstance(base, str) and node.attr in self.attrs.get(base[6:] if base.startswith("class:") else "", {}):
                v, fields = self.attrs[base[6:]][node.attr]
                self.using |= fields
                return v
            if base in SECTIONS and (base, node.attr) not in self.fixed:
                self.using.add(f"{base}.{node.attr}")
                self.reads[f"{base}.{node.attr}"] = field_value(self.config, f"{base}.{node.attr}")
                if node.attr in self.config.get(base, {}):
                    return self.config[base][node.attr]
            raise _Unknown
        if isinstance(node, ast.Compare):
            left = self.value(node.left)
            for op, right in zip(node.ops, node.comparators):
                r = self.value(right)
                if type(op) not in _OPS:
                    raise _Unknown
                if not _OPS[type(op)](left, r):
                    return False
                left = r
            return True
        if isinstance(node, ast.BoolOp):  # the operand that decides it, as Python returns it
            for v in node.values[:-1]:
                val = self.value(v)
                if bool(val) == isinstance(node.op, ast.Or):
                    return val
            return self.value(node.values[-1])
        if isinstance(node, ast.IfExp):
            return self.value(node.body if self.truth(node.test) else node.orelse)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return not self.truth(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
            try:
                return _BIN[type(node.op)](self.value(node.left), self.value(node.right))
            except (TypeError, ZeroDivisionError):
                raise _Unknown from None
        raise _Unknown

    def decide_value(self, node: ast.AST) -> tuple | None:
        """(value, fields) of a local's decided value, else None."""
        if isinstance(node, (ast.Constant, ast.List, ast.Dict, ast.Set)):
            return None  # a literal is not a config switch; a list or dict bound once may still grow
        return self.tracked(self.value, node)

    def truth(self, node: ast.AST) -> bool:
        """bool(node): one known false operand decides an `and`, one known true an `or`, whatever the
        others are (its value, which names the deciding operand, may still be unknown)."""
        if isinstance(node, ast.BoolOp):
            stop, unknown = isinstance(node.op, ast.Or), False
            for v in node.values:
                try:
                    if self.truth(v) == stop:
                        return stop
                except _Unknown:
                    unknown = True
            if unknown:
                raise _Unknown
            return not stop
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return not self.truth(node.operand)
        return bool(self.value(node))

    def decide(self, test: ast.AST) -> bool | None:
        got = self.tracked(self.truth, test)
        if got is None:
            return None
        self.decided |= got[1]
        return got[0]

    def gone(self, test: ast.AST, taken: bool) -> ast.Call:
        # a marker for the arm not taken: passes read it (packconst, _drop_unreachable), _Inline removes it
        return ast.Call(ast.Name(_GONE, ast.Load()), [], [])

    def visit_ClassDef(self, node):
        outer, self.cls = self.cls, node.name if len(self.scope) == 1 and self.cls is None else ""
        self.generic_visit(node)
        self.cls = outer
        return node

    def visit_Call(self, node):
        self.generic_visit(node)
        if isinstance(node.func, ast.Name):
            plain = not any(isinstance(a, ast.Starred) for a in node.args) and all(k.arg for k in node.keywords)
            got = ([self.scalar(a) for a in node.args], {k.arg: self.scalar(k.value) for k in node.keywords})
            self.calls.setdefault(node.func.id, []).append(got if plain else None)
        return node

    def visit_FunctionDef(self, node):
        scope = {}
        args = node.args.posonlyargs + node.args.args
        if (self.cls in self.field_types or self.cls in self.attrs) and args and len(self.scope) == 1 and not any(
                isinstance(d, ast.Name) and d.id in ("staticmethod", "classmethod") for d in node.decorator_list):
            scope[args[0].arg] = f"class:{self.cls}"  # a method's self
        for a in args + node.args.kwonlyargs:
            kind = _ann_kind(a.annotation)
            if kind is None and isinstance(a.annotation, (ast.Name, ast.Constant)):
                name = a.annotation.id if isinstance(a.annotation, ast.Name) else a.annotation.value
                kind = f"class:{name}" if name in self.field_types else None
            if kind:
                scope[a.arg] = kind
        from collections import Counter
        stores = Counter(n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))
        init = len(self.scope) == 1 and self.cls and node.name == "__init__"
        if len(self.scope) == 1 and (init or self.cls is None):  # a parameter every call passes one value
            scope.update({p: v for p, v in self.args.get(self.cls if init else node.name, {}).items()
                          if not stores[p] and p not in scope})
        outer = self.once
        self.once = {n for n, c in stores.items() if c == 1} - {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
        self.scope.append(scope)
        self.generic_visit(node)
        if init and args:
            for s in straight_stores(node.body, args[0].arg, _is_gone):
                if (v := self.scalar(s.value)) is not MISS:
                    self.found.setdefault(self.cls, {})[s.targets[0].attr] = v
        self.scope.pop()
        self.once = outer
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Assign(self, node):
        self.generic_visit(node)
        if len(self.scope) == 1:
            return node
        pairs = [(node.targets[0], node.value)]
        if isinstance(node.targets[0], ast.Tuple) and isinstance(node.value, ast.Tuple) \
                and len(node.targets[0].elts) == len(node.value.elts):
            pairs = list(zip(node.targets[0].elts, node.value.elts))
        for tgt, val in pairs:
            if isinstance(tgt, ast.Name):
                kind = self.kind_of(val) if len(node.targets) == 1 else None
                const = self.decide_value(val) if len(node.targets) == 1 and tgt.id in self.once else None
                if kind:
                    self.scope[-1][tgt.id] = kind
                elif const is not None:
                    self.scope[-1][tgt.id] = const  # (value, fields): bound once in this function
                else:
                    self.scope[-1].pop(tgt.id, None)  # rebound to something else: no longer a config
        return node

    def visit_If(self, node):
        self.generic_visit(node)
        taken = self.decide(node.test)
        if taken is True and not _is_gone(node.orelse):  # an empty else too: skipping the body is another run's path
            node.orelse = [ast.Expr(self.gone(node.test, False))]
        elif taken is False and not _is_gone(node.body):
            node.body = [ast.Expr(self.gone(node.test, True))]
        return node

    def visit_IfExp(self, node):
        self.generic_visit(node)
        taken = self.decide(node.test)
        if taken is True:
            node.orelse = self.gone(node.test, False)
        elif taken is False:
            node.body = self.gone(node.test, True)
        return node


def _ends(body: list) -> bool:
    """True if running `body` never falls through to what follows it."""
    last = body[-1] if body else None
    return isinstance(last, (ast.Return, ast.Raise, ast.Continue, ast.Break)) or _is_gone([last] if last else []) \
        or isinstance(last, ast.If) and _ends(last.body) and _ends(last.orelse)


def _drop_unreachable(tree: ast.AST) -> None:
    """Statements after an `if` whose arms both end (a decided test: one arm returns, the other is
    `_gone`) never run: `if PACKED is not None: return ...` leaves the package path out."""
    for n in ast.walk(tree):
        for name in ("body", "orelse", "finalbody"):
            body = getattr(n, name, None)
            if isinstance(body, list):
                for i, stmt in enumerate(body):
                    if isinstance(stmt, ast.If) and _ends(stmt.body) and _ends(stmt.orelse):
                        del body[i + 1:]
                        break


def _gone_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == _GONE


def _is_gone(body: list) -> bool:
    return len(body) == 1 and isinstance(body[0], ast.Expr) and _gone_call(body[0].value)


class _Inline(ast.NodeTransformer):
    """A decided `if` becomes the arm it takes, a decided conditional expression that arm's value: the
    tests go with the arms (codebundle.check_packed refuses at start a config that would differ)."""

    def visit_If(self, node):
        self.generic_visit(node)
        return node.body if _is_gone(node.orelse) else node.orelse if _is_gone(node.body) else node

    def visit_IfExp(self, node):
        self.generic_visit(node)
        return node.body if _gone_call(node.orelse) else node.orelse if _gone_call(node.body) else node


def _inline(tree: ast.Module) -> None:
    _Inline().visit(tree)
    for n in ast.walk(tree):
        if not isinstance(n, ast.Module) and isinstance(getattr(n, "body", None), list) and not n.body:
            n.body.append(ast.Pass())


def decided_mask(fields: set[str]) -> int:
    """Bit i set: the i-th config field (codebundle.config_fields) is one a decision depends on."""
    from .codebundle import config_fields
    return sum(1 << i for i, key in enumerate(config_fields()) if key in fields)


def _write_decided(tree: ast.Module, mask: int) -> None:
    for stmt in tree.body:
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) else getattr(stmt, "target", None)
        if isinstance(target, ast.Name) and target.id == "_DECIDED":
            stmt.value = ast.Constant(mask)
            return
    raise AssertionError("codebundle.py has no `_DECIDED = 0` for the packer to fill in")


def _made(value: ast.AST, classes: set[str]) -> str | None:
    """The class `value` builds (`C(...)`, or `C(...) if t else None`), if it is one of `classes`."""
    if isinstance(value, ast.IfExp) and isinstance(value.orelse, ast.Constant) and value.orelse.value is None:
        value = value.body
    f = value.func if isinstance(value, ast.Call) else None
    return f.id if isinstance(f, ast.Name) and f.id in classes else None


def _init_fields(cls: ast.ClassDef, classes: set[str]) -> dict[str, str]:
    """`self.cfg = cfg` in `__init__`, cfg annotated with a config class: self.cfg has that type;
    `self.gate = Gate(...)` (or `... if t else None`), Gate a class of the shipped code: "class:Gate"."""
    init = init_of(cls)
    if init is None:
        return {}
    me, *rest = init.args.posonlyargs + init.args.args
    params = {a.arg: k for a in rest + init.args.kwonlyargs if (k := _ann_kind(a.annotation))}
    me = me.arg
    out = {}
    for s in init.body:
        if isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Attribute) \
                and isinstance(s.targets[0].value, ast.Name) and s.targets[0].value.id == me:
            if isinstance(s.value, ast.Name) and s.value.id in params:
                out[s.targets[0].attr] = params[s.value.id]
            elif made := _made(s.value, classes):
                out[s.targets[0].attr] = f"class:{made}"
    return out


def _field_types(trees: dict[str, ast.Module]) -> dict[str, dict[str, str]]:
    """Classes with fields of a config type: annotated (`ctx.cfg` where ctx is a RunContext), or set
    once from a config parameter in `__init__` and stored nowhere else (`self.cfg` of the GPT); and
    fields set once to an instance of a shipped class (`self.smear`: "class:SmearGate")."""
    out: dict[str, dict[str, str]] = {}
    stores: dict[str, int] = {}
    for tree in trees.values():
        for n in ast.walk(tree):
            if isinstance(n, ast.Attribute) and isinstance(n.ctx, (ast.Store, ast.Del)):
                stores[n.attr] = stores.get(n.attr, 0) + 1
    defs = [node for tree in trees.values() for node in tree.body if isinstance(node, ast.ClassDef)]
    names = [c.name for c in defs]
    classes = {n for n in names if names.count(n) == 1}
    inits = [(node, _init_fields(node, classes)) for node in defs]
    others = {a: stores.get(a, 0) - sum(a in f for _, f in inits) for _, f in inits for a in f}
    for node, init in inits:
        fields = {s.target.id: k for s in node.body if isinstance(s, ast.AnnAssign)
                  and isinstance(s.target, ast.Name) and (k := _ann_kind(s.annotation))}
        fields.update({a: k for a, k in init.items() if others[a] == 0})  # no other store of that attribute
        if fields:
            out[node.name] = fields
    return out


def _merge(trees: dict[str, ast.Module], live: set[str]) -> ast.Module | None:
    from .packmerge import merge
    return merge(trees, sorted(live - {""}), relative_froms)


def decide(trees: dict[str, ast.Module], config: dict, reads: dict) -> set[str]:
    """Run the pruner over every module until packconst finds no new constant; returns the config
    fields the decisions depend on. Decided arms are left as `_gone()` markers."""
    types = _field_types(trees)
    decided: set[str] = set()
    volatile = frozenset((c.args[0].attr, k.arg) for t in trees.values() for c in ast.walk(t)
                         if isinstance(c, ast.Call) and ast.unparse(c.func).split(".")[-1] == "replace" and c.args
                         and isinstance(c.args[0], ast.Attribute) and c.args[0].attr in SECTIONS for k in c.keywords)
    args: dict = {}
    attrs: dict = {}
    for _ in range(8):  # each pass may decide what makes another argument or attribute a constant
        calls: dict[str, list] = {}
        found: dict[str, dict] = {}
        for tree in trees.values():
            p = _Pruner(config, types, reads, args, attrs, volatile)
            p.visit(tree)
            decided |= p.decided
            for k, v in p.calls.items():
                calls.setdefault(k, []).extend(v)
            found.update(p.found)
        new_args, new_attrs = argument_constants(trees, calls), attribute_constants(trees, found)
        if (new_args, new_attrs) == (args, attrs):
            break
        args, attrs = new_args, new_attrs
    return decided


def ship_sources(sources: dict[str, str], config: dict, merge: bool = True) -> dict[str, str]:
    """The shipped files: one merged module (codebundle.py) when packmerge can merge them, else one
    minified file per reached module (`merge=False` always)."""
    key = sources_key(sources, f"merge={merge}")
    files = lookup_shipped(key, config)
    if files is None:
        reads: dict[str, str] = {}
        files = _ship(sources, config, merge, reads)
        store_shipped(key, reads, files)
    return files


def _ship(sources: dict[str, str], config: dict, merge: bool, reads: dict) -> dict[str, str]:
    import python_minifier

    from .packcuts import cut

    trees = {_modname(rel): ast.parse(src) for rel, src in sources.items() if rel not in _NOT_SHIPPED}
    rels = {_modname(rel): rel for rel in sources}
    decided = decide(trees, config, reads)
    for mod, tree in trees.items():
        _drop_unreachable(tree)
        _inline(tree)
        cut(tree, rels[mod])
    _write_decided(trees[ROOT[0]], decided_mask(decided))
    live = drop_dead(trees)
    ann = python_minifier.RemoveAnnotationsOptions(remove_variable_annotations=True, remove_return_annotations=True,
                                                   remove_argument_annotations=True,
                                                   remove_class_attribute_annotations=False)
    out = {}
    merged = _merge(trees, live) if merge else None
    if merged is not None:
        # the wrapper's entry point, and the errors a person reads in a traceback keep their names
        # (and _DECIDED, which codebundle.decided_fields reads back out of the file)
        keep = ["run_packed", "PackedPathError", "ConfigError", "RunFailure", "_DECIDED"]
        drop_dead({ROOT[0]: merged})  # one namespace now: a name no longer stands for another module's
        positional_only(merged, set(keep))
        text = cached_minify(ast.unparse(merged), f"merged {keep}", lambda code: python_minifier.minify(
            code, remove_annotations=ann, remove_literal_statements=True, rename_locals=True, rename_globals=True,
            preserve_globals=keep, hoist_literals=False, remove_asserts=True, remove_debug=False))
        return {rels[ROOT[0]]: text}  # pgolf/trainers without __init__.py: a namespace package
    for mod in sorted(live):
        keep_doc = "__doc__" in uses_of(trees[mod])  # e.g. argparse text read from the docstring
        out[rels[mod]] = cached_minify(ast.unparse(trees[mod]), f"doc={keep_doc}", lambda code: python_minifier.minify(
            code, remove_annotations=ann, remove_literal_statements=not keep_doc, rename_locals=True, rename_globals=False,
            hoist_literals=False, remove_asserts=True, remove_debug=False))
    return dict(sorted(out.items()))
