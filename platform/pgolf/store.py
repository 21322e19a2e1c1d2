"""The MLflow store: where it is (URI and artifact root), opening it, and writing params, tags and
metrics to it within MLflow's limits. pgolf.tracking builds runs on top of this and re-exports it."""
from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pgolf.trainers.config import ConfigError

ENV_TRACKING_URI = "PGOLF_TRACKING_URI"
DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"

# MLflow 3.17 limits (mlflow/utils/validation.py).
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000

_BAD_METRIC_CHARS = re.compile(r"[^\w.\- /:]")


# --------------------------------------------------------------------------------------------------
# where the store is


class TrackingError(ConfigError):
    """The tracking URI or store cannot be used; the CLI prints it on one line (exit 2)."""


_URI_FIX = (f"use sqlite:///ABSOLUTE/PATH/mlflow.db or an MLflow server (http://host:5000) via --tracking-uri "
            f"or ${ENV_TRACKING_URI}")


def _abs_sqlite(uri: str, cwd: str) -> str:
    """`sqlite:///rel.db` is relative to the working directory of whoever opens it; Ray trials run in
    their own directories, so every sqlite URI is made absolute once, on the driver."""
    path = uri[len("sqlite:///"):]
    if path.startswith("/"):
        return uri
    return "sqlite:///" + os.path.abspath(os.path.join(cwd, path))


def resolve_tracking_uri(cli_uri: str | None = None, cwd: str | None = None) -> tuple[str, str | None]:
    """(tracking URI, artifact root or None). Order: `--tracking-uri`, `$PGOLF_TRACKING_URI`, then
    `sqlite:///<abs cwd>/mlflow.db` with artifacts in `<abs cwd>/mlartifacts`.

    For a sqlite store the artifact root sits beside the database file, so a store can be moved or
    copied as one folder. For a server (http/https/databricks/postgres...) the server decides."""
    cwd = os.path.abspath(cwd or os.getcwd())
    uri = cli_uri or os.environ.get(ENV_TRACKING_URI) or ""
    if not uri:
        uri = "sqlite:///" + os.path.join(cwd, DB_NAME)
    if uri.startswith("sqlite:///"):
        uri = _abs_sqlite(uri, cwd)
        return uri, os.path.join(os.path.dirname(uri[len("sqlite:///"):]), ARTIFACTS_DIR)
    if uri.startswith("file:"):
        raise TrackingError(f"tracking URI {uri!r}: MLflow 3.17 refuses the file store (./mlruns); {_URI_FIX}")
    if uri != "databricks" and not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*://\S+", uri):
        raise TrackingError(f"tracking URI {uri!r} is not a URI (no scheme://); {_URI_FIX}")
    if uri.startswith("sqlite:"):
        raise TrackingError(f"tracking URI {uri!r}: a sqlite store needs three slashes and a path, "
                            f"sqlite:///ABSOLUTE/PATH/mlflow.db")
    return uri, None


def check_writable_store(uri: str) -> None:
    """A sqlite store must be a writable file in a writable folder; said before MLflow's own
    traceback (`unable to open database file`) would be."""
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri[len("sqlite:///"):])
    folder = db.parent
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise TrackingError(f"MLflow store {db}: the folder {folder} {what}; create it or pass another "
                            f"--tracking-uri")
    if db.exists() and not db.is_file():
        raise TrackingError(f"MLflow store {db} is not a file; pass --tracking-uri sqlite:///PATH/mlflow.db")
    if not os.access(folder, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
        raise TrackingError(f"MLflow store {db} is not writable; fix its permissions or pass another "
                            f"--tracking-uri")


def client(uri: str):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri)


def get_or_create_experiment(uri: str, name: str, artifact_root: str | None) -> str:
    """Experiment id for `name`, created with an explicit artifact location. Called once on the driver
    before any trial starts: concurrent first use of a fresh sqlite DB races on schema migration and
    experiment creation (mlflow#4123)."""
    from mlflow.exceptions import MlflowException

    check_writable_store(uri)
    try:
        c = client(uri)
        exp = c.get_experiment_by_name(name)
    except Exception as exc:  # noqa: BLE001 - sqlalchemy's errors for a damaged file are not MlflowException
        if not uri.startswith("sqlite:///"):
            raise
        raise TrackingError(f"MLflow store {uri[len('sqlite:///'):]} cannot be opened "
                            f"({str(exc).splitlines()[0][:200]}); is it a sqlite file MLflow wrote?") from None
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise ValueError(f"MLflow experiment {name!r} is deleted in {uri}; restore it "
                             f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or rename [experiment] name")
        return exp.experiment_id
    location = None
    if artifact_root:
        location = Path(artifact_root, _safe_dir(name)).resolve().as_uri()
    try:
        return c.create_experiment(name, artifact_location=location)
    except MlflowException:
        exp = c.get_experiment_by_name(name)  # another driver created it in between
        if exp is None:
            raise
        return exp.experiment_id


def _safe_dir(name: str) -> str:
    return re.sub(r"[^\w.\-]+", "_", name).strip("._") or "experiment"


def metric_key(name: str) -> str:
    """A string MLflow accepts as a metric key (variant names such as `muon_wd=0.02` are not)."""
    key = _BAD_METRIC_CHARS.sub("_", name)
    return key.replace("..", "_").strip("/") or "_"


# --------------------------------------------------------------------------------------------------
# batching within MLflow's limits


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    return None


def _chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def log_params(c, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(str(k)[:250], _clip(_as_text(v), MAX_PARAM_VALUE)) for k, v in params.items()]
    for chunk in _chunks(items, MAX_PARAMS_PER_BATCH):
        c.log_batch(run_id, params=chunk)


def set_tags(c, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(str(k)[:250], _clip(_as_text(v), MAX_TAG_VALUE)) for k, v in tags.items()]
    for chunk in _chunks(items, MAX_PARAMS_PER_BATCH):
        c.log_batch(run_id, tags=chunk)


def log_metrics(c, run_id: str, metrics: Iterable[tuple[str, Any, int]], timestamp_ms: int | None = None) -> int:
    """Log (key, value, step) triples; non-numeric and non-finite values are skipped (MLflow rejects NaN
    in some stores and the UI cannot plot it). Returns how many were logged."""
    from mlflow.entities import Metric

    ts = timestamp_ms or int(time.time() * 1000)
    items = []
    for key, value, step in metrics:
        v = _num(value)
        if v is not None:
            items.append(Metric(metric_key(key), v, ts, int(step)))
    for chunk in _chunks(items, MAX_METRICS_PER_BATCH):
        c.log_batch(run_id, metrics=chunk)
    return len(items)


def _as_text(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, sort_keys=True, default=str)
    return str(v)


def _clip(text: str, n: int) -> str:
    marker = "...[truncated]"
    return text if len(text) <= n else text[: n - len(marker)] + marker
