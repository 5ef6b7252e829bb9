"""The `[feedback]` section of models.toml: what is kept to learn from this deployment's own traffic."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

_FORBID = ConfigDict(extra="forbid", frozen=True)


class FeedbackConfig(BaseModel):
    """Per-request decisions and features, and the outcomes clients report, in a local SQLite file."""

    model_config = _FORBID
    enabled: bool = True
    # The SQLite file. None: `feedback.sqlite3` beside the audit log (the state directory).
    path: str | None = None
    # Keep the prompt text with each row. Off: only numeric features, never text.
    store_prompts: bool = False
    # Bounded: the oldest rows go first beyond `max_rows`, and rows older than `retention_days`. A row
    # of the learned recipe's features takes about 5-35 KB (its hashed word buckets): 20,000 rows are
    # roughly 0.1-0.7 GB.
    max_rows: Annotated[int, Field(ge=100, le=10_000_000)] = 20_000
    retention_days: Annotated[float, Field(gt=0, le=3650)] = 90.0
    # Share of public requests answered by a paid rung that the cheapest local rung also answers, in
    # the background and only while it is idle, to label them (0: never).
    shadow_sample: Annotated[float, Field(ge=0, le=1)] = 0.0
    shadow_max_tokens: Annotated[int, Field(ge=1, le=4096)] = 256
    # Per local model: calibrate the escalation threshold from feedback once this many labelled
    # answers of that model exist (both outcomes present); fewer: the [routing.cascade] thresholds.
    calibrate_min_rows: Annotated[int, Field(ge=20)] = 200
    # Escalate when the calibrated probability that the stronger model was needed exceeds this.
    calibrate_escalate_above: Annotated[float, Field(gt=0, lt=1)] = 0.5
