"""Measure one llama.cpp rung on this box, for `localroute init`: load time, prompt and decode
tokens/s and time to first token, in a child process (a crash or an OOM in C++ stays there).

The child loads the GGUF with the arguments the gateway's worker uses (rungs/llamacpp/worker.py
load_llama: n_ctx, threads, n_batch, chat format) and reports one JSON line per step on stdout, so the
parent can show progress and a failure becomes one line. Decode is timed as bench/local_sides.py times
the raw side (same prompt): streamed content chunks after the first, over the time from the first to
the last.

    python -m localroute.host.measure --model-path P --n-ctx N [--threads T] [--n-batch B] [--chat-format F]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from localroute.config.models import LlamaCppModel, Measured
from localroute.host.probe_set import ProbeAnswer

DECODE_PROMPT = "Count from 1 to 300, separated by commas: 1, 2, 3,"  # bench/local_sides.py's PROMPT
DECODE_MESSAGES = [{"role": "user", "content": DECODE_PROMPT}]
TTFT_MESSAGES = [{"role": "user", "content": "Say hi"}]
PROMPT_PARAGRAPH = (
    "The router sends each request to the cheapest model that can answer it well, keeps private "
    "requests on this machine, and measures what every answer cost in time and money. "
)


@dataclass(frozen=True)
class Measurement:
    """The speed figures, and the probe's answers (empty when no probe was asked or it failed;
    `probe_note` then says why)."""

    figures: Measured
    answers: tuple[ProbeAnswer, ...] = ()
    probe_note: str = ""


class MeasureError(Exception):
    """A rung that could not be measured; `reason` is one line for the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Probe:
    """`n` probe questions (seed `seed`), `max_tokens` each, for at most `budget_s` seconds."""

    n: int = 0
    seed: int = 0
    max_tokens: int = 12
    budget_s: float = 300.0


NO_PROBE = Probe()


def steps(reps: int, probe: int = 0) -> int:
    """Progress steps the child reports: the load, three measurements per repetition, one per probe."""
    return 1 + 3 * reps + probe


def measure(
    path: Path,
    m: LlamaCppModel,
    *,
    on: str,
    reps: int = 3,
    max_tokens: int = 64,
    timeout_s: float = 900.0,
    probe: Probe = NO_PROBE,
    progress: Callable[[str], None] = lambda step: None,
) -> Measurement:
    """Measure rung `m` (its GGUF at `path`); medians of `reps` repetitions; then ask it the probe's
    questions (host/probe_set.py). Raises MeasureError when the speed figures fail."""
    cmd = [sys.executable, "-m", "localroute.host.measure", "--model-path", str(path),
           "--n-ctx", str(m.n_ctx), "--n-batch", str(m.n_batch), "--reps", str(reps),
           "--max-tokens", str(max_tokens), "--probe", str(probe.n), "--probe-seed", str(probe.seed),
           "--probe-tokens", str(probe.max_tokens), "--probe-s", str(probe.budget_s)]  # fmt: skip
    timeout_s += probe.budget_s if probe.n else 0
    if m.threads is not None:
        cmd += ["--threads", str(m.threads)]
    if m.chat_format is not None:
        cmd += ["--chat-format", m.chat_format]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        assert proc.stdout is not None
        watchdog = threading.Timer(timeout_s, proc.kill)  # a hung load or decode ends the child
        watchdog.start()
        result: dict[str, float] | None = None
        problem = note = ""
        answers: list[ProbeAnswer] = []
        try:
            for line in proc.stdout:
                event = json.loads(line)
                if "answer" in event:
                    a = event["answer"]
                    answers.append(ProbeAnswer(bool(a["right"]), tuple(a["logprobs"]), a["margin"]))
                if "step" in event:
                    progress(str(event["step"]))
                elif "error" in event:
                    problem = str(event["error"])
                elif "result" in event:
                    result = event["result"]
                elif "probe_note" in event:
                    note = str(event["probe_note"])
        except (json.JSONDecodeError, TypeError):
            problem = "the measuring process wrote something unexpected"
        finally:
            if proc.poll() is None and (result is None or problem):
                proc.kill()
            code = proc.wait()
            fired = not watchdog.is_alive()
            timed_out = fired and result is None
            watchdog.cancel()
        if result is None:
            if timed_out and not problem:
                problem = f"no result within {timeout_s:g}s"
            if not problem:
                err.seek(0)
                tail = [ln for ln in err.read().decode(errors="replace").splitlines() if ln.strip()]
                problem = f"the measuring process exited with status {code}" + (
                    f" ({tail[-1][:160]})" if tail else ""
                )
            raise MeasureError(problem)
    if probe.n and not note and (problem or fired):
        note = f"the probe failed ({problem or f'no end within {timeout_s:g}s'})"
    figures = Measured(
        load_s=round(result["load_s"], 3), prompt_tps=round(result["prompt_tps"], 1),
        decode_tps=round(result["decode_tps"], 1), ttft_ms=round(result["ttft_ms"], 1),
        at=datetime.now(UTC).replace(microsecond=0), on=on[:200],
    )  # fmt: skip
    return Measurement(figures, tuple(answers), note)


# -- the child ----------------------------------------------------------------------------------------


def _emit(**event: object) -> None:
    print(json.dumps(event), flush=True)


