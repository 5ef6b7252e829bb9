"""Feedback across gateway replicas (`[state] url`): a label posted to replica A for a request that
replica B served is applied in B's feedback store, never lost or answered 404. Each replica has its
own state directory (its own SQLite file), as on separate hosts; a real redis-server on loopback.
Skipped without Debian's redis-server (`.ci/run` installs it)."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from localroute.config.schema import parse_config
from localroute.config.state import StateConfig
from localroute.state.feedback import SharedFeedback
from localroute.state.limits import SharedRateLimiter
from tests import conftest
from tests.conftest import Server, free_port, remote_rung, wait_until
from tests.standin_fixtures import STANDIN_KEY
from tests.standin_provider import StandinProvider
from tests.test_replicas import KEY_ENV, OPEN, provider, redis_url, sha  # noqa: F401

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (Debian)")
AUTH = {"authorization": f"Bearer {OPEN}"}


@pytest.fixture()
def two_hosts(
    tmp_path: Path,
    provider: StandinProvider,  # noqa: F811
    redis_url: str,  # noqa: F811
) -> Iterator[tuple[Server, Path, Server, Path]]:
    redis.Redis.from_url(redis_url).flushdb()
    models = [remote_rung(provider.base_url, KEY_ENV, max_retries=0)]
    cfg = tmp_path / "models.toml"
    keys = [{"name": "open", "sha256": sha(OPEN)}]
    cfg.write_text(conftest.config_text(models=models, keys=keys) + f'\n[state]\nurl = "{redis_url}"\n')
    servers: list[Server] = []
    homes: list[Path] = []
    try:
        for name in ("gw-a", "gw-b"):
            home = tmp_path / name  # its audit log and, beside it, its feedback store
            home.mkdir()
            env = {KEY_ENV: STANDIN_KEY, "LOCALROUTE_REPLICA_ID": name,
                   "LOCALROUTE_AUDIT_PATH": str(home / "audit.jsonl")}  # fmt: skip
            servers.append(Server(cfg, free_port(), env).started(until=conftest.answering))
            homes.append(home)
        yield servers[0], homes[0], servers[1], homes[1]
    finally:
        for s in servers:
            s.stop()


def served_by(srv: Server) -> str:
    chat = {"model": conftest.REMOTE_RUNG, "messages": [{"role": "user", "content": "Say hi."}]}
    r = httpx.post(srv.url + "/v1/chat/completions", json=chat, headers=AUTH, timeout=60)
    assert r.status_code == 200
    return r.headers["x-request-id"]


def feedback(srv: Server, rid: str, outcome: str) -> httpx.Response:
    body = {"id": rid, "outcome": outcome}
    return httpx.post(srv.url + "/v1/localroute/feedback", json=body, headers=AUTH, timeout=60)


def row(home: Path, rid: str) -> tuple[str | None, float | None] | None:
    with sqlite3.connect(home / "feedback.sqlite3") as db:
        got = db.execute("SELECT outcome, label FROM requests WHERE id = ?", (rid,)).fetchone()
    return None if got is None else (got[0], got[1])


def test_feedback_posted_to_one_replica_reaches_the_one_that_served(
    two_hosts: tuple[Server, Path, Server, Path],
    redis_url: str,  # noqa: F811
) -> None:
    a, home_a, b, home_b = two_hosts
    store = redis.Redis.from_url(redis_url, decode_responses=True)
    on_b = served_by(b)
    # B says where it served it in the background; the test waits for that event, not for a time.
    assert wait_until(lambda: store.get(f"localroute:fbr:{on_b}") == "gw-b", timeout=30)

    sent = feedback(a, on_b, "strong_needed")
    assert sent.status_code == 202, sent.text
    assert sent.json() == {"object": "localroute.feedback", "id": on_b, "outcome": "strong_needed",
                           "label": None, "forwarded_to": "gw-b"}  # fmt: skip
    assert row(home_a, on_b) is None  # A never had the row: the label is queued for B
    # B's row reaches its file in a batch (BATCH_S after the answer): waited for, as an event.
    assert wait_until(lambda: row(home_b, on_b) == (None, None), timeout=30)

    # B applies what was queued for it before any feedback it gets itself (and every few seconds).
    own = served_by(b)
    assert wait_until(lambda: store.get(f"localroute:fbr:{own}") == "gw-b", timeout=30)
    assert feedback(b, own, "good").status_code == 200
    assert row(home_b, on_b) == ("strong_needed", 1.0)

    # A request served by A is labelled there, as without replicas; an id no replica has is a 404.
    on_a = served_by(a)
    answer = feedback(a, on_a, "strong_needed")
    assert answer.status_code == 200 and answer.json()["label"] == 1.0
    missing = feedback(a, "req-" + "0" * 20, "good")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "id"


def test_a_label_posted_before_the_owner_is_written_still_finds_it(redis_url: str) -> None:  # noqa: F811
    """`served` writes the owner in the background: a label may reach another replica first."""
    cfg = StateConfig(url=redis_url, key_prefix="f1:")

    async def run() -> str | None:
        lim = SharedRateLimiter(redis_url, cfg)
        here = SharedFeedback(lim, "gw-a", 3600)
        first_read = asyncio.Event()
        get = here._client.get

        async def watched(name: str) -> Any:
            value = await get(name)
            first_read.set()
            return value

        here._client.get = watched
        try:
            sent = asyncio.create_task(here.forward("req-1", "good", 0.0))
            await first_read.wait()  # the owner was looked for and not found yet
            await lim._client.set("f1:fbr:req-1", "gw-b")  # now the serving replica's write lands
            return await sent
        finally:
            await lim.aclose()

    assert asyncio.run(run()) == "gw-b"
    assert redis.Redis.from_url(redis_url).llen("f1:fbq:gw-b") == 1


def test_labels_taken_from_the_queue_are_applied_even_with_a_full_backlog(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from localroute.gateway import learn
    from localroute.gateway.learn import Learning
    from localroute.privacy.detect import Detector
    from localroute.routing.router import Router
    from localroute.routing.traffic_features import heuristic_featurizer
    from tests.test_learning import CONFIG, remember

    path = tmp_path / "fb.sqlite3"
    config = parse_config(CONFIG + f'\n[feedback]\npath = "{path}"\n')
    router = Router(config, {}, Detector([], {}))
    learning = Learning(config, {}, router, heuristic_featurizer(router.policy))
    assert learning.store is not None
    remember(learning.store, "req-9")
    learning.store.commit()
    state = StateConfig(url=redis_url, key_prefix="f2:")

    async def run() -> int:
        lim = SharedRateLimiter(redis_url, state)
        learning.shared = SharedFeedback(lim, "gw-b", 3600)
        other = SharedFeedback(lim, "gw-a", 3600)
        try:
            await lim._client.set("f2:fbr:req-9", "gw-b")
            assert await other.forward("req-9", "strong_needed", 0.0) == "gw-b"
            monkeypatch.setattr(learn, "MAX_PENDING", 0)  # every unforced write is dropped now
            return await learning.drain()
        finally:
            await lim.aclose()

    assert asyncio.run(run()) == 1
    learning.flush()
    learning.close()
    with sqlite3.connect(path) as db:
        got = db.execute("SELECT outcome FROM requests WHERE id = 'req-9'").fetchone()
    assert got == ("strong_needed",)  # taken off the queue, so applied: not dropped
