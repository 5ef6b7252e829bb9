"""One exception tree. Every error a client can see is an `APIError` and becomes the OpenAI shape
`{"error": {"message", "type", "param", "code"}}` in one place (`app.error_response`)."""

from __future__ import annotations

from typing import Any, ClassVar


class LocalRouteError(Exception):
    """Base of every error raised by localroute on purpose."""


class ConfigError(LocalRouteError):
    """The configuration file is missing or invalid; the message names the file, key and expectation."""


class ModelUnavailableError(LocalRouteError):
    """A model's weights are not on disk, or cannot be fetched (offline, missing repo, bad checksum)."""


class InvalidModelFileError(ModelUnavailableError):
    """A model file failed the structural check before llama.cpp was given it; the message says why
    (a header field, an offset) and never names the file's path."""


class ModelCheckInconclusiveError(InvalidModelFileError):
    """The structural check hung, died or gave no answer: that says little about the file, so the
    verdict is not kept for long (a busy moment must not disable a model until restart)."""


class APIError(LocalRouteError):
    """An error with an HTTP status and an OpenAI-shaped body. Messages never carry paths or secrets."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def anthropic_body(self) -> dict[str, Any]:
        """The same error in the Anthropic Messages API's shape (`/v1/messages`): its error types are
        named by status; the parameter, when there is one, is named in the message."""
        message = (
            self.message
            if self.param is None or self.param in self.message
            else (f"{self.param}: {self.message}")
        )
        return {
            "type": "error",
            "error": {"type": _ANTHROPIC_TYPE.get(self.status, "api_error"), "message": message},
        }


class InvalidRequestError(APIError):
    status = 400
    type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    default_code = "context_length_exceeded"


class UnsupportedCapabilityError(InvalidRequestError):
    """The request needs something (tools, images, ...) that no rung it may use can do."""

    default_code = "unsupported_capability"

    def __init__(self, message: str, capability: str) -> None:
        super().__init__(message, param=_PARAM_OF.get(capability))
        self.capability = capability


# Anthropic's error type for each status (https://docs.anthropic.com/en/api/errors).
_ANTHROPIC_TYPE = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 405: "invalid_request_error", 408: "timeout_error", 413: "request_too_large",
    415: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
    431: "invalid_request_error", 499: "api_error", 500: "api_error", 502: "api_error",
    503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error",
}  # fmt: skip

# The request field that asked for each capability, named in the error.
_PARAM_OF = {
    "tools": "tools", "json_object": "response_format", "json_schema": "response_format",
    "vision": "messages", "logprobs": "logprobs", "top_logprobs": "top_logprobs", "n": "n",
    "suffix": "suffix", "best_of": "best_of",
}  # fmt: skip


class NotFoundError(APIError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"


class MethodNotAllowedError(APIError):
    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"


class PayloadTooLargeError(APIError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class UnsupportedMediaTypeError(APIError):
    status = 415
    type = "invalid_request_error"
    default_code = "unsupported_media_type"


class OverloadedError(APIError):
    """The engine's bounded queue is full. Retry after the given delay."""

    status = 429
    type = "rate_limit_error"
    default_code = "queue_full"


class UpstreamError(APIError):
    """The engine or provider answered with an error we cannot map to a client mistake."""

    status = 502
    type = "server_error"
    default_code = "upstream_error"


class StateUnavailableError(APIError):
    """The shared state store (`[state] url`) could not be reached for a call that needs it."""

    status = 503
    type = "server_error"
    default_code = "state_unavailable"


class EngineUnavailableError(APIError):
    """The engine is down (crashed, killed, failed to load). It is restarted on the next request."""

    status = 503
    type = "server_error"
    default_code = "engine_unavailable"


class InternalError(APIError):
    status = 500
    type = "server_error"
    default_code = "internal_error"


class AuthenticationError(APIError):
    """No API key, or one that matches no configured key."""

    status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"


class RateLimitError(APIError):
    """The key (or client) sent more requests than its limit allows. Retry after the given delay."""

    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class BudgetExceededError(APIError):
    """The key's spend budget for this period is used up (`[[keys]] budget_usd`)."""

    status = 429
    type = "insufficient_quota"
    default_code = "budget_exceeded"


class HeadersTooLargeError(APIError):
    status = 431
    type = "invalid_request_error"
    default_code = "headers_too_large"


class RequestTimeoutError(APIError):
    """The client did not send its request body within the deadline."""

    status = 408
    type = "invalid_request_error"
    default_code = "request_timeout"


class DeadlineExceededError(APIError):
    """The request ran past the gateway's total deadline (`server.request_timeout_s`)."""

    status = 504
    type = "server_error"
    default_code = "deadline_exceeded"


def api_error_from_body(status: int, body: object) -> APIError:
    """Rebuild an APIError from an upstream OpenAI-shaped error body, keeping status and code."""
    message, param, code, etype = "upstream error", None, None, None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        message = str(err.get("message") or message)
        param = err.get("param") if isinstance(err.get("param"), str) else None
        code = err.get("code") if isinstance(err.get("code"), str) else None
        etype = err.get("type") if isinstance(err.get("type"), str) else None
    cls: type[APIError]
    if code == "context_length_exceeded":
        cls = ContextLengthExceededError
    elif status == 400 or (etype == "invalid_request_error" and status < 500):
        cls = InvalidRequestError
    elif status == 404:
        cls = NotFoundError
    elif status == 429:
        cls = OverloadedError
    elif status == 503:
        cls = EngineUnavailableError
    else:
        cls = UpstreamError
    return cls(message, param=param, code=code)
