"""Routing on unseen exam subjects as a deployment sees them: pooled, not one subject at a time (issue 16).

    nice -n 19 python -m bench.pooled_heldout [--splits 100] [--held 8]

bench.scorer_search scores each held-out MMLU subject alone, which rewards only what is hard *within*
a subject. Traffic mixes subjects, so a scorer that knew which subjects are hard (from their words,
through the word vectors) could still win there. This checks that: `--splits` random draws of `--held`
of the 38 subjects of `../shared/eval`; each variant is fitted on the other subjects (and, unless
"/mmlu", on bench/data/everyday) and scored by APGR pooled over the held-out subjects' prompts,
beside length alone and the heuristic (repo models.toml, fitted on nothing). Label "weak": the weak
model was wrong; "gap": only the strong model was right. A draw where the two models tie is skipped.
Printed per router: median and mean APGR, the median paired difference with length, and the draws it
beats length on. Features come from bench.scorer_search's cache (/tmp).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

from bench.route_heldout import heuristic
from bench.scorer_search import add_structural, keep, load, sign_p
from localroute.config.schema import load_config
from localroute.routing.fit import fit
from localroute.routing.train import group_apgr

ROOT = Path(__file__).resolve().parents[1]
# name: (feature prefixes, label, fitted on MMLU only)
VARIANTS: dict[str, tuple[tuple[str, ...], str, bool]] = {
    "len refit": (("len",), "weak", False),
    "len+vectors": (("len", "e"), "weak", False),
    "len+vectors/gap/mmlu": (("len", "e"), "gap", True),
    "len+structural": (("len", "x:"), "weak", False),
    "len+structural/gap/mmlu": (("len", "x:"), "gap", True),
    "recipe (len, depth, vectors, hashed)": (("len", "depth", "e", "h"), "weak", False),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--splits", type=int, default=100)
    ap.add_argument("--held", type=int, default=8, help="subjects held out per draw")
    args = ap.parse_args()
    started, load0 = time.monotonic(), os.getloadavg()[0]
    data, rows = load()
    add_structural(data, rows)
    score = heuristic(load_config(ROOT / "models.toml"))
    fixed = {
        "length": [float(len(data.text(i))) for i in range(len(rows))],
        "heuristic": [score(c) for c in data.convs],
    }
    labels = {
        "weak": [int(not w) for w in data.weak],
        "gap": [int(s and not w) for w, s in zip(data.weak, data.strong, strict=True)],
    }
    weights = data.weights()
    subjects = sorted({g for g in data.groups if g.startswith("mmlu_")})
    got: dict[str, list[float]] = {n: [] for n in [*fixed, *VARIANTS]}
    xs = {name: list(map(keep(prefixes), rows)) for name, (prefixes, _, _) in VARIANTS.items()}
    rng = random.Random(1)
    for _ in range(args.splits):
        held = set(rng.sample(subjects, args.held))
        test = [i for i, g in enumerate(data.groups) if g in held]
        base = group_apgr(fixed["length"], data, test)
        if base is None:
            continue
        for name, scores in fixed.items():
            got[name].append(group_apgr(scores, data, test) or 0.0)
        for name, (_, label, mmlu_only) in VARIANTS.items():
            x, y = xs[name], labels[label]
            train = [
                i
                for i, g in enumerate(data.groups)
                if g not in held and (g.startswith("mmlu_") or not mmlu_only)
            ]
            model = fit([x[i] for i in train], [y[i] for i in train], [weights[i] for i in train],
                        l2_dense=1e-2, l2_hashed=3e-3)  # fmt: skip
            scores = [0.0] * len(rows)
            for i in test:
                scores[i] = model.logit(x[i])
            got[name].append(group_apgr(scores, data, test) or 0.0)
    base = got["length"]
    print("| router | median APGR | mean | median diff vs length | draws above length (sign test p) |")
    print("|---|---|---|---|---|")
    for name, vals in got.items():
        diff = [a - b for a, b in zip(vals, base, strict=True)]
        wins = sum(d > 0 for d in diff)
        n = len(vals)
        print(f"| {name} | {statistics.median(vals):.3f} | {statistics.mean(vals):.3f} | "
              f"{statistics.median(diff):+.3f} | {wins}/{n} (p={sign_p(wins, n):.2g}) |")  # fmt: skip
    minutes, load1 = (time.monotonic() - started) / 60, os.getloadavg()[0]
    print(f"\n{len(base)} draws of {args.held} of {len(subjects)} subjects (seed 1); "
          f"load {load0:.1f} → {load1:.1f}; {minutes:.1f} min")  # fmt: skip


if __name__ == "__main__":
    main()
