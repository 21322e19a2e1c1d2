"""The submission self-check: the records folder's train_gpt.py run from a clean copy on CPU, with pgolf
itself not importable, proving the shipped file is all the code the run needs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from pgolf.trainers.config import finite
from pgolf.trainers.contract import FINAL_BPB, RESULT_FILE


# A 2-step CPU run of the shipped train_gpt.py: enough to prove it unpacks, builds the model, trains,
# quantizes, compresses and scores from a folder holding nothing else, in seconds.
DEFAULT_SELF_CHECK_SETS = (
    "schedule.iterations=2", "schedule.warmup_steps=0", "schedule.warmdown_iters=1",
    "schedule.max_wallclock_seconds=0", "data.train_seq_len=64", "data.train_batch_tokens=512",
    "data.grad_accum_steps=1", "data.val_tokens_limit=4096", "eval.val_loss_every=0", "eval.val_batch_size=2048",
    "eval.train_log_every=1", "eval.sliding_stride=0", "run.device=cpu", "run.compile=false", "run.threads=1",
)

# Config keys that differ between seeds or machines but not between what the seeds ran.

@dataclass
class SelfCheck:
    ok: bool
    detail: str
    command: list[str]
    seconds: float
    val_bpb: float | None = None
    output_tail: str = ""
    skipped: bool = False  # nothing was run (e.g. no data with a matching tokenizer); ok is False


def runnable_sets(payload: dict, sets: Sequence[str]) -> tuple[list[str], list[str]]:
    """The self-check's overrides the shipped file accepts: one that changes a field a packer decision
    read would stop the run (the code for that value is not in the file), so that field keeps its
    packed value; returns (overrides, "key=packed value" of each kept field)."""
    from pgolf.trainers.codebundle import decided_fields
    from pgolf.trainers.config import parse_set

    decided = set(decided_fields(payload) or ())
    out, kept = [], []
    for item in sets:
        key, value = parse_set(item)
        sec, k = key.split(".")
        packed = payload["config"][sec][k]
        if key in decided and value != packed:
            kept.append(f"{key}={json.dumps(packed)}")
        else:
            out.append(item)
    return out, kept


def self_check(folder: str, *, data_path: str, tokenizer_path: str, sets: Sequence[str] = DEFAULT_SELF_CHECK_SETS,
               seed: int = 1, timeout: float = 600.0, python: str | None = None) -> SelfCheck:
    """Copy the folder into an empty temporary directory and run its train_gpt.py there on a tiny CPU
    config, from that directory, with pgolf itself not importable: proves the shipped file is all the
    code the run needs."""
    import time

    from pgolf.trainers.codebundle import verify_wrapper
    try:  # the file that runs must be the packed code and nothing else (#12.8)
        payload = verify_wrapper(os.path.join(folder, "train_gpt.py"))
    except ValueError as exc:
        return SelfCheck(False, str(exc), [], 0.0)
    sets, kept = runnable_sets(payload, sets)
    tmp = tempfile.mkdtemp(prefix="pgolf_selfcheck_")
    try:
        dest = os.path.join(tmp, os.path.basename(os.path.normpath(folder)) or "submission")
        shutil.copytree(folder, dest)
        run_dir = os.path.join(tmp, "run")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
        if python is None:
            # `-S` skips site's .pth processing, so the editable install of pgolf is invisible and only
            # third-party packages (torch, numpy, ...) stay importable through PYTHONPATH: the run can
            # only succeed on the trainer packed inside train_gpt.py.
            site_dirs = [p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages"))]
            cmd = [sys.executable, "-S", "train_gpt.py"]
            env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(site_dirs))
        else:
            cmd = [python, "train_gpt.py"]
        cmd += [x for s in sets for x in ("--set", s)]
        env.update(DATA_PATH=str(data_path), TOKENIZER_PATH=str(tokenizer_path), RUN_DIR=run_dir, SEED=str(seed),
                   OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1")
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=dest, env=env, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return SelfCheck(False, f"train_gpt.py did not finish within {timeout:g} s", cmd, time.monotonic() - t0)
        secs = time.monotonic() - t0
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        if proc.returncode != 0:
            return SelfCheck(False, f"train_gpt.py exited {proc.returncode}", cmd, secs, output_tail=tail)
        try:
            with open(os.path.join(run_dir, RESULT_FILE), encoding="utf-8") as fh:
                res = json.load(fh)
        except (OSError, ValueError) as exc:
            return SelfCheck(False, f"no result.json in RUN_DIR: {exc}", cmd, secs, output_tail=tail)
        bpb = finite(res.get(FINAL_BPB))
        if bpb is None or bpb <= 0:
            return SelfCheck(False, f"{FINAL_BPB} is {res.get(FINAL_BPB)!r}", cmd, secs, output_tail=tail)
        note = f" (packed values kept: {', '.join(kept)})" if kept else ""
        return SelfCheck(True, f"2-step CPU run from a clean copy finished: final/val_bpb {bpb:.4f}, "
                               f"artifact {res.get('artifact/bytes', 0):,} bytes{note}", cmd, secs, float(bpb), tail)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
