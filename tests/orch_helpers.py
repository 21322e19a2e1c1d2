"""Shared by the orchestration tests: a tiny model config and a way to run the CLI in-process."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "experiments", "smoke.toml")

# A 2-layer d64 model, 6 steps, a validation every 3 steps: a whole trainer run in about 4 s on CPU.
TINY = [
    "config.model.model_dim=64", "config.data.train_seq_len=64", "config.data.train_batch_tokens=1024",
    "config.schedule.iterations=6", "config.schedule.warmdown_iters=2", "config.eval.val_loss_every=3",
    "config.eval.train_log_every=1", "config.data.val_tokens_limit=4096", "config.eval.val_batch_size=2048",
]


def tiny_args(extra=()):
    out = []
    for item in list(TINY) + list(extra):
        out += ["--set", item]
    return out


def run_cli(argv, capsys=None):
    """`pgolf ARGV` in this process (shares the session's Ray); returns (exit code, stdout)."""
    from pgolf.cli import main

    rc = main(list(argv))
    out = capsys.readouterr().out if capsys is not None else ""
    return rc, out


def children(uri, experiment, parent_run_id=None):
    from pgolf import tracking

    c = tracking.client(uri)
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("pgolf.kind") in ("validation", "sweep")]
    kids = [r for r in runs if r.data.tags.get("pgolf.kind") == "trial"]
    if parent_run_id:
        kids = [r for r in kids if r.data.tags.get("mlflow.parentRunId") == parent_run_id]
    return parents, kids


def alive(pid):
    """Running and not a zombie (orphans are reparented to PID 1, which need not reap them here)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def group_members(pgid):
    """Live (non-zombie) processes of a process group: a trainer's group outlives its leader, the watchdog."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(name))
    return out
