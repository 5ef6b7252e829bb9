"""Tables, plot and RESULTS.md section for bench.cascade_quality."""

from __future__ import annotations

import argparse
import statistics
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from bench.cascade_metrics import Costs, Row, auroc, auroc_ci, binom_sf, pct, route, wilson
from bench.common import append_result
from localroute.config.models import LlamaCppModel
from localroute.config.schema import Config
from localroute.routing.confidence import measure
from localroute.routing.evaluate import cost_model, evaluate, length_scores, load_dataset, oracle_scores
from localroute.routing.policy import Policy

if TYPE_CHECKING:
    from bench.cascade_quality import Record

FLOOR = -99.0  # confidence of an answer with no tokens to judge
ROUTELLM = (  # published figures as the issue quotes them (RouteLLM, Ong et al. 2024)
    ("RouteLLM learned router (published)", "MMLU, GPT-4 vs Mixtral", "~0.60"),
    ("RouteLLM learned router (published)", "MT-Bench, GPT-4 vs Mixtral", "~0.80"),
)


def _signals(cfg: Config, records: list[Record]) -> dict[str, list[float]]:
    cc = cfg.routing.cascade
    conf = [measure(r.logprobs, cc.tail_fraction) for r in records]
    mean = [c.mean if c else FLOOR for c in conf]
    tail = [c.tail if c else FLOOR for c in conf]
    return {
        "mean": mean,
        "tail": tail,
        # Both of the cascade's thresholds moved together: 0 is exactly the shipped rule.
        "rule": [
            min(a - cc.min_mean_logprob, b - cc.min_tail_logprob) for a, b in zip(mean, tail, strict=True)
        ],
        "letter": [max(r.letter_logprob, FLOOR) for r in records],
    }


def _costs(cfg: Config, m: LlamaCppModel, records: list[Record]) -> tuple[Costs, str]:
    strong = cost_model(cfg, 0)
    s = strong.strong
    local = tuple(m.price.per_hour * r.seconds / 3600 for r in records)
    remote = tuple(
        (r.prompt_tokens * s.input_per_mtok + max(r.completion_tokens, 1) * s.output_per_mtok) / 1e6
        for r in records
    )
    why = (
        f"Cost: local = {m.name} at ${m.price.per_hour:g}/h x the measured seconds of each request; "
        f"remote = {strong.strong_label} at ${s.input_per_mtok:g}/M in and ${s.output_per_mtok:g}/M out, "
        "on the local tokenizer's prompt tokens (chat template included) and the local answer's length. "
        "A cascade pays the local call for every request plus the remote one for those it escalates; the "
        "pre-routers (policy, length, random, oracle) pay one rung per request. Saved: against sending "
        "everything to the remote rung."
    )
    return Costs(local, remote), why


