"""The features kept with each served request for learning from traffic: the learned scorer's recipe
(routing/features.py), so that `localroute train --from-traffic` fits an artifact the gateway can
serve; or today's heuristic inputs (length, depth, each keyword signal's hits)."""

from __future__ import annotations

import math
from collections.abc import Callable

from localroute.protocol.chat import ChatCompletionRequest
from localroute.routing.features import RECIPE_VERSION, Featuriser, Turn
from localroute.routing.policy import Policy

RECIPE = "heuristic-1"
RECIPE_KEY = (
    "recipe"  # stored with the learned recipe's features: its version (rows of another are not fitted)
)


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


def recipe_featurizer(
    featuriser: Featuriser | None = None,
) -> Callable[[ChatCompletionRequest], dict[str, float]]:
    """A `featurize` for the feedback store in the learned scorer's recipe (what `train --from-traffic`
    fits on): request -> {feature: number}, no text."""
    f = featuriser or Featuriser()

    def featurize(req: ChatCompletionRequest) -> dict[str, float]:
        return {
            **f.featurise([Turn(m.role, m.text()) for m in req.messages]),
            RECIPE_KEY: float(RECIPE_VERSION),
        }

    return featurize
