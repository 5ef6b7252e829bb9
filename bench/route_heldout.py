"""Routing on our own held-out groups: math word problems and multi-turn chats (issue 16).

    nice -n 19 python -m bench.route_heldout [--ablate]

Both sets are held out whole: the refit learns on `../shared/eval` + bench/data/everyday only (the
shipped recipe, the labels "weak model wrong"), then ranks the new sets. Per set: APGR of the
heuristic (repo models.toml), length (characters of the whole conversation), random (mean of 20 seeded
permutations), the shipped learned scorer (`routing/data/scorer.json`) and the refit. The heuristic's
figures on `../shared/eval` and everyday are printed too, so a change to it is read in one run.
`--ablate`: the heuristic with each keyword signal dropped in turn, and length alone inside it.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.scorer_search import EVERYDAY, MMLU, load
from localroute.config.routing import Signal
from localroute.config.schema import Config, load_config
from localroute.routing.features import Featuriser, Turn
from localroute.routing.fit import fit
from localroute.routing.policy import Policy
from localroute.routing.scorer import DEFAULT_ARTIFACT, load_scorer
from localroute.routing.signals import DEFAULT_SIGNALS
from localroute.routing.train import Labelled, group_apgr, labels, load_labelled

ROOT = Path(__file__).resolve().parents[1]
MATH = ROOT / "bench" / "data" / "mathword"
MULTI = ROOT / "bench" / "data" / "multiturn"
WEAK, STRONG = "mistralai/Mixtral-8x7B-Instruct-v0.1,weak", "gpt-4-1106-preview,strong"
Scores = Callable[[Sequence[Turn]], float]


def random_apgr(data: Labelled, idx: Sequence[int], perms: int = 20) -> float:
    vals = []
    for k in range(perms):
        order = random.Random(k).sample(range(len(idx)), len(idx))
        sc = [0.0] * len(data.convs)
        for rank, i in zip(order, idx, strict=True):
            sc[i] = float(rank)
        vals.append(group_apgr(sc, data, idx) or 0.5)
    return sum(vals) / len(vals)


def heuristic(config: Config, drop: str = "", only_length: bool = False) -> Scores:
    """The heuristic policy, optionally without one signal (or with none: length and depth only)."""
    if drop or only_length:
        keep = [] if only_length else [s for s in DEFAULT_SIGNALS if s.name != drop]
        # a zero-weight signal that never fires keeps the defaults out when the list is empty
        keep = keep or [Signal(name="none", weight=0.0, words=["\x00never"])]
        routing = config.routing.model_copy(update={"signals": keep, "replace_default_signals": True})
        config = config.model_copy(update={"routing": routing})
    return Policy(config).score_turns


def sets(data: Labelled) -> dict[str, list[int]]:
    names = ("mmlu (pooled)", "everyday", "mathword", "multiturn")  # the order of the --data paths
    return {k: [i for i, s in enumerate(data.sources) if s == n] for n, k in enumerate(names)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ablate", action="store_true")
    args = ap.parse_args()
    base, base_rows = load()
    new = load_labelled([MATH, MULTI], WEAK, STRONG)
    data = load_labelled([MMLU, EVERYDAY, MATH, MULTI], WEAK, STRONG)
    assert data.convs[: len(base.convs)] == base.convs
    feat = Featuriser()
    rows = [*base_rows, *(feat.featurise(c) for c in new.convs)]
    config = load_config(ROOT / "models.toml")
    y, sw = labels(data), data.weights()
    train = [i for i, s in enumerate(data.sources) if s < 2]
    refit = fit([rows[i] for i in train], [y[i] for i in train], [sw[i] for i in train])
    shipped = load_scorer(DEFAULT_ARTIFACT)
    routers: dict[str, Callable[[int], float]] = {
        "heuristic": lambda i, h=heuristic(config): h(data.convs[i]),
        "length": lambda i: float(len(data.text(i))),
        "shipped": lambda i: shipped.score(data.convs[i]).probability,
        "refit": lambda i: refit.logit(rows[i]),
    }
    if args.ablate:
        routers["h:len+depth"] = lambda i, h=heuristic(config, only_length=True): h(data.convs[i])
        for s in DEFAULT_SIGNALS:
            routers[f"h-{s.name}"] = lambda i, h=heuristic(config, drop=s.name): h(data.convs[i])
    parts = sets(data)
    scores = {name: [f(i) for i in range(len(data.convs))] for name, f in routers.items()}
    print(f"{'router':<16} " + " ".join(f"{k[:24]:>24}" for k in parts))
    print(f"{'random':<16} " + " ".join(f"{random_apgr(data, idx):>24.3f}" for idx in parts.values()))
    for name, sc in scores.items():
        print(f"{name:<16} " + " ".join(f"{group_apgr(sc, data, idx) or 0:>24.3f}" for idx in parts.values()))
    for k, idx in parts.items():
        hard = sum(1 for i in idx if not data.weak[i])
        print(f"{k}: n={len(idx)}, weak wrong on {hard}")
    print("refit: fitted on mmlu + everyday (in-sample there), mathword and multiturn held out")


if __name__ == "__main__":
    main()
