"""The decision as serving makes it: the pure policy, with a private request's remote rungs removed
and its refusals worded for the client. The router and `explain` (HTTP and CLI) both call `decide`,
so an explanation can never show a rung that serving would not use."""

from __future__ import annotations

from collections.abc import Mapping

from localroute.config.models import LOCAL_ENGINES, capabilities
from localroute.config.schema import Config
from localroute.errors import InvalidRequestError, ModelNotFoundError, UnsupportedCapabilityError
from localroute.privacy.guard import Privacy, PrivacyViolationError
from localroute.protocol.chat import ChatCompletionRequest
from localroute.protocol.wire import Explanation
from localroute.routing.policy import Cold, Decision, Floor, Hints, Policy


def decide(
    config: Config,
    policy: Policy,
    req: ChatCompletionRequest,
    hints: Hints,
    private: bool,
    unavailable: set[str],
    cold: Mapping[str, Cold],
    floor: Floor | None,
) -> Decision:
    """The policy's decision over the rungs this request may use (no remote rung when private)."""
    if req.model != "auto" and config.model(req.model) is None:
        raise ModelNotFoundError(
            f"The model '{req.model[:64]}' does not exist. Use 'auto' or one of: "
            + ", ".join(m.name for m in config.models) + ".",
            param="model",
        )  # fmt: skip
    if req.model != "auto" and config.model(req.model) not in policy.ladder:
        raise InvalidRequestError(
            f"The model '{req.model}' is an embedding model; use it with /v1/embeddings.",
            param="model",
            code="model_not_supported",
        )
    if not private:
        return policy.decide(req, hints, unavailable, cold, floor)
    named = config.model(req.model)
    if (named is not None and named.engine not in LOCAL_ENGINES) or hints.tier == "remote":
        raise InvalidRequestError(
            "This request is private and cannot be sent to a remote model.",
            code="private_request_unservable",
        )
    remote = remote_rungs(config)
    try:
        return policy.decide(req, hints, unavailable | remote, cold, floor)
    except UnsupportedCapabilityError as exc:
        if not any(exc.capability in capabilities(m) for m in config.models if m.name in remote):
            raise  # no rung anywhere has it: the request itself asks the impossible
        raise InvalidRequestError(  # asks what only leaving could give: the client has to change it
            f"This request is private and needs {exc.capability}, which no local model supports; "
            "it is not sent off this machine.",
            param=exc.param,
            code="private_request_unservable",
        ) from None
    except InvalidRequestError as exc:
        if exc.code != "no_route":
            raise
        if hints.tier is not None:  # the client asked for rungs a private request may not use
            raise InvalidRequestError(
                "This request is private and its X-LocalRoute-Tier names no local model.",
                code="private_request_unservable",
            ) from None
        raise PrivacyViolationError("No local model is available for this private request.") from None


def remote_rungs(config: Config) -> set[str]:
    return {m.name for m in config.models if m.engine not in LOCAL_ENGINES}


def explanation(config: Config, d: Decision, privacy: Privacy) -> Explanation:
    """`d` with every input that is not a request feature: the privacy class as serving resolves it
    and the rungs that class allows (the decision and its escalation never leave that set)."""
    remote = remote_rungs(config) if privacy.private else set()
    rungs = [m.name for m in config.ladder() if m.name not in remote]
    return {**d.as_json(), "privacy": privacy.as_json(), "rungs": rungs}
