"""Auth and exposure, limits and shutdown: unit tests of the pieces, then a real gateway with [[keys]]
and limits in front of the real small model and the stand-in remote rung. The deadline tests are in
test_deadlines.py."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localroute.config.privacy import APIKey
from localroute.config.schema import parse_config
from localroute.errors import APIError
from localroute.gateway.security import Guard, KeyRing, exposure_problem, is_loopback
from localroute.state.limits import RateLimiter
from tests import conftest
from tests.conftest import (
    ROOT,
    Server,
    free_port,
    pid_alive,
    remote_rung,
    repo_rung,
    start_gateway,
    wait_until,
)
from tests.standin_fixtures import STANDIN_KEY
from tests.standin_provider import StandinProvider
from tests.toml_text import toml_value

MODEL = "smollm2-135m"
REMOTE = "frontier"
KEY_ENV = "LR_SEC_KEY"
CLIENT = "lr-sec-client-0f3e9a"
LIMITED = "lr-sec-limited-77b1c2"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# -- units ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
def test_loopback_needs_no_keys(host: str) -> None:
    assert is_loopback(host)
    assert exposure_problem(host, [], insecure_no_auth=False) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.org", "127.0.0.1.nip.io"])
def test_any_other_address_needs_keys_or_the_explicit_flag(host: str) -> None:
    problem = exposure_problem(host, [], insecure_no_auth=False)
    assert problem is not None and "--insecure-no-auth" in problem and "[[keys]]" in problem
    assert exposure_problem(host, [APIKey(name="k", sha256=sha("x"))], insecure_no_auth=False) is None
    assert exposure_problem(host, [], insecure_no_auth=True) is None


def test_keyring_matches_hashed_and_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LR_UNIT_KEY", "from-env")
    ring = KeyRing(
        [
            APIKey(name="hashed", sha256=sha("s3cret"), privacy="public"),
            APIKey(name="env", env="LR_UNIT_KEY"),
            APIKey(name="unset", env="LR_UNIT_UNSET_KEY"),
        ]
    )
    assert ring.match("Bearer s3cret").name == "hashed"  # type: ignore[union-attr]
    assert ring.match("bearer  s3cret ").name == "hashed"  # type: ignore[union-attr]
    assert ring.match("Bearer from-env").name == "env"  # type: ignore[union-attr]
    for bad in (None, "", "s3cret", "Basic s3cret", "Bearer s3cre", "Bearer ", "Bearer " + sha("s3cret")):
        assert ring.match(bad) is None, bad
    assert not KeyRing([])


def test_rate_limiter_is_a_token_bucket() -> None:
    rl = RateLimiter()
    assert [rl.spend("a", 3, now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]  # a burst of 3
    assert rl.spend("a", 3, now=0.0) == pytest.approx(20.0)  # one refills every 20 s
    assert rl.spend("b", 3, now=0.0) == 0.0  # callers are separate
    assert rl.spend("a", 3, now=20.0) == 0.0
    assert rl.spend("a", 3, now=20.0) > 0


def test_rate_limiter_forgets_idle_callers_beyond_its_bound() -> None:
    rl = RateLimiter(max_callers=100)
    for i in range(1000):
        rl.spend(f"c{i}", 1, now=0.0)
    assert len(rl._buckets) == 100


def guard(**server: Any) -> Guard:
    text = '[[models]]\nname = "m"\nengine = "llama_cpp"\nsource = { kind = "path", path = "m.gguf" }\n'
    text += "[server]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in server.items())
    text += f'[[keys]]\nname = "c"\nsha256 = "{sha(CLIENT)}"\n'
    cfg = parse_config(text)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not reached")

    return Guard(app, cfg, KeyRing(cfg.keys), render=lambda e, path: e)


def scope(path: str, headers: dict[str, str]) -> dict[str, Any]:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return {"type": "http", "path": path, "headers": raw, "client": ("127.0.0.1", 5)}


def code(err: APIError | None) -> str | None:
    return None if err is None else err.code


def test_guard_decides_on_the_parsed_path_not_the_host_header() -> None:
    g = guard()
    assert code(g.check(scope("/health", {}))) is None
    for host in ("x/health?", "127.0.0.1/health", "h?/health", "/health#"):
        assert code(g.check(scope("/v1/chat/completions", {"host": host}))) == "invalid_api_key", host
    assert code(g.check(scope("/v1/models", {"authorization": f"Bearer {CLIENT}"}))) is None
    assert code(g.check(scope("/metrics", {}))) == "invalid_api_key"
    assert code(guard(metrics_public=True).check(scope("/metrics", {}))) is None
    assert code(g.check(scope("/dashboard", {}))) is None  # the static page holds no data
    assert code(g.check(scope("/openapi.json", {}))) is None
    assert code(g.check(scope("/v1/localroute/stats", {}))) == "invalid_api_key"


def test_guard_refuses_oversized_headers_before_anything_else() -> None:
    g = guard(max_header_bytes=2048)
    assert code(g.check(scope("/health", {"x-pad": "a" * 3000}))) == "headers_too_large"


# -- a real gateway ------------------------------------------------------------------------------------


def config_text(base_url: str, **server: Any) -> str:
    models = [
        repo_rung(MODEL, cache_prompt=False, max_queue=2),
        remote_rung(base_url, KEY_ENV, max_retries=0, read_timeout_s=60, total_timeout_s=120),
    ]
    keys = [
        {"name": "client", "sha256": sha(CLIENT)},
        {"name": "limited", "sha256": sha(LIMITED), "requests_per_minute": 3},
    ]
    # `auto` answers from the small model are always judged unsure: they escalate to the remote rung.
    cascade = {"min_mean_logprob": -0.01, "min_length_tokens": 0}
    return conftest.config_text(server=server, models=models, keys=keys, cascade=cascade)


@pytest.fixture(scope="module")
def provider() -> Iterator[StandinProvider]:
    with StandinProvider(api_key=STANDIN_KEY) as p:
        yield p


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, provider: StandinProvider) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("keyed")
    text = config_text(
        provider.base_url, max_messages=4, max_header_bytes=8192,
        cors_origins=["http://app.example"],
    )  # fmt: skip
    srv = start_gateway(tmp, text, {KEY_ENV: STANDIN_KEY})
    yield srv
    srv.stop()
    log = srv.log.read_text()
    assert CLIENT not in log and LIMITED not in log and STANDIN_KEY not in log


@pytest.fixture(autouse=True)
def fresh(provider: StandinProvider) -> None:
    provider.set("ok")
    provider.requests.clear()


AUTH = {"Authorization": f"Bearer {CLIENT}"}


def chat(srv: Server, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(srv.url + "/v1/chat/completions", json=body, headers=headers or AUTH, timeout=60)


def error_of(r: httpx.Response) -> dict[str, Any]:
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err  # type: ignore[no-any-return]


def test_every_path_but_health_needs_the_key(keyed: Server) -> None:
    assert httpx.get(keyed.url + "/health", timeout=10).status_code == 200
    paths = [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/route/explain"),
             ("GET", "/metrics"), ("GET", "/v1/localroute/stats"), ("GET", "/nowhere")]  # fmt: skip
    for method, path in paths:
        r = httpx.request(method, keyed.url + path, json={}, timeout=10)
        assert r.status_code == 401, path
        assert error_of(r)["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
        wrong = httpx.request(method, keyed.url + path, headers={"Authorization": "Bearer nope"}, timeout=10)
        assert wrong.status_code == 401
    assert httpx.get(keyed.url + "/v1/models", headers=AUTH, timeout=10).status_code == 200
    assert httpx.get(keyed.url + "/metrics", headers=AUTH, timeout=10).status_code == 200


def test_a_host_header_with_a_path_in_it_does_not_open_a_door(keyed: Server) -> None:
    """Starlette CVE-2026-48710: the decision is made on the request line's path."""
    for host in ("x/health?", "127.0.0.1/health", "a?/health"):
        r = httpx.get(keyed.url + "/v1/models", headers={"Host": host}, timeout=10)
        assert r.status_code in (400, 401), (host, r.status_code)
        assert r.status_code != 200


