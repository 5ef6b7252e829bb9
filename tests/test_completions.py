"""`POST /v1/completions` (OpenAI's legacy text completions) end to end: a real gateway over the real
SmolLM2 worker, driven by the real `openai` SDK, LlamaIndex's `OpenAILike` and litellm, with the
stand-in provider (tests/standin_provider.py) as the remote rung and the stand-in vLLM server
(tests/fake_vllm.py, url mode) as a GPU rung.

Two gateways, each started once for this module:
  lenient  smollm2 + remote: local answers are kept (policy routing, the legacy shape, bad inputs)
  strict   smollm2 -> vLLM -> remote, no local answer is good enough: escalation and privacy
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests import conftest
from tests.conftest import Server, remote_rung, repo_routing, repo_rung, start_gateway, wait_until
from tests.endpoint_servers import FakeEngine
from tests.standin_fixtures import STANDIN_KEY
from tests.standin_provider import StandinProvider, legacy_text

LOCAL = "smollm2-135m"
REMOTE = "frontier"
GPU = "gpu"
KEY_ENV = "LR_COMPLETIONS_KEY"
LENIENT = {"min_mean_logprob": -50.0, "min_tail_logprob": -50.0, "min_length_tokens": 0}
STRICT = {"min_mean_logprob": -0.01, "min_length_tokens": 0}
COUNT = "1, 2, 3, 4, 5, 6,"  # the model goes on counting: no early end of text
PARIS = "The capital of France is"


# -- gateways ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def provider() -> Iterator[StandinProvider]:
    with StandinProvider(api_key=STANDIN_KEY) as p:
        yield p


@pytest.fixture(autouse=True)
def fresh_provider(provider: StandinProvider) -> None:
    provider.set("ok")
    provider.requests.clear()


def _remote(provider: StandinProvider) -> dict[str, object]:
    return remote_rung(provider.base_url, KEY_ENV, read_timeout_s=30, total_timeout_s=60, max_retries=0)


@pytest.fixture(scope="module")
def lenient(tmp_path_factory: pytest.TempPathFactory, provider: StandinProvider) -> Iterator[Server]:
    models = [repo_rung(LOCAL, cache_prompt=False, max_score=0.45), _remote(provider)]
    text = conftest.config_text(models=models, routing=repo_routing(), cascade=LENIENT)
    srv = start_gateway(tmp_path_factory.mktemp("compl-lenient"), text, {KEY_ENV: STANDIN_KEY})
    yield srv
    srv.stop()
    assert STANDIN_KEY not in srv.log.read_text()


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A stand-in vLLM server started as an operator would: its root URL."""
    log = tmp_path_factory.mktemp("compl-vllm") / "fake.log"
    engine = FakeEngine(model="fake-org/Fake-7B", args=("--max-model-len", "2048"), log=log).start()
    try:
        yield engine.url
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def strict(
    tmp_path_factory: pytest.TempPathFactory, provider: StandinProvider, vllm_url: str
) -> Iterator[Server]:
    gpu = {"name": GPU, "engine": "vllm", "tier": 5, "model": "fake-org/Fake-7B", "url": vllm_url + "/v1"}
    models = [repo_rung(LOCAL, cache_prompt=False, max_score=0.45), gpu, _remote(provider)]
    text = conftest.config_text(models=models, routing=repo_routing(), cascade=STRICT)
    srv = start_gateway(tmp_path_factory.mktemp("compl-strict"), text, {KEY_ENV: STANDIN_KEY})
    yield srv
    srv.stop()


# -- helpers ----------------------------------------------------------------------------------------------


