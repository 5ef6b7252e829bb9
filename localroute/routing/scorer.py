"""The learned difficulty scorer: a logistic model on `features.py`'s recipe, stored as a JSON artifact.

The artifact carries its weights, the recipe it was trained on and the sha256 of its own content. A
file whose digest does not match, made by another recipe (other word table, signals, buckets), or not
matching the operator's pin (`[routing] scorer_sha256`) is refused with a ConfigError at startup.

Scoring is fast because every word's share of the logit depends on the word alone: the embedding part
is folded into one number per word of the table at load time (vector . weights), and a word's whole
share (that plus its hashed n-grams' weights) is summed once per distinct word and cached. A request
then costs one split of the bounded window and one `sum(map(dict.get))` over its words, in C; no
keyword scan (recipe 2, features.py).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localroute.errors import ConfigError
from localroute.routing.features import Featuriser, Turn, VectorsError, word_buckets, words

FORMAT = "localroute-scorer"
DEFAULT_ARTIFACT = Path(__file__).parent / "data" / "scorer.json"
WORD_CACHE = 200_000  # distinct words whose share is remembered; beyond it, recomputed


@dataclass(frozen=True)
class Artifact:
    """A trained scorer as stored: weights on named features, plus what it was trained on."""

    bias: float
    weights: Mapping[str, float]
    recipe: Mapping[str, object]
    meta: Mapping[str, object] = field(default_factory=dict)

    def body(self) -> dict[str, object]:
        w = {k: round(v, 6) for k, v in sorted(self.weights.items())}
        return {"format": FORMAT, "recipe": dict(self.recipe), "meta": dict(self.meta),
                "bias": round(self.bias, 6), "weights": w}  # fmt: skip

    def dumps(self) -> str:
        body = self.body()
        return json.dumps({**body, "sha256": digest(body)}, indent=0, sort_keys=True) + "\n"

    def save(self, path: Path) -> str:
        text = self.dumps()
        path.write_text(text, encoding="utf-8")
        sha: str = json.loads(text)["sha256"]
        return sha


def digest(body: Mapping[str, object]) -> str:
    """sha256 of the canonical JSON of everything but the digest itself."""
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def read_artifact(path: Path, pin: str | None = None) -> tuple[Artifact, str]:
    """Read and verify an artifact; return it with its digest. Raises ConfigError naming the problem."""
    name = path.name
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"scorer {name}: cannot read the file ({exc.strerror})") from None
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"scorer {name}: not a JSON scorer artifact") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConfigError(f"scorer {name}: not a {FORMAT} artifact")
    claimed = doc.pop("sha256", None)
    if not isinstance(claimed, str) or digest(doc) != claimed:
        raise ConfigError(f"scorer {name}: content does not match its sha256 (damaged or edited); retrain it")
    if pin is not None and pin != claimed:
        raise ConfigError(f"scorer {name}: sha256 {claimed[:12]}… is not the pinned routing.scorer_sha256")
    try:
        weights = {str(k): float(v) for k, v in doc["weights"].items()}
        art = Artifact(float(doc["bias"]), weights, dict(doc["recipe"]), dict(doc.get("meta") or {}))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ConfigError(f"scorer {name}: malformed weights") from None
    return art, claimed


@dataclass(frozen=True)
class Scored:
    probability: float
    reasons: tuple[str, ...]


class LearnedScorer:
    """Scores a conversation's difficulty in [0, 1] with a verified artifact."""

    def __init__(self, artifact: Artifact, sha256: str, featuriser: Featuriser | None = None) -> None:
        self.featuriser = featuriser or Featuriser()
        try:
            recipe = self.featuriser.recipe
        except VectorsError as exc:
            raise ConfigError(f"learned scorer: {exc}") from None
        if dict(artifact.recipe) != recipe:
            diff = sorted(
                k for k in set(recipe) | set(artifact.recipe) if recipe.get(k) != artifact.recipe.get(k)
            )
            raise ConfigError(
                f"scorer {sha256[:12]}: trained with another feature recipe (differs in {', '.join(diff)}); "
                "retrain it with this version (`localroute train`)"
            )
        self.artifact, self.sha256 = artifact, sha256
        w = artifact.weights
        self.bias = artifact.bias
        self._dense = {k: v for k, v in w.items() if not k.startswith(("e", "h"))}
        self._hashed = {int(k[1:]): v for k, v in w.items() if k.startswith("h")}
        emb = [w.get(f"e{i}", 0.0) for i in range(self.featuriser.vectors.dims)]
        self._emb = self.featuriser.vectors.dot_all(emb) if any(emb) else {}
        self._w_len, self._w_depth = self._dense.get("len", 0.0), self._dense.get("depth", 0.0)
        # A word's share (folded vector + hashed n-grams) is summed when first seen (up to WORD_CACHE
        # words), not all at load: startup stays under a second.
        self._word_cache: dict[str, float] = {}
        self._limit = WORD_CACHE

    def _share(self, word: str) -> float:
        s = self._word_cache.get(word)
        if s is None:
            h = self._hashed
            s = self._emb.get(word, 0.0) + math.fsum(h.get(b, 0.0) for b in word_buckets(word))
            if len(self._word_cache) < self._limit:
                self._word_cache[word] = s
        return s

    def logit_parts(self, turns: Sequence[Turn]) -> tuple[float, float, float]:
        """(length share, depth share, words' share) of the logit, bias aside."""
        dense, text = self.featuriser.dense(turns)
        ws = words(text)
        if not ws:
            return self._w_len * dense["len"], self._w_depth * dense["depth"], 0.0
        total: float
        try:  # every word seen before: one pass in C
            total = sum(map(self._word_cache.get, ws))  # type: ignore[arg-type]
        except TypeError:  # a new word (None): fold it in, then it is cached
            total = sum([self._share(w) for w in ws])
        return self._w_len * dense["len"], self._w_depth * dense["depth"], total / len(ws)

    def score(self, turns: Sequence[Turn]) -> Scored:
        length, depth, share = self.logit_parts(turns)
        z = self.bias + length + depth + share
        p = 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))
        reasons = (
            f"learned scorer {self.sha256[:12]}: logit {z:+.2f}",
            f"learned: length {length:+.2f}, depth {depth:+.2f}, words {share:+.2f}, bias {self.bias:+.2f}",
        )
        return Scored(p, reasons)


def resolve(setting: str, base_dir: Path) -> Path:
    """`learned` is the packaged artifact; anything else is a path (relative to the config's folder)."""
    if setting == "learned":
        return DEFAULT_ARTIFACT
    p = Path(setting).expanduser()
    return p if p.is_absolute() else (base_dir / p).resolve()


def load_scorer(path: Path, pin: str | None = None, featuriser: Featuriser | None = None) -> LearnedScorer:
    """Read, verify and prepare a scorer; every failure is a one-line ConfigError."""
    art, sha = read_artifact(path, pin)
    return LearnedScorer(art, sha, featuriser)


def meta_of(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = doc.get("meta")
    return meta if isinstance(meta, dict) else {}
