"""Learning from this deployment's own traffic, on this machine: after each answered request, its
decision and features go to the feedback store and its answer's digest to the conversation map
(stickiness); `POST /v1/localroute/feedback` labels it; a shadow run may label it too.

Shadow runs: for a sample of *public* requests answered by a paid rung, the cheapest local rung answers
the same request in the background, only when that rung is loaded and idle, and is cancelled the moment
another request arrives (a client waits at most for the token being decoded, or the rest of the
shadow's prompt evaluation: llama.cpp checks for cancellation between tokens). Its agreement with
the paid answer (`routing.agreement`) is stored as the label. Never for a private request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, cast

from localroute.config.models import LOCAL_ENGINES, ModelConfig
from localroute.config.schema import Config
from localroute.errors import APIError, NotFoundError, OverloadedError, StateUnavailableError
from localroute.host.lifecycle import Managed
from localroute.observe.feedback import Featurize, FeedbackStore, Outcome, UnknownRequestError
from localroute.privacy.guard import Privacy
from localroute.protocol.backend import Backend
from localroute.protocol.chat import ChatCompletionRequest
from localroute.protocol.feedback import FeedbackAnswer, FeedbackRequest
from localroute.routing.agreement import agreement
from localroute.routing.calibrate import calibrate
from localroute.routing.router import Router
from localroute.routing.trace import Trace
from localroute.state.feedback import SharedFeedback

log = logging.getLogger("localroute")
# A shadow run's prompt evaluation cannot be interrupted; a longer prompt is not shadowed (~1 s of CPU).
SHADOW_PROMPT_TOKENS = 512
CALIBRATE_NEWEST = 20_000  # labelled rows calibration reads at startup, newest first
MAX_PENDING = 2048  # store calls (rows) queued for the writer thread before new rows are dropped
DRAIN_S = 2.0  # with [state] url: how often labels queued here by other replicas are applied
OUTCOMES: frozenset[str] = frozenset({"good", "bad", "strong_needed", "score"})
# Rows of answered requests wait on the loop this long (or until ROWS_PER_HOP are waiting) and go to
# the writer thread together: one thread hop and one transaction per batch, not per request, which
# cost more gateway CPU than the rows themselves (docs/bench-overhead.md).
BATCH_S = 0.25
ROWS_PER_HOP = 64
RECHECK_S = 4 * BATCH_S  # a 404 is confirmed after this long (sibling workers' rows wait BATCH_S)


class Learning:
    """The feedback store, the conversation map's updates and the shadow runs of one gateway."""

    def __init__(
        self,
        config: Config,
        backends: Mapping[str, Backend],
        router: Router,
        featurize: Featurize,
    ) -> None:
        self.config = config
        self.cfg = config.feedback
        self.backends = backends
        self.router = router
        self.store = FeedbackStore(config.feedback_path(), self.cfg, featurize) if self.cfg.enabled else None
        self.shadows: set[asyncio.Task[None]] = set()
        # With [state] url (gateway/app.py): labels for requests served by another replica go there.
        self.shared: SharedFeedback | None = None
        # Every store call runs here, in order, off the event loop; a backlog beyond MAX_PENDING is
        # dropped (a row lost to learning, never a request delayed).
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="localroute-feedback")
        self._pending = 0
        self._rows: list[Callable[[], None]] = []  # rows waiting on the loop for the next hop
        self._timer: asyncio.TimerHandle | None = None
        self._pending_lock = threading.Lock()  # counted on the loop, discounted on the writer
        self._random = random.Random()
        self.cheapest: ModelConfig | None = next(
            (m for m in config.ladder() if m.engine in LOCAL_ENGINES), None
        )
        if self.store is not None:  # each local model's own threshold, once it has enough feedback
            rows = self.store.judged(CALIBRATE_NEWEST)  # bounded: startup stays fast with a large store
            fitted = calibrate(rows, self.cfg.calibrate_min_rows, self.cfg.calibrate_escalate_above)
            router.thresholds = {m: (c.signal, c.cutoff) for m, c in fitted.items()}
            for c in fitted.values():
                log.info("calibrated %s: escalate when %s < %.3f (%d rows, AUROC %.3f)",
                         c.model, c.signal, c.cutoff, c.rows, c.auroc)  # fmt: skip

    def close(self) -> None:
        for t in self.shadows:
            t.cancel()
        self._hop()  # rows still waiting go to disk before the writer stops
        self._writer.shutdown(wait=True)
        if self.store is not None:
            self.store.close()

    def flush(self) -> None:
        """Wait for every store call queued so far (tests; the writer runs them in order)."""
        self._hop()
        self._writer.submit(lambda: None).result()

    @staticmethod
    def _commit(store: FeedbackStore) -> None:
        try:
            store.commit()
        except Exception as exc:  # busy (another worker holds the file): the next commit takes these too
            log.warning("feedback store commit failed: %s", exc.__class__.__name__)

    def _row(self, call: Callable[[], None]) -> None:
        """Queue an answered request's row for the next batch (dropped when the backlog is full)."""
        with self._pending_lock:
            if self._pending + len(self._rows) >= MAX_PENDING:
                log.warning("feedback store backlog full: a row is dropped")
                return
        self._rows.append(call)
        if len(self._rows) >= ROWS_PER_HOP:
            self._hop()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(BATCH_S, self._hop)

    def _hop(self) -> None:
        """Hand the waiting rows to the writer thread, as one call."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        rows, self._rows = self._rows, []
        if not rows:
            return

        def run_all() -> None:
            for row in rows:
                row()

        self._write(run_all, len(rows), force=True)

    def _write(self, call: Callable[[], Any], rows: int = 1, force: bool = False) -> Future[Any] | None:
        """Queue a store call on the writer thread, after the rows waiting (the writer keeps the order);
        None when the backlog is full (dropped). `rows`: how many rows the call writes."""
        if not force:
            self._hop()
        with self._pending_lock:
            if self._pending >= MAX_PENDING and not force:
                log.warning("feedback store backlog full: a row is dropped")
                return None
            self._pending += rows

        def run() -> Any:
            try:
                return call()
            finally:
                with self._pending_lock:
                    self._pending -= rows
                    drained = self._pending == 0
                if drained and self.store is not None:  # the queue ran dry: the batch goes to disk
                    self._commit(self.store)

        return self._writer.submit(run)

    def preempt(self) -> None:
        """A request arrived: stop any shadow run now, so it never holds a rung the client needs."""
        for t in self.shadows:
            t.cancel()

    def answered(
        self,
        rid: str,
        req: ChatCompletionRequest,
        trace: Trace,
        privacy: Privacy,
        answer: str | None,
        caller: str = "",
    ) -> None:
        """Called once per request served with a 200: remember it (for this caller), and maybe shadow it."""
        if not trace.model:
            return
        self.router.conversations.remember(answer, trace.model, trace.tier, caller)
        if self.store is None:
            return
        model = self.config.model(trace.model)
        local = model is not None and model.engine in LOCAL_ENGINES and not trace.untrusted
        judged, signals = next(iter(trace.judgements.items()), (None, None))
        d = trace.decision
        store = self.store

        def remember() -> None:
            try:
                store.remember(
                    rid, req, rung=trace.model, tier=trace.tier, local=local, decided=d.model, score=d.score,
                    route=trace.route, private=privacy.private, signals=signals, judged=judged,
                )  # fmt: skip
            except Exception as exc:  # the store must never fail a request that was answered
                log.error("feedback store write failed: %s", exc.__class__.__name__)

        self._row(remember)
        if self.shared is not None:
            self.shared.served(rid)
        short = d.estimated_tokens <= SHADOW_PROMPT_TOKENS
        if not local and not privacy.private and answer and short and self._shadow_now():
            task = asyncio.create_task(self._shadow(rid, req, answer), name="localroute-shadow")
            self.shadows.add(task)
            task.add_done_callback(self.shadows.discard)

    def _shadow_now(self) -> bool:
        """Sampled, no shadow running, and the cheapest local rung loaded with nothing admitted."""
        if self.cfg.shadow_sample <= 0 or self.shadows or self.cheapest is None:
            return False
        if self._random.random() >= self.cfg.shadow_sample:
            return False
        b = self.backends.get(self.cheapest.name)
        if b is None or b.brief().state != "ready":  # never load a model for a shadow run
            return False
        return not (isinstance(b, Managed) and b.busy())

    async def _shadow(self, rid: str, req: ChatCompletionRequest, paid: str) -> None:
        m = self.cheapest
        assert m is not None and self.store is not None
        limit = min(req.output_limit() or m.default_max_tokens, self.cfg.shadow_max_tokens, m.n_ctx)
        body = req.engine_body(m.name, limit)
        body["stream"] = False
        body.pop("stream_options", None)
        try:
            result = await self.backends[m.name].complete(body)
        except APIError as exc:
            log.debug("shadow run of %s on %s failed: %s", rid, m.name, exc.code or exc.type)
            return
        choices: Sequence[Mapping[str, Any]] = result.get("choices") or [{}]
        local = (choices[0].get("message") or {}).get("content") or ""
        store, verdict = self.store, agreement(paid, local)

        def shadow() -> None:
            with contextlib.suppress(Exception):  # pruned since, or the store closed at shutdown
                store.shadow(rid, m.name, verdict)

        self._write(shadow)

    async def feedback(self, fb: FeedbackRequest) -> FeedbackAnswer:
        """Label one served request. With `[state] url`, a request another replica served is labelled
        there (`forwarded_to` names it); a 404 for an id no replica has (never served, or pruned)."""
        if self.store is None:
            raise NotFoundError("Feedback is turned off here ([feedback] enabled = false).")
        outcome: Outcome = fb.outcome or "score"
        value = fb.score or 0.0
        await self.drain()  # labels queued here earlier by other replicas go first
        store = self.store
        queued = self._write(lambda: store.feedback(fb.id, outcome, value))
        if queued is None:
            raise OverloadedError(
                "The feedback store is busy; try again shortly.", headers={"Retry-After": "1"}
            )
        try:
            label = await asyncio.wrap_future(queued)
        except UnknownRequestError:
            owner = await self._forward(fb.id, outcome, value)
            if owner is None:
                return await self._recheck(fb.id, outcome, value)
            return {"object": "localroute.feedback", "id": fb.id, "outcome": outcome, "label": None,
                    "forwarded_to": owner}  # fmt: skip
        return {"object": "localroute.feedback", "id": fb.id, "outcome": outcome, "label": label}

    async def _recheck(self, rid: str, outcome: Outcome, value: float) -> FeedbackAnswer:
        """Unknown here and to the store: `serve --workers N` siblings share this file and write their
        rows in batches (BATCH_S), so the store is read once more, after RECHECK_S, before a 404."""
        if self.shared is None:  # with one, forward() has already waited ~1 s for the owner
            await asyncio.sleep(RECHECK_S)
        store = self.store
        assert store is not None
        queued = self._write(lambda: store.feedback(rid, outcome, value), force=True)
        assert queued is not None  # a forced write is always queued
        try:
            label = await asyncio.wrap_future(queued)
        except UnknownRequestError:
            raise NotFoundError(f"No request with id '{rid}' is stored here.", param="id") from None
        return {"object": "localroute.feedback", "id": rid, "outcome": outcome, "label": label}

    async def _forward(self, rid: str, outcome: Outcome, value: float) -> str | None:
        if self.shared is None:
            return None
        try:
            return await self.shared.forward(rid, outcome, value)
        except Exception as exc:  # the label would be lost: the client is told to send it again
            log.warning("feedback not forwarded: shared state unreachable (%s)", exc.__class__.__name__)
            raise StateUnavailableError(
                "The request was not served here and the shared state store cannot be reached to find "
                "the replica that served it; send the feedback again shortly.",
                headers={"Retry-After": "5"},
            ) from None

    async def drain(self) -> int:
        """Apply the labels other replicas queued for requests served here; how many were taken."""
        if self.shared is None or self.store is None:
            return 0
        take = asyncio.ensure_future(self.shared.take())
        try:
            items = await asyncio.shield(take)
        except asyncio.CancelledError:  # shutdown: what the store already handed over is applied
            with contextlib.suppress(Exception):
                self._apply(await take)  # bounded: take() has its own timeout
            raise
        except Exception as exc:  # down: they stay queued in the store for the next drain
            log.debug("feedback queue not read: %s", exc.__class__.__name__)
            return 0
        self._apply(items)
        return len(items)

    def _apply(self, items: list[tuple[str, str, float]]) -> None:
        """Apply labels taken from the queue: a forced write (they are gone from the store, a full
        backlog must not drop them), after the rows waiting on the loop (which they may label)."""
        store = self.store
        labels = [(rid, outcome, value) for rid, outcome, value in items if outcome in OUTCOMES]
        if store is None or not labels:
            return

        def apply() -> None:
            for rid, outcome, value in labels:
                try:
                    store.feedback(rid, cast("Outcome", outcome), value)
                except UnknownRequestError:  # pruned here since
                    log.info("feedback for %s arrived after its row was pruned", rid)
                except Exception as exc:
                    log.error("feedback store write failed: %s", exc.__class__.__name__)

        self._hop()
        self._write(apply, force=True)

    async def drain_forever(self) -> None:
        """`drain` every DRAIN_S, for the gateway's lifetime (cancelled at shutdown)."""
        while True:
            await self.drain()
            await asyncio.sleep(DRAIN_S)
