"""Conversation stickiness, upward only: remember which rung gave each answer, by a digest of the
answer's text, so that a follow-up carrying that answer back is not sent to a lower rung.

Stateless on the client's side (no conversation id): the conversation is recognised by its own earlier
assistant messages. The map is bounded (least recently used out) and holds digests, never text.

Each digest is keyed by the caller (API key name, else client address: what the rate limiter counts),
so one caller cannot learn whether a text was another caller's answer by sending it back and watching
the route; `explain` reads the map without touching its recency (`touch=False`).
"""

from __future__ import annotations

import collections
import hashlib

from localroute.protocol.chat import ChatCompletionRequest
from localroute.routing.policy import Floor
from localroute.state.limits import SharedConversations

DIGEST_BYTES = 16


def digest(text: str, caller: str = "") -> bytes:
    """The answer's identity for one caller: whitespace-normalised, so a client's re-indentation does
    not lose it; the caller's name is hashed in, so another caller's same text is another key."""
    h = hashlib.sha256(caller.encode("utf-8", "surrogatepass") + b"\0")
    h.update(" ".join(text.split()).encode("utf-8", "surrogatepass"))
    return h.digest()[:DIGEST_BYTES]


class Conversations:
    """A bounded LRU map: answer digest -> the rung (name, tier) that produced it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._map: collections.OrderedDict[bytes, Floor] = collections.OrderedDict()
        # With `[state] url`: every replica's answers, read before a decision (`prefetch`).
        self.shared: SharedConversations | None = None

    def __len__(self) -> int:
        return len(self._map)

    def remember(self, answer: str | None, model: str, tier: int, caller: str = "") -> None:
        if self.size <= 0 or not answer or not answer.strip():
            return
        key = digest(answer, caller)
        self._keep(key, Floor(model, tier))
        if self.shared is not None:
            self.shared.put(key, tier, model)

    def _keep(self, key: bytes, floor: Floor) -> None:
        self._map[key] = floor
        self._map.move_to_end(key)
        while len(self._map) > self.size:
            self._map.popitem(last=False)

    async def prefetch(self, req: ChatCompletionRequest, caller: str = "") -> None:
        """Bring in what other replicas remember of this conversation's earlier answers (one MGET),
        so that the pure `floor` sees it. Nothing without a shared store or earlier answers."""
        if self.shared is None or self.size <= 0:
            return
        keys = [digest(t, caller) for m in req.messages if m.role == "assistant" and (t := m.text()).strip()]
        missing = [k for k in dict.fromkeys(keys) if k not in self._map]
        for key, (tier, model) in (await self.shared.get_many(missing)).items():
            self._keep(key, Floor(model, tier))

    def floor(self, req: ChatCompletionRequest, caller: str = "", touch: bool = True) -> Floor | None:
        """The highest rung that answered any earlier assistant turn of `req` for this caller, if
        remembered. `touch=False` (explain) leaves the map's recency as it was."""
        if self.size <= 0:
            return None
        best: Floor | None = None
        for m in req.messages:
            if m.role != "assistant":
                continue
            text = m.text()
            if not text.strip():
                continue
            key = digest(text, caller)
            found = self._map.get(key)
            if found is None:
                continue
            if touch:
                self._map.move_to_end(key)
            if best is None or found.tier > best.tier:
                best = found
        return best
