"""Tripwire: a vLLM rung on a Ray cluster outside `[privacy] trusted_networks` is not local for
private traffic (Ray's workers get the tokens). A real gateway over two launched vLLM stand-ins
(tests/fake_vllm.py, which records every chat request it receives): a private request never reaches
the untrusted one, whether named, hinted or picked by `auto`; a public one still may."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localroute.config.schema import parse_config
from localroute.privacy.guard import PrivacyViolationError
from localroute.privacy.trust import TrustedNetworks, ray_problem, url_problem
from localroute.rungs.vllm import from_config
from tests.conftest import Server
from tests.test_vllm import EnvServer, config_text, fake_env, serve, vllm

FAR, NEAR = "ray-far", "ray-near"
FAR_TAG, NEAR_TAG = "fake-org/Far-70B", "fake-org/Near-70B"  # what each stand-in serves
SECRET_WORD = "tripwire-ray-7f3a"


@pytest.mark.parametrize(
    ("backend", "address", "trusted"),
    [
        (None, None, True),  # not on Ray: one host, as before
        ("mp", None, True),
        ("ray", "127.0.0.1:6379", True),
        ("ray", "[::1]:6379", True),
        ("ray", "10.0.0.1:6379", False),  # outside the default (loopback) networks
        ("ray", None, False),  # whatever cluster this host joined: its workers cannot be judged
        ("ray", "auto", False),
        ("ray", "localhost:6379", False),  # a name: judged by address, never by a name
    ],
)
def test_ray_clusters_are_trusted_by_the_heads_address(
    backend: str | None, address: str | None, trusted: bool
) -> None:
    problem = ray_problem(backend, address, TrustedNetworks(["127.0.0.0/8", "::1/128"]))
    assert (problem is None) == trusted, problem


def test_a_ray_head_inside_the_trusted_networks_is_local(tmp_path: Path) -> None:
    text = config_text([vllm("r", "org/m", 5, launch=True, distributed_executor_backend="ray",
                             ray_address="10.0.0.1:6379")])  # fmt: skip
    lan = parse_config(text + '\n[privacy]\ntrusted_networks = ["10.0.0.0/24"]\n')
    alone = parse_config(text)

    def built(cfg: Any) -> Any:
        return from_config(
            cfg, cfg.models[0], tmp_path, which=lambda _: "/bin/vllm", gpu_probe=lambda _: None
        )

    assert built(lan).egress is None
    assert built(alone).egress is not None


@pytest.mark.parametrize(
    ("url", "trusted"),
    [
        (None, True),  # launched here
        ("http://127.0.0.1:8000/v1", True),
        ("http://[::1]:8000", True),
        ("http://localhost:8000/v1", True),  # loopback by definition, never looked up in DNS
        ("http://10.0.0.1:8000/v1", False),  # outside the default (loopback) networks
        ("http://gpu-box.lan:8000/v1", False),  # a name: what it resolves to can change
        ("http://user:pw@10.0.0.1:8000/v1", False),
    ],
)
def test_a_vllm_server_at_a_url_is_trusted_by_its_address(url: str | None, trusted: bool) -> None:
    problem = url_problem(url, TrustedNetworks(["127.0.0.0/8", "::1/128"]))
    assert (problem is None) == trusted, problem


def test_a_vllm_url_outside_the_trusted_networks_gets_the_egress_guard(tmp_path: Path) -> None:
    text = config_text([vllm("u", "org/m", 5, url="http://10.0.0.1:8000/v1")])
    lan = parse_config(text + '\n[privacy]\ntrusted_networks = ["10.0.0.0/24"]\n')
    alone = parse_config(text)
    assert from_config(lan, lan.models[0], tmp_path).egress is None
    guarded = from_config(alone, alone.models[0], tmp_path)
    assert guarded.egress is not None
    with pytest.raises(PrivacyViolationError):
        guarded.egress({"messages": [{"role": "user", "content": "private"}]})  # no guard given: refuse all


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvServer]:
    tmp = tmp_path_factory.mktemp("ray-trust")
    models = [  # the untrusted cluster is the cheaper rung, so `auto` picks it first
        vllm(FAR, FAR_TAG, 1, launch=True, distributed_executor_backend="ray",
             ray_address="10.0.0.1:6379"),
        vllm(NEAR, NEAR_TAG, 2, launch=True, distributed_executor_backend="ray",
             ray_address="127.0.0.1:6379"),
    ]  # fmt: skip
    srv = serve(tmp, models, fake_env(tmp, FAKE_VLLM_REQUESTS_FILE=str(tmp / "seen.jsonl")))
    yield srv
    srv.stop()


def seen(srv: Server, model: str) -> list[dict[str, Any]]:
    path = srv.log.parent / "seen.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e["model"] == model]


def audited(srv: Server) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (srv.log.parent / "audit.jsonl").read_text().splitlines()]


def ask(srv: Server, model: str, privacy: str, **headers: str) -> httpx.Response:
    body = {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": f"Say {SECRET_WORD}."}]}
    return httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=120,
                      headers={"x-localroute-privacy": privacy, **headers})  # fmt: skip


def test_a_private_request_never_reaches_an_untrusted_ray_cluster(gw: EnvServer) -> None:
    named = ask(gw, FAR, "private")
    assert named.status_code == 503 and named.json()["error"]["code"] == "private_request_unservable"
    hinted = ask(gw, "auto", "private", **{"x-localroute-tier": "1"})
    assert hinted.status_code == 503 and hinted.json()["error"]["code"] == "private_request_unservable"
    picked = ask(gw, "auto", "private")  # `auto` picks the far rung, is refused there, falls back
    assert picked.status_code == 200, picked.text
    assert picked.headers["x-localroute-model"] == NEAR
    assert seen(gw, FAR_TAG) == []  # not one private prompt reached the untrusted cluster
    assert len(seen(gw, NEAR_TAG)) == 1
    assert audited(gw)[-1]["model"] == NEAR and audited(gw)[-1]["local"] is True
    assert gw.log_lines(f"vllm model {FAR}: not local for private requests")


def test_a_public_request_may_still_use_it(gw: EnvServer) -> None:
    r = ask(gw, FAR, "public")
    assert r.status_code == 200 and r.headers["x-localroute-model"] == FAR
    assert [SECRET_WORD in json.dumps(e["messages"]) for e in seen(gw, FAR_TAG)] == [True]
    last = audited(gw)[-1]
    assert last["model"] == FAR and last["local"] is False  # answered, but outside the trust boundary
    private = ask(gw, FAR, "private")  # its server running now changes nothing
    assert private.status_code == 503
    assert len(seen(gw, FAR_TAG)) == 1
