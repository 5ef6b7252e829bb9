"""`localroute eval`: score a difficulty ranking on labelled prompts with RouteLLM's metrics.

A router sends the share x of prompts with the highest scores to the strong model. q(x) is the
resulting accuracy, PGR(x) = (q(x) - q_weak) / (q_strong - q_weak), APGR the trapezoid area of PGR
over x = k/N (k = 0..N), CPT(p) the smallest such x with PGR(x) >= p. Tied scores are routed
fractionally: every curve is the mean over all orders of the tied prompts, so ties never help a router.
"""

from __future__ import annotations

import csv
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from localroute.config.models import Price
from localroute.config.schema import Config
from localroute.errors import LocalRouteError
from localroute.routing.policy import Policy

EPS = 1e-9  # float slack when comparing a curve with a target
RANDOM_PERMUTATIONS = 20
QUALITY_TARGET = 0.95
CHARS_PER_TOKEN = 4.0
PROMPT_TOK_S, OUTPUT_TOK_S = 250.0, 50.0  # local CPU, as in Policy.estimated_cost
DEFAULT_STRONG_PRICE = Price(input_per_mtok=2.5, output_per_mtok=10.0)
REFERENCE = "RouteLLM on MMLU: APGR ~0.60 learned router, length baseline 0.59 per our issue tracker"
METRICS = ("apgr", "cpt50", "cpt80", "strong_share_at_95", "savings_at_95")
_BOOL = {"true": True, "false": False, "1": True, "0": False}


class EvalError(LocalRouteError):
    """Bad evaluation input (file, column, value); the message is one line naming the culprit."""


@dataclass(frozen=True)
class Dataset:
    prompts: tuple[str, ...]
    weak: tuple[bool, ...]  # weak model answered correctly
    strong: tuple[bool, ...]
    files: tuple[str, ...]


@dataclass(frozen=True)
class CostModel:
    """Per-prompt cost: len/4 input tokens and `output_tokens` output, priced per rung."""

    weak: Price
    strong: Price
    weak_label: str
    strong_label: str
    output_tokens: int


@dataclass(frozen=True)
class RouterResult:
    name: str
    apgr: float
    cpt50: float | None
    cpt80: float | None
    strong_share_at_95: float  # smallest x with q(x) >= 0.95 q_strong
    savings_at_95: float  # 1 - cost at that x / cost of all-strong
    quality: tuple[float, ...]  # q(k/N), k = 0..N


@dataclass(frozen=True)
class Report:
    n: int
    files: int
    q_weak: float
    q_strong: float
    weak: str
    strong: str
    costs: CostModel
    seed: int
    policy_seconds: float
    routers: tuple[RouterResult, ...]


