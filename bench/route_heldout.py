"""Routing on our own held-out groups: math word problems and multi-turn chats (issue 16).

    nice -n 19 python -m bench.route_heldout [--ablate] [--candidates]

Both sets are held out whole. Per set: APGR of the heuristic (repo models.toml), length (characters
of the whole conversation), random (mean of 20 seeded permutations), the shipped learned scorer
(`routing/data/scorer.json`, fitted on `../shared/eval` + everyday: both new sets are unseen by it),
and two refits of the shipped recipe that see every set but the one scored (pointwise "weak wrong",
and the pairwise objective of bench/pairwise.py). The heuristic's figures on `../shared/eval` and
everyday are printed too, so a change to it is read in one run.
`--ablate`: the heuristic with each keyword signal dropped in turn, and length alone inside it.
`--candidates`: the changes to the heuristic tried and not adopted (docs/routing.md): a term per
number in the prompt, `negation` restricted to upper-case exam wording, a larger length weight.
The MMLU and everyday features come from bench.scorer_search's cache (/tmp; computed once, minutes,
when it is missing).
"""

from __future__ import annotations

import argparse
import math
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.math_problems import generate, narrate
from bench.pairwise import fit_pairwise
from bench.scorer_search import EVERYDAY, MMLU, load
from localroute.config.routing import Signal
from localroute.config.schema import Config, load_config
from localroute.routing.evaluate import oracle_scores
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


NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?")
UPPER = r"(?-i:\b(?:NOT|EXCEPT|LEAST|FALSE|INCORRECT|NEVER|CANNOT)\b)"
UPPER_NEGATION = Signal(name="negation", weight=0.4, max_hits=3, patterns=[UPPER])


def with_numbers(config: Config, weight: float, cap: int) -> Scores:
    """Candidate fix: the heuristic's logit plus `weight` per number in the last user turn's window."""
    score = heuristic(config)

    def f(turns: Sequence[Turn]) -> float:
        p = min(max(score(turns), 1e-12), 1 - 1e-12)
        last = next((t.text for t in reversed(turns) if t.role == "user"), "")
        last = last if len(last) <= 1200 else last[:800] + "\n" + last[-400:]
        return math.log(p / (1 - p)) + weight * min(len(NUMBER.findall(last)), cap)

    return f


LENGTH_WEIGHTS = ((0.5, 1.5), (0.7, 1.5), (1.0, 3.0))  # (length_weight, length_cap); default 0.35, 1.5


def longer(config: Config, weight: float, cap: float) -> Scores:
    """Candidate fix: the heuristic with a larger length weight (and cap)."""
    routing = config.routing.model_copy(update={"length_weight": weight, "length_cap": cap})
    return Policy(config.model_copy(update={"routing": routing})).score_turns


def upper_negation(config: Config) -> Scores:
    """Candidate fix: `negation` only for exam-style upper-case NOT/EXCEPT/..."""
    sigs = [UPPER_NEGATION if s.name == "negation" else s for s in DEFAULT_SIGNALS]
    routing = config.routing.model_copy(update={"signals": sigs, "replace_default_signals": True})
    return Policy(config.model_copy(update={"routing": routing})).score_turns


def narrative_check(config: Config, candidates: bool) -> None:
    """The math set with incidental signal words inserted at random (math_problems.narrate)."""
    probs = narrate(generate(240, 16), seed=1)
    data = Labelled(tuple((Turn("user", p.text),) for p in probs), tuple(p.steps < 3 for p in probs),
                    (True,) * len(probs), ("mathword",) * len(probs))  # fmt: skip
    idx = list(range(len(probs)))
    routers: dict[str, Scores] = {"heuristic": heuristic(config), "length": lambda c: float(len(c[0].text))}
    if candidates:
        routers["h:NEGATION upper"] = upper_negation(config)
        for w, cap in LENGTH_WEIGHTS:
            routers[f"h:length {w}/{cap}"] = longer(config, w, cap)
    for name, f in routers.items():
        print(f"mathword+narrative  {name:<18} {group_apgr([f(c) for c in data.convs], data, idx) or 0:.3f}")


