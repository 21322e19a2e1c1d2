"""Phased score-first TTT (#1610 one phase, #1626 several, #1855 three over 2,500 documents).

Documents (a BOS up to the next BOS, which is their last target) are sorted by length, cut into batches
of `lora_batch_docs` and queued longest batch first. A batch gets rank-r adapters with B = 0 (A is kept
from the rank's previous batch within a phase when `lora_warm_a`, else drawn afresh) and a fresh AdamW;
each document is read in chunks of `lora_chunk_tokens`, inside a window of the `lora_window` previous
tokens of the same document: the chunk is scored, then one AdamW step on the chunk's mean loss unless it
is the document's last. Batches go to ranks round-robin, one round of `world_size` batches at a time.
After the round in which the count of finished documents reaches the next boundary
prefix * (p+1) // phases, the base model trains with the score_first SGD recipe (ttt.lr, momentum,
epochs, chunk_tokens, cosine over chunks, last chunk skipped) on the first `boundary` documents of the
queue, every one of them already scored, and the adapters restart from scratch. The trace declares the
queue as its document order; the verifier checks score-before-update in that order.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from .bpb import token_bytes
from .config import ConfigError, TrainConfig
from .evaluate import autocast_for
from .ttt import HookedAdapters, TTTResult, _cosine, flush_events, _finish, document_spans, prepare_for_training, set_trainable, sgd_epochs
from .ttt_trace import GLOBAL

HEAD = "head"  # target name of the adapter on the output head (its input is the final hidden state)


class Adapters(HookedAdapters):
    """Batched LoRA (one A [n, r, in], B [n, out, r] per slot) added to target module outputs by forward
    hooks, so the model's own forward runs; slot = (module, k-th call of it in one forward), i.e. a looped
    layer gets one adapter per pass as in #1855. The head adapter is applied by `nll`."""

    def __init__(self, model: nn.Module, targets: list[str], rank: int, alpha: float):
        self.mods = {}
        for name, m in model.named_modules():
            if any(name == t or name.endswith("." + t) for t in targets if t != HEAD):
                lin = [x for x in m.modules() if isinstance(x, nn.Linear)]
                if lin:
                    self.mods[name] = (lin[0].in_features, lin[-1].out_features)
        if not self.mods and targets != [HEAD]:
            raise ConfigError(f"ttt.lora_targets {targets} match no module of the model")
        self.head = model.tok_emb.weight.shape[::-1] if HEAD in targets else None  # (in, out) = (d, vocab)
        self.rank, self.scale = rank, (alpha or rank) / rank
        self.calls: dict[str, int] = {}
        self.params: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.enabled = False
        mods = dict(model.named_modules())
        self.handles = [mods[n].register_forward_hook(self._hook(n)) for n in self.mods]
        with torch.no_grad():  # one call count per module: how many slots a looped layer needs
            model.hidden(torch.zeros(1, 2, dtype=torch.int64, device=model.tok_emb.weight.device))
        self.slots = [(n, k) for n in self.mods for k in range(self.calls.get(n, 0))]
        self.calls.clear()

    def _hook(self, name: str):
        def hook(module, inputs, output):
            k = self.calls.get(name, 0)
            self.calls[name] = k + 1
            if not self.enabled:
                return None
            return output + self.delta((name, k), inputs[0]).reshape(output.shape).to(output.dtype)
        return hook

    def delta(self, slot, x: torch.Tensor) -> torch.Tensor:
        a, b = self.params[slot]
        x = x.reshape(x.size(0), -1, x.size(-1))
        return torch.bmm(torch.bmm(x, a.to(x.dtype).transpose(1, 2)), b.to(x.dtype).transpose(1, 2)) * self.scale

    def reset(self, n: int, device: torch.device, gen: torch.Generator, warm_a: bool) -> list[torch.Tensor]:
        """B = 0 for every slot; A kept when `warm_a` and the batch size is unchanged (#1767), else
        uniform(+-1/sqrt(in)) as nn.Linear's init. Returns the trainable tensors."""
        shapes = {s: self.mods[s[0]] for s in self.slots}
        if self.head is not None:
            shapes[(HEAD, 0)] = tuple(self.head)
        out = []
        for slot, (fan_in, fan_out) in shapes.items():
            old = self.params.get(slot)
            if warm_a and old is not None and old[0].size(0) == n:
                a = old[0]
            else:
                bound = 1.0 / math.sqrt(fan_in)
                a = ((torch.rand(n, self.rank, fan_in, generator=gen) * 2 - 1) * bound).to(device).requires_grad_(True)
            out += self.add_pair(slot, a, fan_out, device)
        return out


