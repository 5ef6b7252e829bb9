"""`POST /v1/embeddings` end to end: a real gateway, the real `openai` SDK and LangChain, a vLLM
embedding rung (tests/fake_vllm.py launched as `vllm serve --runner pooling`: local, as a GPU box's
would be) and remote embedding rungs on the stand-in provider (tests/standin_provider.py).

Spaces in the main gateway: `minilm` (a vLLM rung, then a provider hosting the same weights), `oai-small`
(text-embedding-3-small: matryoshka, remote only) and `ada` (text-embedding-ada-002: fixed size).
Vectors from both stand-ins are `fake_vllm.vector(text, model)`, so a test knows the exact vector.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import socket
import struct
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from localroute.config.models import RemoteModel
from localroute.config.privacy import ALL_KINDS
from localroute.config.schema import parse_config
from localroute.errors import ConfigError, InvalidRequestError, UpstreamError
from localroute.privacy.detect import Detector
from localroute.privacy.guard import CURRENT, EgressGuard, Privacy, PrivacyViolationError
from localroute.protocol import embeddings as shape
from localroute.rungs import vllm_embed
from localroute.rungs.remote_embed import RemoteEmbedder
from localroute.rungs.vllm import task_args
from tests import fake_vllm
from tests.conftest import (
    ROOT,
    Server,
    answering,
    config_text,
    free_port,
    repo_rung,
    start_gateway,
    wait_until,
)
from tests.fake_vllm import install, vector
from tests.standin_provider import StandinProvider

KEY, KEY_ENV = "sk-embed-standin-5c1d", "EMBED_STANDIN_KEY"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
EMAIL = "Contract for alice.martin@example.com, renewal in May."
IBAN = "Refund to DE89 3704 0044 0532 0130 00 by Friday."


def chat_rung() -> dict[str, object]:
    """The chat ladder's one rung (the config needs one), never loaded by these tests."""
    repo = tomllib.loads((ROOT / "models.toml").read_text())
    return {**next(m for m in repo["models"] if m["name"] == "smollm2-135m"), "preload": False}


def remote(name: str, model: str, dims: int, **over: object) -> dict[str, object]:
    return {"name": name, "engine": "remote", "task": "embed", "tier": 10, "base_url": "", "model": model,
            "api_key_env": KEY_ENV, "dimensions": dims, "max_retries": 0, **over}  # fmt: skip


def models(base_url: str, local: dict[str, object]) -> list[dict[str, object]]:
    return [
        chat_rung(),
        {"name": "minilm-gpu", "engine": "vllm", "task": "embed", "space": "minilm", "tier": 5,
         "model": MINILM, "dimensions": 384, "max_input_tokens": 512, "n_ctx": 512,
         "price": {"per_hour": 1.0}, **local},
        remote("minilm-remote", MINILM, 384, space="minilm", base_url=base_url,
               price={"input_per_mtok": 0.5}),
        remote("oai-small", "text-embedding-3-small", 1536, base_url=base_url, dimensions_flexible=True,
               price={"input_per_mtok": 0.02}),
        remote("ada", "text-embedding-ada-002", 1536, base_url=base_url, price={"input_per_mtok": 0.1}),
    ]  # fmt: skip


def serve(tmp: Path, provider: StandinProvider, local: dict[str, object]) -> Server:
    bin_dir = tmp / "bin"
    install(bin_dir)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "LOCALROUTE_ASSUME_GPU": "1",
           "FAKE_VLLM_ARGV_FILE": str(tmp / "argv.jsonl"), KEY_ENV: KEY,
           "FAKE_VLLM_REQUESTS_FILE": str(tmp / "seen.jsonl")}  # fmt: skip
    text = config_text(models=models(provider.base_url, local), cascade={"enabled": False})
    return start_gateway(tmp, text, env, until=answering)


@pytest.fixture(scope="module")
def provider() -> Iterator[StandinProvider]:
    with StandinProvider(api_key=KEY) as p:
        yield p


@pytest.fixture
def standin(provider: StandinProvider) -> StandinProvider:
    provider.requests.clear()
    provider.set("ok")
    return provider


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, provider: StandinProvider) -> Iterator[Server]:
    """The local rung is `vllm serve` launched by the gateway (the stand-in, first on PATH)."""
    srv = serve(tmp_path_factory.mktemp("embed-gw"), provider, {"launch": True})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def down(tmp_path_factory: pytest.TempPathFactory, provider: StandinProvider) -> Iterator[Server]:
    """The same spaces, but the local rung's server (`url`) is not running."""
    srv = serve(
        tmp_path_factory.mktemp("embed-down"), provider, {"url": f"http://127.0.0.1:{free_port()}/v1"}
    )
    yield srv
    srv.stop()


