"""Private traffic never leaves the machine, whatever fails: the tripwire tests.

A real gateway over the real SmolLM2 worker, with a stand-in remote provider above it that records
every request it receives. The remote rung is otherwise eligible (its key is set, the cascade would
escalate to it), so that for each scenario a *public twin* request does reach the stand-in, and the
private one must leave it with nothing recorded. Each request's audit record is checked as it lands;
the last tests run `localroute audit verify` over every server's log and look for leaked data and keys.

Servers, one per config, each started once for this module:
  strict    cascade never satisfied (local answers always escalate), n_ctx 256, `[[keys]]` policies
  default   `[privacy] default = "private"`, public override allowed, `redact = true`; n_ctx 2048
  slow      the local engine times out after 1 s (`request_timeout_s`); lenient cascade
  remote    the remote rung is the only rung; its key is a canary the provider rejects and echoes
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests import conftest
from tests.conftest import ROOT, Server, remote_rung, repo_routing, repo_rung, start_gateway, wait_until
from tests.standin_fixtures import STANDIN_KEY
from tests.standin_provider import StandinProvider

MODEL = "smollm2-135m"
REMOTE = "frontier"
PROVIDER_MODEL = "standin-frontier"
KEY_ENV = "LR_PRIVACY_TEST_KEY"
# Found in a file or a body, this string would mean the key leaked; random so it cannot be there by chance.
CANARY = "sk-canary-" + secrets.token_hex(16)
PRIVATE_CLIENT = "lr-client-private-7c1d2e"  # a client API key whose `[[keys]]` policy is private
PUBLIC_CLIENT = "lr-client-public-3b9a4f"
# With [[keys]] configured every request needs one: this key has no privacy policy of its own
# ("auto"), so requests sent with it are classified as if no key were involved. Servers without
# [[keys]] ignore it.
AUTO_CLIENT = "lr-client-auto-5e8a21"

QUESTION = "What is the capital of France?"
COUNT = "Count from 1 to 500, separated by commas: 1, 2, 3,"
EMAIL = "carol.jones@example.com"
CARD = "4111 1111 1111 1111"
PII_EMAIL = f"Draft a short thank-you reply to {EMAIL}."
PII_CARD = f"Is the card number {CARD} written correctly?"
LEAKS = (EMAIL, CARD, CARD.replace(" ", ""), CANARY)
# ~1,350 characters: the policy sees that this fits no local rung of n_ctx 256.
LONG = "the quick brown fox jumps over the lazy dog " * 30
# Looks short to the policy (~70 tokens), but SmolLM2 spends ~2 tokens a CJK character: only the
# engine finds that it does not fit n_ctx 256.
CJK = "Translate into English: " + "你好世界。今天天气很好。" * 14

STRICT = {"min_mean_logprob": -0.01, "min_length_tokens": 0}  # no local answer is ever sure enough
LENIENT = {"min_mean_logprob": -50.0, "min_tail_logprob": -50.0, "min_length_tokens": 0}


# -- configs and servers ---------------------------------------------------------------------------------


def config_text(
    base_url: str,
    *,
    local: Mapping[str, object] | None,
    cascade: Mapping[str, object],
    privacy: Mapping[str, object] | None = None,
    keys: list[dict[str, object]] | None = None,
) -> str:
    """The repo's smollm2 rung (deterministic, max_score 0.45; None: no local rung) under a remote
    rung at `base_url` whose key is read from KEY_ENV."""
    remote = remote_rung(
        base_url, KEY_ENV, model=PROVIDER_MODEL, read_timeout_s=30, total_timeout_s=60, max_retries=1
    )
    models = (
        [remote] if local is None else [repo_rung(MODEL, cache_prompt=False, max_score=0.45, **local), remote]
    )
    return conftest.config_text(
        models=models, routing=repo_routing(), cascade=cascade, privacy=privacy or {}, keys=keys or ()
    )


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


EnvServer = Server  # a gateway with KEY_ENV set in its environment


def serve(
    factory: pytest.TempPathFactory, name: str, text: str, key: str = STANDIN_KEY
) -> Iterator[EnvServer]:
    srv = start_gateway(factory.mktemp(name), text, {KEY_ENV: key})
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def provider() -> Iterator[StandinProvider]:
    with StandinProvider(api_key=STANDIN_KEY, model=PROVIDER_MODEL) as p:
        yield p


@pytest.fixture(scope="module")
def canary_provider() -> Iterator[StandinProvider]:
    """Expects another key: it answers the canary with 401 and echoes it, as real providers do."""
    with StandinProvider(api_key=STANDIN_KEY, model=PROVIDER_MODEL) as p:
        yield p


@pytest.fixture(autouse=True)
def fresh_providers(provider: StandinProvider, canary_provider: StandinProvider) -> None:
    for p in (provider, canary_provider):
        p.set("ok")
        p.requests.clear()
    canary_provider.api_key = STANDIN_KEY


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, provider: StandinProvider) -> Iterator[EnvServer]:
    keys: list[dict[str, object]] = [
        {"name": "private-client", "sha256": sha256(PRIVATE_CLIENT), "privacy": "private"},
        {"name": "public-client", "sha256": sha256(PUBLIC_CLIENT), "privacy": "public"},
        {"name": "auto-client", "sha256": sha256(AUTO_CLIENT), "privacy": "auto"},
    ]
    local = {"n_ctx": 256, "default_max_tokens": 64}
    yield from serve(
        tmp_path_factory, "strict", config_text(provider.base_url, local=local, cascade=STRICT, keys=keys)
    )


@pytest.fixture(scope="module")
def default_private(
    tmp_path_factory: pytest.TempPathFactory, provider: StandinProvider
) -> Iterator[EnvServer]:
    privacy = {"default": "private", "allow_public_override": True, "redact": True}
    text = config_text(provider.base_url, local={}, cascade=STRICT, privacy=privacy)
    yield from serve(tmp_path_factory, "default", text)


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory, provider: StandinProvider) -> Iterator[EnvServer]:
    text = config_text(provider.base_url, local={"request_timeout_s": 1.0}, cascade=LENIENT)
    yield from serve(tmp_path_factory, "slow", text)


@pytest.fixture(scope="module")
def remote_only(
    tmp_path_factory: pytest.TempPathFactory, canary_provider: StandinProvider
) -> Iterator[EnvServer]:
    text = config_text(canary_provider.base_url, local=None, cascade={})
    yield from serve(tmp_path_factory, "remote", text, key=CANARY)


# -- requests --------------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: httpx.Headers
    body: Any = None  # the JSON body (not streamed)
    events: list[dict[str, Any]] = field(default_factory=list)  # SSE events (streamed)
    raw: str = ""

    @property
    def rid(self) -> str:
        return self.headers["x-request-id"]

    @property
    def model(self) -> str:
        return self.headers["x-localroute-model"]

    @property
    def route(self) -> str:
        return self.headers["x-localroute-route"]

    @property
    def text(self) -> str:
        if self.events:
            return "".join(
                c["choices"][0]["delta"].get("content") or "" for c in self.events if c.get("choices")
            )
        return str(self.body["choices"][0]["message"]["content"])

    @property
    def error(self) -> dict[str, Any]:
        assert self.status >= 400, self.raw
        return self.body["error"]  # type: ignore[no-any-return]


def call(
    srv: Server,
    text: str | None = None,
    *,
    messages: list[dict[str, Any]] | None = None,
    privacy: str | None = None,
    auth: str | None = AUTO_CLIENT,
    tier: str | None = None,
    model: str = "auto",
    stream: bool = False,
    **params: Any,
) -> Reply:
    headers = {"Authorization": f"Bearer {auth}"} if auth else {}
    if privacy:
        headers["X-LocalRoute-Privacy"] = privacy
    if tier:
        headers["X-LocalRoute-Tier"] = tier
    body = {"model": model, "messages": messages or [{"role": "user", "content": text}], "stream": stream,
            "temperature": 0, **params}  # fmt: skip
    with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body, headers=headers, timeout=120) as r:
        raw = r.read().decode()
    reply = Reply(r.status_code, r.headers, raw=raw)
    if stream and r.status_code == 200:
        data = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
        assert data[-1] == "[DONE]", raw
        reply.events = [json.loads(d) for d in data[:-1]]
    else:
        reply.body = json.loads(raw)
    return reply


def engine(srv: Server) -> dict[str, Any]:
    return srv.health()["engines"][MODEL]  # type: ignore[index, no-any-return]


def audit_record(srv: Server, rid: str) -> dict[str, Any]:
    """The audit record of one request (a stream's is written as it ends: wait for it)."""
    found: list[dict[str, Any]] = []

    def look() -> bool:
        if srv.audit.exists():
            found[:] = [r for r in map(json.loads, srv.audit.read_text().splitlines()) if r["id"] == rid]
        return bool(found)

    assert wait_until(look, timeout=10), f"no audit record for {rid}"
    assert len(found) == 1
    return found[0]


def assert_private(
    srv: Server,
    reply: Reply,
    reason: str,
    kinds: tuple[str, ...] = (),
    tried: list[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """The request was audited as private for `reason`, no rung it tried was remote, and the rungs
    it tried were `tried` ((model, outcome) pairs), if given."""
    rec = audit_record(srv, reply.rid)
    assert rec["privacy"] == {"class": "private", "reason": reason, "kinds": list(kinds)}
    assert all(not a["remote"] for a in rec["attempts"]), rec
    if tried is not None:
        assert [(a["model"], a["outcome"]) for a in rec["attempts"]] == tried, rec
    return rec


def assert_public(srv: Server, reply: Reply, reason: str) -> dict[str, Any]:
    rec = audit_record(srv, reply.rid)
    assert rec["privacy"]["class"] == "public" and rec["privacy"]["reason"] == reason, rec
    return rec


def answered_locally(reply: Reply) -> None:
    assert reply.status == 200, reply.raw
    assert reply.model == MODEL and reply.text
    assert {c["model"] for c in reply.events} <= {MODEL}


def reached_remote(reply: Reply, provider: StandinProvider, route: str) -> None:
    assert reply.status == 200, reply.raw
    assert (reply.model, reply.route) == (REMOTE, route)
    assert reply.text.startswith("Remote answer to:")
    assert len(provider.requests) >= 1
    assert provider.requests[-1].headers["authorization"] == f"Bearer {STANDIN_KEY}"  # never the client's


def conflicting(reply: Reply) -> None:
    """A private request that itself asks for a remote rung: the client's mistake, a 400."""
    assert reply.status == 400, reply.raw
    assert reply.error["code"] == "private_request_unservable"
    assert reply.error["type"] == "invalid_request_error" and "private" in reply.error["message"]


def unservable(reply: Reply) -> None:
    assert reply.status == 503, reply.raw
    assert reply.error["code"] == "private_request_unservable" and reply.error["type"] == "server_error"
    assert "private" in reply.error["message"]


def in_background(fn: Callable[[], Reply]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["reply"] = fn()
        except BaseException as exc:  # surfaced by the test's assertion on `out`
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    return t, out


# -- (a) low local confidence ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["header", "key"])
def test_low_confidence_private_is_kept_local(strict: EnvServer, provider: StandinProvider, how: str) -> None:
    twin = call(strict, QUESTION, max_tokens=16)  # the cascade escalates this one...
    reached_remote(twin, provider, "escalated:low_confidence")
    assert_public(strict, twin, "public-default")
    provider.requests.clear()

    if how == "header":
        r = call(strict, QUESTION, privacy="private", max_tokens=16)
    else:
        r = call(strict, QUESTION, auth=PRIVATE_CLIENT, max_tokens=16)
    answered_locally(r)  # ...and keeps the private one, however unsure
    assert provider.requests == []
    assert_private(strict, r, how, tried=[(MODEL, "ok")])


@pytest.mark.parametrize(("auth", "reason"), [(PUBLIC_CLIENT, "public-key"), (AUTO_CLIENT, "public-default")])
def test_other_client_keys_are_not_private(
    strict: EnvServer, provider: StandinProvider, auth: str, reason: str
) -> None:
    r = call(strict, QUESTION, auth=auth, max_tokens=16)
    reached_remote(r, provider, "escalated:low_confidence")
    assert_public(strict, r, reason)


@pytest.mark.parametrize("auth", ["some-other-key", None])
def test_an_unknown_or_missing_key_is_refused_before_anything_runs(
    strict: EnvServer, provider: StandinProvider, auth: str | None
) -> None:
    r = call(strict, QUESTION, auth=auth, max_tokens=16)
    assert r.status == 401 and r.headers["www-authenticate"] == "Bearer"
    assert json.loads(r.raw)["error"]["code"] == "invalid_api_key"
    assert provider.requests == []


# -- (b) context too long for every local model ----------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(
    ("text", "public_route"), [(LONG, "policy:context"), (CJK, "escalated:context")], ids=["policy", "engine"]
)
def test_too_long_for_every_local_model_fails_closed(
    strict: EnvServer, provider: StandinProvider, text: str, public_route: str, streamed: bool
) -> None:
    twin = call(strict, text, max_tokens=16, stream=streamed)
    reached_remote(twin, provider, public_route)
    provider.requests.clear()

    r = call(strict, text, privacy="private", max_tokens=16, stream=streamed)
    assert r.status == 400, r.raw
    assert r.error["code"] == "context_length_exceeded"
    assert "private" in r.error["message"] and "256" in r.error["message"]
    assert provider.requests == []
    assert_private(strict, r, "header", tried=[(MODEL, "error")])  # the engine said it does not fit


# -- (c) the local engine killed mid-request -------------------------------------------------------------


@pytest.mark.parametrize("private", [True, False], ids=["private", "public-twin"])
def test_engine_killed_mid_request(
    default_private: EnvServer, provider: StandinProvider, private: bool
) -> None:
    srv = default_private
    if engine(srv)["pid"] is None:  # restart it after an earlier kill
        answered_locally(call(srv, QUESTION, max_tokens=4))
    pid = engine(srv)["pid"]
    t, out = in_background(
        lambda: call(srv, COUNT, privacy="private" if private else "public", max_tokens=400)
    )
    assert wait_until(lambda: engine(srv)["in_flight"] == 1, timeout=30, every=0.005)
    os.kill(pid, signal.SIGKILL)
    t.join(60)
    assert "reply" in out, out
    r = out["reply"]
    if private:
        unservable(r)
        assert "engine_crashed" in r.error["message"]
        assert provider.requests == []
        assert_private(srv, r, "header", tried=[(MODEL, "error")])
    else:
        reached_remote(r, provider, "fallback:engine_error")
        assert len(provider.requests) == 1
    assert srv.proc.poll() is None and engine(srv)["state"] == "crashed"


# -- (d) the local engine timing out ---------------------------------------------------------------------


@pytest.mark.timing
@pytest.mark.parametrize("private", [True, False], ids=["private", "public-twin"])
def test_engine_timing_out(slow: EnvServer, provider: StandinProvider, private: bool) -> None:
    """1,000 tokens cannot be decoded within the engine's 1 s on any box, and a busier box is only
    slower: the timeout is certain; which error it was is asserted, not how long it took."""
    r = call(slow, COUNT, privacy="private" if private else None, max_tokens=1000)
    if private:
        unservable(r)
        assert "engine_timeout" in r.error["message"]
        assert provider.requests == []
        assert_private(slow, r, "header", tried=[(MODEL, "error")])
    else:
        reached_remote(r, provider, "fallback:engine_error")


# -- (e) streaming with buffered judgement ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "reason", "kinds"),
    [({"privacy": "private"}, "header", ()), ({}, "pii", ("email",)), ({"auth": PRIVATE_CLIENT}, "key", ())],
    ids=["header", "pii", "key"],
)
def test_stream_judged_unsure_stays_local_when_private(
    strict: EnvServer, provider: StandinProvider, kw: dict[str, Any], reason: str, kinds: tuple[str, ...]
) -> None:
    text = PII_EMAIL if kinds else QUESTION
    twin = call(strict, QUESTION, max_tokens=24, stream=True)
    reached_remote(twin, provider, "escalated:low_confidence")
    assert provider.requests[-1].body["stream"] is True
    provider.requests.clear()

    r = call(strict, text, max_tokens=24, stream=True, **kw)
    answered_locally(r)
    assert r.events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert provider.requests == []
    assert_private(strict, r, reason, kinds)


# -- (f) the remote as the only rung, or asked for by name -----------------------------------------------


@pytest.mark.parametrize(
    ("kw", "reason", "kinds"),
    [
        ({"privacy": "private"}, "header", ()),
        ({"privacy": "private", "model": REMOTE}, "header", ()),
        ({"text": PII_CARD}, "pii", ("card",)),
        ({"text": PII_EMAIL, "privacy": "public"}, "pii", ("email",)),
        ({"privacy": "private", "stream": True}, "header", ()),
    ],
    ids=["header", "named", "pii", "pii-public-header", "stream"],
)
def test_remote_only_config_refuses_private_requests(
    remote_only: EnvServer,
    canary_provider: StandinProvider,
    kw: dict[str, Any],
    reason: str,
    kinds: tuple[str, ...],
) -> None:
    kw = {"text": QUESTION, **kw}
    r = call(remote_only, max_tokens=16, **kw)
    conflicting(r) if "model" in kw else unservable(r)
    assert canary_provider.requests == []
    assert_private(remote_only, r, reason, kinds, tried=[])


@pytest.mark.parametrize(
    "kw",
    [{"model": REMOTE}, {"tier": "remote"}, {"tier": "10"}, {"model": REMOTE, "stream": True}],
    ids=["named", "tier-remote", "tier-10", "named-stream"],
)
def test_private_request_naming_the_remote_is_refused(
    strict: EnvServer, provider: StandinProvider, kw: dict[str, Any]
) -> None:
    twin = call(strict, QUESTION, max_tokens=8, **kw)
    assert twin.status == 200 and twin.model == REMOTE, twin.raw
    provider.requests.clear()

    r = call(strict, QUESTION, privacy="private", max_tokens=8, **kw)
    conflicting(r)
    assert provider.requests == []
    assert_private(strict, r, "header", tried=[])  # refused before any rung was tried


# -- (g) a PII-only trigger ------------------------------------------------------------------------------


@pytest.mark.parametrize("privacy", [None, "public"], ids=["no-header", "public-header-not-allowed"])
@pytest.mark.parametrize(("text", "kind"), [(PII_EMAIL, "email"), (PII_CARD, "card")], ids=["email", "card"])
def test_detected_data_keeps_a_request_local(
    strict: EnvServer, provider: StandinProvider, text: str, kind: str, privacy: str | None
) -> None:
    r = call(strict, text, privacy=privacy, max_tokens=16)
    answered_locally(r)  # the strict cascade would have escalated it, were it public
    assert provider.requests == []
    assert_private(strict, r, "pii", (kind,))


def test_public_override_sends_placeholders_not_data(
    default_private: EnvServer, provider: StandinProvider
) -> None:
    srv = default_private
    r = call(srv, PII_EMAIL, max_tokens=16)  # no header: detection keeps it private
    answered_locally(r)
    assert provider.requests == []
    assert_private(srv, r, "pii", ("email",))

    messages = [
        {"role": "system", "content": f"You write for {EMAIL}."},
        {"role": "user", "content": f"Thank {EMAIL}, and bill card {CARD}; cc bob@example.org."},
    ]
    r = call(srv, messages=messages, privacy="public", max_tokens=16)  # allowed by this config
    reached_remote(r, provider, "escalated:low_confidence")
    rec = assert_public(srv, r, "override")
    assert rec["privacy"]["kinds"] == ["card", "email"]
    (sent,) = provider.requests
    assert sent.body["messages"] == [
        {"role": "system", "content": "You write for [EMAIL_1]."},
        {"role": "user", "content": "Thank [EMAIL_1], and bill card [CARD_1]; cc [EMAIL_2]."},
    ]
    assert not any(leak in json.dumps(sent.body) for leak in LEAKS)


def test_public_override_of_a_stream_is_redacted_too(
    default_private: EnvServer, provider: StandinProvider
) -> None:
    r = call(default_private, PII_EMAIL, privacy="public", max_tokens=16, stream=True)
    reached_remote(r, provider, "escalated:low_confidence")
    (sent,) = provider.requests
    assert sent.body["messages"] == [
        {"role": "user", "content": "Draft a short thank-you reply to [EMAIL_1]."}
    ]


# -- the config default ----------------------------------------------------------------------------------


def test_default_private_keeps_clean_requests_local(
    default_private: EnvServer, provider: StandinProvider
) -> None:
    srv = default_private
    for stream in (False, True):
        r = call(srv, QUESTION, max_tokens=16, stream=stream)
        answered_locally(r)
        assert_private(srv, r, "default")
    assert provider.requests == []

    r = call(srv, QUESTION, privacy="public", max_tokens=16)  # the client may open it up
    reached_remote(r, provider, "escalated:low_confidence")
    assert provider.requests[-1].body["messages"] == [{"role": "user", "content": QUESTION}]
    assert_public(srv, r, "public-header")


# -- a canary key never leaks ----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_a_rejected_key_is_not_echoed(
    remote_only: EnvServer, canary_provider: StandinProvider, stream: bool
) -> None:
    r = call(remote_only, QUESTION, max_tokens=8, stream=stream)
    assert r.status == 502 and r.error["code"] == "remote_auth_failed", r.raw
    (sent,) = canary_provider.requests  # a 401 is not retried
    assert sent.headers["authorization"] == f"Bearer {CANARY}"  # the canary did go out...
    assert CANARY not in r.raw  # ...and did not come back
    assert_public(remote_only, r, "public-default")
    assert CANARY not in remote_only.audit.read_text() and CANARY not in remote_only.log.read_text()
    assert "remote_auth_failed" in remote_only.log.read_text()  # logged, without the key


@pytest.mark.parametrize("status", [400, 422])
def test_a_key_echoed_in_a_relayed_error_is_scrubbed(
    remote_only: EnvServer, canary_provider: StandinProvider, status: int
) -> None:
    canary_provider.api_key = None  # accept any key, then fail with a message that quotes it
    canary_provider.set("fail", status=status, message=f"Request from key {CANARY} was refused", code="bad")
    r = call(remote_only, QUESTION, max_tokens=8)
    assert r.status == 400, r.raw  # the client's fault, as the provider said
    assert len(canary_provider.requests) == 1
    assert "[redacted]" in r.error["message"] and CANARY not in r.raw
    assert CANARY not in remote_only.audit.read_text() and CANARY not in remote_only.log.read_text()


# -- the audit log, after all of the above ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["strict", "default_private", "slow", "remote_only"])
def test_audit_log_verifies_and_holds_no_data(request: pytest.FixtureRequest, name: str) -> None:
    srv: EnvServer = request.getfixturevalue(name)
    # Make sure the log holds private records of every kind, whichever tests ran before.
    call(srv, PII_EMAIL, max_tokens=4)
    call(srv, QUESTION, privacy="private", max_tokens=4)
    done = subprocess.run(
        [sys.executable, "-m", "localroute", "audit", "verify", str(srv.audit)],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    recs = [json.loads(line) for line in srv.audit.read_text().splitlines()]
    private = [r for r in recs if r["privacy"]["class"] == "private"]
    assert f"records checked: {len(recs)}\n" in done.stdout
    assert f"private records: {len(private)}\n" in done.stdout and len(private) >= 2
    assert "private records that touched a remote rung: 0\n" in done.stdout
    assert all(not a["remote"] for r in private for a in r["attempts"])
    assert {r["privacy"]["reason"] for r in private} >= {"pii", "header"}
    assert all(r["privacy"]["kinds"] for r in private if r["privacy"]["reason"] == "pii")

    log = srv.audit.read_text()
    assert EMAIL.split("@")[0] not in log and not any(leak in log for leak in LEAKS)
    assert "Draft a short" not in log and "capital of France" not in log  # no prompt text either
    assert not any(leak in srv.log.read_text() for leak in LEAKS)
    assert not any(leak in json.dumps(srv.health()) for leak in LEAKS)


# -- (g) tools and structured output ----------------------------------------------------------------------
# Tool and JSON requests marked private, or carrying personal data in tool arguments, tool results or tool
# descriptions, never reach the stand-in, under low confidence and an engine killed mid-request. Invalid
# output is covered at the router (tests/test_contract.py), where it can be forced.

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
FORCED = {"tools": [WEATHER], "tool_choice": "required"}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def turn_with(*, args: str = '{"city": "Paris"}', result: str = '{"temp_c": 18}') -> list[dict[str, Any]]:
    """A tool round trip in history: the assistant's call and the tool's result."""
    call_ = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": args}}
    return [*ASK, {"role": "assistant", "content": None, "tool_calls": [call_]},
            {"role": "tool", "tool_call_id": "call_1", "content": result}]  # fmt: skip


def a_local_tool_call(reply: Any) -> dict[str, Any]:
    assert reply.status == 200, reply.raw
    assert reply.model == MODEL
    if reply.events:
        calls = [tc for e in reply.events for c in e["choices"] for tc in c["delta"].get("tool_calls") or ()]
        assert calls and calls[0]["function"]["name"] == "get_weather"
        return calls[0]
    (tc,) = reply.body["choices"][0]["message"]["tool_calls"]
    assert tc["function"]["name"] == "get_weather" and isinstance(
        json.loads(tc["function"]["arguments"]), dict
    )
    return tc  # type: ignore[no-any-return]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_private_tool_request_stays_local_though_its_public_twin_escalates(
    strict: EnvServer, provider: StandinProvider, stream: bool
) -> None:
    twin = call(strict, messages=ASK, max_tokens=48, **FORCED)
    assert twin.status == 200 and len(provider.requests) == 1  # the strict cascade sends it up...
    sent = provider.requests[0].body
    assert sent["tools"] == [WEATHER] and sent["tool_choice"] == "required"  # ...with its tools intact
    provider.requests.clear()

    r = call(strict, messages=ASK, privacy="private", stream=stream, max_tokens=48, **FORCED)
    a_local_tool_call(r)  # ...and keeps the private one, however unsure
    assert provider.requests == []
    assert_private(strict, r, "header", tried=[(MODEL, "ok")])


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param(turn_with(result=json.dumps({"owner": EMAIL})), id="pii-in-tool-result"),
        pytest.param(turn_with(args=json.dumps({"city": "Paris", "cc": EMAIL})), id="pii-in-tool-arguments"),
    ],
)  # fmt: skip
def test_personal_data_in_a_tool_round_trip_keeps_it_local(
    strict: EnvServer, provider: StandinProvider, messages: list[dict[str, Any]]
) -> None:
    r = call(strict, messages=messages, tools=[WEATHER], max_tokens=24)
    assert r.status == 200 and r.model == MODEL, r.raw
    assert provider.requests == []
    assert_private(strict, r, "pii", kinds=("email",))


