"""PII detector cost, recall and false positives: `python -m bench.pii_cost [--tokens 2000] [--seconds 3]`.

Scans whole prompts (privacy cannot use a window: a secret anywhere counts) of ~N tokens (4 chars a
token) of three kinds: prose with a few numbers, source code, and a digit-dense log excerpt. Reports
p50/p99 of `Detector.kinds_in` — what the gateway runs on every request — with all kinds enabled.
Then recall per kind over `bench.pii_corpus.positives()` (the value's kind found, overlapping the value)
and the false-positive rate per family of `bench.pii_corpus.negatives()` (any finding at all).
"""

from __future__ import annotations

import argparse
import random
import time

from bench.common import append_result, pct
from bench.pii_corpus import negatives, positives
from localroute.config.privacy import ALL_KINDS
from localroute.privacy.detect import Detector

PROSE = (
    "The committee met on Tuesday to review the quarterly plan. Revenue grew 12 percent while costs "
    "fell. We discussed the roadmap, hiring, and the migration to the new platform in 2025. Please "
    "summarise the key risks and the token budget for the next release, step by step."
).split()
CODE = (
    "def handler(request): token = request.headers.get('x-token') if not token: return 401 "
    "for i in range(10): total += compute(i) * 2 # retry 3 times; timeout=30 config = {'key': None}"
).split()
LOG = (
    "2024-05-17 10:30:12 INFO worker 3 took 120 ms for job 48213 status=200 bytes=5120 retries 0 "
    "queue 17 latency p99 250.4 ms cpu 73.5 % mem 1024 MiB"
).split()


def prompt(words: list[str], tokens: int, rng: random.Random) -> str:
    out: list[str] = []
    while sum(len(w) + 1 for w in out) < tokens * 4:
        out.append(rng.choice(words))
    return " ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    rng = random.Random(7)
    det = Detector(ALL_KINDS)
    kinds = {"prose": PROSE, "code": CODE, "digit-dense log": LOG}
    texts = {k: [prompt(w, args.tokens, rng) for _ in range(20)] for k, w in kinds.items()}
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    deadline = time.monotonic() + args.seconds
    i = 0
    while time.monotonic() < deadline:  # interleaved: each kind in turn
        for k in kinds:
            t = texts[k][i % 20]
            t0 = time.perf_counter()
            det.kinds_in([t])
            samples[k].append(time.perf_counter() - t0)
        i += 1
    rows = [
        f"| {k} | {len(texts[k][0])} | {len(v)} | {pct(v, 0.5) * 1e3:.3f} | {pct(v, 0.99) * 1e3:.3f} |"
        for k, v in samples.items()
    ]
    table = (
        f"| prompt (~{args.tokens} tokens) | chars | runs | p50 ms | p99 ms |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
    )
    notes = (
        "All detectors on (email, phone, card, iban, ssn, ip, secret), whole prompt scanned. "
        "Goal: ≤ 0.5 ms per request for a 2,000-token prompt."
    )
    append_result("bench.pii_cost", "PII detector cost per request", table, notes, ("localroute",))
    append_result(
        "bench.pii_cost", "PII detector recall and false positives", quality(det), QUALITY_NOTES, ()
    )


QUALITY_NOTES = (
    "Corpus: bench/pii_corpus.py, generated with a fixed seed (no real data). Recall: the value's kind "
    "is reported for it. False positives: texts of ordinary prose, code, logs, config and version strings "
    "with any finding at all (each would make a public request private, never the reverse)."
)


def quality(det: Detector) -> str:
    hit: dict[str, list[bool]] = {}
    for kind, text in positives():
        hit.setdefault(kind, []).append(kind in {f.kind for f in det.scan(text)})
    rows = [f"| {k} | {len(v)} | {sum(v)} | {sum(v) / len(v):.1%} |" for k, v in sorted(hit.items())]
    fp: dict[str, list[bool]] = {}
    for family, text in negatives():
        fp.setdefault(family, []).append(bool(det.scan(text)))
    fp_rows = [f"| {f} | {len(v)} | {sum(v)} | {sum(v) / len(v):.1%} |" for f, v in fp.items()]
    return (
        "| kind | values | found | recall |\n|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\n| ordinary text | texts | flagged | false-positive rate |\n|---|---|---|---|\n"
        + "\n".join(fp_rows)
    )


if __name__ == "__main__":
    main()
