"""What legacy completions' logprobs cost on the llama.cpp rung, through the real gateway, in one run.

    python -m bench.completions_logprobs [--reps 8] [--max-tokens 64] [--no-append]

`POST /v1/completions` on the repo config's smollm2 rung, temperature 0, a counting prompt (the model
keeps going to max_tokens), non-streamed: without logprobs, with `logprobs: 0` (the sampled token's
logprob: one log-softmax over the row the sampler already has) and with `logprobs: 5` (plus the five
likeliest tokens, an argpartition of that row). Every repetition runs the three cells in a rotated
order after the same idle gap; the table gives medians and each cell's rate relative to no logprobs.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import append_result, median, pct
from bench.local_sides import free_port, http_client

MODEL = "smollm2-135m"
PROMPT = "1, 2, 3, 4, 5, 6, 7, 8,"
CELLS: dict[str, int | None] = {"none": None, "logprobs 0": 0, "logprobs 5": 5}


def run(client: object, logprobs: int | None, max_tokens: int) -> tuple[float, int]:
    """(seconds, completion tokens) of one request."""
    body: dict[str, object] = {"model": MODEL, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}
    if logprobs is not None:
        body["logprobs"] = logprobs
    t0 = time.perf_counter()
    r = client.post("/v1/completions", json=body)  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - t0
    r.raise_for_status()
    return elapsed, int(r.json()["usage"]["completion_tokens"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--config", default="models.toml")
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--gap", type=float, default=0.3)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` stops us: stop the gateway too
    tmp = Path(tempfile.mkdtemp(prefix="lr-bench-"))
    env = {**os.environ, "LOCALROUTE_AUDIT_PATH": str(tmp / "audit.jsonl"), "HF_HUB_OFFLINE": "1"}
    env.pop("OPENAI_API_KEY", None)  # never reach a provider
    port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "localroute", "serve", "--config", args.config, "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    samples: dict[str, list[tuple[float, int]]] = {c: [] for c in CELLS}
    t_start = time.monotonic()
    try:
        with http_client(port) as client:
            for _ in range(600):
                try:
                    if client.get("/health").json()["engines"][MODEL]["state"] == "ready":
                        break
                except Exception:  # not up yet
                    pass
                time.sleep(0.2)
            for lp in CELLS.values():
                run(client, lp, 8)  # warm-up
            names = list(CELLS)
            for rep in range(args.reps):
                for name in names[rep % 3 :] + names[: rep % 3]:
                    time.sleep(args.gap)
                    samples[name].append(run(client, CELLS[name], args.max_tokens))
                print(f"repetition {rep + 1}/{args.reps}", flush=True)
    finally:
        gateway.send_signal(signal.SIGINT)
        gateway.wait(30)
    rates = {c: [n / s for s, n in xs] for c, xs in samples.items()}
    base = median(rates["none"])
    rows = [
        f"| {c} | {median([n for _, n in samples[c]]):.0f} | {median(rates[c]):.1f} "
        f"| **{median(rates[c]) / base:.3f}** | {pct(rates[c], 0.25):.1f} to {pct(rates[c], 0.75):.1f} |"
        for c in CELLS
    ]
    table = (
        "| cell | tokens | tok/s (median) | vs none | tok/s p25 to p75 |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
    )
    notes = (
        f"`POST /v1/completions` on {MODEL} through `localroute serve` (the repo config), non-streamed, "
        f"temperature 0, max_tokens {args.max_tokens}, {args.reps} repetitions, cells in rotated order, "
        f"{args.gap:g} s idle before each request; tok/s is completion tokens / request latency. "
        f"Run took {(time.monotonic() - t_start) / 60:.1f} min."
    )
    if args.no_append:
        print(table + "\n\n" + notes)
    else:
        append_result("bench.completions_logprobs", "Legacy completions: logprobs on llama.cpp", table, notes,
                      ("llama-cpp-python", "numpy"))  # fmt: skip


if __name__ == "__main__":
    main()
