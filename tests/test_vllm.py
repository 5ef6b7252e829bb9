"""The vLLM rung, end to end: a real `localroute serve` over the real SmolLM2 rung plus vLLM rungs whose
`vllm` is the stand-in tests/fake_vllm.py (a real uvicorn server speaking vLLM's OpenAI API), driven
with the real `openai` SDK. No GPU is needed: the gateway is told to assume one (LOCALROUTE_ASSUME_GPU)
except where the test is that there is none.

One gateway (`gw`) carries one vLLM rung per behaviour, each reached by name:
  gpu         launch, preloaded, the rung `auto` picks for hard prompts (tier 5)
  gpu-broken  launch, preloaded, its server crashes during load
  gpu-crashy  launch, its server dies (SIGKILL) on its second request
  gpu-hang    launch, its server never becomes healthy; load_timeout_s = 3
  gpu-idle    launch, idle_ttl_s = 1
  gpu-url     url mode, against a stand-in the test starts itself (`/v1` in the URL)
  gpu-wrong   url mode, same server (no `/v1`), a model name it does not serve
  gpu-down    url mode, nothing listening
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import signal
import threading
import time
import tomllib
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import openai
import pytest

from localroute.config.schema import parse_config
from localroute.errors import ConfigError, OverloadedError
from localroute.host.pull import pull_models
from localroute.rungs import supervisor
from localroute.rungs.vllm import VllmEngine, from_config, gpu_problem
from tests.conftest import ROOT, Server, answering, free_port, pid_alive, wait_until
from tests.endpoint_servers import FakeEngine
from tests.fake_vllm import install
from tests.toml_text import toml_value

SMOL = "smollm2-135m"
GREETING = "Hi there!"
# Scores ~0.9 (code, proof and analysis keywords): above smollm2's max_score 0.45, so `auto` goes up.
HARD = (
    "Prove step by step that the sum of the first n odd numbers is n squared, then implement a Python "
    "function that checks it for every n below 1000 and analyze its time complexity. "
    + "Explain each step of the induction carefully and justify why the base case holds. "
    * 6
)
EXTRA_ARGS = ["--dtype", "half", "--enforce-eager"]
FAULTS = {
    "fake-org/Broken-7B": "crash_at_start",
    "fake-org/Crashy-7B": "crash_after=1",
    "fake-org/Hang-7B": "hang_at_start",
}


# -- configs and servers -----------------------------------------------------------------------------------


def smollm(**over: object) -> dict[str, object]:
    repo = tomllib.loads((ROOT / "models.toml").read_text())
    smol: dict[str, object] = next(m for m in repo["models"] if m["name"] == SMOL)
    return {**smol, "cache_prompt": False, "max_score": 0.45, **over}


def vllm(name: str, model: str, tier: int, **over: object) -> dict[str, object]:
    return {"name": name, "engine": "vllm", "tier": tier, "model": model, **over}


def config_text(models: list[dict[str, object]]) -> str:
    lines: list[str] = []
    for m in models:
        lines += ["[[models]]", *(f"{k} = {toml_value(v)}" for k, v in m.items()), ""]
    routing = tomllib.loads((ROOT / "models.toml").read_text())["routing"]
    lines += ["[routing]", *(f"{k} = {toml_value(v)}" for k, v in routing.items() if k != "cascade"), ""]
    lines += ["[routing.cascade]", "enabled = false"]  # which rung answers is the policy's alone
    return "\n".join(lines) + "\n"


class EnvServer(Server):
    """conftest's Server (variables set or removed with `env`), with lookups the tests share."""

    def engine(self, name: str) -> dict[str, Any]:
        return self.health()["engines"][name]  # type: ignore[index, no-any-return]

    def log_lines(self, needle: str) -> list[str]:
        return [ln for ln in self.log.read_text().splitlines() if needle in ln]


def serve(tmp: Path, models: list[dict[str, object]], env: Mapping[str, str | None]) -> EnvServer:
    """Start a gateway and wait until it answers (preloads are done once it does)."""
    cfg = tmp / "models.toml"
    cfg.write_text(config_text(models))
    srv = EnvServer(cfg, free_port(), {"FAKE_VLLM_ARGV_FILE": str(tmp / "argv.jsonl"), **env})
    srv.started(until=answering)
    return srv


