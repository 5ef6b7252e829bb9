"""The `localroute train` command: load, featurise, cross-validate by group, fit on everything, save."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from localroute.config.schema import Config
from localroute.routing.evaluate import EvalError
from localroute.routing.features import Featuriser
from localroute.routing.fit import Linear, fit
from localroute.routing.policy import Policy
from localroute.routing.scorer import Artifact
from localroute.routing.train import cross_validate, featurise_all, labels, load_labelled


def write_artifact(out: Path, model: Linear, featuriser: Featuriser, meta: dict[str, object]) -> str | None:
    """Save a fitted scorer with the recipe it was fitted on; its sha256, or None (said on stderr)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Artifact(model.bias, model.weights, featuriser.recipe, meta).save(out)
    except OSError as exc:
        print(f"localroute: {out}: cannot write the scorer ({exc.strerror})", file=sys.stderr)
        return None


def run_train(
    config: Config,
    data: Sequence[str],
    weak: str,
    strong: str,
    out: Path,
    folds: int = 8,
    cv: bool = True,
    as_json: bool = False,
    argv: Sequence[str] = (),
    stdout: TextIO = sys.stdout,
) -> int:
    """Fit a scorer, print its leave-groups-out report, write the artifact. 2 on bad input."""
    try:
        labelled = load_labelled(data, weak, strong)
    except EvalError as exc:
        print(f"localroute: {exc}", file=sys.stderr)
        return 2
    y = labels(labelled)
    if len(set(y)) < 2:
        print("localroute: every prompt has the same label; nothing to learn", file=sys.stderr)
        return 2
    featuriser = Featuriser()
    rows = featurise_all(labelled, featuriser)
    report = None
    if cv:
        policy = Policy(config)
        heuristic = [policy.score_turns(c) for c in labelled.convs]
        try:
            report, _ = cross_validate(labelled, rows, heuristic, folds=folds)
        except EvalError as exc:
            print(f"localroute: {exc}", file=sys.stderr)
            return 2
    model = fit(rows, y, labelled.weights())
    meta: dict[str, object] = {
        "trained_on": [Path(p).name for p in data],
        "prompts": len(rows),
        "groups": len(set(labelled.groups)),
        "label": "weak model wrong",
        "weighting": "each --data path weighs the same",
        "command": "localroute train " + " ".join(argv),
    }
    if report is not None:
        meta["cv_pooled"] = dict(zip(report.routers, report.pooled, strict=True))
    sha = write_artifact(out, model, featuriser, meta)
    if sha is None:
        return 2
    if as_json:
        doc = {"artifact": str(out), "sha256": sha, "cv": report.as_json() if report else None}
        print(json.dumps(doc), file=stdout)
    else:
        if report is not None:
            print(report.table(), file=stdout)
        print(f"scorer written to {out} (sha256 {sha}); {len(rows)} prompts", file=stdout)
    return 0


def main(args: argparse.Namespace, config: Config) -> int:
    """`localroute train`: on labelled files (`--data`), or on the feedback store (`--from-traffic`)."""
    if args.from_traffic:
        from localroute.routing.train_traffic import run_from_traffic

        return run_from_traffic(config, Path(args.out), as_json=args.json)
    if not (args.data and args.weak and args.strong):
        print("localroute: train needs --data, --weak and --strong (or --from-traffic)", file=sys.stderr)
        return 2
    return run_train(config, args.data, args.weak, args.strong, Path(args.out), folds=args.folds,
                     cv=not args.no_cv, as_json=args.json, argv=sys.argv[2:])  # fmt: skip
