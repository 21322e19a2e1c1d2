"""Shared pytest fixtures."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """The offline demo corpus, built once per test session (a few seconds on CPU)."""
    from pgolf.datasets import build_demo

    return build_demo(tmp_path_factory.mktemp("demo_data"), progress=None)


# --------------------------------------------------------------------------------------------------
# Ray and MLflow for the orchestration tests (test_tracking, test_trial, test_validate, test_reliability,
# test_cluster).

import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# Set for the whole session, before anything imports ray: token auth would write ~/.ray/auth_token and
# a later `ray start` (the cluster test) would then demand it; usage stats and MLflow telemetry would
# try the network; Tune would wait 600 s before force-killing a stuck trial.
_TEST_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TUNE_FORCE_TRIAL_CLEANUP_S": "5",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
}
for _k, _v in _TEST_ENV.items():
    os.environ.setdefault(_k, _v)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "ray_cluster: starts its own Ray head node with `ray start`; runs after every other test, "
                   "once the session's local Ray is shut down")


RAY_FIXTURES = {"ray_session", "stop_session_ray"}
STACK_MODULES = {"test_stacks.py", "test_stacks_packed.py"}
EXPLICIT_PORT_MODULES = {"test_multinode.py"}


def _starts_ray(item) -> bool:
    return bool(RAY_FIXTURES & set(getattr(item, "fixturenames", ()))) or item.get_closest_marker("ray_cluster")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the xdist_group marks set here
def pytest_collection_modifyitems(session, config, items):
    # Two Ray clusters on one machine collide on the dashboard agent's fixed port (52365), which
    # ray.init cannot move. The `ray start` tests move every port of their own clusters, and also run
    # last, after `stop_session_ray` has shut the session cluster down, so the two never overlap.
    items.sort(key=lambda item: item.get_closest_marker("ray_cluster") is not None)
    # Under pytest-xdist (`--dist loadgroup`): every test that starts a local Ray runs in one worker, in
    # the order above, so one machine never holds two local clusters; the multi-node cluster, which gives
    # every port explicitly, may run beside it. A stack's smoke run and the replay of its shipped script
    # share a worker, so the replay reuses the run instead of training again.
    ray_modules = {item.path.name for item in items if _starts_ray(item)}
    for item in items:
        if item.path.name in EXPLICIT_PORT_MODULES:
            item.add_marker(pytest.mark.xdist_group("ray-explicit-ports"))
        elif item.path.name in ray_modules:
            item.add_marker(pytest.mark.xdist_group("ray"))
        elif item.path.name in STACK_MODULES and "name" in getattr(getattr(item, "callspec", None), "params", {}):
            item.add_marker(pytest.mark.xdist_group(f"stack-{item.callspec.params['name']}"))
        elif _shares_a_module_fixture(item):
            # a module's own module/session fixture (a training run, a store) runs once per worker that
            # gets one of its tests: keep the module on one worker so it runs once
            item.add_marker(pytest.mark.xdist_group(f"module-{item.path.name}"))


def _shares_a_module_fixture(item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    for defs in (info.name2fixturedefs.values() if info is not None else ()):
        d = defs[-1]
        if d.scope in ("module", "session") and str(getattr(d, "baseid", "")).endswith(item.path.name):
            return True
    return False


def pytest_collection_finish(session):
    """Under xdist the groups must have reached the scheduler (as a `@group` suffix of the node id): if
    they silently did not, two workers would each start a local Ray."""
    if os.environ.get("PYTEST_XDIST_WORKER") and session.config.getvalue("loadgroup"):
        lost = [i.nodeid for i in session.items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
        if lost:
            raise pytest.UsageError(f"xdist groups were not applied ({len(lost)} tests, e.g. {lost[0]}): this "
                                    "pytest-xdist does not work with this pytest; install the versions in "
                                    "pyproject.toml's [test] extra")


@pytest.fixture(scope="session", autouse=True)
def _one_thread_per_worker():
    """xdist runs one worker per core: torch's default of a thread per core would oversubscribe them."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session: 2 CPUs, 8 logical GPUs (8-GPU trials schedule one at a
    time, CPU trials two at a time). Its own temp dir, so it never attaches to another cluster."""
    import ray

    if not ray.is_initialized():
        temp = tempfile.mkdtemp(prefix="pgray", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
        ray.init(address="local", num_cpus=2, num_gpus=8, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, _temp_dir=temp)
    yield ray
    ray.shutdown()


@pytest.fixture
def stop_session_ray():
    """For the `ray start` cluster test: make sure the session's local cluster is gone first."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    yield


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory):
    """An MLflow sqlite store migrated once (about 2.5 s); tests get copies of the file."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking_uri(_mlflow_template, tmp_path, monkeypatch):
    """A fresh sqlite tracking store for one test, also exported as $PGOLF_TRACKING_URI."""
    db = tmp_path / "mlflow.db"
    shutil.copyfile(_mlflow_template, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("PGOLF_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def data_root(demo_data, tmp_path_factory):
    """A data root whose `demo/` is the session's demo corpus (what `data = "demo"` experiments read)."""
    root = tmp_path_factory.mktemp("data_root")
    os.symlink(demo_data.root, root / "demo")
    return root


def pytest_terminal_summary(terminalreporter):
    """A skipped browser test is said loudly: the suite passing must not read as "the report renders"."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "test_report_browser" in r.nodeid]
    if skipped:
        terminalreporter.write_sep("!", f"NOT RUN: {len(skipped)} browser test(s) of tests/test_report_browser.py: "
                                        "no Chromium binary (apt-get install -y chromium)", red=True, bold=True)


@pytest.fixture
def one_torch_thread():
    """Dozens of tiny forwards/matmuls: intra-op threads only contend on a shared 2-core box (100x seen)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
