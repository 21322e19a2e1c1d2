"""Cuts the packer makes after deciding branches (see packer.py), each keeping a shipped run's numbers:

- Checks: the platform validated the config and the tokenizer before it packed them, so the calls that
  only re-check those (`cfg.validate(...)`, `check_tokenizer(...)`, ...) are left out; what they alone
  reached goes with them as dead code. The data checks stay: the shipped script reads whatever shards
  DATA_PATH names (manifest tokenizer hash, every shard's header and size).
- Messages: an error keeps its type and its formatted values, and its prose becomes `<file>:<line>` of
  the readable source (the full text is there). A failure still stops the run loudly. The same holds
  for the reason strings a probe returns instead of raising (`_REASONS`).
- `vars(x)` becomes `x.__dict__` (the same object): python-minifier renames nothing in a module that
  calls vars().
- Methods: a method nothing in the shipped code names (call, attribute or string) is left out, unless
  a base class from torch or Python may call it (forward, step, dunders...).

Runs where the package is installed; never shipped itself.
"""
from __future__ import annotations

import ast

# Calls that only check a config or tokenizer the platform already checked; their results are never used.
CHECKS = {"validate", "validate_model_config", "validate_quant_config", "validate_ttt_config", "check_avg_config",
          "check_tokenizer"}
_MESSAGE_CALLS = {"need"}  # need(ok, message)
_KEEP_MESSAGE = {"PackedPathError"}  # its text tells how to re-pack for the config that reached it
_REASONS = {"_try_flash"}  # returns a backend, or a str saying why it cannot run here


def _callee(call: ast.Call) -> str | None:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


class _Cutter(ast.NodeTransformer):
    def __init__(self, rel: str):
        self.rel, self.fn = rel, None

    def visit_FunctionDef(self, node):
        outer, self.fn = self.fn, node.name
        self.generic_visit(node)
        self.fn = outer
        return node

    def visit_Return(self, node):
        self.generic_visit(node)
        if self.fn in _REASONS and isinstance(node.value, (ast.Constant, ast.JoinedStr)):
            node.value = self.short(node.value, node.lineno)
        return node

    def visit_Expr(self, node):
        if isinstance(node.value, ast.Call) and _callee(node.value) in CHECKS:
            return ast.Pass()
        return self.generic_visit(node)

    def short(self, arg: ast.AST, line: int) -> ast.AST:
        where = f"{self.rel}:{line}"
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return ast.Constant(where)
        if isinstance(arg, ast.JoinedStr):
            vals = [v for v in arg.values if isinstance(v, ast.FormattedValue)]
            parts: list[ast.AST] = [ast.Constant(where)]
            for v in vals:
                parts += [ast.Constant(" "), v]
            return ast.JoinedStr(parts)
        if isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.Add):  # "a " + x: message concatenation
            return ast.BinOp(self.short(arg.left, line), ast.Add(), self.short(arg.right, line))
        return arg

    def visit_Raise(self, node):
        self.generic_visit(node)
        if isinstance(node.exc, ast.Call) and _callee(node.exc) not in _KEEP_MESSAGE:
            node.exc.args = [self.short(a, node.lineno) for a in node.exc.args]
        return node

    def visit_Call(self, node):
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id == "vars" and len(node.args) == 1 and not node.keywords:
            return ast.Attribute(node.args[0], "__dict__", ast.Load())  # vars() stops python-minifier renaming
        if _callee(node) in _MESSAGE_CALLS and len(node.args) == 2:
            node.args[1] = self.short(node.args[1], node.lineno)
        return node


def cut(tree: ast.Module, rel: str) -> None:
    _Cutter(rel).visit(tree)
    for n in ast.walk(tree):  # a body left empty by a dropped check
        for name in ("body", "orelse", "finalbody"):
            body = getattr(n, name, None)
            if isinstance(body, list) and body and all(isinstance(s, ast.stmt) for s in body):
                kept = [s for s in body if not isinstance(s, ast.Pass)]
                if len(kept) != len(body):
                    setattr(n, name, kept or ([ast.Pass()] if name == "body" else []))
    ast.fix_missing_locations(tree)


def _base_methods() -> set[str]:
    import torch
    out = set()
    for base in (object, BaseException, torch.nn.Linear, torch.optim.Optimizer):
        out |= set(dir(base))
    return out


def drop_unnamed_methods(trees: dict[str, ast.Module]) -> bool:
    """Leave out methods nothing names (see the module docstring); True if any went."""
    keep_always = _base_methods()
    methods = []
    for tree in trees.values():
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                for m in node.body:
                    if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)) and m.name not in keep_always \
                            and not m.name.startswith("__"):
                        methods.append((node, m))
    if not methods:
        return False
    from collections import Counter
    total = Counter()
    for tree in trees.values():
        for n in ast.walk(tree):
            if isinstance(n, ast.Name):
                total[n.id] += 1
            elif isinstance(n, ast.Attribute):
                total[n.attr] += 1
            elif isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.isidentifier():
                total[n.value] += 1
    changed = False
    for cls, m in methods:
        own = Counter(n.attr if isinstance(n, ast.Attribute) else n.id for n in ast.walk(m)
                      if isinstance(n, (ast.Attribute, ast.Name)))
        if total[m.name] - own[m.name] <= 0:
            cls.body.remove(m)
            changed = True
            if not cls.body:
                cls.body.append(ast.Pass())
    return changed
