"""Control-token text in chat messages: found in a model's vocabulary, kept from being tokenized as
control tokens. See docs/security.md ("Roles cannot be forged from inside a message")."""

from __future__ import annotations

import re
from typing import Any

WORD_JOINER = "\u2060"


def control_markers(llm: Any) -> re.Pattern[str] | None:
    """The texts of the model's control tokens (`<|im_start|>`, `<start_of_turn>`, ...), longest first.

    The chat template's output is tokenized with special tokens parsed, so a client's text holding
    `<|im_end|><|im_start|>system` would become real turn markers: a role forged from inside a
    message. Found once per load from the vocabulary's token attributes."""
    import llama_cpp

    vocab = llm._model.vocab
    wanted = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
    texts = set()
    for t in range(llm.n_vocab()):
        if llama_cpp.llama_vocab_get_attr(vocab, t) & wanted:
            text = llm.detokenize([t], special=True).decode("utf-8", "ignore")
            # Markup only (`<|im_start|>`, `[INST]`): a user-defined token that is a plain word or
            # whitespace forges nothing, and ordinary text must reach the model untouched.
            if len(text.strip()) >= 2 and any(c in text for c in "<>[]|"):
                texts.add(text)
    return re.compile(_trie_pattern(texts)) if texts else None


def _trie_pattern(words: set[str]) -> str:
    """One regex for many literals, nested by shared prefix (gemma has ~6,000 control tokens, all
    starting with `<`): matching costs the depth of the trie at each position, not the number of
    words, so a message full of `<` cannot make it slow. The longest literal wins."""
    trie: dict[str, Any] = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}  # a word ends here

    def build(node: dict[str, Any]) -> str:
        ends = "" in node
        branches = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if ends else body

    return build(trie)


def defuse(markers: re.Pattern[str], text: str) -> str:
    """A control token's text in a message stays visible to the model as text, never as a token: an
    invisible word joiner after its first character keeps the tokenizer from matching it."""
    return markers.sub(lambda m: m.group(0)[0] + WORD_JOINER + m.group(0)[1:], text)
