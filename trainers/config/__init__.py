"""Typed trainer configuration: one dataclass per section, composed into TrainConfig.

Defaults equal the official baseline (openai/parameter-golf root train_gpt.py). Every technique added
on top is a field that is off by default. Sections map 1:1 onto `[config.<section>]` tables of an
experiment file and onto the `resolved_config.json` the trainer reads.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from ._base import ConfigError, closest, finite, need
from .avg import AvgConfig
from .data import VARIANTS, DataConfig
from .eval import EvalConfig
from .faults import FaultConfig
from .model import ModelConfig
from .optim import OptimConfig
from .quant import QuantConfig
from .run import RunConfig
from .schedule import ScheduleConfig
from .ttt import TTTConfig

__all__ = [
    "ConfigError", "TrainConfig", "ModelConfig", "OptimConfig", "ScheduleConfig", "DataConfig",
    "EvalConfig", "QuantConfig", "TTTConfig", "RunConfig", "FaultConfig", "AvgConfig", "SECTIONS", "config_hash", "parse_value", "parse_set", "set_field",
    "finite", "closest",
]


@dataclass(kw_only=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    avg: AvgConfig = field(default_factory=AvgConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    ttt: TTTConfig = field(default_factory=TTTConfig)
    run: RunConfig = field(default_factory=RunConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)

    def validate(self, world_size: int = 1) -> None:
        """Every check types alone cannot express, each section's own and those across sections; run
        once where a config is built (the platform before any trial, the trainer before any step)."""
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()
        d, seq = self.data, self.data.train_seq_len
        want = VARIANTS.get(d.variant, (self.model.vocab_size,))[0]
        need(self.model.vocab_size == want,
             f"model.vocab_size = {self.model.vocab_size} conflicts with data.variant = {d.variant!r} ({want} "
             f"pieces); set model.vocab_size = {want} or a data.variant of that size "
             f"({', '.join(n for n, v in VARIANTS.items() if v[0] == self.model.vocab_size) or 'custom'})")
        accum = d.grad_accum(world_size)
        need(d.train_batch_tokens % (world_size * accum * seq) == 0,
             f"data.train_batch_tokens={d.train_batch_tokens} must be a multiple of "
             f"world_size*grad_accum*train_seq_len = {world_size}*{accum}*{seq}")
        need(self.eval.sliding_stride <= seq,
             f"eval.sliding_stride = {self.eval.sliding_stride}: expected 0 (off) or 1..train_seq_len ({seq})")
        need(self.ttt.mode != "score_first" or self.ttt.chunk_tokens >= seq,
             f"ttt.chunk_tokens = {self.ttt.chunk_tokens} is shorter than one training sequence "
             f"(data.train_seq_len = {seq}): no chunk could be trained on")
        self.loop_wallclock_seconds()

    def loop_wallclock_seconds(self) -> float:
        """The training loop's cap: the wall-clock cap minus the GPTQ calibration reserve, so that
        calibration on training data ends inside the training budget."""
        wall = self.schedule.max_wallclock_seconds
        if not (self.quant.gptq and wall > 0):
            return wall
        need(self.quant.gptq_reserve_seconds < wall,
             f"quant.gptq_reserve_seconds = {self.quant.gptq_reserve_seconds} leaves no training time under "
             f"schedule.max_wallclock_seconds = {wall}")
        return wall - self.quant.gptq_reserve_seconds

    def to_dict(self) -> dict[str, dict[str, Any]]:
        for f in dataclasses.fields(self):
            sec = getattr(self, f.name)
            extra = set(vars(sec)) - {x.name for x in dataclasses.fields(sec)}
            if extra:  # e.g. a config pickled by a driver whose trainer has fields this one lacks
                raise ConfigError(f"config.{f.name} has attributes that are no fields of this trainer: "
                                  f"{', '.join(sorted(extra))} (driver and trainer versions differ?)")
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config") -> "TrainConfig":
        """Build from nested dicts; unknown sections/keys and wrong types raise ConfigError."""
        cfg = cls()
        for section, values in raw.items():
            if section not in SECTIONS:
                raise ConfigError(f"{source}: unknown config section '{section}' "
                                  f"(expected one of {', '.join(SECTIONS)}){closest(section, SECTIONS)}")
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: config.{section} must be a table, got {type(values).__name__}")
            for key, value in values.items():
                set_field(cfg, f"{section}.{key}", value, source=source)
        return cfg

    @classmethod
    def from_json(cls, path: str) -> "TrainConfig":
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh), source=path)

    def write_json(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2, sort_keys=True)
            fh.write("\n")


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(TrainConfig)}  # type: ignore[misc]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotated field type; ints widen to float, nothing else converts."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            if arm is type(None):
                if value is None:
                    return None
                continue
            try:
                return coerce(value, arm, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list of {_type_name(item_tp)}, got {value!r}")
        items = [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if tp is Any:
        return value
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) is type(choices[0]):
            return value
        raise ConfigError(f"{where} = {value!r}: expected one of {', '.join(map(repr, choices))}"
                          f"{closest(str(value), map(str, choices))}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if finite(value) is not None:
            return float(value)
        if isinstance(value, float):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise ConfigError(f"{where}: unsupported field type {tp!r}")
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def field_types(section_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(section_cls)


def set_field(cfg: TrainConfig, dotted: str, value: Any, *, source: str = "config") -> None:
    """Set `section.key` on cfg with type checking; errors name the source and the key."""
    if dotted.count(".") != 1:
        raise ConfigError(f"{source}: '{dotted}' is not of the form section.key")
    section, key = dotted.split(".")
    if section not in SECTIONS:
        raise ConfigError(f"{source}: unknown config section '{section}' "
                          f"(expected one of {', '.join(SECTIONS)}){closest(section, SECTIONS)}")
    obj = getattr(cfg, section)
    hints = field_types(type(obj))
    if key not in hints:
        raise ConfigError(f"{source}: unknown key config.{section}.{key}{closest(key, hints)}")
    setattr(obj, key, coerce(value, hints[key], f"{source}: config.{section}.{key}"))


# Fields that identify a run or a machine rather than a variant: seeds of one variant share everything
# else. Data *locations* are excluded (the same shards live at different paths on a laptop and on a
# cluster node); the data *content* is pinned by the data fingerprint recorded with every run.
PER_RUN_FIELDS = {("run", "seed"), ("run", "run_dir"), ("run", "threads"),
                  ("data", "data_path"), ("data", "tokenizer_path")}


def config_hash(cfg: TrainConfig, code_version: str = "") -> str:
    """Stable 12-hex-digit hash of the resolved config (minus seed/run dir) and the trainer code."""
    flat = {f"{s}.{k}": v for s, sec in cfg.to_dict().items() for k, v in sec.items()
            if (s, k) not in PER_RUN_FIELDS}
    blob = json.dumps({"config": flat, "code": code_version}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


_NON_FINITE = {"nan": math.nan, "+nan": math.nan, "-nan": math.nan, "inf": math.inf, "+inf": math.inf,
               "-inf": -math.inf}


def parse_value(text: str):
    """`--set` values are TOML/JSON literals where they parse (numbers, bools, lists), else strings.
    TOML's nan/inf parse as floats, so that the type check can refuse them by name."""
    low = text.strip()
    if low in ("true", "false"):
        return low == "true"
    if low in _NON_FINITE:
        return _NON_FINITE[low]
    try:
        return json.loads(low)
    except ValueError:
        return text


def parse_set(item: str) -> tuple[str, Any]:
    """One `--set KEY=VALUE` -> (KEY, parsed value); the only --set parser (trainer and platform)."""
    key, eq, value = item.partition("=")
    key = key.strip()
    if not eq or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.matrix_lr=0.02")
    return key, parse_value(value)
