"""Builds backends from config. Engines are named by import string and imported only when used, so
the app never imports a concrete engine and optional runtimes (vLLM) cost nothing when absent."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from localroute.config.models import ModelConfig, RemoteModel
from localroute.config.schema import Config
from localroute.privacy.guard import EgressGuard
from localroute.protocol.backend import Backend, Embedder

# Each entry builds a Backend from (config, model config, runtime dir).
ENGINES: dict[str, str] = {
    "llama_cpp": "localroute.rungs.llamacpp.engine:from_config",
    "remote": "localroute.rungs.remote:from_config",
    "vllm": "localroute.rungs.vllm:from_config",
}
# A local rung served by engine servers elsewhere (`endpoints = [...]`), whatever its engine.
ENDPOINTS = "localroute.rungs.endpoints:from_config"
# A remote rung that speaks Anthropic's Messages API (`api = "anthropic"`).
ANTHROPIC = "localroute.rungs.anthropic:from_config"


# Each entry builds an Embedder (a `task = "embed"` rung) the same way.
EMBEDDERS: dict[str, str] = {
    "llama_cpp": "localroute.rungs.llamacpp.embedder:from_config",
    "remote": "localroute.rungs.remote_embed:from_config",
    "vllm": "localroute.rungs.vllm_embed:from_config",
}


def _load(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def build_backend(
    config: Config, model: ModelConfig, runtime_dir: Path, egress_guard: EgressGuard
) -> Backend:
    anthropic = isinstance(model, RemoteModel) and model.api == "anthropic"
    endpoints = not isinstance(model, RemoteModel) and bool(model.endpoints)
    factory = _load(ANTHROPIC if anthropic else ENDPOINTS if endpoints else ENGINES[model.engine])
    # The rungs whose bytes may leave the machine get the guard: remote, endpoints (judged per peer),
    # and vLLM (used only when its Ray cluster is outside the trusted networks).
    if model.engine in ("remote", "vllm") or endpoints:
        backend: Backend = factory(config, model, runtime_dir, egress_guard=egress_guard)
    else:
        backend = factory(config, model, runtime_dir)
    return backend


def build_backends(config: Config, runtime_dir: Path, egress_guard: EgressGuard) -> dict[str, Backend]:
    """One backend per chat model, keyed by model name, not yet started."""
    return {m.name: build_backend(config, m, runtime_dir, egress_guard) for m in config.ladder()}


def build_embedder(
    config: Config, model: ModelConfig, runtime_dir: Path, egress_guard: EgressGuard
) -> Embedder:
    factory = _load(EMBEDDERS[model.engine])
    # As for chat: the rungs whose bytes may leave the machine get the guard (vLLM: used only when its
    # server or Ray cluster is outside the trusted networks).
    if model.engine in ("remote", "vllm"):
        embedder: Embedder = factory(config, model, runtime_dir, egress_guard=egress_guard)
    else:
        embedder = factory(config, model, runtime_dir)
    return embedder


def build_embedders(config: Config, runtime_dir: Path, egress_guard: EgressGuard) -> dict[str, Embedder]:
    """One embedder per embedding rung (`task = "embed"`), keyed by model name, not yet started."""
    return {m.name: build_embedder(config, m, runtime_dir, egress_guard) for m in config.embedders()}
