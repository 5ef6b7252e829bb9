"""The llama.cpp side of the worker: one `Llama` object, requests served on it one at a time.

`Runner` turns an OpenAI chat body into llama-cpp-python's arguments, runs the decode on a thread, and
hooks llama.cpp's sampling loop for what the gateway needs and llama-cpp-python does not give cheaply:
cancellation at the next token, token counts, and the sampled tokens' logprobs. Streams come out as SSE
bytes (`protocol.sse`). The HTTP surface around it is worker.py.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any

from localroute.errors import (
    APIError,
    ContextLengthExceededError,
    InternalError,
    InvalidRequestError,
)
from localroute.protocol import sse
from localroute.protocol.surface import opening
from localroute.rungs.llamacpp import prompt_cache
from localroute.rungs.llamacpp.generation import Generation, chat_generation, put_all
from localroute.rungs.llamacpp.markers import control_markers, defuse
from localroute.rungs.llamacpp.render_clock import RenderClock, RenderTimeout
from localroute.rungs.llamacpp.structured import Structured, flatten

_CTX_RE = re.compile(r"Requested tokens \((\d+)\) exceed context window of (\d+)")
_PASSTHROUGH = ("temperature", "top_p", "stop", "seed", "max_tokens", "presence_penalty", "frequency_penalty")
__all__ = ["Generation", "Runner", "chat_generation"]
_GRAMMARS_KEPT = 32  # converted grammars, by schema: an agent sends the same few schemas over and over


class Runner:
    """Owns the Llama object; serialises requests onto it."""

    def __init__(
        self, llm: Any, name: str, n_ctx: int, cache_prompt: bool = True, render_timeout_s: float = 10.0
    ) -> None:
        self.llm = llm
        self.render = RenderClock(render_timeout_s)  # a hostile chat template cannot hold the model
        self.cache_prompt = cache_prompt
        self.name = name
        self.n_ctx = n_ctx
        self.lock = asyncio.Lock()
        self.busy = False
        self.served = 0
        self.sampled = 0  # tokens sampled since the worker started: a request cut short shows here
        self._grammars: dict[str, Any] = {}  # schema text -> LlamaGrammar, least recently used first
        self.current: Generation | None = None
        self._longest_token = 0  # bytes of the vocabulary's longest token; measured when first needed
        self._markers = control_markers(llm)
        self._install_hook()

    def _install_hook(self) -> None:
        """Route our per-token hook into llama.cpp's sampling loop.

        `create_chat_completion` takes no stopping criteria, but its chat handler calls
        `llm.create_completion(..., stopping_criteria=...)`; wrapping that one bound method on this
        instance adds ours (cancellation and token accounting) beside the chat format's own.
        """
        original = self.llm.create_completion

        def create_completion(*args: Any, **kwargs: Any) -> Any:
            from llama_cpp import StoppingCriteriaList

            self.render.rendered()  # the chat template is rendered: its clock stops here
            hooks = StoppingCriteriaList()
            if self.current is not None:
                hooks.append(self.current.stopping_criteria)
            if kwargs.get("stopping_criteria"):
                hooks.extend(kwargs["stopping_criteria"])
            kwargs["stopping_criteria"] = hooks or None
            return original(*args, **kwargs)

        self.llm.create_completion = create_completion
        tokenize = self.llm.tokenize

        def bounded_tokenize(text: bytes, *args: Any, **kwargs: Any) -> Any:
            self._refuse_beyond_context(len(text))
            return tokenize(text, *args, **kwargs)

        self.llm.tokenize = bounded_tokenize
        self._install_sampler_hook()
        prompt_cache.install(self.llm)  # greedy answers independent of the cache

    def _refuse_beyond_context(self, size: int) -> None:
        """Refuse a prompt of `size` bytes that cannot fit the context whatever its tokens, before
        llama.cpp tokenizes it: its tokenizer takes time quadratic in the number of special-token
        markers (`<|im_end|>`) in the text, and 440 kB of them held the model for 47 s."""
        if size <= self.n_ctx:  # a token is at least one byte
            return
        if not self._longest_token:
            pieces = (self.llm.detokenize([t], special=True) for t in range(self.llm.n_vocab()))
            self._longest_token = max(1, *(len(p) for p in pieces))
        least = -(-size // self._longest_token)
        if least > self.n_ctx:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {self.n_ctx} tokens, but the messages "
                f"resulted in at least {least} tokens. Shorten the messages or use a larger model.",
                param="messages",
            )

    def _install_sampler_hook(self) -> None:
        """Record each sampled token and, when asked, its logprob read from the last logits.

        llama-cpp-python's own logprobs need `logits_all=True` (logits for every position, ~0.3 s a
        token on a large vocabulary); the sampled token's row is already in the context, so a
        log-softmax over that one row costs well under a millisecond.
        """
        import llama_cpp
        import numpy as np

        llm = self.llm
        original = llm.sample
        n_vocab = llm.n_vocab()
        vocab = llm._model.vocab

        def sample(*args: Any, **kwargs: Any) -> int:
            token: int = original(*args, **kwargs)
            self.sampled += 1
            gen = self.current
            if gen is None:
                return token
            if gen.prompt_tokens < 0:
                gen.prompt_tokens = llm.n_tokens
            gen.tokens.append(token)
            gen.last_is_eog = bool(llama_cpp.llama_vocab_is_eog(vocab, token))
            if gen.want_logprobs:
                idx = kwargs.get("idx")
                row = idx - llm.n_tokens if idx is not None else -1
                ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, row)
                logits = np.ctypeslib.as_array(ptr, shape=(n_vocab,))
                top = float(logits.max())
                lse = top + math.log(float(np.exp(logits - top).sum()))
                gen.logprobs.append(float(logits[token]) - lse)
                if gen.top_n:  # the most likely tokens of the row already read: no extra decode
                    best = np.argpartition(logits, -gen.top_n)[-gen.top_n :]
                    ranked = sorted(best.tolist(), key=lambda i: -float(logits[i]))
                    gen.tops.append([(int(i), float(logits[i]) - lse) for i in ranked])
            return token

        llm.sample = sample

    def token_entries(self, gen: Generation, upto: int) -> list[dict[str, Any]]:
        """OpenAI `logprobs.content` entries for tokens [gen.reported, upto), end-of-generation excluded."""
        out = []
        for i in range(gen.reported, min(upto, len(gen.logprobs))):
            if i == len(gen.tokens) - 1 and gen.last_is_eog:
                break
            raw = self.llm.detokenize([gen.tokens[i]])
            tops = [self._entry(t, lp) for t, lp in gen.tops[i]] if i < len(gen.tops) else []
            out.append({"token": raw.decode("utf-8", "replace"), "logprob": round(gen.logprobs[i], 5),
                        "bytes": list(raw), "top_logprobs": tops})  # fmt: skip
        gen.reported = max(gen.reported, min(upto, len(gen.logprobs)))
        return out

    def _entry(self, token: int, logprob: float) -> dict[str, Any]:
        raw = self.llm.detokenize([token])
        return {"token": raw.decode("utf-8", "replace"), "logprob": round(logprob, 5), "bytes": list(raw)}

    def _kwargs(self, body: dict[str, Any], gen: Generation, stream: bool) -> dict[str, Any]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequestError("'messages' must be a non-empty list.", param="messages")
        if any(_has_image(m) for m in messages):
            raise InvalidRequestError(
                "This llama.cpp model cannot read images.", param="messages", code="unsupported_capability"
            )
        kw: dict[str, Any] = {k: body[k] for k in _PASSTHROUGH if body.get(k) is not None}
        if isinstance(body.get("logit_bias"), dict):  # token ids arrive as JSON object keys
            kw["logit_bias"] = {int(k): float(v) for k, v in body["logit_bias"].items()}
        flat = [flatten(m) for m in messages if isinstance(m, dict)]
        if self._markers is not None:
            for m in flat:
                m["content"] = defuse(self._markers, m["content"])
        gen.structured = Structured.of(body)
        if gen.structured is not None:
            flat = gen.structured.messages(flat)
            kw["grammar"] = self._grammar(gen.structured)
        kw.update(messages=flat, stream=stream, model=self.name)
        self.current = gen
        if not self.cache_prompt:
            self.llm.reset()  # nothing reused: the whole prompt is evaluated every time
        return kw

    def _grammar(self, plan: Structured) -> Any:
        """llama.cpp's grammar for `plan` (None in auto tool mode), converted once per schema."""
        key = plan.grammar_key()
        if key is None:
            return None
        grammar = self._grammars.pop(key, None)
        if grammar is None:
            from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

            try:
                if plan.schema is None:
                    grammar = LlamaGrammar.from_string(JSON_GBNF, verbose=False)
                else:
                    grammar = LlamaGrammar.from_json_schema(key, verbose=False)
            except Exception as exc:  # the converter raises several kinds on schema features it lacks
                raise InvalidRequestError(
                    "This JSON schema cannot be turned into a grammar for llama.cpp "
                    f"({exc.__class__.__name__}).",
                    param="response_format" if plan.mode == "json" else "tools",
                    code="invalid_schema",
                ) from None
        self._grammars[key] = grammar  # most recent last
        while len(self._grammars) > _GRAMMARS_KEPT:
            self._grammars.pop(next(iter(self._grammars)))
        return grammar

    def _translate(self, exc: Exception, param: str = "messages") -> APIError:
        m = _CTX_RE.search(str(exc))
        if m:
            return ContextLengthExceededError(
                f"This model's maximum context length is {m.group(2)} tokens, but the {param} "
                f"resulted in {m.group(1)} tokens. Shorten the {param} or use a larger model.",
                param=param,
            )
        return InternalError(f"llama.cpp failed: {exc.__class__.__name__}")

    async def _acquire(self) -> None:
        await self.lock.acquire()
        self.busy = True

    def _release(self) -> None:
        self.current = None
        self.busy = False
        self.lock.release()

    def _launch(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run `fn` on a thread. The lock is released when that thread is done with llama.cpp, not
        when the request's coroutine ends: a client that leaves must not let the next request into a
        context that is still decoding (two threads in one llama context abort the process)."""
        fut = asyncio.get_running_loop().run_in_executor(None, fn)
        fut.add_done_callback(lambda _f: self._release())
        return fut

    async def complete(self, body: dict[str, Any], gen: Generation) -> dict[str, Any]:
        await self._acquire()
        if gen.cancel.is_set():  # the client left while this request was queued
            self._release()
            raise InvalidRequestError("The client went away before its turn.", code="client_gone")
        try:
            kw = self._kwargs(body, gen, stream=False)
            gen.start_clock()
            fut = self._launch(lambda: self.render.bounded(lambda: self.llm.create_chat_completion(**kw)))
        except BaseException:
            self._release()
            raise
        try:
            result: dict[str, Any] = await asyncio.shield(fut)
        except asyncio.CancelledError:
            gen.cancel.set()
            raise
        except (ValueError, RuntimeError) as exc:
            raise self._translate(exc) from None
        except RenderTimeout:
            raise self.render.error() from None
        self.served += 1
        gen.stop_clock()
        result["usage"] = gen.usage()
        result["x_localroute"] = gen.accounting()
        if gen.want_logprobs:
            result["choices"][0]["logprobs"] = {"content": self.token_entries(gen, len(gen.tokens))}
        if gen.structured is not None:
            choice = result["choices"][0]
            text = choice["message"].get("content") or ""
            choice["message"], choice["finish_reason"] = gen.structured.answer(
                text, choice.get("finish_reason")
            )
        return result

    async def stream(self, body: dict[str, Any], gen: Generation) -> AsyncGenerator[bytes, None]:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        await self._acquire()
        if gen.cancel.is_set():  # the client left while this request was queued
            self._release()
            raise InvalidRequestError("The client went away before its turn.", code="client_gone")
        try:
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
            kw = self._kwargs(body, gen, stream=True)
        except BaseException:
            self._release()
            raise

        held: list[tuple[str, Any]] = []  # the role chunk, sent with the chunk that follows it

        def put(kind: str, item: Any) -> None:
            items = [*held, (kind, item)]
            held.clear()
            loop.call_soon_threadsafe(put_all, queue, items)

        def produce() -> None:
            gen.start_clock()
            try:
                chunks: Iterator[dict[str, Any]] = self.render.bounded(
                    lambda: self.llm.create_chat_completion(**kw)
                )
                for chunk in chunks:
                    item = (chunk, len(gen.tokens))  # tokens sampled up to this chunk
                    if not held and opening(chunk):
                        # llama-cpp-python yields the role chunk just before the first token's: one
                        # wakeup for both, so the first write never goes out without its text while
                        # the next token's decode takes the cores (docs/bench-ttft.md).
                        held.append(("chunk", item))
                        continue
                    put("chunk", item)
            except APIError as exc:  # ours, raised from a hook
                put("error", exc)
            except RenderTimeout:
                put("error", self.render.error())
            except (ValueError, RuntimeError) as exc:
                put("error", self._translate(exc))
            except Exception as exc:  # report, never let the thread die silently
                put("error", InternalError(f"llama.cpp failed: {exc.__class__.__name__}"))
            finally:
                gen.stop_clock()
                put("end", None)

        self._launch(produce)
        shape = gen.structured.shaper() if gen.structured is not None else None
        last: dict[str, Any] | None = None
        done = False
        try:
            while not done:
                # Whatever the decode thread has queued goes out in one write: the first token's role
                # and content chunks arrive together, and the gateway reads them in one wakeup.
                frames: list[bytes] = []
                kind, item = await queue.get()
                while True:
                    if kind == "end":
                        done = True
                        if include_usage and last is not None:
                            tail = {k: last[k] for k in ("id", "object", "created", "model")}
                            usage = {"choices": [], "usage": gen.usage(), "x_localroute": gen.accounting()}
                            frames.append(sse.encode({**tail, **usage}))
                        frames.append(sse.DONE)
                        break
                    if kind == "error":
                        if last is None:
                            raise item  # nothing sent yet: let the caller answer with a status
                        frames.append(sse.encode(item.body()))
                    else:
                        last = item[0]
                        frames += self._frames(gen, shape, *item)
                    if queue.empty():
                        break
                    kind, item = queue.get_nowait()
                if frames:
                    yield b"".join(frames)
            self.served += 1
        finally:
            gen.cancel.set()  # the client left or we finished: stop at the next token

    def _frames(
        self, gen: Generation, shape: Callable[[str, str | None], list[dict[str, Any]]] | None,
        item: dict[str, Any], sampled: int,
    ) -> list[bytes]:  # fmt: skip
        """The SSE frames for one llama-cpp-python chunk; `sampled` tokens were sampled up to it."""
        item["x_localroute"] = gen.running()
        ch = item["choices"][0] if item["choices"] else {}
        text, finish = (ch.get("delta") or {}).get("content") or "", ch.get("finish_reason")
        if shape is not None and (text or finish):
            out = []
            for delta in shape(text, finish):  # tool-call deltas, or text once it is clearly text
                fin = delta.pop("finish_reason", None)
                choice = {"index": 0, "delta": delta, "finish_reason": fin, "logprobs": None}
                if gen.want_logprobs and (entries := self.token_entries(gen, sampled)):
                    choice["logprobs"] = {"content": entries}
                out.append(sse.encode({**item, "choices": [choice]}))
            return out
        if gen.want_logprobs and (text or finish):
            entries = self.token_entries(gen, sampled)
            item["choices"][0]["logprobs"] = {"content": entries} if entries else None
        return [sse.encode(item)]


def _has_image(message: object) -> bool:
    content = message.get("content") if isinstance(message, dict) else None
    return isinstance(content, list) and any(
        isinstance(p, dict) and p.get("type") == "image_url" for p in content
    )