def csv_files(paths: Sequence[str | Path]) -> list[Path]:
    """Expand folders to the *.csv inside them (sorted); every path must exist."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise EvalError(f"{p}: no such file or folder")
        found = sorted(p.glob("*.csv")) if p.is_dir() else [p]
        if not found:
            raise EvalError(f"{p}: folder holds no .csv files")
        out.extend(found)
    return out


def load_dataset(paths: Sequence[str | Path], weak: str, strong: str) -> Dataset:
    """Read `prompt` and two boolean columns from CSV files (or folders of them)."""
    prompts: list[str] = []
    w: list[bool] = []
    s: list[bool] = []
    files = csv_files(paths)
    for f in files:
        try:
            with f.open(encoding="utf-8", newline="") as fh:
                reader = csv.DictReader(fh)
                cols = reader.fieldnames or []
                for col in ("prompt", weak, strong):
                    if col not in cols:
                        raise EvalError(f"{f}: no column {col!r} (columns: {', '.join(cols) or 'none'})")
                for row in reader:
                    prompts.append(row["prompt"] or "")
                    w.append(_parse_bool(row[weak], f, reader.line_num, weak))
                    s.append(_parse_bool(row[strong], f, reader.line_num, strong))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise EvalError(f"{f}: not a readable UTF-8 CSV ({exc.__class__.__name__})") from None
    if not prompts:
        raise EvalError("no prompts found in the data")
    return Dataset(tuple(prompts), tuple(w), tuple(s), tuple(str(f) for f in files))


def _parse_bool(value: str | None, f: Path, line: int, col: str) -> bool:
    b = _BOOL.get((value or "").strip().lower())
    if b is None:
        raise EvalError(f"{f}:{line}: column {col!r} holds {value!r}, expected True or False")
    return b


def routed_sums(scores: Sequence[float], values: Sequence[float]) -> list[float]:
    """Expected sum of `values` over the k highest-scoring items, for k = 0..N; ties split evenly."""
    if any(math.isnan(x) for x in scores):
        raise ValueError("scores contain NaN")
    n = len(scores)
    order = sorted(range(n), key=lambda i: -scores[i])
    out = [0.0] * (n + 1)
    total, i = 0.0, 0
    while i < n:
        j, group = i, 0.0
        while j < n and scores[order[j]] == scores[order[i]]:
            group += values[order[j]]
            j += 1
        size = j - i
        for k in range(1, size + 1):
            out[i + k] = total + group * k / size
        total += group
        i = j
    return out


def quality_curve(scores: Sequence[float], weak: Sequence[bool], strong: Sequence[bool]) -> list[float]:
    """q(k/N) for k = 0..N when the k highest-scoring prompts go to the strong model."""
    base, n = sum(weak), len(scores)
    gains = [int(s) - int(w) for w, s in zip(weak, strong, strict=True)]
    return [(base + g) / n for g in routed_sums(scores, gains)]


def pgr_curve(quality: Sequence[float], q_weak: float, q_strong: float) -> list[float]:
    """Performance gap recovered at each point of a quality curve."""
    if q_strong == q_weak:
        raise ValueError("the weak and strong models have equal accuracy: PGR is undefined")
    return [(q - q_weak) / (q_strong - q_weak) for q in quality]


def apgr(pgr: Sequence[float]) -> float:
    """Trapezoid area under PGR over evenly spaced x from 0 to 1."""
    return (sum(pgr) - (pgr[0] + pgr[-1]) / 2) / (len(pgr) - 1)


def first_share(curve: Sequence[float], target: float) -> float | None:
    """Smallest x = k/N with curve[k] >= target, or None."""
    return next((k / (len(curve) - 1) for k, v in enumerate(curve) if v >= target - EPS), None)


def length_scores(prompts: Sequence[str]) -> list[float]:
    return [float(len(p)) for p in prompts]


def oracle_scores(weak: Sequence[bool], strong: Sequence[bool]) -> list[float]:
    """Strong-only wins first, weak-only wins last: the best possible ranking."""
    return [float(int(s) - int(w)) for w, s in zip(weak, strong, strict=True)]


def request_cost(price: Price, prompt_chars: int, output_tokens: int) -> float:
    """USD for one request: token prices plus compute time at PROMPT_TOK_S / OUTPUT_TOK_S."""
    tin = prompt_chars / CHARS_PER_TOKEN
    tokens = (tin * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1e6
    return tokens + price.per_hour * (tin / PROMPT_TOK_S + output_tokens / OUTPUT_TOK_S) / 3600


def cost_model(config: Config, output_tokens: int) -> CostModel:
    """Weak: the cheapest rung. Strong: the last rung if priced, else DEFAULT_STRONG_PRICE."""
    ladder = config.ladder()
    top = ladder[-1]
    priced = len(ladder) > 1 and any(top.price.model_dump().values())
    strong = top.price if priced else DEFAULT_STRONG_PRICE
    strong_label = top.name if priced else "default frontier price (no priced strong rung in config)"
    return CostModel(ladder[0].price, strong, ladder[0].name, strong_label, output_tokens)


def router_result(
    name: str, quality: Sequence[float], cost: Sequence[float], q_weak: float, q_strong: float
) -> RouterResult:
    """Metrics of one quality curve and its matching total-cost curve."""
    pgr = pgr_curve(quality, q_weak, q_strong)
    share = first_share(quality, QUALITY_TARGET * q_strong)
    x = 1.0 if share is None else share
    k = round(x * (len(cost) - 1))
    saved = 1 - cost[k] / cost[-1] if cost[-1] > 0 else 0.0
    return RouterResult(name, apgr(pgr), first_share(pgr, 0.5), first_share(pgr, 0.8), x, saved,
                        tuple(quality))  # fmt: skip


def evaluate(
    data: Dataset,
    policy: Policy,
    weak: str,
    strong: str,
    costs: CostModel,
    seed: int = 0,
    name: str = "policy",
    also: Sequence[tuple[str, Policy]] = (),
) -> Report:
    """Score the policy (and any `also`) and the length, random and oracle baselines on `data`."""
    n = len(data.prompts)
    q_weak, q_strong = sum(data.weak) / n, sum(data.strong) / n
    if q_weak == q_strong:
        raise EvalError(f"{weak!r} and {strong!r} have equal accuracy ({q_weak:.4f}): PGR is undefined")
    t0 = time.perf_counter()
    policy_scores = [policy.score_text(p) for p in data.prompts]
    seconds = time.perf_counter() - t0
    out = costs.output_tokens
    wc = [request_cost(costs.weak, len(p), out) for p in data.prompts]
    delta = [request_cost(costs.strong, len(p), out) - w for p, w in zip(data.prompts, wc, strict=True)]
    base = sum(wc)

    def curves(scores: Sequence[float]) -> tuple[list[float], list[float]]:
        return quality_curve(scores, data.weak, data.strong), [base + d for d in routed_sums(scores, delta)]

    # Random: the mean curve of seeded permutations; its expected APGR is exactly 0.5.
    perms = [curves(random.Random(seed + i).sample(range(n), n)) for i in range(RANDOM_PERMUTATIONS)]
    rq = [sum(v) / len(perms) for v in zip(*(q for q, _ in perms), strict=True)]
    rc = [sum(v) / len(perms) for v in zip(*(c for _, c in perms), strict=True)]
    rows = [
        (name, *curves(policy_scores)),
        *((n, *curves([p.score_text(x) for x in data.prompts])) for n, p in also),
        ("length", *curves(length_scores(data.prompts))),
        ("random", rq, rc),
        ("oracle", *curves(oracle_scores(data.weak, data.strong))),
    ]
    results = tuple(router_result(name, q, c, q_weak, q_strong) for name, q, c in rows)
    return Report(n, len(data.files), q_weak, q_strong, weak, strong, costs, seed, seconds, results)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _price(p: Price) -> str:
    return f"${p.input_per_mtok:g}/M in, ${p.output_per_mtok:g}/M out, ${p.per_hour:g}/h"


def notes(r: Report) -> list[str]:
    c = r.costs
    return [
        f"cost: ~len/4 input + {c.output_tokens} output tokens per prompt; weak = {c.weak_label} "
        f"({_price(c.weak)}), strong = {c.strong_label} ({_price(c.strong)}); per-hour prices billed "
        f"for local CPU time at {PROMPT_TOK_S:g} prompt / {OUTPUT_TOK_S:g} output tok/s",
        f"random: mean curve of {RANDOM_PERMUTATIONS} seeded permutations (seed {r.seed}); "
        "expected APGR is 0.5",
        "ties: tied scores are routed fractionally (mean over every order of the tied prompts)",
        f"reference: {REFERENCE}",
    ]


def format_table(r: Report) -> str:
    """The readable report printed by `localroute eval`."""
    head = [
        f"N = {r.n} prompts from {r.files} file(s); policy scored them in {r.policy_seconds:.2f} s",
        f"q_weak   = {r.q_weak:.4f}  ({r.weak})",
        f"q_strong = {r.q_strong:.4f}  ({r.strong})",
        "",
        f"{'router':<9} {'APGR':>6} {'CPT(50%)':>9} {'CPT(80%)':>9} {'strong@95%':>11} {'saved@95%':>10}",
    ]
    rows = [
        f"{x.name:<9} {x.apgr:>6.3f} {_pct(x.cpt50):>9} {_pct(x.cpt80):>9} "
        f"{_pct(x.strong_share_at_95):>11} {_pct(x.savings_at_95):>10}"
        for x in r.routers
    ]
    return "\n".join([*head, *rows, "", *notes(r)])


def report_json(r: Report) -> dict[str, object]:
    """The report as one JSON-able object (curves left out)."""
    return {
        "n": r.n,
        "files": r.files,
        "weak": {"column": r.weak, "accuracy": r.q_weak},
        "strong": {"column": r.strong, "accuracy": r.q_strong},
        "quality_target": QUALITY_TARGET,
        "policy_seconds": r.policy_seconds,
        "routers": {x.name: {k: getattr(x, k) for k in METRICS} for x in r.routers},
        "notes": notes(r),
    }


def plot_report(r: Report, path: str | Path) -> None:
    """Write a PNG of q(x) against the strong-call share x for every router (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EvalError("--plot needs matplotlib: pip install matplotlib") from None
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    xs = [k / r.n for k in range(r.n + 1)]
    for x in r.routers:
        ax.plot(xs, x.quality, label=f"{x.name} (APGR {x.apgr:.3f})", linewidth=1.4)
    ax.axhline(r.q_strong, color="black", linestyle="--", linewidth=0.9, label=f"strong {r.q_strong:.3f}")
    ax.axhline(r.q_weak, color="grey", linestyle=":", linewidth=0.9, label=f"weak {r.q_weak:.3f}")
    ax.set_xlabel("share of calls sent to the strong model (x)")
    ax.set_ylabel("accuracy q(x)")
    ax.set_title(f"Routing quality on {r.n} prompts")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path, format="png")
    except OSError as exc:
        raise EvalError(f"{path}: cannot write the plot ({exc.strerror or exc.__class__.__name__})") from None
    finally:
        plt.close(fig)
