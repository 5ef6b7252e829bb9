"""How sure a model was, from its sampled tokens' logprobs: the measure, the verdict and the reader."""

from __future__ import annotations

import math
from typing import Any

import pytest

from localroute.config.routing import CascadeConfig
from localroute.routing.confidence import Confidence, logprobs_of, measure, too_unsure

CASCADE = CascadeConfig(min_mean_logprob=-1.2, min_tail_logprob=-4.5, tail_fraction=0.1)


@pytest.mark.parametrize(
    ("logprobs", "fraction", "want"),
    [
        ([-1.0, -2.0, -3.0, -4.0], 0.5, Confidence(-2.5, -4.0, -3.5, 4)),  # tail: the lowest 2
        ([-1.0, -2.0, -3.0, -4.0], 0.1, Confidence(-2.5, -4.0, -4.0, 4)),  # at least one token
        ([-1.0, -2.0, -3.0, -4.0], 1.0, Confidence(-2.5, -4.0, -2.5, 4)),  # the whole answer
        ([-0.5], 0.1, Confidence(-0.5, -0.5, -0.5, 1)),
        ([-1.0, -math.inf, math.nan, -3.0], 0.5, Confidence(-2.0, -3.0, -3.0, 2)),  # non-finite dropped
        ([], 0.1, None),
        ([-math.inf, math.nan], 0.1, None),  # nothing finite: nothing to judge
    ],
)
def test_measure(logprobs: list[float], fraction: float, want: Confidence | None) -> None:
    assert measure(logprobs, fraction) == want


@pytest.mark.parametrize(
    ("confidence", "unsure"),
    [
        (None, False),  # no tokens: nothing says the answer is bad
        (Confidence(-0.1, -2.0, -1.0, 10), False),
        (Confidence(-1.2, -9.0, -4.5, 10), False),  # at both thresholds: still sure enough
        (Confidence(-1.21, -2.0, -1.0, 10), True),  # mean below
        (Confidence(-0.1, -9.0, -4.51, 10), True),  # tail below, mean fine
    ],
)
def test_too_unsure(confidence: Confidence | None, unsure: bool) -> None:
    assert too_unsure(confidence, CASCADE) is unsure


def test_a_few_bad_tokens_are_caught_by_the_tail() -> None:
    values = [-0.01] * 18 + [-8.0, -9.0]
    c = measure(values, CASCADE.tail_fraction)
    assert c is not None and c.mean > CASCADE.min_mean_logprob
    assert too_unsure(c, CASCADE)


@pytest.mark.parametrize(
    ("choice", "want"),
    [
        ({"logprobs": {"content": [{"token": "a", "logprob": -0.5}, {"logprob": -2}]}}, [-0.5, -2.0]),
        ({"delta": {"content": "a"}, "logprobs": {"content": [{"token": "a", "logprob": -1}]}}, [-1.0]),
        ({"logprobs": {"content": [{"token": "a"}, {"logprob": -3.0}, "junk"]}}, [-3.0]),  # malformed skipped
        ({}, []),
        ({"logprobs": None}, []),
        ({"logprobs": {"content": None}}, []),
        ({"logprobs": {"content": 5}}, []),
        ({"logprobs": [-1.0]}, []),
    ],
)  # fmt: skip
def test_logprobs_of(choice: dict[str, Any], want: list[float]) -> None:
    assert logprobs_of(choice) == want


def test_describe_names_every_figure() -> None:
    assert Confidence(-0.5, -3.25, -2.0, 12).describe() == "mean -0.50, tail -2.00, min -3.25 over 12 tokens"
