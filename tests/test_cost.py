"""Cost arithmetic: token prices, measured compute priced per hour (and per kWh), the baseline, and a
batching engine's per-request share of its time."""

from __future__ import annotations

import pytest

from localroute.config.models import Price
from localroute.config.schema import parse_config
from localroute.errors import ConfigError
from localroute.observe import cost
from localroute.rungs import supervise

CONFIG = """
[[models]]
name = "small"
engine = "llama_cpp"
source = {{ kind = "path", path = "small.gguf" }}
price = {{ per_hour = 0.36, watts = 100, per_kwh = 0.40 }}

[[models]]
name = "mid"
engine = "remote"
tier = 5
base_url = "https://mid.example/v1"
model = "mid"
price = {{ input_per_mtok = 0.5, output_per_mtok = 1.5 }}

[[models]]
name = "top"
engine = "remote"
tier = 10
base_url = "https://top.example/v1"
model = "top"
price = {{ input_per_mtok = 2.5, output_per_mtok = 10.0 }}
{extra}
"""


def config(extra: str = ""):  # type: ignore[no-untyped-def]
    return parse_config(CONFIG.format(extra=extra))


def test_compute_is_priced_per_hour_plus_energy() -> None:
    p = Price(per_hour=0.36, watts=100, per_kwh=0.40)
    assert p.compute_per_hour() == pytest.approx(0.36 + 0.1 * 0.40)
    small = config().models[0]
    # 9 CPU-seconds = 1/400 h: (0.36 + 0.04) / 400 = $0.001; tokens are free on a local rung.
    assert cost.attempt_cost(small, {"prompt_tokens": 500, "completion_tokens": 80}, 9.0) == pytest.approx(
        0.001
    )
    assert cost.attempt_cost(small, {"prompt_tokens": 500}, 0.0) == 0.0


def test_remote_tokens_are_priced_per_million() -> None:
    top = config().models[2]
    usage = {"prompt_tokens": 1_000, "completion_tokens": 200}
    assert cost.attempt_cost(top, usage, 0.0) == pytest.approx((1_000 * 2.5 + 200 * 10.0) / 1e6)
    assert cost.attempt_cost(top, {}, 0.0) == 0.0


def test_baseline_is_the_dearest_model_unless_named() -> None:
    usage = {"prompt_tokens": 1_000, "completion_tokens": 200}
    assert cost.baseline_model(config()).name == "top"
    assert cost.baseline_cost(cost.baseline_model(config()), usage) == pytest.approx(0.0045)
    named = config('[cost]\nbaseline = "mid"')
    assert cost.baseline_model(named).name == "mid"
    assert cost.baseline_cost(cost.baseline_model(named), usage) == pytest.approx(
        (1_000 * 0.5 + 200 * 1.5) / 1e6
    )


def test_unknown_baseline_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"cost\.baseline 'nope' is not a model"):
        config('[cost]\nbaseline = "nope"')


@pytest.mark.parametrize(
    ("spent", "baseline", "pct"),
    [(0.0, 1.0, 100.0), (0.25, 1.0, 75.0), (1.5, 1.0, -50.0), (0.1, 0.0, None)],
)
def test_savings_pct(spent: float, baseline: float, pct: float | None) -> None:
    assert cost.savings_pct(spent, baseline) == pct


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_time_share_splits_overlap_between_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Processor sharing: while two requests overlap each is charged half the time; shares add up
    to the engine's busy time."""
    clock = Clock()
    monkeypatch.setattr(supervise.time, "monotonic", clock)
    share = supervise.TimeShare()
    a = share.enter()  # t=100: A alone
    clock.now = 102.0
    b = share.enter()  # t=102: A and B
    clock.now = 106.0
    a_s = share.leave(a)  # A: 2 alone + 4 shared / 2 = 4
    clock.now = 107.0
    b_s = share.leave(b)  # B: 4 / 2 + 1 alone = 3
    assert a_s == pytest.approx(4.0)
    assert b_s == pytest.approx(3.0)
    assert a_s + b_s == pytest.approx(107.0 - 100.0)
    clock.now = 200.0  # idle time is nobody's
    c = share.enter()
    clock.now = 201.0
    assert share.leave(c) == pytest.approx(1.0)
