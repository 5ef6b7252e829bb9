"""GGUF files: a bounded reader for their metadata (what the footprint estimate needs), and their
structure checked in our own code before llama.cpp's C++ parser is given one.

A model file comes from outside (a hub, a registry, a path an operator typed), and llama.cpp's GGUF
reader has had heap overflows from crafted counts and lengths. `check` walks the whole header with
every count and length bounded by the bytes left in the file, so nothing is allocated or looped over
on a header's word alone; `verify` runs it in a child process under a timeout and a memory cap, so a
hostile file can neither hang nor crash the gateway. Run by hand: `python -m localroute.host.gguf FILE`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import struct
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from localroute.errors import InvalidModelFileError, ModelCheckInconclusiveError

# -- reading ---------------------------------------------------------------------------------

# GGUF value types: the scalars' struct formats, then the two compound types.
GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
GGUF_STRING, GGUF_ARRAY = 8, 9
MetaValue = int | float | bool | str


class GGUFReader:
    """Reads a GGUF file from its current position, never past `limit` bytes nor past its end: a
    length or count that would go beyond either raises EOFError before anything is read or allocated."""

    def __init__(self, fh: BinaryIO, limit: int) -> None:
        self.fh, self.left = fh, limit
        self.offset = fh.tell()
        self.in_file = os.fstat(fh.fileno()).st_size - self.offset

    def _take(self, n: int) -> None:
        if n > self.left:
            raise EOFError("GGUF header larger than the read limit")
        if n > self.in_file:
            left = self.in_file
            raise EOFError(f"truncated GGUF file: {n} bytes needed at offset {self.offset}, {left} left")
        self.left -= n
        self.in_file -= n
        self.offset += n

    def read(self, n: int) -> bytes:
        self._take(n)
        data = self.fh.read(n)
        if len(data) != n:  # the file shrank under us
            raise EOFError("truncated GGUF file")
        return data

    def skip(self, n: int) -> None:
        self._take(n)
        self.fh.seek(n, 1)

    def unpack(self, fmt: str) -> int | float | bool:
        value: int | float | bool = struct.unpack("<" + fmt, self.read(struct.calcsize(fmt)))[0]
        return value

    def string(self) -> str:
        return self.read(int(self.unpack("Q"))).decode("utf-8", "replace")

    def skip_array(self, kind: int, count: int) -> None:
        if kind == GGUF_STRING:
            if count * 8 > self.in_file:  # each element is at least its 8-byte length
                raise EOFError(f"truncated GGUF file: an array of {count} strings at offset {self.offset}")
            for _ in range(count):
                self.skip(int(self.unpack("Q")))
        elif kind in GGUF_SCALARS:
            self.skip(count * struct.calcsize(GGUF_SCALARS[kind]))
        else:  # nested arrays: no model metadata is shaped like that, and llama.cpp refuses them
            raise ValueError(f"unsupported GGUF array of type {kind}")


def read_gguf_metadata(path: Path, limit: int = 4 << 20) -> dict[str, MetaValue]:
    """Scalar and string metadata of a GGUF file (arrays are skipped; for an array only its length is
    kept, as `<key>.length`). Reads at most `limit` bytes, and stops early once the architecture's
    shape keys and the vocabulary size are known. Raises ValueError on anything that is not GGUF."""
    meta: dict[str, MetaValue] = {}
    with open(path, "rb") as fh:
        r = GGUFReader(fh, limit)
        try:
            if r.read(4) != b"GGUF":
                raise ValueError("not a GGUF file (bad magic)")
            version = int(r.unpack("I"))
            if version not in (2, 3):
                raise ValueError(f"unsupported GGUF version {version}")
            r.unpack("Q")  # tensor count
            n_kv = int(r.unpack("Q"))
            for _ in range(n_kv):
                key, kind = r.string(), int(r.unpack("I"))
                if kind == GGUF_STRING:
                    meta[key] = r.string()
                elif kind == GGUF_ARRAY:
                    inner, count = int(r.unpack("I")), int(r.unpack("Q"))
                    meta[key + ".length"] = count
                    if _complete(meta):
                        break
                    r.skip_array(inner, count)
                elif kind in GGUF_SCALARS:
                    meta[key] = r.unpack(GGUF_SCALARS[kind])
                else:
                    raise ValueError(f"unknown GGUF value type {kind}")
                if _complete(meta):
                    break
        except (EOFError, struct.error) as exc:
            if not _has_shape(meta):  # past the limit, but what the estimate needs is already here
                raise ValueError(f"unreadable GGUF header: {exc}") from None
    return meta


def _has_shape(meta: dict[str, MetaValue]) -> bool:
    arch = meta.get("general.architecture")
    keys = ("block_count", "embedding_length", "attention.head_count")
    return isinstance(arch, str) and all(f"{arch}.{k}" in meta for k in keys)


def _complete(meta: dict[str, MetaValue]) -> bool:
    arch = meta.get("general.architecture")
    vocab = f"{arch}.vocab_size" in meta or "tokenizer.ggml.tokens.length" in meta
    return vocab and _has_shape(meta) and f"{arch}.attention.head_count_kv" in meta


# -- checking ---------------------------------------------------------------------------------------

# (elements per block, bytes per block) of each tensor type, as ggml_blck_size / ggml_type_size of the
# pinned llama-cpp-python 0.3.36 report them. Ids 4, 5, 31-33 and 36-38 were removed from ggml.
GGML_TYPES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110),
    22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
    29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17), 40: (64, 36),
    41: (128, 18), 42: (64, 18),
}  # fmt: skip

# Far above any real model (tens of keys, a few thousand tensors, vocabularies of ~262k tokens) and
# far below what would take the checker, or llama.cpp after it, seconds or gigabytes to walk.
MAX_KV = 1 << 16
MAX_TENSORS = 1 << 16
MAX_ARRAY = 1 << 22
MAX_KEY = 1 << 10
MAX_NAME = 63  # GGML_MAX_NAME less its NUL
MAX_DIMS = 4
DEFAULT_ALIGNMENT = 32
CHECK_TIMEOUT_S = 10.0
MEMORY_CAP = 1 << 30
# The smallest encodings: a key (8-byte length, 1 byte), its type and a 1-byte value; a tensor's name,
# n_dims (0), type and offset. A count times these that the file cannot hold is a lie.
_MIN_KV = 8 + 1 + 4 + 1
_MIN_TENSOR = 8 + 1 + 4 + 4 + 8
_INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True)
class GGUFSummary:
    version: int
    kv: int
    tensors: int
    architecture: str | None
    data_offset: int
    data_bytes: int


def check(path: Path) -> GGUFSummary:
    """Walk `path`'s whole GGUF header and tensor table. Raises InvalidModelFileError saying what is
    wrong and where (never the path)."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            return _walk(GGUFReader(fh, sys.maxsize), size)
    except (EOFError, ValueError) as exc:  # the reader's bounds, bad UTF-8, unknown array types
        raise InvalidModelFileError(str(exc)) from None
    except OSError as exc:  # str(exc) would carry the path
        raise InvalidModelFileError(f"cannot read the file: {exc.strerror or type(exc).__name__}") from None


