"""Learning from traffic, the parts without a model: the feedback store, stickiness in the pure
policy and its bounded map, the agreement measure, the new confidence signals and the calibration."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from localroute.config.feedback import FeedbackConfig
from localroute.config.schema import parse_config
from localroute.observe.feedback import FeedbackStore, Labelled, UnknownRequestError, label_of
from localroute.privacy.detect import Detector
from localroute.privacy.guard import Privacy
from localroute.protocol.backend import Brief
from localroute.protocol.chat import parse_chat_request
from localroute.routing.agreement import agreement
from localroute.routing.calibrate import auroc, calibrate, isotonic
from localroute.routing.confidence import first_margin, quantile, signals
from localroute.routing.policy import Floor, Policy
from localroute.routing.router import Router
from localroute.routing.sticky import Conversations
from localroute.routing.trace import Trace
from localroute.routing.traffic_features import heuristic_featurizer

CONFIG = """
[[models]]
name = "small"
engine = "llama_cpp"
tier = 0
n_ctx = 2048
max_score = 0.3
source = { kind = "path", path = "small.gguf" }

[[models]]
name = "mid"
engine = "llama_cpp"
tier = 1
n_ctx = 2048
max_score = 0.6
source = { kind = "path", path = "mid.gguf" }

[[models]]
name = "frontier"
engine = "remote"
tier = 10
base_url = "http://127.0.0.1:9/v1"
model = "x"
api_key_env = "NOPE"
n_ctx = 100000
"""
PROMPT = "What is the capital of France? Secret-prompt-7d1c"


def req(*messages: tuple[str, str], model: str = "auto") -> Any:
    body = {"model": model, "messages": [{"role": r, "content": c} for r, c in messages]}
    return parse_chat_request(json.dumps(body).encode())


@pytest.fixture
def policy() -> Policy:
    return Policy(parse_config(CONFIG))


def store_at(tmp_path: Path, policy: Policy, **cfg: Any) -> FeedbackStore:
    return FeedbackStore(
        tmp_path / "state" / "fb.sqlite3", FeedbackConfig(**cfg), heuristic_featurizer(policy)
    )


def remember(store: FeedbackStore, rid: str, local: bool = True, **kw: Any) -> None:
    rung, tier = ("small", 0) if local else ("frontier", 10)
    route = "policy:score<=0.30"
    r = req(("user", PROMPT))
    store.remember(rid, r, rung=rung, tier=tier, local=local, decided="small", score=0.2, route=route,
                   private=False, **kw)  # fmt: skip


# -- the feedback store ---------------------------------------------------------------------------------


def test_a_private_request_keeps_no_hashed_words(tmp_path: Path) -> None:
    from localroute.routing.traffic_features import recipe_featurizer

    store = FeedbackStore(tmp_path / "fb.sqlite3", FeedbackConfig(), recipe_featurizer())
    r = req(("user", "Wire 4100 to account 7731 for Mara Quist, the usual way."))
    for rid, private in (("pub", False), ("priv", True)):
        store.remember(rid, r, rung="small", tier=0, local=True, decided="small", score=0.2,
                       route="policy:score<=0.30", private=private)  # fmt: skip
    store.close()
    with sqlite3.connect(tmp_path / "fb.sqlite3") as db:
        rows = dict(db.execute("SELECT id, features FROM requests"))
    public, private_ = json.loads(rows["pub"]), json.loads(rows["priv"])
    hashed = [k for k in public if k[0] == "h" and k[1:].isdigit()]
    assert hashed, "the learned recipe hashes words: the public row keeps them"
    assert not [k for k in private_ if k[0] == "h" and k[1:].isdigit()]  # a dictionary could reverse them
    assert "len" in private_ and any(k.startswith("e") for k in private_)  # dense features remain


@pytest.mark.parametrize(
    ("outcome", "value", "local", "label"),
    [("good", 0, True, 0.0), ("bad", 0, True, 1.0), ("score", 0.75, True, 0.25),
     ("strong_needed", 0, True, 1.0), ("strong_needed", 0, False, 1.0),
     ("good", 0, False, None), ("bad", 0, False, None), ("score", 0.1, False, None)],
)  # fmt: skip
def test_what_an_outcome_says_about_the_stronger_model(
    outcome: Any, value: float, local: bool, label: Any
) -> None:
    assert label_of(outcome, value, local) == label


def test_store_round_trip_keeps_features_not_text(tmp_path: Path, policy: Policy) -> None:
    store = store_at(tmp_path, policy)
    remember(store, "req-1", signals={"mean": -0.4, "margin": 2.0}, judged="small")
    remember(store, "req-2", local=False)
    assert store.feedback("req-1", "bad") == 1.0
    assert store.feedback("req-2", "good") is None  # says nothing about the cheaper rung
    with pytest.raises(UnknownRequestError):
        store.feedback("req-3", "good")
    rows = list(store.labelled())
    assert [(r.label, r.rung, r.source, r.judged) for r in rows] == [(1.0, "small", "client", "small")]
    assert rows[0].signals == {"mean": -0.4, "margin": 2.0}
    assert rows[0].features["depth"] == 1 and rows[0].features["tokens"] > 0
    assert "hits:math" in rows[0].features or any(k.startswith("hits:") for k in rows[0].features)
    store.shadow("req-2", "small", agreement=0.25)  # a shadow run labels the remote one
    assert [(r.rung, r.label, r.source) for r in store.labelled()][1] == ("frontier", 0.75, "shadow")
    store.close()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "state").iterdir())
    assert b"Secret-prompt-7d1c" not in raw
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "fb.sqlite3").st_mode) == 0o600


def test_calibration_reads_the_newest_judged_rows_without_their_features(
    tmp_path: Path, policy: Policy
) -> None:
    store = store_at(tmp_path, policy)
    for i in range(6):
        remember(store, f"req-{i}", signals={"mean": -float(i)}, judged="small")
        store.feedback(f"req-{i}", "bad" if i % 2 else "good")
    remember(store, "req-unjudged")
    store.feedback("req-unjudged", "bad")  # labelled, but no local rung judged it: nothing to calibrate
    remember(store, "req-unlabelled", signals={"mean": -9.0}, judged="small")
    rows = store.judged(newest=4)
    assert [r.signals["mean"] for r in rows] == [-2.0, -3.0, -4.0, -5.0]  # the newest 4, oldest first
    assert [r.label for r in rows] == [0.0, 1.0, 0.0, 1.0] and all(r.features == {} for r in rows)
    assert len(store.judged(newest=100)) == 6 and store.judged(newest=0) == []
    store.close()


def test_prompts_are_kept_only_when_the_operator_opts_in(tmp_path: Path, policy: Policy) -> None:
    store = store_at(tmp_path, policy, store_prompts=True)
    remember(store, "req-1")
    store.close()
    with sqlite3.connect(tmp_path / "state" / "fb.sqlite3") as db:
        (prompt,) = db.execute("SELECT prompt FROM requests").fetchone()
    assert "Secret-prompt-7d1c" in prompt


def test_store_is_bounded_by_rows_and_age(tmp_path: Path, policy: Policy) -> None:
    store = store_at(tmp_path, policy, max_rows=100, retention_days=1)
    for i in range(150):
        remember(store, f"req-{i}")
    store.prune()
    assert store.count() == 100
    store.feedback("req-149", "good")
    with pytest.raises(UnknownRequestError):
        store.feedback("req-0", "good")  # the oldest went first
    store.prune(now=__import__("time").time() + 2 * 86_400)
    assert store.count() == 0


# -- stickiness ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("floor", "model", "route"),
    [(None, "small", "policy:score<=0.30"),
     (Floor("mid", 1), "mid", "policy:sticky"),
     (Floor("frontier", 10), "frontier", "policy:sticky"),
     (Floor("small", 0), "small", "policy:score<=0.30")],  # upward only: never lower than the policy's
)  # fmt: skip
def test_a_follow_up_is_not_sent_below_the_rung_that_answered(
    policy: Policy, floor: Floor | None, model: str, route: str
) -> None:
    d = policy.decide(req(("user", "Hi")), floor=floor)
    assert (d.model, d.route) == (model, route)
    assert d.sticky == (floor.model if floor else None)
    if route == "policy:sticky":
        assert any("conversation answered before by" in r for r in d.reasons)


def test_sticky_floor_beyond_the_available_rungs_takes_the_highest_available(policy: Policy) -> None:
    d = policy.decide(req(("user", "Hi")), unavailable={"frontier"}, floor=Floor("frontier", 10))
    assert (d.model, d.route) == ("mid", "policy:sticky")


def test_the_conversation_map_is_bounded_and_matches_normalised_answers() -> None:
    convs = Conversations(2)
    convs.remember("The answer is  42.\n", "frontier", 10)
    convs.remember("Paris.", "mid", 1)
    follow = req(("user", "q"), ("assistant", "The answer is 42."), ("user", "and?"))
    assert convs.floor(follow) == Floor("frontier", 10)
    assert convs.floor(req(("user", "q"), ("assistant", "Something else"), ("user", "and?"))) is None
    convs.remember("Third.", "small", 0)  # "Paris." is least recently used: evicted
    assert len(convs) == 2
    assert convs.floor(req(("assistant", "Paris."), ("user", "x"))) is None
    both = req(("assistant", "Third."), ("assistant", "The answer is 42."), ("user", "x"))
    assert convs.floor(both) == Floor("frontier", 10)  # the highest rung of the conversation
    assert Conversations(0).floor(follow) is None


def test_the_conversation_map_is_per_caller_and_explain_leaves_it_as_it_was() -> None:
    convs = Conversations(2)
    convs.remember("Old answer.", "frontier", 10, caller="key:a")
    convs.remember("Newer answer.", "mid", 1, caller="key:a")
    old = req(("assistant", "Old answer."), ("user", "x"))
    assert convs.floor(old, "key:b") is None  # another caller's same text is not its conversation
    assert convs.floor(old) is None
    assert convs.floor(old, "key:a", touch=False) == Floor("frontier", 10)
    convs.remember("Third.", "small", 0, caller="key:a")  # the read above did not refresh "Old answer."
    assert convs.floor(old, "key:a") is None
    newer = req(("assistant", "Newer answer."), ("user", "x"))
    assert convs.floor(newer, "key:a") == Floor("mid", 1)  # a serving read does refresh it
    convs.remember("Fourth.", "small", 0, caller="key:a")
    assert convs.floor(newer, "key:a") == Floor("mid", 1)


# -- agreement -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("paid", "local", "want"),
    [("Paris.", "paris", 1.0), ("The answer is B", "answer is b", 1.0), ("42", "41", 0.0),
     ('{"a": 1, "b": [2]}', '{ "b": [2], "a": 1 }', 1.0), ('{"a": 1}', '{"a": 2}', 0.0),
     ("the cat sat on the mat all day long", "a cat sat on a mat all night long", 6 / 7),
     ("", "", 1.0), ("x", "", 0.0)],
)  # fmt: skip
def test_agreement(paid: str, local: str, want: float) -> None:
    assert agreement(paid, local) == pytest.approx(want)


# -- the new cascade signals ---------------------------------------------------------------------------


def test_quantiles_margin_and_signals() -> None:
    assert quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.25) == 2.0
    assert quantile([0.0, 10.0], 0.1) == pytest.approx(1.0)
    s = signals([-0.1, -3.0, -0.2, -0.5, math.nan], 0.25, 1.5)
    assert s == {"mean": -0.95, "tail": -3.0, "min": -3.0, "p10": -2.25, "p25": -1.125,
                 "p50": -0.35, "margin": 1.5, "n": 4.0}  # fmt: skip
    assert "margin" not in signals([-0.1], 0.1, None) and signals([], 0.1, 1.0) == {}
    choice = {
        "logprobs": {"content": [{"logprob": -0.2, "top_logprobs": [{"logprob": -0.2}, {"logprob": -2.7}]}]}
    }
    assert first_margin(choice) == pytest.approx(2.5)
    assert first_margin({"logprobs": {"content": [{"logprob": -0.2, "top_logprobs": []}]}}) is None
    assert first_margin({"logprobs": None}) is None


# -- calibration ---------------------------------------------------------------------------------------


def test_isotonic_and_auroc() -> None:
    assert [p for _, p in isotonic([1, 2, 3, 4], [0, 1, 0, 1])] == [0, 0.5, 0.5, 1]
    assert auroc([1, 2, 3, 4], [False, False, True, True]) == 1.0
    assert auroc([1, 2, 3, 4], [True, True, False, False]) == 0.0
    assert auroc([1, 1], [True, False]) == 0.5


def row(model: str, mean: float, label: float) -> Labelled:
    return Labelled({}, label, model, 0, 0.0, "client", {"mean": mean, "p10": 0.0}, model)


def test_calibration_needs_enough_feedback_and_finds_the_separating_signal() -> None:
    # Answers with mean logprob below -1 needed the stronger model; p10 is constant (no information).
    rows = [row("small", -2 + i / 50, 1.0 if i < 50 else 0.0) for i in range(100)]
    got = calibrate(rows, min_rows=100, escalate_above=0.5)
    assert got["small"].signal == "mean" and got["small"].auroc == 1.0
    assert got["small"].cutoff == pytest.approx(-1.0)
    assert calibrate(rows, min_rows=101, escalate_above=0.5) == {}  # too few rows: config thresholds stand
    one_sided = [row("small", -1, 1.0)] * 200
    assert calibrate(one_sided, min_rows=100, escalate_above=0.5) == {}


def test_router_uses_a_calibrated_threshold() -> None:
    r = Router(parse_config(CONFIG), {}, Detector([], {}), thresholds={"small": ("mean", -1.0)})
    m = r.config.model("small")
    assert m is not None
    d = r.policy.decide(req(("user", "Hi")))
    trace = Trace(d, d.route)
    assert r._verdict(m, [-1.1] * 5, None, "stop", 5, 100, trace) == "low_confidence"
    assert r._verdict(m, [-0.9] * 5, None, "stop", 5, 100, trace) is None
    assert trace.judgements["small"]["mean"] == -0.9


# -- shadow runs: never for a private request ---------------------------------------------------------


class IdleRung:
    """A loaded local rung with nothing admitted; records every call."""

    name = "small"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def brief(self) -> Brief:
        return Brief("ready", True)

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(body)
        return {"choices": [{"message": {"content": "Paris"}}]}


@pytest.mark.parametrize("private", [False, True])
def test_a_shadow_run_is_only_for_public_requests(tmp_path: Path, private: bool) -> None:
    from localroute.gateway.learn import Learning

    text = CONFIG + f'\n[feedback]\nshadow_sample = 1.0\npath = "{tmp_path / "fb.sqlite3"}"\n'
    cfg = parse_config(text)
    rung = IdleRung()
    router = Router(cfg, {}, Detector([], {}))

    async def go() -> None:
        learning = Learning(cfg, {"small": rung}, router, heuristic_featurizer(router.policy))  # type: ignore[dict-item]
        r = req(("user", "Capital of France?"))
        d = router.policy.decide(r, floor=Floor("frontier", 10))
        trace = Trace(d, d.route, model="frontier", tier=10)
        learning.answered("req-1", r, trace, Privacy(private, "header"), "Paris")
        await asyncio.gather(*learning.shadows)
        assert learning.store is not None
        learning.flush()  # store calls run on the writer thread
        labels = [(x.source, x.label) for x in learning.store.labelled()]
        learning.close()
        assert (rung.calls, labels) == (([], []) if private else ([rung.calls[0]], [("shadow", 0.0)]))

    asyncio.run(go())


def test_a_gateway_starts_with_thresholds_calibrated_from_its_store(tmp_path: Path) -> None:
    from localroute.gateway.learn import Learning

    path = tmp_path / "fb.sqlite3"
    cfg = parse_config(CONFIG + f'\n[feedback]\ncalibrate_min_rows = 40\npath = "{path}"\n')
    router = Router(cfg, {}, Detector([], {}))
    store = FeedbackStore(path, cfg.feedback, heuristic_featurizer(router.policy))
    for i in range(60):  # answers with mean logprob below -1 were bad
        mean = -2 + i / 30
        sig = {"mean": mean}
        store.remember(f"req-{i}", req(("user", "q")), rung="small", tier=0, local=True, decided="small",
                       score=0.1, route="policy", private=False, signals=sig, judged="small")  # fmt: skip
        store.feedback(f"req-{i}", "bad" if mean < -1 else "good")
    store.close()
    learning = Learning(cfg, {}, router, heuristic_featurizer(router.policy))
    learning.close()
    assert router.thresholds == {"small": ("mean", pytest.approx(-1.0))}
    few = parse_config(CONFIG + f'\n[feedback]\ncalibrate_min_rows = 61\npath = "{path}"\n')
    router = Router(few, {}, Detector([], {}))
    Learning(few, {}, router, heuristic_featurizer(router.policy)).close()
    assert router.thresholds == {}  # too few labelled answers: the config's thresholds stand


def test_feedback_for_a_row_a_sibling_worker_has_not_committed_yet_is_not_a_404(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve --workers N`: siblings share the store file and write rows in batches (BATCH_S)."""
    from localroute.gateway import learn
    from localroute.protocol.feedback import FeedbackRequest

    monkeypatch.setattr(learn, "RECHECK_S", 0.0)
    path = tmp_path / "fb.sqlite3"
    cfg = parse_config(CONFIG + f'\n[feedback]\npath = "{path}"\n')
    router = Router(cfg, {}, Detector([], {}))
    learning = learn.Learning(cfg, {}, router, heuristic_featurizer(router.policy))
    store = learning.store
    assert store is not None
    sibling = FeedbackStore(path, cfg.feedback, heuristic_featurizer(router.policy))
    rid, ask = "req-" + "ab" * 10, store.feedback

    def first_misses(r: str, outcome: Any, value: float = 0.0) -> float | None:
        try:
            return ask(r, outcome, value)
        except UnknownRequestError:
            if not path.with_name("landed").exists():  # the sibling's batch lands just after the miss
                path.with_name("landed").touch()
                remember(sibling, rid, local=False), sibling.commit()
            raise

    monkeypatch.setattr(store, "feedback", first_misses)
    answer = asyncio.run(learning.feedback(FeedbackRequest(id=rid, outcome="strong_needed")))
    learning.close(), sibling.close()
    assert answer == {"object": "localroute.feedback", "id": rid, "outcome": "strong_needed", "label": 1.0}
