"""Which learned-scorer variant generalises? Leave-subjects-out CV on ../shared/eval + bench/data/everyday.

    python -m bench.scorer_search [--configs NAME,...] [--folds 8]

Every variant is refitted per fold on the other groups only; the table gives, per variant, the median
held-out MMLU-subject APGR, how many of the 38 subjects it beats length alone on (and the sign test's
two-sided p), the same for the everyday domains, and the APGR pooled within each fold. Featurisation
is cached under /tmp (the recipe's features and the structural ones are both kept).
"""

from __future__ import annotations

import argparse
import math
import pickle
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.pairwise import fit_pairwise
from bench.scorer_structure import structural
from localroute.routing.features import Featuriser
from localroute.routing.fit import fit
from localroute.routing.train import Labelled, group_apgr, load_labelled

MMLU = Path(__file__).resolve().parents[1].parent / "shared" / "eval" / "routellm-mmlu-dev"
EVERYDAY = Path(__file__).parent / "data" / "everyday"
CACHE = Path("/tmp/localroute_scorer_search.pkl")  # --cache: another recipe's rows, for a same-run comparison

Row = dict[str, float]


def load(cache: Path = CACHE) -> tuple[Labelled, list[Row]]:
    data = load_labelled(
        [MMLU, EVERYDAY], "mistralai/Mixtral-8x7B-Instruct-v0.1,weak", "gpt-4-1106-preview,strong"
    )
    if cache.exists():
        rows: list[Row] = pickle.loads(cache.read_bytes())
        if len(rows) == len(data.convs):
            return data, rows
    f = Featuriser()
    rows = [f.featurise(c) for c in data.convs]
    cache.write_bytes(pickle.dumps(rows))
    return data, rows


def add_structural(data: Labelled, rows: list[Row]) -> None:
    """The structural features (bench/scorer_structure.py) of each prompt's last turn, into its row."""
    for r, c in zip(rows, data.convs, strict=True):
        r.update(structural(c[-1].text if c else ""))


def keep(prefixes: tuple[str, ...]) -> Callable[[Row], Row]:
    def sel(r: Row) -> Row:
        return {k: v for k, v in r.items() if k.startswith(prefixes)}

    return sel


DENSE = ("len", "depth", "s:")
CONFIGS: dict[str, tuple[tuple[str, ...], str, bool, float]] = {
    # name: (feature prefixes, label, group intercepts in the fit, l2 scale)
    "len": (("len",), "weak", False, 1.0),
    "dense": (DENSE, "weak", False, 1.0),
    "dense+x": ((*DENSE, "x:"), "weak", False, 1.0),
    "dense+x/g": ((*DENSE, "x:"), "weak", True, 1.0),
    "dense+x+e/g": ((*DENSE, "x:", "e"), "weak", True, 1.0),
    "dense+x+e": ((*DENSE, "x:", "e"), "weak", False, 1.0),
    "dense+x+e/g/sw": ((*DENSE, "x:", "e"), "gap", True, 1.0),
    "dense+x+e/g/l2x10": ((*DENSE, "x:", "e"), "weak", True, 10.0),
    "all+x/g": ((*DENSE, "x:", "e", "h"), "weak", True, 1.0),
    "all": ((*DENSE, "e", "h"), "weak", False, 1.0),
    "all/g": ((*DENSE, "e", "h"), "weak", True, 1.0),
    "all+x": ((*DENSE, "x:", "e", "h"), "weak", False, 1.0),
    "len+x": (("len", "x:"), "weak", False, 1.0),
    "len+x+e": (("len", "x:", "e"), "weak", False, 1.0),
    # pairwise ranking within groups (bench/pairwise.py): missed-by-weak above got-by-weak
    "len/pair": (("len",), "pair", False, 1.0),
    "dense+x/pair": ((*DENSE, "x:"), "pair", False, 1.0),
    "dense+x+e/pair": ((*DENSE, "x:", "e"), "pair", False, 1.0),
    "dense+x+e/pair/l2x10": ((*DENSE, "x:", "e"), "pair", False, 10.0),
    "recipe/pair": ((*DENSE, "e", "h"), "pair", False, 1.0),
    "all+x/pair": ((*DENSE, "x:", "e", "h"), "pair", False, 1.0),
    "dense+x+e/pairgap": ((*DENSE, "x:", "e"), "pairgap", False, 1.0),  # strong-only wins above the rest
}


