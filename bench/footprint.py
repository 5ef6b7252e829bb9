"""Estimated vs measured memory of llama.cpp workers: `python -m bench.footprint [--ctx 2048 4096]`.

For each local GGUF model found (SmolLM2 from models.toml, gemma-3-270m if `localroute pull` fetched
it), a real worker is started at each n_ctx; its RSS (psutil, with children) is read after load and
after a prompt that fills ~3/4 of the context plus 64 generated tokens, beside `estimate_gguf`.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from bench.common import append_result
from localroute.config.models import LlamaCppModel
from localroute.config.schema import Config, load_config, parse_config
from localroute.host.resources import MiB, estimate_gguf, rss
from localroute.rungs.llamacpp.engine import LlamaCppEngine

GEMMA = "gemma-3-270m-q4_k_m.gguf"


def models(cfg: Config) -> list[tuple[LlamaCppModel, Path]]:
    out = [(m, cfg.model_path(m)) for m in cfg.models if isinstance(m, LlamaCppModel)]
    gemma = cfg.models_dir() / GEMMA
    if gemma.is_file():
        g = parse_config(
            f'[[models]]\nname = "gemma3-270m"\nengine = "llama_cpp"\nchat_format = "gemma"\n'
            f'source = {{ kind = "path", path = "{gemma}" }}\n'
        ).models[0]
        assert isinstance(g, LlamaCppModel)
        out.append((g, gemma))
    return [(m, p) for m, p in out if p.is_file()]


async def measure(m: LlamaCppModel, path: Path, n_ctx: int) -> tuple[int, int, int]:
    cfg = m.model_copy(update={"n_ctx": n_ctx, "preload": False, "threads": m.threads or 2})
    with tempfile.TemporaryDirectory(prefix="lr-bench-") as run:
        eng = LlamaCppEngine(cfg, path, Path(run))
        await eng.start()
        try:
            pid = eng.health()["pid"]
            at_load = rss(pid) or 0
            words = max(16, int(n_ctx * 0.7 / 3.0))  # ~3 tokens a word for this filler ("item42")
            filler = " ".join(f"item{i % 97}" for i in range(words))
            body = {"model": m.name, "messages": [{"role": "user", "content": filler}], "max_tokens": 64}
            await eng.complete(body)
            full = rss(pid) or 0
        finally:
            await eng.aclose()
    return at_load, full, estimate_gguf(path, n_ctx, m.n_batch).total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="models.toml")
    ap.add_argument("--ctx", type=int, nargs="+", default=[2048, 4096])
    args = ap.parse_args()
    rows = []
    for m, path in models(load_config(args.config)):
        for n_ctx in args.ctx:
            at_load, full, est = asyncio.run(measure(m, path, n_ctx))
            rows.append(
                f"| {m.name} | {n_ctx} | {est // MiB} | {at_load // MiB} | {full // MiB} "
                f"| {(est - full) / full * 100:+.0f}% |"
            )
    table = (
        "| model | n_ctx | estimate MiB | RSS after load MiB | RSS after filling the context MiB "
        "| estimate vs full |\n|---|---|---|---|---|---|\n" + "\n".join(rows)
    )
    notes = (
        "Estimate = GGUF size + f16 KV cache for n_ctx + overhead (localroute.host.resources.estimate_gguf). "
        "A positive last column means the budget reserves more than the worker used."
    )
    append_result("bench.footprint", "Model footprint: estimate vs worker RSS", table, notes,
                  ("llama-cpp-python", "psutil"))  # fmt: skip


if __name__ == "__main__":
    main()