def nll(model: nn.Module, ad: Adapters, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-token loss of GPT.forward, with the head adapter added to the logits before the softcap."""
    ad.calls.clear()
    h = model.head_input(model.hidden(x))
    w = model.tok_emb.weight if model.lm_head is None else model.lm_head.weight
    z = F.linear(h, w.to(h.dtype))
    if ad.head is not None:
        z = z + ad.delta((HEAD, 0), h).reshape(z.shape).to(z.dtype)
    c = model.cfg.logit_softcap
    logits = c * torch.tanh(z.float() / c)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none").view_as(y)


def doc_queue(docs: list[tuple[int, int]], batch_docs: int) -> list[list[int]]:
    """Documents by length (stable), in batches of `batch_docs`, the batch with the longest document first."""
    by_len = sorted(range(len(docs)), key=lambda i: docs[i][1] - docs[i][0])
    batches = [by_len[i:i + batch_docs] for i in range(0, len(by_len), batch_docs)]
    return sorted(batches, key=lambda b: -max(docs[d][1] - docs[d][0] for d in b))


def phase_boundaries(n_docs: int, prefix_docs: int, phases: int) -> list[int]:
    prefix = max(0, min(n_docs, prefix_docs))
    return [prefix * (p + 1) // phases for p in range(phases)]


def phase_docs(queue: list[list[int]], boundary: int) -> list[int]:
    """The documents a global phase trains on: the first `boundary` of the queue (all already scored)."""
    return [d for batch in queue for d in batch][:boundary]


def score_and_adapt(model, ad, batch, docs, val_tokens, luts, t, window, device, sums, events, gen, warm_a,
                    parents: list[str]) -> int:
    """One batch of documents: fork the adapters, then per chunk score every document, then one AdamW step
    on the chunks that are not a document's last. Returns the number of optimizer steps."""
    n, ch = len(batch), t.lora_chunk_tokens
    params = ad.reset(n, device, gen, warm_a)
    opt = torch.optim.AdamW(params, lr=t.lora_lr, betas=(t.lora_beta1, t.lora_beta2), eps=1e-10,
                            weight_decay=t.lora_weight_decay)
    states = [f"lora:{d}" for d in batch]
    events.append(("fork", {"parent": parents, "states": states}))
    pred = [docs[d][1] - docs[d][0] for d in batch]  # positions s..e-1 predict tokens s+1..e
    n_ch = [math.ceil(p / ch) for p in pred]
    steps = 0
    zero = torch.zeros((), dtype=torch.float64, device=device)
    for c in range(max(n_ch)):
        width = min((c + 1) * ch, window)
        x = torch.zeros(n, width, dtype=torch.int64)
        y = torch.zeros(n, width, dtype=torch.int64)
        mask = torch.zeros(n, width, dtype=torch.bool)
        pos = torch.zeros(n, width, dtype=torch.int64)  # targets' val positions (the CaseOps sidecar)
        scored, trained = [], []
        train_rows = [j for j in range(n) if c < n_ch[j] - 1]  # a document's last chunk is never trained on
        for j, d in enumerate(batch):
            if c >= n_ch[j]:
                continue  # this row runs on padding, masked out of score and loss (as the record does)
            s = docs[d][0]
            c0, c1 = c * ch, min((c + 1) * ch, pred[j])
            w0 = max(0, c1 - window)
            seg = val_tokens[s + w0:s + c1 + 1].to(torch.int64)
            x[j, :c1 - w0], y[j, :c1 - w0] = seg[:-1], seg[1:]
            pos[j, :c1 - w0] = torch.arange(s + w0 + 1, s + c1 + 1)
            mask[j, c0 - w0:c1 - w0] = True
            scored.append((states[j], s + c0 + 1, s + c1 + 1))
            if c < n_ch[j] - 1:
                trained.append((states[j], s + w0, s + c1 + 1))
        x, y, mask = x.to(device), y.to(device), mask.to(device)
        with autocast_for(device):
            loss = nll(model, ad, x, y).float()
        with torch.no_grad():  # the score: these adapters have not seen this chunk yet
            sums[0] += torch.where(mask, loss.detach().double(), zero).sum()
            sums[1] += mask.sum()
            sums[2] += torch.where(mask, token_bytes(x, y, luts, pos).double(), zero).sum()
        events.append(("score", {"items": scored, "chunk": c}))
        if train_rows:  # (not `if trained`: the packer would read a list bound to [] as always empty)
            rows = torch.tensor(train_rows, device=device)
            ((loss * mask).sum(dim=1)[rows] / ch).sum().backward()  # per-document mean over the chunk
            opt.step()
            opt.zero_grad(set_to_none=True)
            steps += 1
            events.append(("update", {"items": trained, "chunk": c}))
    return steps


class _MappedTrace:
    """Receives sgd_epochs' update items as ranges of the concatenated phase buffer and records them as
    the document ranges of the stream they came from."""

    def __init__(self, segs: list[tuple[int, int]], events: list, record: bool):
        self.segs, self.events, self.record = segs, events, record
        self.offs = [0]
        for a, b in segs:
            self.offs.append(self.offs[-1] + b - a)

    def update(self, items, **fields) -> None:
        if not self.record:
            return
        out = []
        for state, a, b in items:
            for (sa, sb), off in zip(self.segs, self.offs):
                lo, hi = max(a, off), min(b, off + sb - sa)
                if hi > lo:
                    out.append((state, sa + lo - off, sa + hi - off))
        self.events.append(("update", {"items": out, **fields}))


def global_phase(model, val_tokens, docs, chosen, cfg: TrainConfig, device, rank, world_size, events, phase) -> int:
    """The score_first SGD over the tokens of `chosen` documents (each with its closing BOS), concatenated in
    queue order; returns the optimizer steps taken."""
    t, L = cfg.ttt, cfg.data.train_seq_len
    segs = [(docs[d][0], docs[d][1] + 1) for d in chosen]
    buf = torch.cat([val_tokens[a:b] for a, b in segs])
    total = buf.numel() - 1
    n_chunks = math.ceil(total / t.chunk_tokens)
    params = set_trainable(model, t.freeze_blocks)
    opt = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum)
    trace = _MappedTrace(segs, events, rank == 0)
    step = 0
    for k in range(n_chunks - 1):  # the last chunk is never trained on
        lo, hi = k * t.chunk_tokens, min((k + 1) * t.chunk_tokens, total)
        lr_k = _cosine(t.lr, k, n_chunks) if t.lr_schedule == "cosine" else t.lr
        step = sgd_epochs(model, opt, params, buf, list(range(lo, hi - L + 1, L)), seq_len=L, epochs=t.epochs,
                          batch_seqs=t.batch_seqs, grad_clip=t.grad_clip, lr_at=lambda _s: lr_k, device=device,
                          rank=rank, world_size=world_size, trace=trace, step0=step,
                          trace_fields={"phase": phase, "chunk": k})
    for p in model.parameters():
        p.requires_grad_(False)
    return step