def fake_env(tmp: Path, **more: str | None) -> dict[str, str | None]:
    """The stand-in first on PATH, a GPU assumed, the fault table."""
    bin_dir = tmp / "bin"
    install(bin_dir)
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    return {"PATH": path, "LOCALROUTE_ASSUME_GPU": "1", "FAKE_VLLM_MODES": json.dumps(FAULTS), **more}


def starts(srv: Server, model: str) -> list[dict[str, Any]]:
    """Every start of the stand-in for `model`, as it recorded it."""
    path = srv.log.parent / "argv.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e["model"] == model]


@pytest.fixture(scope="module")
def url_fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A stand-in vLLM server started directly, as an operator would: its root URL."""
    log = tmp_path_factory.mktemp("url-fake") / "fake.log"
    engine = FakeEngine(model="fake-org/Url-7B", args=("--max-model-len", "2048"), log=log).start()
    try:
        yield engine.url
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, url_fake: str) -> Iterator[EnvServer]:
    tmp = tmp_path_factory.mktemp("vllm-gw")
    models = [
        smollm(),
        vllm("gpu", "fake-org/Fake-7B", 5, launch=True, preload=True, n_ctx=1024, default_max_tokens=64,
             gpu_memory_utilization=0.85, tensor_parallel_size=2, extra_args=EXTRA_ARGS),
        vllm("gpu-broken", "fake-org/Broken-7B", 6, launch=True, preload=True),
        vllm("gpu-crashy", "fake-org/Crashy-7B", 7, launch=True),
        vllm("gpu-hang", "fake-org/Hang-7B", 8, launch=True, load_timeout_s=3),
        vllm("gpu-idle", "fake-org/Idle-7B", 9, launch=True, idle_ttl_s=1),
        vllm("gpu-url", "fake-org/Url-7B", 10, url=url_fake + "/v1"),
        vllm("gpu-wrong", "fake-org/Not-Served-7B", 11, url=url_fake),
        vllm("gpu-down", "fake-org/Url-7B", 12, url=f"http://127.0.0.1:{free_port()}/v1"),
        vllm("gpu-ray", "fake-org/Ray-70B", 13, launch=True, tensor_parallel_size=8, pipeline_parallel_size=2,
             data_parallel_size=2, distributed_executor_backend="ray", ray_address="10.0.0.1:6379"),
    ]  # fmt: skip
    srv = serve(tmp, models, fake_env(tmp))
    yield srv
    srv.stop()


# -- helpers -----------------------------------------------------------------------------------------------


def sdk(srv: Server) -> openai.OpenAI:
    # No SDK retries: a retry would hide a 503 behind the restarted server.
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def chat(srv: Server, text: str, model: str = "auto", **kw: Any) -> tuple[Any, Mapping[str, str]]:
    raw = sdk(srv).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], **kw
    )
    return raw.parse(), raw.headers


def error_of(srv: Server, model: str, text: str = GREETING, **kw: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as ei:
        chat(srv, text, model, **kw)
    return ei.value


# -- launch supervision ------------------------------------------------------------------------------------


def test_launched_server_answers_with_the_configured_flags(gw: EnvServer) -> None:
    r, h = chat(gw, "Hello GPU", "gpu", max_tokens=32)
    assert r.choices[0].message.content == "vllm answer: Hello GPU"
    assert (h["x-localroute-model"], h["x-localroute-tier"], r.model) == ("gpu", "5", "gpu")
    assert r.usage is not None and r.usage.completion_tokens == 4

    r, h = chat(gw, HARD, max_tokens=16)  # `auto` sends a hard prompt past smollm2 to the GPU rung
    assert h["x-localroute-model"] == "gpu" and h["x-localroute-route"].startswith("policy:")
    assert r.choices[0].message.content.startswith("vllm answer: Prove")

    eng = gw.engine("gpu")
    (started,) = starts(gw, "fake-org/Fake-7B")
    assert started["argv"] == [
        "serve", "fake-org/Fake-7B", "--host", "127.0.0.1", "--port", str(eng["port"]),
        "--max-model-len", "1024", "--gpu-memory-utilization", "0.85", "--tensor-parallel-size", "2",
        *EXTRA_ARGS,
    ]  # fmt: skip
    assert Path(started["cwd"]) == gw.log.parent  # relative model folders resolve like the config's paths
    assert eng["state"] == "ready" and eng["mode"] == "launch" and eng["pid"] == started["pid"]
    assert (eng["loads"], eng["restarts"], eng["last_error"]) == (1, 0, None)
    assert eng["served"] >= 2 and eng["load_seconds"] > 0


def test_a_ray_rung_launches_vllm_on_the_cluster(gw: EnvServer) -> None:
    r, h = chat(gw, "Hello cluster", "gpu-ray", max_tokens=8)
    assert r.choices[0].message.content == "vllm answer: Hello cluster"
    assert h["x-localroute-model"] == "gpu-ray"
    (started,) = starts(gw, "fake-org/Ray-70B")
    argv = started["argv"]
    assert argv[argv.index("--tensor-parallel-size") + 1] == "8"
    assert argv[argv.index("--pipeline-parallel-size") + 1] == "2"
    assert argv[argv.index("--data-parallel-size") + 1] == "2"
    assert argv[argv.index("--distributed-executor-backend") + 1] == "ray"
    assert started["ray_address"] == "10.0.0.1:6379"  # as vLLM's Ray finds the cluster: RAY_ADDRESS
    assert "--pipeline-parallel-size" not in starts(gw, "fake-org/Fake-7B")[0]["argv"]  # only where set


def test_a_ray_rung_is_not_judged_by_this_hosts_gpus(tmp_path: Path) -> None:
    asked: list[int] = []

    def probe(n: int) -> str | None:
        asked.append(n)
        return f"{n} GPUs needed, 1 visible"

    on_cluster = vllm("c", "org/m", 5, launch=True, tensor_parallel_size=8, pipeline_parallel_size=2,
                      distributed_executor_backend="ray", ray_address="head:6379")  # fmt: skip
    local = vllm("l", "org/m", 6, launch=True, tensor_parallel_size=2, pipeline_parallel_size=2,
                 data_parallel_size=2)  # fmt: skip
    cfg = parse_config(config_text([on_cluster, local]))
    which = lambda _: "/usr/bin/vllm"  # noqa: E731
    ray = from_config(cfg, cfg.models[0], tmp_path, which=which, gpu_probe=probe)  # type: ignore[arg-type]
    assert ray.health()["state"] != "unavailable" and asked == []
    mine = from_config(cfg, cfg.models[1], tmp_path, which=which, gpu_probe=probe)  # type: ignore[arg-type]
    assert mine.health()["last_error"] == "8 GPUs needed, 1 visible" and asked == [8]  # 2 x 2 x 2


def test_ray_address_without_the_ray_backend_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="distributed_executor_backend"):
        parse_config(config_text([vllm("c", "org/m", 5, launch=True, ray_address="head:6379")]))


def test_stream_and_logprobs_pass_through(gw: EnvServer) -> None:
    raw = sdk(gw).chat.completions.with_raw_response.create(
        model="gpu", messages=[{"role": "user", "content": "stream me"}], stream=True,
        stream_options={"include_usage": True}, logprobs=True,
    )  # fmt: skip
    chunks = list(raw.parse())
    assert raw.headers["x-localroute-model"] == "gpu"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "vllm answer: stream me"
    tokens = [
        t.token
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content or ()
    ]
    assert "".join(tokens) == text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4

    r, _ = chat(gw, "with logprobs", "gpu", logprobs=True)
    content = r.choices[0].logprobs.content
    assert [t.token for t in content] == ["vllm", " answer:", " with", " logprobs"]
    assert all(t.logprob == -0.125 for t in content)


def test_context_overflow_is_a_400_context_length_exceeded(gw: EnvServer) -> None:
    err = error_of(gw, "gpu", max_tokens=2000)  # 2000 > --max-model-len 1024: vLLM's own 400
    assert err.status_code == 400 and err.code == "context_length_exceeded"
    assert "maximum context length is 1024 tokens" in err.message
    assert gw.proc.poll() is None and gw.engine("gpu")["state"] == "ready"


def test_private_request_may_be_served_by_the_vllm_rung(gw: EnvServer) -> None:
    r, h = chat(gw, HARD, max_tokens=8, extra_headers={"X-LocalRoute-Privacy": "private"})
    assert h["x-localroute-model"] == "gpu"
    assert r.choices[0].message.content.startswith("vllm answer:")


def test_crash_at_start_fails_the_rung_and_auto_is_still_served(gw: EnvServer) -> None:
    eng = gw.engine("gpu-broken")
    assert eng["state"] == "failed" and eng["pid"] is None
    # The last line the server printed, without its absolute paths.
    assert "Engine core initialization failed (see …/engine-core.log)" in eng["last_error"]
    assert "/var/log" not in json.dumps(gw.health())
    assert len(gw.log_lines("vllm model gpu-broken failed to start")) == 1
    assert "/var/log/vllm/engine-core.log" in gw.log.read_text()  # the operator gets it whole

    r, h = chat(gw, GREETING, max_tokens=1)
    assert h["x-localroute-model"] == SMOL and r.choices[0].message.content

    # A failed load is retried with backoff: a request inside it gets a fast 503 and starts nothing.
    for _ in range(3):
        before = len(starts(gw, "fake-org/Broken-7B"))
        err = error_of(gw, "gpu-broken")
        assert err.status_code == 503 and "failed to start" in err.message and "/" not in err.message
        tried = 0 if "next attempt" in err.message else 1
        assert len(starts(gw, "fake-org/Broken-7B")) == before + tried
    assert wait_until(lambda: gw.engine("gpu-broken")["retry_in_s"] == 0, timeout=40)
    before = len(starts(gw, "fake-org/Broken-7B"))
    assert error_of(gw, "gpu-broken").status_code == 503
    assert len(starts(gw, "fake-org/Broken-7B")) == before + 1  # after the backoff: tried again
    assert gw.engine("gpu-broken")["restarts"] == before
    assert not any(pid_alive(s["pid"]) for s in starts(gw, "fake-org/Broken-7B"))


def test_retry_in_s_reads_0_only_once_the_next_request_would_try(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`retry_in_s` rounds up: 40 ms of backoff left reads 0.1, so a client that waits for 0 is not
    still inside the backoff (the test above once waited for 0 and was refused without a start)."""
    monkeypatch.setattr(supervisor, "time", types.SimpleNamespace(monotonic=lambda: 100.0))
    cfg = parse_config(config_text([vllm("gpu-x", "fake-org/X-7B", 5, url="http://127.0.0.1:9")]))
    engine = VllmEngine(cfg.models[0], cwd=tmp_path)  # type: ignore[arg-type]
    engine.state = "failed"
    for left, shown in ((0.04, 0.1), (0.96, 1.0), (1.01, 1.1), (0.0, 0.0), (-0.5, 0.0)):
        engine._retry_at = 100.0 + left
        assert engine.health()["retry_in_s"] == shown