def ask_probe(llm: Any, probe: Probe) -> None:
    """Ask the probe's questions greedily, one JSON line per answer: right or not, each sampled
    token's logprob and the first token's top-2 gap, read from the sampled row's logits with the
    worker's math (rungs/llamacpp/runner.py, its sampler hook); end-of-generation tokens excluded."""
    import llama_cpp
    import numpy as np

    from localroute.host.probe_set import is_right, messages, questions

    original, n_vocab, vocab = llm.sample, llm.n_vocab(), llm._model.vocab
    seen: list[tuple[float, float, bool]] = []  # logprob, top-2 gap, end of generation

    def sample(*args: Any, **kwargs: Any) -> int:
        token: int = original(*args, **kwargs)
        idx = kwargs.get("idx")
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, idx - llm.n_tokens if idx is not None else -1)
        logits = np.ctypeslib.as_array(ptr, shape=(n_vocab,))
        two = np.partition(logits, -2)[-2:]
        top = float(two.max())
        lse = top + math.log(float(np.exp(logits - top).sum()))
        eog = bool(llama_cpp.llama_vocab_is_eog(vocab, token))
        seen.append((float(logits[token]) - lse, top - float(two.min()), eog))
        return token

    llm.sample = sample
    deadline = time.monotonic() + probe.budget_s
    qs = questions(probe.n, probe.seed)
    for i, q in enumerate(qs):
        if time.monotonic() > deadline:
            _emit(probe_note=f"its time limit ({probe.budget_s:g}s) ended the probe after {i} of {len(qs)}")
            return
        seen.clear()
        llm.reset()
        out = llm.create_chat_completion(messages=messages(q), max_tokens=probe.max_tokens, temperature=0.0)
        kept = [(lp, gap) for lp, gap, eog in seen if not eog]
        text = out["choices"][0]["message"]["content"] or ""
        margin = kept[0][1] if kept else None
        _emit(step="probe", answer={"right": is_right(q, text), "logprobs": [round(lp, 5) for lp, _ in kept],
                                    "margin": margin})  # fmt: skip


def _prompt_rate(llm: Any, tokens: list[int]) -> float:
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(tokens)
    return len(tokens) / (time.perf_counter() - t0)


def _ttft_ms(llm: Any) -> float:
    llm.reset()
    t0 = time.perf_counter()
    chat = llm.create_chat_completion(messages=TTFT_MESSAGES, max_tokens=8, temperature=0.0, stream=True)
    for chunk in chat:
        if chunk["choices"][0]["delta"].get("content"):
            return (time.perf_counter() - t0) * 1000
    raise MeasureError("the model produced no content for a short chat prompt")


def _rate(stamps: list[float]) -> float:
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def _decode_rate(llm: Any, max_tokens: int) -> float:
    """Tokens/s after the first of a streamed chat answer, as bench/local_sides.py times the raw side.
    A model that stops early there (a base model without a chat template) is timed on a raw
    continuation with end-of-text banned instead; its Python logits hook costs a little per token."""
    llm.reset()
    stamps: list[float] = []
    chat = llm.create_chat_completion(
        messages=DECODE_MESSAGES, max_tokens=max_tokens, temperature=0.0, stream=True
    )
    for chunk in chat:
        if chunk["choices"][0]["delta"].get("content"):
            stamps.append(time.perf_counter())
    if len(stamps) >= max(2, max_tokens // 2):
        return _rate(stamps)
    import numpy as np
    from llama_cpp import LogitsProcessorList

    eos = llm.token_eos()

    def ban_eos(_ids: Any, logits: Any) -> Any:
        logits[eos] = -np.inf
        return logits

    llm.reset()
    stamps = []
    for chunk in llm.create_completion(
        DECODE_PROMPT, max_tokens=max_tokens, temperature=0.0, stream=True,
        logits_processor=LogitsProcessorList([ban_eos]),
    ):  # fmt: skip
        if chunk["choices"][0]["text"]:
            stamps.append(time.perf_counter())
    if len(stamps) < 2:
        raise MeasureError("the model decoded fewer than two tokens")
    return _rate(stamps)


def child(args: argparse.Namespace) -> None:
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(
        model_path=args.model_path, n_ctx=args.n_ctx, n_threads=args.threads, n_threads_batch=args.threads,
        n_batch=args.n_batch, chat_format=args.chat_format, verbose=False,
    )  # fmt: skip
    load_s = time.perf_counter() - t0
    _emit(step="load", value=round(load_s, 3))
    words = llm.tokenize((PROMPT_PARAGRAPH * 16).encode(), add_bos=True)
    tokens = words[: min(256, args.n_ctx // 2)]
    prompt, ttft, decode = [], [], []
    for _ in range(args.reps):
        prompt.append(_prompt_rate(llm, tokens))
        _emit(step="prompt", value=round(prompt[-1], 1))
        ttft.append(_ttft_ms(llm))
        _emit(step="ttft", value=round(ttft[-1], 1))
        decode.append(_decode_rate(llm, args.max_tokens))
        _emit(step="decode", value=round(decode[-1], 1))
    med = statistics.median
    rates = {"prompt_tps": med(prompt), "decode_tps": med(decode), "ttft_ms": med(ttft)}
    _emit(result={"load_s": load_s, **rates})
    if args.probe:
        ask_probe(llm, Probe(args.probe, args.probe_seed, args.probe_tokens, args.probe_s))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m localroute.host.measure")
    p.add_argument("--model-path", required=True)
    p.add_argument("--n-ctx", type=int, required=True)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--n-batch", type=int, default=512)
    p.add_argument("--chat-format", default=None)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--probe", type=int, default=0)
    p.add_argument("--probe-seed", type=int, default=0)
    p.add_argument("--probe-tokens", type=int, default=12)
    p.add_argument("--probe-s", type=float, default=300.0)
    args = p.parse_args(argv)
    try:
        child(args)
    except MeasureError as exc:
        _emit(error=exc.reason)
        return 1
    except Exception as exc:  # llama.cpp raises ValueError/RuntimeError for a bad file: one line, no trace
        _emit(error=f"{exc.__class__.__name__}: {str(exc)[:160]}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
