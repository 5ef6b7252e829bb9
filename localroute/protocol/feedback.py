"""`POST /v1/localroute/feedback`: a client's outcome for one request the gateway served."""

from __future__ import annotations

from typing import Annotated, Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Field, model_validator
from typing_extensions import TypedDict

from localroute.protocol.parse import parse_json_body, validate

REQUEST_ID = r"^req-[0-9a-f]{20}$"  # as `x-request-id` carries it


class FeedbackRequest(BaseModel):
    """Exactly one of `outcome` (good, bad, or the stronger model's answer was needed) or `score`
    (the answer's quality in [0, 1])."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: Annotated[str, Field(pattern=REQUEST_ID)]
    outcome: Literal["good", "bad", "strong_needed"] | None = None
    score: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False, strict=False)] | None = None

    @model_validator(mode="after")
    def _one(self) -> FeedbackRequest:
        if (self.outcome is None) == (self.score is None):
            raise ValueError("give exactly one of 'outcome' or 'score'")
        return self


class FeedbackAnswer(TypedDict):
    """What the store made of it: `label` is how much the stronger model was needed (None: this
    outcome says nothing about the cheaper rung, e.g. "good" for a remote answer)."""

    object: Literal["localroute.feedback"]
    id: str
    outcome: str
    label: float | None
    # With `[state] url`: the replica that served the request, where the label is applied (202;
    # `label` is then null here).
    forwarded_to: NotRequired[str]


def parse_feedback(raw: bytes) -> FeedbackRequest:
    """Decode and validate a feedback body; a 400 in OpenAI's shape names each bad field."""
    return validate(FeedbackRequest, parse_json_body(raw))