def test_hang_at_start_is_killed_after_load_timeout(gw: EnvServer) -> None:
    t0 = time.monotonic()
    err = error_of(gw, "gpu-hang")
    elapsed = time.monotonic() - t0
    assert err.status_code == 503
    assert 2.5 < elapsed < 30  # load_timeout_s = 3, generously bounded
    eng = gw.engine("gpu-hang")
    assert eng["state"] == "failed" and "not healthy after 3s" in eng["last_error"]
    (started,) = starts(gw, "fake-org/Hang-7B")
    assert wait_until(lambda: not pid_alive(started["pid"]), timeout=10)


def test_crash_while_serving_is_a_503_and_the_next_request_restarts(gw: EnvServer) -> None:
    r, _ = chat(gw, "first", "gpu-crashy")
    assert r.choices[0].message.content == "vllm answer: first"
    pid = gw.engine("gpu-crashy")["pid"]

    err = error_of(gw, "gpu-crashy", "second")  # the stand-in SIGKILLs itself on its second request
    assert err.status_code == 503 and err.code == "engine_crashed" and "SIGKILL" in err.message
    assert gw.proc.poll() is None
    eng = gw.engine("gpu-crashy")
    assert eng["state"] == "crashed" and "SIGKILL" in eng["last_error"]

    r, _ = chat(gw, "third", "gpu-crashy")
    assert r.choices[0].message.content == "vllm answer: third"
    eng = gw.engine("gpu-crashy")
    assert eng["state"] == "ready" and eng["restarts"] == 1 and eng["loads"] == 2
    assert eng["pid"] not in (None, pid) and not pid_alive(pid)


