"""resources.py: the budget, the GGUF header reader and the footprint estimate, on the real SmolLM2
file and on broken copies of it; RAM, RSS, disk and GPU probes against the real machine (a stand-in
`nvidia-smi` on PATH where there is no GPU)."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from localroute.config.schema import ResourcesConfig
from localroute.host.gguf import read_gguf_metadata
from localroute.host.resources import (
    BASE_OVERHEAD,
    DEFAULT_VOCAB,
    FALLBACK_RATIO,
    PER_VOCAB_TOKEN,
    MiB,
    disk_free,
    estimate_gguf,
    gpus,
    parse_budget,
    ram,
    rss,
)

GiB = 1 << 30


@pytest.mark.parametrize(
    ("text", "total", "want"),
    [
        ("70%", 1000, 700),
        ("100%", 4 * GiB, 4 * GiB),
        ("12.5%", 800, 100),
        ("8GiB", 0, 8 * GiB),
        ("512MiB", 0, 512 * MiB),
        ("1.5GiB", 0, 3 * GiB // 2),
        ("2GB", 0, 2_000_000_000),
        ("64KiB", 0, 65536),
        (" 100 B ", 0, 100),
    ],
)
def test_parse_budget(text: str, total: int, want: int) -> None:
    assert parse_budget(text, total) == want


@pytest.mark.parametrize("text", ["lots", "70", "-5%", "8 GiBs", "", "5 %%"])
def test_parse_budget_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="memory budget"):
        parse_budget(text, 1000)


@pytest.mark.parametrize("text", ["70%", "8GiB", "512MiB", "2TB", "100B", "0.5GiB"])
def test_every_budget_the_config_accepts_parses(text: str) -> None:
    cfg = ResourcesConfig(memory_budget=text)
    assert parse_budget(cfg.memory_budget, 16 * GiB) > 0


def test_reads_the_real_smollm2_header(smollm2: Path) -> None:
    meta = read_gguf_metadata(smollm2)
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == 30
    assert meta["llama.embedding_length"] == 576
    assert meta["llama.attention.head_count"] == 9
    assert meta["llama.attention.head_count_kv"] == 3
    assert meta["llama.vocab_size"] == 49152


def test_reader_stops_early_and_stays_bounded(smollm2: Path) -> None:
    # The vocabulary arrays begin ~1 KB in and run to ~1.7 MB: 8 KiB is enough only if the reader
    # stops once it has what the estimate needs.
    assert read_gguf_metadata(smollm2, limit=8192)["llama.block_count"] == 30
    with pytest.raises(ValueError, match="GGUF"):
        read_gguf_metadata(smollm2, limit=256)


def test_estimate_for_smollm2(smollm2: Path) -> None:
    fp = estimate_gguf(smollm2, n_ctx=2048, n_batch=512)
    assert fp.method == "gguf"
    assert fp.weights == smollm2.stat().st_size
    assert fp.kv_cache == 2 * 30 * 2048 * (576 // 9 * 3) * 2  # f16 K and V, 3 of 9 heads
    assert fp.overhead == BASE_OVERHEAD + 49152 * PER_VOCAB_TOKEN + 2048 * 512 * 9 * 4
    assert fp.total == fp.weights + fp.kv_cache + fp.overhead
    assert fp.total_mib * MiB >= fp.total > (fp.total_mib - 1) * MiB
    bigger = estimate_gguf(smollm2, n_ctx=8192)
    assert bigger.kv_cache == 4 * fp.kv_cache and bigger.weights == fp.weights


def _copy(src: Path, dst: Path, n: int) -> Path:
    with open(src, "rb") as fh:
        dst.write_bytes(fh.read(n))
    return dst


def test_truncated_file_falls_back_to_the_ratio(smollm2: Path, tmp_path: Path) -> None:
    cut = _copy(smollm2, tmp_path / "cut.gguf", 600)  # ends inside the architecture keys
    with pytest.raises(ValueError, match="truncated"):
        read_gguf_metadata(cut)
    fp = estimate_gguf(cut, n_ctx=2048)
    assert fp.method == "ratio"
    assert fp.total == 600 + int(600 * FALLBACK_RATIO) + BASE_OVERHEAD


def test_truncated_after_the_shape_keys_still_estimates(smollm2: Path, tmp_path: Path) -> None:
    cut = _copy(smollm2, tmp_path / "cut.gguf", 800)  # has the shape keys, not the vocabulary size
    fp = estimate_gguf(cut, n_ctx=2048)
    assert fp.method == "gguf"
    assert fp.kv_cache == 2 * 30 * 2048 * 192 * 2
    assert fp.overhead == BASE_OVERHEAD + DEFAULT_VOCAB * PER_VOCAB_TOKEN + 2048 * 512 * 9 * 4


def _gguf(*kvs: bytes, n_kv: int | None = None) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs) if n_kv is None else n_kv)
    return head + b"".join(kvs)


def _s(text: str) -> bytes:
    return struct.pack("<Q", len(text)) + text.encode()


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "truncated"),
        (b"GGML" + b"\0" * 60, "magic"),
        (b"GGUF" + struct.pack("<IQQ", 99, 0, 0), "version"),
        # a key whose length claims 4 EiB: refused by the bound, nothing is allocated
        (_gguf(struct.pack("<Q", 1 << 62)), "limit"),
        (_gguf(_s("general.architecture") + struct.pack("<I", 77)), "type"),
        # an array of 2**60 strings: skipped only within the bound
        (_gguf(_s("x") + struct.pack("<IIQ", 9, 8, 1 << 60) + struct.pack("<Q", 0) * 64), "truncated"),
        (_gguf(_s("general.architecture") + struct.pack("<I", 8) + _s("llama"), n_kv=1 << 40), "truncated"),
    ],
)
def test_corrupt_headers_raise_value_error_and_estimate_falls_back(
    tmp_path: Path, data: bytes, why: str
) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=why):
        read_gguf_metadata(path)
    assert estimate_gguf(path, n_ctx=4096).method == "ratio"


def test_ram_and_rss_of_a_process_and_its_children() -> None:
    total, available = ram()
    assert 0 < available <= total == psutil.virtual_memory().total
    child = subprocess.Popen(
        [sys.executable, "-c", "b = bytearray(64 << 20); print(flush=True); input()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        child.stdout.readline()  # its 64 MiB are allocated and zeroed
        alone, family = rss(os.getpid(), children=False), rss(os.getpid())
        assert alone is not None and family is not None
        assert family - alone >= 64 * MiB
    finally:
        child.communicate(b"\n", timeout=10)
    assert rss(child.pid) is None


def test_disk_free_of_a_folder_not_yet_created(tmp_path: Path) -> None:
    got = disk_free(tmp_path / "models" / "hf")
    assert abs(got - psutil.disk_usage(str(tmp_path)).free) < 64 * MiB  # other writers share the disk


def _standin_smi(folder: Path, body: str) -> None:
    exe = folder / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)


def test_no_nvidia_smi_means_no_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpus() == []


def test_gpus_from_a_standin_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _standin_smi(
        tmp_path,
        'case "$*" in *--query-gpu=index,name,memory.total,memory.free*) ;; *) exit 2;; esac\n'
        "echo '0, NVIDIA H100 80GB HBM3, 81559, 80873'\n"
        "echo '1, NVIDIA H100 80GB HBM3, 81559, [N/A]'",
    )
    monkeypatch.setenv("PATH", str(tmp_path))
    (gpu,) = gpus()
    assert (gpu.index, gpu.name, gpu.total_mib, gpu.free_mib) == (0, "NVIDIA H100 80GB HBM3", 81559, 80873)


@pytest.mark.parametrize("body", ["exit 9", "sleep 5"])
def test_a_failing_or_hanging_nvidia_smi_means_no_gpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str
) -> None:
    _standin_smi(tmp_path, body)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpus(timeout=0.5) == []