def _show(text: str) -> str:
    """A name from the file, quoted and cut short: it may hold anything."""
    return repr(text[:64] + ("..." if len(text) > 64 else ""))


def _text(r: GGUFReader, what: str, limit: int | None = None) -> str:
    n = int(r.unpack("Q"))
    if n > r.in_file:
        raise InvalidModelFileError(f"{what} claims {n} bytes, but the file has {r.in_file} left")
    if limit is not None and n > limit:
        raise InvalidModelFileError(f"{what} is {n} bytes long (at most {limit})")
    try:
        return r.read(n).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidModelFileError(f"{what} is not UTF-8") from None


def _walk(r: GGUFReader, size: int) -> GGUFSummary:
    if r.read(4) != b"GGUF":
        raise InvalidModelFileError("not a GGUF file (bad magic)")
    version = int(r.unpack("I"))
    if version not in (2, 3):
        raise InvalidModelFileError(f"unsupported GGUF version {version}")
    n_tensors, n_kv = int(r.unpack("Q")), int(r.unpack("Q"))
    if n_tensors > MAX_TENSORS or n_tensors * _MIN_TENSOR > r.in_file:
        raise InvalidModelFileError(f"tensor count {n_tensors} is more than the file can hold")
    if n_kv > MAX_KV or n_kv * _MIN_KV + n_tensors * _MIN_TENSOR > r.in_file:
        raise InvalidModelFileError(f"metadata count {n_kv} is more than the file can hold")
    alignment, arch = DEFAULT_ALIGNMENT, None
    keys: set[str] = set()
    for i in range(n_kv):
        key = _text(r, f"metadata key #{i}", MAX_KEY)
        if key in keys:
            raise InvalidModelFileError(f"metadata key {_show(key)} appears twice")
        keys.add(key)
        where = f"metadata {_show(key)}"
        kind = int(r.unpack("I"))
        if kind == GGUF_STRING:
            value: object = _text(r, where)
        elif kind == GGUF_ARRAY:
            inner, count = int(r.unpack("I")), int(r.unpack("Q"))
            if inner not in GGUF_SCALARS and inner != GGUF_STRING:
                raise InvalidModelFileError(f"{where} is an array of unknown or nested type {inner}")
            if count > MAX_ARRAY:
                raise InvalidModelFileError(f"{where} is an array of {count} items (at most {MAX_ARRAY})")
            r.skip_array(inner, count)
            value = None
        elif kind in GGUF_SCALARS:
            value = r.unpack(GGUF_SCALARS[kind])
        else:
            raise InvalidModelFileError(f"{where} has unknown value type {kind}")
        if key == "general.alignment":
            if kind != 4 or not isinstance(value, int) or value <= 0 or value & (value - 1):
                raise InvalidModelFileError("general.alignment is not a power of two (uint32)")
            alignment = value
        elif key == "general.architecture" and isinstance(value, str):
            arch = value
    spans = [_tensor(r, i, alignment) for i in range(n_tensors)]
    if len({name for name, _, _ in spans}) != len(spans):
        raise InvalidModelFileError("two tensors have the same name")
    data_offset = -(-r.offset // alignment) * alignment
    room = size - data_offset
    end = 0
    for name, offset, nbytes in sorted(spans, key=lambda s: s[1]):
        if offset < end:
            raise InvalidModelFileError(f"tensor {_show(name)} overlaps the one before it")
        end = offset + nbytes
        if end > room:
            raise InvalidModelFileError(
                f"tensor {_show(name)} ends {end - room} bytes past the end of the file"
            )
    return GGUFSummary(version, n_kv, n_tensors, arch, data_offset, end)


def _tensor(r: GGUFReader, i: int, alignment: int) -> tuple[str, int, int]:
    """(name, offset in the data section, bytes) of tensor #i, its shape and type checked."""
    name = _text(r, f"tensor #{i}'s name", MAX_NAME)
    if not name:
        raise InvalidModelFileError(f"tensor #{i} has an empty name")
    where = f"tensor {_show(name)}"
    n_dims = int(r.unpack("I"))
    if n_dims > MAX_DIMS:
        raise InvalidModelFileError(f"{where} has {n_dims} dimensions (at most {MAX_DIMS})")
    dims = [int(r.unpack("Q")) for _ in range(n_dims)]
    kind, offset = int(r.unpack("I")), int(r.unpack("Q"))
    if kind not in GGML_TYPES:
        raise InvalidModelFileError(f"{where} has unknown tensor type {kind}")
    elements = 1
    for d in dims:
        elements *= d
        if d > _INT64_MAX or elements > _INT64_MAX:
            raise InvalidModelFileError(f"{where} has more elements than fit in 64 bits")
    block, block_bytes = GGML_TYPES[kind]
    if dims and dims[0] % block:
        raise InvalidModelFileError(f"{where}: a row of {dims[0]} is not whole blocks of {block}")
    if offset % alignment:
        raise InvalidModelFileError(f"{where}'s data offset {offset} is not aligned to {alignment}")
    return name, offset, elements // block * block_bytes


async def verify(path: Path, limit_s: float = CHECK_TIMEOUT_S, pass_fds: tuple[int, ...] = ()) -> GGUFSummary:
    """`check` in a child process (`python -m localroute.host.gguf`), killed after `limit_s` seconds.
    `pass_fds`: an open file the child reads as `/proc/self/fd/N`. Raises InvalidModelFileError: the
    file's problem, or that the check hung or died."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "localroute.host.gguf", str(path),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        pass_fds=pass_fds,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit_s)
    except TimeoutError:
        raise ModelCheckInconclusiveError(f"the file check did not finish in {limit_s:g}s") from None
    finally:
        if proc.returncode is None:  # timed out or cancelled: the checker must not outlive us
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(proc.wait())
    rc = proc.returncode
    assert rc is not None
    if rc < 0:
        raise ModelCheckInconclusiveError(f"the file check was killed by {signal.Signals(-rc).name}")
    try:
        answer = json.loads(out.decode("utf-8").strip().splitlines()[-1])
        if rc == 0:
            return GGUFSummary(**answer["ok"])
        reason = str(answer["error"])
    except (ValueError, IndexError, KeyError, TypeError):
        raise ModelCheckInconclusiveError(f"the file check gave no answer (exit status {rc})") from None
    raise InvalidModelFileError(reason)


def _cap_self() -> None:
    """Memory and CPU limits on this (the checker's) process, where the platform has them."""
    try:
        import resource
    except ImportError:
        return
    for which, soft in ((resource.RLIMIT_AS, MEMORY_CAP), (resource.RLIMIT_CPU, int(CHECK_TIMEOUT_S) + 2)):
        hard = resource.getrlimit(which)[1]
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(which, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def main(argv: list[str] | None = None) -> int:
    """Print one JSON line, {"ok": summary} (exit 0) or {"error": reason} (exit 1)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m localroute.host.gguf FILE.gguf", file=sys.stderr)
        return 2
    _cap_self()
    try:
        summary = check(Path(args[0]))
    except InvalidModelFileError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    except MemoryError:
        print(json.dumps({"error": f"the header needs more than {MEMORY_CAP >> 20} MiB to check"}))
        return 1
    print(json.dumps({"ok": asdict(summary)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
