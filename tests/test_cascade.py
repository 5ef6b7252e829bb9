"""Routing and escalation end to end: a real gateway over the real SmolLM2 worker with a stand-in remote
provider on loopback above it, driven by the real `openai` SDK. The `x-localroute-*` headers and the
requests the provider recorded say what happened.

Three gateways, one per config, each started once for this module:
  lenient  local answers are always kept (thresholds at -50): policy routing, fallback, explain
  strict   local answers are never good enough (mean logprob >= -0.01), n_ctx 256: escalation paths
  keyless  the remote rung's API key variable is not set: the rung is disabled
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion

from tests import conftest
from tests.conftest import ROOT, Server, remote_rung, repo_routing, repo_rung, start_gateway, wait_until
from tests.standin_fixtures import STANDIN_KEY
from tests.standin_provider import StandinProvider

MODEL = "smollm2-135m"
REMOTE = "frontier"
PROVIDER_MODEL = "standin-frontier"  # what the provider is asked for: the rung's `model`, not its name
KEY_ENV = "LR_TEST_KEY"
EXPLAIN_KEYS = {"model", "tier", "score", "reasons", "estimated_tokens", "thresholds", "route", "escalation",
                "needs", "ruled_out", "sticky", "privacy", "rungs"}  # fmt: skip

GREETING = "Hi there!"
QUESTION = "What is the capital of France?"
COUNT = "Count from 1 to 500, separated by commas: 1, 2, 3,"
# Scores ~0.92 (code, proof, math and analysis keywords, ~170 tokens): above smollm2's max_score 0.45,
# yet its ~230-token pessimistic estimate still fits the strict config's n_ctx of 256.
HARD = (
    "Prove step by step that the sum of the first n odd numbers is n squared, then implement a Python "
    "function that checks it for every n below 1000 and analyze its time complexity. "
    + "Explain each step of the induction carefully and justify why the base case holds. "
    * 6
)
# SmolLM2 spends ~2 tokens on each CJK character: the policy's 3-characters-a-token estimate (~70)
# fits n_ctx 256, the real prompt (~370 tokens with the template) does not. Only the engine can tell.
CJK = "Translate into English: " + "你好世界。今天天气很好。" * 14
# ~1,350 characters: the policy alone can see that this does not fit n_ctx 256.
LONG = "the quick brown fox jumps over the lazy dog " * 30


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def remote_answer(text: str) -> str:
    """The stand-in provider's deterministic answer to a last user message."""
    return ("Remote answer to: " + text[:40]).rstrip()


# -- configs and servers --------------------------------------------------------------------------------


def config_text(base_url: str, *, local: Mapping[str, object], cascade: Mapping[str, object]) -> str:
    """The repo's smollm2 rung (deterministic, max_score 0.45) under a remote rung at `base_url`."""
    models = [
        repo_rung(MODEL, cache_prompt=False, max_score=0.45, **local),
        remote_rung(
            base_url, KEY_ENV, model=PROVIDER_MODEL, read_timeout_s=30, total_timeout_s=60, max_retries=1
        ),
    ]
    return conftest.config_text(models=models, routing=repo_routing(), cascade=cascade)


# min_length_tokens = 0: a short answer cut by max_tokens must not escalate as "length" here.
LENIENT = {"min_mean_logprob": -50.0, "min_tail_logprob": -50.0, "min_length_tokens": 0}
STRICT = {"min_mean_logprob": -0.01, "min_length_tokens": 0}


EnvServer = Server  # a gateway with variables set (or, for None, removed) in its environment


@pytest.fixture(scope="module")
def provider() -> Iterator[StandinProvider]:
    with StandinProvider(api_key=STANDIN_KEY, model=PROVIDER_MODEL) as p:
        yield p


@pytest.fixture(autouse=True)
def fresh_provider(provider: StandinProvider) -> None:
    provider.set("ok")
    provider.requests.clear()


def _server(
    factory: pytest.TempPathFactory, provider: StandinProvider, name: str, key: str | None, **kw: Any
) -> Iterator[EnvServer]:
    srv = start_gateway(factory.mktemp(name), config_text(provider.base_url, **kw), {KEY_ENV: key})
    yield srv
    srv.stop()
    assert STANDIN_KEY not in srv.log.read_text()  # not in a warning, not in a relayed error


