"""Properties, checked on generated inputs (hypothesis): the request edge refuses anything it cannot read
with one of our own errors and reads back every valid request it accepts; the PII detector finds valid
e-mail addresses, card numbers and IBANs wherever they sit in text, flags nothing of those kinds in text
that cannot hold them, and redaction leaves none of what it found."""

from __future__ import annotations

import json
import string
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from localroute.config.privacy import ALL_KINDS
from localroute.errors import APIError, InvalidRequestError
from localroute.privacy.detect import Detector, iban_ok, luhn_ok
from localroute.privacy.guard import redact
from localroute.protocol.chat import MAX_STOP_CHARS, MAX_TOKENS, ChatCompletionRequest, parse_chat_request

BOUNDED = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
DETECTOR = Detector(ALL_KINDS)

# Text as a client sends it: any Unicode but lone surrogates (not text) and NUL (refused at the edge).
CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
TEXT = st.text(CHARS, max_size=40)

# -- the request edge -----------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
FIELDS = [
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed",
    "stream", "stream_options", "n", "logprobs", "user", "tools", "api_base",
]  # fmt: skip
# Near misses: the request's own keys, each with any JSON value, and messages shaped almost right.
MESSAGE_ISH = st.dictionaries(st.sampled_from(["role", "content", "name", "tool_calls"]), JSON, max_size=4)
NEAR = st.dictionaries(
    st.sampled_from(FIELDS),
    JSON | st.lists(MESSAGE_ISH, max_size=3) | st.sampled_from(["auto", "user"]),
    max_size=8,
)


def assert_refused_or_read(raw: bytes) -> None:
    try:
        req = parse_chat_request(raw)
    except APIError as exc:
        assert isinstance(exc, InvalidRequestError) and exc.status == 400
        err = exc.body()["error"]
        assert err["type"] == "invalid_request_error" and err["message"].endswith(".")
        assert isinstance(err["code"], str), err  # every refusal names its kind
        assert err["param"] is None or isinstance(err["param"], str)
        assert "pydantic" not in err["message"] and "Traceback" not in err["message"]
        json.dumps(exc.body())  # plain JSON, sendable as is
    else:
        assert isinstance(req, ChatCompletionRequest)
        json.dumps(req.engine_body("m", 1))


@BOUNDED
@given(st.binary(max_size=300))
def test_any_bytes_are_read_or_refused_with_our_error(raw: bytes) -> None:
    assert_refused_or_read(raw)


@BOUNDED
@given(JSON, st.booleans())
def test_any_json_is_read_or_refused_with_our_error(value: object, ascii_only: bool) -> None:
    assert_refused_or_read(json.dumps(value, ensure_ascii=ascii_only).encode())


@BOUNDED
@given(NEAR, st.booleans())
def test_near_miss_requests_are_read_or_refused_with_our_error(
    value: dict[str, Any], ascii_only: bool
) -> None:
    assert_refused_or_read(json.dumps(value, ensure_ascii=ascii_only).encode())


def _finite(lo: float, hi: float, *, exclude_min: bool = False) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, exclude_min=exclude_min)


CONTENT = (
    TEXT | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), max_size=3) | st.none()
)
# As in OpenAI's API, only an assistant message may leave `content` out (or null).
MESSAGE = st.fixed_dictionaries(
    {"role": st.just("assistant")}, optional={"content": CONTENT, "name": st.text(CHARS, max_size=20)}
) | st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "developer", "user"]),
        "content": CONTENT.filter(lambda c: c is not None),
    },
    optional={"name": st.text(CHARS, max_size=20)},
)
STOP_TEXT = TEXT | st.just("x" * MAX_STOP_CHARS)
VALID = st.fixed_dictionaries(
    {"model": st.text(CHARS, min_size=1, max_size=30), "messages": st.lists(MESSAGE, min_size=1, max_size=5)},
    optional={
        "max_tokens": st.integers(1, MAX_TOKENS) | st.none(),
        "max_completion_tokens": st.integers(1, MAX_TOKENS),
        "temperature": _finite(0.0, 2.0),
        "top_p": _finite(0.0, 1.0, exclude_min=True),
        "stop": STOP_TEXT | st.lists(STOP_TEXT, max_size=4) | st.none(),
        "seed": st.integers(-(2**63), 2**64 - 1),
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
        "n": st.just(1) | st.none(),
        "logprobs": st.booleans(),
        "user": TEXT,
    },
)  # fmt: skip


@BOUNDED
@given(VALID, st.booleans())
def test_valid_requests_round_trip(data: dict[str, Any], ascii_only: bool) -> None:
    req = parse_chat_request(json.dumps(data, ensure_ascii=ascii_only).encode())
    assert req.model_dump(exclude_unset=True) == data
    again = parse_chat_request(json.dumps(req.model_dump(exclude_unset=True)).encode())
    assert again == req
    assert [m.text() for m in req.messages] == [_text(m.get("content")) for m in data["messages"]]


def _text(content: object) -> str:
    if isinstance(content, list):
        return "".join(part["text"] for part in content)
    return content if isinstance(content, str) else ""


# -- the PII detector -----------------------------------------------------------------------------

# Around a value: any text, set off by a space or punctuation, as values are written in prose.
AROUND = st.tuples(TEXT, st.sampled_from([" ", "\n", " (", ": ", " <", ' "', "\t"]))
AFTER = st.tuples(st.sampled_from([" ", "\n", ") ", ". ", "> ", '" ', ", "]), TEXT)


def embed(value: str, before: tuple[str, str], after: tuple[str, str]) -> tuple[str, int]:
    head = before[0] + before[1]
    return head + value + after[0] + after[1], len(head)


