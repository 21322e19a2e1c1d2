"""Experiment files: TOML with `extends`, typed sections, `[config.*]` overrides of the trainer's
dataclass config, variants, sweep axes and the significance baseline.

Every error names the file, the key and what was expected, before any trial starts.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from typing import Any

from pgolf.trainers.config import SECTIONS, ConfigError, TrainConfig, coerce, config_hash, parse_value, set_field


class ExperimentError(ConfigError):
    """The experiment file is wrong; the message says where and how to fix it."""


@dataclass(kw_only=True)
class ExperimentMeta:
    name: str = ""
    description: str = ""
    trainer: str = "gpt"
    seeds: list[int] = field(default_factory=lambda: [1337, 42, 2024])
    metric: str = "final/val_bpb"
    data: str = "custom"  # "demo": build/use the embedded demo corpus and point config.data at it


@dataclass(kw_only=True)
class Resources:
    gpus: int = 8  # per trial; all in the trial's first placement bundle
    cpus: int = 8


@dataclass(kw_only=True)
class Budget:
    train_seconds: float = 600.0
    eval_seconds: float = 600.0
    artifact_bytes: int = 16_000_000  # decimal, never 16 MiB
    trial_timeout_seconds: float = 0.0  # wall-clock deadline the trial enforces; 0 = derived from caps


@dataclass(kw_only=True)
class Baseline:
    config_hash: str = ""  # seeds of this hash in MLflow are the comparison arm
    experiment: str = ""  # MLflow experiment holding them (default: this experiment)
    record: float = 0.0  # a published single number to beat by the margin (unit below)
    per_seed: dict[str, float] = field(default_factory=dict)  # published per-seed scores
    unit: str = "nats"  # nats (val_loss) or bpb (val_bpb) for record/per_seed
    tokens_per_byte: float = 0.0  # to convert published BPB to nats; 0 = use the runs' own
    margin_nats: float = 0.005
    alpha: float = 0.01
    name: str = ""


@dataclass(kw_only=True)
class Sweep:
    search: str = "grid"  # grid | random | optuna
    num_samples: int = 1  # sampled configs (random/optuna); each repeated over every seed
    scheduler: str = "none"  # none | asha (exploration only; never used by validate)
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
    smoke: bool = False

    def variant_config(self, variant: str | None = None) -> TrainConfig:
        cfg = copy.deepcopy(self.config)
        if variant is not None:
            if variant not in self.variants:
                raise ExperimentError(f"{self.path}: no variant '{variant}' (have: {', '.join(self.variants)})")
            for key, value in self.variants[variant].items():
                set_field(cfg, key, value, source=f"{self.path} [variants.{variant}]")
        return cfg

    def variant_names(self) -> list[str]:
        return list(self.variants) or [self.meta.name]

    def resolved(self, variant: str | None = None, seed: int | None = None) -> TrainConfig:
        name = variant if variant in self.variants else None
        cfg = self.variant_config(name)
        if seed is not None:
            cfg.run.seed = seed
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
            raise ExperimentError(f"{src}: unknown key '{key}' in [{table}] (expected one of: {', '.join(hints)})")
        tp = hints[key]
        if typing.get_origin(tp) is dict:
            if not isinstance(value, dict):
                raise ExperimentError(f"{src}: [{table}] {key}: expected a table, got {value!r}")
            kwargs[key] = value
        else:
            kwargs[key] = coerce(value, tp, f"{src}: [{table}] {key}")
    return cls(**kwargs)


def load_experiment(path: str, *, overrides: list[str] | None = None, smoke: bool = False) -> Experiment:
    """Load, merge the `extends` chain, apply `--set` overrides, type-check everything."""
    merged, prov, lineage = _load_chain(path)
    src = os.path.abspath(path)
    for item in overrides or []:
        if "=" not in item:
            raise ExperimentError(f"--set {item!r}: expected KEY=VALUE, e.g. config.optim.matrix_lr=0.02")
        key, value = (s.strip() for s in item.split("=", 1))
        parts = key.split(".")
        node = merged
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ExperimentError(f"--set {key}: '{p}' is not a table")
        node[parts[-1]] = parse_value(value)
        prov[key] = "--set"

    tables = {name: _build_table(cls, merged.get(name, {}), name, prov, src) for name, cls in _TABLES.items()}
    meta: ExperimentMeta = tables["experiment"]
    from pgolf.safety import check_name, slug

    if not meta.name:
        meta.name = slug(os.path.splitext(os.path.basename(path))[0])
    check_name("[experiment] name", meta.name, prov.get("experiment.name", src))
    if not meta.seeds:
        raise ExperimentError(f"{prov.get('experiment.seeds', src)}: [experiment] seeds must list at least one seed")
    if meta.data not in ("custom", "demo"):
        raise ExperimentError(f"{prov.get('experiment.data', src)}: [experiment] data must be 'custom' or 'demo', got {meta.data!r}")
    if meta.trainer != "gpt":
        raise ExperimentError(f"{prov.get('experiment.trainer', src)}: unknown trainer {meta.trainer!r} (available: gpt)")

    cfg = TrainConfig()
    config_tables = merged.get("config", {})
    if not isinstance(config_tables, dict):
        raise ExperimentError(f"{src}: 'config' must be a table of [config.<section>] tables")
    for section, values in config_tables.items():
        if section not in SECTIONS:
            where = prov.get(f"config.{section}", src)
            raise ExperimentError(f"{where}: unknown section [config.{section}] (expected one of: {', '.join(SECTIONS)})")
        if not isinstance(values, dict):
            raise ExperimentError(f"{src}: [config.{section}] must be a table")
        for key, value in values.items():
            set_field(cfg, f"{section}.{key}", value, source=prov.get(f"config.{section}.{key}", src))

    variants = merged.get("variants", {})
    if not isinstance(variants, dict):
        raise ExperimentError(f"{src}: [variants] must hold [variants.<name>] tables")
    for vname, vals in variants.items():
        check_name("variant name", vname, f"{prov.get(f'variants.{vname}', src)} [variants.{vname}]")
        if not isinstance(vals, dict):
            raise ExperimentError(f"{src}: [variants.{vname}] must be a table of 'section.key = value'")
        flat = flatten(vals)
        probe = copy.deepcopy(cfg)
        for k, v in flat.items():
            set_field(probe, k, v, source=f"{prov.get(f'variants.{vname}', src)} [variants.{vname}]")
        variants[vname] = flat
    sweep: Sweep = tables["sweep"]
    for axis in sweep.axes:
        set_field(copy.deepcopy(cfg), axis, _axis_probe_value(cfg, axis, sweep.axes[axis]),
                  source=f"{prov.get('sweep.axes', src)} [sweep.axes]")

    b: Budget = tables["budget"]
    cfg.run.artifact_cap_bytes = b.artifact_bytes
    cfg.run.eval_cap_seconds = b.eval_seconds
    exp = Experiment(path=src, meta=meta, resources=tables["resources"], budget=b, baseline=tables["baseline"],
                     sweep=sweep, config=cfg, variants=variants, lineage=lineage, smoke=smoke)
    if smoke:
        from pgolf.smoke import apply_smoke
        apply_smoke(exp)
        # An explicit --set beats the smoke shrink: `--smoke --set config.schedule.iterations=5` means 5.
        for item in overrides or []:
            key, value = (t.strip() for t in item.split("=", 1))
            if key.startswith("config."):
                set_field(exp.config, key.removeprefix("config."), parse_value(value), source="--set")
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


def _axis_probe_value(cfg: TrainConfig, axis: str, spec: Any) -> Any:
    """A representative value of a sweep axis, used only to type-check the axis before any trial."""
    if isinstance(spec, list):
        if not spec:
            raise ExperimentError(f"[sweep.axes] {axis}: empty list")
        return spec[0]
    if isinstance(spec, dict):
        if "values" in spec:
            return spec["values"][0]
        if "low" in spec:
            return spec["low"]
    raise ExperimentError(f"[sweep.axes] {axis}: expected a list of values or a table "
                          f"{{type = 'uniform'|'loguniform'|'choice', low, high | values}}, got {spec!r}")


def apply_data_source(exp: Experiment, cfg: TrainConfig, data_root: str | None = None) -> TrainConfig:
    """Point the config at absolute data paths; for `data = "demo"` build the demo corpus if missing."""
    if exp.meta.data == "demo":
        from pgolf.datasets import default_data_dir, ensure_demo
        root = os.path.join(data_root or default_data_dir(), "demo")
        ensure_demo(root)
        cfg.data.data_path = os.path.join(root, "datasets", "fineweb10B_sp1024")
        cfg.data.tokenizer_path = os.path.join(root, "tokenizers", "fineweb_1024_bpe.model")
    else:
        cfg.data.data_path = os.path.abspath(cfg.data.data_path)
        cfg.data.tokenizer_path = os.path.abspath(cfg.data.tokenizer_path)
    return cfg


def flat_params(cfg: TrainConfig) -> dict[str, Any]:
    """`section.key -> value` for MLflow params and reports."""
    return {f"{s}.{k}": v for s, sec in dataclasses.asdict(cfg).items() for k, v in sec.items()}
