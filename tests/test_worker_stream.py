"""The llama.cpp worker's stream as bytes, on the real SmolLM2-135M: the Runner writes whatever the
decode thread has queued in one block (the first token's role and content chunks together), so a block
may hold several SSE frames. Whatever the grouping, every block is whole frames, every frame a valid
OpenAI chunk naming the model and carrying the running accounting, the usage chunk and `[DONE]` last,
and the text the same as the non-streamed answer at temperature 0.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localroute.rungs.llamacpp.generation import chat_generation
from localroute.rungs.llamacpp.runner import Runner

NAME = "smollm2-135m"
BODY: dict[str, Any] = {
    "messages": [{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
    "max_tokens": 24,
    "temperature": 0.0,
}


@pytest.fixture(scope="module")
def runner(smollm2: Path) -> Iterator[Runner]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(smollm2), n_ctx=2048, n_threads=2, n_batch=512, verbose=False)
    yield Runner(llm, NAME, 2048)
    llm.close()


def frames(block: bytes) -> list[bytes]:
    assert block.endswith(b"\n\n"), block[-40:]  # whole frames only: nothing cut between two writes
    parts = block.split(b"\n\n")[:-1]
    assert all(p.startswith(b"data: ") for p in parts)
    return [p[6:] for p in parts]


async def _stream(runner: Runner, body: dict[str, Any]) -> list[bytes]:
    return [block async for block in runner.stream(body, chat_generation(body))]


def test_every_block_is_whole_chunks_naming_the_model_with_usage_and_done_last(runner: Runner) -> None:
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}, "logprobs": True}
    blocks = asyncio.run(_stream(runner, body))
    payloads = [f for b in blocks for f in frames(b)]
    assert payloads[-1] == b"[DONE]" and payloads.count(b"[DONE]") == 1
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == NAME for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert all("x_localroute" in c for c in chunks)  # the gateway's accounting, on every chunk
    *body_chunks, tail = chunks
    assert tail["choices"] == [] and tail["usage"]["completion_tokens"] > 0
    assert body_chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    pieces = [c["choices"][0]["delta"].get("content") or "" for c in body_chunks]
    entries = [e for c in body_chunks for e in ((c["choices"][0].get("logprobs") or {}).get("content") or ())]
    assert len(entries) == tail["usage"]["completion_tokens"]  # one logprob per token, none lost
    whole = asyncio.run(runner.complete(dict(BODY), chat_generation(BODY)))
    assert "".join(pieces) == whole["choices"][0]["message"]["content"]
    assert runner.lock.locked() is False  # the model is free for the next request


def test_an_error_before_the_first_token_is_raised_not_streamed(runner: Runner) -> None:
    from localroute.errors import ContextLengthExceededError

    body = {**BODY, "stream": True, "messages": [{"role": "user", "content": "word " * 5000}]}
    with pytest.raises(ContextLengthExceededError):
        asyncio.run(_stream(runner, body))
    assert runner.lock.locked() is False


def test_the_first_block_carries_the_role_and_the_first_text_together(runner: Runner) -> None:
    """The role chunk is never written alone: the decode thread hands it over with the first token's
    chunk, so the first write holds text before the next token's decode takes the cores. Run a few
    times: the grouping must not depend on which thread got there first."""
    body = {**BODY, "stream": True}
    for _ in range(5):
        first = [json.loads(f) for f in frames(asyncio.run(_stream(runner, body))[0])]
        deltas = [c["choices"][0]["delta"] for c in first]
        assert deltas[0].get("role") == "assistant"
        assert any(d.get("content") for d in deltas), deltas
