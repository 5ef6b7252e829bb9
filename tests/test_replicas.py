"""Gateway replicas sharing state through a real redis-server on loopback (`[state] url`).

Two gateways serve one config, each with its own replica id and audit log. A per-key limit holds
across both; killing one mid-load loses no answered request; the two logs verify together.
Skipped without Debian's redis-server (`.ci/run` installs it).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from localroute.config.state import StateConfig
from localroute.privacy.audit_set import verify_set
from localroute.state.limits import RateLimiter, SharedRateLimiter
from tests import conftest
from tests.conftest import ROOT, Server, free_port, remote_rung, wait_until
from tests.standin_fixtures import STANDIN_KEY
from tests.standin_provider import StandinProvider

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (Debian)")

KEY_ENV = "REPLICA_TEST_PROVIDER_KEY"
LIMITED = "sk-client-limited-7c1"  # 3 requests a minute
OPEN = "sk-client-open-5d2"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    work = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(work)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        assert wait_until(up, timeout=20), "redis-server did not start"
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def test_two_limiters_on_one_store_share_the_bucket(redis_url: str) -> None:
    async def run() -> tuple[list[float], list[float]]:
        cfg = StateConfig(url=redis_url, key_prefix="t1:")
        a, b = SharedRateLimiter(redis_url, cfg), SharedRateLimiter(redis_url, cfg)
        try:
            shared = [await (a if i % 2 else b).take("key:k", 3) for i in range(6)]
        finally:
            await a.aclose()
            await b.aclose()
        own_a, own_b = RateLimiter(), RateLimiter()
        alone = [await (own_a if i % 2 else own_b).take("key:k", 3) for i in range(6)]
        return shared, alone

    shared, alone = asyncio.run(run())
    assert [w == 0 for w in shared] == [True, True, True, False, False, False]
    assert 0 < shared[3] <= 20.0  # one request refills every 20 s at 3 a minute
    assert all(w == 0 for w in alone)  # the in-process control: each replica would allow its own 3


def test_an_unreachable_store_falls_back_to_a_per_replica_limit() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    errors: list[int] = []

    async def run() -> list[float]:
        lim = SharedRateLimiter(url, StateConfig(url=url), on_error=lambda: errors.append(1))
        try:
            return [await lim.take("key:k", 2) for _ in range(3)]
        finally:
            await lim.aclose()

    waits = asyncio.run(run())
    assert [w == 0 for w in waits] == [True, True, False]  # still limited, by this process
    assert len(errors) == 1  # then left alone for RETRY_S: no timeout paid on every request


# -- two real gateways -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def provider() -> Iterator[StandinProvider]:
    with StandinProvider(api_key=STANDIN_KEY) as p:
        yield p


def config(base_url: str, redis_url: str) -> str:
    models = [remote_rung(base_url, KEY_ENV, max_retries=0, read_timeout_s=60, total_timeout_s=120)]
    keys = [
        {"name": "limited", "sha256": sha(LIMITED), "requests_per_minute": 3},
        {"name": "open", "sha256": sha(OPEN)},
    ]
    return conftest.config_text(models=models, keys=keys) + f'\n[state]\nurl = "{redis_url}"\n'


def replica(cfg: Path, name: str) -> Server:
    return Server(cfg, free_port(), {KEY_ENV: STANDIN_KEY, "LOCALROUTE_REPLICA_ID": name}).started(
        until=conftest.answering
    )


@pytest.fixture()
def pair(tmp_path: Path, provider: StandinProvider, redis_url: str) -> Iterator[tuple[Path, Server, Server]]:
    redis.Redis.from_url(redis_url).flushdb()
    cfg = tmp_path / "models.toml"
    cfg.write_text(config(provider.base_url, redis_url))
    a = replica(cfg, "gw-a")
    b = replica(cfg, "gw-b")
    yield cfg, a, b
    for s in (a, b):
        s.stop()


def ask(srv: Server, key: str, text: str = "Say hi.") -> httpx.Response:
    return httpx.post(
        srv.url + "/v1/chat/completions",
        json={"model": conftest.REMOTE_RUNG, "messages": [{"role": "user", "content": text}]},
        headers={"authorization": f"Bearer {key}"},
        timeout=60,
    )


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_per_key_limit_holds_across_two_replicas(pair: tuple[Path, Server, Server]) -> None:
    cfg, a, b = pair
    start = time.monotonic()
    codes = [ask(a if i % 2 == 0 else b, LIMITED).status_code for i in range(8)]
    elapsed = time.monotonic() - start
    assert set(codes) == {200, 429}, codes
    # One bucket of 3 for both replicas (two separate buckets would let 6 through); one more per
    # 20 s of the test's own duration, however slow the box.
    assert 3 <= codes.count(200) <= 3 + int(elapsed // 20), (codes, elapsed)
    assert codes[:3] == [200, 200, 200]
    assert all(ask(s, OPEN).status_code == 200 for s in (a, b))  # a key without a limit is not limited
    logs = {p.name for p in cfg.parent.glob("audit*.jsonl")}
    assert logs == {"audit.gw-a.jsonl", "audit.gw-b.jsonl"}
    for name in ("gw-a", "gw-b"):
        assert {r["replica"] for r in records(cfg.parent / f"audit.{name}.jsonl")} == {name}


def test_killing_a_replica_mid_load_loses_no_answered_request(
    pair: tuple[Path, Server, Server], provider: StandinProvider
) -> None:
    cfg, a, b = pair
    answered: list[str] = []
    for i in range(6):
        r = ask(a if i % 2 == 0 else b, OPEN)
        assert r.status_code == 200
        answered.append(r.headers["x-request-id"])
    # Two requests in flight on replica a, held by the provider until a is killed.
    provider.set("hang")
    seen = len(provider.requests)
    lost: list[BaseException | int] = []

    def in_flight() -> None:
        try:
            lost.append(ask(a, OPEN, "held").status_code)
        except httpx.TransportError as exc:
            lost.append(exc)

    threads = [threading.Thread(target=in_flight) for _ in range(2)]
    for t in threads:
        t.start()
    assert wait_until(lambda: len(provider.requests) >= seen + 2, timeout=30)
    a.stop(signal.SIGKILL)
    for t in threads:
        t.join(30)
    assert len(lost) == 2 and all(isinstance(x, httpx.TransportError) for x in lost), lost
    provider.set("ok")
    for _ in range(3):  # the survivor goes on serving
        r = ask(b, OPEN)
        assert r.status_code == 200
        answered.append(r.headers["x-request-id"])
    a2 = replica(cfg, "gw-a")  # restarted: continues its own log and chain
    try:
        r = ask(a2, OPEN)
        assert r.status_code == 200
        answered.append(r.headers["x-request-id"])
    finally:
        a2.stop()
    logs = sorted(cfg.parent.glob("audit*.jsonl"))
    ids = [rec["id"] for p in logs for rec in records(p)]
    assert sorted(answered) == sorted(i for i in ids if i in set(answered))
    assert all(ids.count(i) == 1 for i in answered), "an answered request recorded twice or never"
    result = verify_set(logs)
    assert result.ok, result.report()
    # The CLI finds both replicas' logs beside the configured path and verifies them together.
    out = subprocess.run(
        [sys.executable, "-m", "localroute", "audit", "verify", "--config", str(cfg)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
        env={**conftest._environment(cfg, {})},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 logs" in out.stdout and "no request recorded twice" in out.stdout
    report = subprocess.run(
        [sys.executable, "-m", "localroute", "report", "--json", *map(str, logs)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["totals"]["requests"] == len(ids)


def test_a_request_recorded_in_two_logs_is_reported(tmp_path: Path) -> None:
    from localroute.privacy.audit import AuditLog

    for name in ("x", "y"):
        log = AuditLog(tmp_path / f"audit.{name}.jsonl")
        log.append({"id": "req-1", "replica": name})
        log.close()
    result = verify_set(sorted(tmp_path.glob("*.jsonl")))
    assert not result.ok
    assert "request req-1 recorded also in" in result.report()


def follow_up(gw: Server, headers: dict[str, str]) -> list[dict[str, str]]:
    """A first question pinned to the remote rung on `gw`, and the follow-up that carries its answer
    back (what stickiness recognises)."""
    first = [{"role": "user", "content": "Plan the migration."}]
    pinned = {"model": conftest.REMOTE_RUNG, "messages": first}
    r = httpx.post(gw.url + "/v1/chat/completions", json=pinned, headers=headers, timeout=60)
    assert r.status_code == 200 and r.headers["x-localroute-model"] == conftest.REMOTE_RUNG
    answer = r.json()["choices"][0]["message"]["content"]
    return [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "Go on."}]


def test_a_conversation_stays_up_across_replicas(
    tmp_path: Path, provider: StandinProvider, redis_url: str
) -> None:
    """Stickiness through the shared store: a follow-up that reaches the other replica is not sent lower."""
    redis.Redis.from_url(redis_url).flushdb()
    cheap = remote_rung(provider.base_url, KEY_ENV, name="cheap", tier=1, max_retries=0)
    models = [cheap, remote_rung(provider.base_url, KEY_ENV, max_retries=0)]
    keys = [{"name": "open", "sha256": sha(OPEN)}]
    cfg = tmp_path / "models.toml"
    cfg.write_text(conftest.config_text(models=models, keys=keys) + f'\n[state]\nurl = "{redis_url}"\n')
    a, b = replica(cfg, "gw-a"), replica(cfg, "gw-b")
    try:
        auth = {"authorization": f"Bearer {OPEN}"}
        follow = follow_up(a, auth)

        def route() -> tuple[str, str]:
            got = httpx.post(b.url + "/v1/chat/completions", json={"model": "auto", "messages": follow},
                             headers=auth, timeout=60)  # fmt: skip
            return got.headers["x-localroute-model"], got.headers["x-localroute-route"]

        # Replica b never saw the first answer; the store has it (written in the background by a).
        assert wait_until(lambda: route() == (conftest.REMOTE_RUNG, "policy:sticky"), timeout=30)
        fresh = [{"role": "user", "content": "Go on."}]  # no earlier answer: the cheap rung, as usual
        got = httpx.post(b.url + "/v1/chat/completions", json={"model": "auto", "messages": fresh},
                         headers=auth, timeout=60)  # fmt: skip
        assert got.headers["x-localroute-model"] == "cheap"
    finally:
        a.stop()
        b.stop()


OTHER = "sk-client-other-9e4"


def test_stickiness_is_per_caller(tmp_path: Path, provider: StandinProvider, redis_url: str) -> None:
    """Another caller sending back the same answer is not routed by it (it cannot probe whether a text
    was someone else's answer), on the replica that remembers it and through the shared store; and
    `explain` shows each caller only its own conversations."""
    redis.Redis.from_url(redis_url).flushdb()
    cheap = remote_rung(provider.base_url, KEY_ENV, name="cheap", tier=1, max_retries=0)
    models = [cheap, remote_rung(provider.base_url, KEY_ENV, max_retries=0)]
    keys = [{"name": "open", "sha256": sha(OPEN)}, {"name": "other", "sha256": sha(OTHER)}]
    cfg = tmp_path / "models.toml"
    cfg.write_text(conftest.config_text(models=models, keys=keys) + f'\n[state]\nurl = "{redis_url}"\n')
    a, b = replica(cfg, "gw-a"), replica(cfg, "gw-b")
    try:
        mine, theirs = {"authorization": f"Bearer {OPEN}"}, {"authorization": f"Bearer {OTHER}"}
        follow = follow_up(a, mine)

        def route(url: str, headers: dict[str, str]) -> tuple[str, str]:
            got = httpx.post(url + "/v1/chat/completions", json={"model": "auto", "messages": follow},
                             headers=headers, timeout=60)  # fmt: skip
            assert got.status_code == 200
            return got.headers["x-localroute-model"], got.headers["x-localroute-route"]

        def sticky(url: str, headers: dict[str, str]) -> object:
            got = httpx.post(url + "/v1/route/explain", json={"model": "auto", "messages": follow},
                             headers=headers, timeout=60)  # fmt: skip
            assert got.status_code == 200
            return got.json()["sticky"]

        # The owner's follow-up stays up on both replicas (b through the store, once a's write landed)...
        assert route(a.url, mine) == (conftest.REMOTE_RUNG, "policy:sticky")
        assert wait_until(lambda: route(b.url, mine) == (conftest.REMOTE_RUNG, "policy:sticky"), timeout=30)
        assert sticky(a.url, mine) == conftest.REMOTE_RUNG
        # ...the same messages from another key are routed as a fresh conversation, on either replica.
        for url in (a.url, b.url):
            model, how = route(url, theirs)
            assert (model, how != "policy:sticky") == ("cheap", True)
            assert sticky(url, theirs) is None
    finally:
        a.stop()
        b.stop()
