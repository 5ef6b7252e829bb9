"""`localroute train --from-traffic`: a scorer fitted to this deployment's own labelled requests.

The rows are the feedback store's (observe/feedback.py): the learned recipe's features of each served
request, kept without its text, and the label a client's feedback or a shadow run gave it (1: the
stronger model was needed). The newest `holdout` share, by time, is held back: the scorer is fitted
on the older rows and judged on the newer ones beside what served them (the decision's stored score),
prompt length alone and random order, as APGR with "weak right" = not labelled as needing the stronger
model. Nothing is switched: the command prints the comparison and writes the artifact; the operator
points `[routing] scorer` at it if the numbers say so.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from localroute.config.schema import Config
from localroute.observe.feedback import FeedbackStore, Labelled
from localroute.routing.evaluate import apgr, pgr_curve, quality_curve
from localroute.routing.features import RECIPE_VERSION, Featuriser
from localroute.routing.fit import fit
from localroute.routing.traffic_features import RECIPE_KEY
from localroute.routing.train_cmd import write_artifact

MIN_ROWS = 20  # fewer labelled requests than this (or one class only): nothing worth fitting


def _apgr(scores: Sequence[float], weak_right: Sequence[bool]) -> float | None:
    strong = [True] * len(weak_right)
    q_weak = sum(weak_right) / len(weak_right)
    if q_weak == 1.0:
        return None  # nothing needed the stronger model: no gap to recover
    return apgr(pgr_curve(quality_curve(scores, weak_right, strong), q_weak, 1.0))


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def run_from_traffic(
    config: Config, out: Path, holdout: float = 0.2, as_json: bool = False, stdout: TextIO = sys.stdout
) -> int:
    """Fit on the store's older rows, report on the newer, write the artifact. 2 when there is too little."""
    path = config.feedback_path()
    if not path.is_file():
        print(f"localroute: no feedback store at {path}: serve with [feedback] enabled, then send "
              "outcomes to POST /v1/localroute/feedback", file=sys.stderr)  # fmt: skip
        return 2
    store = FeedbackStore(path, config.feedback, lambda req: {})
    try:
        every = list(store.labelled())
    finally:
        store.close()
    featuriser = Featuriser()
    # The learned recipe's rows, of this version (another version's features mean other things).
    rows: list[Labelled] = [r for r in every if r.features.get(RECIPE_KEY) == RECIPE_VERSION]
    skipped = len(every) - len(rows)
    y = [int(r.label >= 0.5) for r in rows]
    if len(rows) < MIN_ROWS or len(set(y)) < 2:
        print(f"localroute: {len(rows)} labelled requests with the learned recipe's features "
              f"({skipped} without), both outcomes needed, at least {MIN_ROWS}", file=sys.stderr)  # fmt: skip
        return 2
    cut = max(1, min(len(rows) - 1, round(len(rows) * (1 - holdout))))
    train, held = rows[:cut], rows[cut:]
    if len(set(y[:cut])) < 2 or all(r.label < 0.5 for r in held):
        print("localroute: the older rows, or the newest ones held back, have one outcome only: "
              "more labelled requests of both kinds are needed", file=sys.stderr)  # fmt: skip
        return 2
    model = fit(
        [{k: v for k, v in r.features.items() if k != RECIPE_KEY} for r in train], y[:cut], [1.0] * cut
    )
    weak_right = [r.label < 0.5 for r in held]
    figures = {
        "fitted": _apgr([model.logit(r.features) for r in held], weak_right),
        "serving": _apgr([r.score for r in held], weak_right),
        "length": _apgr([r.features.get("len", 0.0) for r in held], weak_right),
        "random": 0.5,
    }
    meta: dict[str, object] = {
        "trained_on": "traffic",
        "rows": len(train),
        "held_back": len(held),
        "held_back_apgr": figures,
        "label": "stronger model needed (feedback or shadow run)",
        "command": "localroute train --from-traffic",
    }
    sha = write_artifact(out, model, featuriser, meta)
    if sha is None:
        return 2
    if as_json:
        print(json.dumps({"artifact": str(out), "sha256": sha, **meta}), file=stdout)
        return 0
    print(f"fitted on the {len(train)} oldest labelled requests; judged on the {len(held)} newest "
          f"({skipped} rows of another feature recipe skipped)", file=stdout)  # fmt: skip
    print("held-back APGR: " + "  ".join(f"{k} {_fmt(v)}" for k, v in figures.items()), file=stdout)
    print(f"scorer written to {out} (sha256 {sha}). Nothing is switched: to serve with it, set", file=stdout)
    print(
        f'  [routing] scorer = "{out}"\nin models.toml, after `localroute eval --scorer` agrees.', file=stdout
    )
    return 0
