"""Learning from traffic end to end: a real gateway over the real SmolLM2 worker, a stand-in remote
provider above it, client keys, `[feedback] shadow_sample = 1`.

Feedback round trip (and its 400/404/401), the new cascade signals in the audit record and the route
header, conversation stickiness (up, never down; a pinned model wins), explain with the privacy class
(a private request never shows a remote rung), shadow runs that feed the store for public requests
only and never while the local rung is busy (the test holds a stream open on it).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import openai
import pytest

from tests import conftest
from tests.conftest import ROOT, Server, remote_rung, repo_routing, repo_rung, start_gateway, wait_until
from tests.standin_fixtures import STANDIN_KEY
from tests.standin_provider import StandinProvider

MODEL = "smollm2-135m"
REMOTE = "frontier"
KEY_ENV = "LR_LEARN_PROVIDER_KEY"
CLIENT_ENV = "LR_LEARN_CLIENT_KEY"
CLIENT = "lr-client-learn-4e1f0a"
LENIENT = {"min_mean_logprob": -50.0, "min_tail_logprob": -50.0, "min_length_tokens": 0}
GREETING = "Hi there!"
UNSEEN = "req-" + "0" * 20  # well formed, never served
COUNT = "Count from 1 to 500, separated by commas: 1, 2, 3,"
HARD = (
    "Prove step by step that the sum of the first n odd numbers is n squared, then implement a Python "
    "function that checks it for every n below 1000 and analyze its time complexity. "
)


@pytest.fixture(scope="module")
def provider() -> Iterator[StandinProvider]:
    with StandinProvider(api_key=STANDIN_KEY, model="standin-frontier") as p:
        yield p


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, provider: StandinProvider) -> Iterator[Server]:
    models = [
        repo_rung(MODEL, cache_prompt=False, max_score=0.45),
        remote_rung(provider.base_url, KEY_ENV, model="standin-frontier", read_timeout_s=30, max_retries=0),
    ]
    text = conftest.config_text(models=models, routing=repo_routing(), cascade=LENIENT,
                                keys=[{"name": "learn", "env": CLIENT_ENV}])  # fmt: skip
    text += "\n[feedback]\nshadow_sample = 1.0\nshadow_max_tokens = 16\n"
    server = start_gateway(tmp_path_factory.mktemp("learn"), text, {KEY_ENV: STANDIN_KEY, CLIENT_ENV: CLIENT})
    yield server
    server.stop()


def sdk(srv: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=CLIENT, max_retries=0, timeout=120)


def chat(
    srv: Server, messages: list[dict[str, str]], model: str = "auto", **kw: Any
) -> tuple[Any, Mapping[str, str]]:
    raw = sdk(srv).chat.completions.with_raw_response.create(model=model, messages=messages, **kw)  # type: ignore[arg-type]
    return raw.parse(), raw.headers


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def post(srv: Server, path: str, body: object, key: str | None = CLIENT, **headers: str) -> httpx.Response:
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(srv.url + path, json=body, headers={**auth, **headers}, timeout=30)


def row(srv: Server, rid: str) -> dict[str, Any] | None:
    with sqlite3.connect(f"file:{srv.log.parent / 'feedback.sqlite3'}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        found = db.execute("SELECT * FROM requests WHERE id = ?", (rid,)).fetchone()
    return None if found is None else dict(found)


def audit(srv: Server, rid: str) -> dict[str, Any]:
    recs = [json.loads(line) for line in srv.audit.read_text().splitlines()]
    return next(r for r in recs if r["id"] == rid)


# -- feedback ----------------------------------------------------------------------------------------------


def test_feedback_round_trip_with_the_new_signals_in_the_record(srv: Server) -> None:
    answer, h = chat(srv, user(GREETING), max_tokens=24)
    rid = h["x-request-id"]
    assert h["x-localroute-model"] == MODEL and answer.choices[0].logprobs is None  # asked for none
    signals = audit(srv, rid)["confidence"][MODEL]  # judged: a rung is above it
    assert {"mean", "tail", "min", "p10", "p25", "p50", "margin", "n"} <= set(signals)
    assert signals["margin"] >= 0 and signals["p10"] <= signals["p25"] <= signals["p50"]
    assert (
        h["x-localroute-confidence"].startswith(MODEL + "; mean=")
        and "margin=" in h["x-localroute-confidence"]
    )
    assert wait_until(lambda: row(srv, rid) is not None, timeout=30)  # written by the store's own thread
    stored = row(srv, rid)
    assert stored is not None and stored["label"] is None and stored["prompt"] is None
    features = json.loads(stored["features"])  # the learned scorer's recipe: depth counts earlier turns
    assert features["depth"] == 0 and "len" in features and json.loads(stored["signals"]) == signals

    r = post(srv, "/v1/localroute/feedback", {"id": rid, "outcome": "bad"})
    assert r.status_code == 200 and r.json() == {"object": "localroute.feedback", "id": rid, "outcome": "bad",
                                                 "label": 1.0}  # fmt: skip
    assert (row(srv, rid) or {})["label"] == 1.0
    r = post(srv, "/v1/localroute/feedback", {"id": rid, "score": 0.8})  # the latest outcome wins
    assert r.json()["label"] == pytest.approx(0.2) and (row(srv, rid) or {})["outcome"] == "score"


def test_client_logprobs_do_not_carry_the_cascades_alternatives(srv: Server) -> None:
    answer, h = chat(srv, user(GREETING), max_tokens=8, logprobs=True)
    assert "margin=" in h["x-localroute-confidence"]
    assert answer.choices[0].logprobs.content and all(
        t.top_logprobs == [] for t in answer.choices[0].logprobs.content
    )
    answer, h = chat(srv, user(GREETING), max_tokens=8, logprobs=True, top_logprobs=3)  # served locally
    assert h["x-localroute-model"] == MODEL
    tops = [t.top_logprobs for t in answer.choices[0].logprobs.content]
    assert tops and all(len(t) == 3 and t[0].logprob >= t[1].logprob >= t[2].logprob for t in tops)


@pytest.mark.parametrize(
    ("body", "param"),
    [({"id": UNSEEN}, None), ({"id": UNSEEN, "outcome": "good", "score": 1}, None),
     ({"id": UNSEEN, "outcome": "great"}, "outcome"), ({"id": UNSEEN, "score": 1.5}, "score"),
     ({"id": "nope", "outcome": "good"}, "id"), ({"id": UNSEEN, "outcome": "good", "x": 1}, "x"),
     ({"id": UNSEEN, "score": "NaN"}, "score"), ([1], None)],
)  # fmt: skip
def test_feedback_is_validated_strictly(srv: Server, body: object, param: str | None) -> None:
    r = post(srv, "/v1/localroute/feedback", body)
    err = r.json()["error"]
    assert r.status_code == 400 and set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param


def test_feedback_for_an_unknown_request_is_a_404_and_needs_the_key(srv: Server) -> None:
    r = post(srv, "/v1/localroute/feedback", {"id": "req-" + "ab" * 10, "outcome": "good"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "id"
    r = post(srv, "/v1/localroute/feedback", {"id": "req-" + "ab" * 10, "outcome": "good"}, key=None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


# -- stickiness ------------------------------------------------------------------------------------------


def test_a_conversation_answered_upstairs_stays_up_unless_a_model_is_pinned(
    srv: Server, provider: StandinProvider
) -> None:
    first, h = chat(srv, user("Name a prime number."), model=REMOTE)
    assert h["x-localroute-model"] == REMOTE
    said = first.choices[0].message.content
    follow = [*user("Name a prime number."), {"role": "assistant", "content": said}, *user(GREETING)]
    _, h = chat(srv, follow)
    assert (h["x-localroute-model"], h["x-localroute-route"]) == (REMOTE, "policy:sticky")
    assert audit(srv, h["x-request-id"])["decision"]["sticky"] == REMOTE
    explained = post(srv, "/v1/route/explain", {"model": "auto", "messages": follow}).json()
    assert explained["sticky"] == REMOTE and any(
        "answered before by frontier" in r for r in explained["reasons"]
    )
    # The same follow-up over an answer the gateway never gave: the policy's own choice (local).
    other = [*user("Name a prime number."), {"role": "assistant", "content": "Seven."}, *user(GREETING)]
    _, h = chat(srv, other, max_tokens=8)
    assert h["x-localroute-model"] == MODEL
    _, h = chat(srv, follow, model=MODEL, max_tokens=8)  # pinned: honoured
    assert (h["x-localroute-model"], h["x-localroute-route"]) == (MODEL, "explicit")


# -- explain with privacy --------------------------------------------------------------------------------


def test_explain_classifies_as_serving_does_and_never_shows_a_remote_rung_for_a_private_request(
    srv: Server, provider: StandinProvider
) -> None:
    seen = len(provider.requests)
    body = {"model": "auto", "messages": user(HARD)}
    public = post(srv, "/v1/route/explain", body).json()
    assert public["model"] == REMOTE and public["privacy"]["class"] == "public"  # the twin does go up
    assert public["rungs"] == [MODEL, REMOTE]
    private = post(srv, "/v1/route/explain", body, **{"X-LocalRoute-Privacy": "private"}).json()
    assert (private["model"], private["escalation"], private["rungs"]) == (MODEL, [], [MODEL])
    assert private["privacy"] == {"class": "private", "reason": "header", "kinds": []}
    pii = post(
        srv, "/v1/route/explain", {"model": "auto", "messages": user(HARD + " Mail carol@example.com")}
    )
    assert pii.json()["privacy"]["reason"] == "pii" and REMOTE not in json.dumps(pii.json()["rungs"])
    assert pii.json()["model"] == MODEL
    # The CLI classifies the same way.
    done = subprocess.run(
        [sys.executable, "-m", "localroute", "explain", "--config", str(srv.log.parent / "models.toml"),
         "--privacy", "private"], input=json.dumps(body), capture_output=True, text=True, cwd=ROOT,
        timeout=60, check=False,
    )  # fmt: skip
    cli = json.loads(done.stdout)
    assert (cli["model"], cli["rungs"], cli["privacy"]["class"]) == (MODEL, [MODEL], "private")
    assert len(provider.requests) == seen  # explain calls no model


# -- shadow runs -----------------------------------------------------------------------------------------


def local_in_flight(srv: Server) -> int:
    return int(srv.health()["engines"][MODEL]["in_flight"])  # type: ignore[index]


def test_shadow_runs_label_public_paid_answers_only_when_the_local_rung_is_idle(
    srv: Server, provider: StandinProvider
) -> None:
    # Busy: the test holds a stream open on the local rung while a paid request is answered.
    body = {"model": MODEL, "messages": user(COUNT), "max_tokens": 400, "stream": True}
    headers = {"Authorization": f"Bearer {CLIENT}"}
    with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body, headers=headers, timeout=120) as s:
        lines = s.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))  # generating now
        assert local_in_flight(srv) == 1
        _, h = chat(srv, user("What is the capital of France?"), model=REMOTE)
        busy = h["x-request-id"]
    assert wait_until(lambda: local_in_flight(srv) == 0, timeout=60)
    # Idle: the next paid answer is shadowed by the local rung and labelled.
    _, h = chat(srv, user("What is the capital of Italy?"), model=REMOTE)
    idle = h["x-request-id"]
    assert wait_until(lambda: (row(srv, idle) or {}).get("shadow") is not None, timeout=120)
    labelled = row(srv, idle) or {}
    assert labelled["shadow_rung"] == MODEL and 0 <= labelled["shadow"] <= 1
    assert (row(srv, busy) or {}).get("shadow") is None and (row(srv, busy) or {}).get("rung") == REMOTE
    # Private: answered locally whatever its difficulty, never shadowed, never sent.
    seen = len(provider.requests)
    private = [{"role": "user", "content": HARD}]
    _, h = chat(srv, private, max_tokens=8, extra_headers={"X-LocalRoute-Privacy": "private"})
    assert wait_until(lambda: row(srv, h["x-request-id"]) is not None, timeout=30)
    stored = row(srv, h["x-request-id"]) or {}
    assert (stored["rung"], stored["private"], stored["shadow"]) == (MODEL, 1, None)
    assert len(provider.requests) == seen
