"""Can this Ray cluster run one trial at all? Checked before Tune starts.

Ray Tune never fails a trial whose resources fit no node: it waits, printing "the cluster only has 2.0
CPUs and 0 GPUs" every minute, and the trial's own deadline never starts. A trial is one placement
bundle, so it needs one node with all of its CPUs and GPUs; cluster totals say nothing. The head node of
a multi-node cluster usually has no CPUs or GPUs for trials (`ray start --head --num-cpus=0`) and is
then no place for them.

On an autoscaling cluster (`ray up`) a fitting node may not exist yet: the check asks the autoscaler for
one and waits, up to a start deadline, instead of failing.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

HEAD_RESOURCE = "node:__internal_head__"  # what Ray puts in the head node's resources
TRIAL_KEYS = ("GPU", "CPU")
EXIT_CODE = 2
DEFAULT_START_TIMEOUT_S = 1800.0  # a p5 boots, installs and downloads shards in about 10-20 min
POLL_SECONDS = 10.0


class Unschedulable(RuntimeError):
    """No node can host a trial (or none started within the start deadline); exit code 2."""


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    ip: str
    resources: dict[str, float]
    head: bool = False

    @property
    def hosts_trials(self) -> bool:
        return any(self.resources.get(k, 0) > 0 for k in TRIAL_KEYS)

    def describe(self) -> str:
        role = "head " if self.head else ""
        return f"{role}node {self.ip} ({self.node_id[:8]}): {format_resources(self.resources)}"


def nodes_from_ray(raw: list[dict[str, Any]]) -> list[NodeInfo]:
    """`ray.nodes()` -> the alive nodes."""
    out = []
    for n in raw:
        if not n.get("Alive", False):
            continue
        res = {k: float(v) for k, v in (n.get("Resources") or {}).items()}
        out.append(NodeInfo(node_id=str(n.get("NodeID", "")), ip=str(n.get("NodeManagerAddress", "?")),
                            resources=res, head=HEAD_RESOURCE in res))
    return out


def trial_demand(gpus: int, cpus: int) -> dict[str, float]:
    """What one trial asks Ray for; the same numbers `tune.with_resources` gets."""
    out = {"CPU": float(max(cpus, 1))}
    if gpus > 0:
        out["GPU"] = float(gpus)
    return out


def format_resources(res: dict[str, float]) -> str:
    def num(x: float) -> str:
        return f"{x:g}"
    return ", ".join(f"{num(res.get(k, 0))} {k}" for k in TRIAL_KEYS)


def fits(demand: dict[str, float], resources: dict[str, float]) -> bool:
    return all(resources.get(k, 0.0) + 1e-9 >= v for k, v in demand.items() if v > 0)


def largest(nodes: list[NodeInfo]) -> NodeInfo | None:
    """The biggest node that can host trials (GPUs first, then CPUs)."""
    hosts = [n for n in nodes if n.hosts_trials]
    return max(hosts, key=lambda n: tuple(n.resources.get(k, 0) for k in TRIAL_KEYS), default=None)


@dataclass
class Assessment:
    state: str  # "ok" | "wait" (the autoscaler can start a fitting node) | "never"
    message: str
    node_types: list[dict[str, float]]  # autoscaler node types that would fit


def assess(demand: dict[str, float], nodes: list[NodeInfo],
           node_types: list[dict[str, float]] | None = None) -> Assessment:
    """`node_types`: per-node resources of each autoscaler node group that may still start nodes
    (None: not an autoscaling cluster)."""
    if any(fits(demand, n.resources) for n in nodes):
        return Assessment("ok", "", [])
    need = f"each trial needs {format_resources(demand)} on one node"
    big = largest(nodes)
    idle_heads = [n for n in nodes if n.head and not n.hosts_trials]
    head_note = (f"; the head node {idle_heads[0].ip} has no CPUs or GPUs for trials and does not count"
                 if idle_heads else "")
    if big is None:
        have = "no node of this Ray cluster can host trials"
    else:
        n_hosts = sum(n.hosts_trials for n in nodes)
        have = f"the largest node that can host trials is {big.describe()} ({n_hosts} such node(s))"
    fitting = [t for t in (node_types or []) if fits(demand, t)]
    if fitting:
        return Assessment("wait", f"{need}; {have}{head_note}; the autoscaler can start a node with "
                                  f"{format_resources(fitting[0])}", fitting)
    fix = ("Fix: --smoke (a CPU-sized run on the demo data), --address of a cluster with such a node "
           "(ray start --address HEAD:6379 --num-gpus=N --num-cpus=N on a bigger machine), or ask for less: "
           "--set resources.gpus=N --set resources.cpus=N")
    if node_types is not None:
        have += "; no autoscaler node type is that big either"
    return Assessment("never", f"{need}, but {have}{head_note}. {fix}", [])


def autoscaler_node_types() -> list[dict[str, float]] | None:
    """Per-node resources of the autoscaler's node groups that can still start nodes, or None when the
    cluster has no autoscaler. Read from the GCS through a private Ray API: any change to it degrades to
    "not autoscaling" (the check then fails fast instead of waiting)."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001
        return None
    if config is None or not config.node_group_configs:
        return None
    return [{k: float(v) for k, v in g.resources.items()} for g in config.node_group_configs if g.max_count != 0]


def ensure_schedulable(demand: dict[str, float], *, start_timeout: float = DEFAULT_START_TIMEOUT_S,
                       get_nodes: Callable[[], list[NodeInfo]] | None = None,
                       get_node_types: Callable[[], list[dict[str, float]] | None] | None = None,
                       request: Callable[[list[dict[str, float]]], None] | None = None,
                       clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                       poll: float = POLL_SECONDS, say: Callable[[str], None] = print) -> list[NodeInfo]:
    """Return the alive nodes once one fits a trial; raise Unschedulable when none can, or when the
    autoscaler has not started one within `start_timeout` seconds. The defaults talk to the connected Ray."""
    get_nodes = get_nodes or _ray_nodes
    get_node_types = get_node_types or autoscaler_node_types
    request = request or _request_resources
    nodes = get_nodes()
    verdict = assess(demand, nodes, get_node_types())
    if verdict.state == "ok":
        return nodes
    if verdict.state == "never":
        raise Unschedulable(verdict.message)
    say(f"  {verdict.message}: waiting for it (start deadline {start_timeout:g} s, --start-timeout)")
    request([demand])
    t0 = clock()
    try:
        while clock() - t0 < start_timeout:
            sleep(poll)
            nodes = get_nodes()
            if any(fits(demand, n.resources) for n in nodes):
                say(f"  a node for trials is up after {clock() - t0:.0f} s")
                return nodes
    finally:
        request([])  # the trials' own placement groups keep the node from now on
    raise Unschedulable(f"{verdict.message}, but none started within the start deadline of "
                        f"{start_timeout:g} s (raise --start-timeout, or check `ray status` and the autoscaler log: "
                        f"quota, instance availability, setup errors)")


def _ray_nodes() -> list[NodeInfo]:
    import ray

    return nodes_from_ray(ray.nodes())


def _request_resources(bundles: list[dict[str, float]]) -> None:
    try:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=bundles)
    except Exception:  # noqa: BLE001 - without the request, Tune's own pending trials still ask
        pass
