"""Structured logs: one JSON object per line (or key=value text for a terminal), on stderr.

Each finished request logs one line on the `localroute.request` logger whose fields are its audit
record without any content. Level: `LOCALROUTE_LOG_LEVEL`, else `[server] log_level`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

REQUEST_LOGGER = "localroute.request"
LEVELS = ("debug", "info", "warning", "error")


def level_from(configured: str) -> str:
    """The effective level name: the environment variable wins over the config file."""
    env = os.environ.get("LOCALROUTE_LOG_LEVEL", "").strip().lower()
    return env if env in LEVELS else configured


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


def dumps(out: dict[str, Any]) -> str:
    """One compact JSON line. orjson writes the same JSON as `json.dumps(separators=(",", ":"),
    ensure_ascii=False)` (floats may read `1e-5` for `1e-05`) in a tenth of the CPU: one line per
    request (docs/bench-overhead.md). What it refuses (an integer past 64 bits) goes through json."""
    try:
        return orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(out, separators=(",", ":"), ensure_ascii=False, default=str)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        ts = fields.get("ts")  # a request's own `ts` (its audit record's) wins: not formatted twice
        out: dict[str, Any] = {
            "ts": ts if isinstance(ts, str) else _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__  # the type only: no traceback, no paths
        return dumps(out)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [f"{record.levelname} {record.name}: {record.getMessage()}"]
        for k, v in _fields(record).items():
            if isinstance(v, dict | list):
                v = json.dumps(v, separators=(",", ":"), ensure_ascii=False, default=str)
            parts.append(f"{k}={v}")
        if record.exc_info and record.exc_info[0] is not None:
            parts.append(f"exc_type={record.exc_info[0].__name__}")
        return " ".join(parts)


def configure(level: str, fmt: Literal["json", "text"]) -> None:
    """Route every logger (uvicorn's too) through one stderr handler in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_from(level).upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per engine call is noise