def sdk(srv: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def post(srv: Server, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(srv.url + "/v1/embeddings", json=body, headers=headers, timeout=60)


def close(a: list[float], b: list[float], tol: float = 1e-6) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def audit(srv: Server, rid: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def look() -> bool:
        if srv.audit.exists():
            found[:] = [r for r in map(json.loads, srv.audit.read_text().splitlines()) if r["id"] == rid]
        return bool(found)

    assert wait_until(look, timeout=10), f"no audit record for {rid}"
    return found[0]


def embedded(standin: StandinProvider) -> list[Any]:
    """What the provider was asked to embed."""
    return [r.body for r in standin.requests if r.path == "/v1/embeddings"]


# -- the SDK, input shapes and encodings ---------------------------------------------------------------------


def test_sdk_string_default_base64_is_decoded_to_the_exact_vector(
    gw: Server, standin: StandinProvider
) -> None:
    raw = sdk(gw).embeddings.with_raw_response.create(model="auto", input="The cat sat on the mat")
    res = raw.parse()  # the SDK asked for base64 (its default) and decoded it with numpy
    assert res.model == "minilm-gpu" and raw.headers["x-localroute-model"] == "minilm-gpu"
    assert raw.headers["x-request-id"].startswith("req-")
    assert len(res.data) == 1 and res.data[0].index == 0
    assert close(res.data[0].embedding, vector("The cat sat on the mat", MINILM, 384))
    assert res.usage.prompt_tokens == res.usage.total_tokens > 0
    assert embedded(standin) == []  # the cheapest rung of the default space served it: nothing left


def test_float_and_base64_carry_the_same_vectors(gw: Server) -> None:
    texts = ["first text", "second, different text", "third"]
    floats = post(gw, {"model": "minilm", "input": texts, "encoding_format": "float"}).json()
    b64 = post(gw, {"model": "minilm", "input": texts, "encoding_format": "base64"}).json()
    assert [d["index"] for d in floats["data"]] == [0, 1, 2]
    for i, text in enumerate(texts):
        unpacked = list(
            struct.unpack("<384f", base64.b64decode(b64["data"][i]["embedding"]))
        )  # little-endian
        assert close(floats["data"][i]["embedding"], vector(text, MINILM, 384))
        assert close(unpacked, floats["data"][i]["embedding"])
        assert abs(norm(unpacked) - 1) < 1e-5


def test_token_arrays_one_and_many(gw: Server, standin: StandinProvider) -> None:
    client = sdk(gw)
    one = client.embeddings.create(model="minilm", input=[101, 7592, 102], encoding_format="float")
    many = client.embeddings.create(model="minilm", input=[[101, 7592, 102], [5, 6]], encoding_format="float")
    assert close(one.data[0].embedding, vector("t101 t7592 t102", MINILM, 384))
    assert close(many.data[1].embedding, vector("t5 t6", MINILM, 384))
    assert many.usage.prompt_tokens == 5
    assert embedded(standin) == []  # token ids cannot be scanned: they never leave the machine


def test_list_of_strings_is_served_in_order_by_the_sdk(gw: Server) -> None:
    texts = [f"document number {i} about topic {i % 3}" for i in range(40)]
    res = sdk(gw).embeddings.create(model="auto", input=texts)
    assert [d.index for d in res.data] == list(range(40))
    assert all(close(d.embedding, vector(t, MINILM, 384)) for d, t in zip(res.data, texts, strict=True))


# -- dimensions ---------------------------------------------------------------------------------------------


def test_dimensions_served_by_truncation_where_the_space_allows(gw: Server, standin: StandinProvider) -> None:
    res = sdk(gw).embeddings.create(model="oai-small", input="short vectors please", dimensions=256)
    full = vector("short vectors please", "text-embedding-3-small", 1536)[:256]
    assert len(res.data[0].embedding) == 256 and abs(norm(res.data[0].embedding) - 1) < 1e-5
    assert close(res.data[0].embedding, [x / norm(full) for x in full], 1e-5)
    # The provider was asked for its native vectors: the gateway truncated, as it would for any rung.
    assert [b.get("dimensions") for b in embedded(standin)] == [None]
    assert embedded(standin)[0]["model"] == "text-embedding-3-small" and "stream" not in embedded(standin)[0]


@pytest.mark.parametrize(("model", "dims"), [("ada", 256), ("minilm", 128), ("oai-small", 2000)])
def test_dimensions_refused_where_the_model_cannot(
    gw: Server, standin: StandinProvider, model: str, dims: int
) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        sdk(gw).embeddings.create(model=model, input="anything", dimensions=dims)
    assert ei.value.param == "dimensions" and "dimensions" in ei.value.message
    assert embedded(standin) == []


# -- LangChain ----------------------------------------------------------------------------------------------


def test_langchain_openai_embeddings(gw: Server) -> None:
    from langchain_openai import OpenAIEmbeddings

    # check_embedding_ctx_length=False: its default tokenises with tiktoken, which downloads its
    # encoding on first use (no internet here); off, it sends the texts as they are.
    emb = OpenAIEmbeddings(model="auto", base_url=gw.url + "/v1", api_key="unused",  # type: ignore[arg-type]
                           check_embedding_ctx_length=False, max_retries=0)  # fmt: skip
    docs = emb.embed_documents(["cats purr and sleep", "dogs bark", "cats sleep all day"])
    query = emb.embed_query("cats sleep")
    assert [len(d) for d in docs] == [384, 384, 384] and len(query) == 384
    score = [sum(a * b for a, b in zip(query, d, strict=True)) for d in docs]
    assert score[2] > score[1] and score[0] > score[1]  # texts sharing words are closer
    assert close(query, vector("cats sleep", MINILM, 384), 1e-6)


# -- routing: within a space, never across ------------------------------------------------------------------


def test_fallback_within_the_space_when_the_local_rung_is_down(
    down: Server, standin: StandinProvider
) -> None:
    raw = sdk(down).embeddings.with_raw_response.create(
        model="auto", input="public text", encoding_format="float"
    )
    res = raw.parse()
    assert res.model == "minilm-remote" and raw.headers["x-localroute-route"] == "fallback:minilm"
    assert close(res.data[0].embedding, vector("public text", MINILM, 384))  # the same space's vectors
    assert [b["model"] for b in embedded(standin)] == [MINILM]
    rec = audit(down, raw.headers["x-request-id"])
    assert [(a["model"], a["outcome"]) for a in rec["attempts"]] == [
        ("minilm-gpu", "error"),
        ("minilm-remote", "ok"),
    ]
    assert rec["api"] == "embeddings" and rec["model"] == "minilm-remote" and rec["local"] is False


def test_never_another_space_when_the_space_is_down(down: Server, standin: StandinProvider) -> None:
    standin.set("fail", status=503)
    with pytest.raises(openai.APIStatusError) as ei:
        sdk(down).embeddings.create(model="auto", input="public text")
    assert ei.value.status_code == 503
    # Only the default space's provider model was tried: never text-embedding-3-small or ada.
    assert [b["model"] for b in embedded(standin)] == [MINILM]


def test_a_client_error_is_not_retried_on_another_rung(gw: Server, standin: StandinProvider) -> None:
    long = " ".join(["word"] * 600)  # past the vLLM rung's 512-token context
    with pytest.raises(openai.BadRequestError) as ei:
        sdk(gw).embeddings.create(model="minilm", input=["short", long])
    assert ei.value.code == "context_length_exceeded" and ei.value.param == "input"
    assert embedded(standin) == []


def test_token_arrays_longer_than_the_model_takes_are_refused_naming_the_item(gw: Server) -> None:
    r = post(gw, {"model": "minilm", "input": [[1, 2], list(range(600))]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    assert "item 1" in r.json()["error"]["message"]


def test_a_named_remote_rung_and_its_price(gw: Server, standin: StandinProvider) -> None:
    raw = sdk(gw).embeddings.with_raw_response.create(model="minilm-remote", input="four words of text")
    assert raw.parse().model == "minilm-remote"
    rec = audit(gw, raw.headers["x-request-id"])
    assert rec["api"] == "embeddings" and rec["status"] == 200 and rec["tokens"]["prompt"] == 4
    assert rec["cost_usd"] == pytest.approx(4 * 0.5 / 1e6)
    assert rec["privacy"]["class"] == "public"
    metrics = httpx.get(gw.url + "/metrics", timeout=10).text
    assert 'api="embeddings"' in metrics
    stats = httpx.get(gw.url + "/v1/localroute/stats", timeout=30)
    assert stats.status_code == 200 and "minilm-remote" in stats.text


# -- privacy: the tripwire ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "headers", "reason"),
    [
        ("quarterly plan", {"X-LocalRoute-Privacy": "private"}, "header"),
        (EMAIL, {}, "pii"),
        (IBAN, {}, "pii"),
    ],
)
def test_private_input_is_embedded_locally(
    gw: Server, standin: StandinProvider, text: str, headers: dict[str, str], reason: str
) -> None:
    # Named: the remote rung of the space. Private input goes to the space's local rung instead.
    r = post(
        gw,
        {"model": "minilm-remote", "input": ["a public chunk", text], "encoding_format": "float"},
        **headers,
    )
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "minilm-gpu" and close(
        r.json()["data"][1]["embedding"], vector(text, MINILM, 384)
    )
    assert embedded(standin) == []
    rec = audit(gw, r.headers["x-request-id"])
    assert rec["privacy"]["class"] == "private" and rec["privacy"]["reason"] == reason
    assert not any(a["remote"] for a in rec["attempts"])


@pytest.mark.parametrize("text", [EMAIL, IBAN])
def test_private_input_fails_closed_when_no_local_rung_can(
    down: Server, standin: StandinProvider, text: str
) -> None:
    r = post(down, {"model": "auto", "input": text})
    assert r.status_code == 503 and r.json()["error"]["code"] == "private_request_unservable"
    r = post(down, {"model": "oai-small", "input": ["fine", text]})  # a space with no local rung at all
    assert r.status_code == 400 and r.json()["error"]["code"] == "private_request_unservable"
    assert embedded(standin) == []


@pytest.fixture(scope="module")
def far(tmp_path_factory: pytest.TempPathFactory, provider: StandinProvider) -> Iterator[Server]:
    """The space's vLLM rung runs on a Ray cluster outside the trusted networks (loopback only)."""
    ray = {"launch": True, "distributed_executor_backend": "ray", "ray_address": "10.0.0.1:6379"}
    srv = serve(tmp_path_factory.mktemp("embed-far"), provider, ray)
    yield srv
    srv.stop()


def test_private_input_never_reaches_an_untrusted_vllm_embedder(
    far: Server, standin: StandinProvider
) -> None:
    seen = far.log.parent / "seen.jsonl"
    r = post(far, {"model": "auto", "input": ["a public chunk", EMAIL]})
    assert r.status_code == 503 and r.json()["error"]["code"] == "private_request_unservable", r.text
    assert embedded(standin) == []
    assert not seen.exists() or EMAIL not in seen.read_text()  # not one private input left
    public = post(far, {"model": "minilm-gpu", "input": "a public chunk", "encoding_format": "float"})
    assert public.status_code == 200, public.text
    assert "a public chunk" in seen.read_text()  # the tripwire file does record what reaches it
    rec = audit(far, public.headers["x-request-id"])
    assert rec["model"] == "minilm-gpu" and rec["local"] is False  # answered, outside the trust boundary
    assert "vllm model minilm-gpu: not local for private requests" in far.log.read_text()


# -- bad input: a 400 naming the field ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "auto"}, "input"),
        ({"input": "x"}, "model"),
        ({"model": "auto", "input": ""}, "input"),
        ({"model": "auto", "input": ["ok", ""]}, "input"),
        ({"model": "auto", "input": []}, "input"),
        ({"model": "auto", "input": ["x"] * 2049}, "input"),
        ({"model": "auto", "input": [1, -1]}, "input"),
        ({"model": "auto", "input": [[1], []]}, "input"),
        ({"model": "auto", "input": ["x", 1]}, "input"),
        ({"model": "auto", "input": {"text": "x"}}, "input"),
        ({"model": "auto", "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "auto", "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": "auto", "input": "x", "dimensions": "8"}, "dimensions"),
        ({"model": "auto", "input": "x", "stream": True}, "stream"),
        ({"model": "smollm2-135m", "input": "x"}, "model"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(gw: Server, body: dict[str, Any], param: str) -> None:
    r = post(gw, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and param in err["message"]
    assert "Traceback" not in r.text and "/" not in err["message"].replace("/v1/", "")


def test_unknown_model_is_a_404_listing_the_embedding_models(gw: Server) -> None:
    with pytest.raises(openai.NotFoundError) as ei:
        sdk(gw).embeddings.create(model="no-such-model", input="x")
    assert ei.value.code == "model_not_found" and "minilm-gpu" in ei.value.message


def test_chat_refuses_an_embedding_model(gw: Server) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        sdk(gw).chat.completions.create(model="minilm-gpu", messages=[{"role": "user", "content": "hi"}])
    assert ei.value.param == "model" and "embedding model" in ei.value.message


# -- models and the launched server -------------------------------------------------------------------------


def test_models_list_says_which_models_embed(gw: Server) -> None:
    owners = {m.id: m.owned_by for m in sdk(gw).models.list()}
    assert owners["smollm2-135m"] == "localroute" and owners["auto"] == "localroute"
    for name in ("minilm-gpu", "minilm-remote", "oai-small", "ada", "minilm"):  # `minilm`: a space
        assert owners[name] == "localroute:embeddings"
    assert sdk(gw).models.retrieve("minilm").owned_by == "localroute:embeddings"


def test_launched_vllm_rung_runs_a_pooling_server(gw: Server) -> None:
    post(gw, {"model": "minilm-gpu", "input": "start it"})
    lines = (gw.log.parent / "argv.jsonl").read_text().splitlines()
    argv = [json.loads(line)["argv"] for line in lines if json.loads(line)["model"] == MINILM]
    assert argv and argv[0][argv[0].index("--runner") + 1] == "pooling"
    assert gw.health()["engines"]["minilm-gpu"]["state"] == "ready"  # type: ignore[index]


# -- config ------------------------------------------------------------------------------------------------


def _config(*embed: dict[str, object]) -> str:
    return config_text(models=[chat_rung(), *embed])


def _rung(name: str, **over: object) -> dict[str, object]:
    return {"name": name, "engine": "vllm", "task": "embed", "model": MINILM, "url": "http://127.0.0.1:9",
            "dimensions": 384, **over}  # fmt: skip


def test_embedding_rungs_are_off_the_chat_ladder_and_auto_is_the_cheapest_space() -> None:
    cfg = parse_config(
        _config(_rung("b", tier=7), _rung("a", tier=3, space="s"), _rung("c", tier=3, space="s"))
    )
    assert [m.name for m in cfg.ladder()] == ["smollm2-135m"]
    assert [m.name for m in cfg.embedders()] == ["a", "c", "b"] and cfg.default_space() == "s"


@pytest.mark.parametrize(
    ("rungs", "words"),
    [
        ([_rung("a", space="s"), _rung("b", space="s", dimensions=768)], "share the embedding space"),
        ([_rung("a", space="smollm2-135m")], "is the name of a chat model"),
        ([_rung("a"), _rung("b", space="a", dimensions=384), _rung("c", space="b")], "which is in space"),
        ([{k: v for k, v in _rung("a").items() if k != "dimensions"}], "needs `dimensions`"),
    ],
)
def test_config_refuses_what_would_mix_spaces(rungs: list[dict[str, object]], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_config(_config(*rungs))


def test_embedding_fields_on_a_chat_rung_are_refused() -> None:
    with pytest.raises(ConfigError, match="apply only to embedding rungs"):
        parse_config(config_text(models=[{**chat_rung(), "dimensions": 384}]))


def test_vllm_task_flag_yields_to_the_operators() -> None:
    cfg = parse_config(_config(_rung("a"), _rung("b", extra_args=["--task", "embed"], space="a")))
    a, b = cfg.embedders()
    assert task_args(a) == ["--runner", "pooling"]  # type: ignore[arg-type]
    assert task_args(b) == []  # type: ignore[arg-type]


# -- the real local engine (all-MiniLM-L6-v2 in a llama.cpp worker) in a space with a vLLM rung -------------

LOCAL = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory, provider: StandinProvider) -> Iterator[Server]:
    """The repo's MiniLM rung, cheapest in space `minilm`; the vLLM stand-in and the provider behind it."""
    tmp = tmp_path_factory.mktemp("embed-real")
    rungs = models(provider.base_url, {"launch": True})
    rungs.insert(1, {**repo_rung(LOCAL), "space": "minilm", "threads": 1})
    bin_dir = tmp / "bin"
    install(bin_dir)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "LOCALROUTE_ASSUME_GPU": "1",
        KEY_ENV: KEY,
    }
    ready = lambda h: h["engines"].get(LOCAL, {}).get("state") == "ready"  # noqa: E731
    srv = start_gateway(tmp, config_text(models=rungs, cascade={"enabled": False}), env, until=ready)
    yield srv
    srv.stop()


def test_the_real_local_rung_serves_its_space_and_is_charged_its_compute(
    real: Server, standin: StandinProvider
) -> None:
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]
    raw = sdk(real).embeddings.with_raw_response.create(model="auto", input=texts)  # base64, decoded
    res = raw.parse()
    assert res.model == LOCAL and raw.headers["x-localroute-route"] == "embed:minilm"
    vecs = [d.embedding for d in res.data]
    assert all(len(v) == 384 and abs(norm(v) - 1) < 1e-3 for v in vecs)
    sim = [sum(a * b for a, b in zip(vecs[0], v, strict=True)) for v in vecs[1:]]
    assert sim[0] > sim[1]  # the real model: eating food is nearer eating bread than carrying a baby
    floats = post(real, {"model": "minilm", "input": texts, "encoding_format": "float"}).json()
    assert all(close(f["embedding"], v, 1e-5) for f, v in zip(floats["data"], vecs, strict=True))
    rec = audit(real, raw.headers["x-request-id"])
    assert rec["api"] == "embeddings" and rec["local"] is True and rec["model"] == LOCAL
    assert rec["tokens"]["prompt"] == res.usage.prompt_tokens > len(texts)
    assert rec["compute_s"] > 0 and rec["cost_usd"] == pytest.approx(rec["compute_s"] * 0.02 / 3600, rel=1e-3)
    # The baseline: the same tokens at the dearest embedding rung's input price (minilm-remote's 0.5/M).
    assert rec["baseline_usd"] == pytest.approx(res.usage.prompt_tokens * 0.5 / 1e6)
    assert embedded(standin) == []


def test_the_real_local_rung_keeps_private_token_ids_and_refuses_other_sizes(
    real: Server, standin: StandinProvider
) -> None:
    ids = [101, 1037, 2158, 2003, 5983, 2833, 1012, 102]  # BERT's ids for "a man is eating food."
    r = post(real, {"model": "minilm-remote", "input": [ids], "encoding_format": "float"})
    assert r.status_code == 200 and r.json()["model"] == LOCAL, r.text
    text = post(
        real, {"model": "minilm", "input": "A man is eating food.", "encoding_format": "float"}
    ).json()
    assert close(r.json()["data"][0]["embedding"], text["data"][0]["embedding"], 1e-4)
    r = post(real, {"model": LOCAL, "input": "x", "dimensions": 128})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"
    assert embedded(standin) == []


# -- the rungs on their own ----------------------------------------------------------------------------------


def _remote_embedder(base_url: str, **over: object) -> RemoteEmbedder:
    cfg = RemoteModel.model_validate(remote("r", "text-embedding-3-small", 1536, base_url=base_url, **over))
    return RemoteEmbedder(cfg, egress_guard=EgressGuard(Detector(ALL_KINDS)), env={KEY_ENV: KEY})


def test_remote_rung_retries_what_cannot_have_answered_and_maps_errors(standin: StandinProvider) -> None:
    rung = _remote_embedder(standin.base_url, max_retries=1)
    wrong = RemoteEmbedder(
        rung.cfg, egress_guard=EgressGuard(Detector(ALL_KINDS)), env={KEY_ENV: "sk-wrong-1"}
    )
    body = {"model": "r", "input": ["one", "two"]}

    async def scenario() -> None:
        CURRENT.set(Privacy(False, "public-header"))  # as the gateway marks a public request
        try:
            standin.set("fail", status=503, times=1)
            result = await rung.embed(body)
            assert [len(d["embedding"]) for d in result["data"]] == [1536, 1536]
            assert len(embedded(standin)) == 2  # the 503, then the retry
            assert embedded(standin)[-1] == {"model": "text-embedding-3-small", "input": ["one", "two"]}
            standin.set("fail", status=400, message="'$.input' is invalid.", times=1)
            with pytest.raises(InvalidRequestError):
                await rung.embed(body)
            with pytest.raises(UpstreamError) as ei:
                await wrong.embed(body)
            assert ei.value.code == "remote_auth_failed" and "sk-wrong-1" not in ei.value.message
        finally:
            await rung.aclose()
            await wrong.aclose()

    asyncio.run(scenario())


def test_remote_rung_body_passes_the_egress_guard(standin: StandinProvider) -> None:
    rung = _remote_embedder(standin.base_url)

    async def scenario() -> None:
        try:
            CURRENT.set(Privacy(False, "public-header"))
            with pytest.raises(PrivacyViolationError):  # public, yet it carries an email
                await rung.embed({"model": "r", "input": ["fine", EMAIL]})
            CURRENT.set(Privacy(True, "header"))
            with pytest.raises(PrivacyViolationError):
                await rung.embed({"model": "r", "input": ["nothing detectable"]})
        finally:
            await rung.aclose()

    asyncio.run(scenario())
    assert embedded(standin) == []


def test_vllm_server_that_is_not_a_pooling_runner_is_an_upstream_error(tmp_path: Path) -> None:
    port = free_port()
    with (tmp_path / "fake.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(Path(fake_vllm.__file__)), "serve", MINILM, "--host", "127.0.0.1",
             "--port", str(port), "--runner", "generate"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        cfg = parse_config(_config(_rung("g", url=f"http://127.0.0.1:{port}/v1")))
        rung = vllm_embed.from_config(cfg, cfg.embedders()[0], tmp_path)  # type: ignore[arg-type]
        up = wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
                        if _listening(port) else False, timeout=30, every=0.1)  # fmt: skip
        assert up, (tmp_path / "fake.log").read_text()

        async def call() -> None:
            try:
                await rung.embed({"model": "g", "input": ["x"]})
            finally:
                await rung.aclose()

        with pytest.raises(UpstreamError) as ei:
            asyncio.run(call())
        assert ei.value.code == "upstream_not_embedding" and ei.value.status == 502
    finally:
        proc.terminate()
        proc.wait(10)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_tier_header_narrows_the_rungs_within_the_space(gw: Server, standin: StandinProvider) -> None:
    r = post(
        gw, {"model": "auto", "input": "hello", "encoding_format": "float"}, **{"X-LocalRoute-Tier": "remote"}
    )
    assert r.status_code == 200 and r.json()["model"] == "minilm-remote"
    assert [b["model"] for b in embedded(standin)] == [MINILM]
    r = post(gw, {"model": "ada", "input": "hello"}, **{"X-LocalRoute-Tier": "local"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "X-LocalRoute-Tier"
    assert len(embedded(standin)) == 1


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ([{"index": 0, "embedding": [0.1, 0.2]}], "one vector for two inputs"),
        ([{"index": 0, "embedding": [0.1, 0.2]}, {"index": 0, "embedding": [0.3, 0.4]}], "index twice"),
        ([{"index": 0, "embedding": [0.1]}, {"index": 1, "embedding": [0.3, 0.4]}], "wrong size"),
        ([{"index": 0, "embedding": [0.1, math.nan]}, {"index": 1, "embedding": [0.3, 0.4]}], "NaN"),
        ([{"index": 0, "embedding": [0.1, "0.2"]}, {"index": 1, "embedding": [0.3, 0.4]}], "a string"),
        ([{"index": 0, "embedding": "AAAA"}, {"index": 1, "embedding": [0.3, 0.4]}], "not floats"),
    ],
)
def test_a_rungs_malformed_vectors_are_a_502(data: list[dict[str, Any]], why: str) -> None:
    with pytest.raises(UpstreamError) as ei:
        shape.vectors({"data": data}, 2, 2, "Model 'm'")
    assert ei.value.status == 502 and ei.value.code == "upstream_malformed", why


def test_vectors_come_back_in_input_order_and_shaped() -> None:
    got = shape.vectors(
        {"data": [{"index": 1, "embedding": [0.0, 2]}, {"index": 0, "embedding": [3.0, 4.0]}]}, 2, 2, "m"
    )
    assert got == [[3.0, 4.0], [0.0, 2]]
    body = shape.answer(got, model="m", size=1, fmt="float", prompt_tokens=7)
    assert [d["embedding"] for d in body["data"]] == [
        [1.0],
        [0.0],
    ]  # truncated to 1, re-normalised (0 stays 0)
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7} and body["model"] == "m"
