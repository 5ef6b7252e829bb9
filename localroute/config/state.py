"""The `[state]` section of models.toml: where gateway replicas keep what they share."""

from __future__ import annotations

import os
import re
import socket
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

_FORBID = ConfigDict(extra="forbid", frozen=True)
_SCHEMES = ("redis://", "rediss://", "valkey://", "valkeys://", "unix://")
REPLICA_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class StateConfig(BaseModel):
    """Unset `url`: state stays in this process (one gateway). Set: per-key rate limits are kept in
    Redis or Valkey, so N gateway replicas behind a load balancer count as one."""

    model_config = _FORBID
    # redis://[:password@]host:port/db, rediss:// for TLS, valkey:// accepted as a synonym.
    # A password is better given through `url_env` than written here.
    url: str | None = None
    url_env: str | None = None  # name of an environment variable holding the URL
    # This replica's name, in every audit record and in its audit log's file name. The environment
    # variable LOCALROUTE_REPLICA_ID overrides it. None with `url` set: "<hostname>-<port>".
    replica_id: Annotated[str, Field(pattern=REPLICA_RE)] | None = None
    key_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{0,64}$")] = "localroute:"
    # A store slower than this for one call is treated as down for that call (see docs/scale-out.md).
    timeout_s: Annotated[float, Field(gt=0, le=10)] = 0.25

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(_SCHEMES):
            raise ValueError(f"[state] url must start with one of {', '.join(_SCHEMES)}")
        return url

    def resolved_url(self) -> str | None:
        """The store's URL (from `url_env` when set), valkey:// spelt as redis-py wants it."""
        url = os.environ.get(self.url_env) if self.url_env else self.url
        if not url:
            return None
        if not url.startswith(_SCHEMES):
            raise ValueError(f"${self.url_env} must hold a URL starting with one of {', '.join(_SCHEMES)}")
        return re.sub(r"^valkey(s?)://", r"redis\1://", url)

    def replica(self, port: int) -> str | None:
        """This gateway's replica id, or None when it runs alone with no shared state."""
        env = os.environ.get("LOCALROUTE_REPLICA_ID")
        if env:
            if not re.fullmatch(REPLICA_RE, env):
                raise ValueError("LOCALROUTE_REPLICA_ID must be 1-64 letters, digits, '_', '.' or '-'")
            return env
        if self.replica_id:
            return self.replica_id
        if self.url or self.url_env:
            host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()).strip("-.")[:50] or "gw"
            return f"{host}-{port}"
        return None
