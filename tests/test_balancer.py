"""The balancer's bookkeeping (rungs/balancer.py), with a clock the test moves, and the config of
`endpoints`, `balance` and `[privacy] trusted_networks`."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from localroute.config.models import Balance, LlamaCppModel, VllmModel
from localroute.config.privacy import PrivacyConfig
from localroute.rungs.balancer import Balancer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def balancer(n: int = 3, **cfg: Any) -> tuple[Balancer, Clock]:
    clock = Clock()
    urls = [f"http://10.0.0.{i}:9000" for i in range(1, n + 1)]
    return Balancer("lan", urls, Balance(failures_to_open=2, open_s=10, **cfg), clock), clock


def test_idle_endpoints_take_turns_and_the_least_outstanding_wins() -> None:
    b, _ = balancer()
    a, c, d = b.endpoints
    assert [b.pick([], False) for _ in range(4)] == [a, c, d, a]
    a.outstanding, c.outstanding, d.outstanding = 2, 0, 1
    assert b.pick([], False) is c
    assert b.pick([c], False) is d  # an endpoint already tried for this request is skipped


def test_a_private_request_prefers_endpoints_last_seen_trusted() -> None:
    b, _ = balancer(2)
    untrusted, trusted = b.endpoints
    untrusted.trusted, trusted.trusted = False, True
    trusted.outstanding = 5
    assert b.pick([], True) is trusted
    assert b.pick([], False) is untrusted
    assert b.pick([trusted], True) is untrusted  # still tried: the transport's check is the judge


def test_the_circuit_opens_after_failures_in_a_row_and_a_half_open_probe_closes_it() -> None:
    b, clock = balancer(2)
    ep, other = b.endpoints
    b.failed(ep, "refused")
    b.succeeded(ep)  # a success between failures resets the count
    b.failed(ep, "refused")
    assert ep.circuit == "closed"
    b.failed(ep, "refused")
    assert ep.circuit == "open" and ep.opens == 1
    assert b.pick([], False) is other and b.pick([other], False) is None
    assert ep not in b.due_probes()  # open: not probed until open_s has passed
    clock.now += 10
    assert ep in b.due_probes() and ep.circuit == "half_open"
    b.failed(ep, "still down", probe=True)  # a failed half-open probe opens it again at once
    assert ep.circuit == "open" and ep.opens == 2 and ep.healthy is False
    clock.now += 10
    b.due_probes()
    b.succeeded(ep, probe=True)
    assert ep.circuit == "closed" and ep.healthy is True and ep.in_a_row == 0
    assert ep.snapshot()["state"] == "up" and ep.snapshot()["failures"] == 4


def test_endpoint_urls_are_server_roots_without_credentials_in_what_is_shown() -> None:
    b = Balancer("lan", ["http://user:pw@10.0.0.1:9000/v1/", "http://10.0.0.2:8000"], Balance())
    assert [e.url for e in b.endpoints] == ["http://user:pw@10.0.0.1:9000", "http://10.0.0.2:8000"]
    assert b.endpoints[0].name == "http://10.0.0.1:9000"


LLAMA: dict[str, Any] = {"name": "m", "engine": "llama_cpp", "source": {"kind": "path", "path": "m.gguf"}}


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({**LLAMA, "endpoints": ["ftp://x"]}, "String should match pattern"),
        ({**LLAMA, "endpoints": ["http://a:1", "http://a:1"]}, "the same URL twice"),
        ({**LLAMA, "task": "embed", "dimensions": 8, "endpoints": ["http://a:1"]}, "chat rungs only"),
        ({**LLAMA, "endpoints": ["http://a:1"], "balance": {"failures_to_open": 0}}, "greater than or equal"),
        ({**LLAMA, "endpoints": ["http://a:1"], "balance": {"retries": 1}}, "Extra inputs"),
    ],
)
def test_bad_endpoints_config_is_refused(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        LlamaCppModel(**fields)


def test_a_vllm_rung_has_exactly_one_of_launch_url_or_endpoints() -> None:
    VllmModel(name="v", engine="vllm", model="m", endpoints=["http://a:1"])
    for extra in ({"launch": True}, {"url": "http://b:2"}):
        with pytest.raises(ValidationError, match="one of `launch = true`, a `url` or `endpoints`"):
            VllmModel(name="v", engine="vllm", model="m", endpoints=["http://a:1"], **extra)  # type: ignore[arg-type]


def test_trusted_networks_default_to_loopback_and_must_be_cidrs() -> None:
    assert PrivacyConfig().trusted_networks == ["127.0.0.0/8", "::1/128"]
    assert PrivacyConfig(trusted_networks=["10.0.0.0/24", "fd00::/8"]).trusted_networks[0] == "10.0.0.0/24"
    with pytest.raises(ValidationError, match="is not a CIDR"):
        PrivacyConfig(trusted_networks=["lan.example"])
