"""Where a streamed request's time to first token goes, from the client to llama.cpp and back, in one run.

    python -m bench.ttft_breakdown [--ref PATH ...] [--reps 20] [--max-tokens 16] [--gap 0.5] [--no-append]
                                   [--detail]

One raw llama-cpp-python child (bench.local_sides, timing itself) and one `localroute serve` per tree
(this one, and each `--ref` checkout, run from its folder through PYTHONPATH) serve SmolLM2-135M with
the same settings; the benchmark alternates between them, after the same idle gap, and rotates the
order each repetition. The gateways run with probes (bench/ttftprobe/: a few functions wrapped, in
those processes only) that write `time.monotonic()` stamps, one clock for all processes, at:

    c_send    the client sends the request            g_in      the gateway's chat handler starts
    g_send    the gateway sends the engine request    w_in      the worker's Runner.stream starts
    w_call    llama.cpp's create_chat_completion      w_llama   llama.cpp yields the first content chunk
    w_yield   the worker's stream yields its bytes    g_headers the engine's response headers arrive
    g_chunk   the engine client yields that chunk     g_frame   the gateway hands the client its frame
    c_first   the client reads the first content line

Two floors run in the same rotation (bench/ttft_floors.py, `--no-floors` to skip): `floor:http`, a bare
uvicorn + Starlette server answering a fixed chunk (what serving over HTTP costs this client at all),
and `floor:relay`, the same relaying over a Unix socket to a bare server in another process (the floor
of a model kept in its own process). "The router's own" is around llama.cpp minus `floor:relay`.

The model is pinned (no cascade). Raw TTFT is the same call's time in-process; llama's own part inside
the worker (w_call to w_llama) is shown beside it, so what the hops add is the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bench import servers
from bench.common import append_result, median, pct
from bench.local_sides import PROMPT, RawSide, free_port, http_client
from bench.ttft_floors import FLOORS, Floors

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m"
Mark = Callable[[str], object]
STAGES = [  # (label, from, to)
    ("client → handler", "c_send", "g_in"),
    ("handler → engine request (parse, classify, route)", "g_in", "g_send"),
    ("engine request → worker stream (UDS, worker HTTP)", "g_send", "w_in"),
    ("worker stream → llama call (queue, thread)", "w_in", "w_call"),
    ("llama.cpp: call → first content chunk", "w_call", "w_llama"),
    ("decode thread → worker yields bytes", "w_llama", "w_yield"),
    ("worker bytes → engine headers", "w_yield", "g_headers"),
    ("engine headers → gateway chunk", "g_headers", "g_chunk"),
    ("gateway chunk → frame out (supervisor, router, handler)", "g_chunk", "g_frame"),
    ("frame out → client reads it (uvicorn, TCP, client)", "g_frame", "c_first"),
]
AROUND = {name for _, a, b in STAGES for name in (a, b)}  # the marks every probed request has
DETAIL = [  # `--detail`: the first two stages, step by step
    ("client → the gateway's middleware (client, TCP, uvicorn)", "c_send", "g_edge"),
    ("middleware → handler (guard, routing, request)", "g_edge", "g_in"),
    ("handler → body read", "g_in", "g_body"),
    ("body → parsed (JSON, validation)", "g_body", "g_parsed"),
    ("parsed → classified (privacy: dump, PII scan)", "g_parsed", "g_classified"),
    ("classified → decided (tracing, budget, policy)", "g_classified", "g_decided"),
    ("decided → engine request (body, admission, request)", "g_decided", "g_send"),
]


def config_text(models_dir: Path, audit: Path, mock_port: int = 0, threads: int = 2) -> str:
    """SmolLM2 pinned; with `mock_port`, a remote rung above it on the loopback mock, for `auto`
    requests that the cascade judges (public by default, so `auto` may escalate)."""
    remote = (
        f"""