def run_phased(model, val_tokens, luts, cfg: TrainConfig, device, rank, world_size, trace, bos_id: int) -> TTTResult:
    t = cfg.ttt
    window = t.lora_window or cfg.data.train_seq_len
    n_pos = val_tokens.numel() - 1
    docs = document_spans(val_tokens, bos_id)
    queue = doc_queue(docs, t.lora_batch_docs)
    bounds = phase_boundaries(len(docs), t.phased_prefix_docs, t.phased_phases)
    order = [d for batch in queue for d in batch]
    last_s, last_e = docs[order[-1]]
    last_c0 = last_s + ((last_e - last_s - 1) // t.lora_chunk_tokens) * t.lora_chunk_tokens
    trace.header("phased", (1, n_pos + 1), (last_c0 + 1, last_e + 1),
                 doc_order=[list(docs[d]) for d in order], documents=len(docs), batches=len(queue),
                 boundaries=bounds, chunk_tokens=t.lora_chunk_tokens, window=window, world_size=world_size)
    for p in model.parameters():
        p.requires_grad_(False)
    prepare_for_training(model)
    ad = Adapters(model, t.lora_targets, t.lora_rank, t.lora_alpha)
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    events: list = []
    info = {"documents": len(docs), "batches": len(queue), "boundaries": bounds, "updates": 0, "global_steps": 0,
            "phases_run": 0, "score_train_s": 0.0, "global_s": 0.0}
    phase, done, prev = 0, 0, [GLOBAL]
    model.eval()  # the LoRA forward scores and trains in eval mode as #1855's; the global SGD runs in train mode
    try:
        for r0 in range(0, len(queue), world_size):
            t0 = time.perf_counter()
            mine = r0 + rank
            if mine < len(queue):
                # A fresh A is drawn from (seed, batch), so it does not depend on which rank got the batch.
                gen = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + mine)
                ad.enabled = True
                info["updates"] += score_and_adapt(model, ad, queue[mine], docs, val_tokens, luts, t, window, device,
                                                   sums, events, gen, t.lora_warm_a, prev)
                ad.enabled = False
                # with warm A the next batch's adapters carry this batch's A: its documents are parents too
                prev = [GLOBAL] + ([f"lora:{d}" for d in queue[mine]] if t.lora_warm_a else [])
            done += sum(len(b) for b in queue[r0:r0 + world_size])
            flush_events(events, trace, world_size)
            t1 = time.perf_counter()
            info["score_train_s"] += t1 - t0
            if phase < len(bounds) and done >= bounds[phase]:
                if done < len(docs) and bounds[phase] > 0:  # a phase after the last score could only help a rescore
                    info["global_steps"] += global_phase(model, val_tokens, docs, phase_docs(queue, bounds[phase]),
                                                         cfg, device, rank, world_size, events, phase)
                    model.eval()
                    info["phases_run"] += 1
                    flush_events(events, trace, 1)
                    prev = [GLOBAL]  # fresh adapters after a phase (#1626)
                    ad.params.clear()
                phase += 1
                info["global_s"] += time.perf_counter() - t1
    finally:
        ad.remove()
        for p in model.parameters():
            p.requires_grad_(True)
    return _finish(sums, trace, info)
