"""`localroute serve --workers 2`: two gateway processes on one port, the llama.cpp engine run once.

A real gateway with the real small model: both workers answer (each writes its own audit log), one
llama.cpp worker process exists in the whole tree, an engine killed by SIGKILL is restarted by the
parent and serves again, and Ctrl-C leaves no process behind.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests import conftest
from tests.conftest import DEFAULT_MODEL, ROOT, free_port, repo_rung, wait_until

WORKER_MODULE = "localroute.rungs.llamacpp.worker"


class Workers:
    def __init__(self, tmp: Path, text: str, n: int = 2) -> None:
        cfg = tmp / "models.toml"
        cfg.write_text(text)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.audit_dir = tmp
        self.log = tmp / "workers.log"
        self._fh = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "localroute", "serve", "--config", str(cfg), "--port", str(self.port),
             "--workers", str(n)],
            stdout=self._fh, stderr=subprocess.STDOUT, cwd=ROOT, env=conftest._environment(cfg, {}),
        )  # fmt: skip

    def tree(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def with_cmd(self, needle: str) -> list[psutil.Process]:
        out = []
        for p in self.tree():
            try:
                if needle in " ".join(p.cmdline()):
                    out.append(p)
            except psutil.Error:
                continue
        return out

    def ask(self) -> httpx.Response:
        body = {"model": DEFAULT_MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
        # A new connection each time: the kernel hands connections to the workers on the shared socket.
        return httpx.post(self.url + "/v1/chat/completions", json=body, timeout=120)

    def answers(self) -> bool:
        try:
            return self.ask().status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()
        return int(self.proc.returncode)


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    tmp = tmp_path_factory.mktemp("workers")
    w = Workers(tmp, conftest.config_text(models=[repo_rung(DEFAULT_MODEL, cache_prompt=False)]))
    try:
        assert wait_until(w.answers, timeout=240, every=0.5), w.log.read_text()
        yield w
    finally:
        w.stop()


def test_two_workers_answer_and_the_model_is_loaded_once(workers: Workers) -> None:
    assert len(workers.with_cmd(WORKER_MODULE)) == 1  # one llama.cpp worker for both gateways
    assert len(workers.with_cmd("engine --model")) == 1
    for _ in range(60):
        assert workers.ask().status_code == 200
        if len(list(workers.audit_dir.glob("audit.*w*.jsonl"))) == 2:
            break
    logs = sorted(p.name for p in workers.audit_dir.glob("audit.*w*.jsonl"))
    assert logs == ["audit.w0.jsonl", "audit.w1.jsonl"], logs  # each worker, its own log and replica id
    both = sorted(map(str, workers.audit_dir.glob("audit.*.jsonl")))
    out = subprocess.run(
        [sys.executable, "-m", "localroute", "audit", "verify", *both],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_killed_engine_is_restarted_once_and_serves_again(workers: Workers) -> None:
    (engine,) = workers.with_cmd("engine --model")
    engine.send_signal(signal.SIGKILL)
    assert wait_until(lambda: not engine.is_running() or engine.status() == psutil.STATUS_ZOMBIE, timeout=30)
    assert wait_until(lambda: len(workers.with_cmd("engine --model")) == 1 and workers.answers(), timeout=240)
    assert len(workers.with_cmd(WORKER_MODULE)) == 1
    assert "engine smollm2-135m exited" in workers.log.read_text()


def test_rate_limits_without_shared_state_are_refused(tmp_path: Path) -> None:
    text = conftest.config_text(models=[repo_rung(DEFAULT_MODEL)], server={"requests_per_minute": 60})
    w = Workers(tmp_path, text)
    assert w.proc.wait(60) == 2
    w.stop()
    assert "each worker would count its own rate limits" in w.log.read_text()


def test_ctrl_c_leaves_no_process_behind(tmp_path: Path) -> None:
    w = Workers(tmp_path, conftest.config_text(models=[repo_rung(DEFAULT_MODEL, cache_prompt=False)]))
    assert wait_until(w.answers, timeout=240, every=0.5), w.log.read_text()
    tree = w.tree()
    assert len(tree) >= 3  # an engine and its llama.cpp worker, two gateway workers
    assert w.stop() == 0
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
