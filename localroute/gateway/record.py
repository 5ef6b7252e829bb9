"""One record per request, read four ways: the audit log, the stats window, the Prometheus metrics and
the request log. No prompt or answer text (unless the operator opted into it, and then only in the
audit log), no matched data, no keys."""

from __future__ import annotations

import collections
import logging
import time
from datetime import UTC, datetime

from localroute.config.models import LOCAL_ENGINES
from localroute.config.schema import Config
from localroute.observe import tracing
from localroute.observe.cost import baseline_cost, baseline_model
from localroute.observe.logs import REQUEST_LOGGER
from localroute.observe.metrics import Metrics
from localroute.privacy.audit import AuditLog
from localroute.privacy.guard import Privacy
from localroute.protocol.chat import ChatCompletionRequest
from localroute.protocol.records import Attempt, RecordHead, RecordTail, RequestRecord
from localroute.protocol.surface import Api
from localroute.routing.trace import Trace

log = logging.getLogger("localroute")
request_log = logging.getLogger(REQUEST_LOGGER)


class Recorder:
    """Writes each request's record everywhere it is read; owns the stats window."""

    def __init__(self, config: Config, audit: AuditLog | None, metrics: Metrics) -> None:
        self.config = config
        self.audit = audit
        self.metrics = metrics
        self.baseline = baseline_model(config)
        self.replica = config.replica()
        # (time, record) of the latest requests, oldest first: the stats API's window.
        self.records: collections.deque[tuple[datetime, RequestRecord]] = collections.deque(
            maxlen=config.server.stats_window
        )

    def record(
        self,
        rid: str,
        privacy: Privacy,
        trace: Trace | None,
        status: int,
        t0: float,
        error: str | None = None,
        attempts: list[Attempt] | None = None,
        content: tuple[ChatCompletionRequest, str | None] | None = None,
        stream: bool = False,
        ttft: float | None = None,
        api: Api = "chat",
    ) -> RequestRecord:
        """Record one request, and return its record (its `cost_usd` is what a key's budget is charged).
        Without a trace (the request failed), `attempts` lists the rungs it tried."""
        seconds = time.monotonic() - t0
        now = datetime.now(UTC)
        head: RecordHead = {
            "ts": now.isoformat(timespec="milliseconds"),
            "id": rid,
            "api": api,
            "privacy": privacy.as_json(),
            "status": status,
            "error": error,
            "stream": stream,
            "latency_ms": round(seconds * 1000, 1),
            "ttft_ms": None if ttft is None else round((ttft - t0) * 1000, 1),
        }
        if self.replica is not None:
            head["replica"] = self.replica
        tail: RecordTail
        if trace is None:
            tried = attempts or []
            tail = {
                "attempts": tried,
                "cost_usd": round(sum(a.get("cost_usd", 0.0) for a in tried), 10),
                "baseline_usd": 0.0,
            }
        else:
            tail = self._outcome(trace)
        rec: RequestRecord = {**head, **tail}
        self.records.append((now, rec))
        self.metrics.observe(rec)
        tracing.finish(rec)
        if request_log.isEnabledFor(logging.INFO):
            # makeRecord + handle is what info() does, less its walk up the stack for the caller's file
            # and line (findCaller), which no formatter here prints (docs/bench-overhead.md).
            line = request_log.makeRecord(
                REQUEST_LOGGER, logging.INFO, "(unknown file)", 0, "request", (), None, extra={"fields": rec}
            )
            request_log.handle(line)
        if self.audit is None:
            return rec
        record = rec
        if self.config.privacy.audit_content and content is not None:  # the operator opted in
            req, answer = content
            rec = {
                **rec,
                "content": {
                    "messages": [{"role": m.role, "content": m.text()} for m in req.messages],
                    "answer": answer,
                },
            }
        try:
            self.audit.append(rec)
        except OSError as exc:  # the log must not take requests down; say so, once per failure
            log.error("audit log write failed: %s", exc.__class__.__name__)
        return record

    def _outcome(self, trace: Trace) -> RecordTail:
        d = trace.decision
        answered = self.config.model(trace.model) if trace.model else None
        usage = trace.usage
        return {
            "decision": {
                "model": d.model,
                "tier": d.tier,
                "score": round(d.score, 4),
                "route": d.route,
                "sticky": d.sticky,
            },
            "route": trace.route,
            "model": trace.model or None,
            "tier": trace.tier if trace.model else None,
            # Served inside the trust boundary: a local engine, reached inside `trusted_networks`.
            "local": answered is not None and answered.engine in LOCAL_ENGINES and not trace.untrusted,
            "escalations": trace.escalations,
            "moves": trace.moves,
            "attempts": trace.attempts,
            "tokens": {
                "prompt": usage.get("prompt_tokens", 0),
                "completion": usage.get("completion_tokens", 0),
            },
            "compute_s": round(trace.compute_s, 6),
            "cost_usd": round(trace.cost_usd, 10),
            "baseline_usd": round(
                baseline_cost(self.baseline, usage) if trace.baseline_usd is None else trace.baseline_usd, 10
            ),
            # Whether the JSON or tool-call answer kept the request's contract (None: none was asked).
            "output_valid": trace.output_valid,
            "confidence": trace.judgements,
        }
