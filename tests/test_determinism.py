"""Greedy answers do not depend on what was served before (issue 15): the same request at temperature 0,
or with the same seed, gives the same text cold, repeated, after other requests, streamed, after a long
shared prefix, and after the worker restarts. The prompt cache stays on (the repo's default)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import Server, pid_alive, start_server, wait_until

MODEL = "smollm2-135m"
COLOR = [{"role": "user", "content": "Name a color."}]
OTHER = [{"role": "user", "content": "Write one sentence about the sea."}]
# Over one n_batch chunk (512 tokens) of shared prefix, so part of it is reused from the cache.
MANUAL = "You answer questions about the Acme 3000 dishwasher. " + " ".join(
    f"Rule {i}: the dishwasher's program {i} runs for {i + 20} minutes at {40 + i % 30} degrees."
    for i in range(22)
)


@pytest.fixture(scope="module")
def srv(repo_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(repo_config, tmp_path_factory.mktemp("det"))  # cache_prompt on, as shipped
    yield s
    s.stop()


def ask(client: openai.OpenAI, messages: list[dict[str, str]], stream: bool = False, **kw: Any) -> str:
    args: dict[str, Any] = {"model": MODEL, "messages": messages, "max_tokens": 12, "temperature": 0, **kw}
    if not stream:
        return client.chat.completions.create(**args).choices[0].message.content or ""
    chunks = client.chat.completions.create(stream=True, **args)
    return "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)


def client_of(srv: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=300)


FIRST = [{"role": "system", "content": MANUAL}, {"role": "user", "content": "How long is program 3?"}]
SECOND = [{"role": "system", "content": MANUAL}, {"role": "user", "content": "What about program 7?"}]
ANSWERS: dict[str, str] = {}  # the cold answers, for the restart test (the tests run in file order)


def test_a_short_prompt_repeated_after_other_requests_and_streamed(srv: Server) -> None:
    client = client_of(srv)
    cold = ANSWERS["color"] = ask(client, COLOR)
    assert cold
    assert ask(client, COLOR) == cold  # an exact repeat: the whole prompt is cached
    assert ask(client, COLOR, stream=True) == cold
    ask(client, OTHER)
    assert ask(client, COLOR) == cold  # after another request: a partly shared template prefix
    assert ask(client, COLOR, stream=True) == cold


def test_a_long_shared_prefix_reused_from_the_cache(srv: Server) -> None:
    client = client_of(srv)
    made = client.chat.completions.create(model=MODEL, messages=FIRST, max_tokens=1)  # type: ignore[arg-type]
    assert made.usage is not None and made.usage.prompt_tokens > 512
    cold = ANSWERS["long"] = ask(client, FIRST)
    ask(client, SECOND)  # shares over 512 tokens with FIRST: those are reused from the cache
    assert ask(client, FIRST) == cold
    ask(client, COLOR)
    assert ask(client, FIRST, stream=True) == cold


def test_the_same_seed_and_a_restarted_worker(srv: Server) -> None:
    client = client_of(srv)
    seeded = ask(client, OTHER, temperature=0.9, seed=1234)
    ask(client, COLOR)
    assert ask(client, OTHER, temperature=0.9, seed=1234) == seeded
    pid = srv.health()["engines"][MODEL]["pid"]  # type: ignore[index]
    os.kill(pid, signal.SIGKILL)  # a restarted worker starts with an empty cache
    assert wait_until(lambda: not pid_alive(pid))
    retrying = client.with_options(max_retries=3)  # the first request after the kill may get the 503
    assert ask(retrying, COLOR) == ANSWERS["color"]
    assert srv.health()["engines"][MODEL]["pid"] != pid  # type: ignore[index]
    assert ask(client, FIRST) == ANSWERS["long"]
