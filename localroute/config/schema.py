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
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from localroute.config.feedback import FeedbackConfig
from localroute.config.models import (
    DEFAULT_MODELS_DIR,
    FORBID,
    ConvertSource,
    LlamaCppModel,
    ModelConfig,
    ModelName,
    PathSource,
    PyPISource,
    space_of,
)
from localroute.config.privacy import APIKey, PrivacyConfig
from localroute.config.routing import RoutingConfig
from localroute.config.state import StateConfig
from localroute.errors import ConfigError


def _budget(value: str) -> str:
    if not re.fullmatch(r"\s*(\d+(\.\d+)?)\s*(%|[KMGT]i?B|B)\s*", value):
        raise ValueError("expected a share of RAM like '60%' or a size like '8GiB' / '512MiB'")
    return value.strip()


class ResourcesConfig(BaseModel):
    """What localroute may use on this box."""

    model_config = FORBID
    # Memory the loaded local models may take together (estimated, then checked against RSS).
    memory_budget: Annotated[str, AfterValidator(_budget)] = "70%"
    # When loading a model would pass the budget after evicting idle ones: wait for a model to
    # become idle, send the request to another rung, or fail with 503.
    on_over_budget: Literal["queue", "route", "fail"] = "route"
    # A request may wait this long for a cold model to load before an equivalent warm rung is preferred.
    max_cold_wait_s: Annotated[float, Field(ge=0)] = 5.0


class ServerConfig(BaseModel):
    model_config = FORBID
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

    model_config = FORBID
    # The model an all-frontier deployment would use for every request. None: the dearest model
    # by output-token price.
    baseline: ModelName | None = None


class Config(BaseModel):
    """The whole models.toml."""

    model_config = FORBID
    server: ServerConfig = ServerConfig()
    models: Annotated[list[ModelConfig], Field(min_length=1)]
    routing: RoutingConfig = RoutingConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    resources: ResourcesConfig = ResourcesConfig()
    cost: CostConfig = CostConfig()
    state: StateConfig = StateConfig()
    feedback: FeedbackConfig = FeedbackConfig()
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

    @field_validator("models")
    @classmethod
    def _spaces_agree(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        chat = {m.name for m in models if m.task == "chat"}
        if not chat:
            raise ValueError('at least one chat rung (task = "chat", the default) is needed')
        by_name = {m.name: m for m in models}
        seen: dict[str, ModelConfig] = {}
        for m in (m for m in models if m.task == "embed"):
            space = space_of(m)
            if space in chat:
                raise ValueError(f"embedding space '{space}' of model '{m.name}' is the name of a chat model")
            owner = by_name.get(space)
            if owner is not None and space_of(owner) != space:  # `model = space` must mean one thing
                raise ValueError(
                    f"embedding space '{space}' of model '{m.name}' is the name of model '{space}', "
                    f"which is in space '{space_of(owner)}'"
                )
            first = seen.setdefault(space, m)
            if (first.dimensions, first.dimensions_flexible) != (m.dimensions, m.dimensions_flexible):
                raise ValueError(
                    f"models '{first.name}' and '{m.name}' share the embedding space '{space}' but not "
                    "its `dimensions` / `dimensions_flexible`: one space is one set of vectors"
                )
        return models

    @model_validator(mode="after")
    def _baseline_exists(self) -> Config:
        if self.cost.baseline is not None and self.model(self.cost.baseline) is None:
            raise ValueError(f"cost.baseline '{self.cost.baseline}' is not a model declared in [[models]]")
        return self

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)

    def ladder(self) -> list[ModelConfig]:
        """Chat models from the cheapest rung up (by tier, then file order). Embedding rungs are never
        on it: the chat policy cannot pick one."""
        return sorted((m for m in self.models if m.task == "chat"), key=lambda m: m.tier)

    def embedders(self) -> list[ModelConfig]:
        """Embedding rungs (`task = "embed"`), cheapest first (by tier, then file order)."""
        return sorted((m for m in self.models if m.task == "embed"), key=lambda m: m.tier)

    def default_space(self) -> str | None:
        """What `model: "auto"` embeds in: the cheapest embedding rung's space, fixed by the config
        (never another space because a rung is down). None without embedding rungs."""
        rungs = self.embedders()
        return space_of(rungs[0]) if rungs else None

    def replica(self) -> str | None:
        """This gateway's replica id (see `[state]`), or None when it runs alone."""
        return self.state.replica(self.server.port)

    def audit_path(self) -> Path:
        """The audit log. Each replica writes its own: `{replica}` in the path is replaced by its id,
        or, without one, the id goes before the suffix (`audit.jsonl` -> `audit.gw-a.jsonl`)."""
        env = os.environ.get("LOCALROUTE_AUDIT_PATH")
        raw = env if env else self.privacy.audit_path
        replica = self.replica()
        if "{replica}" in raw:
            raw = raw.replace("{replica}", replica or "main")
        elif replica:
            p = Path(raw)
            raw = str(p.with_name(f"{p.stem}.{replica}{p.suffix}"))
        path = Path(raw).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    def feedback_path(self) -> Path:
        """The feedback store: `[feedback] path`, else beside the audit log (the state directory)."""
        raw = self.feedback.path
        if raw is None:
            return self.audit_path().parent / "feedback.sqlite3"
        path = Path(raw).expanduser()
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
        if isinstance(src, PyPISource | ConvertSource):
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
    # [state] url may be redis://:password@host; keys and anything named *key* hold secrets.
    return loc[:1] in (("keys",), ("state",)) or any(isinstance(p, str) and "key" in p for p in loc)


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
            whole = isinstance(got, dict) or (isinstance(got, list) and err["loc"] == ("models",))  # too big
            got_s = "" if err["type"] == "missing" or whole else f" (got {got!r})"
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
