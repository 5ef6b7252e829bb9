"""The model catalogue `localroute init` chooses from (host/catalogue.toml, package data), validated.

An entry says where a model comes from, what it needs and what it can do. llama.cpp entries carry a
models.toml `source` (validated by the config's own schema, so a chosen entry becomes a rung as it is);
vLLM entries carry the Hugging Face repo `vllm serve` loads. Only registry-carried entries pin a sha256.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from localroute.config.models import FORBID, HFSource, ModelName, Source
from localroute.errors import ConfigError
from localroute.protocol.chat import Capability


class Entry(BaseModel):
    """One catalogued model. `approx_memory_mib` is an approximate resident size (RAM for llama.cpp,
    GPU memory for vLLM), for choosing only; `size`/`sha256` live in `source` and only where pinned."""

    model_config = FORBID
    name: ModelName
    engine: Literal["llama_cpp", "vllm"]
    task: Literal["chat", "embed"] = "chat"
    params: Annotated[str, Field(max_length=16)]
    rank: Annotated[int, Field(ge=0, le=1000)]
    licence: Annotated[str, Field(min_length=1, max_length=64)]
    context_length: Annotated[int, Field(ge=128)]
    n_ctx: Annotated[int, Field(ge=128)]
    chat_format: Annotated[str, Field(pattern=r"^[\w.-]+$")] | None = None
    capabilities: list[Capability]
    needs_hub: bool
    approx_memory_mib: Annotated[int, Field(gt=0)]
    dimensions: Annotated[int, Field(ge=1)] | None = None
    note: Annotated[str, Field(max_length=200)]
    source: Source | None = None  # llama_cpp
    model: Annotated[str, Field(pattern=r"^[\w.-]+/[\w.-]+$")] | None = None  # vllm

    @model_validator(mode="after")
    def _consistent(self) -> Entry:
        if self.n_ctx > self.context_length:
            raise ValueError(f"{self.name}: n_ctx {self.n_ctx} exceeds context_length {self.context_length}")
        if (self.engine == "llama_cpp") != (self.source is not None):
            raise ValueError(f"{self.name}: a llama_cpp entry has a `source`, a vllm entry none")
        if (self.engine == "vllm") != (self.model is not None):
            raise ValueError(f"{self.name}: a vllm entry names its `model`, a llama_cpp entry none")
        hub = self.engine == "vllm" or isinstance(self.source, HFSource)
        if hub != self.needs_hub:
            raise ValueError(f"{self.name}: needs_hub must be {hub} for this source")
        if not self.needs_hub and getattr(self.source, "sha256", None) is None:
            raise ValueError(f"{self.name}: a registry-carried entry pins its sha256")
        if (self.task == "embed") != (self.dimensions is not None):
            raise ValueError(f"{self.name}: `dimensions` is for embedding entries only, and they need it")
        return self


class Catalogue(BaseModel):
    model_config = FORBID
    version: Annotated[int, Field(ge=1)]
    models: list[Entry]

    @model_validator(mode="after")
    def _unique(self) -> Catalogue:
        names = [m.name for m in self.models]
        if len(names) != len(set(names)):
            raise ValueError("catalogue names must be unique")
        return self


def parse_catalogue(text: str, source: str = "catalogue.toml") -> Catalogue:
    """Validate catalogue TOML; a bad file raises ConfigError naming it."""
    try:
        return Catalogue.model_validate(tomllib.loads(text))
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ConfigError(f"{source}: invalid model catalogue: {exc}") from None


def load_catalogue() -> Catalogue:
    """The catalogue shipped with this version of localroute."""
    text = resources.files("localroute.host").joinpath("catalogue.toml").read_text(encoding="utf-8")
    return parse_catalogue(text)
