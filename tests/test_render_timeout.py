"""A GGUF whose own chat template never ends (three nested loops of 99,999: 10^15 turns, no output):
the worker stops the render at `render_timeout_s`, the client gets a 502 in OpenAI's shape naming the
template, and the worker, its lock and its socket stay up for the next request. The template cannot
finish on any box, so the test does not depend on the machine's speed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, answering, config_text, pid_alive, start_gateway, worker_health
from tests.test_gguf_check import with_chat_template

pytestmark = pytest.mark.timing

ENDLESS = (
    "{% for a in range(99999) %}{% for b in range(99999) %}{% for c in range(99999) %}"
    "{% endfor %}{% endfor %}{% endfor %}{{ messages[0]['content'] }}"
)
NAME = "endless"


@pytest.fixture(scope="module")
def gateway(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("render")
    endless = tmp / "endless.gguf"
    with_chat_template(smollm2, endless, ENDLESS)
    model = {"name": NAME, "engine": "llama_cpp", "n_ctx": 512, "default_max_tokens": 8, "threads": 1,
             "render_timeout_s": 1, "source": {"kind": "path", "path": str(endless)}}  # fmt: skip
    srv = start_gateway(tmp, config_text(models=[model]), until=answering)
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
