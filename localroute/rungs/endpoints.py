"""A rung served by several OpenAI-compatible engine servers (`endpoints = [...]`): llama.cpp's
`llama-server`, `vllm serve`, or `localroute engine` on other hosts (docs/scale-out.md).

Each endpoint is health-checked every `balance.health_every_s`; a request goes to the endpoint with the
fewest outstanding requests (rungs/balancer.py), and fails over to another when it failed before any
byte reached the client (a refused or dropped connection, a timeout, a 5xx, 429, a redirect, a refused
secret). Redirects are never followed and no proxy is used: the peer that gets the bytes is the one
checked. Every request carries a peer check (privacy/trust.py) that the transport applies to the address
it really connects to: outside `[privacy] trusted_networks` the body must pass the egress guard, so a
private request never reaches an untrusted endpoint, whatever its name or its config says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx

from localroute.config.models import LlamaCppModel, VllmModel
from localroute.config.schema import Config
from localroute.errors import APIError, EngineUnavailableError
from localroute.privacy.guard import CURRENT, PRIVATE_BY_DEFAULT, EgressGuard, PrivacyViolationError
from localroute.privacy.trust import PeerCheck, TrustedNetworks, mark_untrusted
from localroute.protocol.backend import Brief
from localroute.protocol.wire import ChatCompletion, ChatCompletionChunk, EngineHealth
from localroute.rungs.balancer import Balancer, Endpoint
from localroute.rungs.lean_http import PEER_CHECK, LeanTransport, Resolver, system_resolve
from localroute.rungs.openai_http import OpenAIHTTP
from localroute.rungs.transport_errors import TRANSPORT_ERRORS

log = logging.getLogger("localroute.endpoints")
T = TypeVar("T")
_SECRET_CODES = frozenset({"invalid_api_key", "missing_api_key"})


def _fails_over(exc: APIError) -> bool:
    """Whether another endpoint may do better: the endpoint's fault, not the request's."""
    return exc.status >= 500 or exc.status in (401, 403, 408, 429) or exc.code in _SECRET_CODES


class EndpointsBackend:
    """One chat rung balanced over `cfg.endpoints`; implements the Backend protocol."""

    def __init__(
        self,
        cfg: LlamaCppModel | VllmModel,
        *,
        networks: TrustedNetworks,
        egress_guard: EgressGuard,
        env: Mapping[str, str] | None = None,
        resolver: Resolver = system_resolve,
    ) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.balance = cfg.balance
        self.balancer = Balancer(cfg.name, cfg.endpoints, cfg.balance)
        self.served = 0
        self._networks = networks
        self._guard = egress_guard
        self._upstream_model = cfg.model if isinstance(cfg, VllmModel) else cfg.name
        environ = os.environ if env is None else env
        secret = environ.get(cfg.balance.key_env, "") if cfg.balance.key_env else ""
        missing = cfg.balance.key_env and not secret
        self._disabled = f"secret variable {cfg.balance.key_env} is not set" if missing else None
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        timeout = httpx.Timeout(cfg.request_timeout_s, connect=cfg.balance.connect_timeout_s, pool=None)
        self._http: dict[Endpoint, OpenAIHTTP] = {}
        for ep in self.balancer.endpoints:
            client = httpx.AsyncClient(
                base_url=ep.url,
                transport=LeanTransport(resolver=resolver),
                timeout=timeout,
                headers=headers,
                follow_redirects=False,  # a redirect could lead anywhere: it is a failure, never followed
                trust_env=False,  # no proxy: the peer checked is the peer that gets the bytes
            )
            self._http[ep] = OpenAIHTTP(client)
        self._prober: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"EndpointsBackend(name={self.name!r}, endpoints={len(self.balancer.endpoints)})"

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start probing every endpoint in the background (a first round now). Idempotent."""
        if self._disabled is not None or self._prober is not None:
            return
        self._prober = asyncio.create_task(self._probe_forever(), name=f"localroute-probe-{self.name}")

    async def _probe_forever(self) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(self.balance.health_every_s)

    async def probe(self) -> None:
        """One health check of each endpoint that is due (rungs/balancer.py `due_probes`)."""
        await asyncio.gather(*(self._probe(ep) for ep in self.balancer.due_probes()))

    async def _probe(self, ep: Endpoint) -> None:
        check = PeerCheck(self._networks)  # a probe carries no request data: any peer may answer it
        client = self._http[ep].client
        try:
            limit = self.balance.health_timeout_s
            req = client.build_request(
                "GET", self.balance.health_path, timeout=limit, extensions={PEER_CHECK: check}
            )
            # /health needs no secret, and any peer may answer a probe: the secret is not sent with it.
            req.headers.pop("Authorization", None)
            r = await client.send(req)
            problem = None if r.status_code == 200 else f"health check answered {r.status_code}"
        except TRANSPORT_ERRORS as exc:
            problem = f"health check failed ({type(exc).__name__})"
        ep.peer, ep.trusted = check.peer or ep.peer, check.trusted if check.peer else ep.trusted
        if problem is None:
            self.balancer.succeeded(ep, probe=True)
        else:
            self.balancer.failed(ep, problem, probe=True)

    async def aclose(self) -> None:
        prober, self._prober = self._prober, None
        if prober is not None:
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prober
        for http in self._http.values():
            await http.client.aclose()

    def brief(self) -> Brief:
        return Brief("ready" if self._ready() else "failed", local=True)

    def _ready(self) -> bool:
        return self._disabled is None and self.balancer.any_closed()

    def health(self) -> EngineHealth:
        state = "unavailable" if self._disabled else ("ready" if self._ready() else "failed")
        return cast(
            EngineHealth,
            {
                "state": state,
                "engine": self.cfg.engine,
                "tier": self.cfg.tier,
                "n_ctx": self.cfg.n_ctx,
                "in_flight": sum(ep.outstanding for ep in self.balancer.endpoints),
                "served": self.served,
                "last_error": self._disabled,
                "endpoints": [ep.snapshot() for ep in self.balancer.endpoints],
            },
        )

    # -- serving -----------------------------------------------------------------------------------

    def _outgoing(self, body: dict[str, Any]) -> dict[str, Any]:
        if self._disabled is not None:
            raise EngineUnavailableError(f"Model '{self.name}' is unavailable here: {self._disabled}.")
        return {**body, "model": self._upstream_model}

    async def complete(self, body: dict[str, Any]) -> ChatCompletion:
        out = self._outgoing(body)
        await self.start()

        async def once(ep: Endpoint, check: PeerCheck) -> ChatCompletion:
            result = await self._http[ep].complete(out, {PEER_CHECK: check})
            if check.trusted is False:  # a public request served from outside: not local (audit)
                mark_untrusted(result)
            return result

        result = await self._failing_over(out, once)
        self.served += 1
        return result

    async def stream(self, body: dict[str, Any]) -> AsyncGenerator[ChatCompletionChunk, None]:
        out = self._outgoing(body)
        await self.start()

        async def opened(ep: Endpoint, check: PeerCheck) -> tuple[Endpoint, Any, ChatCompletionChunk | None]:
            chunks = self._http[ep].stream(out, {PEER_CHECK: check})
            try:
                first = await anext(chunks, None)
            except BaseException:
                await chunks.aclose()
                raise
            if first is not None and check.trusted is False:
                mark_untrusted(first)
            return ep, chunks, first

        # Until the first chunk nothing has reached the client: every failure may go elsewhere.
        ep, chunks, chunk = await self._failing_over(out, opened, keep=True)
        try:
            while chunk is not None:
                yield chunk
                chunk = await anext(chunks, None)
            self.served += 1
            ep.served += 1
            self.balancer.succeeded(ep)
        except APIError as exc:  # after the first chunk nothing is retried
            if _fails_over(exc):
                self.balancer.failed(ep, f"{type(exc).__name__}: {exc.code or exc.type}")
            raise
        finally:
            ep.outstanding -= 1
            await chunks.aclose()

    async def _failing_over(
        self,
        out: dict[str, Any],
        attempt: Callable[[Endpoint, PeerCheck], Awaitable[T]],
        *,
        keep: bool = False,
    ) -> T:
        """Try endpoints in the balancer's order until one answers. `keep`: the endpoint stays
        outstanding on success (a stream that is still being read)."""
        private = CURRENT.get(PRIVATE_BY_DEFAULT).private
        tried: list[Endpoint] = []
        failure: APIError | None = None
        refusal: PrivacyViolationError | None = None
        while (ep := self.balancer.pick(tried, private)) is not None:
            tried.append(ep)
            check = PeerCheck(self._networks, self._guard, out)
            ep.outstanding += 1
            done = False
            try:
                async with asyncio.timeout(None) as scope:
                    ep.waiting.add(scope)
                    try:
                        result = await attempt(ep, check)
                    finally:
                        ep.waiting.discard(scope)
                done = True
            except TimeoutError:  # its circuit opened while this waited (Balancer.failed): go elsewhere
                if not scope.expired():
                    raise
                failure = EngineUnavailableError(
                    f"An endpoint of model '{self.name}' stopped answering.", code="endpoint_circuit_open"
                )
                continue
            except PrivacyViolationError as exc:  # nothing was sent: another endpoint may be trusted
                refusal = exc
                log.info("endpoint %s of %s refused for this request: untrusted peer", ep.name, self.name)
                continue
            except APIError as exc:
                if not _fails_over(exc):
                    self.balancer.succeeded(ep)  # it answered: the request is at fault, not the endpoint
                    raise
                failure = exc
                self.balancer.failed(ep, f"{type(exc).__name__}: {exc.code or exc.type}")
                continue
            finally:
                if check.peer is not None:
                    ep.peer, ep.trusted = check.peer, check.trusted
                if not (done and keep):
                    ep.outstanding -= 1
            if not keep:
                ep.served += 1
                self.balancer.succeeded(ep)
            return result
        if failure is not None:
            raise failure
        if refusal is not None:
            raise refusal
        raise EngineUnavailableError(
            f"No endpoint of model '{self.name}' is available now.",
            code="no_endpoint_available",
            headers={"Retry-After": str(max(1, round(self.balance.open_s)))},
        )


def from_config(
    config: Config,
    model: LlamaCppModel | VllmModel,
    runtime_dir: Path,
    *,
    egress_guard: EgressGuard,
) -> EndpointsBackend:
    return EndpointsBackend(
        model, networks=TrustedNetworks(config.privacy.trusted_networks), egress_guard=egress_guard
    )
