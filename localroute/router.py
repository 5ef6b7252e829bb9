"""Executes a request on a rung. Routing policy arrives with the routing issue; today `auto` means the
cheapest rung and a concrete model name is served by that model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from localroute.backends.base import Backend
from localroute.config import Config, ModelConfig
from localroute.errors import ModelNotFoundError


@dataclass(frozen=True)
class Target:
    model: ModelConfig
    backend: Backend
    route: str


class Router:
    def __init__(self, config: Config, backends: Mapping[str, Backend]) -> None:
        self.config = config
        self.backends = backends
        self._ladder = config.ladder()

    def resolve(self, requested: str) -> Target:
        """Pick the rung for a request's `model` field."""
        if requested == "auto":
            m = self._ladder[0]
            return Target(m, self.backends[m.name], "auto:lowest_tier")
        m_cfg = self.config.model(requested)
        if m_cfg is None:
            raise ModelNotFoundError(
                f"The model '{requested[:64]}' does not exist. Use 'auto' or one of: "
                + ", ".join(m.name for m in self.config.models)
                + ".",
                param="model",
            )
        return Target(m_cfg, self.backends[m_cfg.name], "explicit")
