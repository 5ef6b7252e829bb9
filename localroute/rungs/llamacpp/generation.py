"""One request's state on the llama.cpp worker, shared between the event loop and llama.cpp's sampling
loop (a worker thread): cancellation, the tokens sampled and their logprobs, and the compute measured."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from localroute.rungs.llamacpp.structured import Structured


@dataclass
class Generation:
    """Per-request state shared with llama.cpp's sampling loop (runs in a worker thread)."""

    want_logprobs: bool = False
    top_n: int = 0  # alternatives to record at each position (legacy completions' `logprobs`)
    tops: list[list[tuple[int, float]]] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)
    prompt_tokens: int = -1
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    last_is_eog: bool = False
    reported: int = 0  # tokens whose logprobs were already attached to a stream chunk
    structured: Structured | None = None  # what the answer's shape must be (tools, JSON), if anything
    cpu_start: float = 0.0
    compute_s: float = 0.0  # CPU-seconds of this process (all llama.cpp threads) while decoding

    def start_clock(self) -> None:
        # Requests are serialised, so the process's CPU time while this one decodes is its own.
        self.cpu_start = time.process_time()

    def stop_clock(self) -> None:
        self.compute_s = time.process_time() - self.cpu_start

    def accounting(self) -> dict[str, float]:
        """The measured compute, for the gateway's cost record (removed before the client sees it)."""
        return {"compute_s": round(self.compute_s, 6)}

    def running(self) -> dict[str, Any]:
        """The accounting so far, on each stream chunk: what a stream cut before its end is charged."""
        return {"compute_s": round(time.process_time() - self.cpu_start, 6), "so_far": self.usage()}

    def stopping_criteria(self, input_ids: Any, logits: Any) -> bool:
        return self.cancel.is_set()

    def completion_tokens(self) -> int:
        # An end-of-generation token is sampled but is not part of the completion.
        return len(self.tokens) - (1 if self.last_is_eog else 0)

    def usage(self) -> dict[str, int]:
        prompt = max(self.prompt_tokens, 0)
        completion = self.completion_tokens()
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_generation(body: dict[str, Any]) -> Generation:
    """The per-request state for a chat body: logprobs if asked, with `top_logprobs` alternatives
    (the cascade asks for 2: the margin between the two likeliest first tokens)."""
    want = body.get("logprobs") is True
    top = body.get("top_logprobs")
    top_n = top if want and isinstance(top, int) and not isinstance(top, bool) and 0 < top <= 20 else 0
    return Generation(want_logprobs=want, top_n=top_n)


def put_all(queue: asyncio.Queue[tuple[str, Any]], items: list[tuple[str, Any]]) -> None:
    for item in items:
        queue.put_nowait(item)
