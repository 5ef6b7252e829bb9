"""The trust boundary of engine endpoints (privacy/trust.py, enforced in rungs/lean_http.py): an endpoint
is local only while the address its connection reaches is inside `[privacy] trusted_networks`.

Tripwires: stand-in engines that record every request they see. A private request must never reach an
untrusted one, whatever its name says, however the name resolves later, and through no redirect.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from localroute.config.models import VllmModel
from localroute.config.privacy import ALL_KINDS
from localroute.privacy.detect import Detector
from localroute.privacy.guard import CURRENT, EgressGuard, Privacy, PrivacyViolationError
from localroute.privacy.trust import PeerCheck, TrustedNetworks
from localroute.rungs.endpoints import EndpointsBackend
from tests.conftest import DEFAULT_MODEL, config_text, repo_routing, repo_rung, start_gateway
from tests.endpoint_servers import MODEL, HostedStandin, standins_on_one_port

SECRET_TEXT = "the merger closes on friday"
PRIVATE = Privacy(True, "header")
PUBLIC = Privacy(False, "public-header")


def test_trusted_networks_judge_addresses_not_names() -> None:
    nets = TrustedNetworks(["127.0.0.0/8", "::1/128", "10.0.0.0/24"])
    assert "127.0.0.1" in nets and "10.0.0.77" in nets and "::1" in nets
    assert "::ffff:10.0.0.5" in nets  # an IPv4-mapped peer is its IPv4 address
    assert "fe80::1%eth0" not in nets and "10.0.1.1" not in nets and "192.168.1.2" not in nets
    assert "localhost" not in nets and "" not in nets  # a name is never trusted as such


def test_peer_check_refuses_a_private_body_for_an_untrusted_peer_and_scans_a_public_one() -> None:
    nets = TrustedNetworks(["127.0.0.1/32"])
    guard = EgressGuard(Detector(ALL_KINDS))
    token = CURRENT.set(PRIVATE)
    try:
        check = PeerCheck(nets, guard, {"messages": [{"role": "user", "content": "hi"}]})
        check("127.0.0.1")
        with pytest.raises(PrivacyViolationError):
            check("127.0.0.2")
        PeerCheck(nets)("127.0.0.2")  # a probe (no body) may reach anyone
    finally:
        CURRENT.reset(token)
    token = CURRENT.set(PUBLIC)
    try:
        PeerCheck(nets, guard, {"messages": [{"role": "user", "content": "hi"}]})("127.0.0.2")
        carrying = {"messages": [{"role": "user", "content": "mail me at jane.doe@example.com"}]}
        with pytest.raises(PrivacyViolationError):  # the guard's re-scan applies to an untrusted peer
            PeerCheck(nets, guard, carrying)("127.0.0.2")
    finally:
        CURRENT.reset(token)


class Resolver:
    """A name whose resolution the test changes: DNS rebinding, on demand."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.asked = 0

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked += 1
        return [self.address]


async def _ask(lan: EndpointsBackend, privacy: Privacy, text: str = SECRET_TEXT) -> Any:
    token = CURRENT.set(privacy)  # as the gateway sets it for each request
    try:
        return await lan.complete({"model": "lan", "messages": [{"role": "user", "content": text}]})
    finally:
        CURRENT.reset(token)


def test_a_name_is_judged_by_the_address_it_connects_to_when_it_rebinds() -> None:
    trusted, untrusted = standins_on_one_port(["127.0.0.1", "127.0.0.2"])
    resolver = Resolver("127.0.0.2")
    cfg = VllmModel(name="lan", engine="vllm", model=MODEL, endpoints=[f"http://engine.test:{trusted.port}"])

    async def scenario() -> None:
        lan = EndpointsBackend(
            cfg,
            networks=TrustedNetworks(["127.0.0.1/32"]),
            egress_guard=EgressGuard(Detector(ALL_KINDS)),
            resolver=resolver,
        )
        try:
            with pytest.raises(PrivacyViolationError):  # the name resolves outside: refused before dialling
                await _ask(lan, PRIVATE)
            assert untrusted.requests == []
            await _ask(lan, PUBLIC, "what is 2 + 2")  # public traffic may go there (after the guard)
            assert untrusted.chats() == 1
            resolver.address = "127.0.0.1"  # the name now points inside the trusted network
            await _ask(lan, PRIVATE)  # the pooled connection to .2 is not reused for it: a fresh one is
            assert trusted.chats() == 1 and untrusted.chats() == 1
            resolver.address = "127.0.0.2"  # and back out: the pooled connection to .1 is still .1
            await _ask(lan, PRIVATE)
            assert trusted.chats() == 2
            ep = lan.balancer.endpoints[0]
            assert (ep.peer, ep.trusted) == ("127.0.0.1", True)
        finally:
            await lan.aclose()

    try:
        asyncio.run(scenario())
        assert all(SECRET_TEXT not in str(r.body) for r in untrusted.requests)
    finally:
        trusted.stop()
        untrusted.stop()


