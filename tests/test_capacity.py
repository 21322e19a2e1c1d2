"""The capacity check before Tune starts (pgolf.capacity), on fake `ray.nodes()` lists, plus the real
thing on the session's local Ray: an 8-GPU/16-CPU experiment on a 2-CPU box exits 2 at once."""
import pytest

from orch_helpers import ROOT, run_cli
from pgolf import capacity as C


def node(node_id, cpu, gpu=0, head=False, alive=True, ip="10.0.0.1", **extra):
    res = {"CPU": cpu, "memory": 1e9, f"node:{ip}": 1.0, **extra}
    if gpu:
        res["GPU"] = gpu
    if head:
        res[C.HEAD_RESOURCE] = 1.0
    return {"NodeID": node_id, "Alive": alive, "NodeManagerAddress": ip, "Resources": res}


LAPTOP = [node("aa" * 14, 2, head=True, ip="127.0.0.1")]
CLUSTER = [node("head0000", 0, head=True, ip="10.0.0.1"), node("wk1" * 6, 8, gpu=1, ip="10.0.0.2"),
           node("wk2" * 6, 8, gpu=1, ip="10.0.0.3"), node("dead" * 4, 64, gpu=8, alive=False, ip="10.0.0.9")]


def test_one_node_too_small_names_demand_supply_and_fix():
    v = C.assess(C.trial_demand(8, 16), C.nodes_from_ray(LAPTOP))
    assert v.state == "never"
    assert "each trial needs 8 GPU, 16 CPU on one node" in v.message
    assert "the largest node that can host trials is head node 127.0.0.1 (aaaaaaaa): 0 GPU, 2 CPU" in v.message
    for fix in ("--smoke", "--address", "--set resources.gpus=N"):
        assert fix in v.message
    assert "does not count" not in v.message  # this head hosts trials


def test_cluster_totals_do_not_count_only_one_node_does():
    nodes = C.nodes_from_ray(CLUSTER)
    assert [n.ip for n in nodes] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]  # the dead node is gone
    v = C.assess(C.trial_demand(2, 1), nodes)  # 2 GPUs in total, 1 per node
    assert v.state == "never"
    assert "1 GPU, 8 CPU (2 such node(s))" in v.message
    assert "the head node 10.0.0.1 has no CPUs or GPUs for trials and does not count" in v.message
    assert C.assess(C.trial_demand(1, 8), nodes).state == "ok"
    assert C.assess(C.trial_demand(0, 0), nodes).state == "ok"  # cpus 0 still asks Ray for 1


def test_head_only_cluster():
    v = C.assess(C.trial_demand(0, 1), C.nodes_from_ray([node("h", 0, head=True)]))
    assert v.state == "never" and "no node of this Ray cluster can host trials" in v.message


def test_autoscaler_that_can_start_a_fitting_node_waits_for_it():
    nodes = C.nodes_from_ray(CLUSTER[:1])
    v = C.assess(C.trial_demand(8, 8), nodes, [{"CPU": 192, "GPU": 8}])
    assert v.state == "wait" and "the autoscaler can start a node with 8 GPU, 192 CPU" in v.message
    v = C.assess(C.trial_demand(16, 8), nodes, [{"CPU": 192, "GPU": 8}])
    assert v.state == "never" and "no autoscaler node type is that big either" in v.message


class Fake:
    def __init__(self, appear_after):
        self.t, self.polls, self.requests, self.said = 0.0, 0, [], []
        self.appear_after = appear_after

    def nodes(self):
        self.polls += 1
        big = [node("p5" * 8, 192, gpu=8, ip="10.0.0.5")] if self.polls > self.appear_after else []
        return C.nodes_from_ray(CLUSTER[:1] + big)

    def sleep(self, s):
        self.t += s

    def run(self, timeout):
        return C.ensure_schedulable(C.trial_demand(8, 8), start_timeout=timeout, get_nodes=self.nodes,
                                    get_node_types=lambda: [{"CPU": 192, "GPU": 8}], request=self.requests.append,
                                    clock=lambda: self.t, sleep=self.sleep, poll=10, say=self.said.append)


def test_wait_returns_once_the_node_is_up_and_withdraws_the_request():
    f = Fake(appear_after=3)
    nodes = f.run(timeout=600)
    assert any(n.resources.get("GPU") == 8 for n in nodes)
    assert f.requests == [[{"CPU": 8.0, "GPU": 8.0}], []]
    assert "waiting for it (start deadline 600 s" in f.said[0] and "after 30 s" in f.said[1]


def test_start_deadline():
    f = Fake(appear_after=10**6)
    with pytest.raises(C.Unschedulable, match="none started within the start deadline of 60 s"):
        f.run(timeout=60)
    assert f.requests[-1] == [] and f.t == 60


def test_never_schedulable_raises_without_waiting():
    with pytest.raises(C.Unschedulable, match="each trial needs 8 GPU"):
        C.ensure_schedulable(C.trial_demand(8, 8), get_nodes=lambda: C.nodes_from_ray(LAPTOP),
                             get_node_types=lambda: None, request=pytest.fail, sleep=pytest.fail)


@pytest.mark.parametrize("setting,message", [
    ("resources.gpus=-1", "[resources] gpus and cpus must be >= 0, got gpus=-1"),
    ("resources.cpus=-2", "[resources] gpus and cpus must be >= 0, got gpus=0 cpus=-2"),
    ("resources.gpus=0.5", "expected int, got float 0.5"),
])
def test_resource_nonsense_is_a_config_error(setting, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = run_cli(["validate", f"{ROOT}/experiments/smoke.toml", "--set", setting])[0]
    assert rc == 2
    assert message in capsys.readouterr().err


def test_baseline_on_a_small_machine_exits_2_at_once(ray_session, tracking_uri, tmp_path, capsys):
    """The 8-GPU, 16-CPU baseline on the session's Ray (2 CPUs, 8 logical GPUs): no trial starts."""
    from orch_helpers import children

    rc = run_cli(["validate", f"{ROOT}/experiments/baseline.toml",
                  "--runs-dir", str(tmp_path / "runs")])[0]
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "each trial needs 8 GPU, 16 CPU on one node" in err and "8 GPU, 2 CPU" in err
    parents, kids = children(tracking_uri, "baseline")
    assert [p.info.status for p in parents] == ["FAILED"] and kids == []
