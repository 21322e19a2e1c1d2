"""Constants the packer carries between functions (packconst.py) and what its decisions depend on: a
decided branch becomes the arm it takes, so each case checks the code that is left and the config
fields codebundle.check_packed will compare at start."""
from __future__ import annotations

import ast
import textwrap

import pytest

from pgolf.trainers import codebundle
from pgolf.trainers.config import TrainConfig
from pgolf.trainers.packer import _drop_unreachable, _inline, decide, decided_mask

CONFIG = {"model": {"smear_gate": "v1", "rope_dims": 0, "model_dim": 64}, "run": {"seed": 7},
          "schedule": {"max_wallclock_seconds": 600.0}}

SRC = textwrap.dedent('''
    class Gate:
        def __init__(self, version, width):
            self.version = version
            self.width = width
        def forward(self, x):
            if self.version == "v1":
                return x + 1
            return x - 1
    def build(cfg: ModelConfig):
        dims = cfg.rope_dims or cfg.model_dim
        if dims == 64:
            return Gate(cfg.smear_gate, dims)
        return None
    def seeded(cfg: RunConfig):
        return 1 if cfg.seed == 7 else 2
    def cap(s: ScheduleConfig):
        return 1 if s.max_wallclock_seconds > 0 else 2
    def rebuilt(cfg: TrainConfig):
        return dataclasses.replace(cfg.schedule, max_wallclock_seconds=1.0)
''')


def _packed(src: str) -> tuple[str, set[str]]:
    trees = {"m": ast.parse(src)}
    fields = decide(trees, CONFIG, {})
    _drop_unreachable(trees["m"])
    _inline(trees["m"])
    return ast.unparse(trees["m"]), fields


def test_a_constructor_argument_and_its_attribute_decide_the_methods_branch():
    out, fields = _packed(SRC)
    assert "x - 1" not in out and "x + 1" in out and "self.version ==" not in out
    # `rope_dims or model_dim` is the operand Python returns (64), not True
    assert "dims == 64" not in out and "return None" not in out
    assert fields == {"model.smear_gate", "model.rope_dims", "model.model_dim"}


@pytest.mark.parametrize("extra", [
    "def probe(g):\n    return isinstance(g, Gate)\n",  # the class used as a value: unknown callers
    "def other():\n    return Gate('v2', 1)\n",  # a second call with another value
    "def patch(g):\n    g.version = 'v2'\n",  # a second store of the attribute
    "class Sub(Gate):\n    pass\n",  # a subclass may store it differently
])
def test_the_constant_is_not_carried_when_it_may_not_hold(extra):
    out, fields = _packed(SRC + extra)
    assert "x - 1" in out and "model.smear_gate" not in fields


def test_per_run_and_rebuilt_fields_are_never_decided():
    out, fields = _packed(SRC)
    assert "cfg.seed == 7" in out and "run.seed" not in fields  # seeds of one variant share one file
    assert "s.max_wallclock_seconds > 0" in out and "schedule.max_wallclock_seconds" not in fields


def test_check_packed_refuses_a_decided_field_and_lets_the_seed_change(monkeypatch):
    packed = TrainConfig()
    packed.ttt.mode = "score_first"
    monkeypatch.setattr(codebundle, "PACKED", {"config": packed.to_dict()})
    monkeypatch.setattr(codebundle, "_DECIDED", decided_mask({"ttt.mode"}))
    now = TrainConfig.from_dict(packed.to_dict())
    now.run.seed = 99
    now.optim.matrix_lr = 0.01  # read at run time, never decided
    codebundle.check_packed(now)
    now.ttt.mode = "off"
    with pytest.raises(codebundle.PackedPathError, match=r"ttt.mode = 'off', but this train_gpt.py was packed "
                                                        r"for 'score_first'.*--set ttt.mode=\"off\""):
        codebundle.check_packed(now)


BASE = textwrap.dedent('''
    class Base:
        def __init__(self):
            self.kind = "a"
        def f(self):
            if self.kind == "a":
                return 1
            return 2
''')


def test_an_attribute_a_subclass_may_set_otherwise_stays_a_test():
    sub = "class Sub(Base):\n    def __init__(self):\n        self.kind = 'b'\n"
    assert "return 2" in _packed(BASE + sub)[0]
    assert "return 2" not in _packed(BASE)[0]


def test_the_self_check_keeps_the_packed_value_of_a_decided_field():
    from pgolf.selfcheck import DEFAULT_SELF_CHECK_SETS, runnable_sets
    from pgolf.trainers.posttrain import embedded_config

    cfg = TrainConfig()  # warmup_steps = 20: `if warmup_steps > 0` was decided, so 0 is not in the file
    text, _ = codebundle.build_wrapper(embedded_config(cfg))
    payload = codebundle.payload_of(text)
    assert "schedule.warmup_steps" in codebundle.decided_fields(payload)
    sets, kept = runnable_sets(payload, DEFAULT_SELF_CHECK_SETS)
    assert "schedule.warmup_steps=20" in kept and "schedule.warmup_steps=0" not in sets
    assert "schedule.iterations=2" in sets and "schedule.max_wallclock_seconds=0" in sets  # not decided
    payload["code_version"] = "other"  # packed by other trainer code: its field list is not known here
    assert codebundle.decided_fields(payload) is None
    assert runnable_sets(payload, DEFAULT_SELF_CHECK_SETS) == (list(DEFAULT_SELF_CHECK_SETS), [])


def test_an_attribute_stored_by_name_stays_a_test_but_one_only_read_by_name_does_not():
    src = BASE
    assert "return 2" in _packed(src + "def poke(o):\n    setattr(o, 'kind', 'b')\n")[0]
    assert "return 2" not in _packed(src + "def peek(o):\n    return getattr(o, 'kind')\n")[0]
