"""The llama.cpp side of the embedding worker: one `Llama(embedding=True)`, inputs checked against the
model, and every pending request's inputs embedded together.

Batching: requests that arrive while a decode runs wait for it to end, then all of their sequences are
packed into the next decodes, up to `pack_tokens` tokens each (a longer sequence decodes alone). A BERT
attends both ways, so a sequence is never split across micro-batches: the context runs with n_ubatch at
least the model's context, and an input longer than that is refused (OpenAI refuses too, rather than
truncate silently), naming its index. Decodes are kept small on purpose: llama.cpp attends over the
whole micro-batch (masked between sequences), so the cost per input grows with the decode's size;
on this CPU 64-token decodes embed ~1.6x as many inputs per second as 512-token ones (bench/RESULTS.md).
Vectors come back L2-normalised, as sentence-transformers gives them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from localroute.errors import APIError, ContextLengthExceededError, InternalError, InvalidRequestError

Tokens = list[int]


@dataclass
class _Job:
    seqs: list[Tokens]
    done: asyncio.Future[tuple[list[list[float]], float]]
    vectors: list[list[float]] = field(default_factory=list)


class EmbedRunner:
    """Owns the Llama object; embeds the inputs of all pending requests in shared decodes."""

    def __init__(self, llm: Any, name: str, max_tokens: int, pack_tokens: int) -> None:
        import llama_cpp

        self.llm = llm
        self.name = name
        self.n_vocab: int = llm.n_vocab()
        self.n_embd: int = llm.n_embd()
        self.max_tokens = min(max_tokens, llm.context_params.n_ubatch)  # one sequence, one micro-batch
        self.pack_tokens = pack_tokens
        self.n_seq_max: int = llm.context_params.n_seq_max
        if llm.pooling_type() == llama_cpp.LLAMA_POOLING_TYPE_NONE:
            raise ValueError("the model declares no pooling: it gives token vectors, not sentence vectors")
        self.busy = False
        self.served = 0
        self.batches = 0  # decodes run: fewer than inputs when requests were batched together
        self._pending: list[_Job] = []
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None

    # -- inputs ------------------------------------------------------------------------------------

    def tokens(self, inputs: Sequence[object]) -> list[Tokens]:
        """Each input's token ids: text through the model's own tokenizer ([CLS] ... [SEP] added, as
        sentence-transformers does), token arrays as given, checked against the vocabulary. Raises a 400
        naming every offending `input[i]` at once."""
        out: list[Tokens] = []
        bad: list[str] = []
        longest = (0, -1)
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                ids: Tokens = self.llm.tokenize(item.encode("utf-8"), add_bos=True, special=True)
            elif isinstance(item, list) and item and all(type(t) is int for t in item):
                ids = item
                wrong = next((t for t in ids if not 0 <= t < self.n_vocab), None)
                if wrong is not None:
                    bad.append(
                        f"input[{i}] holds token id {wrong}, outside the vocabulary [0, {self.n_vocab})"
                    )
                    continue
            else:
                bad.append(f"input[{i}] must be a string or a non-empty array of token ids")
                continue
            if len(ids) > self.max_tokens and len(ids) > longest[0]:
                longest = (len(ids), i)
            out.append(ids)
        if bad:
            raise InvalidRequestError("Invalid input: " + "; ".join(bad) + ".", param="input")
        if longest[1] >= 0:
            n, i = longest
            raise ContextLengthExceededError(
                f"This model's maximum context length is {self.max_tokens} tokens, but input[{i}] has "
                f"{n} tokens. Shorten it or split it into several inputs.",
                param=f"input[{i}]",
            )
        return out

    # -- batching ----------------------------------------------------------------------------------

    async def embed(self, seqs: list[Tokens]) -> tuple[list[list[float]], float]:
        """The unit vectors of `seqs`, in order, and this request's share of the CPU-seconds spent."""
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._run(), name="embed-batcher")
        job = _Job(seqs, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._wake.set()
        return await asyncio.shield(job.done)  # a client that leaves does not stop the shared decode

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            jobs, self._pending = self._pending, []
            if not jobs:
                continue
            flat = [s for job in jobs for s in job.seqs]
            self.busy = True
            cpu0 = time.process_time()
            try:
                # One thread at a time in the llama context: the next round waits for this one.
                vectors = await asyncio.to_thread(self._decode_all, flat)
            except Exception as exc:
                err = (
                    exc
                    if isinstance(exc, APIError)
                    else InternalError(f"llama.cpp failed: {exc.__class__.__name__}")
                )
                for job in jobs:
                    if not job.done.done():
                        job.done.set_exception(err)
                continue
            finally:
                self.busy = False
            cpu = time.process_time() - cpu0
            total = sum(len(s) for s in flat) or 1
            at = 0
            for job in jobs:
                mine = vectors[at : at + len(job.seqs)]
                at += len(job.seqs)
                share = cpu * sum(len(s) for s in job.seqs) / total  # by tokens: what the work scales with
                self.served += 1
                if not job.done.done():
                    job.done.set_result((mine, share))

    def _decode_all(self, seqs: list[Tokens]) -> list[list[float]]:
        """Embed `seqs` in decodes of up to `pack_tokens` tokens and `n_seq_max` sequences (thread)."""
        import numpy as np

        out: list[list[float]] = []
        group: list[Tokens] = []
        used = 0
        for s in seqs:
            if group and (used + len(s) > self.pack_tokens or len(group) >= self.n_seq_max):
                out.extend(self._decode(group, np))
                group, used = [], 0
            group.append(s)
            used += len(s)
        if group:
            out.extend(self._decode(group, np))
        return out

    def _decode(self, group: list[Tokens], np: Any) -> list[list[float]]:
        import llama_cpp

        llm = self.llm
        batch = llm._batch
        batch.reset()
        for seq_id, s in enumerate(group):
            batch.add_sequence(s, seq_id, True)  # every token an output: pooling reads them all
        llm._ctx.kv_cache_clear()
        try:
            llm._ctx.decode(batch)
        finally:
            batch.reset()
        self.batches += 1
        vecs = np.empty((len(group), self.n_embd), dtype=np.float32)
        for seq_id in range(len(group)):
            ptr = llama_cpp.llama_get_embeddings_seq(llm._ctx.ctx, seq_id)
            if not ptr:
                raise InternalError("llama.cpp returned no pooled embedding")
            vecs[seq_id] = np.ctypeslib.as_array(ptr, shape=(self.n_embd,))
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        vecs /= np.maximum(norms, 1e-12)  # L2: what sentence-transformers' Normalize module does
        result: list[list[float]] = vecs.tolist()
        return result
