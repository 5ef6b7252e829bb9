"""Measure the embedding rung on this box, for a comment in the models.toml `localroute init` writes:
load time and inputs/s embedding short sentences, in a child process loaded as the embedding worker
loads it (rungs/llamacpp/embed_worker.py load_llama). Nothing reads the figure back: the policy has no
embedding cost estimate, so it informs the reader only.

    python -m localroute.host.measure_embed --model-path P --n-ctx N --n-batch B [--threads T]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from localroute.config.models import LlamaCppModel

SENTENCES = [f"Sentence number {i} about the router, the ladder and the box it runs on." for i in range(32)]


def measure_embed(path: Path, m: LlamaCppModel, timeout_s: float = 300.0) -> str:
    """One comment line with the figures, or saying why there are none."""
    threads = m.threads or 1
    cmd = [sys.executable, "-m", "localroute.host.measure_embed", "--model-path", str(path),
           "--n-ctx", str(m.n_ctx), "--n-batch", str(m.n_batch), "--threads", str(threads)]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        got = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
    except (subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        return f"# not measured: {exc.__class__.__name__}"
    if "error" in got or "inputs_per_s" not in got:
        return f"# not measured: {got.get('error') or f'the measuring process exited ({proc.returncode})'}"
    return (f"# measured by `localroute init` on this box ({threads} threads): load {got['load_s']} s, "
            f"{got['inputs_per_s']} inputs/s\n# ({len(SENTENCES)} one-line sentences in one llama-cpp-python "
            "`embed` call: a rough figure; the worker packs inputs its own way).")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m localroute.host.measure_embed")
    p.add_argument("--model-path", required=True)
    p.add_argument("--n-ctx", type=int, required=True)
    p.add_argument("--n-batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    try:
        from llama_cpp import Llama

        t0 = time.perf_counter()
        size = max(args.n_ctx, args.n_batch)
        llm = Llama(model_path=args.model_path, embedding=True, n_ctx=size, n_batch=size, n_ubatch=size,
                    n_threads=args.threads, n_threads_batch=args.threads, verbose=False)  # fmt: skip
        load_s = time.perf_counter() - t0
        llm.embed(SENTENCES[:2])  # warm
        t0 = time.perf_counter()
        llm.embed(SENTENCES)
        rate = len(SENTENCES) / (time.perf_counter() - t0)
    except Exception as exc:  # a bad file or an OOM: one line, no trace
        print(json.dumps({"error": f"{exc.__class__.__name__}: {str(exc)[:160]}"}), flush=True)
        return 1
    print(json.dumps({"load_s": round(load_s, 3), "inputs_per_s": round(rate, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
