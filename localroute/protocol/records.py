"""Wire models of what the gateway records and reports: the one record per request that the audit log,
the stats window, the metrics and the request log read, and the stats summary over those records
(`GET /v1/localroute/stats`, the dashboard, `localroute report`).

TypedDicts, like the answers in `wire` and for the same reason: a record is built once per request
on the hot path, and a TypedDict is a plain dict at runtime, checked by mypy and read by pydantic
only off it (the OpenAPI schema of the stats, the tests).
"""

from __future__ import annotations

from typing import Annotated, Literal, NotRequired

from pydantic import Field
from typing_extensions import TypedDict  # pydantic reads only this one on Python < 3.12

from localroute.protocol.wire import Count, PrivacyClass, PrivacyLabel, closed

Outcome = Literal["ok", "escalated", "error", "refused"]
USD = Annotated[float, Field(ge=0)]
Share = Annotated[float, Field(ge=0, le=1)]
Time = Annotated[str, Field(json_schema_extra={"format": "date-time"})]  # ISO 8601 with its offset


@closed
class Tokens(TypedDict):
    """Tokens in and out, in a record and in the stats."""

    prompt: Count
    completion: Count


class RecordDecision(TypedDict):
    """The policy's first choice, in a record."""

    model: str
    tier: int
    score: float
    route: str
    sticky: NotRequired[str | None]  # the rung that answered earlier turns, when remembered


class Attempt(TypedDict):
    """One rung tried for a request (`router.Trace.attempt`), charged for what it used."""

    model: str
    outcome: Outcome
    reason: str | None
    ms: float
    remote: bool
    tokens: Tokens
    compute_s: float
    cost_usd: USD


class RecordContent(TypedDict):
    """The conversation, only in the audit log and only when the operator set `audit_content`."""

    messages: list[dict[str, str]]
    answer: str | None


class RecordHead(TypedDict):
    """The keys a record starts with: when, which request, its privacy class, and how it ended."""

    ts: Time
    id: str
    api: str  # the API called: chat, completions, responses, messages, embeddings
    privacy: PrivacyLabel
    status: int
    error: str | None
    stream: bool
    latency_ms: float
    ttft_ms: float | None
    replica: NotRequired[str]  # which gateway replica served it (only when replicas are configured)


class Served(TypedDict, total=False):
    """The keys a record has when a rung was chosen and ran (a request refused before has none)."""

    decision: RecordDecision
    route: str
    model: str | None
    tier: int | None
    local: bool
    escalations: Count
    moves: list[str]
    tokens: Tokens
    compute_s: float
    output_valid: bool | None  # the answer kept the JSON / tool-call contract; None: none asked
    # Each local answer the cascade judged: model -> its signals (mean, tail, min, p10, p25, p50,
    # margin: the first token's top-2 logprob gap, n: tokens judged).
    confidence: dict[str, dict[str, float]]


class RecordTail(Served):
    """The rest of a record: every rung tried and what it cost (what the baseline model would have
    cost), `Served`'s keys when a rung ran, and the conversation when the operator opted in."""

    attempts: list[Attempt]
    cost_usd: USD
    baseline_usd: USD
    content: NotRequired[RecordContent]


class RequestRecord(RecordHead, RecordTail):
    """One finished request: written to the audit log, kept in the stats window, observed by the
    metrics, logged. Records in older logs may lack keys."""


class Spend(TypedDict):
    """What requests cost, what the baseline model would have cost, and the difference."""

    cost_usd: USD
    baseline_usd: USD
    saved_usd: float


class Money(Spend):
    """`Spend`, with the saving in percent (None when the baseline cost nothing)."""

    savings_pct: float | None


@closed
class Latency(TypedDict):
    """Nearest-rank percentiles in milliseconds; None without data."""

    p50: float | None
    p95: float | None


@closed
class ModelStats(Money):
    """One model that answered, over the window."""

    model: str
    tier: int | None
    local: bool
    requests: Count
    escalated: Count
    latency_ms: Latency
    tokens: Tokens


@closed
class Totals(Money):
    """Every request in the window; latency, locality and escalation over the served ones."""

    requests: Count
    ok: Count
    errors: Count
    local: Count
    local_share: Share
    escalated: Count
    escalation_rate: Share
    tokens: Tokens
    latency_ms: Latency


@closed
class SeriesPoint(Spend):
    """Requests and spend in one bucket of `bucket_s` seconds starting at `t`."""

    t: Time
    requests: Count


@closed
class RecentRequest(TypedDict):
    """One of the latest requests, newest first."""

    ts: str | None
    id: str | None
    model: str | None
    tier: int | None
    route: str | None
    privacy: PrivacyClass | None
    status: int
    latency_ms: float
    cost_usd: USD
    baseline_usd: USD
    escalations: Count


@closed
class PrivacyCounts(TypedDict):
    private: Count
    public: Count


@closed
class LatencyHistogram(TypedDict):
    """Served requests by latency: `counts[i]` is over `bounds_ms[i-1]` and at most `bounds_ms[i]`."""

    bounds_ms: list[float]
    counts: list[Count]


@closed
class Stats(TypedDict):
    """`GET /v1/localroute/stats`: totals, per-model breakdowns, a cost series and the latest requests."""

    # `stats.summarize` builds it; `localroute report` prints it.

    object: Literal["localroute.stats"]
    since: str | None  # as the client wrote it, offset included: not always RFC 3339 (`+05:30:15`)
    until: Time
    bucket_s: Annotated[int, Field(ge=1)]
    totals: Totals
    models: list[ModelStats]
    escalations: dict[str, Count]
    routes: dict[str, Count]
    privacy: PrivacyCounts
    series: list[SeriesPoint]
    latency_histogram: LatencyHistogram
    recent: list[RecentRequest]
