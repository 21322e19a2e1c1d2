"""experiments/stacks/: every file loads along its lineage with the exact parameter counts of the
records, and every stack trains in smoke mode (CPU, demo data) with finite, decreasing loss."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from pgolf import smoke
from pgolf.experiment import load_experiment
from pgolf.trainers.model import GPT, count_parameters

STACKS = os.path.join(os.path.dirname(__file__), "..", "experiments", "stacks")

# file -> (parent, parameter count). Counts marked "record" are the ones the records log; the others
# follow from the same shapes (see docs/stacks.md).
EXPECTED = {
    "baseline": (None, 17_059_912),  # record
    "pr162": ("baseline", 22_368_841),
    "pr180": ("pr162", 25_517_137),  # record
    "pr264": ("pr180", 26_666_073),  # README: 26.67 M
    "pr366": ("pr180", 25_517_138),  # #180 + backout lambda
    "pr198": ("pr162", 26_829_913),
    "pr287": ("pr198", 26_829_913),  # record
    "pr317": ("pr287", 26_829_913),  # record
    "pr315": ("pr287", 26_829_913),
    "pr414": ("pr315", 26_993_756),  # record
    "pr549": ("pr414", 26_928_220),
    "pr691": ("pr414", 26_993_756),  # record
    "pr414_lateqat": ("pr414", 26_993_756),  # #414 with its late QAT actually on
    "pr1019": ("pr549", 27_067_484),  # record (model_params log line)
    "pr1218": ("pr549", 34_401_371),  # record (model_params log line)
    "pr1394": ("pr1218", 35_943_512),  # record (model_params log line)
    "pr1493": ("pr1394", 35_944_536),  # record (model_params log line)
    "pr1530": ("pr1493", 35_944_602),  # record (model_params log line)
    "pr1626": ("pr1530", 35_944_602),  # record (model_params log line)
    "pr1729": ("pr1626", 35_944_602),  # record (model_params log line)
    "pr1736": ("pr1729", 35_989_658),  # record (model_params log line)
    "pr1787": ("pr1736", 35_945_658),  # record (model_params log line)
    "pr1855": ("pr1787", 35_945_671),  # record (model_params log line)
}
# Lineage steps between the stacks that have smoke runs: every technique they use is already smoke-run
# by a neighbour (pr1218/pr1019 by pr549/pr1394, pr1530..pr1787 by pr1855; the dense gate is the sparse
# gate's code path at window = model_dim, test_frontier_top; the WD taper: test_optim), so they get the
# load/count/validate tests only (suite budget).
LINEAGE_ONLY = {"pr1019", "pr1218", "pr1530", "pr1626", "pr1729", "pr1736", "pr1787"}


def _path(name: str) -> str:
    return os.path.abspath(os.path.join(STACKS, f"{name}.toml"))


def test_stack_files_are_exactly_the_expected_set():
    assert sorted(f[:-5] for f in os.listdir(STACKS) if f.endswith(".toml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_stack_loads_resolves_and_counts(name):
    parent, count = EXPECTED[name]
    exp = load_experiment(_path(name))
    assert exp.meta.name == name and exp.resources.gpus == 8
    assert exp.budget.train_seconds == 600 and exp.budget.artifact_bytes == 16_000_000
    if parent is not None:
        assert exp.lineage[-2] == _path(parent)
    cfg = exp.resolved(None, exp.meta.seeds[0])
    with torch.device("meta"):
        assert count_parameters(GPT(cfg.model)) == count
    if name in LINEAGE_ONLY:  # no smoke run of its own: its shrunk config must still validate
        small = load_experiment(_path(name), smoke=True)
        assert small.resolved(None, 1).model.num_layers == smoke.smoke_layers(cfg.model.num_layers)
    with open(_path(name), encoding="utf-8") as fh:
        lines = [ln.strip() for ln in fh if ln.strip().startswith("[")]
    order = ["[experiment]", "[resources]", "[budget]", "[config.model]", "[config.optim]", "[config.schedule]",
             "[config.data]", "[config.avg]"]
    mine = [ln for ln in lines if ln in order]
    assert mine == sorted(mine, key=order.index), f"{name}: tables out of order"


def test_stack_hyperparameters_follow_the_records():
    cfg = {n: load_experiment(_path(n)).config for n in ("pr162", "pr180", "pr264", "pr287", "pr366", "pr414", "pr691")}
    assert cfg["pr162"].avg.swa_apply and cfg["pr162"].avg.swa_every == 50 and cfg["pr162"].optim.muon_wd == 0.04
    assert cfg["pr180"].avg.prune_frac == 0.03 and cfg["pr180"].avg.swa_start_frac == 0.4
    assert cfg["pr264"].model.bigram_dim == 64 and cfg["pr264"].avg.prune_frac == 0.0
    assert cfg["pr287"].avg.ema_decay == 0.997 and cfg["pr287"].model.xsa_last_n == 4
    assert cfg["pr287"].model.rope_ntk_ref_len == 1024 and cfg["pr287"].data.train_seq_len == 2048
    assert cfg["pr366"].model.backout and cfg["pr366"].avg.ema_start_step == 50 and cfg["pr366"].avg.swa_every == 0
    for n in ("pr414", "pr691"):
        a = cfg[n].avg
        # the records' late QAT was constant-folded by torch.compile (docs/stacks.md, "Fidelity")
        assert (a.swa_every, a.swa_start_frac, a.swa_apply, a.late_qat_threshold) == (50, 0.2, False, 0.0)
        assert cfg[n].model.ve_layers == [9, 10] and cfg[n].model.rope_dims == 16 and cfg[n].model.ln_scale
        assert cfg[n].schedule.warmdown_iters == 3500
    assert load_experiment(_path("pr414_lateqat")).config.avg.late_qat_threshold == 0.15
    assert cfg["pr691"].ttt.fake_quant and not cfg["pr414"].ttt.fake_quant
    # issue #18: per-record scale floors, control storage and SWA sums
    for n in ("pr162", "pr180", "pr264", "pr366"):
        q = cfg[n].quant
        assert q.scale_floor_int6 == 2.0**-14 and q.scale_floor_int8 is None and q.control_size_first
    assert cfg["pr264"].quant.scale_floor_int5 == 2.0**-14 and cfg["pr162"].quant.scale_floor_int5 is None
    for n in ("pr287", "pr414", "pr691"):
        assert cfg[n].quant.scale_floor_int6 == -1.0 and cfg[n].quant.control_size_first
    assert cfg["pr162"].avg.swa_sum_dtype == cfg["pr264"].avg.swa_sum_dtype == "native"


def _non_default(cfg) -> dict:
    import dataclasses

    from pgolf.experiment import flatten
    from pgolf.trainers.config import TrainConfig
    base = flatten(dataclasses.asdict(TrainConfig()))
    return {k: v for k, v in flatten(dataclasses.asdict(cfg)).items() if k not in base or base[k] != v}


def test_repointed_stacks_resolve_as_before():
    # pr1394 now extends pr1218 and pr1855 pr1787 (was pr549 / pr1493): the snapshot holds every value
    # that differed from the TrainConfig defaults before the move; the one deliberate change is #1855's
    # VAL_LOSS_EVERY=0 (its run command; it inherits #1787's now). `data.variant` came after the snapshot:
    # sp8192 for #1394 and #1493, the CaseOps export (with its paths) for #1855.
    with open(os.path.join(os.path.dirname(__file__), "data", "frontier_resolved.json"), encoding="utf-8") as fh:
        before = json.load(fh)
    caseops = {"data.variant": "sp8192_caseops",
               "data.data_path": "data/datasets/fineweb10B_sp8192_lossless_caps_caseops_v1_reserved",
               "data.tokenizer_path": "data/tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"}
    import tomllib
    with open(_path("pr1855"), "rb") as fh:  # its phased TTT (and no sliding pass) came after the snapshot too
        own = tomllib.load(fh)["config"]
    import dataclasses

    from pgolf.experiment import flatten
    from pgolf.trainers.config import TrainConfig
    base = flatten(dataclasses.asdict(TrainConfig()))
    phased = {k: v for t in ("ttt", "eval") for k, v in ((f"{t}.{k}", v) for k, v in own[t].items()) if base[k] != v}
    changed = {"pr1855": {"eval.val_loss_every": 0, **caseops, **phased}, "pr1394": {"data.variant": "sp8192"},
               "pr1493": {"data.variant": "sp8192"}}
    for name, values in before.items():
        exp = load_experiment(_path(name))
        got = _non_default(exp.resolved(None, exp.meta.seeds[0]))
        want = {**values, **changed.get(name, {})}
        got = json.loads(json.dumps(got))
        assert got == want, (name, {k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)})


def test_intermediate_stacks_carry_their_records_settings():
    cfg = {n: load_experiment(_path(n)).config for n in ("pr1019", "pr1218", "pr1530", "pr1626", "pr1736", "pr1787")}
    assert cfg["pr1019"].model.bigram_buckets == 3072 and cfg["pr1019"].model.bigram_dim == 112
    assert cfg["pr1019"].quant.gptq and cfg["pr1019"].ttt.mode == "off" and cfg["pr1019"].model.xsa_last_n == 11
    assert cfg["pr1019"].quant.gptq_calib == "self_gen" and cfg["pr1019"].quant.gptq_reserve_seconds == 0
    q = cfg["pr1218"].quant
    assert cfg["pr1218"].model.vocab_size == 4096 and cfg["pr1218"].model.ve_layers == [9, 10]
    assert (q.gptq, q.gptq_reserve_seconds, q.compressor, q.compress_level, q.byte_shuffle) == (True, 10.0, "brotli", 11, True)
    m = cfg["pr1530"].model
    assert (m.parallel_start, m.parallel_lanes, m.doc_attention, m.qk_gain_init) == (8, True, True, 5.0)
    q = cfg["pr1626"].quant
    assert (q.embed_format, q.sd_clip_k_embed, q.sd_clip_k_mlp, q.gptq_calib_batches) == ("int7", 15.0, 12.0, 16)
    taper = load_experiment(_path("pr1729")).config.optim
    assert (taper.wd_taper_start_frac, taper.wd_taper_final_mult) == (0.70, 0.50)
    assert cfg["pr1736"].optim.wd_taper_start_frac == 1.0  # #1736's script has no taper
    assert cfg["pr1736"].model.attn_gate == "dense" and cfg["pr1736"].quant.gate_int8_rows
    assert cfg["pr1787"].model.attn_gate == "sparse" and cfg["pr1787"].optim.muon_ns_coeffs == "polar_express"
    assert cfg["pr1787"].schedule.min_lr == 0.10 and cfg["pr1787"].quant.gptq_reserve_seconds == 0.5


def test_flops_per_token_counts_the_virtual_layers_of_depth_recurrence():
    from pgolf.trainers.model import flops_per_token
    for name, virtual in (("pr691", 11), ("pr1394", 15), ("pr1493", 17)):
        cfg = load_experiment(_path(name)).config.model
        with torch.device("meta"):
            model = GPT(cfg)
        n, d, t = count_parameters(model), cfg.model_dim, 2048
        per_block = [count_parameters(b) for b in model.blocks]
        # the looped span runs 1 + num_loops times: each repeat re-uses its block's weights
        span = range(cfg.loop_start, cfg.loop_end + 1) if cfg.num_loops else range(0)
        reused = cfg.num_loops * sum(per_block[i] for i in span)
        assert flops_per_token(cfg, n, t, model.blocks) == 6.0 * (n + reused) + 12.0 * virtual * d * t
        if cfg.num_loops:
            with pytest.raises(ValueError, match="needs its blocks"):
                flops_per_token(cfg, n, t)


def test_smoke_shrink_keeps_every_technique_on():
    exp = load_experiment(_path("pr414_lateqat"), smoke=True)
    m, a = exp.config.model, exp.config.avg
    assert (m.num_layers, m.model_dim, m.num_heads, m.num_kv_heads) == (4, 128, 4, 2)
    assert m.ve_layers == [2, 3] and m.ve_dim == 64 and m.xsa_last_n == 2
    assert m.rope_dims == 8 and m.rope_ntk_ref_len == 32 and m.ln_scale and m.ortho_init
    assert m.bigram_hash == "v2" and m.bigram_buckets == 256 and m.smear_gate == "v2"
    assert 0.5 <= a.ema_decay < 0.997 and a.swa_every >= 1 and a.late_qat_threshold == 0.15
    assert exp.config.run.device == "cpu" and exp.resources.gpus == 0
    pr180 = load_experiment(_path("pr180"), smoke=True).config
    assert pr180.avg.prune_min_numel == 4096 and pr180.avg.prune_frac == 0.03
    assert smoke.smoke_layers(9) == 3 and smoke.smoke_layers(11) == 4


# vocab 1024 for every stack: the sp8192 stacks' 8192-way head and demo corpus tripled their runs; their
# tokenizer, byte tables and embedding GPTQ are covered by test_frontier/test_datasets. Width 64 (the
# smallest the OrthoInit tables allow) and 2,048 val tokens: a third of the time at width 128, and every
# stack's loss still falls by more than 0.8 in 20 steps.
FAST_SMOKE = {"schedule.iterations": 20, "data.train_batch_tokens": 64 * 8, "data.val_tokens_limit": 2048,
              "eval.train_log_every": 19, "model.vocab_size": 1024, "model.model_dim": 64}
STEPS = FAST_SMOKE["schedule.iterations"]
SMOKE_RUNS: dict[str, str] = {}  # stack -> run dir of its smoke run (test_stacks_packed.py replays them)


@pytest.fixture
def fast_smoke(monkeypatch):
    for k, v in FAST_SMOKE.items():
        monkeypatch.setitem(smoke.SMOKE_SHAPE, k, v)


def run_smoke(name: str, data_root, run_dir, seed: int = 1) -> tuple[dict, list[dict]]:
    from pgolf.launch import prepare_run
    from pgolf.trainers.train import run_training
    from pgolf.ttt_audit import audit_ttt

    exp = load_experiment(_path(name), smoke=True)
    cfg, _ = prepare_run(exp, None, seed, str(run_dir), str(data_root))
    result = audit_ttt(run_training(cfg), cfg.run.run_dir, cfg)  # as a trial does after the trainer exits
    with open(os.path.join(cfg.run.run_dir, "metrics.jsonl"), encoding="utf-8") as fh:
        events = [json.loads(line) for line in fh]
    return result, events


# pr414_lateqat is pr414 plus the late-QAT switch, which test_compile_graphs runs in the trainer
SMOKE_STACKS = sorted(n for n in EXPECTED if n != "pr414_lateqat" and n not in LINEAGE_ONLY)


@pytest.mark.parametrize("name", SMOKE_STACKS)
def test_stack_trains_in_smoke_mode(name, fast_smoke, data_root, tmp_path):
    result, events = run_smoke(name, data_root, tmp_path / name)
    SMOKE_RUNS[name] = str(tmp_path / name)
    losses = [e["train/loss"] for e in events if e["event"] == "train"]
    assert len(losses) >= 2 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.5, losses
    assert result["steps"] == STEPS
    cfg = load_experiment(_path(name), smoke=True).config
    assert math.isfinite(result["final/val_loss"]) and result["final/val_loss"] < math.log(cfg.model.vocab_size)
    kinds = {e["event"] for e in events}
    assert ("late_qat" in kinds) == (cfg.avg.late_qat_threshold > 0)
    assert (result["ttt"].get("fake_quant_linears", 0) > 0) == (cfg.ttt.fake_quant and cfg.ttt.mode != "off")
    if cfg.avg.ema_decay > 0 or cfg.avg.swa_apply or cfg.avg.prune_frac > 0:
        assert "prequant" in kinds
    if cfg.model.num_loops and cfg.model.loop_enable_frac > 0:
        (switch,) = [e for e in events if e["event"] == "layer_loop"]
        assert switch["step"] == next(s for s in range(STEPS + 1) if s / STEPS >= cfg.model.loop_enable_frac)
    if cfg.ttt.mode in ("score_first", "phased"):
        assert result["ttt"]["trace_verdict"]["compliant"], result["ttt"]["trace_verdict"]
    if cfg.ttt.mode == "phased":  # the eval time (round trip + TTT) decides against the eval cap
        from pgolf.compliance import Caps, check_seed
        verdict = check_seed(result)
        assert verdict.compliant, verdict.reasons
        assert verdict.eval_seconds == pytest.approx(result["time/eval_s"], abs=1e-3)
        assert result["time/eval_s"] >= result["time/ttt_s"] > 0 and result["time/ttt_verify_s"] > 0
        eval_phases = ("dequantize", "roundtrip_eval", "ttt")  # the trace check is timed, but off the eval clock
        assert result["time/eval_s"] == pytest.approx(sum(result[f"time/{p}_s"] for p in eval_phases))
        tight = check_seed(result, caps=Caps(eval_seconds=result["time/eval_s"] / 2))
        assert not tight.compliant and not tight.check("eval_under_cap").passed
        assert [c.name for c in tight.checks if not c.passed and c.blocking] == ["eval_under_cap"]
