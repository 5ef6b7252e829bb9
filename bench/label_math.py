"""Write the math word problem set (`../shared/eval` format) and check real weak models on it.

    python -m bench.label_math --n 240 --seed 16 --out bench/data/mathword/mathword.csv
    nice -n 19 python -m bench.label_math --n 240 --seed 16 --check 60   # needs llama-cpp-python, GGUFs

`--check N` asks gemma-3-270m (a base model: a two-shot completion prompt written for this project,
asking for the final number, at most 12 tokens) and SmolLM2-135M-Instruct (its chat template, a system
line asking for the final number only, at most 16 tokens) through llama-cpp-python at temperature 0,
and prints how often the first integer of the answer is the known one, by step count. Both were right
on 0 of 60 (bench/RESULTS.md), far under the 10 % a usable label needs, so the CSV's `weak` column is a
*synthetic difficulty label*: `weak = steps < --hard-steps` (default 3: one or two operations count as
easy). `strong` is always True: the known answer stands for a frontier model, which solves 1-6 step
integer chains (an assumption, not a measurement). Also written: `steps`, `answer`, `group` ("mathword").
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import time
from pathlib import Path
from typing import Any

from bench.math_problems import Problem, generate

MODELS = Path("~/.cache/localroute/models").expanduser()
GEMMA = "gemma-3-270m-q4_k_m.gguf"
SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHOTS = (
    "Question: Lia has 12 shells. Then Lia finds 5 more shells. How many shells does Lia have now?\n"
    "Answer: 17\n\n"
    "Question: Max has 9 pens. Then Max buys 2 boxes with 4 pens in each box. After that, Max loses 3 "
    "pens. How many pens does Max have now?\nAnswer: 14\n\n"
)
SYSTEM = "Solve the math word problem. Reply with the final number only."
_INT = re.compile(r"-?\d[\d,]*")


def first_int(text: str) -> int | None:
    m = _INT.search(text)
    return int(m.group().replace(",", "")) if m else None


def _llama(path: Path) -> Any:
    from llama_cpp import Llama

    if not path.is_file():
        sys.exit(f"{path}: missing; run `localroute pull` (uncomment gemma3-270m in models.toml for gemma)")
    return Llama(str(path), n_ctx=1024, n_threads=1, seed=0, verbose=False)


def ask_gemma(llm: Any, p: Problem) -> str:
    out = llm.create_completion(f"{SHOTS}Question: {p.text}\nAnswer:", max_tokens=12, temperature=0.0,
                                stop=["\n"])  # fmt: skip
    return str(out["choices"][0]["text"])


def ask_smol(llm: Any, p: Problem) -> str:
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p.text}]
    out = llm.create_chat_completion(msgs, max_tokens=16, temperature=0.0)
    return str(out["choices"][0]["message"]["content"] or "")


def check(problems: list[Problem]) -> None:
    """Ask both real weak models; print how often each gets the known answer, by step count."""
    gemma, smol = _llama(MODELS / GEMMA), _llama(MODELS / SMOL)
    right: dict[str, list[tuple[int, bool]]] = {"gemma-3-270m": [], "smollm2-135m": []}
    t0 = time.perf_counter()
    for i, p in enumerate(problems):
        right["gemma-3-270m"].append((p.steps, first_int(ask_gemma(gemma, p)) == p.answer))
        right["smollm2-135m"].append((p.steps, first_int(ask_smol(smol, p)) == p.answer))
        if (i + 1) % 20 == 0:
            print(f"{i + 1}/{len(problems)} {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    for name, rs in right.items():
        print(f"{name}: right on {sum(r for _, r in rs)}/{len(rs)}; by steps: "
              + " ".join(f"{k}:{sum(r for s, r in rs if s == k)}/{sum(1 for s, _ in rs if s == k)}"
                         for k in range(1, 7)))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=240)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--hard-steps", type=int, default=3, help="synthetic label: hard when steps >= this")
    ap.add_argument("--check", type=int, default=0, help="ask the real weak models on the first N")
    ap.add_argument("--out", type=Path, default=Path("bench/data/mathword/mathword.csv"))
    args = ap.parse_args()
    problems = generate(args.n, args.seed)
    if args.check:
        check(problems[: args.check])
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["prompt", "weak", "strong", "steps", "answer", "group"])
        w.writeheader()
        w.writerows({"prompt": p.text, "weak": p.steps < args.hard_steps, "strong": True, "steps": p.steps,
                     "answer": p.answer, "group": "mathword"} for p in problems)  # fmt: skip
    print(f"{args.out}: {len(problems)} problems, {sum(p.steps >= args.hard_steps for p in problems)} hard")


if __name__ == "__main__":
    main()