def found(text: str, kind: str, start: int, end: int) -> bool:
    return any(f.kind == kind and f.start <= start and f.end >= end for f in DETECTOR.scan(text))


LOCAL = st.text(string.ascii_letters + string.digits + "._%+-", min_size=1, max_size=30)
LABEL = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=12)
EMAIL = st.builds(
    lambda local, labels, tld: f"{local}@{'.'.join(labels)}.{tld}",
    LOCAL,
    st.lists(LABEL, min_size=1, max_size=3),
    st.text(string.ascii_letters, min_size=2, max_size=6),
)


@BOUNDED
@given(EMAIL, AROUND, AFTER)
def test_an_email_address_is_found_wherever_it_sits(
    email: str, before: tuple[str, str], after: tuple[str, str]
) -> None:
    text, at = embed(email, before, after)
    assert found(text, "email", at, at + len(email)), (text, DETECTOR.scan(text))


def _luhn_complete(digits: str) -> str:
    return next(digits + d for d in string.digits if luhn_ok(digits + d))


CARD_DIGITS = st.integers(13, 19).flatmap(
    lambda n: st.builds(
        lambda first, rest: _luhn_complete(first + rest),
        st.sampled_from("3456"),
        st.text(string.digits, min_size=n - 2, max_size=n - 2),
    )
)
CARD = CARD_DIGITS | st.builds(
    lambda digits, sep: sep.join(digits[i : i + 4] for i in range(0, 16, 4)),
    st.builds(lambda rest: _luhn_complete("4" + rest), st.text(string.digits, min_size=14, max_size=14)),
    st.sampled_from([" ", "-"]),
)


@BOUNDED
@given(CARD, AROUND, AFTER)
@example("4111 1111 1111 1111", ("pay", " "), (" ", "12/27 cvv 123"))  # its expiry date ran into it
@example("4000 0000 0000 0002", ("", " "), (" ", "0"))
def test_a_card_number_is_found_wherever_it_sits(
    card: str, before: tuple[str, str], after: tuple[str, str]
) -> None:
    assert luhn_ok(card.replace(" ", "").replace("-", ""))
    # A word ends the text before it: digits run on into a number next to them, by design.
    text, at = embed(card, (before[0] + " card", before[1]), after)
    assert found(text, "card", at, at + len(card)), (text, DETECTOR.scan(text))


# National formats (letters where the bank code has them): country -> (bank-code letters, digits).
IBAN_FORMATS = {"DE": (0, 18), "GB": (4, 14), "NL": (4, 10), "FR": (0, 23), "ES": (0, 20), "BE": (0, 12),
                "AT": (0, 16), "PL": (0, 24), "CH": (0, 17), "IE": (4, 14), "IT": (1, 22)}  # fmt: skip


def _iban(country: str, letters: str, digits: str, spaced: bool) -> str:
    bban = letters + digits
    check = 98 - int("".join(str(int(c, 36)) for c in bban + country + "00")) % 97
    compact = f"{country}{check:02d}{bban}"
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4)) if spaced else compact


IBAN = st.sampled_from(sorted(IBAN_FORMATS)).flatmap(
    lambda c: st.builds(
        _iban,
        st.just(c),
        st.text(string.ascii_uppercase, min_size=IBAN_FORMATS[c][0], max_size=IBAN_FORMATS[c][0]),
        st.text(string.digits, min_size=IBAN_FORMATS[c][1], max_size=IBAN_FORMATS[c][1]),
        st.booleans(),
    )
)


@BOUNDED
@given(IBAN, AROUND, AFTER)
@example("IT60X0542811101000000123456", ("", " "), (" ", ""))  # a letter after the check digits
@example("IT60 X054 2811 1010 0000 0123 456", ("", " "), (" ", ""))
@example("AT18 0000 0000 0000 0000", ("", " "), (" ", "0 times"))  # a number after it was read as its tail
def test_an_iban_is_found_wherever_it_sits(
    iban: str, before: tuple[str, str], after: tuple[str, str]
) -> None:
    assert iban_ok(iban)
    text, at = embed(iban, (before[0] + " iban", before[1]), after)
    assert found(text, "iban", at, at + len(iban)), (text, DETECTOR.scan(text))


# No digits and no `@`: nothing in it can be an address, a number or an account. (A colon-hex run such
# as `dead:beef::1` is an IPv6 address without decimal digits, and `sk-...` a key: not checked here.)
PLAIN = st.text(st.characters(blacklist_categories=("Cs", "Nd"), blacklist_characters="@\x00"), max_size=200)


@BOUNDED
@given(PLAIN)
def test_text_without_digits_or_at_is_not_flagged(text: str) -> None:
    kinds = {f.kind for f in DETECTOR.scan(text)}
    assert not kinds & {"email", "phone", "card", "iban", "ssn"}, (text, kinds)


@BOUNDED
@given(st.lists(st.tuples(EMAIL | CARD | IBAN, AFTER), min_size=1, max_size=4), TEXT)
@example([("DE89 3704 0044 0532 0130 00", (" ", "")), ("4111111111111111", (" ", ""))], "")  # card after IBAN
def test_redaction_leaves_nothing_it_found(values: list[tuple[str, tuple[str, str]]], head: str) -> None:
    text = head + " is " + "".join(v + a[0] + a[1] + " and " for v, a in values)
    findings = DETECTOR.scan(text)
    out = redact(text, DETECTOR)
    for f in findings:
        assert text[f.start : f.end] not in out, (text, out)
    left = {f.kind for f in DETECTOR.scan(out)} & {"email", "card", "iban"}
    assert not left, (text, out)
