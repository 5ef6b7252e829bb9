"""A rung's confidence threshold fitted on its answers to `localroute init`'s probe questions
(host/probe_set.py), with the same signals and isotonic fit as feedback calibration
(routing/confidence.py, routing/calibrate.py); or why there is none."""

from __future__ import annotations

import math
from collections.abc import Sequence

from localroute.config.models import ConfidenceThreshold
from localroute.host.probe_set import ProbeAnswer
from localroute.observe.feedback import Labelled
from localroute.routing.calibrate import MIN_EACH, fit
from localroute.routing.confidence import signals


def fit_probe(
    name: str, answers: Sequence[ProbeAnswer], tail_fraction: float, escalate_above: float = 0.5
) -> ConfidenceThreshold | str:
    """The threshold for rung `name`, or one line saying why not (too few of one outcome, no signal
    that separates right from wrong answers, or a cutoff that would escalate everything)."""
    rows = []
    for a in answers:
        judged = signals(a.logprobs, tail_fraction, a.margin)
        if judged:  # an empty answer has nothing to judge
            rows.append(Labelled({}, 0.0 if a.right else 1.0, name, 0, 0.0, "client", judged, name))
    right = sum(r.label < 0.5 for r in rows)
    counts = f"{len(rows)} probe answers, {right} right and {len(rows) - right} wrong"
    if right < MIN_EACH or len(rows) - right < MIN_EACH:
        return f"{counts}: fewer than {MIN_EACH} of one outcome to fit on"
    c = fit(name, rows, escalate_above)
    if c is None:
        return f"{counts}: no confidence signal ranks the right answers above the wrong ones"
    if not math.isfinite(c.cutoff):
        return f"{counts}: the best signal ({c.signal}) would escalate every answer"
    return ConfidenceThreshold(signal=c.signal, below=round(c.cutoff, 4), n=len(rows), right=right,  # type: ignore[arg-type]
                               auroc=c.auroc)  # fmt: skip
