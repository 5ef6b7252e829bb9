"""Per-key spend budgets (`[[keys]] budget_usd`): counted per UTC period, in process or in a real
redis-server on loopback shared by replicas; enforced before routing, in the called API's error shape.
The Redis parts are skipped without Debian's redis-server (`.ci/run` installs it)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn

from localroute.config.schema import Config, load_config, parse_config
from localroute.config.state import StateConfig
from localroute.errors import BudgetExceededError
from localroute.gateway.app import create_app
from localroute.gateway.budget import Billing
from localroute.routing.policy import Hints
from localroute.state import limits
from localroute.state.budgets import LocalBudgets, SharedBudgets, period_id, seconds_left
from localroute.state.limits import SharedRateLimiter
from tests import conftest
from tests.conftest import Server, free_port, remote_rung, wait_until
from tests.standin_fixtures import STANDIN_KEY
from tests.standin_provider import StandinProvider
from tests.test_replicas import KEY_ENV, OPEN, provider, redis_url, replica, sha  # noqa: F401

HAS_REDIS = shutil.which("redis-server") is not None
needs_redis = pytest.mark.skipif(not HAS_REDIS, reason="needs redis-server (Debian)")
CAPPED = "sk-client-capped-91a"


def test_periods_are_named_and_end_in_utc() -> None:
    t = datetime(2026, 12, 31, 23, 0, tzinfo=UTC)
    assert (period_id("day", t), period_id("month", t)) == ("2026-12-31", "2026-12")
    assert seconds_left("day", t) == 3600 and seconds_left("month", t) == 3600
    assert seconds_left("month", datetime(2026, 2, 28, tzinfo=UTC)) == 86_400


def _config(over_budget: str) -> Config:
    text = conftest.config_text(
        models=[{"name": "small", "engine": "vllm", "tier": 1, "model": "m", "url": "http://127.0.0.1:9",
                 },
                remote_rung("http://127.0.0.1:9/v1", KEY_ENV)],
        keys=[{"name": "capped", "sha256": sha(CAPPED), "budget_usd": 1.0, "budget_period": "day",
               "over_budget": over_budget}],
    )  # fmt: skip
    return parse_config(text)


@pytest.mark.parametrize(
    ("over_budget", "model", "tier", "want"),
    [
        ("refuse", "auto", None, "refused"),
        ("local", "auto", None, "local"),
        ("local", "auto", "1", "1"),  # a tier of local rungs only
        ("local", "small", None, "local"),
        ("local", conftest.REMOTE_RUNG, None, "refused"),  # a paid model named by the client
        ("local", "auto", "remote", "refused"),
        ("local", "auto", "10", "refused"),
    ],
)
def test_a_spent_budget_refuses_or_keeps_to_local_rungs(
    over_budget: str, model: str, tier: str | None, want: str
) -> None:
    cfg = _config(over_budget)
    key = cfg.keys[0]
    billing = Billing(cfg)

    async def run() -> str:
        assert await billing.admit(key, model, Hints(tier=tier)) == Hints(tier=tier)  # nothing spent
        await billing.charge(key, 0.6)
        assert await billing.admit(key, model, Hints(tier=tier)) == Hints(tier=tier)  # 0.6 < 1.0
        await billing.charge(key, 0.6)
        try:
            hints = await billing.admit(key, model, Hints(tier=tier))
        except BudgetExceededError as exc:
            assert exc.status == 429 and exc.body()["error"]["code"] == "budget_exceeded"
            assert int(exc.headers["Retry-After"]) <= 86_400
            return "refused"
        return str(hints.tier)

    assert asyncio.run(run()) == want


def test_in_process_counters_forget_past_periods() -> None:
    b = LocalBudgets()
    b.add(("k", "2000-01-01"), 5.0)
    asyncio.run(b.charge("k", "day", 1.0))
    assert asyncio.run(b.spent("k", "day")) == 1.0
    assert ("k", "2000-01-01") not in b._spent


@needs_redis
def test_two_replicas_charge_one_counter(redis_url: str) -> None:  # noqa: F811
    async def run() -> tuple[float, float, float]:
        cfg = StateConfig(url=redis_url, key_prefix="b1:")
        la, lb = SharedRateLimiter(redis_url, cfg), SharedRateLimiter(redis_url, cfg)
        a, b = SharedBudgets(la), SharedBudgets(lb)
        try:
            await a.charge("k", "month", 0.25)
            await b.charge("k", "month", 0.5)
            return await a.spent("k", "month"), await b.spent("k", "month"), await a.spent("other", "month")
        finally:
            await la.aclose()
            await lb.aclose()

    assert asyncio.run(run()) == (0.75, 0.75, 0.0)
    ttl = redis.Redis.from_url(redis_url).ttl(f"b1:bud:{period_id('month')}:k")
    assert 86_400 < ttl <= seconds_left("month") + 86_400  # gone a day after its period


@needs_redis
def test_a_store_that_is_down_keeps_the_budget_and_gets_the_spend_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "RETRY_S", 0.0)  # retry the store on the next call
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"  # nothing listens there yet
    errors: list[int] = []

    async def down(b: SharedBudgets) -> float:
        await b.charge("k", "day", 2.0)
        return await b.spent("k", "day")

    async def back(b: SharedBudgets) -> float:
        await b.charge("k", "day", 1.0)  # sends the 2.0 kept while down as well
        return await b.spent("k", "day")

    async def run() -> tuple[float, float]:
        lim = SharedRateLimiter(url, StateConfig(url=url), on_error=lambda: errors.append(1))
        b = SharedBudgets(lim)
        try:
            first = await down(b)
            proc = await asyncio.to_thread(_start_redis, port, tmp_path)
            try:
                return first, await back(b)
            finally:
                proc.terminate()
                proc.wait(10)
        finally:
            await lim.aclose()

    first, later = asyncio.run(run())
    assert first == 2.0  # the replica's own charge counts while the store is down: never lifted
    assert later == 3.0  # and reached the store once it was back: no spend lost
    assert errors


def _start_redis(port: int, work: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(work)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert wait_until(lambda: _pings(redis.Redis(port=port)), timeout=20)
    return proc


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


# -- two real gateways -----------------------------------------------------------------------------


@pytest.fixture()
def capped_pair(
    tmp_path: Path,
    provider: StandinProvider,  # noqa: F811
    redis_url: str,  # noqa: F811
) -> Iterator[tuple[Server, Server]]:
    redis.Redis.from_url(redis_url).flushdb()
    # $1 a prompt token: a first request (the stand-in counts 2) spends more than the $1.5 budget.
    price = {"input_per_mtok": 1_000_000.0, "output_per_mtok": 0.0}
    models = [remote_rung(provider.base_url, KEY_ENV, max_retries=0, price=price)]
    keys = [{"name": "capped", "sha256": sha(CAPPED), "budget_usd": 1.5, "budget_period": "day"},
            {"name": "open", "sha256": sha(OPEN)}]  # fmt: skip
    cfg = tmp_path / "models.toml"
    cfg.write_text(conftest.config_text(models=models, keys=keys) + f'\n[state]\nurl = "{redis_url}"\n')
    a, b = replica(cfg, "gw-a"), replica(cfg, "gw-b")
    yield a, b
    for s in (a, b):
        s.stop()


@needs_redis
def test_a_budget_holds_across_two_replicas(
    capped_pair: tuple[Server, Server],
    provider: StandinProvider,  # noqa: F811
) -> None:
    a, b = capped_pair
    chat = {"model": conftest.REMOTE_RUNG, "messages": [{"role": "user", "content": "Say hi."}]}
    auth = {"authorization": f"Bearer {CAPPED}"}
    first = httpx.post(a.url + "/v1/chat/completions", json=chat, headers=auth, timeout=60)
    assert first.status_code == 200
    sent = len(provider.requests)
    over = httpx.post(b.url + "/v1/chat/completions", json=chat, headers=auth, timeout=60)
    assert over.status_code == 429, over.text
    err = over.json()["error"]
    assert err["code"] == "budget_exceeded" and err["type"] == "insufficient_quota"
    assert "$1.5" in err["message"] and int(over.headers["retry-after"]) >= 1
    messages = {"model": conftest.REMOTE_RUNG, "max_tokens": 16, "messages": chat["messages"]}
    anth = httpx.post(b.url + "/v1/messages", json=messages, headers={"x-api-key": CAPPED}, timeout=60)
    assert anth.status_code == 429
    assert anth.json()["type"] == "error" and anth.json()["error"]["type"] == "rate_limit_error"
    assert len(provider.requests) == sent  # refused before routing: nothing reached the provider
    again = httpx.post(a.url + "/v1/chat/completions", json=chat, headers=auth, timeout=60)
    assert again.status_code == 429  # and on the replica that charged it
    other = httpx.post(b.url + "/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {OPEN}"},
                       timeout=60)  # fmt: skip
    assert other.status_code == 200  # a key without a budget is not affected


# -- review fixes ----------------------------------------------------------------------------------


@needs_redis
def test_spend_kept_while_down_is_sent_once_by_concurrent_charges(redis_url: str) -> None:  # noqa: F811
    async def run() -> float:
        cfg = StateConfig(url=redis_url, key_prefix="b2:")
        lim = SharedRateLimiter(redis_url, cfg)
        b = SharedBudgets(lim)
        b._unsent.add(("k", period_id("day")), 2.0)  # charged here while the store was down
        try:
            await asyncio.gather(b.charge("k", "day", 1.0), b.charge("k", "day", 1.0))
            await b.flush()  # nothing left to send
            return float(await lim._client.get(f"b2:bud:{period_id('day')}:k"))
        finally:
            await lim.aclose()

    assert asyncio.run(run()) == 4.0  # 2.0 kept + 1.0 + 1.0: the kept spend is not sent twice


def test_a_budget_store_failure_leaves_rate_limiting_shared() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    errors: list[int] = []

    async def run() -> tuple[float, float]:
        lim = SharedRateLimiter(url, StateConfig(url=url), on_error=lambda: errors.append(1))
        b = SharedBudgets(lim)
        try:
            await b.charge("k", "day", 2.0)
            return await b.spent("k", "day"), lim._outage.down()
        finally:
            await lim.aclose()

    spent, limiter_down = asyncio.run(run())
    assert spent == 2.0 and errors  # counted here, and as a state error
    assert not limiter_down  # the rate limiter was not switched to per-replica mode


@needs_redis
def test_shutdown_waits_for_background_charges_and_sends_what_was_kept(
    redis_url: str,  # noqa: F811
) -> None:
    cfg = _config("refuse")
    key = cfg.keys[0]

    async def run() -> float:
        lim = SharedRateLimiter(redis_url, StateConfig(url=redis_url, key_prefix="b3:"))
        b = SharedBudgets(lim)
        billing = Billing(cfg, b)
        b._unsent.add(("capped", period_id("day")), 0.5)  # kept while the store was down, slot unused
        b._unsent.add(("capped", "2000-01-01"), 0.25)
        try:
            billing.charge_soon(key, 0.125)  # a stream's charge, in the background
            await billing.settle(5.0)
            return float(await lim._client.get(f"b3:bud:{period_id('day')}:capped")), len(b._unsent._spent)
        finally:
            await lim.aclose()

    assert asyncio.run(run()) == (0.625, 0)


def _no_local_config() -> Config:
    text = conftest.config_text(
        models=[remote_rung("http://127.0.0.1:9/v1", KEY_ENV)],
        keys=[{"name": "capped", "sha256": sha(CAPPED), "budget_usd": 1.0, "budget_period": "day",
               "over_budget": "local"}],
    )  # fmt: skip
    return parse_config(text)


@pytest.mark.parametrize("api", ["chat", "embeddings"])
def test_over_budget_local_without_a_local_rung_is_refused_not_misrouted(api: str) -> None:
    cfg = _no_local_config()
    key = cfg.keys[0]
    billing = Billing(cfg)
    paid = cfg.ladder()  # the rungs the request may use: none local (an embedding space alike)

    async def run() -> None:
        await billing.charge(key, 2.0)
        if api == "chat":
            await billing.admit(key, "auto", Hints())
        else:
            await billing.admit(key, "auto", Hints(), paid)

    with pytest.raises(BudgetExceededError) as err:
        asyncio.run(run())
    assert err.value.status == 429 and err.value.body()["error"]["code"] == "budget_exceeded"


def test_an_answered_request_is_charged_once_even_if_learning_fails(
    tmp_path: Path,
    provider: StandinProvider,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real uvicorn server in this process, so that learning can be made to fail after the charge."""
    from localroute.gateway.learn import Learning

    def broken(*args: object, **kw: object) -> None:
        raise RuntimeError("learning broke")

    monkeypatch.setattr(Learning, "answered", broken)
    monkeypatch.setenv(KEY_ENV, STANDIN_KEY)
    monkeypatch.setenv("LOCALROUTE_AUDIT_PATH", str(tmp_path / "audit.jsonl"))
    price = {"input_per_mtok": 1_000_000.0, "output_per_mtok": 0.0}  # 2 prompt tokens: $2 a request
    models = [remote_rung(provider.base_url, KEY_ENV, max_retries=0, price=price)]
    keys = [{"name": "capped", "sha256": sha(CAPPED), "budget_usd": 3.0, "budget_period": "day"}]
    cfg = tmp_path / "models.toml"
    cfg.write_text(conftest.config_text(models=models, keys=keys))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(load_config(cfg)), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    chat = {"model": conftest.REMOTE_RUNG, "messages": [{"role": "user", "content": "Say hi."}]}
    auth = {"authorization": f"Bearer {CAPPED}"}
    try:
        assert wait_until(lambda: server.started, timeout=30)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        first = httpx.post(url, json=chat, headers=auth, timeout=60)
        second = httpx.post(url, json=chat, headers=auth, timeout=60)  # $2 spent of $3: admitted
    finally:
        server.should_exit = True
        thread.join(30)
    assert (first.status_code, second.status_code) == (200, 200), second.text
    records = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert len(records) == 2  # one record per request, not a second one for a 500
