"""Cascade quality: does the local model's confidence tell its right MMLU answers from its wrong ones?

    python -m bench.cascade_quality [--n 300] [--seed 0] [--threads 1] [--max-minutes 10] [--save F]

The real local rung (the cheapest in models.toml, its GGUF found through load_config + model_path)
answers a stratified sample of the shared MMLU dev questions through a real `localroute serve` on
loopback, asked by the `openai` client with logprobs=True: the logprobs are the ones the router's
cascade judges. Temperature 0, a system message asking for one letter, a short max_tokens. The letter
is read from the start of the answer (or an answer that starts with one option's text); anything else
is unparseable and counted wrong. The sample is asked in shuffled order and asking stops after
--max-minutes, so a slow machine answers fewer questions, still spread over the subjects.

Gold letters: bench.mmlu_answers. The remote rung's correctness is the recorded `gpt-4-1106-preview`
column. Escalating the least confident answers first traces quality against the share escalated
(APGR etc., weak = the local model, strong = gpt-4), beside the pure policy score, prompt length,
random and the oracle on the same questions. Then `localroute eval` on the whole dev set (weak =
Mixtral) is put beside RouteLLM's published figures. One section is appended to bench/RESULTS.md;
`--save`/`--load` keep the answers so the scoring can be re-run without the model.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.mmlu_answers import Question, fetch_key, load_key, load_questions, stratified_sample
from localroute.config.models import LlamaCppModel
from localroute.config.schema import Config, load_config

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "eval" / "routellm-mmlu-dev"
WEAK_COL, STRONG_COL = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"
SYSTEM = "Answer the multiple-choice question with a single letter: A, B, C or D."
_LEAD = re.compile(r"^[\s*(\[]*(?:(?:the )?answer(?: is)?:?\s*)?\(?([ABCD])(?![A-Za-z0-9])", re.IGNORECASE)
_OPTION = re.compile(r"^([ABCD])\. (.*)$", re.MULTILINE)


@dataclass(frozen=True)
class Record:
    """One local answer, as the cascade saw it."""

    subject: str
    gold: str
    strong: bool
    weak: bool
    prompt: str
    text: str
    letter: str | None
    tokens: list[str]
    logprobs: list[float]
    letter_logprob: float  # the chosen letter's token (first token when no letter was found)
    prompt_tokens: int
    completion_tokens: int
    seconds: float

    @property
    def correct(self) -> bool:
        return self.letter == self.gold


def parse_letter(text: str, prompt: str) -> tuple[str | None, int]:
    """The answer's letter and its offset in `text`; (None, 0) when it names none."""
    m = _LEAD.match(text)
    if m and m.group(1).isupper():
        return m.group(1), m.start(1)
    head = " ".join(text.split()).lower()
    for letter, option in _OPTION.findall(prompt):
        opt = " ".join(option.split()).lower()
        if opt and head.startswith(opt):
            return letter, 0
    return None, 0


def token_at(tokens: list[str], offset: int) -> int:
    end = 0
    for i, t in enumerate(tokens):
        end += len(t)
        if offset < end:
            return i
    return 0


def temp_config(cfg: Config, m: LlamaCppModel, threads: int | None, folder: Path) -> Path:
    """One-rung models.toml for the same GGUF and engine settings; audit off (no log is written)."""
    opt = f'chat_format = "{m.chat_format}"\n' if m.chat_format else ""
    text = (
        '[server]\nhost = "127.0.0.1"\n\n[privacy]\naudit_enabled = false\n\n[[models]]\n'
        f'name = "{m.name}"\nengine = "llama_cpp"\nn_ctx = {m.n_ctx}\nthreads = {threads or m.threads or 2}\n'
        f"n_batch = {m.n_batch}\ncache_prompt = {str(m.cache_prompt).lower()}\n{opt}"
        f'source = {{ kind = "path", path = {json.dumps(str(cfg.model_path(m)))} }}\n'
    )
    path = folder / "models.toml"
    path.write_text(text, encoding="utf-8")
    return path