def test_rate_limit_per_key_is_a_429_with_retry_after(keyed: Server) -> None:
    limited = {"Authorization": f"Bearer {LIMITED}"}
    codes = [httpx.get(keyed.url + "/v1/models", headers=limited, timeout=10).status_code for _ in range(3)]
    assert codes == [200, 200, 200]
    r = httpx.get(keyed.url + "/v1/models", headers=limited, timeout=10)
    assert r.status_code == 429 and error_of(r)["code"] == "rate_limit_exceeded"
    assert 1 <= int(r.headers["retry-after"]) <= 20
    # Another key is not slowed down by it.
    assert httpx.get(keyed.url + "/v1/models", headers=AUTH, timeout=10).status_code == 200


def test_cors_answers_only_the_configured_origin(keyed: Server, server: Server) -> None:
    pre = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
    r = httpx.options(keyed.url + "/v1/chat/completions", headers=pre, timeout=10)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.example"
    evil = httpx.options(keyed.url + "/v1/chat/completions", headers={**pre, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in evil.headers
    # Off by default: the repo config sends no CORS headers at all.
    for r in (
        httpx.options(server.url + "/v1/chat/completions", headers=pre, timeout=10),
        httpx.get(server.url + "/v1/models", headers={"Origin": "http://app.example"}, timeout=10),
    ):
        assert not any(h.startswith("access-control-") for h in r.headers), r.headers


def test_oversized_headers_are_a_431(keyed: Server) -> None:
    r = httpx.get(keyed.url + "/v1/models", headers={**AUTH, "X-Pad": "a" * 10_000}, timeout=10)
    assert r.status_code == 431 and error_of(r)["code"] == "headers_too_large"


def test_too_many_messages_is_a_400(keyed: Server) -> None:
    msgs = [{"role": "user", "content": "hi"}] * 5
    r = chat(keyed, {"model": MODEL, "messages": msgs, "max_tokens": 2})
    assert r.status_code == 400
    err = error_of(r)
    assert err["code"] == "too_many_messages" and err["param"] == "messages"


def test_binding_a_public_address_without_keys_refuses_to_start(tmp_path: Path) -> None:
    cfg = tmp_path / "models.toml"
    cfg.write_text((ROOT / "models.toml").read_text())
    out = subprocess.run(
        [sys.executable, "-m", "localroute", "serve", "--config", str(cfg), "--host", "0.0.0.0",
         "--port", str(free_port())],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in out.stderr and "Traceback" not in out.stderr


# -- shutdown ----------------------------------------------------------------------------------------


def serve_repo(tmp: Path, **server: Any) -> Server:
    text = (ROOT / "models.toml").read_text()
    text = text.replace(
        "[server]\n", "[server]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in server.items())
    )
    return start_gateway(tmp, text)


COUNT_TO = "Count from 1 to 1000, separated by commas: 1, 2, 3,"
COUNT = {
    "model": MODEL,
    "temperature": 0,
    "stream": True,
    "messages": [{"role": "user", "content": COUNT_TO}],
}


@pytest.mark.timing
def test_sigterm_drains_a_stream_in_flight_then_stops_the_engines(tmp_path: Path) -> None:
    """The grace period is the longest allowed: the stream in flight finishes however slowly the box
    decodes it (a loaded box took over 60 s for 60 tokens); the test waits for it, not for a clock."""
    srv = serve_repo(tmp_path, shutdown_grace_s=3600)
    worker = srv.health()["engines"][MODEL]["pid"]  # type: ignore[index]
    try:
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json={**COUNT, "max_tokens": 16},
                          timeout=120) as r:  # fmt: skip
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert "[DONE]" not in first
            srv.proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]"  # the request in flight finished
        # uvicorn re-raises the signal once it has shut down cleanly: the exit says why it stopped.
        assert srv.proc.wait(120) in (0, -signal.SIGTERM)
        assert "Traceback" not in srv.log.read_text()
        with pytest.raises(httpx.TransportError):  # and no new one is taken
            httpx.get(srv.url + "/health", timeout=2)
        assert wait_until(lambda: not pid_alive(worker), timeout=15)
    finally:
        srv.stop(signal.SIGKILL)


@pytest.mark.timing
def test_sigterm_grace_period_is_bounded(tmp_path: Path) -> None:
    srv = serve_repo(tmp_path, shutdown_grace_s=1)
    worker = srv.health()["engines"][MODEL]["pid"]  # type: ignore[index]
    try:
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json={**COUNT, "max_tokens": 1500},
                          timeout=60) as r:  # fmt: skip
            lines = r.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            srv.proc.send_signal(signal.SIGTERM)
            with pytest.raises(httpx.HTTPError):  # cut off after the grace period, not run to [DONE]
                for _ in lines:
                    pass
        srv.proc.wait(60)
        assert wait_until(lambda: not pid_alive(worker), timeout=15)
    finally:
        srv.stop(signal.SIGKILL)


def test_max_tokens_beyond_the_context_is_clamped_to_it() -> None:
    from localroute.privacy.detect import Detector
    from localroute.protocol.chat import parse_chat_request
    from localroute.routing.router import Router

    text = '[[models]]\nname = "m"\nengine = "llama_cpp"\nn_ctx = 2048\n'
    cfg = parse_config(text + 'source = { kind = "path", path = "m.gguf" }\n')
    router = Router(cfg, {}, Detector(cfg.privacy.detect))
    m = cfg.models[0]
    for asked, sent in [(10**6, 2048), (2048, 2048), (100, 100)]:
        req = parse_chat_request(json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                             "max_tokens": asked}).encode())  # fmt: skip
        assert router._body(req, m, judge=False)["max_tokens"] == sent


def test_token_counts_from_upstream_are_only_believed_when_sane() -> None:
    from localroute.routing.trace import usage_of as _usage

    usage = {"prompt_tokens": -5, "completion_tokens": 10**400, "total_tokens": 7, "cached": True, "x": 2.0}
    assert _usage({"usage": usage}) == {"total_tokens": 7}