def sign_p(wins: int, n: int) -> float:
    """Two-sided sign test p-value."""
    k = min(wins, n - wins)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def run(name: str, data: Labelled, rows: list[Row], folds: int) -> list[float]:
    prefixes, label, grouped, l2 = CONFIGS[name]
    sel = keep(prefixes)
    xs = [sel(r) for r in rows]
    if label in ("weak", "pair"):
        y = [int(not w) for w in data.weak]
        sw = data.weights()
    elif label == "pairgap":
        y = [int(s and not w) for w, s in zip(data.weak, data.strong, strict=True)]
        sw = data.weights()
    else:  # "gap": only prompts where the two models differ carry a label
        y = [int(s and not w) for w, s in zip(data.weak, data.strong, strict=True)]
        sw = [
            x if w != s else x * 0.3 for x, w, s in zip(data.weights(), data.weak, data.strong, strict=True)
        ]
    groups = sorted(set(data.groups))
    order = groups[:]
    random.Random(0).shuffle(order)
    oof = [0.0] * len(xs)
    for k in range(folds):
        held = set(order[k::folds])
        tr = [i for i, g in enumerate(data.groups) if g not in held]
        if label.startswith("pair"):
            model = fit_pairwise([xs[i] for i in tr], [y[i] for i in tr], [data.groups[i] for i in tr],
                                 [sw[i] for i in tr], l2_dense=1e-2 * l2, l2_hashed=3e-3 * l2)  # fmt: skip
        else:
            model = fit([xs[i] for i in tr], [y[i] for i in tr], [sw[i] for i in tr],
                        l2_dense=1e-2 * l2, l2_hashed=3e-3 * l2,
                        groups=[data.groups[i] for i in tr] if grouped else None)  # fmt: skip
        for i, g in enumerate(data.groups):
            if g in held:
                oof[i] = model.logit(xs[i])
    return oof


def summarise(name: str, scores: Sequence[float], length: Sequence[float], data: Labelled, folds: int) -> str:
    out = [f"{name:<20}"]
    for part in ("mmlu_", ""):
        gs = sorted({g for g in data.groups if g.startswith("mmlu_") == (part == "mmlu_")})
        vals, wins, n = [], 0, 0
        for g in gs:
            idx = [i for i, x in enumerate(data.groups) if x == g]
            a, b = group_apgr(scores, data, idx), group_apgr(length, data, idx)
            if a is None or b is None:
                continue
            vals.append(a)
            n += 1
            wins += a > b
        vals.sort()
        med = (vals[(n - 1) // 2] + vals[n // 2]) / 2
        out.append(f"med {med:.3f} mean {sum(vals) / n:.3f} >len {wins:>2}/{n} p={sign_p(wins, n):.3f}")
    groups = sorted(set(data.groups))
    order = groups[:]
    random.Random(0).shuffle(order)
    fa = []
    for k in range(folds):
        held = set(order[k::folds])
        idx = [i for i, g in enumerate(data.groups) if g in held and g.startswith("mmlu_")]
        v = group_apgr(scores, data, idx)
        if v is not None:
            fa.append(v)
    out.append(f"mmlu pooled/fold {sum(fa) / len(fa):.3f}")
    return " | ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--folds", type=int, default=8)
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    data, rows = load(args.cache)
    add_structural(data, rows)
    length = [float(len(data.text(i))) for i in range(len(rows))]
    print(f"{'variant':<20} | MMLU subjects (held out) | everyday domains (held out) | pooled")
    print(summarise("length", length, length, data, args.folds), flush=True)
    for name in args.configs.split(","):
        label = f"{args.label}{name}"
        print(summarise(label, run(name, data, rows, args.folds), length, data, args.folds), flush=True)


if __name__ == "__main__":
    main()
