"""OpenAI embeddings requests and answers: what a client may send to `/v1/embeddings`, validated once at
the edge, and the answer shaped from a rung's float vectors (`dimensions`, `encoding_format`).

The gateway, not the rung, applies `dimensions` and `encoding_format`: every rung of a vector space
then returns the same vectors for the same input, whichever one served it (docs/embeddings.md).
"""

from __future__ import annotations

import array
import base64
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from localroute.errors import InvalidRequestError, UpstreamError
from localroute.protocol.parse import parse_json_body, validate

_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)
MAX_INPUTS = 2048  # OpenAI's limit on the inputs of one request
MAX_TOKEN_ID = 2**31 - 1  # token ids are C ints in every engine
_SHAPES = "a string, a list of strings, a list of token ids, or a list of lists of token ids"

Inputs = list[str] | list[list[int]]


def _token(v: object) -> bool:
    return type(v) is int and 0 <= v <= MAX_TOKEN_ID


def _check_input(value: Any) -> str | list[str] | list[int] | list[list[int]]:
    """OpenAI's four input shapes; the message names the offending item. An empty string is refused
    as OpenAI refuses it (in a list, where OpenAI's own message does not say why)."""
    if isinstance(value, str):
        if not value:
            raise ValueError("must not be an empty string")
        return value
    if not isinstance(value, list) or not value:
        raise ValueError(f"must be {_SHAPES}" + (" (got an empty list)" if value == [] else ""))
    if len(value) > MAX_INPUTS:
        raise ValueError(f"has {len(value)} items; at most {MAX_INPUTS} inputs are allowed in one request")
    first = value[0]
    if isinstance(first, str):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ValueError(f"item {i} is not a string; a list of strings holds only strings")
            if not item:
                raise ValueError(f"item {i} is an empty string, which cannot be embedded")
        return value
    if type(first) is int:
        bad = next((i for i, t in enumerate(value) if not _token(t)), None)
        if bad is not None:
            raise ValueError(f"item {bad} is not a token id (an integer from 0 to {MAX_TOKEN_ID})")
        return value
    if isinstance(first, list):
        for i, item in enumerate(value):
            if not isinstance(item, list) or not item:
                raise ValueError(f"item {i} is not a non-empty list of token ids")
            bad = next((j for j, t in enumerate(item) if not _token(t)), None)
            if bad is not None:
                raise ValueError(f"item {i}[{bad}] is not a token id (an integer from 0 to {MAX_TOKEN_ID})")
        return value
    raise ValueError(f"must be {_SHAPES}")


class EmbeddingRequest(BaseModel):
    """`POST /v1/embeddings`. `user` is accepted and recorded nowhere, and never sent to a provider."""

    model_config = _STRICT
    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: Any
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Field(ge=1, le=65_536)] | None = None
    user: Annotated[str, Field(max_length=512)] | None = None

    @field_validator("input")
    @classmethod
    def _shape(cls, value: Any) -> str | list[str] | list[int] | list[list[int]]:
        return _check_input(value)

    def inputs(self) -> Inputs:
        """The input as the list every rung takes: strings, or token arrays."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if all(type(t) is int for t in value):
            return [list(value)]
        return list(value)

    def token_arrays(self) -> bool:
        return not isinstance(self.inputs()[0], str)


def parse_embedding_request(raw: bytes) -> EmbeddingRequest:
    """Decode and validate an embeddings body. Raises InvalidRequestError naming each bad parameter."""
    return validate(EmbeddingRequest, parse_json_body(raw))


def output_dimensions(asked: int | None, native: int, flexible: bool, model: str) -> int:
    """The size of the vectors to send back: the native one, or a smaller one a matryoshka space
    allows. Anything else is the client's 400, as OpenAI refuses `dimensions` its model cannot give."""
    if asked is None or asked == native:
        return native
    if not flexible:
        raise InvalidRequestError(
            f"Invalid value for 'dimensions': model '{model}' gives {native}-dimensional vectors only "
            "and does not support other sizes.",
            param="dimensions",
            code="invalid_value",
        )
    if asked > native:
        raise InvalidRequestError(
            f"Invalid value for 'dimensions': model '{model}' gives at most {native} dimensions.",
            param="dimensions",
            code="integer_above_max_value",
        )
    return asked


def vectors(result: Mapping[str, Any], count: int, native: int, who: str) -> list[list[float]]:
    """The rung's vectors in input order, checked: one per input, each of the space's size, finite."""
    data = result.get("data")
    if not isinstance(data, list) or len(data) != count:
        raise UpstreamError(f"{who} sent a malformed embeddings answer.", code="upstream_malformed")
    out: list[list[float] | None] = [None] * count
    for item in data:
        index = item.get("index") if isinstance(item, dict) else None
        vec = item.get("embedding") if isinstance(item, dict) else None
        if type(index) is not int or not 0 <= index < count or out[index] is not None:
            raise UpstreamError(f"{who} sent a malformed embeddings answer.", code="upstream_malformed")
        if not isinstance(vec, list) or len(vec) != native:
            got = len(vec) if isinstance(vec, list) else "no"
            raise UpstreamError(
                f"{who} sent vectors of {got} dimensions; its space has {native}.",
                code="upstream_malformed",
            )
        if not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in vec):
            raise UpstreamError(f"{who} sent a vector that is not finite numbers.", code="upstream_malformed")
        out[index] = [float(x) for x in vec]
    return [v for v in out if v is not None]


def truncate(vec: Sequence[float], size: int) -> list[float]:
    """The first `size` components, re-normalised to unit length (a matryoshka model's smaller vector)."""
    head = list(vec[:size])
    norm = math.sqrt(sum(x * x for x in head))
    return [x / norm for x in head] if norm > 0 else head


def encode(vec: Sequence[float], fmt: Literal["float", "base64"] | None) -> list[float] | str:
    """A vector as the client asked: floats, or base64 of little-endian float32 (what the SDKs decode)."""
    if fmt != "base64":
        return list(vec)
    packed = array.array("f", vec)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def answer(
    vecs: Sequence[Sequence[float]],
    *,
    model: str,
    size: int,
    fmt: Literal["float", "base64"] | None,
    prompt_tokens: int,
) -> dict[str, Any]:
    """OpenAI's embeddings answer: `data` in input order, `model`, and `usage`."""
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": encode(v if len(v) == size else truncate(v, size), fmt),
        }
        for i, v in enumerate(vecs)
    ]
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}
