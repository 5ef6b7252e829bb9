"""Process isolation: a worker killed mid-request costs that request a 503, never the gateway."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import Server, pid_alive, start_server, wait_until

MODEL = "smollm2-135m"
COUNT = [{"role": "user", "content": "Count from 1 to 500, separated by commas: 1, 2, 3,"}]


@pytest.fixture
def own_server(repo_config: Path, tmp_path: Path) -> Iterator[Server]:
    srv = start_server(repo_config, tmp_path)
    yield srv
    srv.stop()


def _engine(srv: Server) -> dict[str, Any]:
    return srv.health()["engines"][MODEL]  # type: ignore[index, no-any-return]


def _client(srv: Server) -> openai.OpenAI:
    # No SDK retries: a retry would hide the 503 behind the restarted worker.
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_sigkill_mid_request_is_a_503_and_the_next_request_restarts(own_server: Server) -> None:
    client = _client(own_server)
    pid = _engine(own_server)["pid"]
    outcome: dict[str, BaseException | object] = {}

    def call() -> None:
        try:
            outcome["ok"] = client.chat.completions.create(model=MODEL, messages=COUNT, max_tokens=900)
        except BaseException as exc:
            outcome["err"] = exc

    t = threading.Thread(target=call)
    t.start()
    assert wait_until(lambda: _engine(own_server)["in_flight"] == 1, timeout=30, every=0.005)
    os.kill(pid, signal.SIGKILL)
    t.join(60)
    err = outcome.get("err")
    assert isinstance(err, openai.APIStatusError), outcome
    assert err.status_code == 503
    assert err.code == "engine_crashed"
    assert "SIGKILL" in err.message
    assert own_server.proc.poll() is None  # the gateway is still up
    assert _engine(own_server)["state"] == "crashed"

    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8
    )
    assert r.choices[0].message.content
    eng = _engine(own_server)
    assert eng["state"] == "ready" and eng["restarts"] == 1 and eng["pid"] != pid


def test_sigkill_mid_stream_ends_the_stream_with_an_error_event(own_server: Server) -> None:
    client = _client(own_server)
    pid = _engine(own_server)["pid"]
    stream = client.chat.completions.create(model=MODEL, messages=COUNT, max_tokens=900, stream=True)
    got = []
    with pytest.raises(openai.APIError) as ei:
        for chunk in stream:
            got.append(chunk)
            if len(got) == 3:
                os.kill(pid, signal.SIGKILL)
    assert len(got) >= 3
    assert "crashed" in str(ei.value.message)
    assert own_server.proc.poll() is None
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert r.model == MODEL


def test_ctrl_c_stops_gateway_and_workers(repo_config: Path, tmp_path: Path) -> None:
    srv = start_server(repo_config, tmp_path)
    pid = _engine(srv)["pid"]
    assert pid_alive(pid)
    assert srv.stop(signal.SIGINT) == 0
    assert wait_until(lambda: not pid_alive(pid), timeout=10)


def test_workers_die_with_a_sigkilled_gateway(repo_config: Path, tmp_path: Path) -> None:
    srv = start_server(repo_config, tmp_path)
    pid = _engine(srv)["pid"]
    srv.stop(signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(pid), timeout=10)