def test_idle_ttl_stops_the_server_and_the_next_requests_start_one(gw: EnvServer) -> None:
    chat(gw, "wake up", "gpu-idle")
    pid = gw.engine("gpu-idle")["pid"]
    assert isinstance(pid, int) and pid_alive(pid)
    assert wait_until(lambda: gw.engine("gpu-idle")["state"] == "stopped", timeout=15, every=0.1)
    assert gw.engine("gpu-idle")["pid"] is None
    assert wait_until(lambda: not pid_alive(pid), timeout=5)
    line = "vllm model gpu-idle idle for 1s: stopping its server"  # logged as the placement stops it
    assert wait_until(lambda: len(gw.log_lines(line)) == 1, timeout=5)

    answers: list[str] = []

    def call(i: int) -> None:
        r, _ = chat(gw, f"again {i}", "gpu-idle")
        answers.append(r.choices[0].message.content)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(answers) == ["vllm answer: again 0", "vllm answer: again 1"]
    eng = gw.engine("gpu-idle")
    assert eng["state"] == "ready" and eng["pid"] not in (None, pid)
    assert (eng["loads"], eng["restarts"]) == (2, 0)  # both first requests shared one start
    assert len(starts(gw, "fake-org/Idle-7B")) == 2


# -- url mode ----------------------------------------------------------------------------------------------


