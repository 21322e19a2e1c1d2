"""The official FineWeb shards + tokenizer from the Hugging Face hub, driven by the export's manifest.json
(sp1024 from the challenge's repo, sp4096/sp8192 from the repo of the #1218/#1394 exports, sp8192_caseops
from the repo of the #1729 CaseOps export, with its val byte sidecars)."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pgolf.datacommon import DEMO_KIND, MANIFEST_NAME, DataError, PathLike, Progress, _read_manifest, _say, default_data_dir

FINEWEB_REPO_ID = "willdepueoai/parameter-golf"
# The SP4096/SP8192 exports (#1218, #1394) live in another dataset repo, same layout (techniques.md 2.2).
FINEWEB_VARIANT_REPOS = {"sp4096": "kevclark/parameter-golf", "sp8192": "kevclark/parameter-golf",
                         # the CaseOps export of #1729 (README of records/.../2026-04-18_PR1626_CaseOps_Taper)
                         "sp8192_caseops": "romeerp/parameter-golf-caseops-v1"}
FINEWEB_VARIANTS = ("sp1024", "sp4096", "sp8192", "sp8192_caseops")  # data.variant values with a published export


def variant_repo(variant: str) -> str:
    return FINEWEB_VARIANT_REPOS.get(variant, FINEWEB_REPO_ID)
FINEWEB_REMOTE_ROOT = "datasets"


@dataclass(frozen=True)
class FinewebDownload:
    root: Path
    data_path: Path
    tokenizer_path: Path
    val_files: list[Path]
    train_files: list[Path]
    manifest: dict[str, Any] = field(repr=False)
    val_bytes_files: list[Path] = field(default_factory=list)  # CaseOps: the val byte sidecars


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else "(no message)"


def _looks_like_network_error(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    # httpx / requests transport errors do not all derive from OSError
    names = {c.__name__ for c in type(exc).__mro__}
    return any(k in n for n in names for k in ("Connect", "Timeout", "Network", "Transport", "Proxy"))


def _unreachable_message(repo_id: str, endpoint: str | None, exc: BaseException) -> str:
    where = endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"} else ""
    return (
        f"could not reach the Hugging Face hub at {where}{offline} to download dataset {repo_id}: "
        f"{type(exc).__name__}: {_first_line(exc)}. Check the network / proxy "
        "settings and HF_ENDPOINT, or use `pgolf data demo` for the offline demo corpus"
    )


def _classify_fetch_error(exc: BaseException, repo_path: str, repo_id: str, endpoint: str | None) -> DataError:
    try:
        from huggingface_hub import errors as hf_errors
    except Exception:  # pragma: no cover - huggingface_hub is a dependency
        hf_errors = None
    if hf_errors is not None:
        if isinstance(exc, (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled)):
            return DataError(_unreachable_message(repo_id, endpoint, exc))
        if isinstance(exc, hf_errors.RepositoryNotFoundError):
            return DataError(
                f"dataset repo {repo_id} was not found on the hub (or needs a token); check repo_id / HF_TOKEN"
            )
        if isinstance(exc, hf_errors.EntryNotFoundError):
            return DataError(f"{repo_path} is not in dataset {repo_id}; its manifest.json lists a file the repo lacks")
        if isinstance(exc, hf_errors.HfHubHTTPError):
            return DataError(f"the hub refused {repo_path} from {repo_id}: {_first_line(exc)}")
    if isinstance(exc, FileNotFoundError):
        return DataError(f"{repo_path} is not in the data source for {repo_id}: {exc}")
    if _looks_like_network_error(exc):
        return DataError(_unreachable_message(repo_id, endpoint, exc))
    return DataError(f"fetching {repo_path} from {repo_id} failed: {type(exc).__name__}: {_first_line(exc)}")


def _probe_hub(repo_id: str, endpoint: str, timeout: float) -> None:
    # hf_hub_download retries a refused connection five times with backoff (~25 s) before failing;
    # one quick request first turns "no network" into an immediate, clear error.
    url = f"{endpoint.rstrip('/')}/api/datasets/{repo_id}"
    try:
        from huggingface_hub.utils import get_session

        get_session().head(url, timeout=timeout)
    except ImportError:  # pragma: no cover - older huggingface_hub
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
        except urllib.error.HTTPError:
            pass  # any HTTP answer means the hub is reachable
        except Exception as exc:
            raise DataError(_unreachable_message(repo_id, endpoint, exc)) from exc
    except Exception as exc:
        raise DataError(_unreachable_message(repo_id, endpoint, exc)) from exc


def _is_valid_shard(path: Path) -> bool:
    from pgolf.trainers.shards import HEADER_BYTES, ShardError, read_header

    try:
        n = int(read_header(path)[2])
    except ShardError:
        return False
    return path.stat().st_size == HEADER_BYTES + 2 * n


def download_fineweb(
    variant: str = "sp1024",
    train_shards: int = 80,
    out_dir: PathLike | None = None,
    repo_id: str = FINEWEB_REPO_ID,
    hub: str | None = None,
    *,
    fetch: Callable[[str], PathLike] | None = None,
    remote_root: str = FINEWEB_REMOTE_ROOT,
    progress: Progress = print,
) -> FinewebDownload:
    """Download the official shards + tokenizer for `variant`, driven by the export's manifest.json.

    Hub layout (dataset repo `repo_id`, under `remote_root`, as the challenge's
    data/cached_challenge_fineweb.py reads it): `manifest.json`, `datasets/fineweb10B_<variant>/
    fineweb_{val,train}_NNNNNN.bin`, `tokenizers/<files>`. The manifest's `datasets` entry gives the
    shard counts (`stats.files_val`, `stats.files_train`) and the tokenizer name; its `tokenizers`
    entry gives the tokenizer files (`model_path`, `vocab_path`, `path`, relative to the root).
    All val shards and the first `train_shards` train shards are fetched; files already present and
    intact are kept, so an interrupted download resumes.

    `hub` is the hub endpoint URL (default: $HF_ENDPOINT, else huggingface.co). `fetch`, when given,
    replaces the hub: it maps a repo path such as "datasets/manifest.json" to a local file (tests
    use a local directory with the hub layout).
    """
    root = Path(out_dir).resolve() if out_dir is not None else default_data_dir()
    if train_shards < 0:
        raise DataError(f"train_shards must be >= 0, got {train_shards}")
    from pgolf.trainers.config.data import VARIANTS, variant_layout
    from pgolf.trainers.shards import SIDECAR_PREFIX

    if variant not in FINEWEB_VARIANTS:
        raise DataError(f"variant {variant!r} has no published FineWeb export; expected one of {', '.join(FINEWEB_VARIANTS)}"
                        + (" (sp1024_caseops exists as `pgolf data demo --variant sp1024_caseops` only)"
                           if variant in VARIANTS else ""))
    dataset_name = variant_layout(variant)[0]
    caseops = VARIANTS[variant][1]
    prefix = remote_root.strip("/")

    def remote(rel: str) -> str:
        return f"{prefix}/{rel}" if prefix else rel

    staging = root / ".hf-download"
    endpoint = hub or os.environ.get("HF_ENDPOINT") or None

    def prefetch(repo_paths: list[str]) -> None:
        """Test stand-ins fetch file by file; the hub is asked once for the whole set."""

    if fetch is None:
        try:
            from huggingface_hub import hf_hub_download, snapshot_download
        except ImportError as exc:
            raise DataError("huggingface_hub is not installed; `pip install huggingface_hub` to download FineWeb") from exc
        # Read at call time: huggingface_hub reads these variables once, at its import.
        etag_timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or 10)
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
        if not offline:
            _probe_hub(repo_id, endpoint or "https://huggingface.co", etag_timeout)

        def prefetch(repo_paths: list[str]) -> None:  # noqa: F811 - the hub implementation
            # One snapshot call for every wanted file (parallel workers, one listing of the repo);
            # `fetch` below then finds them staged.
            if not repo_paths:
                return
            try:
                snapshot_download(repo_id, repo_type="dataset", allow_patterns=repo_paths, local_dir=staging,
                                  endpoint=endpoint, etag_timeout=etag_timeout)
            except Exception as exc:
                raise _classify_fetch_error(exc, repo_paths[0], repo_id, endpoint) from exc
            absent = [p for p in repo_paths if not (staging / p).is_file()]
            if absent:
                raise DataError(f"{absent[0]} is not in dataset {repo_id}; its manifest.json lists a file the repo lacks")

        def fetch(repo_path: str) -> PathLike:  # noqa: F811 - the default implementation
            staged = staging / repo_path
            if staged.is_file():
                return staged
            parent, _, name = repo_path.rpartition("/")
            return hf_hub_download(
                repo_id,
                name,
                subfolder=parent or None,
                repo_type="dataset",
                local_dir=staging,
                endpoint=endpoint,
                etag_timeout=etag_timeout,
            )

    def get(repo_path: str, dest: Path) -> Path:
        _say(progress, f"  fetching {repo_path}")
        try:
            src = Path(fetch(repo_path))
        except DataError:
            raise
        except Exception as exc:
            raise _classify_fetch_error(exc, repo_path, repo_id, endpoint) from exc
        if not src.is_file():
            raise DataError(f"fetching {repo_path} from {repo_id} produced no file (got {src})")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part{os.getpid()}")
        try:
            if staging in src.resolve().parents:
                os.replace(src, tmp)  # our own staging copy: move, no second copy of a 200 MB shard
            else:
                shutil.copyfile(src, tmp)  # someone else's file (hub cache, a test stand-in): copy
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                tmp.unlink()
        return dest

    _say(progress, f"downloading {dataset_name} from {repo_id} into {root}")
    try:
        existing = _read_manifest(root)
    except DataError:
        existing = None  # replaced by the download below
    if existing is not None and existing.get("kind") == DEMO_KIND:
        # The demo uses the same file names; leaving any of them would mix demo shards into FineWeb.
        _say(progress, f"  replacing the demo corpus in {root}")
        for rel in existing.get("files", {}):
            (root / rel).unlink(missing_ok=True)
        (root / MANIFEST_NAME).unlink()

    try:
        manifest_path = get(remote("manifest.json"), root / MANIFEST_NAME)
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise DataError(f"{manifest_path}: the downloaded manifest is not valid JSON ({exc})") from exc
        entry = next((d for d in manifest.get("datasets", []) if d.get("name") == dataset_name), None)
        if entry is None:
            names = sorted(str(d.get("name")) for d in manifest.get("datasets", []))
            raise DataError(f"{manifest_path}: no dataset {dataset_name!r} (variant {variant!r}); available: {names}")
        stats = entry.get("stats") or {}
        try:
            n_train, n_val = int(stats["files_train"]), int(stats["files_val"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{manifest_path}: dataset {dataset_name} lacks stats.files_train / stats.files_val") from exc
        if train_shards > n_train:
            raise DataError(f"{dataset_name} has {n_train} train shards on {repo_id}; requested {train_shards}")
        tok_name = entry.get("tokenizer_name")
        tok = next((t for t in manifest.get("tokenizers", []) if t.get("name") == tok_name), None)
        if tok is None:
            raise DataError(f"{manifest_path}: tokenizer {tok_name!r} of dataset {dataset_name} is not listed")
        tok_files = [str(tok[k]) for k in ("model_path", "vocab_path", "path") if tok.get(k)]
        if not tok_files:
            raise DataError(f"{manifest_path}: tokenizer {tok_name!r} lists no files (model_path/vocab_path/path)")

        # always re-fetched (small): a kept file could be another export's tokenizer of the same name
        data_dir = root / "datasets" / dataset_name
        names = [f"fineweb_val_{i:06d}.bin" for i in range(n_val)] + [
            f"fineweb_train_{i:06d}.bin" for i in range(train_shards)
        ]
        if caseops:  # BPB is counted from these: one byte sidecar per val shard
            names += [f"{SIDECAR_PREFIX}{i:06d}.bin" for i in range(n_val)]
        missing = [n for n in names if not ((data_dir / n).is_file() and _is_valid_shard(data_dir / n))]
        prefetch([remote(rel) for rel in tok_files] + [remote(f"datasets/{dataset_name}/{n}") for n in missing])
        local_tok = [get(remote(rel), root / rel) for rel in tok_files]
        for name in names:
            dest = data_dir / name
            if dest.is_file() and _is_valid_shard(dest):
                continue
            get(remote(f"datasets/{dataset_name}/{name}"), dest)
            if not _is_valid_shard(dest):
                raise DataError(f"{dest}: downloaded shard is malformed (bad header or size); delete it and retry")
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    model = next((p for p in local_tok if p.suffix == ".model"), local_tok[0])
    if model.suffix == ".model":
        from pgolf.trainers.bpb import check_tokenizer, load_tokenizer

        check_tokenizer(load_tokenizer(model), model_path=model)
    _say(progress, f"  done: {n_val} val + {train_shards} train shards in {data_dir}")
    return FinewebDownload(
        root=root,
        data_path=data_dir,
        tokenizer_path=model,
        val_files=[data_dir / n for n in names if n.startswith("fineweb_val_") and not n.startswith(SIDECAR_PREFIX)],
        train_files=[data_dir / n for n in names if "_train_" in n],
        manifest=manifest,
        val_bytes_files=[data_dir / n for n in names if n.startswith(SIDECAR_PREFIX)],
    )
