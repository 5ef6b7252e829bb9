"""The routing policy: pure, synchronous and fast. Request features in, a frozen Decision out.

No I/O and no model calls: the state it needs (which rungs are unavailable) is passed in. The score is
a logistic of length, conversation depth and keyword signals, so each term can be read as a reason.
Only a bounded window of the prompt is scanned, so the cost does not grow with the prompt.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from localroute.config.models import LOCAL_ENGINES, LlamaCppModel, ModelConfig, capabilities
from localroute.config.schema import Config
from localroute.errors import InvalidRequestError, UnsupportedCapabilityError
from localroute.protocol.chat import CAPABILITIES, Capability, ChatCompletionRequest
from localroute.protocol.wire import Explanation
from localroute.routing.features import Turn
from localroute.routing.scorer import LearnedScorer, load_scorer, resolve
from localroute.routing.signals import DEFAULT_SIGNALS, SignalMatcher

# The instruction is usually at the start or the end, and keywords deep inside a long passage are mostly
# noise: on the MMLU dev set a 800-character head ranked as well as 1200 (APGR 0.6135 vs 0.6117).
HEAD_CHARS, TAIL_CHARS = 800, 400
CHARS_PER_TOKEN = 4.0  # for the score: a typical English BPE average
FIT_CHARS_PER_TOKEN = 3.0  # for context fit: pessimistic, the engine enforces the exact count
MSG_OVERHEAD_TOKENS = 6
# Local compute rates assumed for a rung `localroute init` has not measured: a small CPU box.
GUESS_PROMPT_TPS, GUESS_DECODE_TPS = 250.0, 50.0


@dataclass(frozen=True)
class Hints:
    """What the client asked of routing through headers."""

    tier: str | None = None  # a tier number, "local" or "remote"
    max_cost: float | None = None  # USD for this request


NO_HINTS = Hints()


@dataclass(frozen=True)
class Cold:
    """A local rung that is not loaded, and what loading it last cost (None: never measured)."""

    load_seconds: float | None = None


@dataclass(frozen=True)
class Floor:
    """The rung that answered earlier turns of this conversation: a follow-up is not sent lower."""

    model: str
    tier: int


@dataclass(frozen=True)
class Features:
    estimated_tokens: int
    fit_tokens: int  # pessimistic prompt size used for context fit
    output_tokens: int  # max_tokens asked, or the first candidate's default
    depth: int  # user turns
    hits: tuple[tuple[str, int], ...]  # (signal, capped hits)


@dataclass(frozen=True)
class Decision:
    """Where a request goes and why. `escalation` lists the rungs above, for the cascade."""

    model: str
    tier: int
    score: float
    reasons: tuple[str, ...]
    estimated_tokens: int
    thresholds: tuple[tuple[str, float], ...]
    route: str
    escalation: tuple[str, ...] = ()
    features: Features | None = field(default=None, compare=False)
    needs: tuple[str, ...] = ()  # capabilities the request needs of a rung
    ruled_out: tuple[tuple[str, str], ...] = ()  # (rung, the capability it lacks)
    sticky: str | None = None  # the rung that answered earlier turns, when it was an input

    def as_json(self) -> Explanation:
        return {
            "model": self.model,
            "tier": self.tier,
            "score": round(self.score, 4),
            "reasons": list(self.reasons),
            "estimated_tokens": self.estimated_tokens,
            "thresholds": dict(self.thresholds),
            "route": self.route,
            "escalation": list(self.escalation),
            "needs": list(self.needs),
            "ruled_out": dict(self.ruled_out),
            "sticky": self.sticky,
        }


class Policy:
    """Scores requests and picks the cheapest rung that can serve them."""

    def __init__(self, config: Config, scorer: LearnedScorer | None = None) -> None:
        """`scorer` replaces the heuristic score; by default `[routing] scorer` says which (a learned
        artifact is read and verified here, once: a bad one is a ConfigError at startup)."""
        self.config = config
        self.r = config.routing
        self.ladder: tuple[ModelConfig, ...] = tuple(config.ladder())
        self._thresholds = tuple((m.name, m.max_score) for m in self.ladder)
        signals = list(self.r.signals)
        if not self.r.replace_default_signals:
            names = {s.name for s in signals}
            signals = [s for s in DEFAULT_SIGNALS if s.name not in names] + signals
        self._matcher = SignalMatcher(signals)
        self._weights = {s.name: s.weight for s in signals}
        if scorer is None and self.r.scorer != "heuristic":
            scorer = load_scorer(resolve(self.r.scorer, config.base_dir), self.r.scorer_sha256)
        self.scorer = scorer

    # -- features and score ----------------------------------------------------------------------

    def signal_names(self) -> tuple[str, ...]:
        """Every keyword signal the score uses, in a fixed order."""
        return tuple(self._weights)

    def signal_hits(self, text: str) -> tuple[tuple[str, int], ...]:
        """Capped hits per signal in a bounded window of `text`."""
        if len(text) > HEAD_CHARS + TAIL_CHARS:
            text = text[:HEAD_CHARS] + "\n" + text[-TAIL_CHARS:]
        return self._matcher.hits(text)

    def features(self, req: ChatCompletionRequest) -> Features:
        chars, user_turns, last_user = 0, 0, ""
        for m in req.messages:
            t = m.text()
            chars += len(t)
            if m.role == "user":
                user_turns += 1
                last_user = t
        return self._features(chars, len(req.messages), user_turns, last_user, req.output_limit())

    def _features(self, chars: int, messages: int, depth: int, last_user: str, limit: int | None) -> Features:
        est = int(chars / CHARS_PER_TOKEN) + MSG_OVERHEAD_TOKENS * messages
        fit = math.ceil(chars / FIT_CHARS_PER_TOKEN) + MSG_OVERHEAD_TOKENS * messages
        out = limit or self.ladder[0].default_max_tokens
        # A learned scorer reads its own (fixed) signals: the heuristic's scan would be wasted time.
        hits = self.signal_hits(last_user) if self.scorer is None else ()
        return Features(est, fit, out, depth, hits)

    def score(self, f: Features) -> tuple[float, list[str]]:
        """Difficulty in [0, 1], with one reason per term that moved it."""
        r = self.r
        z = r.bias
        ratio = max(f.estimated_tokens, 1) / r.length_pivot_tokens
        length = max(-r.length_cap, min(r.length_cap, r.length_weight * math.log2(ratio)))
        z += length
        reasons = [f"length ~{f.estimated_tokens} tokens ({length:+.2f})"]
        if f.depth > 1:
            depth = r.depth_weight * min(f.depth - 1, 5)
            z += depth
            reasons.append(f"depth {f.depth} user turns ({depth:+.2f})")
        weights = self._weights
        for name, hits in f.hits:
            w = weights[name] * hits
            z += w
            reasons.append(f"keywords:{name} x{hits} ({w:+.2f})")
        return 1.0 / (1.0 + math.exp(-z)), reasons

    def score_text(self, prompt: str) -> float:
        """The difficulty of a single-turn prompt (used by `localroute eval`)."""
        return self.score_turns((Turn("user", prompt),))

    def score_turns(self, turns: Sequence[Turn]) -> float:
        """The difficulty of a conversation, by the configured scorer."""
        if self.scorer is not None:
            return self.scorer.score(turns).probability
        chars = sum(len(t.text) for t in turns)
        users = [t.text for t in turns if t.role == "user"]
        last = users[-1] if users else ""
        return self.score(self._features(chars, len(turns), len(users), last, None))[0]

    # -- the decision ----------------------------------------------------------------------------

    def decide(
        self,
        req: ChatCompletionRequest,
        hints: Hints = NO_HINTS,
        unavailable: Iterable[str] = (),
        cold: Mapping[str, Cold] | None = None,
        floor: Floor | None = None,
    ) -> Decision:
        """Pick a rung for `req`. A concrete model name bypasses the policy. `cold` names the rungs
        not loaded now: a request does not wait more than `max_cold_wait_s` for one when an
        equally admissible rung is warm. `floor`: the rung that answered this conversation before;
        `auto` never goes below its tier (the highest rung that fits, when none that high does)."""
        f = self.features(req)
        if self.scorer is not None:
            scored = self.scorer.score([Turn(m.role, m.text()) for m in req.messages])
            score, reasons = scored.probability, list(scored.reasons)
        else:
            score, reasons = self.score(f)
        needs = req.needs()
        ruled_out = tuple((m.name, lacks) for m in self.ladder if (lacks := _lacking(m, needs)))
        if needs:
            reasons = [*reasons, "needs " + ", ".join(sorted(needs))]

        def make(m: ModelConfig, route: str, above: Iterable[ModelConfig], why: str) -> Decision:
            esc = tuple(x.name for x in above if x.name != m.name)
            return Decision(m.name, m.tier, score, (*reasons, why), f.estimated_tokens, self._thresholds,
                            route, esc, f, tuple(sorted(needs)), ruled_out,
                            floor.model if floor is not None else None)  # fmt: skip

        if req.model != "auto":
            m = self.config.model(req.model)
            if m is None:
                raise InvalidRequestError(f"unknown model {req.model[:64]!r}", param="model")
            if lacks := _lacking(m, needs):
                raise UnsupportedCapabilityError(
                    f"The model '{m.name}' cannot serve this request: it needs {lacks}, which "
                    f"'{m.name}' does not support. Use 'auto' or a model that supports {lacks}.",
                    capability=lacks,
                )
            return make(m, "explicit", (), f"model {m.name} named in the request")

        down = frozenset(unavailable)
        hinted = [m for m in self._hinted(hints) if m.name not in down]
        rungs = [m for m in hinted if not _lacking(m, needs)]
        if hinted and not rungs:
            missing = sorted({lack for m in hinted if (lack := _lacking(m, needs))})
            raise UnsupportedCapabilityError(
                f"No available model can serve this request: it needs {' and '.join(missing)}. "
                "Declare a rung with that capability in models.toml (`capabilities`).",
                capability=missing[0],
            )
        need = f.fit_tokens + min(f.output_tokens, 1)
        fits = [m for m in rungs if need < m.n_ctx]
        if hints.max_cost is not None:
            fits = [m for m in fits if self.estimated_cost(m, f) <= hints.max_cost]
        if not fits:
            if not rungs:
                raise InvalidRequestError("No available model matches the routing hints.",
                                          code="no_route")  # fmt: skip
            biggest = max(rungs, key=lambda m: m.n_ctx)
            return make(biggest, "policy:context", (), "no rung fits the prompt; largest context")
        # The cheapest rung whose max_score admits the score, else the top one that fits.
        idx = next((i for i, m in enumerate(fits) if score <= m.max_score), len(fits) - 1)
        chosen, above = fits[idx], fits[idx + 1 :]
        if floor is not None and chosen.tier < floor.tier:  # upward only: never below the earlier rung
            up = next((i for i, m in enumerate(fits) if m.tier >= floor.tier), len(fits) - 1)
            if up > idx:
                why = (f"conversation answered before by {floor.model} (tier {floor.tier}); not sent "
                       f"lower than {fits[up].name}")  # fmt: skip
                return make(fits[up], "policy:sticky", fits[up + 1 :], why)
        load, how = _load_time(chosen, cold)
        limit = self.config.resources.max_cold_wait_s
        if load is not None and load > limit:
            warm = next((m for m in above if m.name not in (cold or {}) and score <= m.max_score), None)
            if warm is not None:
                why = (f"{chosen.name} is cold (~{load:.1f}s to load{how} > {limit:g}s); "
                       f"{warm.name} is warm and admits score {score:.2f}")  # fmt: skip
                return make(warm, "policy:warm", fits[fits.index(warm) + 1 :], why)
        if idx == 0 and chosen is not rungs[0]:
            return make(chosen, "policy:context", above,
                        f"~{f.fit_tokens}+{f.output_tokens} tokens do not fit the cheaper rungs")  # fmt: skip
        if score > chosen.max_score:  # nothing admits it: the top rung that fits takes it
            why = f"score {score:.2f} > every available rung's max; {chosen.name} is the top one that fits"
            return make(chosen, f"policy:top>{chosen.max_score:.2f}", above, why)
        if idx == 0:
            why = f"score {score:.2f} <= {chosen.name} max {chosen.max_score:.2f}"
            return make(chosen, f"policy:score<={chosen.max_score:.2f}", above, why)
        below = fits[idx - 1]
        why = f"score {score:.2f} > {below.name} max {below.max_score:.2f}"
        return make(chosen, f"policy:score>{below.max_score:.2f}", above, why)

    def _hinted(self, hints: Hints) -> list[ModelConfig]:
        if hints.tier is None:
            return list(self.ladder)
        if hints.tier == "local":
            return [m for m in self.ladder if m.engine in LOCAL_ENGINES]
        if hints.tier == "remote":
            return [m for m in self.ladder if m.engine not in LOCAL_ENGINES]
        return [m for m in self.ladder if str(m.tier) == hints.tier]

    @staticmethod
    def estimated_cost(m: ModelConfig, f: Features) -> float:
        """A rough upper estimate in USD, for the max-cost hint."""
        p = m.price
        tokens = (f.estimated_tokens * p.input_per_mtok + f.output_tokens * p.output_per_mtok) / 1e6
        # Local compute: the rates `localroute init` measured on this box, else a small CPU box's guess.
        measured = m.measured if isinstance(m, LlamaCppModel) else None
        prompt_tps = measured.prompt_tps if measured else GUESS_PROMPT_TPS
        decode_tps = measured.decode_tps if measured else GUESS_DECODE_TPS
        seconds = f.estimated_tokens / prompt_tps + f.output_tokens / decode_tps
        return tokens + p.per_hour * seconds / 3600


def _load_time(m: ModelConfig, cold: Mapping[str, Cold] | None) -> tuple[float | None, str]:
    """How long cold rung `m` takes to load, and where that figure comes from: its last load in this
    process, else what `localroute init` measured; (None, "") when it is warm or nothing is known."""
    wait = (cold or {}).get(m.name)
    if wait is None:
        return None, ""
    if wait.load_seconds is not None:
        return wait.load_seconds, ""
    if isinstance(m, LlamaCppModel) and m.measured is not None:
        return m.measured.load_s, ", measured by init"
    return None, ""


def _lacking(m: ModelConfig, needs: frozenset[Capability]) -> str:
    """The first capability (in a fixed order) that rung `m` lacks for `needs`, or ''."""
    missing = needs - capabilities(m)
    return next((c for c in CAPABILITIES if c in missing), "")