def sdk(srv: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def complete(
    srv: Server, headers: Mapping[str, str] | None = None, **kw: Any
) -> tuple[Any, Mapping[str, str]]:
    raw = sdk(srv).completions.with_raw_response.create(extra_headers=headers, **kw)
    return raw.parse(), raw.headers


def routed(h: Mapping[str, str]) -> tuple[str, str]:
    return h["x-localroute-model"], h["x-localroute-route"]


def audit_records(srv: Server, n: int) -> list[dict[str, Any]]:
    """The last `n` audit records (waits for them)."""

    def lines() -> list[str]:
        return srv.audit.read_text().splitlines() if srv.audit.exists() else []

    assert wait_until(lambda: len(lines()) >= n)
    return [json.loads(line) for line in lines()[-n:]]


def completion_calls(provider: StandinProvider) -> list[Any]:
    return [r for r in provider.requests if r.path == "/v1/completions"]


def post(srv: Server, body: Mapping[str, Any]) -> httpx.Response:
    return httpx.post(srv.url + "/v1/completions", json=body, timeout=300)


# -- the local rung: a raw completion, in OpenAI's legacy shape -------------------------------------------


def test_raw_prompt_is_completed_without_the_chat_template(lenient: Server, smollm2: Path) -> None:
    from llama_cpp import Llama

    r, h = complete(lenient, model="auto", prompt=PARIS, temperature=0, max_tokens=12, seed=7)
    assert routed(h) == (LOCAL, "policy:score<=0.45")
    assert r.object == "text_completion" and r.choices[0].index == 0
    llm = Llama(model_path=str(smollm2), n_ctx=2048, n_threads=2, n_batch=512, verbose=False)
    try:
        ref = llm.create_completion(PARIS, max_tokens=12, temperature=0, seed=7)
        prompt_tokens = len(llm.tokenize(PARIS.encode()))
    finally:
        llm.close()
    assert r.choices[0].text == ref["choices"][0]["text"]
    assert r.usage.prompt_tokens == prompt_tokens  # no template tokens around the prompt
    assert r.usage.completion_tokens == ref["usage"]["completion_tokens"]
    record = audit_records(lenient, 1)[0]
    assert (record["api"], record["model"], record["status"]) == ("completions", LOCAL, 200)


def test_max_tokens_defaults_to_16(lenient: Server, provider: StandinProvider) -> None:
    r, _ = complete(lenient, model=LOCAL, prompt=COUNT, temperature=0)
    assert r.usage.completion_tokens == 16
    assert r.choices[0].finish_reason == "length"
    assert not provider.requests


def test_empty_prompt_starts_a_new_document(lenient: Server) -> None:
    r, h = complete(lenient, model="auto", prompt="", max_tokens=3)
    assert h["x-localroute-model"] == LOCAL
    assert r.usage.prompt_tokens == 1 and r.usage.completion_tokens >= 1  # the BOS token, then text
    assert r.choices[0].finish_reason in ("stop", "length")


def test_stream_is_the_plain_answer_in_text_completion_chunks(lenient: Server) -> None:
    plain, _ = complete(lenient, model=LOCAL, prompt=COUNT, temperature=0, max_tokens=8)
    chunks = list(
        sdk(lenient).completions.create(
            model=LOCAL, prompt=COUNT, temperature=0, max_tokens=8, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    body = {"model": LOCAL, "prompt": COUNT, "max_tokens": 2, "stream": True}
    with httpx.stream("POST", lenient.url + "/v1/completions", json=body, timeout=300) as resp:
        events = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert all(json.loads(e[6:])["object"] == "text_completion" for e in events[:-1])


def test_echo_writes_the_prompt_back(lenient: Server) -> None:
    plain, _ = complete(lenient, model=LOCAL, prompt=PARIS, temperature=0, max_tokens=6)
    echoed, _ = complete(lenient, model=LOCAL, prompt=PARIS, temperature=0, max_tokens=6, echo=True)
    assert echoed.choices[0].text == PARIS + plain.choices[0].text
    chunks = list(
        sdk(lenient).completions.create(
            model=LOCAL, prompt=PARIS, temperature=0, max_tokens=6, echo=True, stream=True
        )
    )
    assert chunks[0].choices[0].text.startswith(PARIS)
    assert "".join(c.choices[0].text for c in chunks) == echoed.choices[0].text


def _check_logprobs(lp: Any, text: str, start: int, n: int) -> None:
    assert "".join(lp.tokens) == text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    offset = start
    for token, value, top, at in zip(
        lp.tokens, lp.token_logprobs, lp.top_logprobs, lp.text_offset, strict=True
    ):
        assert at == offset and value <= 0
        assert top[token] == value and 1 <= len(top) <= n + 1  # the sampled token is always listed
        assert max(top.values()) >= value  # alternatives are the likeliest tokens
        offset += len(token)


def test_logprobs_in_the_legacy_shape(lenient: Server) -> None:
    r, _ = complete(lenient, model=LOCAL, prompt=PARIS, temperature=0, max_tokens=8, logprobs=3)
    lp = r.choices[0].logprobs
    _check_logprobs(lp, r.choices[0].text, len(PARIS), 3)
    assert any(len(top) >= 3 for top in lp.top_logprobs)
    chunks = list(
        sdk(lenient).completions.create(
            model=LOCAL, prompt=PARIS, temperature=0, max_tokens=8, logprobs=3, stream=True
        )
    )
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert tokens == lp.tokens
    none, _ = complete(lenient, model=LOCAL, prompt=PARIS, max_tokens=2)
    assert none.choices[0].logprobs is None


def test_prompt_list_is_one_routed_request_per_prompt(lenient: Server) -> None:
    prompts = [PARIS, COUNT]
    singles = [complete(lenient, model="auto", prompt=p, temperature=0, max_tokens=5)[0] for p in prompts]
    r, h = complete(lenient, model="auto", prompt=prompts, temperature=0, max_tokens=5)
    assert [c.index for c in r.choices] == [0, 1]
    assert [c.text for c in r.choices] == [s.choices[0].text for s in singles]
    assert r.usage.total_tokens == sum(s.usage.total_tokens for s in singles)
    assert h["x-localroute-model"] == f"{LOCAL}, {LOCAL}" and len(h["x-request-id"].split(", ")) == 2
    records = audit_records(lenient, 2)
    assert [rec["api"] for rec in records] == ["completions", "completions"]
    assert records[0]["id"] != records[1]["id"]


# -- suffix, best_of and the remote rung --------------------------------------------------------------------


def test_suffix_is_refused_where_no_rung_serves_it(lenient: Server, provider: StandinProvider) -> None:
    r = post(lenient, {"model": LOCAL, "prompt": "def f(", "suffix": "return x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "suffix", r.text
    body = {"model": "auto", "prompt": "def f(", "suffix": "return x"}
    private = httpx.post(
        lenient.url + "/v1/completions", headers={"X-LocalRoute-Privacy": "private"}, json=body, timeout=60
    )
    assert private.status_code == 400 and private.json()["error"]["param"] == "suffix", private.text
    assert not provider.requests


def test_suffix_and_best_of_go_to_the_rung_that_serves_them(
    lenient: Server, provider: StandinProvider
) -> None:
    _, h = complete(lenient, model="auto", prompt="def f(", suffix="    return x\n", max_tokens=4)
    assert h["x-localroute-model"] == REMOTE
    _, h2 = complete(lenient, model="auto", prompt="Hello", best_of=2, max_tokens=4)
    assert h2["x-localroute-model"] == REMOTE
    first, second = (c.body for c in completion_calls(provider))
    assert first["suffix"] == "    return x\n" and "messages" not in first
    assert second["best_of"] == 2


def test_remote_rung_serves_the_legacy_endpoint(lenient: Server, provider: StandinProvider) -> None:
    prompt = "Once upon a time"
    r, h = complete(lenient, model=REMOTE, prompt=prompt, logprobs=2, user="u-1")
    assert routed(h) == (REMOTE, "explicit")
    assert r.choices[0].text == legacy_text(prompt)
    _check_logprobs(r.choices[0].logprobs, r.choices[0].text, len(prompt), 2)
    (call,) = completion_calls(provider)
    assert call.headers["authorization"] == f"Bearer {STANDIN_KEY}"
    assert call.body["prompt"] == prompt and call.body["logprobs"] == 2 and call.body["user"] == "u-1"
    assert call.body["max_tokens"] == 16 and "messages" not in call.body and "top_logprobs" not in call.body
    chunks = list(sdk(lenient).completions.create(model=REMOTE, prompt=prompt, stream=True, echo=True))
    assert "".join(c.choices[0].text for c in chunks) == prompt + legacy_text(prompt)


# -- other clients ------------------------------------------------------------------------------------------


def test_llamaindex_openailike_defaults_to_completions(lenient: Server, provider: StandinProvider) -> None:
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(api_base=lenient.url + "/v1", api_key="x", model="auto", max_tokens=8, max_retries=0,
                     timeout=300)  # fmt: skip
    resp = llm.complete(PARIS)
    assert resp.text.strip()
    record = audit_records(lenient, 1)[0]
    assert (record["api"], record["model"]) == ("completions", LOCAL)
    assert not provider.requests


def test_litellm_text_completion(
    lenient: Server, provider: StandinProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    resp = litellm.text_completion(
        model="openai/auto", api_base=lenient.url + "/v1", api_key="x", prompt=PARIS, max_tokens=6,
        temperature=0, num_retries=0,
    )  # fmt: skip
    plain, _ = complete(lenient, model="auto", prompt=PARIS, max_tokens=6, temperature=0)
    assert resp.choices[0].text == plain.choices[0].text
    assert [r["api"] for r in audit_records(lenient, 2)] == ["completions", "completions"]
    assert not provider.requests


# -- bad input: one 400 naming the field -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x"}, "model"),
        ({"model": "auto"}, "prompt"),
        ({"model": "auto", "prompt": [1, 2, 3]}, "prompt[0]"),
        ({"model": "auto", "prompt": []}, "prompt"),
        ({"model": "auto", "prompt": ["a", "b"], "stream": True}, "prompt"),
        ({"model": "auto", "prompt": "x", "logprobs": 6}, "logprobs"),
        ({"model": "auto", "prompt": "x", "logprobs": True}, "logprobs"),
        ({"model": "auto", "prompt": "x", "echo": True, "logprobs": 1}, "echo"),
        ({"model": "auto", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"model": "auto", "prompt": "x", "n": 2, "best_of": 1}, "best_of"),
        ({"model": "auto", "prompt": "x", "best_of": 2, "stream": True}, "best_of"),
        ({"model": "auto", "prompt": "x", "temperature": 3}, "temperature"),
        ({"model": "auto", "prompt": "x", "logit_bias": {"a": 1}}, "logit_bias"),
        ({"model": "auto", "prompt": "x", "messages": [{"role": "user", "content": "x"}]}, "messages"),
        ({"model": "auto", "prompt": "x", "top_logprobs": 2}, "top_logprobs"),
        (
            {"model": "auto", "prompt": "x", "stream_options": {"include_usage": "yes"}},
            "stream_options.include_usage",
        ),
    ],
)
def test_bad_input_is_a_400_naming_the_field(lenient: Server, body: dict[str, Any], param: str) -> None:
    r = post(lenient, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert "Traceback" not in r.text and "/" not in error["message"].replace("'/'", "")


def test_a_chat_request_cannot_set_prompt(lenient: Server) -> None:
    body = {"model": "auto", "messages": [{"role": "user", "content": "x"}], "prompt": "y"}
    r = httpx.post(lenient.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text


# -- escalation and privacy on the strict ladder: smollm2 -> vLLM -> remote --------------------------------


def test_an_unsure_local_completion_escalates(strict: Server, provider: StandinProvider) -> None:
    prompt = "Tell me a story about"
    r, h = complete(strict, model="auto", prompt=prompt, max_tokens=6)
    assert h["x-localroute-model"] == REMOTE and h["x-localroute-escalations"] == "2"
    assert "escalated:low_confidence" in h["x-localroute-route"]
    assert r.choices[0].text == "".join(re.findall(r"\s*\S+", legacy_text(prompt))[:6])
    (call,) = completion_calls(provider)
    assert call.body["prompt"] == prompt and "logprobs" not in call.body  # the remote rung is not judged
    chunks = list(sdk(strict).completions.create(model="auto", prompt=prompt, max_tokens=6, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text
    assert len(completion_calls(provider)) == 2
    record = audit_records(strict, 1)[0]
    assert record["api"] == "completions" and [a["model"] for a in record["attempts"]] == [LOCAL, GPU, REMOTE]


def test_vllm_rung_serves_lists_n_and_logprobs(strict: Server, provider: StandinProvider) -> None:
    r, h = complete(strict, model=GPU, prompt=["alpha", "beta"], n=2, logprobs=1, max_tokens=4)
    assert h["x-localroute-model"] == f"{GPU}, {GPU}"
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.text for c in r.choices] == [" vllm continuation of: alpha"] * 2 + [
        " vllm continuation of: beta"
    ] * 2
    _check_logprobs(r.choices[2].logprobs, r.choices[2].text, len("beta"), 1)
    suffix = post(strict, {"model": GPU, "prompt": "x", "suffix": "y"})
    assert suffix.status_code == 400 and suffix.json()["error"]["param"] == "suffix"
    assert not provider.requests


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("prompt", "headers"),
    [
        ("Summarize our plan for the launch", {"X-LocalRoute-Privacy": "private"}),
        ("Write back to ann.smith@example.com about", {}),
    ],
)
def test_private_completions_never_leave_the_machine(
    strict: Server, provider: StandinProvider, prompt: str, headers: dict[str, str], stream: bool
) -> None:
    if stream:
        raw = sdk(strict).completions.with_raw_response.create(
            model="auto", prompt=prompt, max_tokens=6, stream=True, extra_headers=headers
        )
        text = "".join(c.choices[0].text for c in raw.parse())
        h = raw.headers
    else:
        r, h = complete(strict, headers, model="auto", prompt=prompt, max_tokens=6)
        text = r.choices[0].text
    assert h["x-localroute-model"] == GPU  # the last local rung: kept, never sent up
    assert text.startswith(" vllm continuation of:")
    assert provider.requests == []
    record = audit_records(strict, 1)[0]
    assert record["privacy"]["class"] == "private" and record["api"] == "completions"


# -- the conversions, without a gateway -------------------------------------------------------------------


def test_a_judged_body_keeps_the_clients_alternatives() -> None:
    from localroute.protocol.completions import parse_completion_request, wire_body

    req = parse_completion_request(b'{"model": "auto", "prompt": "x", "logprobs": 3}').internal("x")
    body = req.engine_body("m", 16)
    body["logprobs"] = True  # what the router sets on a rung it judges
    assert wire_body(body) == {"model": "m", "prompt": "x", "max_tokens": 16, "stream": False, "logprobs": 3}
    plain = parse_completion_request(b'{"model": "auto", "prompt": "x"}').internal("x").engine_body("m", 16)
    assert "logprobs" not in wire_body(plain) and "messages" not in plain
    judged = {**plain, "logprobs": True}
    assert wire_body(judged)["logprobs"] == 0  # the sampled token's logprob, no alternatives


def test_legacy_answer_round_trips_through_the_chat_form() -> None:
    from localroute.protocol.text_completion import CompletionsSurface, as_chat

    legacy = {
        "id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
        "choices": [{"text": " a b", "index": 1, "finish_reason": "stop", "logprobs": {
            "tokens": [" a", " b"], "token_logprobs": [-0.5, -0.25],
            "top_logprobs": [{" a": -0.5, " c": -1.0}, {" b": -0.25}], "text_offset": [3, 5]}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }  # fmt: skip
    chat = as_chat(legacy)
    assert chat["choices"][0]["message"]["content"] == " a b"
    assert [e["logprob"] for e in chat["choices"][0]["logprobs"]["content"]] == [-0.5, -0.25]
    back = CompletionsSurface("pre", echo=True, logprobs=True, base=4).answer(chat)
    choice = back["choices"][0]
    assert choice["text"] == "pre a b" and choice["index"] == 5
    assert choice["logprobs"] == {**legacy["choices"][0]["logprobs"], "text_offset": [3, 5]}
    assert back["usage"] == legacy["usage"] and back["object"] == "text_completion"
