"""The endpoints rung (rungs/endpoints.py) against three real engine servers on loopback (the vLLM
stand-in, tests/fake_vllm.py, in its own process): balance by least outstanding requests, fail-over, and
each endpoint's circuit while one is killed, one hung (SIGSTOP) and both brought back, under load.

Phases change on events the test observes (a circuit open, a circuit closed), never on elapsed time;
the waits are bounded only so that a broken build fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from localroute.config.models import VllmModel
from localroute.config.privacy import ALL_KINDS
from localroute.errors import APIError
from localroute.privacy.detect import Detector
from localroute.privacy.guard import EgressGuard
from localroute.privacy.trust import TrustedNetworks
from localroute.rungs.endpoints import EndpointsBackend
from tests.endpoint_servers import MODEL, FakeEngine, HostedStandin

BALANCE: dict[str, Any] = {
    "health_every_s": 0.1, "health_timeout_s": 0.5, "connect_timeout_s": 0.5,
    "failures_to_open": 2, "open_s": 0.3,
}  # fmt: skip
WAIT_LIMIT = 120  # load rounds before a phase gives up: a bound against hanging, not a timing claim


def rung(urls: list[str], **over: Any) -> VllmModel:
    balance = {**BALANCE, **over.pop("balance", {})}
    over = {"request_timeout_s": 2.0, **over}
    return VllmModel(name="lan", engine="vllm", model=MODEL, endpoints=urls, balance=balance, **over)


def backend(urls: list[str], **over: Any) -> EndpointsBackend:
    guard = EgressGuard(Detector(ALL_KINDS))
    return EndpointsBackend(rung(urls, **over), networks=TrustedNetworks(["127.0.0.0/8"]), egress_guard=guard)


def body(text: str = "hello there", **kw: Any) -> dict[str, Any]:
    return {"model": "lan", "messages": [{"role": "user", "content": text}], "max_tokens": 8, **kw}


@pytest.fixture(scope="module")
def engines() -> Iterator[list[FakeEngine]]:
    made = [FakeEngine().start() for _ in range(3)]
    yield made
    for e in made:
        e.kill()


class Load:
    """Requests from `workers` concurrent clients, in rounds; every outcome kept."""

    def __init__(self, rung: EndpointsBackend, workers: int = 6) -> None:
        self.rung = rung
        self.workers = workers
        self.ok = 0
        self.errors: list[str] = []

    async def one(self) -> None:
        try:
            answer = await self.rung.complete(body())
            assert answer["choices"][0]["message"]["content"].startswith("vllm answer")
            self.ok += 1
        except APIError as exc:
            self.errors.append(f"{exc.status} {exc.code}")

    async def round(self) -> None:
        await asyncio.gather(*(self.one() for _ in range(self.workers)))

    async def until(self, done: Callable[[], bool]) -> int:
        """Rounds of load until `done()` holds; returns how many it took."""
        for n in range(WAIT_LIMIT):
            if done():
                return n
            await self.round()
            await asyncio.sleep(0.05)  # lets the prober run between rounds (it probes, it is not timed)
        raise AssertionError("the expected state never came")


def test_least_outstanding_balances_counts_within_tolerance(engines: list[FakeEngine]) -> None:
    async def scenario() -> None:
        lan = backend([e.url for e in engines])
        await lan.start()
        try:
            for _ in range(30):  # one at a time: every endpoint idle, so turns decide: exactly even
                await lan.complete(body())
            assert [ep.served for ep in lan.balancer.endpoints] == [10, 10, 10]
            load = Load(lan, workers=6)
            for _ in range(20):
                await load.round()
            assert load.errors == [] and load.ok == 120
            counts = [ep.served - 10 for ep in lan.balancer.endpoints]
            # Stated tolerance: under 6 concurrent clients each endpoint gets 40 +- 25% of the 120.
            assert all(30 <= c <= 50 for c in counts), counts
            assert all(ep.outstanding == 0 for ep in lan.balancer.endpoints)
        finally:
            await lan.aclose()

    asyncio.run(scenario())


def test_killed_hung_and_restarted_endpoints_under_load_no_error(engines: list[FakeEngine]) -> None:
    a, b, _ = engines
    events: list[str] = []

    async def scenario() -> None:
        lan = backend([e.url for e in engines])
        await lan.start()
        ep_a, ep_b, ep_c = lan.balancer.endpoints
        load = Load(lan)
        try:
            await load.until(lambda: load.ok >= 30)
            a.kill()
            events.append("a killed")
            await load.until(lambda: ep_a.circuit == "open")
            events.append("a open")
            b.hang()
            events.append("b hung")
            await load.until(lambda: ep_b.circuit == "open")
            events.append("b open")
            served_c = ep_c.served
            await load.until(lambda: ep_c.served >= served_c + 30)  # c alone carries the load
            a.start()
            b.resume()
            events.append("a restarted, b resumed")
            await load.until(lambda: ep_a.circuit == ep_b.circuit == "closed")
            events.append("both closed")
            before = [ep.served for ep in lan.balancer.endpoints]
            for _ in range(10):
                await load.round()
            after = [ep.served for ep in lan.balancer.endpoints]
            assert all(x > y for x, y in zip(after, before, strict=True)), (before, after)
        finally:
            await lan.aclose()
        assert load.errors == [], (load.errors, events)  # a healthy endpoint existed throughout
        assert ep_a.opens >= 1 and ep_b.opens >= 1
        assert ep_a.failures >= BALANCE["failures_to_open"] and ep_b.failures >= 1

    try:
        asyncio.run(scenario())
    finally:
        b.resume()
        for e in (a, b):
            if e.proc is None or e.proc.poll() is not None:
                e.start()


def test_a_stream_fails_over_before_its_first_chunk(engines: list[FakeEngine]) -> None:
    dead = FakeEngine()  # never started: its port refuses connections

    async def scenario() -> None:
        lan = backend([dead.url, engines[0].url], balance={"failures_to_open": 100})
        try:
            for _ in range(4):  # turns reach the dead endpoint first at least once
                chunks = [ch async for ch in lan.stream(body(stream=True))]
                deltas = [ch["choices"][0]["delta"] for ch in chunks if ch["choices"]]
                text = "".join(d.get("content") or "" for d in deltas)
                assert text.startswith("vllm answer")
            dead_ep, live_ep = lan.balancer.endpoints
            assert dead_ep.served == 0 and dead_ep.failures >= 1 and live_ep.served == 4
        finally:
            await lan.aclose()

    asyncio.run(scenario())


def test_a_redirect_is_a_failure_never_followed() -> None:
    target = HostedStandin("127.0.0.1", model=MODEL).start()
    redirecting = HostedStandin("127.0.0.1", model=MODEL, redirect_to=target.url).start()
    healthy = HostedStandin("127.0.0.1", model=MODEL).start()

    async def scenario() -> None:
        lan = backend([redirecting.url, healthy.url], balance={"health_path": "/v1/models"})
        try:
            for _ in range(4):
                answer = await lan.complete(body())
                assert answer["choices"][0]["message"]["content"]
        finally:
            await lan.aclose()

    try:
        asyncio.run(scenario())
        assert redirecting.chats() >= 1  # it was tried, and answered 307
        assert target.chats() == 0  # nobody followed it
        assert healthy.chats() == 4
    finally:
        for s in (target, redirecting, healthy):
            s.stop()


def test_a_refused_secret_fails_over_and_the_secret_is_sent_as_a_bearer() -> None:
    wrong = HostedStandin("127.0.0.1", model=MODEL, api_key="other-secret").start()
    right = HostedStandin("127.0.0.1", model=MODEL, api_key="s3cret").start()

    async def scenario() -> None:
        guard = EgressGuard(Detector(ALL_KINDS))
        cfg = rung([wrong.url, right.url], balance={"health_path": "/v1/models", "key_env": "ENGINE_KEY"})
        lan = EndpointsBackend(
            cfg, networks=TrustedNetworks(["127.0.0.0/8"]), egress_guard=guard, env={"ENGINE_KEY": "s3cret"}
        )
        try:
            for _ in range(2):
                await lan.complete(body())
            states = collections.Counter(ep.last_error is None for ep in lan.balancer.endpoints)
            assert states[False] == 1  # the endpoint that refused the secret says so
        finally:
            await lan.aclose()

    try:
        asyncio.run(scenario())
        assert right.chats() == 2
        chats = [r for r in right.requests if r.path.endswith("/chat/completions")]
        assert chats and all(r.headers["authorization"] == "Bearer s3cret" for r in chats)
        # Health probes may reach any peer (they carry no request data): they carry no secret either.
        assert all("authorization" not in r.headers for r in right.requests if r.path.endswith("/health"))
    finally:
        wrong.stop()
        right.stop()


def test_a_request_waiting_on_a_hung_endpoint_fails_over_when_its_circuit_opens(
    engines: list[FakeEngine],
) -> None:
    hung, healthy = engines[0], engines[1]

    async def scenario() -> None:
        # Reads may wait an hour: only the circuit opening can rescue the request in time.
        lan = backend([hung.url, healthy.url], request_timeout_s=3600.0, balance={"health_every_s": 3600})
        ep_hung, ep_ok = lan.balancer.endpoints
        try:
            hung.hang()
            request = asyncio.create_task(lan.complete(body()))
            for _ in range(10_000):  # the first pick is the first endpoint: the hung one
                if ep_hung.outstanding:
                    break
                await asyncio.sleep(0.01)
            assert ep_hung.outstanding == 1
            for _ in range(20):  # probes time out; the second failure in a row opens the circuit
                if ep_hung.circuit == "open":
                    break
                await lan.probe()
            assert ep_hung.circuit == "open"
            answer = await asyncio.wait_for(request, 60)  # a bound against hanging, not a timing claim
            assert answer["choices"][0]["message"]["content"].startswith("vllm answer")
            assert ep_ok.served == 1 and ep_hung.served == 0 and ep_hung.outstanding == 0
        finally:
            hung.resume()
            await lan.aclose()

    asyncio.run(scenario())
