"""The feedback store's rows: the features a request leaves behind read back exactly as featurised."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from localroute.config.feedback import FeedbackConfig
from localroute.observe.feedback import FeedbackStore
from localroute.protocol.chat import parse_chat_request


def req(*messages: tuple[str, str]) -> Any:
    body = {"model": "auto", "messages": [{"role": r, "content": c} for r, c in messages]}
    return parse_chat_request(json.dumps(body).encode())


def test_stored_features_read_back_bit_for_bit(tmp_path: Path) -> None:
    """The row's JSON (orjson since issue 18) gives back every float of the featuriser exactly."""
    from localroute.routing.traffic_features import recipe_featurizer

    featurize = recipe_featurizer()
    store = FeedbackStore(tmp_path / "fb.sqlite3", FeedbackConfig(), featurize)
    r = req(("system", "Be brief."), ("user", "Explain why the sky is blue, in two sentences, 1e-05 ü."))
    signals = {"mean": -1 / 3, "margin": 1e-300}
    store.remember("rid", r, rung="small", tier=0, local=True, decided="small", score=0.2,
                   route="policy:score<=0.30", private=False, signals=signals)  # fmt: skip
    assert store.feedback("rid", "good") == 0.0
    (row,) = list(store.labelled())
    store.close()
    expected = {k: float(v) for k, v in featurize(r).items()}
    assert row.features == expected and list(row.features) == list(expected)
    assert all(type(v) is float for v in row.features.values())
    assert row.signals == {"mean": -1 / 3, "margin": 1e-300}
    with sqlite3.connect(tmp_path / "fb.sqlite3") as db:
        (text,) = db.execute("SELECT features FROM requests").fetchone()
    assert isinstance(text, str) and json.loads(text) == expected  # TEXT, readable by any JSON reader
