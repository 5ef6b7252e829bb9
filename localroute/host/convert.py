"""Hugging Face safetensors -> GGUF for BERT sentence-embedding models (all-MiniLM-L6-v2 and its kin),
written with `gguf`, llama.cpp's own writer, the way llama.cpp's convert_hf_to_gguf.py does `BertModel`.

Why here and not by running convert_hf_to_gguf.py: that script needs torch and transformers (gigabytes)
and is not on the package registry; a BERT is a few dozen tensors, a WordPiece vocab and a handful of
keys, so the same mapping is ~150 lines on numpy. The output is deterministic (no timestamps, tensors
in the safetensors file's order), so models.toml pins its sha256 like a downloaded file's.

What is mirrored from the reference converter: the tensor names (`gguf.get_tensor_name_map`), the pooler
and `position_ids` dropped, F32 kept for 1-D tensors, norms, position and token-type embeddings; the
vocabulary in "phantom space" form (`##x` -> `x`, `x` -> `▁x`, control tokens as they are) with token
types, `tokenizer.ggml.model = "bert"`, special tokens and add-bos/eos from `gguf.SpecialVocab`; the
pooling type from sentence-transformers' modules.json; non-causal attention; layer-norm epsilon and
context length from config.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from localroute.errors import ModelUnavailableError

OutType = Literal["f16", "f32"]
# Read from the source folder; vocab.txt and model.safetensors are the vocabulary and the weights.
NEEDED = ("config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json")
_DTYPES = {"F32": "<f4", "F16": "<f2"}
_DROPPED = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
# The WordPiece tokenizer of bert-base-uncased, which BAAI/bge-small-en-v1.5 shares: llama.cpp only
# reads a pre-tokenizer name for BPE vocabularies, but the key is written as the reference converter does.
_TOKENIZER_PRE = "bert-bge"


def convert_bert(src: Path, out: Path, outtype: OutType = "f16", name: str | None = None) -> str:
    """Write the GGUF of the BERT model in folder `src` to `out`; return the file's sha256.

    Raises ModelUnavailableError naming what is missing or not a BERT.
    """
    try:
        import gguf
        import numpy as np
    except ImportError:
        raise ModelUnavailableError(
            "converting to GGUF needs the gguf package: pip install 'localroute[cpu]'"
        ) from None
    for needed in NEEDED:
        if not (src / needed).is_file():
            raise ModelUnavailableError(f"cannot convert: {needed} is missing from the source files")
    hp = json.loads((src / "config.json").read_text(encoding="utf-8"))
    if "BertModel" not in hp.get("architectures", []) or hp.get("model_type") != "bert":
        raise ModelUnavailableError("cannot convert: config.json does not describe a BertModel")
    arch = gguf.MODEL_ARCH.BERT
    n_layer = int(hp["num_hidden_layers"])
    ftype = gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16" else gguf.LlamaFileType.ALL_F32

    w = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[arch])
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name or src.name)
    w.add_license("apache-2.0")
    # set_gguf_parameters: TextModel's, then BertModel's
    w.add_block_count(n_layer)
    w.add_context_length(int(hp["max_position_embeddings"]))
    w.add_embedding_length(int(hp["hidden_size"]))
    w.add_feed_forward_length(int(hp["intermediate_size"]))
    w.add_head_count(int(hp["num_attention_heads"]))
    w.add_layer_norm_eps(float(hp["layer_norm_eps"]))
    w.add_file_type(ftype)
    w.add_causal_attention(False)
    w.add_pooling_type(_pooling(src, gguf))
    # set_vocab
    tokens, toktypes = _vocab(src, int(hp["vocab_size"]), gguf)
    w.add_token_type_count(int(hp.get("type_vocab_size", 1)))
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre(_TOKENIZER_PRE)
    w.add_token_list(tokens)
    w.add_token_types(toktypes)
    # gguf warns that it has no key for [CLS] (BERT's bos is [CLS]): as the reference converter, skip it
    vocab_log = logging.getLogger("gguf.vocab")
    level, vocab_log.level = vocab_log.level, logging.ERROR
    try:
        gguf.SpecialVocab(src, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)
    finally:
        vocab_log.setLevel(level)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    names = gguf.get_tensor_name_map(arch, n_layer)
    keep_f32 = {
        gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.POS_EMBD],
        gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_TYPES],
    }
    for hf_name, data in _safetensors(src / "model.safetensors", np):
        if hf_name.startswith("bert."):
            hf_name = hf_name[5:]
        if hf_name in _DROPPED or hf_name.startswith("cls."):
            continue
        new = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ModelUnavailableError(f"cannot convert: no GGUF name for tensor {hf_name}")
        f32 = data.ndim <= 1 or new.endswith("_norm.weight") or new.rsplit(".", 1)[0] in keep_f32
        w.add_tensor(new, data.astype(np.float32 if f32 or outtype == "f32" else np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sha256_of(out)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _pooling(src: Path, gguf: Any) -> Any:
    """sentence-transformers' pooling module decides (mean for all-MiniLM-L6-v2); none declared: CLS,
    what a plain BertModel's pooler would read."""
    modules = src / "modules.json"
    if not modules.is_file():
        return gguf.PoolingType.CLS
    for mod in json.loads(modules.read_text(encoding="utf-8")):
        if mod.get("type") == "sentence_transformers.models.Pooling":
            cfg = json.loads((src / mod["path"] / "config.json").read_text(encoding="utf-8"))
            if cfg.get("pooling_mode_mean_tokens"):
                return gguf.PoolingType.MEAN
            if cfg.get("pooling_mode_cls_token"):
                return gguf.PoolingType.CLS
            if cfg.get("pooling_mode_lasttoken"):
                return gguf.PoolingType.LAST
            raise ModelUnavailableError("cannot convert: only mean, CLS and last-token pooling are supported")
    return gguf.PoolingType.CLS


