"""The models.toml `localroute init` writes: every rung with a comment saying where it comes from, and
every measured figure with when and on what it was measured (or why it is missing)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import datetime

from localroute.config.models import ConfidenceThreshold, Measured
from localroute.host.catalogue import Entry
from localroute.host.plan import Box, Plan

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")

SERVER = """[server]
host = "127.0.0.1"          # any other address requires [[keys]] (or `serve --insecure-no-auth`)
port = 8000
models_dir = "~/.cache/localroute/models"   # or set LOCALROUTE_MODELS_DIR
log_level = "info"
log_format = "json"
"""

REMOTE = """# The remote frontier rung: any OpenAI-compatible API. The key is read from the environment
# variable named here (never written in this file); without it the rung is disabled and everything is
# served locally. It is the only code path that sends a request off this machine.
[[models]]
name = "frontier"
engine = "remote"
tier = 10
base_url = "https://api.openai.com/v1"
model = "gpt-4o"
api_key_env = "OPENAI_API_KEY"
n_ctx = 128000
price = { input_per_mtok = 2.50, output_per_mtok = 10.00 }
"""

TAIL = """[cost]
baseline = "frontier"

# How `model: "auto"` picks a rung (docs/routing.md); `localroute explain` shows it for any request.
[routing]
bias = -0.6
length_weight = 0.35
length_pivot_tokens = 120
depth_weight = 0.15

[routing.cascade]
enabled = true
min_mean_logprob = -1.2
min_tail_logprob = -4.5
tail_fraction = 0.1
min_length_tokens = 32
buffer_tokens = 16
"""


def toml_value(v: object) -> str:
    """A TOML literal for `v` (the standard library reads TOML but does not write it)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # ASCII JSON strings are TOML basic strings
    if isinstance(v, datetime):
        return v.isoformat().replace("+00:00", "Z")
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML form for {type(v).__name__}")


def toml_key(k: str) -> str:
    """A key as TOML reads it back: bare when it can be, else quoted (`"config.json"`)."""
    return k if _BARE_KEY.match(k) else json.dumps(k)


Outcome = Measured | str  # the figures, or why there are none
Threshold = ConfidenceThreshold | str  # the fitted threshold, or why there is none
COLD_WAIT_S = 5.0  # the schema's default, kept when nothing was measured


def _threshold_lines(t: Threshold, probe: str) -> list[str]:
    if isinstance(t, str):
        return [f"# confidence: not calibrated ({t}); the [routing.cascade] thresholds apply."]
    return [
        f"# confidence: fitted by `localroute init` on {probe}: {t.n} answers here, {t.right} right and",
        f"# {(t.n or 0) - (t.right or 0)} wrong; {t.signal} ranks them with AUROC {t.auroc} and an `auto` "
        f"answer with {t.signal}",
        "# below the cutoff is escalated (isotonic fit, routing/calibrate.py). Feedback refits it while",
        "# serving (docs/learning.md).",
        "confidence = " + toml_value(t.model_dump(mode="python", exclude_none=True)),
    ]


def cold_wait_line(outcomes: Mapping[str, Outcome]) -> str:
    """`max_cold_wait_s`: 1.5x the slowest measured load, so a measured rung can be woken on demand
    (at least the default, at most a minute); the default when nothing was measured."""
    loads = {name: o.load_s for name, o in outcomes.items() if isinstance(o, Measured)}
    if not loads:
        return f"max_cold_wait_s = {COLD_WAIT_S}   # nothing measured: a cold rung slower to load yields"
    slowest = max(loads, key=lambda n: loads[n])
    wait = min(60.0, max(COLD_WAIT_S, float(math.ceil(1.5 * loads[slowest]))))
    return (f"# 1.5x the slowest measured load ({slowest}: {loads[slowest]} s), at least {COLD_WAIT_S} s, "
            "at most 60 s:\n# a cold rung slower to load than this yields to a warm one.\n"
            f"max_cold_wait_s = {wait}")  # fmt: skip


def _measured_lines(m: Outcome, threads: int, n_ctx: int) -> list[str]:
    if isinstance(m, str):
        return [f"# not measured: {m}; the policy assumes 250 prompt and 50 decode tokens/s"]
    return [
        f"# measured by `localroute init` at {toml_value(m.at)} on this box ({threads} threads, "
        f"n_ctx {n_ctx}):",
        "# load_s: seconds to load the GGUF; prompt_tps / decode_tps: tokens/s evaluating a 256-token",
        "# prompt / decoding (medians); ttft_ms: time to the first token of a short chat prompt. The",
        "# policy's cost estimate and max_cold_wait_s use them; re-run `localroute init --write` after",
        "# changing the box.",
        "measured = " + toml_value(m.model_dump(mode="python")),
    ]


