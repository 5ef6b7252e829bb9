"""The learned difficulty scorer: a logistic model on `features.py`'s recipe, stored as a JSON artifact.

The artifact carries its weights, the recipe it was trained on and the sha256 of its own content. A
file whose digest does not match, made by another recipe (other word table, signals, buckets), or not
matching the operator's pin (`[routing] scorer_sha256`) is refused with a ConfigError at startup.

Scoring is fast because every word's share of the logit depends on the word alone: the embedding part
is folded into one number per word of the table at load time (vector . weights), the hashed part is
summed once per distinct word and cached. A request then costs the keyword scan the heuristic does
plus one dict look-up per word of the bounded window.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any

from localroute.errors import ConfigError
from localroute.routing.features import Featuriser, Turn, VectorsError, word_buckets, words

FORMAT = "localroute-scorer"
DEFAULT_ARTIFACT = Path(__file__).parent / "data" / "scorer.json"
WORD_CACHE = 200_000  # distinct words whose hashed share is remembered; beyond it, recomputed


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
        self._known = dict.fromkeys(self.featuriser.vectors.index, 1)
        # A word's hashed share is summed when first seen (up to WORD_CACHE words), not all at load:
        # startup stays under a second.
        self._word_cache: dict[str, float] = {}
        self._limit = WORD_CACHE

    def _hashed_sum(self, word: str) -> float:
        h = self._hashed
        return math.fsum(h.get(b, 0.0) for b in word_buckets(word))

    def _hashed_share(self, word: str) -> float:
        s = self._word_cache.get(word)
        if s is None:
            s = self._hashed_sum(word)
            if len(self._word_cache) < self._limit:
                self._word_cache[word] = s
        return s

    def logit_parts(self, turns: Sequence[Turn]) -> tuple[dict[str, float], float, float]:
        """(dense feature contributions, embedding share, n-gram share) of the logit."""
        dense, text = self.featuriser.dense(turns)
        d = self._dense
        parts = {k: d.get(k, 0.0) * v for k, v in dense.items()}
        ws = words(text)
        if not ws:
            return parts, 0.0, 0.0
        # map() with dict.get runs in C: three passes over ~200 words cost less than one Python loop.
        found = sum(map(self._known.get, ws, repeat(0)))
        emb = sum(map(self._emb.get, ws, repeat(0.0))) / found if found and self._emb else 0.0
        shares = list(map(self._word_cache.get, ws))
        if None in shares:
            shares = [self._hashed_share(w) if x is None else x for x, w in zip(shares, ws, strict=True)]
        return parts, emb, sum(shares) / len(ws)  # type: ignore[arg-type]

    def score(self, turns: Sequence[Turn]) -> Scored:
        parts, emb, hashed = self.logit_parts(turns)
        z = self.bias + sum(parts.values()) + emb + hashed
        p = 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))
        sig = sum(v for k, v in parts.items() if k.startswith("s:"))
        reasons = (
            f"learned scorer {self.sha256[:12]}: logit {z:+.2f}",
            f"learned: length {parts.get('len', 0.0):+.2f}, depth {parts.get('depth', 0.0):+.2f}, "
            f"keywords {sig:+.2f}, embedding {emb:+.2f}, n-grams {hashed:+.2f}, bias {self.bias:+.2f}",
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
