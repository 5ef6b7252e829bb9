"""Feedback across gateway replicas (`[state] url`): a label posted to replica A for a request that
replica B served is applied in B's feedback store, never lost or answered 404. Each replica has its
own state directory (its own SQLite file), as on separate hosts; a real redis-server on loopback.
Skipped without Debian's redis-server (`.ci/run` installs it)."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

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
    assert row(home_b, on_b) == (None, None)

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
