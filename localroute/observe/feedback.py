"""The feedback store: what was decided for each request, the numeric features needed to learn from it,
and the outcome a client (or a shadow run) reported, in a local SQLite file (stdlib `sqlite3`).

Nothing here is ever sent anywhere. No prompt text is kept unless the operator set
`[feedback] store_prompts`. The file is bounded by row count and age. `labelled()` is the training
set: one row per request whose outcome says whether the stronger model was needed.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson

from localroute.config.feedback import FeedbackConfig
from localroute.protocol.chat import ChatCompletionRequest

Featurize = Callable[[ChatCompletionRequest], Mapping[str, float]]
Outcome = Literal["good", "bad", "strong_needed", "score"]
SCHEMA_VERSION = 1
_HASHED = re.compile(r"h\d+$")  # the learned recipe's hashed word / n-gram buckets
PRUNE_EVERY = 500  # inserts between two retention passes
# Rows written in one transaction at most: a commit per row cost half the store's CPU per request, so
# rows are committed when the writer's queue runs dry (`commit`) or after this many.
BATCH_ROWS = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    rung TEXT NOT NULL,          -- the rung that answered
    tier INTEGER NOT NULL,
    local INTEGER NOT NULL,      -- 1: a local rung answered
    decided TEXT NOT NULL,       -- the policy's first choice
    score REAL NOT NULL,
    route TEXT NOT NULL,
    private INTEGER NOT NULL,
    features TEXT NOT NULL,      -- JSON {name: number}
    signals TEXT NOT NULL,       -- JSON {name: number}: the local answer's confidence signals, if judged
    judged TEXT,                 -- the local rung those signals are of
    prompt TEXT,                 -- only with [feedback] store_prompts
    outcome TEXT,                -- good | bad | strong_needed | score
    value REAL,                  -- the score in [0, 1] for `score`
    label REAL,                  -- from the client's outcome: 1 = the stronger model was needed
    shadow REAL,                 -- from a shadow run: 1 - agreement of the cheapest local rung
    shadow_rung TEXT,
    labelled_ts REAL
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
"""


class UnknownRequestError(KeyError):
    """No row for this request id (never served here, or pruned)."""


@dataclass(frozen=True)
class Labelled:
    """One training row: `label` in [0, 1] says how much the stronger model was needed."""

    features: dict[str, float]
    label: float
    rung: str  # the rung that answered
    tier: int
    time: float  # UNIX seconds of the request
    source: Literal["client", "shadow"]
    signals: dict[str, float]  # confidence signals of the local answer judged (empty if none)
    judged: str | None  # the local rung those signals are of
    score: float = 0.0  # the difficulty the serving policy gave it


def label_of(outcome: Outcome, value: float, local: bool) -> float | None:
    """What an outcome says about "the stronger model was needed". A good or bad answer from a local
    rung says it directly; from a remote rung it says nothing about the cheaper one (None)."""
    if outcome == "strong_needed":
        return 1.0
    if not local:
        return None
    if outcome == "good":
        return 0.0
    if outcome == "bad":
        return 1.0
    return 1.0 - value


