"""Which cascade signal separates a local model's right answers from its wrong ones?

    python -m bench.cascade_signals [--n 120] [--seed 0] [--max-minutes 10] [--models a,b]

Each local model (SmolLM2-135M and gemma-3-270m, the GGUFs `localroute pull` fetched, as models.toml
declares them; gemma's block is the commented one there) answers the same short questions through a
real `localroute serve` on loopback, asked by the `openai` client with logprobs=True, top_logprobs=2,
temperature 0. Every signal is computed by `localroute.routing.confidence.signals`, the function the
router's cascade uses: mean, low-tail mean, minimum, p10/p25/median of the sampled tokens' logprobs,
and the margin between the two likeliest first tokens.

The questions are generated with a fixed seed (arithmetic, comparisons, sequences, capitals;
localroute/host/probe_set.py, the set `localroute init` calibrates on), so every answer can be checked
exactly; /work/shared/eval records which models were right, not the right
answers, and no other MMLU data is used. Per signal: AUROC (right vs wrong answers) and the APGR of
escalating the least confident first, with the strong rung taken as always right on these questions.
Then each model's threshold is calibrated (routing.calibrate, isotonic) on one half of its answers,
labelled as feedback would label them, and applied to the other half.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.cascade_quality import gateway, temp_config
from bench.common import append_result
from localroute.config.models import LlamaCppModel
from localroute.config.schema import parse_config
from localroute.host.probe_set import SYSTEM, Question, is_right, messages, questions
from localroute.observe.feedback import Labelled
from localroute.routing.calibrate import auroc, calibrate
from localroute.routing.confidence import SIGNALS, signals

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Answer:
    q: Question
    text: str
    right: bool
    signals: dict[str, float]


def model_configs() -> dict[str, LlamaCppModel]:
    """The repo's llama.cpp chat rungs, gemma's commented block included."""
    text = (ROOT / "models.toml").read_text()
    block = re.search(r"^# \[\[models\]\]\n# name = \"gemma3-270m\".*?^# \] \}\n", text, re.M | re.S)
    if block:
        text += "\n" + re.sub(r"^# ?", "", block.group(0), flags=re.M)
    cfg = parse_config(text, base_dir=ROOT)
    return {m.name: m for m in cfg.ladder() if isinstance(m, LlamaCppModel)}


def ask_all(m: LlamaCppModel, qs: list[Question], args: argparse.Namespace) -> tuple[list[Answer], float]:
    import openai

    cfg = parse_config((ROOT / "models.toml").read_text(), base_dir=ROOT)
    tail = cfg.routing.cascade.tail_fraction
    out: list[Answer] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cascade-signals-") as tmp:
        config = temp_config(cfg, m, args.threads, Path(tmp))
        with gateway(config, m.name, m.load_timeout_s) as base:
            limit = m.request_timeout_s
            client = openai.OpenAI(base_url=base, api_key="unused", timeout=limit, max_retries=0)
            for q in qs:
                if time.monotonic() - t0 > 60 * args.max_minutes:
                    print(f"{m.name}: time limit, {len(out)} of {len(qs)} answered", file=sys.stderr)
                    break
                r = client.chat.completions.create(
                    model=m.name, temperature=0, max_tokens=args.max_tokens, logprobs=True, top_logprobs=2,
                    messages=messages(q),  # type: ignore[arg-type]
                )  # fmt: skip
                ch = r.choices[0]
                entries = ch.logprobs.content if ch.logprobs and ch.logprobs.content else []
                lps = [e.logprob for e in entries]
                tops = sorted((t.logprob for t in entries[0].top_logprobs), reverse=True) if entries else []
                margin = tops[0] - tops[1] if len(tops) >= 2 else None
                text = ch.message.content or ""
                out.append(Answer(q, text, is_right(q, text), signals(lps, tail, margin)))
    return out, time.monotonic() - t0


def apgr(order: list[bool]) -> float:
    """APGR of escalating in `order` (True = the local answer was right), the strong rung always right."""
    n = len(order)
    q_weak = sum(order) / n
    if q_weak >= 1:
        return float("nan")
    right_kept = sum(order)
    pgr = []
    for k in range(n + 1):  # the first k escalated
        q = (right_kept + k) / n
        pgr.append((q - q_weak) / (1 - q_weak))
        if k < n:
            right_kept -= order[k]
    return sum((pgr[i] + pgr[i + 1]) / 2 for i in range(n)) / n


def ranked(answers: list[Answer], key: list[float], seed: int) -> float:
    """APGR escalating the lowest `key` first, ties in 20 random orders (averaged)."""
    vals = []
    for s in range(20):
        rng = random.Random(seed * 1000 + s)
        idx = sorted(range(len(answers)), key=lambda i: (key[i], rng.random()))
        vals.append(apgr([answers[i].right for i in idx]))
    return sum(vals) / len(vals)


def table(name: str, answers: list[Answer], seed: int) -> list[str]:
    right = [a.right for a in answers]
    rows = []
    for sig in SIGNALS:
        vals = [a.signals.get(sig, -99.0) for a in answers]
        rows.append((f"confidence: {sig}", auroc(vals, right), ranked(answers, vals, seed)))
    length = [-float(len(a.q.prompt)) for a in answers]  # longer prompts escalated first
    rows.append(("prompt length", auroc(length, right), ranked(answers, length, seed)))
    rows.append(("random", 0.5, ranked(answers, [0.0] * len(answers), seed)))
    rows.append(("oracle", 1.0, ranked(answers, [float(r) for r in right], seed)))
    out = [f"| {name}: {label} | {a:.3f} | {g:.3f} |" for label, a, g in rows]
    return out


def calibration(name: str, answers: list[Answer]) -> str:
    """Fit on the even-numbered answers (labelled as feedback would), apply to the odd ones."""
    train, test = answers[0::2], answers[1::2]
    rows = [Labelled({}, 0.0 if a.right else 1.0, name, 0, 0.0, "client", a.signals, name) for a in train]
    fitted = calibrate(rows, min_rows=20, escalate_above=0.5).get(name)
    if fitted is None:
        return f"| {name} | {len(train)} | no signal separates (or too few of one outcome) | - | - | - |"
    esc = [a.signals.get(fitted.signal, -99.0) < fitted.cutoff for a in test]
    kept = [a.right for a, e in zip(test, esc, strict=True) if not e]
    acc = f"{sum(kept) / len(kept):.3f}" if kept else "-"
    base = sum(a.right for a in test) / len(test)
    rule = f"{fitted.signal} < {fitted.cutoff:.3f} (train AUROC {fitted.auroc:.3f})"
    return f"| {name} | {len(train)} | {rule} | {sum(esc) / len(esc):.1%} | {acc} | {base:.3f} |"


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.cascade_signals")
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-tokens", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-minutes", type=float, default=10.0, help="per model")
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--save", help="write every answer (JSONL) here, to check the grading")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rungs = model_configs()
    qs = questions(args.n, args.seed)
    lines = ["| model: escalation ranking | AUROC right vs wrong | APGR (strong = right) |", "|---|---|---|"]
    calib = ["| model | fitted on | threshold | escalated (held out) | accuracy kept | accuracy local only |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    facts = []
    for name in args.models.split(","):
        m = rungs[name]
        answers, wall = ask_all(m, qs, args)
        if args.save:
            with open(args.save, "a", encoding="utf-8") as fh:
                for a in answers:
                    row = {"model": name, "prompt": a.q.prompt, "answer": a.q.answer, "text": a.text,
                           "right": a.right, "signals": a.signals}  # fmt: skip
                    fh.write(json.dumps(row) + "\n")
        lines += table(name, answers, args.seed)
        calib.append(calibration(name, answers))
        right = sum(a.right for a in answers)
        by_kind = ", ".join(
            f"{k} {sum(a.right for a in answers if a.q.kind == k)}/{sum(a.q.kind == k for a in answers)}"
            for k in ("add", "sub", "mul", "larger", "next", "capital")
        )
        facts.append(f"- {name}: {right}/{len(answers)} right ({by_kind}); {wall / 60:.1f} min wall")
    body = "\n\n".join(["\n".join(lines), "**Calibrated threshold, held-out half**\n\n" + "\n".join(calib),
                        "\n".join(facts)])  # fmt: skip
    notes = (
        f"Method: {len(qs)} generated questions (seed {args.seed}; add, sub, mul, larger, next, capital), "
        f"system message '{SYSTEM}' and two worked turns (2 + 3 = 5, capital of Spain), temperature 0, "
        f"max_tokens {args.max_tokens}, logprobs with "
        "top_logprobs=2, each model through a real `localroute serve` (one llama.cpp thread). Signals: "
        "routing.confidence.signals (margin = top-2 logprob gap at the first sampled token). APGR: "
        "escalating the least confident first, the strong rung counted right on every question (these "
        "are questions a frontier model answers), ties in 20 random orders. Calibration: "
        "routing.calibrate on even-numbered answers labelled 1 when wrong, applied to the odd ones."
    )
    if args.no_append:
        print(body + "\n\n" + notes)
        return
    append_result("bench.cascade_signals", "Cascade signals: AUROC and escalation APGR per signal, two local "
                  "models", body, notes, ("llama-cpp-python", "localroute", "openai"))  # fmt: skip


if __name__ == "__main__":
    main()