@pytest.fixture(scope="module")
def lenient(tmp_path_factory: pytest.TempPathFactory, provider: StandinProvider) -> Iterator[EnvServer]:
    yield from _server(tmp_path_factory, provider, "lenient", STANDIN_KEY, local={}, cascade=LENIENT)


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, provider: StandinProvider) -> Iterator[EnvServer]:
    local = {"n_ctx": 256, "default_max_tokens": 64}
    yield from _server(tmp_path_factory, provider, "strict", STANDIN_KEY, local=local, cascade=STRICT)


@pytest.fixture(scope="module")
def keyless(tmp_path_factory: pytest.TempPathFactory, provider: StandinProvider) -> Iterator[EnvServer]:
    yield from _server(tmp_path_factory, provider, "keyless", None, local={}, cascade={})


# -- helpers ----------------------------------------------------------------------------------------------


def sdk(srv: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def chat(
    srv: Server, text: str, *, model: str = "auto", tier: str | None = None, **kw: Any
) -> tuple[ChatCompletion, Mapping[str, str]]:
    headers = {"X-LocalRoute-Tier": tier} if tier else None
    raw = sdk(srv).chat.completions.with_raw_response.create(
        model=model, messages=user(text), extra_headers=headers, **kw
    )
    return raw.parse(), raw.headers


def stream(srv: Server, text: str, **kw: Any) -> tuple[list[Any], Mapping[str, str]]:
    raw = sdk(srv).chat.completions.with_raw_response.create(
        model="auto", messages=user(text), stream=True, **kw
    )
    return list(raw.parse()), raw.headers


def joined(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def rung(h: Mapping[str, str]) -> tuple[str, str, str, str]:
    """(model, tier, route, escalations) from the x-localroute-* headers."""
    names = ("model", "tier", "route", "escalations")
    return tuple(h[f"x-localroute-{n}"] for n in names)  # type: ignore[return-value]


def explain(srv: Server, body: Mapping[str, object], tier: str | None = None) -> dict[str, Any]:
    headers = {"X-LocalRoute-Tier": tier} if tier else {}
    r = httpx.post(srv.url + "/v1/route/explain", json=body, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def engine(srv: Server) -> dict[str, Any]:
    return srv.health()["engines"][MODEL]  # type: ignore[index, no-any-return]


def live_pid(srv: Server) -> int:
    """The worker's pid, after starting it with a local request if an earlier test left it dead."""
    if engine(srv)["pid"] is None:
        chat(srv, GREETING, model=MODEL, max_tokens=4)
    pid = engine(srv)["pid"]
    assert isinstance(pid, int)
    return pid


def local_answer(srv: Server, text: str, max_tokens: int) -> str:
    """What the local model says when named explicitly (no judging, no escalation)."""
    r, h = chat(srv, text, model=MODEL, max_tokens=max_tokens, temperature=0)
    assert rung(h) == (MODEL, "0", "explicit", "0")
    assert r.choices[0].message.content
    return r.choices[0].message.content


# -- 1. policy routing ------------------------------------------------------------------------------------


def test_explain_scores_the_prompts_this_module_relies_on(lenient: EnvServer, strict: EnvServer) -> None:
    assert explain(lenient, {"model": "auto", "messages": user(GREETING)})["score"] < 0.45
    hard = explain(strict, {"model": "auto", "messages": user(HARD)})
    assert hard["score"] > 0.45 and hard["route"] == "policy:score>0.45"  # fits n_ctx 256, routed on score
    cjk = explain(strict, {"model": "auto", "messages": user(CJK)})
    assert (cjk["model"], cjk["route"]) == (MODEL, "policy:score<=0.45")  # looks as if it fits
    assert cjk["estimated_tokens"] < 256
    long = explain(strict, {"model": "auto", "messages": user(LONG)})
    assert (long["model"], long["route"]) == (REMOTE, "policy:context")


@pytest.mark.parametrize(
    ("text", "model", "tier", "want_model", "want_tier", "want_route"),
    [
        (GREETING, "auto", None, MODEL, "0", "policy:score<=0.45"),
        (HARD, "auto", None, REMOTE, "10", "policy:score>0.45"),
        (HARD, MODEL, None, MODEL, "0", "explicit"),
        (GREETING, "auto", "10", REMOTE, "10", "policy:"),
    ],
    ids=["greeting-local", "hard-remote", "explicit-bypasses-policy", "tier-header-forces-remote"],
)
def test_policy_routing(
    lenient: EnvServer,
    provider: StandinProvider,
    text: str,
    model: str,
    tier: str | None,
    want_model: str,
    want_tier: str,
    want_route: str,
) -> None:
    served = engine(lenient)["served"]
    r, h = chat(lenient, text, model=model, tier=tier, max_tokens=16, temperature=0)
    got_model, got_tier, route, escalations = rung(h)
    assert (got_model, got_tier, escalations) == (want_model, want_tier, "0")
    assert route.startswith(want_route)
    assert r.model == want_model  # the body names the rung that answered, never "auto"
    content = r.choices[0].message.content
    assert content
    if want_model == REMOTE:
        assert content == remote_answer(text)
        (req,) = provider.requests
        assert req.body["model"] == PROVIDER_MODEL and req.body["messages"] == user(text)
        assert engine(lenient)["served"] == served  # the local rung was never asked
    else:
        assert provider.requests == []
        assert engine(lenient)["served"] == served + 1


# -- 2. escalation on low confidence ----------------------------------------------------------------------


def test_low_confidence_answer_is_reasked_one_rung_up(strict: EnvServer, provider: StandinProvider) -> None:
    served = engine(strict)["served"]
    r, h = chat(strict, QUESTION, max_tokens=48, temperature=0)
    assert rung(h) == (REMOTE, "10", "escalated:low_confidence", "1")
    assert r.model == REMOTE
    assert r.choices[0].message.content == remote_answer(QUESTION)
    assert r.choices[0].logprobs is None  # asked of the local rung for judging, not by the client
    assert engine(strict)["served"] == served + 1  # the local answer was produced, then judged
    (req,) = provider.requests
    assert req.headers["authorization"] == f"Bearer {STANDIN_KEY}"
    assert req.body["model"] == PROVIDER_MODEL
    assert req.body["messages"] == user(QUESTION) and req.body["max_tokens"] == 48
    assert not req.body.get("logprobs")  # the top rung is not judged


def test_confident_enough_local_answer_is_kept(lenient: EnvServer, provider: StandinProvider) -> None:
    r, h = chat(lenient, QUESTION, max_tokens=48, temperature=0)
    assert rung(h) == (MODEL, "0", "policy:score<=0.45", "0")
    assert r.model == MODEL and r.choices[0].message.content
    assert r.choices[0].logprobs is None
    assert provider.requests == []


# -- 3. context overflow ----------------------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
def test_engine_side_context_overflow_escalates(
    strict: EnvServer, provider: StandinProvider, streamed: bool
) -> None:
    served = engine(strict)["served"]
    if streamed:
        chunks, h = stream(strict, CJK, max_tokens=16)
        text = joined(chunks)
        assert {c.model for c in chunks} == {REMOTE}
    else:
        r, h = chat(strict, CJK, max_tokens=16)
        text = r.choices[0].message.content or ""
    assert rung(h) == (REMOTE, "10", "escalated:context", "1")
    assert text == remote_answer(CJK)
    assert len(provider.requests) == 1
    assert engine(strict)["served"] == served  # the engine refused it: nothing was generated locally


def test_prompt_the_policy_sees_too_long_goes_remote_and_is_refused_locally(
    strict: EnvServer, provider: StandinProvider
) -> None:
    served = engine(strict)["served"]
    r, h = chat(strict, LONG, max_tokens=16)
    assert rung(h) == (REMOTE, "10", "policy:context", "0")
    assert r.choices[0].message.content == remote_answer(LONG)
    assert len(provider.requests) == 1 and engine(strict)["served"] == served
    for text in (LONG, CJK):  # named explicitly, the local rung refuses both: nowhere to escalate
        with pytest.raises(openai.BadRequestError) as ei:
            chat(strict, text, model=MODEL, max_tokens=16)
        assert ei.value.code == "context_length_exceeded" and "256" in ei.value.message
    assert len(provider.requests) == 1


# -- 4. a dead local engine -------------------------------------------------------------------------------


def test_worker_killed_mid_request_falls_back_to_remote(
    lenient: EnvServer, provider: StandinProvider
) -> None:
    pid = live_pid(lenient)
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["ok"] = chat(lenient, COUNT, max_tokens=400, temperature=0)
        except BaseException as exc:
            outcome["err"] = exc

    t = threading.Thread(target=call)
    t.start()
    assert wait_until(lambda: engine(lenient)["in_flight"] == 1, timeout=30, every=0.005)
    os.kill(pid, signal.SIGKILL)
    t.join(60)
    assert "ok" in outcome, outcome
    r, h = outcome["ok"]
    assert rung(h) == (REMOTE, "10", "fallback:engine_error", "1")
    assert r.choices[0].message.content == remote_answer(COUNT)
    assert len(provider.requests) == 1
    assert lenient.proc.poll() is None
    assert engine(lenient)["state"] == "crashed"


def test_worker_killed_between_requests_is_restarted_or_fallen_back(
    lenient: EnvServer, provider: StandinProvider
) -> None:
    # Killed while idle, the worker is restarted by the next request *if the gateway has already
    # reaped it*; a request that races the reaping reaches a dead socket, which is a crash mid-request
    # and falls back. Either way the client gets a 200 answer: that is the guarantee.
    os.kill(live_pid(lenient), signal.SIGKILL)
    r, h = chat(lenient, GREETING, max_tokens=8)
    assert rung(h) in ((MODEL, "0", "policy:score<=0.45", "0"), (REMOTE, "10", "fallback:engine_error", "1"))
    assert r.model == h["x-localroute-model"]
    assert len(provider.requests) == (r.model == REMOTE)

    # Once /health shows the death, the next request restarts the worker and is served locally.
    pid = live_pid(lenient)
    provider.requests.clear()
    restarts = engine(lenient)["restarts"]
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: engine(lenient)["state"] == "crashed", timeout=10)
    r, h = chat(lenient, GREETING, max_tokens=8)
    assert rung(h) == (MODEL, "0", "policy:score<=0.45", "0")
    after = engine(lenient)
    assert after["state"] == "ready" and after["restarts"] == restarts + 1 and after["pid"] != pid
    assert provider.requests == []


# -- 5. a failing remote keeps the local answer -----------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(
    ("mode", "params", "tries"),
    [
        ("fail", {"status": 503}, 2),
        ("reset", {}, 2),
        ("fail", {"status": 400}, 1),
        ("fail", {"status": 404}, 1),
    ],
    ids=["503", "reset", "400-not-retried", "404-not-retried"],
)
def test_failed_escalation_keeps_the_local_answer(
    strict: EnvServer,
    provider: StandinProvider,
    mode: str,
    params: dict[str, Any],
    tries: int,
    streamed: bool,
) -> None:
    local = local_answer(strict, QUESTION, 24)
    provider.set(mode, **params)  # until set again: every attempt fails
    if streamed:
        chunks, h = stream(strict, QUESTION, max_tokens=24, temperature=0)
        text = joined(chunks)
        assert {c.model for c in chunks} == {MODEL}
    else:
        r, h = chat(strict, QUESTION, max_tokens=24, temperature=0)
        text = r.choices[0].message.content or ""
        assert r.model == MODEL
    assert rung(h) == (MODEL, "0", "kept:escalation_failed", "1")
    assert text == local
    assert len(provider.requests) == tries  # 1 + max_retries, or 1 for what a retry cannot fix
    assert {req.body["model"] for req in provider.requests} == {PROVIDER_MODEL}


# -- 6. streaming with buffered judgement -----------------------------------------------------------------


def test_stream_judged_unsure_is_answered_by_the_remote(strict: EnvServer, provider: StandinProvider) -> None:
    chunks, h = stream(strict, QUESTION, max_tokens=48, temperature=0)
    assert rung(h) == (REMOTE, "10", "escalated:low_confidence", "1")
    assert joined(chunks) == remote_answer(QUESTION)
    assert chunks and {c.model for c in chunks} == {REMOTE}
    assert len({c.id for c in chunks}) == 1
    (req,) = provider.requests
    assert req.body["stream"] is True and req.body["model"] == PROVIDER_MODEL


def test_stream_judged_sure_is_the_local_answer(lenient: EnvServer, provider: StandinProvider) -> None:
    whole, h1 = chat(lenient, QUESTION, max_tokens=32, temperature=0)
    chunks, h2 = stream(lenient, QUESTION, max_tokens=32, temperature=0)
    assert rung(h1) == rung(h2) == (MODEL, "0", "policy:score<=0.45", "0")
    assert joined(chunks) == whole.choices[0].message.content
    assert {c.model for c in chunks} == {MODEL}
    assert all(c.choices[0].logprobs is None for c in chunks if c.choices)
    assert provider.requests == []


def test_remote_stream_breaking_after_commit_is_an_error_not_a_retry(
    strict: EnvServer, provider: StandinProvider
) -> None:
    # The gateway commits to the remote rung once it has its first chunk (the role chunk): the
    # provider's second chunk reaches the client, then the break surfaces as an error event.
    provider.set("stream_break", chunks=2)
    raw = sdk(strict).chat.completions.with_raw_response.create(
        model="auto", messages=user(QUESTION), stream=True, max_tokens=48, temperature=0
    )
    assert rung(raw.headers) == (REMOTE, "10", "escalated:low_confidence", "1")
    got = []
    with pytest.raises(openai.APIError) as ei:
        for chunk in raw.parse():
            got.append(chunk)
    assert not isinstance(ei.value, openai.APIStatusError)  # the status was 200 long before
    assert [c.choices[0].delta.content for c in got] == ["", "Remote"]
    assert {c.model for c in got} == {REMOTE}
    assert "Remote provider 'frontier'" in ei.value.message
    assert len(provider.requests) == 1  # nothing is retried once a byte has gone out


def test_remote_stream_breaking_before_its_first_chunk_is_retried_then_local_kept(
    strict: EnvServer, provider: StandinProvider
) -> None:
    local = local_answer(strict, QUESTION, 24)
    provider.set("stream_break", chunks=0)  # headers, then the connection closes: no chunk at all
    chunks, h = stream(strict, QUESTION, max_tokens=24, temperature=0)
    assert rung(h) == (MODEL, "0", "kept:escalation_failed", "1")
    assert joined(chunks) == local
    assert len(provider.requests) == 2


# -- 7. no API key ----------------------------------------------------------------------------------------


def test_missing_api_key_disables_the_remote_rung(keyless: EnvServer, provider: StandinProvider) -> None:
    health = keyless.health()
    remote = health["engines"][REMOTE]  # type: ignore[index]
    assert remote["state"] == "unavailable"
    assert KEY_ENV in remote["last_error"]
    assert health["status"] == "ok"  # the local rung serves

    r, h = chat(keyless, HARD, max_tokens=8)
    model, tier, route, escalations = rung(h)
    assert (model, tier, escalations) == (MODEL, "0", "0") and route.startswith("policy:")
    assert r.model == MODEL and explain(keyless, {"model": "auto", "messages": user(HARD)})["model"] == MODEL

    with pytest.raises(openai.BadRequestError) as bad:
        chat(keyless, GREETING, tier="10")
    assert bad.value.code == "no_route"
    with pytest.raises(openai.APIStatusError) as off:
        chat(keyless, GREETING, model=REMOTE)
    assert off.value.status_code == 503 and off.value.code == "remote_disabled"
    assert KEY_ENV in off.value.message
    assert provider.requests == []

    log = keyless.log.read_text()
    assert log.count(f"API key variable {KEY_ENV} is not set") == 1, log


# -- 8. explain calls no model ----------------------------------------------------------------------------


def test_explain_endpoint_calls_no_model(lenient: EnvServer, provider: StandinProvider) -> None:
    served = engine(lenient)["served"]
    hard = explain(lenient, {"model": "auto", "messages": user(HARD)})
    assert set(hard) >= EXPLAIN_KEYS
    assert (hard["model"], hard["tier"], hard["route"]) == (REMOTE, 10, "policy:score>0.45")
    assert hard["score"] > 0.45 and hard["estimated_tokens"] > 100
    assert hard["thresholds"] == {MODEL: 0.45, REMOTE: 1.0}
    assert any(reason.startswith("keywords:code") for reason in hard["reasons"])
    easy = explain(lenient, {"model": "auto", "messages": user(GREETING)})
    assert (easy["model"], easy["escalation"]) == (MODEL, [REMOTE])
    assert explain(lenient, {"model": "auto", "messages": user(GREETING)}, tier="10")["model"] == REMOTE
    assert explain(lenient, {"model": MODEL, "messages": user(HARD)})["route"] == "explicit"
    assert provider.requests == []
    assert engine(lenient)["served"] == served


# -- 9. `localroute explain --jsonl` ----------------------------------------------------------------------

GREETINGS = ["Hi", "Hello there!", "Good morning", "Hey, how are you?", "Thanks!", "yo"]
TOPICS = [
    "Summarise the following paragraph about the history of tea. ",
    "Prove that the derivative of x squared is 2x and justify each step. ",
    "Write a Python function that parses a CSV file and handles errors. ",
    "Compare the pros and cons of two strategies for saving money. ",
    "Translate this into French: the weather is nice today. ",
]


def requests_file(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """Varied requests: greetings, padded long prompts, multi-turn, explicit models, parts, systems."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        kind = i % 6
        body: dict[str, Any] = {"model": "auto"}
        if kind == 0:
            body["messages"] = user(rng.choice(GREETINGS))
        elif kind == 1:  # from a sentence to far past n_ctx 2048
            body["messages"] = user(rng.choice(TOPICS) * rng.choice([1, 4, 20, 80, 400]))
        elif kind == 2:
            turns = []
            for _ in range(rng.randint(2, 6)):
                turns += [{"role": "user", "content": rng.choice(TOPICS + GREETINGS)},
                          {"role": "assistant", "content": "Sure."}]  # fmt: skip
            body["messages"] = turns[:-1]
        elif kind == 3:
            body["model"] = rng.choice([MODEL, REMOTE])
            body["messages"] = user(rng.choice(TOPICS))
        elif kind == 4:
            body["messages"] = [{"role": "system", "content": "Be precise."}, *user(rng.choice(TOPICS))]
            body["max_tokens"] = rng.choice([16, 256, 1500])
        else:
            parts = [{"type": "text", "text": rng.choice(TOPICS)} for _ in range(rng.randint(1, 3))]
            body["messages"] = [{"role": "user", "content": parts}]
        out.append(body)
    return out


def test_explain_cli_round_trips_a_thousand_requests_offline(
    lenient: EnvServer, provider: StandinProvider, tmp_path: Path
) -> None:
    bodies = requests_file(1000)
    lines = [json.dumps(b) for b in bodies]
    src = tmp_path / "requests.jsonl"
    src.write_text("\n".join([*lines[:500], "", *lines[500:], ""]) + "\n")  # + 2 blank lines
    empty = tmp_path / "no-models"
    empty.mkdir()
    # No model file can be found and any HTTP(S) call would go to a dead proxy: neither is needed.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LOCALROUTE_MODELS_DIR": str(empty),
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}  # fmt: skip
    env.pop(KEY_ENV, None)
    done = subprocess.run(
        [sys.executable, "-m", "localroute", "explain", "--config", str(lenient.log.parent / "models.toml"),
         "--jsonl", str(src)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert len(out) == 1000
    decisions = [json.loads(line) for line in out]
    assert all(set(d) == EXPLAIN_KEYS for d in decisions)
    routes = {d["route"].split(">")[0].split("<=")[0] for d in decisions}
    assert routes == {"policy:score", "policy:context", "explicit"}, routes  # the file is varied
    assert provider.requests == []

    for i in [k * 49 + 7 for k in range(20)]:  # every kind of request, spread over the file
        assert explain(lenient, bodies[i]) == decisions[i], bodies[i]