[[models]]
name = "mock-1"
engine = "remote"
tier = 10
base_url = "http://127.0.0.1:{mock_port}/v1"
model = "mock-1"
api_key_env = "{servers.KEY_ENV}"
"""
        if mock_port
        else ""
    )
    return f"""\
[server]
models_dir = "{models_dir}"
log_level = "warning"

[[models]]
name = "{MODEL}"
engine = "llama_cpp"
tier = 0
n_ctx = 2048
threads = {threads}
preload = true
source = {{ kind = "path", path = "{models_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"}" }}

{remote}
[privacy]
default = "public"
audit_path = "{audit}"
"""


def marker(path: Path) -> Mark:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return lambda name: os.write(fd, f"{name} {time.monotonic():.6f}\n".encode())


def _nothing(name: str) -> object:
    return None


def gateway_run(client: httpx.Client, mark: Mark, max_tokens: int, model: str = MODEL) -> float:
    body = {"model": model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0.0, "stream": True}
    first = None
    mark("c_send")
    t0 = time.monotonic()
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            now = time.monotonic()
            if first is None and line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = now
                    mark("c_first")
    if first is None:
        raise RuntimeError("no content")
    return first - t0


def cpu_s(pid: int) -> float:
    """The process's CPU time (user + system), in clock ticks turned into seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(port: int, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").json()["engines"][MODEL]["state"] == "ready":
                return
        except (httpx.TransportError, KeyError, ValueError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"gateway on {port} not ready")


def start_gateway(
    tree: Path, cfg: Path, work: Path, name: str, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """`localroute serve` from `tree`, with the probes; returns it, its port and its marks file."""
    port, marks = free_port(), work / f"{name.replace(':', '_')}.marks"
    genv = {
        **env,
        "PYTHONPATH": f"{tree}:{ROOT / 'bench' / 'ttftprobe'}",
        "LOCALROUTE_TTFT_MARKS": str(marks),
        "LOCALROUTE_AUDIT_PATH": str(work / f"{port}.jsonl"),
    }
    cmd = [sys.executable, "-m", "ttft_probe_gw", "serve", "--config", str(cfg), "--port", str(port)]
    with work.joinpath(f"{port}.log").open("wb") as log:
        proc = subprocess.Popen(
            cmd, env=genv, cwd=tree, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
        )
    return proc, port, marks


def requests_of(path: Path) -> list[dict[str, float]]:
    """The marks, one dict per request (a request's marks follow its c_send)."""
    out: list[dict[str, float]] = []
    for line in path.read_text().splitlines():
        name, t = line.split()
        if name == "c_send":
            out.append({})
        if out:
            out[-1].setdefault(name, float(t))
    return out


def around_ms(requests: list[dict[str, float]]) -> list[float]:
    """Each fully probed request's client TTFT minus its own llama.cpp part, in ms."""
    return [
        (r["c_first"] - r["c_send"] - (r["w_llama"] - r["w_call"])) * 1e3
        for r in requests
        if AROUND <= r.keys()
    ]


def render(
    names: list[str],
    stages: dict[str, list[dict[str, float]]],
    got: dict[str, list[float]],
    detail: bool = False,
) -> str:
    raw_ms = median(got["raw"]) * 1e3
    head = "| stage | " + " | ".join(f"{n} ms" for n in names) + " |\n|---|" + "---|" * len(names) + "\n"
    lines = []
    for name, a, b in STAGES[:1] + DETAIL[:2] * detail + STAGES[1:2] + DETAIL[2:] * detail + STAGES[2:]:
        label = f"  {name}" if (name, a, b) in DETAIL else name  # a step of the stage above
        cells = []
        for n in names:
            ds = [(r[b] - r[a]) * 1e3 for r in stages[n] if a in r and b in r]
            cells.append(f"{median(ds):.2f}" if ds else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    ttft = " | ".join(f"**{median(got[n]) * 1e3:.2f}**" for n in names)
    lines.append(f"| **client TTFT (median)** | {ttft} |")
    around = []
    for n in names:
        own = around_ms(stages[n])
        around.append(
            f"**{median(own):.2f}** (p25 {pct(own, 0.25):.1f}, p75 {pct(own, 0.75):.1f})" if own else "-"
        )
    lines.append("| **around llama.cpp (TTFT - llama's part)** | " + " | ".join(around) + " |")
    lines.append(f"| raw llama-cpp-python TTFT (median) | {raw_ms:.2f}" + " | " * (len(names) - 1) + " |")
    adds = []
    for n in names:
        pairs = [(v - r) * 1e3 for v, r in zip(got[n], got["raw"], strict=True)]
        adds.append(
            f"{median(got[n]) * 1e3 - raw_ms:+.2f} "
            f"(pairs p25 {pct(pairs, 0.25):+.1f}, p75 {pct(pairs, 0.75):+.1f})"
        )
    lines.append("| added over raw (medians) | " + " | ".join(adds) + " |")
    for floor, what in FLOORS.items():
        if got.get(floor):
            pad = " | " * (len(names) - 1)
            lines.append(f"| {floor}: TTFT of {what} (median) | {median(got[floor]) * 1e3:.2f}{pad} |")
    if got.get("floor:relay"):
        floor_ms = median(got["floor:relay"]) * 1e3
        own = []
        for n in names:
            ms = around_ms(stages[n])
            own.append(f"{median(ms) - floor_ms:+.2f}" if ms else "-")
        lines.append("| **the router's own** (around llama.cpp - floor:relay) | " + " | ".join(own) + " |")
    return head + "\n".join(lines)


def render_cascade(
    names: list[str], stages: dict[str, list[dict[str, float]]], got: dict[str, list[float]]
) -> str:
    """TTFT with the cascade judging (`auto`, a remote rung above) beside the pinned model's."""
    out = [
        "| tree | pinned TTFT ms | cascade TTFT ms | cascade's cost ms | worker's first token → client ms |",
        "|---|---|---|---|---|",
    ]
    for n in names:
        pinned, cascade = median(got[n]) * 1e3, median(got[f"{n}+cascade"]) * 1e3
        held = [(r["c_first"] - r["w_llama"]) * 1e3 for r in stages[f"{n}+cascade"] if "w_llama" in r]
        hold = f"{median(held):.2f}" if held else "-"
        out.append(f"| {n} | {pinned:.2f} | {cascade:.2f} | {cascade - pinned:+.2f} | {hold} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--ref", action="append", default=[], help="another tree's folder, measured alike")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--gap", type=float, default=0.5)
    ap.add_argument("--models-dir", default=str(Path("~/.cache/localroute/models").expanduser()))
    ap.add_argument("--no-cascade", action="store_true", help="pinned requests only (the cascade's are slow)")
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--no-floors", action="store_true", help="skip the bare-server floors")
    ap.add_argument("--detail", action="store_true", help="split the first two stages (5 more marks)")
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads (2 takes both cores here)")
    args = ap.parse_args()
    trees = {"tree": ROOT, **{f"ref{i}:{Path(p).name}": Path(p).resolve() for i, p in enumerate(args.ref)}}
    started, load0 = time.monotonic(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="lr-ttft-") as tmp:
        work = Path(os.environ.get("TTFT_KEEP") or tmp)
        cfg = work / "models.toml"
        mock = servers.start_mock(work)
        cfg.write_text(config_text(Path(args.models_dir), work / "audit.jsonl", mock.port, args.threads))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", servers.KEY_ENV: "sk-bench-mock"}
        raw = RawSide(cfg, MODEL, {**env, "PYTHONPATH": str(ROOT)}, same_cache=True)
        gws: dict[str, tuple[subprocess.Popen[bytes], int, Path]] = {}
        floors = None if args.no_floors else Floors(work, env)
        try:
            for name, tree in trees.items():
                genv = {**env, "LOCALROUTE_TTFT_DETAIL": "1"} if args.detail else env
                gws[name] = start_gateway(tree, cfg, work, name, genv)
            for _, port, _ in gws.values():
                wait_ready(port)
            clients = {n: http_client(p) for n, (_, p, _) in gws.items()}
            marks = {n: marker(m) for n, (_, _, m) in gws.items()}
            for n in gws:  # warm: the prompt's KV cache, the worker's threads
                for model in (MODEL, MODEL, "auto"):
                    gateway_run(clients[n], _nothing, args.max_tokens, model)
            for _ in range(2):
                raw.run("stream", args.max_tokens)
            for _, _, m in gws.values():
                m.write_text("")
            sides = ["raw", *gws, *(() if args.no_cascade else (f"{n}+cascade" for n in gws))]
            floor_clients = {f: http_client(p) for f, p in (floors.ports.items() if floors else ())}
            for fc in floor_clients.values():
                for _ in range(3):
                    gateway_run(fc, _nothing, args.max_tokens, "m")
            sides += list(floor_clients)
            got: dict[str, list[float]] = {s: [] for s in sides}
            cpu: dict[str, float] = {s: 0.0 for s in sides}  # the gateway process's CPU, per side
            kinds: dict[str, list[str]] = {n: [] for n in gws}  # each gateway's requests, in order
            for rep in range(args.reps):
                order = sides[rep % len(sides) :] + sides[: rep % len(sides)]
                for s in order:
                    time.sleep(args.gap)
                    if s == "raw":
                        got[s].append(raw.run("stream", args.max_tokens)[0])
                        continue
                    if s in floor_clients:
                        got[s].append(gateway_run(floor_clients[s], _nothing, args.max_tokens, "m"))
                        continue
                    n, cascade = s.removesuffix("+cascade"), s.endswith("+cascade")
                    kinds[n].append(s)
                    model = "auto" if cascade else MODEL
                    c0 = cpu_s(gws[n][0].pid)
                    got[s].append(gateway_run(clients[n], marks[n], args.max_tokens, model))
                    cpu[s] += cpu_s(gws[n][0].pid) - c0
            stages: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
            for n, (_, _, m) in gws.items():
                for kind, stamps in zip(kinds[n], requests_of(m), strict=True):
                    stages[kind].append(stamps)
        finally:
            raw.close()
            mock.stop()
            if floors is not None:
                floors.close()
            for proc, _, _ in gws.values():
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
    seconds, load1 = time.monotonic() - started, os.getloadavg()[0]
    names = list(gws)
    table = render(names, stages, got, args.detail)
    if not args.no_cascade:
        table += "\n\n" + render_cascade(names, stages, got)
    table += "\n\nGateway process CPU per request (ms, /proc ticks summed over the run): " + ", ".join(
        f"{s} {cpu[s] / len(got[s]) * 1e3:.2f}" for s in sides if s != "raw" and s not in FLOORS
    )
    notes = (
        f"SmolLM2-135M Q4_1, n_ctx 2048, threads {args.threads}, cache_prompt on, model pinned (no cascade), "
        f"temperature 0, max_tokens {args.max_tokens}, {args.reps} repetitions of raw and each tree, "
        f"rotated, {args.gap:g} s idle before each; medians of each stage over the requests (stages do not "
        "add up exactly to the median TTFT). Raw evaluates prompts as the worker does (prompt_cache: a "
        "repeated prompt reuses its logits). **around llama.cpp** = each request's client TTFT minus its "
        "own llama.cpp part (w_call to w_llama): what the router adds, independent of how fast the model "
        "ran. Trees: "
        + ", ".join(f"{n} = {t}" for n, t in trees.items())
        + f". Load average {load0:.2f} before, {load1:.2f} after; run took {seconds / 60:.1f} min."
    )
    print(f"{table}\n\n{notes}")
    if not args.no_append:
        append_result("bench.ttft_breakdown", "TTFT breakdown (stream, pinned local model)", table, notes,
                      ("llama-cpp-python", "localroute", "uvicorn", "starlette", "httpx"))  # fmt: skip


if __name__ == "__main__":
    main()
