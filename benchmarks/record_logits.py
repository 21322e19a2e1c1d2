"""Same weights, same logits: #1855's own GPT (built from its train_gpt.py in the local mirror of the
challenge repository, FlashAttention-3 replaced by SDPA and its Triton kernels stubbed, float32, CPU)
against pgolf's model from experiments/stacks/pr1855.toml, every weight perturbed, on rows with
documents starting mid-row (the record gets cu_seqlens at BOS, pgolf its block-diagonal mask).

    .venv/bin/python benchmarks/record_logits.py

Needs /work/.mirror/openai+parameter-golf/repo; writes a stripped copy of the record's script to
/tmp/H (never committed)."""
import os, sys, types, subprocess, math
import torch, torch.nn.functional as F
torch.manual_seed(0)
env = dict(SMEAR_GATE_ENABLED="1", SPARSE_ATTN_GATE_ENABLED="1", SPARSE_ATTN_GATE_SCALE="0.5",
           GATED_ATTN_QUANT_GATE="1", FUSED_CE_ENABLED="0")
os.environ.update(env)
class Any_(types.ModuleType):
    def __getattr__(self, k):
        if k.startswith("__"):
            raise AttributeError(k)
        if k == "jit":
            return lambda f=None, **kw: (f if f is not None else (lambda g: g))
        return Any_(k)
    def __call__(self, *a, **kw):
        return self
def fa3(q, k, v, causal=True):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                          enable_gqa=True).transpose(1, 2)
def varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=True, window_size=None):
    outs = []
    cu = cu_seqlens_q.tolist()
    for a, b in zip(cu[:-1], cu[1:]):
        if b > a:
            outs.append(fa3(q[None, a:b], k[None, a:b], v[None, a:b])[0])
    return torch.cat(outs)
fa = types.ModuleType("flash_attn_interface"); fa.flash_attn_func = fa3; fa.flash_attn_varlen_func = varlen
sys.modules["flash_attn_interface"] = fa
R = "/work/.mirror/openai+parameter-golf/repo"
D = "records/track_10min_16mb/2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611"
src = subprocess.run(["git", "--git-dir", R, "show", f"HEAD:{D}/train_gpt.py"], capture_output=True, text=True).stdout
src = src[: src.index('if __name__ == "__main__":')]
stub = "class _Stub:\n    def __getattr__(self, k):\n        return self\n    def __call__(self, *a, **k):\n        return self\ntriton = tl = TensorDescriptor = _Stub()\n"
src = src.replace("import triton.language as tl\n", "").replace("import triton\n", "").replace(
    "from triton.tools.tensor_descriptor import TensorDescriptor\n", stub)
os.makedirs("/tmp/H", exist_ok=True)
open("/tmp/H/rec1855_mod.py", "w").write(src)
sys.path.insert(0, "/tmp/H")
import rec1855_mod
ns = rec1855_mod.__dict__
rec1855_mod.BOS_ID = 1
h = ns["Hyperparameters"]()
rec = ns["GPT"](h).float().eval()
for b in rec.blocks:
    b.mlp.use_fused = False
with torch.no_grad():
    for p in rec.parameters():
        p.add_(torch.randn_like(p) * 0.02)
from pgolf.experiment import load_experiment
from pgolf.trainers.model import GPT, count_parameters, set_looping
from pgolf.record_weights import record_to_pgolf
cfg = load_experiment("experiments/stacks/pr1855.toml").resolved().model
mine = GPT(cfg).eval()
print("params record / pgolf", sum(p.numel() for p in rec.parameters()), count_parameters(mine))
mine.load_state_dict(record_to_pgolf(rec.state_dict(), mine.state_dict()))
g = torch.Generator().manual_seed(1)
for T in (128, 2112):
    ids = torch.randint(2, 8192, (1, T), generator=g)
    ids[0, 0] = 1; ids[0, T // 3] = 1; ids[0, T // 2 + 5] = 1
    bos = (ids[0] == 1).nonzero().flatten().tolist()
    cu, mx = ns["_build_cu_seqlens"](bos, T, "cpu")
    for looping in (False, True):
        rec.looping_active = looping
        set_looping(mine, looping)
        with torch.no_grad():
            a = rec.forward_logits(ids, cu_seqlens=cu, max_seqlen=mx)
            b = mine.logits(ids)
        print(f"T {T} looping {looping}: max abs diff {(a - b).abs().max().item():.2e}, max |logit| {a.abs().max().item():.1f}")
