"""`localroute engine` (gateway/engine_app.py): the real small model served on its own with a shared
secret, then used as a rung's endpoint by a real gateway, through the real `openai` client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from localroute.observe.status_text import format_status
from tests.conftest import ROOT, config_text, free_port, repo_rung, start_gateway, wait_until

TOKEN = "engine-secret-for-tests"
GREETING = [{"role": "user", "content": "Say hello."}]


class Engine:
    def __init__(self, tmp: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = (tmp / f"engine-{port}.log").open("wb")
        env = {**os.environ, "LOCALROUTE_ENGINE_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1"}
        cmd = [sys.executable, "-m", "localroute", "engine", "--config", str(ROOT / "models.toml"),
               "--model", "smollm2-135m", "--listen", f"127.0.0.1:{port}"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)

    def ready(self) -> bool:
        assert self.proc.poll() is None, "the engine exited"
        try:
            return httpx.get(self.url + "/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.log.close()
        return code


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, smollm2: Path) -> Iterator[Engine]:
    e = Engine(tmp_path_factory.mktemp("engine"), free_port())
    try:
        assert wait_until(e.ready, timeout=120, every=0.1), "the engine never became ready"
        yield e
    finally:
        assert e.stop() == 0


def test_the_engine_needs_its_secret(engine: Engine) -> None:
    url = engine.url + "/v1/chat/completions"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        r = httpx.post(url, json={"messages": GREETING}, headers=headers, timeout=30)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert TOKEN not in r.text
    sdk = openai.OpenAI(base_url=engine.url + "/v1", api_key=TOKEN, max_retries=0)
    answer = sdk.chat.completions.create(model="smollm2-135m", messages=GREETING, max_tokens=8)  # type: ignore[arg-type]
    assert answer.choices[0].message.content
    assert [m.id for m in sdk.models.list()] == ["smollm2-135m"]


def test_a_gateway_serves_a_rung_from_the_engine_and_shows_its_endpoints(
    engine: Engine, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: its circuit opens, the engine serves
    rung = repo_rung(endpoints=[dead, engine.url], balance={"key_env": "ENGINE_TOKEN", "health_every_s": 0.2})
    srv = start_gateway(tmp_path, config_text(models=[rung]), env={"ENGINE_TOKEN": TOKEN})
    try:
        sdk = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        for _ in range(3):  # private: the engine is on loopback, inside the default trusted networks
            answer = sdk.chat.completions.create(
                model="auto",
                messages=GREETING,
                max_tokens=8,
                extra_headers={"X-LocalRoute-Privacy": "private"},  # type: ignore[arg-type]
            )
            assert answer.choices[0].message.content
        stream = sdk.chat.completions.create(model="auto", messages=GREETING, max_tokens=8, stream=True)  # type: ignore[arg-type]
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

        def opened() -> bool:
            return srv.health()["engines"]["smollm2-135m"]["endpoints"][0]["circuit"] != "closed"  # type: ignore[index]

        assert wait_until(opened, timeout=60)
        health = srv.health()
        dead_ep, live_ep = health["engines"]["smollm2-135m"]["endpoints"]  # type: ignore[index]
        assert live_ep["served"] == 4 and live_ep["circuit"] == "closed" and live_ep["trusted"] is True
        assert dead_ep["served"] == 0 and dead_ep["failures"] >= 1
        text = format_status(health, srv.url)  # type: ignore[arg-type]
        assert f"smollm2-135m -> {engine.url}: up, circuit closed" in text
        metrics = httpx.get(srv.url + "/metrics", timeout=10).text
        assert f'localroute_endpoint_up{{endpoint="{engine.url}",model="smollm2-135m"}} 1.0' in metrics
        assert (
            f'localroute_endpoint_served_total{{endpoint="{engine.url}",model="smollm2-135m"}} 4.0' in metrics
        )
    finally:
        srv.stop()


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


def test_a_crashed_worker_is_restarted_by_health_probes_alone(engine: Engine) -> None:
    """Behind an open circuit no request arrives to restart a crashed engine; the probes must."""
    (worker,) = _children(engine.proc.pid)
    os.kill(worker, signal.SIGKILL)
    seen: list[int] = []

    def status() -> int:
        code = httpx.get(engine.url + "/health", timeout=5).status_code
        seen.append(code)
        return code

    assert wait_until(lambda: status() == 503, timeout=30)  # the crash is seen, and a restart starts
    assert wait_until(lambda: status() == 200, timeout=120, every=0.2), seen[-5:]
    assert _children(engine.proc.pid) != [worker]
    sdk = openai.OpenAI(base_url=engine.url + "/v1", api_key=TOKEN, max_retries=0)
    answer = sdk.chat.completions.create(model="smollm2-135m", messages=GREETING, max_tokens=8)  # type: ignore[arg-type]
    assert answer.choices[0].message.content
