"""Evaluate every prompt as a cold run would, so that greedy answers do not depend on what was
served before (issue 15). Installed on the Runner's one Llama.

llama.cpp's logits depend on how a prompt is split into batches: a kernel for one token is
not bit-identical to one for many. llama-cpp-python reuses the cached prefix and evaluates
only the rest, and on an exact repeat it re-evaluates the last token alone, which flipped
`temperature: 0` answers. Here a prompt is always evaluated in the chunks a cold run uses
(`n_batch` tokens from position 0): the cache is reused up to a chunk boundary, and only
where it was filled by such an evaluation of the same tokens (never by generated tokens,
whose KV entries come from one-token decodes). An exact repeat of the last prompt reuses
that prompt's own logits, so it costs no evaluation at all.
"""

from __future__ import annotations

from typing import Any


def install(llm: Any) -> None:
    """Wrap `llm.generate` so that every prompt is evaluated as a cold run would evaluate it."""
    import llama_cpp
    import numpy as np

    if getattr(llm, "_is_recurrent", False) or getattr(llm, "_is_hybrid", False):
        return  # their state cannot be cut back to a prefix: llama-cpp-python's own path resets it
    original = llm.generate
    n_vocab = llm.n_vocab()
    state: dict[str, Any] = {"tokens": (), "logits": None}  # the last prompt evaluated, and its logits

    def last_logits() -> Any:
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,))

    def place(tokens: list[int]) -> None:
        n, nb = len(tokens), int(llm.n_batch)
        held = np.asarray(llm.input_ids[: llm.n_tokens])
        last: tuple[int, ...] = state["tokens"]
        canon = min(len(last), len(held))
        same = 0
        if canon:
            diff = np.flatnonzero(held[:canon] != np.asarray(last[:canon]))
            canon = int(diff[0]) if diff.size else canon  # what the cache holds of the last prompt
            want = np.asarray(tokens[:canon])
            diff = np.flatnonzero(np.asarray(last[: len(want)]) != want)
            same = int(diff[0]) if diff.size else len(want)
        if same == n == len(last) and state["logits"] is not None and llm._ctx.kv_cache_seq_rm(-1, n, -1):
            # the last answer dropped, the prompt kept
            llm.n_tokens = n
            last_logits()[:] = state["logits"]  # the sampler reads these
            llm._requires_eval = False
            return
        keep = min(same // nb * nb, (n - 1) // nb * nb)  # the last chunk is always evaluated
        if keep and not llm._ctx.kv_cache_seq_rm(-1, keep, -1):  # a cache that cannot be cut
            llm.reset()
            keep = 0
        llm.n_tokens = keep  # eval() drops the cache from here
        for start in range(keep, n, nb):
            llm.eval(tokens[start : start + nb])
        state["tokens"], state["logits"] = tuple(tokens), last_logits().copy()

    def generate(tokens: Any, *args: Any, reset: bool = True, **kwargs: Any) -> Any:
        if not reset or not tokens:
            return original(tokens, *args, reset=reset, **kwargs)
        place(list(tokens))
        return original([], *args, reset=False, **kwargs)  # sample from the prompt's logits

    llm.generate = generate