def _vocab(src: Path, vocab_size: int, gguf: Any) -> tuple[list[str], list[int]]:
    """vocab.txt in id order, as llama.cpp's WPM tokenizer reads it: control tokens (the tokenizer's
    special added tokens) as they are, word pieces without `##`, word starts behind `▁`."""
    words = (src / "vocab.txt").read_text(encoding="utf-8").split("\n")
    if words and words[-1] == "":
        words.pop()
    if len(words) > vocab_size:
        raise ModelUnavailableError(f"cannot convert: vocab.txt has {len(words)} tokens, config {vocab_size}")
    added = json.loads((src / "tokenizer.json").read_text(encoding="utf-8")).get("added_tokens", [])
    kinds = {
        t["id"]: gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED for t in added
    }
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i >= len(words):  # the embedding matrix is larger than the vocabulary: padding ids
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        kind = kinds.get(i, gguf.TokenType.NORMAL)
        tok = words[i]
        if kind != gguf.TokenType.CONTROL:
            tok = tok[2:] if tok.startswith("##") else "\u2581" + tok
        tokens.append(tok)
        types.append(int(kind))
    return tokens, types


def _safetensors(path: Path, np: Any) -> Iterator[tuple[str, Any]]:
    """The tensors of a .safetensors file in file order, read through a memory map (the format is an
    8-byte header length, a JSON header of dtype/shape/offsets, then the raw little-endian data)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 2 <= n <= min(size - 8, 100 << 20):
            raise ModelUnavailableError("cannot convert: model.safetensors has no valid header")
        header: dict[str, Any] = json.loads(f.read(n))
    base = 8 + n
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    entries = sorted(
        ((k, v) for k, v in header.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"][0]
    )
    for key, meta in entries:
        begin, end = meta["data_offsets"]
        if meta["dtype"] == "I64":  # position_ids: an index, not a weight
            continue
        dtype = _DTYPES.get(meta["dtype"])
        if dtype is None or base + end > size:
            raise ModelUnavailableError(f"cannot convert: tensor {key} ({meta['dtype']}) is not readable")
        yield key, np.frombuffer(raw[base + begin : base + end], dtype=dtype).reshape(meta["shape"])


def convert_main(argv: list[str] | None = None) -> int:
    """`python -m localroute.host.convert SRC OUT [--outtype f16|f32]`: convert one folder by hand."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m localroute.host.convert")
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--outtype", choices=("f16", "f32"), default="f16")
    args = p.parse_args(argv)
    partial = args.out.with_name(args.out.name + ".partial")
    try:
        digest = convert_bert(args.src, partial, args.outtype)
        os.replace(partial, args.out)
    except ModelUnavailableError as exc:
        print(f"convert: {exc}")
        return 1
    finally:
        partial.unlink(missing_ok=True)
    print(f"{digest}  {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(convert_main())
