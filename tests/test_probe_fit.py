"""`localroute init`'s confidence thresholds: the probe set, the fit on a rung's probe answers, where
the threshold goes in models.toml, and the router using it (feedback's own threshold wins)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from localroute.config.models import ConfidenceThreshold, LlamaCppModel, Measured
from localroute.config.schema import parse_config
from localroute.errors import ConfigError
from localroute.host.init_toml import cold_wait_line
from localroute.host.probe_set import KINDS, ProbeAnswer, is_right, questions
from localroute.privacy.detect import Detector
from localroute.protocol.chat import parse_chat_request
from localroute.routing.probe_fit import fit_probe
from localroute.routing.router import Router
from localroute.routing.trace import Trace

RUNG = """
[[models]]
name = "small"
engine = "llama_cpp"
tier = 0
source = { kind = "path", path = "small.gguf" }
"""


def test_the_probe_set_is_seeded_and_checkable() -> None:
    assert questions(30, 0) == questions(30, 0) != questions(30, 1)
    assert {q.kind for q in questions(12, 0)} == set(KINDS)
    for q in questions(60, 3):
        assert is_right(q, q.answer) and not is_right(q, "I do not know")


def answers(right: int, wrong: int) -> list[ProbeAnswer]:
    """Right answers sure of themselves (-0.1 a token), wrong ones unsure (-2.0 and below)."""
    return [ProbeAnswer(True, (-0.1,) * 4, 3.0) for _ in range(right)] + [
        ProbeAnswer(False, (-2.0 - i / 100,) * 4, 0.1) for i in range(wrong)
    ]


def test_a_threshold_is_fitted_when_both_outcomes_are_there() -> None:
    got = fit_probe("small", answers(12, 30), tail_fraction=0.1)
    assert isinstance(got, ConfidenceThreshold)
    assert (got.n, got.right, got.auroc) == (42, 12, 1.0)
    assert -2.0 < got.below <= -0.1  # every right answer kept, every wrong one escalated


def test_too_few_of_one_outcome_keeps_the_defaults_and_says_why() -> None:
    got = fit_probe("small", answers(9, 51), tail_fraction=0.1)
    assert got == "60 probe answers, 9 right and 51 wrong: fewer than 10 of one outcome to fit on"
    empty = [ProbeAnswer(True, (), None)] * 20 + answers(0, 20)  # answers with no tokens are not judged
    assert str(fit_probe("small", empty, 0.1)).startswith("20 probe answers, 0 right")


def test_no_separating_signal_is_said() -> None:
    alike = [ProbeAnswer(i % 2 == 0, (-1.0,) * 4, 1.0) for i in range(40)]  # right and wrong look the same
    got = fit_probe("small", alike, tail_fraction=0.1)
    assert isinstance(got, str) and "no confidence signal ranks" in got


def test_the_threshold_round_trips_through_models_toml() -> None:
    cfg = parse_config(
        RUNG + 'confidence = { signal = "p25", below = -0.42, n = 60, right = 15, auroc = 0.9 }\n'
    )
    m = cfg.model("small")
    assert isinstance(m, LlamaCppModel) and m.confidence == ConfidenceThreshold(
        signal="p25", below=-0.42, n=60, right=15, auroc=0.9
    )
    with pytest.raises(ConfigError):
        parse_config(RUNG + 'confidence = { signal = "vibes", below = -1.0 }\n')


def test_max_cold_wait_follows_the_slowest_measured_load() -> None:
    def fig(load_s: float) -> Measured:
        return Measured.model_validate(
            {"load_s": load_s, "prompt_tps": 1, "decode_tps": 1, "ttft_ms": 1, "at": "2026-01-01T00:00:00Z"}
        )

    assert cold_wait_line({}).startswith("max_cold_wait_s = 5.0 ")
    assert cold_wait_line({"a": fig(0.4), "b": "not measured"}).endswith("max_cold_wait_s = 5.0")
    assert cold_wait_line({"a": fig(0.4), "b": fig(13.1)}).endswith("max_cold_wait_s = 20.0")
    assert cold_wait_line({"a": fig(900.0)}).endswith("max_cold_wait_s = 60.0")


def req(text: str) -> Any:
    return parse_chat_request(
        json.dumps({"model": "auto", "messages": [{"role": "user", "content": text}]}).encode()
    )


def test_the_router_uses_the_rungs_threshold_until_feedback_fits_one() -> None:
    cfg = parse_config(RUNG + 'confidence = { signal = "mean", below = -1.0 }\n')
    r = Router(cfg, {}, Detector([], {}))
    m = cfg.model("small")
    assert m is not None
    d = r.policy.decide(req("Hi"))
    trace = Trace(d, d.route)
    # -1.1 mean is above [routing.cascade]'s default -1.2: only the rung's own threshold escalates it.
    assert r._verdict(m, [-1.1] * 5, None, "stop", 5, 100, trace) == "low_confidence"
    assert r._verdict(m, [-0.9] * 5, None, "stop", 5, 100, trace) is None
    r.thresholds = {"small": ("mean", -1.5)}  # fitted from feedback: it wins
    assert r._verdict(m, [-1.1] * 5, None, "stop", 5, 100, trace) is None
    plain = Router(parse_config(RUNG), {}, Detector([], {}))
    bare = plain.config.model("small")
    assert bare is not None
    assert plain._verdict(bare, [-1.1] * 5, None, "stop", 5, 100, trace) is None  # the defaults
