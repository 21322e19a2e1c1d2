"""The shipped Ray cluster config is what `ray up` accepts. `pgolf validate` submitted through the Ray
Jobs API to a real cluster (a `ray start` head and worker nodes, every port explicit) is
tests/test_multinode.py."""
import os


def test_cluster_yaml_is_a_valid_ray_cluster_config():
    """What `ray up` checks first: Ray's own schema, and the defaults it fills in."""
    import json

    import jsonschema
    import ray.autoscaler
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    import pgolf

    path = os.path.join(os.path.dirname(pgolf.__file__), "cluster", "cluster.yaml")
    cfg = yaml.safe_load(open(path))
    schema = json.load(open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")))
    jsonschema.validate(cfg, schema)
    validate_config(prepare_config(cfg))

    nodes = cfg["available_node_types"]
    gpu_nodes = [n for n in nodes.values() if n["resources"].get("GPU", 0) == 8]
    assert cfg["head_node_type"] in nodes and gpu_nodes
    setup = " ".join(cfg["setup_commands"] + cfg["worker_setup_commands"])
    assert "pip install" in setup and "pgolf data fineweb" in setup
    assert any("mlflow server" in c for c in cfg["head_start_ray_commands"])
