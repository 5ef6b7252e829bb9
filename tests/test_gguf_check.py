"""Model files from outside: the GGUF structural check (in a child process, under a timeout) passes the
real model and refuses crafted ones with a clear reason, a gateway refuses to load a bad file without
naming its path, and a chat template carried by a GGUF renders only inside jinja2's sandbox."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from localroute.errors import InvalidModelFileError
from localroute.host.gguf import (
    CHECK_TIMEOUT_S,
    GGUF_ARRAY,
    GGUF_SCALARS,
    GGUF_STRING,
    MAX_ARRAY,
    GGUFReader,
    check,
    verify,
)
from tests.conftest import (
    ROOT,
    Server,
    answering,
    config_text,
    pid_alive,
    start_gateway,
    wait_until,
)

# -- building GGUF files -------------------------------------------------------------------------


def s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str | bytes, kind: int, value: bytes) -> bytes:
    return s(key) + struct.pack("<I", kind) + value


def tensor(name: str | bytes, dims: list[int], kind: int = 0, offset: int = 0) -> bytes:
    return s(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, kind, offset)


ARCH = kv("general.architecture", GGUF_STRING, s("llama"))
F32_32 = tensor("t", [32])  # 128 bytes of f32


def gguf(
    kvs: list[bytes] = [ARCH],  # noqa: B006 (never mutated)
    tensors: list[bytes] = [F32_32],  # noqa: B006
    data: int = 128,
    *,
    version: int = 3,
    magic: bytes = b"GGUF",
    n_kv: int | None = None,
    n_tensors: int | None = None,
) -> bytes:
    head = magic + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                               len(kvs) if n_kv is None else n_kv)  # fmt: skip
    out = head + b"".join(kvs) + b"".join(tensors)
    return out + b"\0" * (-len(out) % 32) + b"\x01" * data


def write(tmp: Path, data: bytes) -> Path:
    path = tmp / "model.gguf"
    path.write_bytes(data)
    return path


# -- the check ------------------------------------------------------------------------------------


def test_the_real_model_passes(smollm2: Path) -> None:
    summary = check(smollm2)
    assert (summary.version, summary.kv, summary.tensors, summary.architecture) == (3, 33, 272, "llama")
    assert summary.data_offset % 32 == 0
    assert summary.data_offset + summary.data_bytes == smollm2.stat().st_size  # every byte accounted for


def test_a_minimal_built_file_passes(tmp_path: Path) -> None:
    summary = check(write(tmp_path, gguf()))
    assert (summary.kv, summary.tensors, summary.data_bytes) == (1, 1, 128)


HUGE = 1 << 60
U8 = struct.pack("<I", 0)
CRAFTED = [
    pytest.param(gguf(magic=b"GGML"), "not a GGUF file (bad magic)", id="wrong-magic"),
    pytest.param(gguf(version=99), "unsupported GGUF version 99", id="version-99"),
    pytest.param(gguf(version=1), "unsupported GGUF version 1", id="version-1"),
    pytest.param(gguf(n_tensors=1 << 63), f"tensor count {1 << 63} is more than", id="tensor-count-2^63"),
    pytest.param(gguf(n_tensors=100_000), "tensor count 100000 is more than", id="tensor-count-100k"),
    # A reader that loops `n_kv` times, or allocates a slot per key up front, never ends.
    pytest.param(
        gguf(n_kv=(1 << 64) - 1), f"metadata count {(1 << 64) - 1} is more than", id="kv-count-2^64"
    ),
    pytest.param(
        gguf([struct.pack("<Q", 1 << 62)]), f"metadata key #0 claims {1 << 62} bytes", id="key-length-4EiB"
    ),
    pytest.param(
        gguf([kv("general.name", GGUF_STRING, struct.pack("<Q", 10**9) + b"x")]),
        "metadata 'general.name' claims 1000000000 bytes, but the file has",
        id="string-longer-than-file",
    ),
    pytest.param(
        gguf([kv("k" * 2000, 4, U8)]), "metadata key #0 is 2000 bytes long (at most 1024)", id="key-2000"
    ),
    pytest.param(gguf([kv(b"\xff\xfe", 4, U8)]), "metadata key #0 is not UTF-8", id="key-not-utf8"),
    pytest.param(gguf([ARCH, ARCH]), "'general.architecture' appears twice", id="duplicate-key"),
    pytest.param(gguf([kv("x", 13, U8)]), "metadata 'x' has unknown value type 13", id="unknown-value-type"),
    pytest.param(
        gguf([kv("x", GGUF_ARRAY, struct.pack("<IQ", 0, HUGE))]),
        f"'x' is an array of {HUGE} items",
        id="array-2^60",
    ),
    pytest.param(
        gguf([kv("x", GGUF_ARRAY, struct.pack("<IQ", GGUF_STRING, MAX_ARRAY) + s("a") * 8)]),
        f"truncated GGUF file: an array of {MAX_ARRAY} strings",
        id="string-array-longer-than-file",
    ),
    pytest.param(
        gguf([kv("x", GGUF_ARRAY, struct.pack("<IQ", 0, 10**6))]),
        "truncated GGUF file: 1000000 bytes needed",
        id="u8-array-past-end",
    ),
    pytest.param(
        gguf([kv("x", GGUF_ARRAY, struct.pack("<IQ", GGUF_ARRAY, 1))]),
        "array of unknown or nested type 9",
        id="nested-array",
    ),
    pytest.param(
        gguf([kv("x", GGUF_ARRAY, struct.pack("<IQ", 99, 1))]),
        "unknown or nested type 99",
        id="array-type-99",
    ),
    pytest.param(
        gguf([kv("general.alignment", 4, struct.pack("<I", 48))]), "not a power of two", id="alignment-48"
    ),
    pytest.param(
        gguf([kv("general.alignment", 4, struct.pack("<I", 0))]), "not a power of two", id="alignment-0"
    ),
    pytest.param(
        gguf([kv("general.alignment", GGUF_STRING, s("32"))]), "not a power of two", id="alignment-string"
    ),
    pytest.param(
        gguf(tensors=[tensor("n" * 64, [32])]),
        "tensor #0's name is 64 bytes long (at most 63)",
        id="tensor-name-64",
    ),
    pytest.param(gguf(tensors=[tensor("", [32])]), "tensor #0 has an empty name", id="tensor-name-empty"),
    pytest.param(
        gguf(tensors=[tensor("t", [1, 1, 1, 1, 32])]), "'t' has 5 dimensions (at most 4)", id="dims-5"
    ),
    pytest.param(
        gguf(tensors=[tensor("t", [1 << 40, 1 << 40])]), "more elements than fit in 64 bits", id="dims-2^80"
    ),
    pytest.param(
        gguf(tensors=[tensor("t", [0, 1 << 63])]), "more elements than fit in 64 bits", id="dim-negative"
    ),
    pytest.param(
        gguf(tensors=[tensor("t", [32], kind=4)]), "'t' has unknown tensor type 4", id="tensor-type-removed"
    ),
    pytest.param(
        gguf(tensors=[tensor("t", [32], kind=99)]), "'t' has unknown tensor type 99", id="tensor-type-99"
    ),
    pytest.param(
        gguf(tensors=[tensor("t", [33], kind=2)]), "a row of 33 is not whole blocks of 32", id="partial-block"
    ),
    pytest.param(
        gguf(tensors=[tensor("t", [32], offset=3)]),
        "data offset 3 is not aligned to 32",
        id="offset-misaligned",
    ),
    pytest.param(
        gguf(tensors=[F32_32, tensor("u", [32], offset=96)], data=256),
        "'u' overlaps the one before it",
        id="overlap",
    ),
    pytest.param(
        gguf(tensors=[tensor("t", [1024])]),
        "'t' ends 3968 bytes past the end of the file",
        id="data-past-end",
    ),
    pytest.param(
        gguf(tensors=[tensor("t", [32], offset=1 << 62)]),
        "bytes past the end of the file",
        id="offset-past-end",
    ),
    pytest.param(
        gguf(tensors=[F32_32, tensor("t", [32], offset=128)], data=256),
        "two tensors have the same name",
        id="duplicate-tensor",
    ),
    pytest.param(
        gguf([ARCH, kv("general.name", GGUF_STRING, s("x" * 100))], tensors=[], data=0)[: 24 + 45 + 20 + 2],
        "truncated GGUF file: 4 bytes needed at offset 89, 2 left",
        id="truncated-mid-field",
    ),
    pytest.param(b"", "truncated GGUF file: 4 bytes needed at offset 0, 0 left", id="empty-file"),
]


@pytest.mark.parametrize(("data", "reason"), CRAFTED)
def test_crafted_files_fail_with_a_clear_reason(tmp_path: Path, data: bytes, reason: str) -> None:
    path = write(tmp_path, data)
    t0 = time.monotonic()
    with pytest.raises(InvalidModelFileError) as info:
        check(path)
    assert time.monotonic() - t0 < CHECK_TIMEOUT_S / 5  # nothing is walked on a header's word alone
    assert reason in str(info.value)
    assert str(tmp_path) not in str(info.value)


def test_the_real_model_cut_short_fails(smollm2: Path, tmp_path: Path) -> None:
    head = tmp_path / "head.gguf"
    with open(smollm2, "rb") as src, open(head, "wb") as dst:
        dst.write(src.read(1 << 20))  # ends inside the vocabulary
    with pytest.raises(InvalidModelFileError, match="truncated GGUF file"):
        check(head)
    short = tmp_path / "short.gguf"
    shutil.copyfile(smollm2, short)
    os.truncate(short, smollm2.stat().st_size - 1000)  # the last tensor's data is cut off
    with pytest.raises(InvalidModelFileError, match=r"ends 1000 bytes past the end of the file"):
        check(short)


def test_an_unreadable_path_does_not_name_itself(tmp_path: Path) -> None:
    missing = tmp_path / "secret-folder" / "model.gguf"
    with pytest.raises(InvalidModelFileError) as info:
        check(missing)
    assert str(info.value) == "cannot read the file: No such file or directory"


# -- in a child process ---------------------------------------------------------------------------


def checker_children() -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process().children(recursive=True)
        if "localroute.host.gguf" in " ".join(p.cmdline())
    ]


def test_verify_in_a_child_passes_the_real_model(smollm2: Path) -> None:
    summary = asyncio.run(verify(smollm2))
    assert summary == check(smollm2)


BY_ID = {case.id: case.values for case in CRAFTED}


@pytest.mark.parametrize("case", ["wrong-magic", "kv-count-2^64", "array-2^60", "data-past-end"])
def test_verify_in_a_child_gives_the_reason(tmp_path: Path, case: str) -> None:
    data, reason = BY_ID[case]
    assert isinstance(data, bytes) and isinstance(reason, str)
    t0 = time.monotonic()
    with pytest.raises(InvalidModelFileError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        asyncio.run(verify(write(tmp_path, data)))
    assert time.monotonic() - t0 < CHECK_TIMEOUT_S


def test_verify_kills_a_check_that_hangs(tmp_path: Path) -> None:
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)  # open() blocks until a writer comes: the checker hangs, as on a stuck disk
    t0 = time.monotonic()
    with pytest.raises(InvalidModelFileError, match=r"the file check did not finish in 1s"):
        asyncio.run(verify(fifo, limit_s=1.0))
    assert time.monotonic() - t0 < 5
    assert wait_until(lambda: not checker_children(), 5)


def test_the_checker_command_line(smollm2: Path, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "localroute.host.gguf", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)

    ok = run(str(smollm2))
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"]["tensors"] == 272
    bad = run(str(write(tmp_path, gguf(version=99))))
    assert bad.returncode == 1 and json.loads(bad.stdout) == {"error": "unsupported GGUF version 99"}
    assert run().returncode == 2


# -- a gateway refuses to load a bad file -----------------------------------------------------------


def serve_one_model(tmp: Path, gguf_path: Path, name: str = "crafted") -> Server:
    model = {"name": name, "engine": "llama_cpp", "n_ctx": 512, "default_max_tokens": 16, "threads": 1,
             "source": {"kind": "path", "path": str(gguf_path)}}  # fmt: skip
    return start_gateway(tmp, config_text(server={"port": 8000}, models=[model]), until=answering)


def workers_of(srv: Server) -> list[psutil.Process]:
    kids = psutil.Process(srv.proc.pid).children(recursive=True)
    return [p for p in kids if "localroute.rungs.llamacpp.worker" in p.cmdline()]


def test_a_gateway_refuses_a_bad_model_file_without_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "private-models-folder"
    folder.mkdir()
    bad = folder / "model.gguf"
    bad.write_bytes(gguf(tensors=[tensor("t", [1 << 40, 1 << 40])]))
    srv = serve_one_model(tmp_path, bad)
    try:
        for _ in range(2):  # the second refusal comes from the remembered verdict
            r = httpx.post(
                srv.url + "/v1/chat/completions",
                json={"model": "crafted", "messages": [{"role": "user", "content": "hi"}]},
                timeout=60,
            )
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "model_file_invalid"
            assert "private-models-folder" not in r.text and "model.gguf" not in r.text
        engine = srv.health()["engines"]["crafted"]  # type: ignore[index]
        assert engine["state"] == "failed"
        assert engine["last_error"] == "model file rejected: tensor 't' has more elements than fit in 64 bits"
        assert not workers_of(srv)  # llama.cpp was never given the file
    finally:
        srv.stop()
    assert "private-models-folder" not in srv.log.read_text()


# -- chat templates from a GGUF render in the sandbox ----------------------------------------------

MARKER = "/tmp/localroute-template-pwned"
PAYLOADS = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    # CVE-2024-34359 (llama-cpp-python < 0.2.72 rendered GGUF templates outside a sandbox)
    "{% for x in ().__class__.__base__.__subclasses__() %}{% if 'warning' in x.__name__ %}"
    "{{ x()._module.__builtins__['__import__']('os').popen('touch " + MARKER + "').read() }}"
    "{% endif %}{% endfor %}",
    "{{ cycler.__init__.__globals__.os.popen('touch " + MARKER + "').read() }}",
    "{{ joiner.__init__.__globals__.os.popen('touch " + MARKER + "').read() }}",
    "{{ namespace.__init__.__globals__.os.popen('touch " + MARKER + "').read() }}",
    "{{ lipsum.__globals__['os'].popen('touch " + MARKER + "').read() }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.popen('touch " + MARKER + "') }}",
    "{{ messages.__class__.__init__.__globals__ }}",
    "{{ raise_exception.__globals__['__builtins__']['__import__']('os').system('touch " + MARKER + "') }}",
    "{{ strftime_now.__globals__['__builtins__'] }}",
]


@pytest.fixture
def no_marker() -> Iterator[None]:
    Path(MARKER).unlink(missing_ok=True)
    yield
    assert not Path(MARKER).exists(), "a chat template ran a shell command"


def test_the_formatter_compiles_templates_in_the_immutable_sandbox() -> None:
    sandbox = pytest.importorskip("jinja2.sandbox")
    fmt = pytest.importorskip("llama_cpp.llama_chat_format")
    formatter = fmt.Jinja2ChatFormatter(template="{{ messages[0].content }}", eos_token="", bos_token="")
    assert isinstance(formatter._environment.environment, sandbox.ImmutableSandboxedEnvironment)


@pytest.mark.parametrize("template", PAYLOADS)
def test_the_formatter_refuses_template_escapes(template: str, no_marker: None) -> None:
    jinja2 = pytest.importorskip("jinja2")
    fmt = pytest.importorskip("llama_cpp.llama_chat_format")
    formatter = fmt.Jinja2ChatFormatter(template=template, eos_token="</s>", bos_token="<s>")
    with pytest.raises(jinja2.exceptions.SecurityError):
        formatter(messages=[{"role": "user", "content": "hi"}])


def with_chat_template(src: Path, dst: Path, template: str) -> None:
    """A copy of `src` whose `tokenizer.chat_template` is `template`: the key/value section rewritten,
    the tensor table and data kept, the data section realigned."""
    with open(src, "rb") as fh:
        r = GGUFReader(fh, sys.maxsize)
        r.read(4)
        version, n_tensors, n_kv = int(r.unpack("I")), int(r.unpack("Q")), int(r.unpack("Q"))
        kvs = []
        for _ in range(n_kv):
            start = r.offset
            key, kind = r.string(), int(r.unpack("I"))
            if kind == GGUF_STRING:
                r.string()
            elif kind == GGUF_ARRAY:
                inner, count = int(r.unpack("I")), int(r.unpack("Q"))
                r.skip_array(inner, count)
            else:
                r.unpack(GGUF_SCALARS[kind])
            kvs.append((key, start, r.offset))
        infos_start = r.offset
        for _ in range(n_tensors):
            r.string()
            dims = int(r.unpack("I"))
            r.read(8 * dims + 4 + 8)
        infos_end = r.offset
        data_start = check(src).data_offset
        fh.seek(0)
        raw = fh.read(infos_end)
        parts = [raw[:4], struct.pack("<IQQ", version, n_tensors, n_kv)]
        for key, a, b in kvs:
            parts.append(kv(key, GGUF_STRING, s(template)) if key == "tokenizer.chat_template" else raw[a:b])
        parts.append(raw[infos_start:infos_end])
        head = b"".join(parts)
        with open(dst, "wb") as out:
            out.write(head + b"\0" * (-len(head) % 32))
            fh.seek(data_start)
            shutil.copyfileobj(fh, out, 1 << 20)


def test_the_worker_renders_a_gguf_template_in_the_sandbox(
    smollm2: Path, tmp_path: Path, no_marker: None
) -> None:
    """A GGUF whose own chat template tries to escape: structurally valid, so it loads; rendering it in
    the real worker fails with SecurityError, nothing runs, and the worker keeps serving."""
    evil = tmp_path / "evil.gguf"
    with_chat_template(smollm2, evil, PAYLOADS[2])
    assert check(evil).tensors == 272  # the check is about structure; the sandbox guards the template
    sock = tmp_path / "evil.sock"
    cmd = [
        sys.executable, "-m", "localroute.rungs.llamacpp.worker", "--socket", str(sock),
        "--model-path", str(evil), "--name", "evil", "--n-ctx", "512", "--threads", "1",
        "--parent-pid", str(os.getpid()),
    ]  # fmt: skip
    worker = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, start_new_session=True)
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://worker", timeout=60)
    try:

        def healthy() -> bool:
            try:
                return client.get("/health").status_code == 200
            except httpx.TransportError:
                return False

        assert wait_until(healthy, 120, 0.1), "the worker did not start"
        r = client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        )
        assert r.status_code == 500
        assert r.json()["error"] == {
            "message": "llama.cpp failed: SecurityError",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
        assert healthy() and pid_alive(worker.pid)
    finally:
        client.close()
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)


def test_the_file_checked_is_the_file_loaded_even_if_swapped_in_between(
    smollm2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check and the load read one open file: a file renamed over the path after the check
    (a time-of-check / time-of-use swap) is not what llama.cpp loads."""
    from localroute.config.models import LlamaCppModel
    from localroute.rungs.llamacpp import engine as engine_mod

    path = tmp_path / "checked.gguf"
    shutil.copyfile(smollm2, path)
    bad = tmp_path / "swapped-in.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)  # llama.cpp cannot load this
    real_verify = engine_mod.gguf.verify

    async def verify_then_swap(held: Path, *args: object, **kwargs: object) -> object:
        summary = await real_verify(held, *args, **kwargs)  # type: ignore[arg-type]
        os.replace(bad, path)  # the swap, right after the check passed
        return summary

    monkeypatch.setattr(engine_mod.gguf, "verify", verify_then_swap)
    source = {"kind": "path", "path": str(path)}
    cfg = LlamaCppModel(name="swap", engine="llama_cpp", source=source, n_ctx=512, default_max_tokens=8)
    eng = engine_mod.LlamaCppEngine(cfg, path, tmp_path)

    async def run() -> dict[str, object]:
        try:
            await eng.start()
            answer = await eng.complete(
                {"model": "swap", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            )
            return dict(answer)
        finally:
            await eng.aclose()

    answer = asyncio.run(run())
    assert answer["choices"], answer  # the checked (real) model answered
    assert path.read_bytes()[:8] == b"GGUF" + b"\x00" * 4  # the path really was swapped
