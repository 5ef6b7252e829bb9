"""Model files on disk: verified by size and sha256 (cached in a `<file>.sha256` sidecar keyed on size
and mtime), and never written without the free space for them."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import psutil

from localroute.errors import ModelUnavailableError

FreeSpace = Callable[[Path], int]
"""Bytes free on the filesystem holding a folder (injectable so tests can run out of disk)."""
Note = Callable[[str], None]

_MARGIN = 1.10


def disk_free(path: Path) -> int:
    """Free bytes on the filesystem that holds `path` (which must exist)."""
    return int(psutil.disk_usage(str(path)).free)


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def mismatch(path: Path, sha256: str | None, size: int | None) -> str | None:
    """Why the file at `path` is not the expected one ("missing", size or hash), or None."""
    if not path.is_file():
        return "missing"
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"size is {actual} bytes, expected {size}"
    if sha256 is not None and sha256_of(path) != sha256:
        return "sha256 does not match"
    return None


def sha256_of(path: Path) -> str:
    """The file's sha256, from the `<file>.sha256` sidecar when its size and mtime still match."""
    st = path.stat()
    key = f"{st.st_size} {st.st_mtime_ns}"
    try:
        digest, _, cached_key = sidecar(path).read_text(encoding="ascii").strip().partition(" ")
    except (OSError, UnicodeDecodeError):
        digest, cached_key = "", ""
    if cached_key == key and len(digest) == 64:
        return digest
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    remember(path, digest)
    return digest


def remember(path: Path, digest: str) -> None:
    st = path.stat()
    try:
        sidecar(path).write_text(f"{digest} {st.st_size} {st.st_mtime_ns}\n", encoding="ascii")
    except OSError:
        pass  # a read-only models folder only costs a re-hash on the next run


def forget(path: Path) -> None:
    path.unlink(missing_ok=True)
    sidecar(path).unlink(missing_ok=True)


def check_space(folder: Path, size: int, free_space: FreeSpace) -> None:
    need, free = int(size * _MARGIN), free_space(folder)
    if free < need:
        raise ModelUnavailableError(
            f"not enough disk space in {folder}: needs {human(need)} (size + 10%), {human(free)} free"
        )


def human(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"
