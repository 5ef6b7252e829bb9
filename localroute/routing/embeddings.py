"""Choosing the rung for an embeddings request: by vector space and cost, never by difficulty.

A request names a space (directly, through one of its rungs, or `auto`: the config's default space).
Within it the cheapest available rung goes first and the next rung of the *same* space takes over on
an engine failure. Another space is never tried: its vectors mean nothing next to the client's others,
so the client gets a 503 rather than vectors from a different model. A private request (or one with
detected data) is served by local rungs only, or fails closed. See docs/embeddings.md.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from localroute.config.models import LOCAL_ENGINES, ModelConfig, RemoteModel, space_of
from localroute.config.schema import Config
from localroute.errors import APIError, EngineUnavailableError, InvalidRequestError, ModelNotFoundError
from localroute.observe.cost import attempt_cost
from localroute.privacy.detect import Detector
from localroute.privacy.guard import Privacy, PrivacyViolationError, redact_body
from localroute.privacy.trust import untrusted
from localroute.protocol.backend import Embedder
from localroute.protocol.records import Attempt
from localroute.protocol.wire import ChatCompletion
from localroute.routing.failures import fail_closed, failure_route, outcome
from localroute.routing.policy import NO_HINTS, Decision, Hints
from localroute.routing.trace import Trace, usage_of


@dataclass(frozen=True)
class Plan:
    """The rungs to try for one request, in order, all of one space."""

    space: str
    rungs: tuple[ModelConfig, ...]
    reasons: tuple[str, ...]

    def decision(self) -> Decision:
        first = self.rungs[0]
        return Decision(
            model=first.name, tier=first.tier, score=0.0, reasons=self.reasons, estimated_tokens=0,
            thresholds=(), route=f"embed:{self.space}", escalation=tuple(m.name for m in self.rungs[1:]),
        )  # fmt: skip


class EmbeddingRouter:
    """Resolves `model` to a space, plans the rungs, and calls them with fallback within the space."""

    def __init__(self, config: Config, embedders: Mapping[str, Embedder], detector: Detector) -> None:
        self.config = config
        self.embedders = embedders
        self.detector = detector
        self.rungs = config.embedders()
        self.spaces = {space_of(m): [r for r in self.rungs if space_of(r) == space_of(m)] for m in self.rungs}
        self.default = config.default_space()  # fixed here: `auto` never drifts to another space
        # What an all-remote deployment would pay for the same input: the dearest rung per input token.
        self.baseline = max(self.rungs, key=lambda m: m.price.input_per_mtok, default=None)

    def names(self) -> list[str]:
        """Every name `model` may take: `auto`, the embedding rungs, and spaces not named by a rung."""
        rungs = [m.name for m in self.rungs]
        return ["auto", *rungs, *(s for s in self.spaces if s not in rungs)]

    def resolve(self, model: str) -> tuple[str, ModelConfig | None]:
        """The space `model` means, and the rung it names (None for `auto` or a space's name)."""
        if model == "auto":
            if self.default is None:
                raise ModelNotFoundError("No embedding model is configured.", param="model")
            return self.default, None
        named = self.config.model(model)
        if named is not None and named.task == "embed":
            return space_of(named), named
        if named is not None:
            raise InvalidRequestError(
                f"The model '{model}' is a chat model and cannot create embeddings; use one of: "
                + ", ".join(self.names()) + ".",
                param="model",
                code="model_not_supported",
            )  # fmt: skip
        if model in self.spaces:
            return model, None
        raise ModelNotFoundError(
            f"The model '{model[:64]}' does not exist. Embedding models: " + ", ".join(self.names()) + ".",
            param="model",
        )

    def plan(self, model: str, privacy: Privacy | None = None, hints: Hints = NO_HINTS) -> Plan:
        """The rungs of the request's space to try, cheapest first (a named rung before its peers)."""
        space, named = self.resolve(model)
        rungs = list(self.spaces[space])
        if named is not None:
            rungs.remove(named)
            rungs.insert(0, named)
        reasons = [
            f"embedding space '{space}'" + (" (auto: the cheapest rung's space)" if model == "auto" else "")
        ]
        if hints.tier is not None:
            rungs = [m for m in rungs if _fits_tier(m, hints.tier)]
            if not rungs:
                raise InvalidRequestError(
                    f"X-LocalRoute-Tier {hints.tier} names no rung of embedding space '{space}'.",
                    param="X-LocalRoute-Tier",
                    code="no_route",
                )
        if privacy is not None and privacy.private:
            local = [m for m in rungs if m.engine in LOCAL_ENGINES]
            if not local:
                if named is not None:  # the client named a provider for private input: its to change
                    raise InvalidRequestError(
                        "This request is private and cannot be sent to a remote model.",
                        code="private_request_unservable",
                    )
                raise PrivacyViolationError(
                    f"Embedding space '{space}' has no local model; this private request is not "
                    "sent off this machine."
                )
            rungs = local
            reasons.append("private: local rungs only")
        up = [m for m in rungs if self.embedders[m.name].brief().state != "unavailable"]
        if not up:
            raise EngineUnavailableError(
                f"No model of embedding space '{space}' is available here; vectors from another space "
                "would not be comparable, so none is used.",
                code="space_unavailable",
            )
        return Plan(space, tuple(up), tuple(reasons))

    async def embed(
        self, inputs: list[Any], plan: Plan, privacy: Privacy, attempts: list[Attempt]
    ) -> tuple[dict[str, Any], ModelConfig, Trace]:
        """Embed `inputs` on the plan's first rung that answers. Every rung tried is appended to
        `attempts`, the caller's record when this raises."""
        trace = Trace(plan.decision(), f"embed:{plan.space}", attempts=attempts)
        for i, m in enumerate(plan.rungs):
            last = i == len(plan.rungs) - 1
            body: dict[str, Any] = {"model": m.name, "input": inputs}
            overridden = privacy.reason == "override" and not privacy.private
            if overridden and self.config.privacy.redact and isinstance(m, RemoteModel):
                body = {"model": m.name, "input": list(inputs)}
                redact_body(body, self.detector)  # detected data leaves as typed placeholders, as in chat
            t0 = time.monotonic()
            try:
                result = await self.embedders[m.name].embed(body)
            except APIError as exc:
                route = failure_route(exc)
                trace.attempt(m, outcome(exc), exc.code or exc.type, t0)
                # A client's fault (too long, bad ids) is the same on every rung: only failures move on.
                if route is None or not route.startswith("fallback:") or last:
                    if privacy.private and route is not None:
                        raise fail_closed(exc) from None
                    raise
                trace.moved(f"fallback:{plan.space}")
                continue
            trace.attempt(m, "ok", None, t0, cast(ChatCompletion, result))  # usage and compute, as chat's
            trace.model, trace.tier = m.name, m.tier
            trace.untrusted = untrusted(cast(ChatCompletion, result))
            trace.usage = usage_of(cast(ChatCompletion, result))
            if self.baseline is not None:
                trace.baseline_usd = attempt_cost(self.baseline, trace.usage, 0.0)
            return result, m, trace
        raise EngineUnavailableError("No model could serve this request.")  # unreachable: a plan has rungs

    def explain(self) -> dict[str, Any]:
        """What `auto` embeds with, and each space's rungs in the order they are tried."""
        return {
            "auto": self.default,
            "spaces": {
                space: [{"model": m.name, "engine": m.engine, "tier": m.tier, "dimensions": m.dimensions,
                         "dimensions_flexible": m.dimensions_flexible, "local": m.engine in LOCAL_ENGINES}
                        for m in rungs]
                for space, rungs in self.spaces.items()
            },
        }  # fmt: skip


def _fits_tier(m: ModelConfig, tier: str) -> bool:
    if tier == "local":
        return m.engine in LOCAL_ENGINES
    if tier == "remote":
        return m.engine not in LOCAL_ENGINES
    return m.tier == int(tier)
