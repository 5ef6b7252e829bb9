"""The keyword matcher on its own: words, prefixes, phrases and patterns, counted and capped, with signals
written for the test (the defaults are exercised through the policy in test_policy.py)."""

from __future__ import annotations

import pytest

from localroute.config.routing import Signal
from localroute.routing.signals import DEFAULT_SIGNALS, SignalMatcher

LEGAL = Signal(
    name="legal",
    weight=0.5,
    max_hits=3,
    words=["tort", "contract*", "due process", "e.g.", "isn't"],
    patterns=[r"§\s*\d", r"\bUSC\b"],  # the second has upper case: searched with IGNORECASE
)
MONEY = Signal(name="money", weight=0.2, max_hits=5, words=["contract", "price*"], patterns=[r"\$\d"])


@pytest.fixture(scope="module")
def matcher() -> SignalMatcher:
    return SignalMatcher([LEGAL, MONEY])


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("A tort.", {"legal": 1}),  # a whole word, punctuation around it
        ("TORT and Tort and tort", {"legal": 3}),  # case-insensitive, every occurrence
        ("tort tort tort tort tort", {"legal": 3}),  # capped at max_hits
        ("torts and retort", {}),  # whole words only
        ("tort-like", {}),  # a hyphen joins words
        ("contractual terms", {"legal": 1}),  # `contract*` is a prefix
        ("the contract", {"legal": 1, "money": 1}),  # one word, two signals (whole and by prefix)
        ("prices, priced, pricing", {"money": 2}),  # `price*` takes what starts with it
        ("due process, due process", {"legal": 1}),  # a phrase counts once
        ("undue process", {}),  # a phrase starts at a word
        ("fees, e.g. filing", {"legal": 1}),  # punctuation in a word makes it a phrase
        ("it isn't", {"legal": 1}),  # an apostrophe stays inside a word
        ("under § 12", {"legal": 1}),
        ("15 usc 78", {"legal": 1}),  # a pattern with upper case matches any case
        ("costs $5", {"money": 1}),
        ("nothing to see here", {}),
        ("", {}),
    ],
)
def test_hits(matcher: SignalMatcher, text: str, want: dict[str, int]) -> None:
    assert dict(matcher.hits(text)) == want


def test_hits_come_in_signal_order_and_only_when_they_fire(matcher: SignalMatcher) -> None:
    assert matcher.hits("prices of a tort") == (("legal", 1), ("money", 1))
    assert matcher.hits("prices") == (("money", 1),)


def test_unicode_whitespace_separates_words(matcher: SignalMatcher) -> None:
    assert dict(matcher.hits("a\u3000tort\u00a0claim")) == {"legal": 1}


def test_no_signals_match_nothing() -> None:
    assert SignalMatcher([]).hits("prove the tort in python") == ()


def test_patterns_only_signal() -> None:
    m = SignalMatcher([Signal(name="ticket", weight=1.0, patterns=[r"jira-\d+"])])
    assert m.hits("See JIRA-123 and jira-9") == (("ticket", 1),)  # a pattern counts once


def test_default_signals_are_well_formed() -> None:
    names = [s.name for s in DEFAULT_SIGNALS]
    assert len(names) == len(set(names))
    assert any(s.weight < 0 for s in DEFAULT_SIGNALS)  # some make a prompt easier
    matcher = SignalMatcher(DEFAULT_SIGNALS)
    assert matcher.hits("The weather report for the coast was read on the radio.") == ()
    assert dict(matcher.hits("Prove it step by step.")).get("reasoning") == 2