def _llama_rung(
    e: Entry, tier: int, max_score: float, threads: int, outcome: Outcome, threshold: Threshold, probe: str
) -> list[str]:
    assert e.source is not None
    src = e.source.model_dump(exclude_none=True)
    src_note = ("# sha256 and size not pinned: the hub's own checksum is checked at first pull"
                if e.needs_hub else "# pinned: `localroute pull` checks the sha256 and size")  # fmt: skip
    lines = [
        f"# Rung {tier}: {e.note}.",
        f"# {e.params} parameters, licence {e.licence}, trained context {e.context_length} tokens.",
        "[[models]]",
        f"name = {toml_value(e.name)}",
        'engine = "llama_cpp"',
        f"tier = {tier}",
        f"n_ctx = {e.n_ctx}",
        f"threads = {threads}",
    ]
    if e.chat_format:
        lines.append(f"chat_format = {toml_value(e.chat_format)}")
    lines += [
        f"default_max_tokens = {min(512, e.n_ctx // 4)}",
        "preload = true             # the cheapest rung starts with the gateway"
        if tier == 0
        else "preload = false            # started on first use",
        "idle_ttl_s = 600           # the worker stops after 10 idle minutes (memory returns)"
        if tier
        else "# idle_ttl_s = 600",
        src_note,
        f"source = {toml_value(src)}",
        "price = { per_hour = 0.02 }   # $ per CPU-core-hour (add watts and per_kwh for energy)",
        f"max_score = {max_score}           # default for this place on the ladder, not measured",
        *_measured_lines(outcome, threads, e.n_ctx),
        *_threshold_lines(threshold, probe),
        "",
    ]
    return lines


def _vllm_rung(e: Entry, tier: int, max_score: float) -> list[str]:
    return [
        f"# Rung {tier}: {e.note} ({e.params} parameters, licence {e.licence}); needs",
        f"# ~{e.approx_memory_mib} MiB of GPU memory (approximate). Not measured by init.",
        "[[models]]",
        f"name = {toml_value(e.name)}",
        'engine = "vllm"',
        f"tier = {tier}",
        f"model = {toml_value(e.model)}",
        "launch = true",
        f"n_ctx = {e.n_ctx}",
        "preload = false",
        "price = { per_hour = 1.0 }   # $ per GPU-hour: set your own",
        "# no `measured`: init cannot start vLLM without its GPU here, so the policy's defaults apply",
        f"max_score = {max_score}",
        "",
    ]


def _embed_rung(e: Entry, note: str) -> list[str]:
    assert e.source is not None
    return [
        f"# Embeddings (`POST /v1/embeddings`): {e.note} ({e.licence}, {e.dimensions} dimensions).",
        *([note] if note else []),
        "[[models]]",
        f"name = {toml_value(e.name)}",
        'task = "embed"',
        'engine = "llama_cpp"',
        f"dimensions = {e.dimensions}",
        f"max_input_tokens = {e.n_ctx}",
        f"n_ctx = {e.n_ctx}",
        "n_batch = 64",
        "threads = 1                # small decodes: a second thread mostly waits at the barriers",
        "preload = true",
        "price = { per_hour = 0.02 }",
        f"source = {toml_value(e.source.model_dump(exclude_none=True))}",
        "",
    ]


def render(
    plan: Plan,
    box: Box,
    *,
    catalogue_version: int,
    budget: str,
    hub_line: str,
    outcomes: Mapping[str, Outcome],
    threads: int,
    thresholds: Mapping[str, Threshold] | None = None,
    probe: str = "its probe questions",
    embed_note: str = "",
) -> str:
    """The whole models.toml. `outcomes` holds each llama.cpp chat rung's measurement or why none,
    `thresholds` its confidence threshold or why none (`probe` names the question set);
    `threads` is each llama.cpp chat rung's thread count; `embed_note` the embedder's measured line(s)."""
    thresholds = thresholds or {}
    out = [
        "# localroute models.toml, written by `localroute init` from its model catalogue "
        f"(version {catalogue_version}).",
        f"# The box: {box.describe()}.",
        f"# {hub_line}",
        f"# Memory budget {budget}: every local rung fits it alone; idle rungs are unloaded to make room.",
    ]
    if plan.left_out:
        out.append("# Left out of this ladder:")
        out += [f"#   {name}: {why}" for name, why in plan.left_out]
    out += [
        "# Re-run `localroute init` to see what it would change (a diff); `--write` applies it.",
        "",
        SERVER,
    ]
    for r in plan.chat:
        if r.entry.engine == "vllm":
            out += _vllm_rung(r.entry, r.tier, r.max_score)
        else:
            outcome = outcomes.get(r.entry.name, "not measured")
            threshold = thresholds.get(r.entry.name, "not measured")
            out += _llama_rung(r.entry, r.tier, r.max_score, threads, outcome, threshold, probe)
    if plan.embed is not None:
        out += _embed_rung(plan.embed, embed_note)
    out += [REMOTE, "[resources]", f"memory_budget = {toml_value(budget)}",
            cold_wait_line(outcomes), "",
            TAIL]  # fmt: skip
    return "\n".join(out)
