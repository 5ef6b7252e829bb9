"""The JSON log lines: what `JSONFormatter` writes reads back as the fields it was given."""

from __future__ import annotations

import json
import logging
import math

from localroute.observe.logs import REQUEST_LOGGER, JSONFormatter


def line(fields: dict[str, object], msg: str = "request") -> dict[str, object]:
    record = logging.LogRecord(REQUEST_LOGGER, logging.INFO, "", 0, msg, (), None)
    record.fields = fields
    out = JSONFormatter().format(record)
    assert "\n" not in out
    parsed: dict[str, object] = json.loads(out)
    return parsed


def test_a_request_line_reads_back_as_its_record() -> None:
    rec = {
        "ts": "2026-12-03T22:00:00.123+00:00", "id": "req-1", "latency_ms": 3.2, "cost_usd": 1.2e-05,
        "baseline_usd": 1 / 3, "error": None, "stream": False, "tokens": {"prompt": 30}, "moves": [],
        "model": "modèle-ü", "huge": 2**70,
    }  # fmt: skip
    out = line(rec)
    assert out["ts"] == rec["ts"]  # the request's own time, not the log record's
    assert (out["level"], out["logger"], out["msg"]) == ("info", REQUEST_LOGGER, "request")
    assert {k: out[k] for k in rec} == rec  # floats bit for bit, non-ASCII kept, an int past 64 bits too


def test_what_json_cannot_encode_is_written_as_text() -> None:
    out = line({"when": object.__new__(type("Thing", (), {"__str__": lambda self: "thing"})), 3: "x"})
    assert out["when"] == "thing" and out["3"] == "x"
    assert isinstance(out["ts"], str) and out["ts"].endswith("+00:00")


def test_a_non_finite_number_does_not_break_the_line() -> None:
    out = line({"x": math.nan})
    assert out["x"] is None  # strict JSON has no NaN: every reader can parse the line
