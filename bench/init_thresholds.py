"""Does the confidence threshold `localroute init` fits on this box beat the default cascade thresholds
on questions it was not fitted on?

    python -m bench.init_thresholds [--model smollm2-135m] [--n 60] [--threads 1] [--no-append]

The rung (the repo's models.toml entry, its GGUF where `localroute pull` put it) answers init's probe
(host/probe_set.py) twice through init's own measuring child (host/measure.py): seed 0, the set init
fits on (routing/probe_fit.py), and seed 1, held out. On the held-out answers both rules are applied
as the router applies them: the fitted `signal < below`, and the `[routing.cascade]` defaults (mean
logprob < -1.2 or low-tail mean < -4.5). Per rule: answers escalated, wrong answers caught, right
answers escalated for nothing, and the accuracy of the answers kept local.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from bench.common import append_result
from localroute.config.models import LlamaCppModel
from localroute.config.routing import CascadeConfig
from localroute.config.schema import load_config
from localroute.host.measure import Probe, measure
from localroute.host.probe_set import ProbeAnswer
from localroute.routing.confidence import measure as confidence
from localroute.routing.confidence import signals, too_unsure
from localroute.routing.probe_fit import fit_probe

ROOT = Path(__file__).resolve().parent.parent


def row(label: str, answers: list[ProbeAnswer], escalate: Callable[[ProbeAnswer], bool]) -> str:
    up = [escalate(a) for a in answers]
    wrong = sum(not a.right for a in answers)
    caught = sum(u and not a.right for u, a in zip(up, answers, strict=True))
    needless = sum(u and a.right for u, a in zip(up, answers, strict=True))
    kept = [a.right for u, a in zip(up, answers, strict=True) if not u]
    acc = f"{sum(kept) / len(kept):.3f}" if kept else "-"
    return (f"| {label} | {sum(up)}/{len(answers)} | {caught}/{wrong} | {needless}/{len(answers) - wrong} "
            f"| {acc} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.init_thresholds")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    cfg = load_config(ROOT / "models.toml")
    m = cfg.model(args.model)
    assert isinstance(m, LlamaCppModel)
    m = m.model_copy(update={"threads": args.threads})
    tail = cfg.routing.cascade.tail_fraction

    def ask(seed: int) -> list[ProbeAnswer]:
        got = measure(
            cfg.model_path(m), m, on="bench", reps=1, max_tokens=8, probe=Probe(args.n, seed, budget_s=1800)
        )
        assert not got.probe_note, got.probe_note
        return list(got.answers)

    fitted = fit_probe(m.name, ask(0), tail)
    held = ask(1)
    defaults = CascadeConfig()
    lines = ["| rule (held-out seed 1) | escalated | wrong caught | right escalated | accuracy kept local |",
             "|---|---|---|---|---|",
             row("[routing.cascade] defaults", held,
                 lambda a: too_unsure(confidence(a.logprobs, tail), defaults)),
             row("never escalate", held, lambda a: False)]  # fmt: skip
    if isinstance(fitted, str):
        fact = f"init fitted no threshold on seed 0: {fitted}"
    else:
        sig, below = fitted.signal, fitted.below
        lines.insert(2, row(f"init's fit: {sig} < {below}", held,
                            lambda a: signals(a.logprobs, tail, a.margin).get(sig, 0.0) < below))  # fmt: skip
        fact = (f"init's fit on seed 0: {sig} < {below} ({fitted.n} answers, {fitted.right} right, "
                f"AUROC {fitted.auroc})")  # fmt: skip
    body = "\n".join(lines) + f"\n\n- {fact}; held out: {sum(a.right for a in held)}/{len(held)} right"
    notes = (
        f"Method: {args.model}, {args.threads} llama.cpp thread(s), {args.n} probe questions per seed "
        "(host/probe_set.py: add, sub, mul, larger, next, capital; the capitals are drawn from 29 countries, "
        "so some capital questions recur across seeds), asked greedily (12 tokens) by init's measuring "
        "child; signals and the fit as init computes them (routing/probe_fit.py)."
    )
    if args.no_append:
        print(body + "\n\n" + notes)
        return
    title = f"init's calibrated threshold vs the cascade defaults, {args.model}"
    append_result("bench.init_thresholds", title, body, notes, ("llama-cpp-python", "localroute"))


if __name__ == "__main__":
    main()