def test_url_mode_calls_the_existing_server(gw: EnvServer) -> None:
    r, h = chat(gw, "over there", "gpu-url", logprobs=True)
    assert r.choices[0].message.content == "vllm answer: over there"
    assert h["x-localroute-model"] == "gpu-url" and r.choices[0].logprobs.content
    eng = gw.engine("gpu-url")
    assert (eng["state"], eng["mode"], eng["pid"]) == ("ready", "url", None)


def test_url_mode_wrong_model_name_is_an_upstream_error(gw: EnvServer) -> None:
    err = error_of(gw, "gpu-wrong")
    assert err.status_code == 502 and err.code == "upstream_model_not_found"
    assert gw.engine("gpu-wrong")["state"] == "ready"  # reachable (no /v1 in its URL), just misconfigured


def test_url_mode_unreachable_server_is_a_503(gw: EnvServer) -> None:
    err = error_of(gw, "gpu-down")
    assert err.status_code == 503
    eng = gw.engine("gpu-down")
    assert eng["state"] == "failed" and "unreachable" in eng["last_error"]
    assert len(gw.log_lines("vllm model gpu-down failed to start")) == 1
    assert error_of(gw, "gpu-down").status_code == 503  # re-checked, not logged again
    assert len(gw.log_lines("vllm model gpu-down failed to start")) == 1


# -- a box that cannot run it ------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["vllm", "gpu"])
def test_rung_is_unavailable_with_one_line_and_auto_routes_around_it(tmp_path: Path, missing: str) -> None:
    if missing == "vllm":
        empty = tmp_path / "empty-bin"
        empty.mkdir()
        env: dict[str, str | None] = {"PATH": str(empty), "LOCALROUTE_ASSUME_GPU": "1"}
        why = "no `vllm` executable on PATH (pip install 'localroute[gpu]')"
    else:
        with pytest.MonkeyPatch.context() as mp:
            mp.delenv("LOCALROUTE_ASSUME_GPU", raising=False)
            if gpu_problem() is None:
                pytest.skip("this machine has an NVIDIA GPU")
        env = {**fake_env(tmp_path), "LOCALROUTE_ASSUME_GPU": None}
        why = "no NVIDIA GPU visible"
    # smollm2 admits no score: `auto` would send even a greeting to `gpu`, were it available.
    models = [smollm(max_score=0.0), vllm("gpu", "fake-org/Fake-7B", 5, launch=True, preload=True)]
    srv = serve(tmp_path, models, env)
    try:
        eng = srv.engine("gpu")
        assert eng["state"] == "unavailable" and eng["pid"] is None and eng["last_error"] == why
        lines = [json.loads(ln) for ln in srv.log_lines('"logger":"localroute.vllm"')]
        assert [(x["level"], x["msg"]) for x in lines] == [("warning", f"vllm model gpu unavailable: {why}")]
        assert srv.log_lines("gpu not started") == []

        r, h = chat(srv, GREETING, max_tokens=1)
        assert h["x-localroute-model"] == SMOL and r.choices[0].message.content
        assert h["x-localroute-route"] == "policy:top>0.00"  # the top rung left, `gpu` being out

        err = error_of(srv, "gpu")
        assert err.status_code == 503 and why in err.message
        assert starts(srv, "fake-org/Fake-7B") == []  # never run
    finally:
        srv.stop()


def test_gpu_probe_and_its_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALROUTE_ASSUME_GPU", "1")
    assert gpu_problem(8) is None
    monkeypatch.setenv("LOCALROUTE_ASSUME_GPU", "0")
    assert gpu_problem() == "no NVIDIA GPU (LOCALROUTE_ASSUME_GPU=0)"
    monkeypatch.delenv("LOCALROUTE_ASSUME_GPU")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # hides every GPU, on any machine
    assert gpu_problem() == "no NVIDIA GPU visible"