def _router_table(rows: list[Row]) -> str:
    out = [
        "| router | APGR | CPT(50%) | CPT(80%) | served locally at 95% of gpt-4 | cost saved at 95% "
        "| AUROC local right vs wrong |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        roc = "-" if r.auroc is None else f"{r.auroc:.3f}"
        out.append(
            f"| {r.name} | {r.apgr:.3f} | {pct(r.cpt50)} | {pct(r.cpt80)} | {pct(r.local_at_95)} "
            f"| {pct(r.saved_at_95)} | {roc} |"
        )
    return "\n".join(out)


def _sweep(sig: dict[str, list[float]], records: list[Record], costs: Costs, rule: str) -> str:
    n, mean = len(records), sig["mean"]
    local = [r.correct for r in records]
    strong = [r.strong for r in records]
    q_weak, q_strong = sum(local) / n, sum(strong) / n
    ranked = sorted(mean, reverse=True)
    cuts = [
        (f"{t:.3f}", [x < t for x in mean])
        for t in sorted({ranked[max(0, round(s * n) - 1)] for s in (0.9, 0.75, 0.5, 0.25, 0.1)})
    ]
    cuts.append((rule, [x < 0 for x in sig["rule"]]))
    out = [
        "| escalate when | served locally | local accuracy of the kept | accuracy overall | PGR "
        "| cost vs all-remote |",
        "|---|---|---|---|---|---|",
    ]
    for label, esc in [("never", [False] * n), *cuts, ("always", [True] * n)]:
        kept = [c for c, e in zip(local, esc, strict=True) if not e]
        q = sum(s if e else c for c, s, e in zip(local, strong, esc, strict=True)) / n
        cost = sum(costs.local) + sum(x for x, e in zip(costs.remote, esc, strict=True) if e)
        name = label if label in ("never", "always", rule) else f"mean logprob < {label}"
        kacc = f"{sum(kept) / len(kept):.3f}" if kept else "-"
        out.append(
            f"| {name} | {pct(len(kept) / n)} | {kacc} | {q:.3f} | {(q - q_weak) / (q_strong - q_weak):.3f} "
            f"| {pct(cost / sum(costs.remote))} |"
        )
    return "\n".join(out)


def _local_facts(records: list[Record], sig: dict[str, list[float]], n_all: int, seed: int) -> str:
    n = len(records)
    k = sum(r.correct for r in records)
    lo, hi = wilson(k, n)
    answered = Counter(r.letter or "none" for r in records)
    gold = Counter(r.gold for r in records)
    right = [r.correct for r in records]
    secs = sorted(r.seconds for r in records)
    dist = ", ".join(f"{x} {answered[x]}" for x in "ABCD")
    gold_dist = ", ".join(f"{x} {gold[x]}" for x in "ABCD")
    lines = [
        f"- local accuracy {k}/{n} = {k / n:.3f} (95% CI {lo:.3f} to {hi:.3f}); chance 0.25, one-sided "
        f"binomial p = {binom_sf(k, n, 0.25):.3g}; always answering A would score {gold['A'] / n:.3f} here",
        f"- letters answered: {dist}, unparseable {answered['none']} (counted wrong); gold: {gold_dist}",
        f"- recorded accuracy on these {n}: gpt-4 {sum(r.strong for r in records) / n:.3f}, Mixtral "
        f"{sum(r.weak for r in records) / n:.3f} (sample drawn from {n_all} questions, seed {seed})",
    ]
    for name, key in (("mean logprob", "mean"), ("letter logprob", "letter")):
        ok = [v for v, c in zip(sig[key], right, strict=True) if c]
        bad = [v for v, c in zip(sig[key], right, strict=True) if not c]
        lo, hi = auroc_ci(sig[key], right, seed)
        lines.append(
            f"- {name}: median {statistics.median(ok):.3f} when right, {statistics.median(bad):.3f} when "
            f"wrong; AUROC {auroc(sig[key], right):.3f} (bootstrap 95% CI {lo:.3f} to {hi:.3f})"
        )
    lines.append(
        f"- time per question: median {statistics.median(secs):.2f} s, p90 {secs[int(0.9 * (n - 1))]:.2f} s, "
        f"mean prompt {statistics.mean(r.prompt_tokens for r in records):.0f} tokens, mean answer "
        f"{statistics.mean(r.completion_tokens for r in records):.1f} tokens"
    )
    return "\n".join(lines)


def _vs_routellm(cfg: Config, data: str, cascade: Row, n: int) -> str:
    from bench.cascade_quality import STRONG_COL, WEAK_COL

    rep = evaluate(
        load_dataset([data], WEAK_COL, STRONG_COL), Policy(cfg), WEAK_COL, STRONG_COL, cost_model(cfg, 256)
    )
    out = [
        "| router | data (strong vs weak) | APGR | CPT(50%) | CPT(80%) | source |",
        "|---|---|---|---|---|---|",
    ]
    for r in rep.routers:
        out.append(
            f"| {r.name} | MMLU dev, {rep.n} prompts, GPT-4 vs Mixtral | {r.apgr:.3f} | {pct(r.cpt50)} "
            f"| {pct(r.cpt80)} | `localroute eval`, this run |"
        )
    out += [f"| {name} | {d} | {a} | | | published |" for name, d, a in ROUTELLM]
    out.append(
        f"| cascade confidence (mean logprob) | MMLU dev sample, {n} prompts, GPT-4 vs local SmolLM2 "
        f"| {cascade.apgr:.3f} | {pct(cascade.cpt50)} | {pct(cascade.cpt80)} | this benchmark |"
    )
    return "\n".join(out)


def _plot(rows: list[Row], q_weak: float, q_strong: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    n = len(rows[0].quality) - 1
    xs = [k / n for k in range(n + 1)]
    for r in rows:
        ax.plot(xs, r.quality, label=f"{r.name} (APGR {r.apgr:.3f})", linewidth=1.3)
    ax.axhline(q_strong, color="black", linestyle="--", linewidth=0.9, label=f"gpt-4 {q_strong:.3f}")
    ax.axhline(0.95 * q_strong, color="black", linestyle=":", linewidth=0.8, label="95% of gpt-4")
    ax.axhline(q_weak, color="grey", linestyle=":", linewidth=0.9, label=f"local {q_weak:.3f}")
    ax.set_xlabel("share of requests escalated to the remote rung")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Cascade on {n} MMLU dev questions: local SmolLM2-135M, remote gpt-4")
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def report(
    args: argparse.Namespace,
    cfg: Config,
    m: LlamaCppModel,
    records: list[Record],
    n_all: int,
    missing: int,
    wall: float,
) -> None:
    from bench.cascade_quality import SYSTEM

    n = len(records)
    sig = _signals(cfg, records)
    costs, cost_note = _costs(cfg, m, records)
    local = [r.correct for r in records]
    strong = [r.strong for r in records]
    policy = Policy(cfg)
    cc = cfg.routing.cascade
    rule = f"shipped rule (mean < {cc.min_mean_logprob:g} or tail < {cc.min_tail_logprob:g})"
    routers = [
        ("confidence: mean logprob", [-x for x in sig["mean"]], True),
        (f"confidence: low tail ({cc.tail_fraction:g})", [-x for x in sig["tail"]], True),
        ("confidence: cascade rule, thresholds shifted", [-x for x in sig["rule"]], True),
        ("confidence: chosen letter's logprob", [-x for x in sig["letter"]], True),
        ("policy score", [policy.score_text(r.prompt) for r in records], False),
        ("prompt length", length_scores([r.prompt for r in records]), False),
        ("random", [0.0] * n, False),
        ("oracle", oracle_scores(local, strong), False),
    ]
    rows = [route(name, s, local, strong, costs, cascade=c, seed=args.seed) for name, s, c in routers]
    if args.plot:
        _plot(
            [r for r in rows if "tail" not in r.name and "length" not in r.name],
            rows[0].quality[0],
            sum(strong) / n,
            args.plot,
        )
    threads = args.threads or m.threads
    table = "\n\n".join(
        [
            f"**Escalation by local confidence vs pre-routing** ({n} questions; weak = {m.name}, "
            "strong = recorded gpt-4-1106-preview)\n\n" + _router_table(rows),
            "**Threshold sweep** (the cascade's mean-logprob threshold; the last-but-one row is the shipped "
            "two-threshold rule)\n\n" + _sweep(sig, records, costs, rule),
            "**The local model**\n\n" + _local_facts(records, sig, n_all, args.seed),
            "**Routing quality beside RouteLLM**\n\n" + _vs_routellm(cfg, args.data, rows[0], n),
        ]
    )
    loaded = f" (answers loaded from {args.load})" if args.load else ""
    notes = "\n\n".join(
        [
            f"Method: {m.name} through a real `localroute serve` (llama.cpp worker, threads {threads}, "
            f"n_ctx {m.n_ctx}, cache_prompt {m.cache_prompt}), `openai` client, logprobs=True, "
            f"temperature 0, max_tokens {args.max_tokens}, system message '{SYSTEM}'. Stratified sample "
            f"(subjects in proportion), seed {args.seed}; {n} answered in {wall / 60:.1f} min wall{loaded}. "
            "The letter is read from the start of the answer (or an answer starting with one option's text); "
            "an unparseable answer counts as wrong. Gold letters: the MMLU test answer key "
            f"(bench/mmlu_answers.py); {missing} dev questions not in the key were left out.",
            "Confidence = localroute.routing.confidence.measure over the sampled tokens "
            "(what the cascade judges); the letter logprob is that of the sampled token carrying the letter. "
            "Escalating the least "
            "confident first traces quality against the share escalated; PGR and APGR as in "
            "shared/eval/README.md, with weak = the local model's own accuracy and strong = gpt-4's on the "
            "same questions. AUROC: how well each router's 'easy' end picks out right local answers "
            "(0.5 = chance).",
            cost_note,
            f"![cascade quality]({Path(args.plot).name})" if args.plot else "",
        ]
    )
    if args.no_append:
        print(table + "\n\n" + notes)
        return
    append_result(
        "bench.cascade_quality",
        "Cascade quality: local confidence vs escalation (MMLU dev)",
        table,
        notes,
        ("llama-cpp-python", "localroute", "openai"),
    )
