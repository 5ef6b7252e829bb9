"""Raw text completions on the worker's `Llama` (`POST /v1/completions`): the prompt goes to
`Llama.create_completion` as it is, with no chat template, and the answer has OpenAI's legacy
`text_completion` shape.

Logprobs come from the runner's sampler hook, not from llama-cpp-python (whose own need
`logits_all=True`, logits for every position): the sampled token's logprob and, for `logprobs: N`, the
N most likely tokens, read off the one logits row the sampler already has. The prompt's own logprobs
(`echo` with `logprobs`) would need every prompt position's logits, so that pair is refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator
from typing import Any

from localroute.errors import APIError, InternalError, InvalidRequestError
from localroute.protocol import sse
from localroute.rungs.llamacpp.runner import _PASSTHROUGH, Generation, Runner

MAX_TOP = 20  # alternatives per position: a sort of the vocabulary's best few, not of the whole row


def generation(body: dict[str, Any]) -> Generation:
    """The per-request state for a completions body; refuses what this worker does not serve."""
    lp = body.get("logprobs")
    if lp is not None and (isinstance(lp, bool) or not isinstance(lp, int) or not 0 <= lp <= MAX_TOP):
        raise InvalidRequestError(f"'logprobs' must be an integer from 0 to {MAX_TOP}.", param="logprobs")
    if lp is not None and body.get("echo"):
        raise InvalidRequestError(
            "This llama.cpp model cannot return the prompt's logprobs ('echo' with 'logprobs').", param="echo"
        )
    for name in ("suffix", "best_of", "n"):
        if body.get(name) not in (None, 1) and not (name == "suffix" and body.get(name) == ""):
            raise InvalidRequestError(
                f"This llama.cpp model does not serve '{name}'.", param=name, code="unsupported_capability"
            )
    return Generation(want_logprobs=lp is not None, top_n=int(lp or 0))


def _kwargs(runner: Runner, body: dict[str, Any], gen: Generation, stream: bool) -> dict[str, Any]:
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise InvalidRequestError("'prompt' must be a string.", param="prompt")
    kw: dict[str, Any] = {k: body[k] for k in _PASSTHROUGH if body.get(k) is not None}
    if isinstance(body.get("logit_bias"), dict):  # token ids arrive as JSON object keys
        kw["logit_bias"] = {int(k): float(v) for k, v in body["logit_bias"].items()}
    # An empty prompt is a new document, as OpenAI has it: the model starts from its BOS (or EOS) token.
    start = runner.llm.token_bos() if runner.llm.token_bos() >= 0 else runner.llm.token_eos()
    text: str | list[int] = prompt if prompt else [start]
    kw.update(prompt=text, echo=bool(body.get("echo")), stream=stream, model=runner.name)
    runner.current = gen
    if not runner.cache_prompt:
        runner.llm.reset()  # evaluate the whole prompt: same batch shapes, same logits, every time
    return kw


def legacy_logprobs(runner: Runner, gen: Generation, upto: int, offset: int) -> dict[str, Any]:
    """OpenAI's legacy `logprobs` for tokens [gen.reported, upto), end-of-generation excluded;
    `offset` is where the first of them starts, in characters from the start of the prompt."""
    tokens: list[str] = []
    values: list[float] = []
    tops: list[dict[str, float]] = []
    offsets: list[int] = []
    llm = runner.llm
    upto = min(upto, len(gen.logprobs), len(gen.tops))  # the sampler thread may be mid-token
    for i in range(gen.reported, upto):
        if i == len(gen.tokens) - 1 and gen.last_is_eog:
            break
        token = llm.detokenize([gen.tokens[i]]).decode("utf-8", "replace")
        top = {llm.detokenize([t]).decode("utf-8", "replace"): round(v, 5) for t, v in gen.tops[i]}
        top.setdefault(token, round(gen.logprobs[i], 5))  # OpenAI always lists the sampled token
        tokens.append(token)
        values.append(round(gen.logprobs[i], 5))
        tops.append(top)
        offsets.append(offset)
        offset += len(token)
    gen.reported = max(gen.reported, upto)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def _pad_tops(gen: Generation) -> None:
    if not gen.top_n:  # keep `tops` aligned with `logprobs` when no alternatives were asked for
        gen.tops = [[] for _ in gen.logprobs]


async def complete(runner: Runner, body: dict[str, Any], gen: Generation) -> dict[str, Any]:
    """One `text_completion` object."""
    await runner._acquire()
    if gen.cancel.is_set():  # the client left while this request was queued
        runner._release()
        raise InvalidRequestError("The client went away before its turn.", code="client_gone")
    try:
        kw = _kwargs(runner, body, gen, stream=False)
        gen.start_clock()
        fut = runner._launch(lambda: runner.llm.create_completion(**kw))
    except BaseException:
        runner._release()
        raise
    try:
        result: dict[str, Any] = await asyncio.shield(fut)
    except asyncio.CancelledError:
        gen.cancel.set()
        raise
    except (ValueError, RuntimeError) as exc:
        raise runner._translate(exc, "prompt") from None
    runner.served += 1
    gen.stop_clock()
    result["usage"] = gen.usage()
    result["x_localroute"] = gen.accounting()
    if gen.want_logprobs:
        _pad_tops(gen)
        result["choices"][0]["logprobs"] = legacy_logprobs(runner, gen, len(gen.tokens), len(body["prompt"]))
    return result


async def stream(runner: Runner, body: dict[str, Any], gen: Generation) -> AsyncGenerator[bytes, None]:
    """`text_completion` chunks as SSE frames, a usage chunk when asked, then `[DONE]`."""
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    await runner._acquire()
    if gen.cancel.is_set():
        runner._release()
        raise InvalidRequestError("The client went away before its turn.", code="client_gone")
    try:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        kw = _kwargs(runner, body, gen, stream=True)
    except BaseException:
        runner._release()
        raise

    def put(kind: str, item: Any) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (kind, item))

    def produce() -> None:
        gen.start_clock()
        try:
            chunks: Iterator[dict[str, Any]] = runner.llm.create_completion(**kw)
            for chunk in chunks:
                put("chunk", (chunk, len(gen.tokens)))  # tokens sampled up to this chunk
        except APIError as exc:
            put("error", exc)
        except (ValueError, RuntimeError) as exc:
            put("error", runner._translate(exc, "prompt"))
        except Exception as exc:  # report, never let the thread die silently
            put("error", InternalError(f"llama.cpp failed: {exc.__class__.__name__}"))
        finally:
            gen.stop_clock()
            put("end", None)

    runner._launch(produce)
    offset = len(body["prompt"])
    last: dict[str, Any] | None = None
    try:
        while True:
            kind, item = await queue.get()
            if kind == "end":
                break
            if kind == "error":
                if last is None:
                    raise item  # nothing sent yet: let the caller answer with a status
                yield sse.encode(item.body())
                continue
            item, sampled = item
            last = item
            item["x_localroute"] = gen.running()
            ch = item["choices"][0] if item["choices"] else {}
            if gen.want_logprobs and (ch.get("text") or ch.get("finish_reason")):
                _pad_tops(gen)
                lp = legacy_logprobs(runner, gen, sampled, offset)
                offset = lp["text_offset"][-1] + len(lp["tokens"][-1]) if lp["tokens"] else offset
                ch["logprobs"] = lp if lp["tokens"] else None
            yield sse.encode(item)
        if include_usage and last is not None:
            tail = {k: last[k] for k in ("id", "object", "created", "model")}
            usage = {"choices": [], "usage": gen.usage(), "x_localroute": gen.accounting()}
            yield sse.encode({**tail, **usage})
        yield sse.DONE
        runner.served += 1
    finally:
        gen.cancel.set()  # the client left or we finished: stop at the next token
