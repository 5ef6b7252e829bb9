"""The `[privacy]` section of models.toml and the API keys that carry a privacy policy."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from localroute.config.routing import check_regex

_FORBID = ConfigDict(extra="forbid", frozen=True)
PIIKind = Literal["email", "phone", "card", "iban", "ssn", "ip", "secret"]
ALL_KINDS: tuple[PIIKind, ...] = ("email", "phone", "card", "iban", "ssn", "ip", "secret")


def _patterns_compile(patterns: dict[str, str]) -> dict[str, str]:
    for name, p in patterns.items():
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", name):
            raise ValueError(f"pattern name {name!r} must be lowercase letters, digits or _")
        check_regex(p, f"pattern {name!r}:")
    return patterns


def _networks_parse(nets: list[str]) -> list[str]:
    for n in nets:
        try:
            ipaddress.ip_network(n, strict=False)
        except ValueError:
            raise ValueError(f"trusted_networks: {n!r} is not a CIDR such as 10.0.0.0/8") from None
    return nets


LOOPBACK_NETWORKS = ["127.0.0.0/8", "::1/128"]


class APIKey(BaseModel):
    """A client API key, stored as its SHA-256 (hex), or read from an environment variable."""

    model_config = _FORBID
    name: Annotated[str, Field(pattern=r"^[\w.-]{1,64}$")]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    privacy: Literal["private", "public", "auto"] = "auto"
    requests_per_minute: Annotated[int, Field(ge=1)] | None = None  # None: `server.requests_per_minute`
    # Spend cap in USD per calendar `budget_period` (UTC), charged with each request's audited cost;
    # shared by replicas through `[state] url`. Spent: `over_budget` says what happens (docs/keys.md).
    budget_usd: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    budget_period: Literal["day", "month"] = "month"
    # "refuse": 429 `budget_exceeded`; "local": still served by local rungs only, paid ones refused.
    over_budget: Literal["refuse", "local"] = "refuse"

    @model_validator(mode="after")
    def _one_source(self) -> APIKey:
        if (self.sha256 is None) == (self.env is None):
            raise ValueError(f"key '{self.name}' needs exactly one of `sha256` or `env`")
        return self


class PrivacyConfig(BaseModel):
    model_config = _FORBID
    # The one-line switch for privacy-first deployments: "private" keeps every request local unless
    # the client marks it public (and nothing sensitive is detected in it).
    default: Literal["private", "public"] = "public"
    detect: list[PIIKind] = list(ALL_KINDS)
    extra_patterns: Annotated[dict[str, str], AfterValidator(_patterns_compile)] = {}
    # May `X-LocalRoute-Privacy: public` override detected personal data? Off: detection wins.
    allow_public_override: bool = False
    # Replace detected spans with typed placeholders before a *public* request goes remote.
    redact: bool = False
    audit_path: str = "~/.local/state/localroute/audit.jsonl"
    audit_enabled: bool = True
    # Store prompt and answer text in the audit log. Off by default: the log proves, it does not keep.
    audit_content: bool = False
    # Where an engine endpoint may be for private traffic to reach it: judged by the connected peer
    # address of each connection (privacy/trust.py), never by a name in the config. Loopback only by
    # default; a LAN of engine hosts is added here (e.g. "10.0.0.0/24").
    trusted_networks: Annotated[list[str], AfterValidator(_networks_parse)] = LOOPBACK_NETWORKS
    # Spans of private requests (ids, models, token counts; never text) go to the OTLP collector only
    # when its address is inside trusted_networks ("trusted"), always (an explicit opt-in) or never.
    private_spans: Literal["trusted", "always", "never"] = "trusted"
