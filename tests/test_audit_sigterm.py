"""A SIGTERM loses nothing that was answered: every request answered before the signal has its audit
record, chained and verified, and its feedback-store row (that store commits in batches).

A real `localroute serve` with one remote rung on the stand-in provider, driven by the real `openai`
client from several threads at once, so that records and rows are written while others are queued.
"""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from localroute.privacy.audit import verify
from tests.conftest import REMOTE_RUNG, Server, config_text, remote_rung, start_gateway
from tests.standin_fixtures import STANDIN_KEY
from tests.standin_provider import StandinProvider

KEY_ENV = "LR_SIGTERM_TEST_KEY"
N = 48


@pytest.fixture
def provider() -> Iterator[StandinProvider]:
    with StandinProvider(api_key=STANDIN_KEY) as p:
        yield p


def ask(base_url: str, n: int) -> str:
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": f"Say hello, number {n}."}
    ]
    if n % 3 == 0:  # streams too: their record is written when the stream ends
        parts = client.chat.completions.create(model=REMOTE_RUNG, messages=messages, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    done = client.chat.completions.create(model=REMOTE_RUNG, messages=messages)
    return done.choices[0].message.content or ""


def test_sigterm_after_a_burst_keeps_every_record(tmp_path: Path, provider: StandinProvider) -> None:
    text = config_text(models=[remote_rung(provider.base_url, KEY_ENV)], privacy={"default": "public"})
    srv: Server = start_gateway(tmp_path, text, {KEY_ENV: STANDIN_KEY}, until=lambda h: h["status"] == "ok")
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda n: ask(srv.url + "/v1", n), range(N)))
        assert all(answers)  # all N answered before the signal
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        srv.stop(signal.SIGKILL)
    v = verify(srv.audit)
    assert v.ok and v.records == N and v.torn_tail_at is None, v.report()
    with sqlite3.connect(f"file:{tmp_path / 'feedback.sqlite3'}?mode=ro", uri=True) as db:
        assert db.execute("SELECT count(*) FROM requests").fetchone()[0] == N
    assert "Traceback" not in srv.log.read_text()