def test_every_reason_is_in_the_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = parse_config(config_text([vllm("gpu", "org/m", 5, launch=True, tensor_parallel_size=4)]))
    with caplog.at_level(logging.WARNING, logger="localroute.vllm"):
        engine = from_config(
            cfg, cfg.models[0], tmp_path, which=lambda _: None,  # type: ignore[arg-type]
            gpu_probe=lambda n: f"tensor_parallel_size {n} needs {n} GPUs, 1 visible",
        )  # fmt: skip
    why = (
        "tensor_parallel_size 4 needs 4 GPUs, 1 visible; "
        "no `vllm` executable on PATH (pip install 'localroute[gpu]')"
    )
    assert caplog.messages == [f"vllm model gpu unavailable: {why}"]
    assert engine.health()["state"] == "unavailable" and engine.health()["last_error"] == why


def test_admission_beyond_in_flight_and_queue_is_a_429(url_fake: str, tmp_path: Path) -> None:
    cfg = parse_config(config_text([vllm("gpu-url", "fake-org/Url-7B", 5, url=url_fake)]))
    body = {"model": "gpu-url", "messages": [{"role": "user", "content": "hold"}], "max_tokens": 8}

    async def scenario() -> None:
        engine = VllmEngine(cfg.models[0], cwd=tmp_path, max_in_flight=1, max_queue=0)  # type: ignore[arg-type]
        held = engine.stream({**body, "stream": True})
        assert (await anext(held))["choices"][0]["delta"]["role"] == "assistant"  # its slot is taken
        with pytest.raises(OverloadedError):
            await engine.complete(body)
        assert engine.health()["in_flight"] == 1
        await held.aclose()
        assert (await engine.complete(body))["choices"][0]["message"]["content"] == "vllm answer: hold"
        assert engine.health()["served"] == 1
        await engine.aclose()

    asyncio.run(scenario())


# -- shutdown ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "gateway-sigkilled"])
def test_gateway_exit_leaves_no_vllm_process(tmp_path: Path, sig: signal.Signals) -> None:
    models = [smollm(preload=False), vllm("gpu", "fake-org/Fake-7B", 5, launch=True, preload=True)]
    srv = serve(tmp_path, models, fake_env(tmp_path))
    pid = srv.engine("gpu")["pid"]
    assert isinstance(pid, int) and pid_alive(pid)
    try:
        code = srv.stop(sig)
        if sig == signal.SIGINT:
            assert code == 0
        assert wait_until(lambda: not pid_alive(pid), timeout=15)
    finally:
        with contextlib.suppress(ProcessLookupError):  # a failure must not leave it behind either
            os.kill(pid, signal.SIGKILL)


# -- pull --------------------------------------------------------------------------------------------------


def test_pull_vllm_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read at import; the env var is set too
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cached = tmp_path / "hub" / "models--fake-org--Cached-7B"
    (cached / "refs").mkdir(parents=True)
    (cached / "refs" / "main").write_text("0" * 40)
    (cached / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (cached / "snapshots" / ("0" * 40) / "config.json").write_text("{}")
    (tmp_path / "weights" / "local-7b").mkdir(parents=True)
    text = config_text(
        [
            vllm("gpu", "fake-org/Fake-7B", 5, launch=True),
            vllm("gpu-cached", "fake-org/Cached-7B", 6, launch=True),
            vllm("gpu-local", "weights/local-7b", 7, launch=True),
            vllm("gpu-url", "fake-org/Fake-7B", 8, url="http://127.0.0.1:9/v1"),
        ]
    )
    out = io.StringIO()
    code = pull_models(parse_config(text, base_dir=tmp_path), out=out)
    assert code == 1
    assert out.getvalue().splitlines() == [
        "model gpu: cannot download fake-org/Fake-7B: "
        "Hugging Face is unreachable (offline; HF_HUB_OFFLINE=1 set)",
        f"model gpu-cached: present ({cached / 'snapshots' / ('0' * 40)})",
        f"model gpu-local: present ({tmp_path / 'weights' / 'local-7b'})",
        "model gpu-url: served elsewhere: nothing to download",
        "pull: 4 model(s): 3 present, 0 downloaded, 1 failed",
    ]
