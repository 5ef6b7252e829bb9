"""A GGUF whose own chat template never ends (three nested loops of 99,999: 10^15 turns, no output):
the worker stops the render at `render_timeout_s`, the client gets a 502 in OpenAI's shape naming the
template, and the worker, its lock and its socket stay up for the next request. The template cannot
finish on any box, so the test does not depend on the machine's speed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    Server,
    answering,
    config_text,
    pid_alive,
    remote_rung,
    start_gateway,
    worker_health,
)
from tests.standin_fixtures import STANDIN_KEY
from tests.standin_provider import StandinProvider
from tests.test_gguf_check import with_chat_template

pytestmark = pytest.mark.timing

ENDLESS = (
    "{% for a in range(99999) %}{% for b in range(99999) %}{% for c in range(99999) %}"
    "{% endfor %}{% endfor %}{% endfor %}{{ messages[0]['content'] }}"
)
NAME = "endless"
KEY_ENV = "LR_RENDER_KEY"


@pytest.fixture(scope="module")
def endless(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("endless") / "endless.gguf"
    with_chat_template(smollm2, path, ENDLESS)
    return path


def rung(path: Path) -> dict[str, object]:
    return {"name": NAME, "engine": "llama_cpp", "n_ctx": 512, "default_max_tokens": 8, "threads": 1,
            "render_timeout_s": 1, "source": {"kind": "path", "path": str(path)}}  # fmt: skip


# `make test` runs every gateway and worker under coverage, and so do these: a traced worker must stop
# an endless template too. (They ran untraced once, on a wrong reading: the request hung under coverage
# because the clock withdrew its fired exception, which left a traced thread spinning for ever before
# Python 3.13; tests/test_render_clock.py pins that.)


@pytest.fixture(scope="module")
def gateway(endless: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_gateway(
        tmp_path_factory.mktemp("render"), config_text(models=[rung(endless)]), until=answering
    )
    yield srv
    srv.stop()


def ask(srv: Server, **extra: object) -> httpx.Response:
    body = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}
    return httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=120)


@pytest.mark.parametrize("stream", [False, True])
def test_an_endless_chat_template_is_stopped_and_the_worker_lives(gateway: Server, stream: bool) -> None:
    engine = gateway.health()["engines"][NAME]  # type: ignore[index]
    pid = engine["pid"]
    for _ in range(2):  # and again: the first render left nothing held
        r = ask(gateway, stream=stream)
        assert r.status_code == 502, r.text  # the engine failed: the gateway says so, as for any engine error
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["code"] == "chat_template_timeout" and err["type"] == "server_error"
        assert "chat template did not render within 1 s" in err["message"]
        assert "Traceback" not in r.text and "/" not in err["message"]
    assert pid_alive(pid) and not worker_health(pid)["busy"]
    after = gateway.health()["engines"][NAME]  # type: ignore[index]
    assert after["pid"] == pid and after["state"] == "ready" and after["restarts"] == 0
    assert after["in_flight"] == 0


def test_a_private_request_whose_template_times_out_never_leaves_the_machine(
    endless: Path, tmp_path: Path
) -> None:
    """Tripwire: with a remote rung above, the template's failure is an engine error; a public
    request may fall back to the remote rung, a private one fails closed and sends nothing."""
    with StandinProvider(api_key=STANDIN_KEY) as provider:
        models = [rung(endless), remote_rung(provider.base_url, KEY_ENV, max_retries=0)]
        env = {KEY_ENV: STANDIN_KEY}
        srv = start_gateway(tmp_path, config_text(models=models), env, until=answering)
        try:
            for stream in (False, True):
                r = httpx.post(srv.url + "/v1/chat/completions", headers={"X-LocalRoute-Privacy": "private"},
                               json={"model": "auto", "messages": [{"role": "user", "content": "hi"}],
                                     "max_tokens": 4, "stream": stream}, timeout=120)  # fmt: skip
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "private_request_unservable"
            assert provider.requests == []
            public = httpx.post(srv.url + "/v1/chat/completions",
                                json={"model": "auto", "messages": [{"role": "user", "content": "hi"}],
                                      "max_tokens": 4}, timeout=120)  # fmt: skip
            assert (
                public.status_code == 200 and public.headers["x-localroute-route"] == "fallback:engine_error"
            )
            assert len(provider.requests) == 1
        finally:
            srv.stop()
