"""Hugging Face downloads for `localroute pull`: one GGUF file, or a vLLM model's snapshot in the hub
cache. Only asked when the hub is reachable; every failure becomes one line saying why."""

from __future__ import annotations

import os
import re
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

from localroute.config.models import HFSource
from localroute.errors import ModelUnavailableError
from localroute.host.files import FreeSpace, Note, check_space, forget, human, mismatch


def pull_hf(src: HFSource, target: Path, free_space: FreeSpace, note: Note) -> None:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ModelUnavailableError("huggingface-hub is missing: pip install huggingface-hub") from None
    # hf_hub_download(local_dir=...) writes <local_dir>/<file>, exactly config.model_path(), and
    # keeps its resumable .incomplete file under <local_dir>/.cache/huggingface.
    local_dir = Path(*target.parts[: len(target.parts) - len(PurePosixPath(src.file).parts)])
    local_dir.mkdir(parents=True, exist_ok=True)
    where = f"{src.repo}/{src.file}"
    try:
        size = src.size
        if size is None:  # one HEAD request
            size = hf_hub_download(
                src.repo, src.file, revision=src.revision, local_dir=local_dir, dry_run=True
            ).file_size
        if size is None:
            note("size unknown; skipping the free-space check")
        else:
            check_space(local_dir, size, free_space)
        got = Path(hf_hub_download(src.repo, src.file, revision=src.revision, local_dir=local_dir))
    except ModelUnavailableError:
        raise
    except Exception as exc:  # the hub client raises from several libraries; each becomes one line
        raise ModelUnavailableError(f"cannot download {where}: {_hf_reason(exc, src)}") from None
    if got.resolve() != target.resolve():
        os.replace(got, target)
    wrong = mismatch(target, src.sha256, src.size)
    if wrong is not None:
        forget(target)
        raise ModelUnavailableError(f"downloaded {where} but it failed verification ({wrong})")


def _hf_reason(exc: Exception, src: HFSource) -> str:
    from huggingface_hub import constants
    from huggingface_hub import errors as e

    if isinstance(exc, e.LocalEntryNotFoundError):
        if constants.is_offline_mode():
            return "Hugging Face is unreachable (offline; HF_HUB_OFFLINE=1 set)"
        return "Hugging Face is unreachable (check the network connection)"
    if isinstance(exc, e.GatedRepoError):
        return "the repository is gated: accept its terms on huggingface.co, then `hf auth login`"
    if isinstance(exc, e.RepositoryNotFoundError):
        return "repository not found (or private)"
    if isinstance(exc, e.RevisionNotFoundError):
        return f"revision {src.revision!r} not found"
    if isinstance(exc, e.EntryNotFoundError):
        return f"file {src.file!r} not found in the repository"
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


HF_REPO = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
# Formats vLLM does not load; a snapshot skips them, and PyTorch weights too when safetensors are there.
_NOT_FOR_VLLM = ("*.gguf", "*.onnx", "*.onnx_data", "onnx/*", "openvino/*", "coreml/*", "*.h5",
                 "*.msgpack", "*.tflite", "*.ot", "original/*")  # fmt: skip
_TORCH_WEIGHTS = ("*.bin", "*.pt", "*.pth")


def pull_snapshot(repo: str, free_space: FreeSpace, note: Note) -> tuple[Path, bool]:
    """`repo`'s snapshot in the hub cache: its folder, and whether anything had to be fetched."""
    try:
        from huggingface_hub import HfApi, constants, snapshot_download, try_to_load_from_cache
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:
        raise ModelUnavailableError("huggingface-hub is missing: pip install huggingface-hub") from None
    named = HFSource.model_construct(kind="hf", repo=repo, file="*", revision="main")  # for _hf_reason
    try:
        if constants.is_offline_mode():
            return Path(snapshot_download(repo, local_files_only=True)), False
        try:
            info = HfApi().model_info(repo, files_metadata=True)
        except Exception as exc:
            if isinstance(exc, HfHubHTTPError):
                raise
            # Unreachable: the cache may still hold it, else this says "unreachable" as the GGUF path does.
            return Path(snapshot_download(repo)), False
        sizes = {s.rfilename: s.size or 0 for s in info.siblings or ()}
        skip = _NOT_FOR_VLLM + (_TORCH_WEIGHTS if any(f.endswith(".safetensors") for f in sizes) else ())
        wanted = [f for f in sizes if not any(fnmatch(f, p) for p in skip)]
        missing = [f for f in wanted if not isinstance(try_to_load_from_cache(repo, f, info.sha), str)]
        need = sum(sizes[f] for f in missing)
        if missing:
            cache = Path(constants.HF_HUB_CACHE)
            cache.mkdir(parents=True, exist_ok=True)
            check_space(cache, need, free_space)
            note(f"downloading {len(missing)} file(s), {human(need)}, of {repo} from Hugging Face")
        return Path(snapshot_download(repo, allow_patterns=wanted)), bool(missing)
    except ModelUnavailableError:
        raise
    except Exception as exc:  # the hub client raises from several libraries; each becomes one line
        raise ModelUnavailableError(f"cannot download {repo}: {_hf_reason(exc, named)}") from None