def test_personal_data_in_a_tool_description_keeps_it_local(
    strict: EnvServer, provider: StandinProvider
) -> None:
    tool = {
        "type": "function",
        "function": {**WEATHER["function"], "description": f"Mail results to {EMAIL}."},
    }
    r = call(strict, messages=ASK, tools=[tool], tool_choice="required", max_tokens=48)
    a_local_tool_call(r)
    assert provider.requests == []
    assert_private(strict, r, "pii", kinds=("email",))


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_private_json_request_stays_local(
    strict: EnvServer, provider: StandinProvider, stream: bool
) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}  # fmt: skip
    r = call(strict, messages=ASK, privacy="private", stream=stream, max_tokens=48, response_format=fmt)
    assert r.status == 200 and r.model == MODEL, r.raw
    assert provider.requests == []
    rec = assert_private(strict, r, "header", tried=[(MODEL, "ok")])
    assert rec["output_valid"] in (True, False)  # judged and recorded, whatever the verdict


def test_a_private_tool_request_whose_engine_is_killed_fails_closed(
    default_private: EnvServer, provider: StandinProvider
) -> None:
    srv = default_private
    if engine(srv)["pid"] is None:  # restart it after an earlier kill
        call(srv, "Hi", max_tokens=2)
    pid = engine(srv)["pid"]
    t, out = in_background(lambda: call(srv, messages=ASK, max_tokens=400, **FORCED))  # private by default
    assert wait_until(lambda: engine(srv)["in_flight"] == 1, timeout=30, every=0.005)
    os.kill(pid, signal.SIGKILL)
    t.join(60)
    assert "reply" in out, out
    r = out["reply"]
    if r.status == 200:  # the call finished before the signal landed: still local, still nothing sent
        a_local_tool_call(r)
    else:
        unservable(r)
    assert provider.requests == []