def test_a_private_request_goes_only_to_the_trusted_endpoint_of_a_mixed_rung() -> None:
    inside = HostedStandin("127.0.0.1", model=MODEL).start()
    outside = HostedStandin("127.0.0.3", model=MODEL).start()
    cfg = VllmModel(name="lan", engine="vllm", model=MODEL, endpoints=[outside.url, inside.url])

    async def scenario() -> None:
        lan = EndpointsBackend(
            cfg, networks=TrustedNetworks(["127.0.0.1/32"]), egress_guard=EgressGuard(Detector(ALL_KINDS))
        )
        try:
            for _ in range(6):
                await _ask(lan, PRIVATE)
        finally:
            await lan.aclose()

    try:
        asyncio.run(scenario())
        assert inside.chats() == 6 and outside.requests == []
    finally:
        inside.stop()
        outside.stop()


@pytest.fixture
def tripwire() -> Iterator[HostedStandin]:
    engine = HostedStandin("127.0.0.1", model=MODEL).start()
    yield engine
    engine.stop()


def _gateway_config(engine: HostedStandin, trusted: list[str] | None) -> str:
    rung = {"name": "lan", "engine": "vllm", "model": MODEL, "endpoints": [f"http://localhost:{engine.port}"],
            "balance": {"health_path": "/v1/models"}}  # fmt: skip
    privacy = {"trusted_networks": trusted} if trusted is not None else None  # audited: `local` is read
    return config_text(models=[rung], privacy=privacy)


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def test_with_loopback_untrusted_a_private_request_fails_closed_and_the_engine_sees_nothing(
    tmp_path: Path, tripwire: HostedStandin
) -> None:
    srv = start_gateway(tmp_path, _gateway_config(tripwire, ["10.0.0.0/8"]))
    try:
        client = _client(srv.url)
        for headers, text in (({"X-LocalRoute-Privacy": "private"}, SECRET_TEXT),
                              ({}, "write to jane.doe@example.com about " + SECRET_TEXT)):  # fmt: skip
            with pytest.raises(openai.APIStatusError) as caught:
                client.chat.completions.create(
                    model="auto", messages=[{"role": "user", "content": text}], extra_headers=headers
                )
            assert caught.value.status_code == 503
            assert caught.value.body["code"] == "private_request_unservable"  # type: ignore[index]
        assert tripwire.chats() == 0
        assert all(SECRET_TEXT not in str(r.body) for r in tripwire.requests)
        # Not a dead path: a public request does reach it (it is simply not trusted).
        question = [{"role": "user", "content": "2 + 2?"}]
        answer = client.chat.completions.create(model="auto", messages=question)  # type: ignore[arg-type]
        assert answer.choices[0].message.content and tripwire.chats() == 1
        (ep,) = srv.health()["engines"]["lan"]["endpoints"]  # type: ignore[index]
        assert ep["trusted"] is False and ep["peer"] in ("127.0.0.1", "::1")
        # Its audit record says the answer was not local: the engine is, its peer was not trusted.
        served = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
        assert [(r["status"], r.get("local")) for r in served if r["status"] == 200] == [(200, False)]
    finally:
        srv.stop()


def test_with_the_default_loopback_trust_the_private_request_is_served(
    tmp_path: Path, tripwire: HostedStandin
) -> None:
    srv = start_gateway(tmp_path, _gateway_config(tripwire, None))
    try:
        answer = _client(srv.url).chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": SECRET_TEXT}],
            extra_headers={"X-LocalRoute-Privacy": "private"},
        )
        assert answer.choices[0].message.content and tripwire.chats() == 1
    finally:
        srv.stop()


def test_a_private_request_refused_by_an_untrusted_endpoint_rung_falls_back_to_a_local_rung(
    tmp_path: Path, tripwire: HostedStandin
) -> None:
    lan = {"name": "lan", "engine": "vllm", "model": MODEL, "tier": 0, "endpoints": [tripwire.url],
           "balance": {"health_path": "/v1/models"}}  # fmt: skip
    text = config_text(
        models=[lan, repo_rung(tier=1, cache_prompt=False)],
        routing=repo_routing(),
        privacy={"audit_enabled": False, "trusted_networks": ["10.0.0.0/8"]},
    )
    srv = start_gateway(tmp_path, text)
    try:
        raw = _client(srv.url).chat.completions.with_raw_response.create(
            model="auto",
            messages=[{"role": "user", "content": SECRET_TEXT}],
            max_tokens=8,
            extra_headers={"X-LocalRoute-Privacy": "private"},
        )
        assert raw.headers["x-localroute-model"] == DEFAULT_MODEL  # served here, by the worker
        assert raw.headers["x-localroute-route"] == "fallback:engine_error"  # after `lan` refused it
        assert tripwire.chats() == 0 and all(SECRET_TEXT not in str(r.body) for r in tripwire.requests)
    finally:
        srv.stop()