class FeedbackStore:
    """One SQLite file. The gateway calls it from one writer thread (gateway/learn.py), never from
    the event loop: featurising a long prompt and an insert cost milliseconds."""

    def __init__(self, path: Path, cfg: FeedbackConfig, featurize: Featurize) -> None:
        self.path = path
        self.cfg = cfg
        self.featurize = featurize
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():  # features and, if opted in, prompts: readable by this user only
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        # One thread uses it at a time (the writer, or startup before it); workers of `serve --workers`
        # share the file, so a lock held by another process is waited for briefly, then the row dropped.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0.5)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # a crash may lose the last rows, never corrupt
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._inserts = 0
        self._uncommitted = 0

    def close(self) -> None:
        self.commit()
        self._db.close()

    def commit(self) -> None:
        """Make the rows written so far durable (as `synchronous=NORMAL` makes anything durable)."""
        if self._db.in_transaction:
            self._db.execute("COMMIT")
        self._uncommitted = 0

    def remember(
        self,
        rid: str,
        req: ChatCompletionRequest,
        *,
        rung: str,
        tier: int,
        local: bool,
        decided: str,
        score: float,
        route: str,
        private: bool,
        signals: Mapping[str, float] | None = None,
        judged: str | None = None,
    ) -> None:
        """Keep one served request's decision and features (and its prompt, if opted in)."""
        raw = self.featurize(req)
        features = dict(zip(raw, map(float, raw.values()), strict=True))
        if not all(map(math.isfinite, features.values())):  # rare: only then filtered key by key
            features = {k: v for k, v in features.items() if math.isfinite(v)}
        if private:  # hashed word buckets can be reversed by a dictionary: a private prompt keeps none
            features = {k: v for k, v in features.items() if not _HASHED.match(k)}
        prompt = None
        if self.cfg.store_prompts:
            prompt = json.dumps([{"role": m.role, "content": m.text()} for m in req.messages])
        sig = {k: float(v) for k, v in (signals or {}).items() if math.isfinite(v)}
        # orjson, not json: a row holds ~130 floats, and the stdlib's shortest-repr float formatting
        # cost ~180 µs of the store's ~430 µs per row (orjson: ~9 µs). The text is the same JSON, and
        # every float reads back bit for bit (docs/bench-overhead.md).
        features_json, signals_json = orjson.dumps(features).decode(), orjson.dumps(sig).decode()
        if not self._db.in_transaction:
            self._db.execute("BEGIN")
        self._db.execute(
            "INSERT OR REPLACE INTO requests (id, ts, rung, tier, local, decided, score, route, private,"
            " features, signals, judged, prompt) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (rid, time.time(), rung, tier, int(local), decided, score, route, int(private),
             features_json, signals_json, judged, prompt),
        )  # fmt: skip
        self._inserts += 1
        self._uncommitted += 1
        if self._inserts % PRUNE_EVERY == 1:
            self.prune()
        if self._uncommitted >= BATCH_ROWS:
            self.commit()

    def prune(self, now: float | None = None) -> None:
        """Drop rows past the retention age, then the oldest beyond `max_rows`."""
        now = time.time() if now is None else now
        self._db.execute("DELETE FROM requests WHERE ts < ?", (now - self.cfg.retention_days * 86_400,))
        self._db.execute(
            "DELETE FROM requests WHERE rowid IN (SELECT rowid FROM requests ORDER BY ts DESC "
            "LIMIT -1 OFFSET ?)",
            (self.cfg.max_rows,),
        )

    def feedback(self, rid: str, outcome: Outcome, value: float = 0.0) -> float | None:
        """Record a client's outcome for `rid`; returns the label it gives (None: it gives none).
        Raises UnknownRequestError when no such request is stored. The latest outcome wins."""
        row = self._db.execute("SELECT local FROM requests WHERE id = ?", (rid,)).fetchone()
        if row is None:
            raise UnknownRequestError(rid)
        label = label_of(outcome, value, bool(row[0]))
        self._db.execute(
            "UPDATE requests SET outcome = ?, value = ?, label = ?, labelled_ts = ? WHERE id = ?",
            (outcome, value if outcome == "score" else None, label, time.time(), rid),
        )
        self.commit()  # a client's label is on disk when its call is answered
        return label

    def shadow(self, rid: str, rung: str, agreement: float) -> None:
        """A shadow run's verdict: the cheapest local rung agreed this much with the paid answer."""
        self._db.execute(
            "UPDATE requests SET shadow = ?, shadow_rung = ? WHERE id = ?",
            (1.0 - min(1.0, max(0.0, agreement)), rung, rid),
        )

    def labelled(self) -> Iterator[Labelled]:
        """Every row with a label, oldest first; a client's own outcome wins over a shadow run's."""
        rows = self._db.execute(
            "SELECT features, label, shadow, rung, tier, ts, signals, judged, score FROM requests"
            " WHERE label IS NOT NULL OR shadow IS NOT NULL ORDER BY ts"
        )
        for features, label, shadow, rung, tier, ts, signals, judged, score in rows:
            yield Labelled(
                json.loads(features),
                float(label if label is not None else shadow),
                rung,
                int(tier),
                float(ts),
                "client" if label is not None else "shadow",
                json.loads(signals),
                judged,
                float(score),
            )

    def judged(self, newest: int) -> list[Labelled]:
        """What calibration reads, kept cheap at startup however large the store: the newest `newest`
        labelled rows a local rung judged, oldest first, with their signals and without their
        features (no features JSON is parsed; `features` is empty)."""
        rows = self._db.execute(
            "SELECT label, shadow, rung, tier, ts, signals, judged, score FROM requests"
            " WHERE (label IS NOT NULL OR shadow IS NOT NULL) AND judged IS NOT NULL"
            " ORDER BY ts DESC LIMIT ?",
            (max(newest, 0),),
        ).fetchall()
        out = [
            Labelled({}, float(label if label is not None else shadow), rung, int(tier), float(ts),
                     "client" if label is not None else "shadow", json.loads(signals), judged, float(score))
            for label, shadow, rung, tier, ts, signals, judged, score in rows
        ]  # fmt: skip
        out.reverse()
        return out

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM requests").fetchone()[0])
