"""OpenAI's legacy text-completions request (`POST /v1/completions`), validated at the edge and turned
into the internal chat form, so routing, privacy, the cascade, cost and audit apply unchanged.

`CompletionRequest` is what a client may send. Each of its prompts becomes one
`TextCompletionRequest`: a `ChatCompletionRequest` whose one user message holds the prompt (what the
policy scores and the privacy scan reads) and whose engine and remote bodies carry `prompt` instead of
`messages`, so every rung serves it as a raw completion (no chat template). A chat request can never
set `prompt`: `ChatCompletionRequest` stays strict, and only this module builds the subclass.

The bodies keep the chat convention for logprobs (`logprobs: bool`, `top_logprobs: int`), because the
router asks a judged rung for `logprobs: true` without knowing the API; `wire_body` turns them into
the legacy `logprobs: <int>` right before a rung sends the body to its engine.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from localroute.protocol.chat import (
    MAX_TOKENS,
    Capability,
    ChatCompletionRequest,
    ChatMessage,
    Penalty,
    StopString,
    StreamOptions,
)
from localroute.protocol.parse import parse_json_body, validate

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint (chat's is "as long as the model likes")
MAX_PROMPTS = 16  # prompts in one list: each is routed and served on its own, one after another
MAX_LOGPROBS = 5  # OpenAI's legacy cap on `logprobs`
PROMPT_CHARS = 4_000_000  # below any body limit: the edge's byte limit is the real bound
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)
Prompt = Annotated[str, Field(max_length=PROMPT_CHARS)]


class CompletionRequest(BaseModel):
    """OpenAI's legacy completions request, as a client sends it."""

    model_config = _STRICT
    model: Annotated[str, Field(min_length=1, max_length=256)]
    stream: bool = False  # before `prompt` and `best_of`: their checks read it
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    # Token-id prompts are refused: ids mean different things on each rung the router may pick.
    prompt: Prompt | Annotated[list[Prompt], Field(min_length=1, max_length=MAX_PROMPTS)]
    suffix: Prompt | None = None
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    best_of: Annotated[int, Field(ge=1, le=20)] | None = None
    stream_options: StreamOptions | None = None
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    echo: bool = False
    stop: StopString | Annotated[list[StopString], Field(max_length=4)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: Annotated[dict[str, Annotated[int, Field(ge=-100, le=100)]], Field(max_length=300)] | None = (
        None
    )
    seed: int | None = None
    user: Annotated[str, Field(max_length=256)] | None = None

    _seed_fits = field_validator("seed")(ChatCompletionRequest._seed_fits.__func__)  # type: ignore[attr-defined]
    _token_ids = field_validator("logit_bias")(ChatCompletionRequest._token_ids.__func__)  # type: ignore[attr-defined]

    @field_validator("echo")
    @classmethod
    def _echo_without_logprobs(cls, v: bool, info: ValidationInfo) -> bool:
        # The prompt's own logprobs need every prompt position's logits; no rung here computes them.
        if v and info.data.get("logprobs") is not None:
            raise ValueError("'echo' together with 'logprobs' (the prompt's logprobs) is not supported")
        return v

    @field_validator("prompt")
    @classmethod
    def _one_prompt_per_stream(cls, v: str | list[str], info: ValidationInfo) -> str | list[str]:
        # One stream carries one routed answer: its headers name one rung (docs/completions.md).
        if info.data.get("stream") and isinstance(v, list) and len(v) > 1:
            raise ValueError("a stream serves one prompt; send a list of prompts without 'stream'")
        return v

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and v < (info.data.get("n") or 1):
            raise ValueError("'best_of' must be at least 'n'")
        if v is not None and v > 1 and info.data.get("stream"):
            raise ValueError("'best_of' above 1 cannot be streamed")
        return v

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def internal(self, prompt: str) -> TextCompletionRequest:
        """The internal form of one prompt of this request."""
        fields = self.model_dump(exclude_none=True, exclude={"prompt", "logprobs", "echo", "max_tokens"})
        if self.logprobs is not None:
            fields.update(logprobs=True, top_logprobs=self.logprobs)
        fields.update(
            messages=[ChatMessage(role="user", content=prompt)],
            prompt=prompt,
            echo=self.echo,
            max_tokens=self.max_tokens or DEFAULT_MAX_TOKENS,
        )
        return validate(TextCompletionRequest, fields)


class TextCompletionRequest(ChatCompletionRequest):
    """One prompt of a completions request in the internal chat form (see the module docstring)."""

    prompt: str
    echo: bool = False  # the surface writes the prompt back: engines are never asked to echo
    suffix: str | None = None
    best_of: int | None = None

    def needs(self) -> frozenset[Capability]:
        """As for chat, except that top alternatives are served on every completions path (the
        llama.cpp worker reads them off the logits it already has); `suffix` and `best_of` need a
        rung that does them."""
        need = set(super().needs()) - {"top_logprobs"}
        if self.suffix is not None:
            need.add("suffix")
        if self.best_of is not None and self.best_of > 1:
            need.add("best_of")
        return frozenset(need)

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        body.pop("messages", None)
        body.pop("echo", None)
        if body.get("best_of") == 1:
            del body["best_of"]
        return body

    def engine_body(self, model: str, max_tokens: int) -> dict[str, Any]:
        return self._completion(super().engine_body(model, max_tokens))

    def remote_body(self, model: str, tokens_param: str | None) -> dict[str, Any]:
        body = self._completion(super().remote_body(model, tokens_param))
        if "max_completion_tokens" in body:  # the legacy endpoint knows one name only
            body["max_tokens"] = body.pop("max_completion_tokens")
        return body


def is_completion(body: dict[str, Any]) -> bool:
    """Whether an engine body asks for a raw text completion (it carries `prompt`, not `messages`)."""
    return "prompt" in body


def wire_body(body: dict[str, Any]) -> dict[str, Any]:
    """A completion body as `POST /v1/completions` takes it: `logprobs` as the number of alternatives."""
    out = dict(body)
    top = out.pop("top_logprobs", None)
    if out.pop("logprobs", None):
        out["logprobs"] = int(top or 0)
    return out


def parse_completion_request(raw: bytes) -> CompletionRequest:
    """Decode and validate a completions body. Raises InvalidRequestError naming each bad parameter."""
    return validate(CompletionRequest, parse_json_body(raw))