@contextmanager
def gateway(config: Path, model: str, timeout: float) -> Iterator[str]:
    """A real `localroute serve` on a free loopback port; yields its /v1 base URL once the rung is ready."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    log = config.with_name("serve.log")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "localroute", "serve", "--config", str(config), "--port", str(port)],
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
                if health["engines"][model]["state"] == "ready":
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"localroute serve did not get ready:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def ask(client: object, model: str, q: Question, max_tokens: int) -> Record:
    t0 = time.perf_counter()
    r = client.chat.completions.create(  # type: ignore[attr-defined]
        model=model,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q.prompt}],
        temperature=0,
        max_tokens=max_tokens,
        logprobs=True,
    )
    seconds = time.perf_counter() - t0
    ch = r.choices[0]
    text = ch.message.content or ""
    entries = ch.logprobs.content if ch.logprobs and ch.logprobs.content else []
    tokens, lps = [e.token for e in entries], [float(e.logprob) for e in entries]
    letter, offset = parse_letter(text, q.prompt)
    lp = lps[token_at(tokens, offset)] if lps else float("-inf")
    usage = r.usage
    return Record(
        q.subject,
        q.gold,
        q.strong,
        q.weak,
        q.prompt,
        text,
        letter,
        tokens,
        lps,
        lp,
        usage.prompt_tokens if usage else 0,
        usage.completion_tokens if usage else 0,
        seconds,
    )


def run_local(
    args: argparse.Namespace, cfg: Config, m: LlamaCppModel, sample: list[Question]
) -> list[Record]:
    import openai

    records: list[Record] = []
    deadline = time.monotonic() + 60 * args.max_minutes
    with tempfile.TemporaryDirectory(prefix="cascade-bench-") as tmp:
        config = temp_config(cfg, m, args.threads, Path(tmp))
        with gateway(config, m.name, m.load_timeout_s) as base_url:
            client = openai.OpenAI(base_url=base_url, api_key="unused", timeout=m.request_timeout_s)
            ask(client, m.name, sample[-1], args.max_tokens)  # warm-up, not counted
            for i, q in enumerate(sample):
                if time.monotonic() > deadline:
                    print(f"time limit: {len(records)} of {len(sample)} answered", file=sys.stderr)
                    break
                records.append(ask(client, m.name, q, args.max_tokens))
                if (i + 1) % 25 == 0:
                    acc = sum(r.correct for r in records) / len(records)
                    print(f"{i + 1}/{len(sample)} answered, accuracy so far {acc:.3f}", file=sys.stderr)
    return records


def save(records: list[Record], path: Path) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(asdict(r)) + "\n")


def load(path: Path) -> list[Record]:
    with path.open(encoding="utf-8") as fh:
        return [Record(**json.loads(line)) for line in fh if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.cascade_quality")
    ap.add_argument("--config", default=str(ROOT / "models.toml"))
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--n", type=int, default=300, help="questions (stratified by subject)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-tokens", type=int, default=8)
    # One thread by default: the logprobs are the same to the last digit with 1 or 2 (checked), and on a
    # 2-core box shared with other work two spinning llama.cpp threads ran ~4x slower than one.
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (0: the config's)")
    ap.add_argument("--max-minutes", type=float, default=10.0, help="stop asking after this long")
    ap.add_argument("--save", help="write the local answers (JSONL) here")
    ap.add_argument("--load", help="score answers saved by --save instead of running the model")
    ap.add_argument("--plot", default=str(ROOT / "bench" / "cascade-quality.png"))
    ap.add_argument("--no-append", action="store_true", help="print, do not append to RESULTS.md")
    args = ap.parse_args()
    from bench.cascade_report import report

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the gateway on the way out

    cfg = load_config(args.config)
    m = next((x for x in cfg.ladder() if isinstance(x, LlamaCppModel)), None)
    if m is None:
        raise SystemExit(f"{args.config}: no llama.cpp rung")
    if not cfg.model_path(m).is_file():
        raise SystemExit(f"{cfg.model_path(m)}: missing; run `localroute pull {m.name}`")
    key = load_key(fetch_key())
    questions, missing = load_questions(Path(args.data), key, WEAK_COL, STRONG_COL)
    sample = stratified_sample(questions, args.n, args.seed)
    t0 = time.monotonic()
    records = load(Path(args.load)) if args.load else run_local(args, cfg, m, sample)
    wall = time.monotonic() - t0
    if args.save:
        save(records, Path(args.save))
    report(args, cfg, m, records, len(questions), missing, wall)


if __name__ == "__main__":
    main()
