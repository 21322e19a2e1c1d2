"""Experiment files: TOML with `extends`, typed sections, `[config.*]` overrides of the trainer's
dataclass config, variants, sweep axes and the significance baseline.

Every error names the file, the key and what was expected, before any trial starts.
"""
from __future__ import annotations

import copy
import os
import tomllib
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from pgolf.trainers.config import (SECTIONS, ConfigError, TrainConfig, closest, coerce, config_hash,
                                   finite, parse_set, set_field)
from pgolf.trainers.contract import SCORE_METRICS


class ExperimentError(ConfigError):
    """The experiment file is wrong; the message says where and how to fix it."""


@dataclass(kw_only=True)
class ExperimentMeta:
    def validate(self, where: str) -> None:
        if not self.seeds:
            raise ExperimentError(f"{where}: [experiment] seeds must list at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ExperimentError(f"{where}: [experiment] seeds {self.seeds}: each seed may appear once")

    name: str = ""
    description: str = ""
    trainer: Literal["gpt"] = "gpt"
    seeds: list[int] = field(default_factory=lambda: [1337, 42, 2024])
    metric: Literal[SCORE_METRICS] = "final/val_bpb"  # what sweeps rank by and Optuna minimizes
    data: Literal["custom", "demo"] = "custom"  # "demo": build/use the embedded demo corpus and point config.data at it


@dataclass(kw_only=True)
class Resources:
    def validate(self, where: str) -> None:
        if self.gpus < 0 or self.cpus < 0:
            raise ExperimentError(f"{where}: [resources] gpus and cpus must be >= 0, got gpus={self.gpus} cpus={self.cpus}")

    gpus: int = 8  # per trial; all in the trial's first placement bundle
    cpus: int = 8
    gpu_hour_usd: float = 0.0  # price per GPU-hour for cost reports and --max-usd; 0 = not set
    cpu_hour_usd: float = 0.0  # price per CPU-hour (CPU-only trials); 0 = not set


@dataclass(kw_only=True)
class Budget:
    def validate(self, where: str) -> None:
        for key in ("train_seconds", "eval_seconds", "artifact_bytes"):
            if not getattr(self, key) > 0:
                raise ExperimentError(f"{where}: [budget] {key} must be > 0, got {getattr(self, key)}")
        if self.trial_timeout_seconds < 0:
            raise ExperimentError(f"{where}: [budget] trial_timeout_seconds must be >= 0 (0 = derived from the caps)")

    train_seconds: float = 600.0
    eval_seconds: float = 600.0
    artifact_bytes: int = 16_000_000  # decimal, never 16 MiB
    trial_timeout_seconds: float = 0.0  # wall-clock deadline the trial enforces; 0 = derived from caps


@dataclass(kw_only=True)
class Baseline:
    def validate(self, where: str) -> None:
        """Values the significance test could not use, reported before any trial runs."""
        for seed, value in self.per_seed.items():
            try:
                int(seed)
            except ValueError:
                raise ExperimentError(f"{where}: [baseline.per_seed] key {seed!r} is not a seed number "
                                      f"(write e.g. per_seed = {{1337 = 1.1228, 42 = 1.1236}})") from None
            if finite(value) is None:
                raise ExperimentError(f"{where}: [baseline.per_seed] {seed} = {value!r}; expected a number")
        if sum(bool(x) for x in (self.config_hash, self.per_seed, self.record)) > 1:
            raise ExperimentError(f"{where}: [baseline] sets more than one of config_hash, per_seed, record; keep one")
        if self.tokens_per_byte < 0:
            raise ExperimentError(f"{where}: [baseline] tokens_per_byte must be > 0 (or 0 to use the runs' own)")
        if not 0 < self.alpha < 1 or self.margin_nats < 0:
            raise ExperimentError(f"{where}: [baseline] alpha must be in (0, 1) and margin_nats >= 0")

    config_hash: str = ""  # seeds of this hash in MLflow are the comparison arm
    experiment: str = ""  # MLflow experiment holding them (default: this experiment)
    record: float = 0.0  # a published single number to beat by the margin (unit below)
    per_seed: dict[str, float] = field(default_factory=dict)  # published per-seed scores
    unit: Literal["nats", "bpb"] = "nats"  # nats (val_loss) or bpb (val_bpb) for record/per_seed
    tokens_per_byte: float = 0.0  # to convert published BPB to nats; 0 = use the runs' own
    margin_nats: float = 0.005
    alpha: float = 0.01
    name: str = ""


@dataclass(kw_only=True)
class Sweep:
    def validate(self, where: str) -> None:
        if self.num_samples < 1:
            raise ExperimentError(f"{where}: [sweep] num_samples must be >= 1, got {self.num_samples}")
        if self.max_concurrent_trials < 0:
            raise ExperimentError(f"{where}: [sweep] max_concurrent_trials must be >= 0 (0 = from the cluster)")

    search: Literal["grid", "random", "optuna"] = "grid"
    num_samples: int = 1  # sampled configs (random/optuna); each repeated over every seed
    scheduler: Literal["none", "asha"] = "none"  # exploration only; never used by validate
    max_concurrent_trials: int = 0  # 0 = floor(cluster GPUs / gpus per trial), at least 1
    axes: dict[str, Any] = field(default_factory=dict)  # "section.key" -> list | {type, low, high}
    seed: int = 0  # searcher seed


_TABLES = {"experiment": ExperimentMeta, "resources": Resources, "budget": Budget, "baseline": Baseline, "sweep": Sweep}
_TOP_KEYS = {"extends", "config", "variants", *_TABLES}


@dataclass
class Experiment:
    path: str
    meta: ExperimentMeta
    resources: Resources
    budget: Budget
    baseline: Baseline
    sweep: Sweep
    config: TrainConfig
    variants: dict[str, dict[str, Any]]  # variant name -> {"section.key": value}
    lineage: list[str]  # files from the root ancestor to this file

    def variant_names(self) -> list[str]:
        return list(self.variants) or [self.meta.name]

    def resolved(self, variant: str | None = None, seed: int | None = None,
                 point: dict[str, Any] | None = None) -> TrainConfig:
        """The config of one variant (None, or the experiment's name in a file without variants: the
        base), one sweep point and one seed, checked like the file itself. Unknown variants are errors."""
        cfg = copy.deepcopy(self.config)
        if variant is not None and variant in self.variants:
            for key, value in self.variants[variant].items():
                set_field(cfg, key, value, source=f"{self.path} [variants.{variant}]")
        elif variant is not None and (self.variants or variant != self.meta.name):
            raise ExperimentError(f"{self.path}: no variant '{variant}' (have: {', '.join(self.variant_names())})"
                                  f"{closest(variant, self.variant_names())}")
        for key, value in (point or {}).items():
            set_field(cfg, key, value, source=f"{self.path} [sweep.axes]")
        if seed is not None:
            cfg.run.seed = seed
        where = f"{self.path}" + (f" [variants.{variant}]" if variant in self.variants else "")
        check_caps(cfg, self.budget, where)
        try:
            cfg.validate(world_size=max(self.resources.gpus, 1))
        except ConfigError as exc:
            raise ExperimentError(f"{where}: {exc}") from None
        return cfg

    def hash_of(self, cfg: TrainConfig) -> str:
        from pgolf.trainers.codebundle import code_version
        return config_hash(cfg, code_version())


def _read_toml(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ExperimentError(f"experiment file not found: {path}") from None
    except IsADirectoryError:
        raise ExperimentError(f"{path} is a directory, not an experiment file; pass a .toml file") from None
    except PermissionError:
        raise ExperimentError(f"{path}: permission denied; make the experiment file readable") from None
    except UnicodeDecodeError as exc:
        raise ExperimentError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                              "TOML files must be UTF-8: re-save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ExperimentError(f"{path}: invalid TOML: {exc}") from None


def _merge(base: dict, over: dict, prov: dict, src: str, prefix: str = "") -> dict:
    """Deep-merge `over` into a copy of `base`, recording which file set each leaf key."""
    out = dict(base)
    for key, value in over.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("axes", "per_seed"):
            out[key] = _merge(out[key], value, prov, src, dotted + ".")
        else:
            out[key] = copy.deepcopy(value)
            for k in [k for k in prov if k.startswith(dotted + ".")]:
                del prov[k]
            _record(prov, value, src, dotted)
    return out


def _record(prov: dict, value: Any, src: str, dotted: str) -> None:
    prov[dotted] = src
    if isinstance(value, dict):
        for k, v in value.items():
            _record(prov, v, src, f"{dotted}.{k}")


def _load_chain(path: str, seen: tuple[str, ...] = ()) -> tuple[dict, dict, list[str]]:
    path = os.path.abspath(path)
    if path in seen:
        raise ExperimentError(f"{path}: 'extends' cycle: {' -> '.join(seen + (path,))}")
    raw = _read_toml(path)
    parent = raw.pop("extends", None)
    if parent is None:
        merged, prov, lineage = {}, {}, []
    else:
        if not isinstance(parent, str):
            raise ExperimentError(f"{path}: 'extends' must be a file name string, got {parent!r}")
        ppath = parent if os.path.isabs(parent) else os.path.join(os.path.dirname(path), parent)
        if not os.path.exists(ppath):
            raise ExperimentError(f"{path}: extends '{parent}', but {ppath} does not exist")
        merged, prov, lineage = _load_chain(ppath, seen + (path,))
    for key in raw:
        if key not in _TOP_KEYS:
            raise ExperimentError(f"{path}: unknown top-level key '{key}' (expected one of: {', '.join(sorted(_TOP_KEYS))})")
    return _merge(merged, raw, prov, path), prov, lineage + [path]


def _build_table(cls: type, values: Any, table: str, prov: dict, default_src: str):
    if not isinstance(values, dict):
        raise ExperimentError(f"{default_src}: [{table}] must be a table")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        src = prov.get(f"{table}.{key}", default_src)
        if key not in hints:
            raise ExperimentError(f"{src}: unknown key '{key}' in [{table}] (expected one of: {', '.join(hints)})"
                                  f"{closest(key, hints)}")
        tp = hints[key]
        if typing.get_origin(tp) is dict:
            if not isinstance(value, dict):
                raise ExperimentError(f"{src}: [{table}] {key}: expected a table, got {value!r}")
            kwargs[key] = value
        else:
            kwargs[key] = coerce(value, tp, f"{src}: [{table}] {key}")
    return cls(**kwargs)


# Caps: [budget] is the one source. The trainer's copies are derived from it; a file that also sets one
# must agree (the wall-clock loop cap may be tighter, or 0 for a step-based run).
CAP_FIELDS = {"run.artifact_cap_bytes": "artifact_bytes", "run.eval_cap_seconds": "eval_seconds"}


def check_caps(cfg: TrainConfig, budget: "Budget", where: str) -> None:
    for dotted, key in CAP_FIELDS.items():
        section, name = dotted.split(".")
        if getattr(getattr(cfg, section), name) != getattr(budget, key):
            raise ExperimentError(f"{where}: config.{dotted} = {getattr(getattr(cfg, section), name)} conflicts with "
                                  f"[budget] {key} = {getattr(budget, key)}; set the cap only in [budget]")
    wall = cfg.schedule.max_wallclock_seconds
    if wall > budget.train_seconds:
        raise ExperimentError(f"{where}: config.schedule.max_wallclock_seconds = {wall} is over [budget] "
                              f"train_seconds = {budget.train_seconds}; leave it unset (it follows [budget]), "
                              f"lower it, or 0 for a step-based run")


def _normalize_set(item: str) -> tuple[str, Any]:
    """`--set` KEY=VALUE with KEY one of `config.<section>.<key>`, `<section>.<key>` (a trainer
    section, as train_gpt.py takes it) or `<table>.<key>` ([experiment], [budget], ...)."""
    try:
        key, value = parse_set(item)
    except ConfigError as exc:
        raise ExperimentError(str(exc)) from None
    head = key.split(".")[0]
    if head in SECTIONS:
        key = f"config.{key}"
    elif head not in _TOP_KEYS - {"extends"}:
        options = sorted((_TOP_KEYS - {"extends"}) | set(SECTIONS))
        raise ExperimentError(f"--set {item!r}: unknown table '{head}' (expected one of: {', '.join(options)})"
                              f"{closest(head, options)}")
    if key.split(".")[0] in ("config", "variants") and key.count(".") < 2:
        raise ExperimentError(f"--set {item!r}: expected {head}.<section>.<key>=VALUE")
    return key, value


def load_experiment(path: str, *, overrides: list[str] | None = None, smoke: bool = False) -> Experiment:
    """Load, merge the `extends` chain, apply `--set` overrides, type-check and validate everything:
    every variant's resolved config is checked here, before anything starts."""
    merged, prov, lineage = _load_chain(path)
    src = os.path.abspath(path)
    sets = [_normalize_set(item) for item in overrides or []]
    for key, value in sets:
        parts = key.split(".")
        node = merged
        for i, p in enumerate(parts[:-1]):
            if p not in node:  # a table only --set names: an error about it must point at --set
                prov[".".join(parts[:i + 1])] = "--set"
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ExperimentError(f"--set {key}: '{p}' is not a table")
        node[parts[-1]] = value
        prov[key] = "--set"

    tables = {name: _build_table(cls, merged.get(name, {}), name, prov, src) for name, cls in _TABLES.items()}
    for name, table in tables.items():
        by_set = [k for k, _ in sets if k.startswith(name + ".")]
        table.validate(prov.get(name, src) + (f" (with --set {', '.join(by_set)})" if by_set else ""))
    meta: ExperimentMeta = tables["experiment"]
    from pgolf.safety import check_name, slug

    if not meta.name:
        meta.name = slug(os.path.splitext(os.path.basename(path))[0])
    check_name("[experiment] name", meta.name, prov.get("experiment.name", src))

    cfg = TrainConfig()
    config_tables = merged.get("config", {})
    if not isinstance(config_tables, dict):
        raise ExperimentError(f"{src}: 'config' must be a table of [config.<section>] tables")
    for section, values in config_tables.items():
        if section not in SECTIONS:
            where = prov.get(f"config.{section}", src)
            raise ExperimentError(f"{where}: unknown section [config.{section}] (expected one of: {', '.join(SECTIONS)})"
                                  f"{closest(section, SECTIONS)}")
        if not isinstance(values, dict):
            raise ExperimentError(f"{src}: [config.{section}] must be a table")
        for key, value in values.items():
            set_field(cfg, f"{section}.{key}", value, source=prov.get(f"config.{section}.{key}", src))

    b: Budget = tables["budget"]
    for dotted, key in CAP_FIELDS.items():
        if f"config.{dotted}" not in prov:
            set_field(cfg, dotted, getattr(b, key))
    if "config.schedule.max_wallclock_seconds" not in prov:
        cfg.schedule.max_wallclock_seconds = float(b.train_seconds)
    check_caps(cfg, b, src)

    variants = merged.get("variants", {})
    if not isinstance(variants, dict):
        raise ExperimentError(f"{src}: [variants] must hold [variants.<name>] tables")
    for vname, vals in variants.items():
        check_name("variant name", vname, f"{prov.get(f'variants.{vname}', src)} [variants.{vname}]")
        if not isinstance(vals, dict):
            raise ExperimentError(f"{src}: [variants.{vname}] must be a table of 'section.key = value'")
        variants[vname] = flatten(vals)
    exp = Experiment(path=src, meta=meta, resources=tables["resources"], budget=b, baseline=tables["baseline"],
                     sweep=tables["sweep"], config=cfg, variants=variants, lineage=lineage)
    if smoke:
        from pgolf.smoke import apply_smoke
        apply_smoke(exp)
        # An explicit --set beats the smoke shrink: `--smoke --set config.schedule.iterations=5` means 5.
        for key, value in sets:
            if key.startswith("config."):
                set_field(exp.config, key.removeprefix("config."), value, source="--set")
    for vname in exp.variant_names():
        exp.resolved(vname)
    return exp


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested tables -> {"a.b.c": value}."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def apply_data_source(exp: Experiment, cfg: TrainConfig, data_root: str | None = None) -> TrainConfig:
    """Point the config at absolute data paths; for `data = "demo"` build the demo corpus if missing."""
    if exp.meta.data == "demo":
        # The demo of the config's data.variant (its vocab = model.vocab_size, validated), so a stack's
        # embedding and tokenization (CaseOps included) are exercised whole.
        from pgolf.datasets import DataError, default_data_dir, demo_dir_name, demo_layout, ensure_demo
        variant = cfg.data.variant
        try:
            root = os.path.join(data_root or default_data_dir(), demo_dir_name(variant=variant))
        except DataError as exc:
            raise ExperimentError(f"{exp.path}: [experiment] data = 'demo' with config.data.variant = {variant!r}: {exc}") from None
        ensure_demo(root, variant=variant)
        dataset, tok_file = demo_layout(variant=variant)
        cfg.data.data_path = os.path.join(root, "datasets", dataset)
        cfg.data.tokenizer_path = os.path.join(root, tok_file)
    else:
        cfg.data.data_path = os.path.abspath(cfg.data.data_path)
        cfg.data.tokenizer_path = os.path.abspath(cfg.data.tokenizer_path)
    return cfg
