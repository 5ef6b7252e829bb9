"""The trust boundary for engine endpoints: `[privacy] trusted_networks`, judged by address.

An endpoint is local, for privacy, only while the address its connection really reaches is inside one
of the trusted networks. The check is made by the HTTP transport (rungs/lean_http.py) on every address
a name resolves to before dialling it, again on the connected socket's peer address, and on a pooled
connection before it is reused, so a name that resolves elsewhere later (DNS rebinding) gains nothing.
A request that may not reach an untrusted peer is refused there, before a byte is sent.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from localroute.privacy.guard import EgressGuard, PrivacyViolationError
from localroute.protocol.wire import ChatCompletion, ChatCompletionChunk

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedNetworks:
    """The CIDRs inside which an engine counts as local (loopback by default)."""

    def __init__(self, cidrs: Sequence[str]) -> None:
        self.networks: tuple[Network, ...] = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)

    def __contains__(self, address: object) -> bool:
        """Whether `address` (an IP literal as a socket reports it) is inside a trusted network.
        Anything that is not an address (a name, an empty string) is not trusted."""
        if not isinstance(address, str):
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 scope id names no host
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:10.0.0.5 is 10.0.0.5
        return any(ip in net for net in self.networks if net.version == ip.version)


class PeerCheck:
    """One request's judgement of the peers its bytes may reach (the transport's PEER_CHECK).

    A trusted peer is always admitted. An untrusted one is treated as any egress: the request's body
    must pass the egress guard (so a private request is refused, and a public one is re-scanned), asked
    once per request. `body` None is a probe that carries no request data (a health check): every peer
    is admitted. The last peer seen and whether it was trusted are kept for /health."""

    def __init__(
        self, networks: TrustedNetworks, guard: EgressGuard | None = None, body: dict[str, Any] | None = None
    ) -> None:
        self._networks = networks
        self._guard = guard
        self._body = body
        self._verdict: PrivacyViolationError | bool | None = None  # None: not asked yet
        self.peer: str | None = None
        self.trusted: bool | None = None

    def __call__(self, address: str) -> None:
        self.peer = address
        self.trusted = address in self._networks
        if self.trusted or self._body is None:
            return
        if self._verdict is None:
            if self._guard is None:
                self._verdict = PrivacyViolationError(
                    "This request is private and cannot be sent off this machine."
                )
            else:
                try:
                    self._guard(self._body)
                    self._verdict = True
                except PrivacyViolationError as exc:
                    self._verdict = exc
        if isinstance(self._verdict, PrivacyViolationError):
            raise self._verdict


def ray_problem(backend: str | None, ray_address: str | None, networks: TrustedNetworks) -> str | None:
    """Why a vLLM rung run over Ray may not be trusted with private traffic, or None (not on Ray, or
    its Ray head is an address inside the trusted networks). Ray workers receive the prompts' tokens,
    so the cluster is judged like an endpoint: by address, never by a name, and `auto` or no address
    (whatever cluster this host has joined) is not trusted."""
    if backend != "ray" and ray_address is None:
        return None
    if ray_address is None or ray_address == "auto":
        return (
            "it runs on Ray with no `ray_address` (or `auto`): the hosts of its workers cannot be judged; "
            "set `ray_address` to the head node's IP address inside [privacy] trusted_networks"
        )
    host = ray_address.rsplit(":", 1)[0].strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return (
            f"its `ray_address` names a host ({host!r}), not an address: trust is judged by address; "
            "give the head node's IP address inside [privacy] trusted_networks"
        )
    if host not in networks:
        return f"its Ray head {host} is outside [privacy] trusted_networks"
    return None


def url_problem(url: str | None, networks: TrustedNetworks) -> str | None:
    """Why a vLLM rung served at `url` (a server someone else runs) may not be trusted with private
    traffic, or None. Judged by address like a Ray head: an IP literal must be inside the trusted
    networks; `localhost` stands for loopback (it is never looked up in DNS); any other name is not
    trusted, since what it resolves to can change after startup. `endpoints = [URL]` is the way to
    serve such a host: that transport judges the address each connection reaches."""
    if url is None:
        return None
    host = (urlsplit(url).hostname or "").strip("[]")
    if host == "localhost":
        return (
            None
            if "127.0.0.1" in networks or "::1" in networks
            else "localhost is outside [privacy] trusted_networks"
        )
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return (
            f"its `url` names a host ({host!r}), not an address: trust is judged by address; give an IP "
            "address inside [privacy] trusted_networks, or list the server under `endpoints`"
        )
    if host not in networks:
        return f"its server {host} is outside [privacy] trusted_networks"
    return None


def untrusted(result: ChatCompletion | ChatCompletionChunk) -> bool:
    """Whether the engine's accounting says this answer came from outside the trusted networks."""
    extra = result.get("x_localroute")
    return isinstance(extra, Mapping) and extra.get("untrusted") is True


def mark_untrusted(result: ChatCompletion | ChatCompletionChunk) -> None:
    """Say so on `result` (rungs whose peer was outside the trusted networks)."""
    extra = result.get("x_localroute")
    result["x_localroute"] = {**(extra if isinstance(extra, dict) else {"compute_s": 0.0}), "untrusted": True}
