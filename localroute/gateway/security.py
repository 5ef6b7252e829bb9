"""Who may call the gateway, and how much: API keys, the exposure rule, header size, rate limits.

`Guard` is the outermost ASGI middleware. It decides on `scope["path"]`, the path the server
parsed from the request line, never on a URL rebuilt from the Host header: a Host such as
`x/health?` must not make `/v1/chat/completions` look like the public `/health`
(Starlette CVE-2026-48710).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import os
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from localroute.config.privacy import APIKey
from localroute.config.schema import Config
from localroute.errors import APIError, AuthenticationError, HeadersTooLargeError, RateLimitError
from localroute.state.limits import Limiter, RateLimiter

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Served without a key: the liveness probe, the API description, and the dashboard's static page
# and assets (they hold no data; the page asks for a key before it reads /v1/localroute/stats).
PUBLIC_PATHS = frozenset({"/health", "/openapi.json", "/dashboard"})
PUBLIC_PREFIXES = ("/dashboard/assets/",)
_STATE_KEY = "localroute_api_key"  # where the guard leaves the matched key for the handlers


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_problem(host: str, keys: Sequence[APIKey], insecure_no_auth: bool) -> str | None:
    """Why the gateway must not start bound to `host`, or None. Off loopback, keys are required."""
    if is_loopback(host) or keys or insecure_no_auth:
        return None
    return (
        f"refusing to listen on {host} without API keys: anyone who can reach this address could use "
        "your models. Add [[keys]] to the config (see README, Security), bind 127.0.0.1, or pass "
        "--insecure-no-auth if another layer authenticates."
    )


def _digest(key: APIKey) -> str | None:
    """The SHA-256 (hex) a presented key must match; env-referenced keys are hashed at startup."""
    if key.sha256 is not None:
        return key.sha256
    value = os.environ.get(key.env or "", "")
    return hashlib.sha256(value.encode()).hexdigest() if value else None


class KeyRing:
    """The configured API keys, held as SHA-256 digests and compared in constant time."""

    def __init__(self, keys: Sequence[APIKey]) -> None:
        self._keys = [(k, _digest(k)) for k in keys]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def match(self, authorization: str | None, x_api_key: str | None = None) -> APIKey | None:
        """The key an `Authorization: Bearer ...` header presents (or, as Anthropic's clients send it,
        an `x-api-key` header), or None. Every key is compared, with no early exit, so the time taken
        does not say which one matched or how closely."""
        if authorization and authorization[:7].lower() == "bearer ":
            presented = authorization[7:].strip()
        elif not authorization and x_api_key:
            presented = x_api_key.strip()
        else:
            return None
        digest = hashlib.sha256(presented.encode()).hexdigest()
        found: list[APIKey] = []
        for key, want in self._keys:
            if want is not None and hmac.compare_digest(digest, want):
                found.append(key)
        # Two entries for one key (by env and by hash): the stricter privacy policy wins.
        order = {"private": 0, "public": 1, "auto": 2}
        return min(found, key=lambda k: order[k.privacy]) if found else None


def matched_key(scope: Scope) -> APIKey | None:
    """The key the guard matched for this request (None without [[keys]], or on a public path)."""
    key = (scope.get("state") or {}).get(_STATE_KEY)
    return key if isinstance(key, APIKey) else None


def caller_of(scope: Scope) -> str:
    """Who is calling, as the rate limiter counts them: the API key's name, else the client address.
    Per-caller state (rate limits, conversation stickiness) is keyed by it."""
    key = matched_key(scope)
    if key is not None:
        return f"key:{key.name}"
    client = scope.get("client") or ("unknown", 0)
    return f"addr:{client[0]}"


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers") or ():
        if k.lower() == name:
            return bytes(v).decode("latin-1")
    return None


class Guard:
    """ASGI middleware: header size, then the API key, then the caller's rate limit."""

    def __init__(
        self,
        app: ASGIApp,
        config: Config,
        keys: KeyRing,
        render: Callable[[APIError, str], Any],
        limiter: Limiter | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.render = render  # (APIError, path) -> an ASGI response in the called API's error shape
        self.max_header_bytes = config.server.max_header_bytes
        self.metrics_public = config.server.metrics_public
        self.default_rpm = config.server.requests_per_minute
        self.limiter: Limiter = limiter if limiter is not None else RateLimiter()

    def _public(self, path: str) -> bool:
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return True
        return path == "/metrics" and self.metrics_public

    def check(self, scope: Scope) -> APIError | None:
        size = sum(len(k) + len(v) for k, v in scope.get("headers") or ())
        if size > self.max_header_bytes:
            return HeadersTooLargeError(f"Request headers exceed the limit of {self.max_header_bytes} bytes.")
        path = scope.get("path", "")
        key = None
        if self.keys and not self._public(path):
            key = self.keys.match(_header(scope, b"authorization"), _header(scope, b"x-api-key"))
            scope.setdefault("state", {})[_STATE_KEY] = key
            if key is None:
                return AuthenticationError(
                    "Missing or invalid API key. Send it as 'Authorization: Bearer <key>' "
                    "(or 'x-api-key: <key>').",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return None

    async def limit(self, scope: Scope) -> APIError | None:
        """The caller's rate limit, after `check` (which left the matched key in the scope)."""
        path = scope.get("path", "")
        key = matched_key(scope)
        rpm = key.requests_per_minute if key is not None and key.requests_per_minute else self.default_rpm
        if rpm is not None and not self._public(path):
            wait = await self.limiter.take(caller_of(scope), rpm)
            if wait > 0:
                return RateLimitError(
                    f"Rate limit of {rpm} requests per minute reached; retry after the delay given.",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = self.check(scope) or await self.limit(scope)
            if problem is not None:
                await self.render(problem, scope.get("path", ""))(scope, receive, send)
                return
        await self.app(scope, receive, send)
