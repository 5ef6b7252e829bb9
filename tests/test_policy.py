"""The routing policy as tables: signals, the score, and the rung `decide` picks, with no server."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from localroute.config.schema import Config, parse_config
from localroute.errors import ConfigError, InvalidRequestError, UnsupportedCapabilityError
from localroute.protocol.chat import ChatCompletionRequest
from localroute.routing.policy import (
    HEAD_CHARS,
    NO_HINTS,
    TAIL_CHARS,
    Cold,
    Decision,
    Features,
    Hints,
    Policy,
)

SMALL = """
[[models]]
name = "small"
engine = "llama_cpp"
source = { kind = "path", path = "small.gguf" }
n_ctx = 2048
default_max_tokens = 256
max_score = {small}
"""
MID = """
[[models]]
name = "mid"
engine = "llama_cpp"
tier = 1
source = { kind = "path", path = "mid.gguf" }
n_ctx = 16384
price = { per_hour = 0.05 }
max_score = {mid}
"""
REMOTE = """
[[models]]
name = "frontier"
engine = "remote"
tier = 10
base_url = "https://api.example.com/v1"
model = "frontier-1"
price = { input_per_mtok = 2.5, output_per_mtok = 10.0 }
"""
NEUTRAL = "The weather report for the coast was read on the radio. "  # no signal fires on it


def ladder(small: float = 0.3, mid: float = 0.6, extra: str = "") -> Config:
    """small (free, 2k context) < mid (per-hour price, 16k) < frontier (priced per token, 128k)."""
    text = SMALL.replace("{small}", str(small)) + MID.replace("{mid}", str(mid)) + REMOTE + extra
    return parse_config(text)


def req(*turns: str, model: str = "auto", max_tokens: int | None = None) -> ChatCompletionRequest:
    """User and assistant turns in alternation, starting with the user."""
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    body: dict[str, object] = {"model": model, "messages": msgs}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return ChatCompletionRequest.model_validate(body)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy(ladder())


# -- signals -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "signal", "hits"),
    [
        ("Which of these is NOT a mammal?", "negation", 1),
        ("not this, not that, not him, not her", "negation", 3),  # capped at max_hits
        ("Nothing was noted.", "negation", 0),  # whole words only
        ("Analyze the data and give an analysis.", "analysis", 2),  # `analy*` is a prefix
        ("How many eggs are left?", "math", 1),  # a phrase
        ("Somehow many people came.", "math", 0),  # a phrase starts at a word
        ("What is 37 + 48?", "math", 1),
        ("Prices rose 5 % last year.", "math", 1),
        ("It costs $20.", "math", 1),
        ("Statement 1 | Every group is abelian.", "compound", 1),
        ("Consider:\nI. first claim\nII. second claim", "compound", 1),
        ("```\nls -la\n```", "code", 1),
        ("def area(r):\n    return r", "code", 2),  # a def, and a call followed by ':'
        ("int main() {\n  return 0;\n}", "code", 2),
        ("Translate this into German.", "simple_task", 1),
        ("Reverse a linked list in place.", "simple_task", 0),  # "list" alone is not a simple task
        ("Can you shorten your previous answer?", "followup", 1),
        ("hey, thanks!", "chitchat", 1),
    ],
)
def test_signal_hits(policy: Policy, text: str, signal: str, hits: int) -> None:
    assert dict(policy.signal_hits(text)).get(signal, 0) == hits


def test_neutral_text_fires_nothing(policy: Policy) -> None:
    assert policy.signal_hits(NEUTRAL * 3) == ()


def test_only_the_head_and_tail_of_a_long_prompt_are_scanned(policy: Policy) -> None:
    filler = NEUTRAL * (2 * (HEAD_CHARS + TAIL_CHARS) // len(NEUTRAL))
    middle = filler[: len(filler) // 2] + " Prove it. " + filler[len(filler) // 2 :]
    assert "reasoning" not in dict(policy.signal_hits(middle))
    assert "reasoning" in dict(policy.signal_hits(filler + " Prove it."))
    assert "reasoning" in dict(policy.signal_hits("Prove it. " + filler))


# -- the score ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "signal"),
    [
        ("hi", "chitchat"),
        ("Hello, how are you?", "chitchat"),
        ("Thanks a lot!", "chitchat"),
        ("Translate 'good morning' into French.", "simple_task"),
        ("Summarize this paragraph: the meeting moved to Tuesday and lunch is at noon.", "simple_task"),
        ("Rephrase this sentence so it sounds friendlier.", "simple_task"),
    ],
)
def test_easy_prompts_score_low(policy: Policy, prompt: str, signal: str) -> None:
    d = policy.decide(req(prompt))
    same_length = policy.score_text(NEUTRAL[: len(prompt)].ljust(len(prompt), "x"))
    assert d.score < 0.15
    assert d.score < same_length
    assert any(r.startswith(f"keywords:{signal} ") for r in d.reasons)


CHITCHAT = "Hello there, nice to meet you! How are you doing today, my friend?"


@pytest.mark.parametrize(
    "prompt",
    [
        "Prove that there are infinitely many prime numbers, step by step.",
        "Write a Python function that reverses a linked list using recursion.",
        "A shop sells pens at $3 each. Tom buys twice as many pens as Ann, who buys 4. "
        "How much does Tom spend in total?",
        "Derive the expected value of a die roll and justify each step.",
    ],
)
def test_hard_prompts_score_above_chitchat_and_neutral_text(policy: Policy, prompt: str) -> None:
    hard = policy.score_text(prompt)
    assert hard > policy.score_text(CHITCHAT) + 0.1
    assert hard > policy.score_text((NEUTRAL * 3)[: len(prompt)])


def test_score_is_bounded_and_grows_with_length(policy: Policy) -> None:
    scores = [policy.score_text(NEUTRAL * n) for n in (1, 2, 4, 8, 16, 64, 256, 2048)]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores == sorted(scores)
    assert scores[-1] > scores[0]
    assert scores[-1] == policy.score_text(NEUTRAL * 4096)  # the length term is capped


def test_depth_raises_the_score(policy: Policy) -> None:
    one = Features(estimated_tokens=200, fit_tokens=260, output_tokens=256, depth=1, hits=())
    scores = [policy.score(replace(one, depth=d))[0] for d in (1, 2, 3, 6)]
    assert scores == sorted(scores) and len(set(scores)) == 4
    _, reasons = policy.score(replace(one, depth=3))
    assert any(r.startswith("depth 3 user turns") for r in reasons)
    d = policy.decide(req("Tell me about tides.", "They follow the moon.", "And in lakes?"))
    assert d.features is not None and d.features.depth == 2


def test_score_text_matches_decide_on_a_single_turn(policy: Policy) -> None:
    prompt = "Explain why the sky is blue, in detail."
    assert policy.score_text(prompt) == policy.decide(req(prompt)).score


def test_reasons_name_the_signals_that_fired(policy: Policy) -> None:
    d = policy.decide(req("Prove the lemma, then implement it in Rust; compare both."))
    fired = {r.split()[0].removeprefix("keywords:") for r in d.reasons if r.startswith("keywords:")}
    assert d.features is not None and fired == {name for name, _ in d.features.hits}
    assert {"reasoning", "code", "analysis"} <= fired
    assert d.reasons[0].startswith("length ~")
    assert not any(r.startswith("keywords:") for r in policy.decide(req(NEUTRAL)).reasons)


# -- custom signals from models.toml -----------------------------------------------------------------

CUSTOM = r"""
[[routing.signals]]
name = "legal"
weight = 1.5
words = ["habeas corpus", "tort*", "C++"]
patterns = ['\bArt\.\s*\d+', 'section \d+']
"""


@pytest.mark.parametrize(
    ("text", "hits"),
    [
        ("Does habeas corpus apply here?", 1),  # a phrase
        ("Torts and tortious acts", 2),  # a prefix, counted per word
        ("I write C++ daily.", 1),  # punctuation in a word: looked for as a substring
        ("See ART. 5 of the treaty", 1),  # a pattern with capitals: matched ignoring case
        ("See SECTION 12", 1),  # a lower-case pattern: matched in the lower-cased text
        ("Nothing legal here.", 0),
    ],
)
def test_custom_signals_add_hits(text: str, hits: int) -> None:
    p = Policy(ladder(extra=CUSTOM))
    assert dict(p.signal_hits(text)).get("legal", 0) == hits
    assert "reasoning" in dict(p.signal_hits("Prove it."))  # the defaults stay


def test_custom_signals_raise_the_score() -> None:
    text = "Is the tort claim barred under section 4?"
    assert Policy(ladder(extra=CUSTOM)).score_text(text) > Policy(ladder()).score_text(text) + 0.2


def test_replace_default_signals_drops_the_defaults() -> None:
    p = Policy(ladder(extra="[routing]\nreplace_default_signals = true\n" + CUSTOM))
    assert p.signal_hits("Prove it. Write Python code. hi, thanks") == ()
    assert p.signal_hits("A tort, not a crime.") == (("legal", 1),)


def test_a_custom_signal_replaces_the_default_of_the_same_name() -> None:
    p = Policy(ladder(extra='[[routing.signals]]\nname = "code"\nweight = 2.0\nwords = ["cobol"]\n'))
    assert "code" not in dict(p.signal_hits("Write Python code."))
    assert dict(p.signal_hits("Port this COBOL job.")) == {"code": 1}


# -- the decision ------------------------------------------------------------------------------------

PROMPT = "Compare two sorting algorithms and explain why one is faster."


@pytest.mark.parametrize(
    ("small_gap", "mid_gap", "model", "route"),
    [
        (0.0, 0.1, "small", "policy:score<="),  # the bound is inclusive
        (0.05, 0.1, "small", "policy:score<="),
        (-0.01, 0.1, "mid", "policy:score>"),
        (-0.02, 0.0, "mid", "policy:score>"),
        (-0.02, -0.01, "frontier", "policy:score>"),
    ],
)
def test_decide_picks_the_cheapest_rung_whose_max_score_admits_the_score(
    policy: Policy, small_gap: float, mid_gap: float, model: str, route: str
) -> None:
    s = policy.decide(req(PROMPT)).score  # written into TOML as repr(): the same float comes back
    p = Policy(ladder(small=s + small_gap, mid=s + mid_gap))
    d = p.decide(req(PROMPT))
    assert (d.model, d.route.startswith(route)) == (model, True)
    order = ["small", "mid", "frontier"]
    assert d.escalation == tuple(order[order.index(model) + 1 :])
    assert d.tier == {"small": 0, "mid": 1, "frontier": 10}[model]


def test_unavailable_rungs_are_skipped() -> None:
    p = Policy(ladder(small=1.0, mid=1.0))
    assert p.decide(req("hi")).model == "small"
    d = p.decide(req("hi"), unavailable={"small"})
    assert (d.model, d.escalation) == ("mid", ("frontier",))
    assert p.decide(req("hi"), unavailable=["small", "mid"]).model == "frontier"


def test_a_prompt_too_long_for_the_local_context_goes_to_the_first_rung_that_fits() -> None:
    p = Policy(ladder(small=1.0, mid=1.0))
    long = NEUTRAL * (3 * 2048 // len(NEUTRAL) + 10)  # ~2.1k tokens at 3 chars each: over small's 2k
    d = p.decide(req(long))
    assert (d.model, d.route, d.escalation) == ("mid", "policy:context", ("frontier",))
    assert "do not fit the cheaper rungs" in d.reasons[-1]
    assert p.decide(req(NEUTRAL * 10)).model == "small"


def test_a_prompt_too_long_for_every_rung_goes_to_the_largest_context() -> None:
    p = Policy(ladder())
    d = p.decide(req(NEUTRAL * 20_000), Hints(tier="local"))
    assert (d.model, d.route) == ("mid", "policy:context")
    assert "no rung fits" in d.reasons[-1]


@pytest.mark.parametrize(
    ("hints", "prompt", "model"),
    [
        (Hints(tier="10"), "hi", "frontier"),
        (Hints(tier="1"), "hi", "mid"),
        (Hints(tier="remote"), "hi", "frontier"),
        (Hints(tier="local"), "hi", "small"),
        (Hints(tier="local"), PROMPT * 3, "mid"),  # too hard for small; frontier is not local
        (Hints(max_cost=0), PROMPT * 3, "small"),  # only the free rung is left
        (Hints(max_cost=1.0), PROMPT * 3, "frontier"),
    ],
)
def test_hints_restrict_the_rungs(hints: Hints, prompt: str, model: str) -> None:
    p = Policy(ladder(small=0.1, mid=0.2))
    assert p.decide(req(prompt), hints).model == model


def test_a_named_model_bypasses_the_policy() -> None:
    p = Policy(ladder(small=0.0, mid=0.0))
    d = p.decide(req("Prove it, step by step, in Rust.", model="small"), Hints(tier="10"))
    assert (d.model, d.route, d.escalation) == ("small", "explicit", ())
    assert d.reasons[-1] == "model small named in the request"
    with pytest.raises(InvalidRequestError) as exc:
        p.decide(req("hi", model="nope"))
    assert exc.value.param == "model"


@pytest.mark.parametrize(
    ("hints", "unavailable"),
    [
        (Hints(tier="7"), ()),
        (Hints(tier="local"), ("small", "mid")),
        (NO_HINTS, ("small", "mid", "frontier")),
    ],
)
def test_no_route_when_nothing_is_left(hints: Hints, unavailable: tuple[str, ...]) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        Policy(ladder()).decide(req("hi"), hints, unavailable)
    assert exc.value.code == "no_route"


def test_decision_as_json(policy: Policy) -> None:
    d = policy.decide(req("Prove it.", max_tokens=64))
    out = d.as_json()
    assert set(out) == {"model", "tier", "score", "reasons", "estimated_tokens", "thresholds", "route",
                        "escalation", "needs", "ruled_out", "sticky"}  # fmt: skip
    assert out["thresholds"] == {"small": 0.3, "mid": 0.6, "frontier": 1.0}
    assert out["score"] == round(d.score, 4) and out["reasons"] == list(d.reasons)
    assert json.loads(json.dumps(out)) == out
    assert d.features is not None and d.features.output_tokens == 64


def test_a_30000_token_prompt_gets_a_valid_decision(policy: Policy) -> None:
    text = (NEUTRAL * (120_000 // len(NEUTRAL)))[:120_000] + " Now prove the claim above."
    d = policy.decide(req(text))
    assert isinstance(d, Decision)
    assert 29_000 < d.estimated_tokens < 31_000
    assert (d.model, d.route) == ("frontier", "policy:context")  # 40k pessimistic tokens: only 128k fits
    assert 0.0 < d.score < 1.0
    assert "reasoning" in dict(d.features.hits if d.features else ())


# -- routing that knows what is loaded ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("cold", "want", "route"),
    [
        ({}, "small", "policy:score<="),  # everything warm: the cheapest admissible rung
        ({"small": Cold(20.0)}, "mid", "policy:warm"),  # a long load: the warm equivalent wins
        ({"small": Cold(1.0)}, "small", "policy:score<="),  # a short load is worth waiting for
        ({"small": Cold(None)}, "small", "policy:score<="),  # never measured: no reason to avoid it
        ({"small": Cold(20.0), "mid": Cold(20.0)}, "frontier", "policy:warm"),  # the next warm one
    ],
    ids=["all-warm", "cold-slow", "cold-fast", "cold-unmeasured", "both-cold"],
)
def test_a_cold_rung_yields_to_a_warm_equivalent(cold: dict[str, Cold], want: str, route: str) -> None:
    policy = Policy(ladder(small=0.9, mid=0.9, extra="[resources]\nmax_cold_wait_s = 5\n"))
    d = policy.decide(req(NEUTRAL), cold=cold)
    assert d.model == want and d.route.startswith(route), d
    if route == "policy:warm":
        assert any("is cold" in r for r in d.reasons)


def test_a_warm_rung_that_does_not_admit_the_score_is_not_equivalent() -> None:
    policy = Policy(ladder(small=0.9, mid=0.0, extra="[resources]\nmax_cold_wait_s = 5\n"))
    cfg_no_remote = [m for m in policy.ladder if m.engine != "remote"]
    assert [m.name for m in cfg_no_remote] == ["small", "mid"]
    d = policy.decide(req(NEUTRAL), unavailable={"frontier"}, cold={"small": Cold(30.0)})
    assert d.model == "small"  # mid is warm but its max_score 0.0 does not admit the request


# -- capabilities --------------------------------------------------------------------------------

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
IMAGE = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]


def needing(model: str = "auto", **fields: object) -> ChatCompletionRequest:
    msgs = fields.pop("messages", [{"role": "user", "content": "hi"}])
    return ChatCompletionRequest.model_validate({"model": model, "messages": msgs, **fields})


@pytest.mark.parametrize(
    ("fields", "model", "ruled_out"),
    [
        ({}, "small", {}),
        ({"tools": [TOOL]}, "small", {}),  # llama.cpp serves tools and JSON itself
        ({"response_format": {"type": "json_object"}}, "small", {}),
        (
            {"messages": [{"role": "user", "content": IMAGE}]},
            "frontier",
            {"small": "vision", "mid": "vision"},
        ),
        ({"n": 2}, "frontier", {"small": "n", "mid": "n"}),
        ({"logprobs": True, "top_logprobs": 2}, "small", {}),  # the worker gives alternatives too
    ],
)
def test_only_rungs_with_the_needed_capability_are_considered(
    fields: dict[str, object], model: str, ruled_out: dict[str, str]
) -> None:
    d = Policy(ladder()).decide(needing(**fields))
    assert d.model == model
    assert dict(d.ruled_out) == ruled_out
    assert d.as_json()["ruled_out"] == ruled_out
    assert set(d.needs) == set(needing(**fields).needs())


def test_a_rung_may_declare_its_own_capabilities() -> None:
    plain = SMALL.replace("{small}", "0.3") + "capabilities = ['logprobs']\n"  # no tools, no JSON
    cfg = parse_config(plain + MID.replace("{mid}", "0.6") + REMOTE)
    d = Policy(cfg).decide(needing(tools=[TOOL]))
    assert d.model == "mid" and dict(d.ruled_out) == {"small": "tools"}


def test_a_llama_cpp_rung_cannot_claim_what_its_worker_does_not_do() -> None:
    with pytest.raises(ConfigError, match="cannot serve n, vision"):
        parse_config(SMALL.replace("{small}", "0.3") + "capabilities = ['tools', 'vision', 'n']\n")


def test_no_rung_with_the_capability_is_a_400_naming_it() -> None:
    local_only = parse_config(SMALL.replace("{small}", "0.3"))
    with pytest.raises(UnsupportedCapabilityError) as info:
        Policy(local_only).decide(needing(n=3))
    assert info.value.status == 400 and info.value.capability == "n" and info.value.param == "n"
    assert "needs n" in info.value.message


def test_a_named_model_without_the_capability_is_a_400() -> None:
    with pytest.raises(UnsupportedCapabilityError) as info:
        Policy(ladder()).decide(needing(model="small", messages=[{"role": "user", "content": IMAGE}]))
    assert info.value.code == "unsupported_capability" and "'small'" in info.value.message
