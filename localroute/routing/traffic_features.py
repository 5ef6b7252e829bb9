"""The features kept with each served request for learning from traffic, until a learned scorer's
featuriser replaces them: today's heuristic inputs (length, depth, each keyword signal's hits)."""

from __future__ import annotations

import math
from collections.abc import Callable

from localroute.protocol.chat import ChatCompletionRequest
from localroute.routing.policy import Policy

RECIPE = "heuristic-1"


def heuristic_featurizer(policy: Policy) -> Callable[[ChatCompletionRequest], dict[str, float]]:
    """A `featurize` for the feedback store: request -> {feature: number}, no text."""
    names = policy.signal_names()

    def featurize(req: ChatCompletionRequest) -> dict[str, float]:
        f = policy.features(req)
        out = {
            "tokens": float(f.estimated_tokens),
            "log2_tokens": math.log2(max(f.estimated_tokens, 1)),
            "depth": float(f.depth),
            "messages": float(len(req.messages)),
        }
        out |= {f"hits:{n}": 0.0 for n in names}
        out |= {f"hits:{n}": float(h) for n, h in f.hits}
        return out

    return featurize
