"""Local efficiency: the gateway vs raw llama-cpp-python, per model, streaming and not, in one run.

    python -m bench.local_efficiency [--models smollm2-135m gemma3-270m] [--modes stream complete]
                                     [--reps 10] [--max-tokens 128] [--max-minutes 6.5] [--no-append]

Models missing from the config but declared commented-out in it (gemma3-270m in models.toml) are
uncommented into a temporary copy, which both sides load; nothing else in the config changes. Each
model is served by one real `localroute serve` (its worker process per model) and by one raw
llama-cpp-python child process per model (bench.local_sides) that times itself in-process and idles
between runs; both load the GGUF with the config's n_ctx, threads, n_batch and chat format, and follow
its cache_prompt. Every repetition runs every (model, mode) cell once on each side, alternating which
side goes first, after the same idle gap, so drift hits both sides equally.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import httpx

from bench.common import append_result, median, pct
from bench.local_sides import Mode, RawSide, Sample, free_port, http_client, router_run
from localroute.config.models import LlamaCppModel
from localroute.config.schema import Config, parse_config

DEFAULT_MODELS = ("smollm2-135m", "gemma3-270m")
MODES: tuple[Mode, ...] = ("stream", "complete")
GOAL_RATIO, GOAL_MS = 0.97, 5.0
Cell = tuple[str, Mode]


def declare(text: str, name: str) -> str:
    """`text` with the commented-out `[[models]]` block named `name` uncommented in place."""
    lines = text.splitlines()
    named = re.compile(rf'#\s*name\s*=\s*"{re.escape(name)}"')
    at = next((i for i, line in enumerate(lines) if named.match(line.strip())), None)
    if at is None:
        raise SystemExit(f"{name}: neither declared nor commented out in the config")
    start = at
    while start > 0 and lines[start - 1].startswith("#") and lines[start].strip() != "# [[models]]":
        start -= 1
    end = at
    while end + 1 < len(lines) and lines[end + 1].startswith("#"):
        end += 1
    for stop in range(end, at - 1, -1):  # the longest commented run that is one table of that name
        block = [line.removeprefix("#").removeprefix(" ") for line in lines[start : stop + 1]]
        try:
            found = tomllib.loads("\n".join(block)).get("models", [])
        except tomllib.TOMLDecodeError:
            continue
        if len(found) == 1 and found[0].get("name") == name:
            return "\n".join(lines[:start] + block + lines[stop + 1 :]) + "\n"
    raise SystemExit(f"{name}: its commented-out block in the config is not one [[models]] table")


def bench_config(path: Path, names: list[str]) -> tuple[str, Config, list[LlamaCppModel]]:
    """The config text with `names` declared, the parsed config (paths resolved as for `path`), and
    the models to measure, each checked to be a llama.cpp model whose GGUF is on disk."""
    text = path.read_text(encoding="utf-8")
    for name in names:
        if parse_config(text, source=str(path)).model(name) is None:
            text = declare(text, name)
    cfg = parse_config(text, source=str(path), base_dir=path.resolve().parent)
    models = []
    for name in names:
        m = cfg.model(name)
        if not isinstance(m, LlamaCppModel):
            raise SystemExit(f"{name}: not a llama_cpp model")
        if not cfg.model_path(m).is_file():
            raise SystemExit(f"{name}: {cfg.model_path(m)} is missing; declare it and run `localroute pull`")
        models.append(m)
    return text, cfg, models


def wait_ready(client: httpx.Client, name: str, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            if client.get("/health").json()["engines"][name]["state"] in ("ready", "stopped"):
                return
        except (httpx.TransportError, KeyError, ValueError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"the gateway did not get {name} ready within {limit_s:.0f} s")


def measure(
    args: argparse.Namespace, cfg_path: Path, names: list[str], env: dict[str, str], deadline: float
) -> tuple[dict[Cell, list[tuple[Sample, Sample]]], int]:
    """(raw, router) sample pairs per cell, and the repetitions done: `args.reps`, or fewer where the
    next would end after `deadline` (time.monotonic())."""
    cells: list[Cell] = [(n, mode) for n in names for mode in args.modes]
    pairs: dict[Cell, list[tuple[Sample, Sample]]] = {c: [] for c in cells}
    raws = {n: RawSide(cfg_path, n, env) for n in names}
    port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "localroute", "serve", "--config", str(cfg_path), "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    reps = 0
    try:
        with http_client(port) as client:
            for n in names:
                wait_ready(client, n)
            for n, mode in cells:  # warm both sides (and load models that are not preloaded)
                raws[n].run(mode, 8), router_run(client, n, mode, 8)
            t0 = time.monotonic()
            for rep in range(args.reps):
                if rep and time.monotonic() + (time.monotonic() - t0) / rep > deadline:
                    print(f"stopping after {rep} repetitions: the next would end past --max-minutes")
                    break
                for i, (n, mode) in enumerate(cells):
                    got: dict[str, Sample] = {}
                    for side in ("raw", "router") if (rep + i) % 2 == 0 else ("router", "raw"):
                        time.sleep(args.gap)
                        if side == "raw":
                            got[side] = raws[n].run(mode, args.max_tokens)
                        else:
                            got[side] = router_run(client, n, mode, args.max_tokens)
                    pairs[(n, mode)].append((got["raw"], got["router"]))
                reps = rep + 1
                print(f"repetition {reps}/{args.reps} done at {time.monotonic() - t0:.0f} s", flush=True)
    finally:
        gateway.send_signal(signal.SIGINT)
        gateway.wait(30)
        for raw in raws.values():
            raw.close()
    return pairs, reps


def row(cell: Cell, pairs: list[tuple[Sample, Sample]]) -> str:
    (name, mode), raw, via = cell, [p[0] for p in pairs], [p[1] for p in pairs]
    r_s, v_s = median([x[0] for x in raw]) * 1e3, median([x[0] for x in via]) * 1e3
    r_tps, v_tps = median([x[1] for x in raw]), median([x[1] for x in via])
    ratio, added = v_tps / r_tps, v_s - r_s
    ratios = [v[1] / r[1] for r, v in pairs]
    adds = [(v[0] - r[0]) * 1e3 for r, v in pairs]
    spread = f"{pct(ratios, 0.25):.3f} to {pct(ratios, 0.75):.3f}; "
    spread += f"{pct(adds, 0.25):+.1f} to {pct(adds, 0.75):+.1f}"
    met = ratio >= GOAL_RATIO and added <= GOAL_MS
    timed = "TTFT" if mode == "stream" else "total latency"
    toks = f"{median([x[2] for x in raw]):.0f} / {median([x[2] for x in via]):.0f}"
    return (
        f"| {name} | {mode} | {toks} | {r_tps:.1f} | {v_tps:.1f} | **{ratio:.3f}** | {timed} | {r_s:.1f} "
        f"| {v_s:.1f} | **{added:+.1f}** | {spread} | {'met' if met else 'not met'} |"
    )


def report(
    args: argparse.Namespace, models: list[LlamaCppModel], pairs: dict[Cell, list[tuple[Sample, Sample]]],
    reps: int, seconds: float,
) -> tuple[str, str]:  # fmt: skip
    table = (
        "| model | mode | tokens raw / router | raw tok/s | router tok/s | ratio | ms timed | raw ms "
        "| router ms | added ms | pairs p25 to p75 (ratio; added ms) | goal |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(row(c, p) for c, p in pairs.items())
    )
    cut = (
        f" (of {args.reps} asked: --max-minutes {args.max_minutes:g} stopped the run)"
        if reps < args.reps
        else ""
    )
    sides = "; ".join(
        f"{m.name}: n_ctx {m.n_ctx}, threads {m.threads}, n_batch {m.n_batch}, chat_format {m.chat_format}, "
        f"cache_prompt {'on' if m.cache_prompt else 'off'}"
        for m in models
    )
    notes = (
        f"Temperature 0, max_tokens {args.max_tokens}, {reps} interleaved repetitions{cut} (each cell runs "
        f"both sides once, alternating which goes first, {args.gap:g} s idle before each run), medians; the "
        "pairs column is the spread of the per-repetition router/raw ratio and difference. "
        "**stream**: tok/s is the decode rate (content chunks after the first ÷ time from the first to "
        "the last), ms is TTFT. **complete** (non-streaming): tok/s is completion tokens ÷ total "
        "latency, so the ratio is raw latency ÷ router latency, and ms is the total latency for the fixed "
        "max_tokens, *not* TTFT. Goal per row: ratio ≥ 0.97 and ≤ 5 ms added. Both sides, per model: "
        f"{sides} (cache_prompt on: both reuse the KV cache of the repeated prompt, llama-cpp-python's "
        "prefix match; off: both reset the context before each request). Models not declared in "
        "models.toml are taken from its commented-out blocks. Router: `localroute serve` on that config "
        "(audit log in a temporary file), client httpx with TCP_NODELAY; raw: one llama-cpp-python "
        f"child process per model timing itself. Run took {seconds / 60:.1f} min."
    )
    return table, notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--config", default="models.toml")
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=128)
    # llama.cpp's threads spin for a while after a decode; on 2 cores the side that just ran would
    # steal CPU from the side that runs next, so both sides get the same idle gap before they run.
    ap.add_argument("--gap", type=float, default=0.5)
    ap.add_argument(
        "--max-minutes", type=float, default=6.5, help="whole run; no repetition starts that would end later"
    )
    ap.add_argument("--no-append", action="store_true", help="print the table; leave bench/RESULTS.md alone")
    args = ap.parse_args()
    started = time.monotonic()
    config = Path(args.config)
    text, cfg, models = bench_config(config, args.models)
    with tempfile.TemporaryDirectory(prefix="lr-local-eff-") as tmp:
        cfg_path = Path(tmp) / "models.toml"
        cfg_path.write_text(text, encoding="utf-8")
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "LOCALROUTE_MODELS_DIR": str(cfg.models_dir()),  # resolved against the real config's folder
            "LOCALROUTE_AUDIT_PATH": str(Path(tmp) / "audit.jsonl"),
        }
        deadline = started + args.max_minutes * 60
        pairs, reps = measure(args, cfg_path, [m.name for m in models], env, deadline)
    table, notes = report(args, models, pairs, reps, time.monotonic() - started)
    if args.no_append:
        print(f"{table}\n\n{notes}")
        return
    append_result(
        "bench.local_efficiency",
        "Local efficiency (router vs raw llama-cpp-python)",
        table,
        notes,
        ("llama-cpp-python", "localroute", "uvicorn", "starlette", "httpx"),
    )


if __name__ == "__main__":
    main()
