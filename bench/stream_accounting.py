"""What the running accounting on each local stream chunk costs (so that a stream cut before its usage
chunk is still charged): the worker's `x_localroute` (CPU-seconds and tokens so far) encoded into every
SSE chunk, decoded by the gateway, and kept by the router's `Tally`. Measured per chunk against the
same chunk without it, in one run, alternating the two to share the box's noise; a token of the
smallest model takes milliseconds to decode, so a few microseconds is the figure to compare.

Usage: python -m bench.stream_accounting [--rounds N] [--no-record]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.common import append_result, median
from localroute.protocol import sse
from localroute.routing.trace import Tally

CHUNKS = 2_000  # per timed batch
ROOT = Path(__file__).resolve().parent.parent


def chunk(i: int) -> dict[str, object]:
    """A llama.cpp worker's stream chunk as llama-cpp-python builds it."""
    delta = {"index": 0, "delta": {"content": f" {i},"}, "logprobs": None, "finish_reason": None}
    return {"id": "chatcmpl-5f0b8e2c-6f1c-4a52-9f55-0c7f1a7c3d2e", "object": "chat.completion.chunk",
            "created": 1_790_000_000, "model": "smollm2-135m", "choices": [delta]}  # fmt: skip


def batch(with_accounting: bool) -> float:
    """CPU-seconds per chunk (CPU, not wall: the box is shared): the worker encodes, the gateway
    decodes, the router looks at it."""
    cpu_start = time.process_time()
    tally = Tally()
    t0 = time.process_time()
    for i in range(CHUNKS):
        item = chunk(i)
        if with_accounting:  # the worker's side: Generation.running()
            n = i + 1
            usage = {"prompt_tokens": 31, "completion_tokens": n, "total_tokens": 31 + n}
            item["x_localroute"] = {"compute_s": round(time.process_time() - cpu_start, 6), "so_far": usage}
        line = sse.encode(item)
        got = json.loads(line[6:])  # the gateway's side: the SSE decoder
        if with_accounting:
            tally.feed(got)  # the router's side
        got.pop("x_localroute", None)
    return (time.process_time() - t0) / CHUNKS


def token_cpu_s(tokens: int = 64) -> float:
    """CPU-seconds (all threads) per decoded token of the repo's default model, as the worker runs it."""
    from llama_cpp import Llama

    from localroute.config.models import LlamaCppModel
    from localroute.config.schema import load_config

    cfg = load_config(ROOT / "models.toml")
    m = cfg.model("smollm2-135m")
    assert isinstance(m, LlamaCppModel)
    llm = Llama(model_path=str(cfg.model_path(m)), n_ctx=512, verbose=False)
    t0 = time.process_time()
    out = llm.create_completion("Count from 1 to 100: 1, 2, 3,", max_tokens=tokens, temperature=0)
    return (time.process_time() - t0) / max(1, out["usage"]["completion_tokens"])


def main() -> int:
    p = argparse.ArgumentParser(prog="bench.stream_accounting")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args()
    base: list[float] = []
    acct: list[float] = []
    for _ in range(args.rounds):  # alternated: both see the same moments of a busy box
        base.append(batch(False))
        acct.append(batch(True))
    b, a = median(base) * 1e6, median(acct) * 1e6
    tok = token_cpu_s() * 1e6
    table = (
        "| per stream chunk (median of batches) | µs |\n|---|---|\n"
        f"| without running accounting (reference) | {b:.2f} |\n"
        f"| with running accounting | {a:.2f} |\n"
        f"| added | {a - b:.2f} ({(a - b) / b * 100:.0f} % of the chunk's handling) |\n"
        f"| one decoded token of smollm2-135m (reference) | {tok:.0f} |\n"
        f"| added, per token decoded | {(a - b) / tok * 100:.2f} % |"
    )
    notes = (
        f"CPU time of this process, {args.rounds} rounds of {CHUNKS} chunks each way, alternated; the "
        "token's CPU time is all llama.cpp threads for 64 greedy tokens, in the same run. The addition "
        "is the worker's `process_time` and dict, ~90 more JSON bytes per chunk each way, and "
        "`Tally.feed`: small beside the token it describes, the smallest model's."
    )
    if args.no_record:
        print(table)
    else:
        append_result("bench.stream_accounting", "Running accounting on stream chunks", table, notes, ())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