def sets(data: Labelled) -> dict[str, list[int]]:
    names = ("mmlu (pooled)", "everyday", "mathword", "multiturn")  # the order of the --data paths
    return {k: [i for i, s in enumerate(data.sources) if s == n] for n, k in enumerate(names)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ablate", action="store_true")
    ap.add_argument("--candidates", action="store_true", help="the heuristic changes tried (not adopted)")
    args = ap.parse_args()
    base, base_rows = load()
    new = load_labelled([MATH, MULTI], WEAK, STRONG)
    data = load_labelled([MMLU, EVERYDAY, MATH, MULTI], WEAK, STRONG)
    assert data.convs[: len(base.convs)] == base.convs
    feat = Featuriser()
    assert feat.featurise(base.convs[0]) == base_rows[0], "stale cache: delete it and run again"
    rows = [*base_rows, *(feat.featurise(c) for c in new.convs)]
    config = load_config(ROOT / "models.toml")
    y, sw = labels(data), data.weights()
    refit, pair = [0.0] * len(rows), [0.0] * len(rows)
    for held in (2, 3):  # each new set scored by models fitted on every other source
        tr = [i for i, s in enumerate(data.sources) if s != held]
        pw = fit_pairwise([rows[i] for i in tr], [y[i] for i in tr], [data.groups[i] for i in tr],
                          [sw[i] for i in tr])  # fmt: skip
        lin = fit([rows[i] for i in tr], [y[i] for i in tr], [sw[i] for i in tr])
        for i, s in enumerate(data.sources):
            if s == held:
                refit[i], pair[i] = lin.logit(rows[i]), pw.logit(rows[i])
    shipped = load_scorer(DEFAULT_ARTIFACT)
    convs = data.convs
    scores: dict[str, list[float]] = {
        "heuristic": list(map(heuristic(config), convs)),
        "length": [float(len(data.text(i))) for i in range(len(convs))],
        "shipped": [shipped.score(c).probability for c in convs],
        "refit": refit,
        "refit/pair": pair,
        "oracle": oracle_scores(data.weak, data.strong),
    }
    if args.ablate:
        scores["h:len+depth"] = list(map(heuristic(config, only_length=True), convs))
        for sig in DEFAULT_SIGNALS:
            scores[f"h-{sig.name}"] = list(map(heuristic(config, drop=sig.name), convs))
    if args.candidates:
        for w, cap in ((0.05, 4), (0.1, 4), (0.1, 8), (0.2, 8)):
            scores[f"h+numbers {w}x<={cap}"] = list(map(with_numbers(config, w, cap), convs))
        scores["h:NEGATION upper"] = list(map(upper_negation(config), convs))
        for w, cap in LENGTH_WEIGHTS:
            scores[f"h:length {w}/{cap}"] = list(map(longer(config, w, cap), convs))
    parts = sets(data)
    print(f"{'router':<16} " + " ".join(f"{k[:24]:>24}" for k in parts))
    print(f"{'random':<16} " + " ".join(f"{random_apgr(data, idx):>24.3f}" for idx in parts.values()))
    for name, sc in scores.items():
        vals = [group_apgr(sc, data, idx) if any(sc[i] for i in idx) else 0.0 for idx in parts.values()]
        print(f"{name:<16} " + " ".join(f"{v or 0:>24.3f}" for v in vals))
    for k, idx in parts.items():
        hard = sum(1 for i in idx if not data.weak[i])
        print(f"{k}: n={len(idx)}, weak wrong on {hard}")
    narrative_check(config, args.candidates)
    print(
        "refit, refit/pair: each new set scored by a model fitted on the three other sets (pointwise,"
        " pairwise); their mmlu and everyday columns are not held out (0.000)"
    )


if __name__ == "__main__":
    main()
