"""The privacy building blocks, without a server: the detector (true and false positives, as tables),
`redact`, `resolve` (who decides a request is private) and the egress guard inside the remote client."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from localroute.config.models import RemoteModel
from localroute.config.privacy import ALL_KINDS, PrivacyConfig
from localroute.privacy.detect import Detector, iban_ok, luhn_ok
from localroute.privacy.guard import (
    CURRENT,
    EgressGuard,
    Privacy,
    PrivacyViolationError,
    body_texts,
    redact,
    resolve,
)
from localroute.rungs.remote import RemoteBackend

EVERYTHING = Detector(ALL_KINDS)


def found(text: str, detector: Detector = EVERYTHING) -> list[tuple[str, str]]:
    """(kind, matched text) for every finding, in order."""
    return sorted((f.kind, text[f.start : f.end]) for f in detector.scan(text))


def kinds(text: str) -> set[str]:
    return {f.kind for f in EVERYTHING.scan(text)}


# -- true positives: (kind, the value, written inside a sentence) -----------------------------------------

TRUE_POSITIVES = [
    ("email", "alice.smith+tag@example.co.uk"),
    ("email", "bob@example.org"),
    ("email", "x_y-z@sub.domain.io"),
    ("phone", "+1 415-555-0132"),
    ("phone", "(415) 555-0132"),
    ("phone", "+1 (415) 555-0132"),
    ("phone", "+442079460958"),
    ("phone", "415-555-0132"),
    ("phone", "020 7946 0958"),
    ("card", "4111 1111 1111 1111"),
    ("card", "4111111111111111"),
    ("card", "5500-0000-0000-0004"),
    ("card", "378282246310005"),
    ("card", "3782 822463 10005"),
    ("iban", "DE89 3704 0044 0532 0130 00"),
    ("iban", "GB82 WEST 1234 5698 7654 32"),
    ("iban", "NL91ABNA0417164300"),
    ("iban", "FR1420041010050500013M02606"),
    ("ssn", "123-45-6789"),
    ("ssn", "078-05-1120"),
    ("ip", "192.168.1.10"),
    ("ip", "10.0.0.1"),
    ("ip", "8.8.8.8"),
    ("ip", "2001:db8::1"),
    ("ip", "fe80::1"),
    ("ip", "2001:db8:85a3::8a2e:370:7334"),
    ("ip", "fe80::1ff:fe23:4567:890a"),
    ("ip", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
    ("secret", "sk-abcdefghijklmnopqrstuvwxyz123456"),
    ("secret", "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx"),
    ("secret", "AKIAIOSFODNN7EXAMPLE"),
    ("secret", "ghp_" + "a1B2" * 9),
    ("secret", "xoxb-1234567890-abcdefghij"),
    (
        "secret",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ),
    ("secret", "-----BEGIN RSA PRIVATE KEY-----"),
    ("secret", "-----BEGIN OPENSSH PRIVATE KEY-----"),
    ("secret", "password = hunter2hunter2"),
    ("secret", "api_key: abcd1234efgh"),
    ("secret", "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    # Forms the detector used to miss (issue 15).
    ("phone", "415.555.0132"),
    ("phone", "030 12345678"),
    ("phone", "01 23 45 67 89"),
    ("phone", "06-12345678"),
    ("card", "4111.1111.1111.1111"),
    ("iban", "de89 3704 0044 0532 0130 00"),
    ("iban", "gb82 west 1234 5698 7654 32"),
    ("secret", "postgres://admin:pa55word@db.internal:5432/app"),
    ("secret", "https://deploy:s3cretvalue@git.example.com/repo.git"),
    ("secret", '"password": "correcthorse"'),
    ("ssn", "AB 12 34 56 C"),
    ("ssn", "JK123456A"),
]

# Written so that a plain regex over the raw text misses them: full-width digits, a zero-width space.
DISGUISED = [
    (
        "card",
        "\uff14\uff11\uff11\uff11 \uff11\uff11\uff11\uff11 \uff11\uff11\uff11\uff11 \uff11\uff11\uff11\uff11",
    ),
    ("card", "4111\u200b1111\u200b1111\u200b1111"),
    ("email", "alice\u200b@example.com"),
    ("ssn", "\uff11\uff12\uff13-\uff14\uff15-\uff16\uff17\uff18\uff19"),
]


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("x\u200b4111 1111 1111 1111", "card", "4111 1111 1111 1111"),  # no word joined to it
        ("\u30ab\u30fc\u30c9\u200b4111 1111 1111 1111", "card", "4111 1111 1111 1111"),
        ("4111 1111 1111 1111\u00b2 see note", "card", "4111 1111 1111 1111"),  # NFKC's 2 breaks no Luhn
        ("Hauptstra\u00dfe 5, de89 3704 0044 0532 0130 00", "iban", "de89 3704 0044 0532 0130 00"),
    ],
)
def test_normalising_finds_no_less_than_the_raw_text(text: str, kind: str, value: str) -> None:
    assert (kind, value) in found(text)
    assert value not in redact(text, EVERYTHING)


@pytest.mark.parametrize(("kind", "value"), DISGUISED, ids=[k + str(i) for i, (k, _) in enumerate(DISGUISED)])
def test_detects_disguised_values_and_spans_what_was_written(kind: str, value: str) -> None:
    text = f"note: {value} (end)"
    hits = EVERYTHING.scan(text)
    assert [h.kind for h in hits] == [kind]
    assert text[hits[0].start : hits[0].end] == value  # the span is the original's, for redaction
    assert kind.upper() in redact(text, EVERYTHING) and value not in redact(text, EVERYTHING)


def test_a_dotenv_file_and_an_exported_token_are_secrets() -> None:
    env = "DEBUG=1\nDB_PASSWORD=correcthorse\nexport GITHUB_TOKEN='abcdefgh'\nPORT=8000\n"
    assert [f.kind for f in EVERYTHING.scan(env)] == ["secret", "secret"]


@pytest.mark.parametrize(("kind", "value"), TRUE_POSITIVES, ids=[f"{k}:{v[:24]}" for k, v in TRUE_POSITIVES])
def test_detects(kind: str, value: str) -> None:
    text = f"Hello, please look at this: {value} and tell me what you think."
    hits = found(text)
    assert hits, f"{value!r} not detected"
    assert {k for k, _ in hits} == {kind}, hits
    assert any(value in v or v in value for _, v in hits), hits
    if kind != "secret":  # a secret's finding may stop at the key's end; the rest are exact spans
        assert (kind, value) in hits


def test_private_key_block_is_found_in_a_multiline_prompt() -> None:
    text = (
        "fix my config:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n"
    )
    assert kinds(text) == {"secret"}


# -- false positives: things that look like data and are not ----------------------------------------------

FALSE_POSITIVES = [
    # dates are not phone numbers (nor cards)
    "We met on 2024-05-17 at noon.",
    "The invoice is dated 17/05/2024.",
    "US style: 05.17.2024 was a Friday.",
    "From 2024/05/17 to 2024/06/30.",
    # numbers, years, versions, times are not phones
    "In 2023, 2024 and 2025 sales grew.",
    "Upgrade from version 10.15.7 to 1.2.3 today.",
    "There are 1234567 people in the city.",
    "The answer is 12345678901.",
    "pi is 3.14159265358979",
    "It costs 1,000,000 dollars.",
    "ISBN 978-3-16-148410-0 is the book.",
    "Meet at 10:30:45, or at 11:45.",
    "Build 20240517.1 passed.",
    # 16 digits that fail Luhn are not cards (and are too long to be phones)
    "card 4111 1111 1111 1112",
    "card 1234 5678 9012 3456",
    "order 1234567890123456",
    # SSN-shaped numbers in ranges the SSA never issues
    "ssn 000-12-3456",
    "ssn 666-12-3456",
    "ssn 900-12-3456",
    "ssn 999-12-3456",
    "ssn 123-00-6789",
    "ssn 123-45-0000",
    # not IP addresses
    "ip 999.1.1.1",
    "ip 256.256.256.256",
    "std::vector<int> v; Foo::Bar::baz();",
    "every other item: a[::2] + b[1::3]",
    "Db::Add(cafe::beef)",
    "mac 00:1A:2B:3C:4D:5E",
    # not e-mail addresses
    "ssh user@localhost",
    "meet @ noon",
    "price@5",
    # the words key / token / secret / password in prose, without an assignment
    "The key to success is hard work.",
    "Use a token to pay for the bus.",
    "Keep the secret, and change your password often.",
    "What is an API key and how do I rotate it?",
    "The password is important; never share it.",
    "tokenize the input first",
    "key point: be brief",
    "The secret: practice every day.",
    "Password: see the vault",
    "token = request.headers.get('x-token')",
    "password=short",
    # versions, placeholders and code that only look like the new forms
    "Upgrade to version 1.2.3.4 or v10.0.0.1 tonight.",
    "DB_PASSWORD=${DB_PASSWORD}",
    "API_TOKEN=<your token here>",
    'login(password="******")',
    "Clone https://github.com/org/repo.git and run it.",
    "The ratio was 0.123 4567 in the table.",
    "Order number 000-12-3456 shipped.",
    "Chapter 12 34 56 of the book.",
]


@pytest.mark.parametrize("text", FALSE_POSITIVES)
def test_does_not_detect(text: str) -> None:
    assert found(text) == []


@pytest.mark.parametrize(
    ("text", "not_kind"),
    [
        ("iban DE88 3704 0044 0532 0130 00", "iban"),  # wrong check digits
        ("iban GB83 WEST 1234 5698 7654 32", "iban"),
        ("iban NL92ABNA0417164300", "iban"),
        ("iban DE89 3704 0044 0532 0130 01", "iban"),  # a changed account digit
    ],
)
def test_iban_with_a_wrong_check_digit_is_not_an_iban(text: str, not_kind: str) -> None:
    assert not_kind not in kinds(text)


def test_checksums() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("378282246310005") and luhn_ok("5500000000000004")
    assert not luhn_ok("4111111111111112") and not luhn_ok("1234567890123456")
    assert iban_ok("DE89 3704 0044 0532 0130 00") and iban_ok("GB82WEST12345698765432")
    assert not iban_ok("DE88 3704 0044 0532 0130 00")
    assert not iban_ok("DE89 3704 0044 0532 0130 0")  # a DE IBAN has 22 characters


def test_every_address_of_several_is_found() -> None:
    text = "cc a@example.com, b@example.org and a@example.com; call +1 415-555-0132 or +442079460958"
    assert found(text) == [
        ("email", "a@example.com"),
        ("email", "a@example.com"),
        ("email", "b@example.org"),
        ("phone", "+1 415-555-0132"),
        ("phone", "+442079460958"),
    ]


def test_detected_kinds_can_be_limited() -> None:
    text = "mail a@example.com, card 4111 1111 1111 1111, ip 10.0.0.1"
    assert found(text, Detector(["email"])) == [("email", "a@example.com")]
    assert {k for k, _ in found(text, Detector(["card", "ip"]))} == {"card", "ip"}
    assert found(text, Detector([])) == []


def test_extra_patterns() -> None:
    det = Detector(ALL_KINDS, {"employee_id": r"\bEMP-\d{6}\b", "project": r"(?i)\bproject bluebird\b"})
    text = "EMP-123456 asked about Project Bluebird; EMP-12345 did not."
    assert found(text, det) == [("employee_id", "EMP-123456"), ("project", "Project Bluebird")]
    assert found(text) == []  # not without the patterns
    cfg = PrivacyConfig.model_validate({"extra_patterns": {"employee_id": r"\bEMP-\d{6}\b"}})
    assert found(text, Detector(cfg.detect, cfg.extra_patterns)) == [("employee_id", "EMP-123456")]


@pytest.mark.parametrize(
    ("patterns", "error"),
    [({"Bad Name": "x"}, "lowercase"), ({"broken": "(unclosed"}, "not a valid regular expression")],
)
def test_extra_patterns_are_checked_at_load(patterns: dict[str, str], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        PrivacyConfig.model_validate({"extra_patterns": patterns})


# -- redact -------------------------------------------------------------------------------------------------


def test_redact_gives_typed_placeholders_and_one_name_per_value() -> None:
    text = (
        "From a@example.com to b@example.org (again a@example.com). Card 4111 1111 1111 1111, "
        "phone +1 415-555-0132, key sk-abcdefghijklmnopqrstuvwxyz123456."
    )
    out = redact(text, EVERYTHING)
    assert out == (
        "From [EMAIL_1] to [EMAIL_2] (again [EMAIL_1]). Card [CARD_1], phone [PHONE_1], key [SECRET_1]."
    )
    assert found(out) == []  # nothing detectable is left


def test_redact_shares_names_across_the_texts_of_one_request() -> None:
    seen: dict[str, str] = {}
    first = redact("write to a@example.com", EVERYTHING, seen)
    second = redact("cc b@example.org and a@example.com", EVERYTHING, seen)
    assert (first, second) == ("write to [EMAIL_1]", "cc [EMAIL_2] and [EMAIL_1]")


def test_redact_leaves_clean_text_alone() -> None:
    text = "On 2024-05-17, version 10.15.7 shipped; the key to it was 1234567 tests."
    assert redact(text, EVERYTHING) == text


def test_redact_uses_extra_pattern_names() -> None:
    det = Detector(["email"], {"employee_id": r"EMP-\d{6}"})
    assert redact("EMP-123456 <a@x.io>", det) == "[EMPLOYEE_ID_1] <[EMAIL_1]>"


# -- resolve: who decides -----------------------------------------------------------------------------------

E = ("email",)
RESOLVE = [
    # default, allow_public_override, header, key policy, kinds -> private, reason
    ("public", False, "private", None, (), True, "header"),
    ("public", False, " Private ", None, (), True, "header"),
    ("public", False, "private", "public", E, True, "header"),
    ("public", False, None, "private", (), True, "key"),
    ("public", False, "public", "private", (), True, "key"),  # a header cannot undo the key's policy
    ("public", True, "public", "private", E, True, "key"),
    ("public", False, None, None, E, True, "pii"),
    ("public", False, "public", None, E, True, "pii"),  # detection wins over `public`...
    ("public", True, "public", None, E, False, "override"),  # ...unless the config allows it
    ("public", True, None, None, E, True, "pii"),  # allowed, but not asked for
    ("public", False, None, "public", E, True, "pii"),  # a public key does not override either
    ("public", False, "public", None, (), False, "public-header"),
    ("public", False, None, "public", (), False, "public-key"),
    ("public", False, None, "auto", (), False, "public-default"),
    ("public", False, None, None, (), False, "public-default"),
    ("private", False, None, None, (), True, "default"),
    ("private", False, None, "auto", (), True, "default"),
    ("private", False, "public", None, (), False, "public-header"),
    ("private", False, None, "public", (), False, "public-key"),
    ("private", False, "public", None, E, True, "pii"),
    ("private", True, "public", None, E, False, "override"),
]


@pytest.mark.parametrize(
    ("default", "override", "header", "key", "kinds_", "private", "reason"),
    RESOLVE,
    ids=[f"{r[0]}-ovr{int(r[1])}-h:{r[2]}-k:{r[3]}-{'pii' if r[4] else 'clean'}" for r in RESOLVE],
)
def test_resolve(
    default: str,
    override: bool,
    header: str | None,
    key: str | None,
    kinds_: tuple[str, ...],
    private: bool,
    reason: str,
) -> None:
    cfg = PrivacyConfig.model_validate({"default": default, "allow_public_override": override})
    p = resolve(cfg, header, key, kinds_)
    assert (p.private, p.reason) == (private, reason)
    if reason in ("header", "key", "pii", "override"):
        assert p.kinds == kinds_  # the kinds are kept for the audit log
    assert p.as_json() == {
        "class": "private" if private else "public",
        "reason": reason,
        "kinds": list(p.kinds),
    }


# -- the egress guard ---------------------------------------------------------------------------------------

CLEAN = {"model": "m", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
WITH_EMAIL = {"model": "m", "messages": [{"role": "user", "content": "Write to carol@example.com"}]}
WITH_CARD_PART = {
    "model": "m",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Is 4111 1111 1111 1111 valid?"}]},
    ],
}


def guarded(privacy: Privacy | None, fn: Callable[[], Any]) -> Any:
    """Run `fn` in a fresh context, with CURRENT set to `privacy` (or unset)."""

    def run() -> Any:
        if privacy is not None:
            CURRENT.set(privacy)
        return fn()

    return contextvars.Context().run(run)


@pytest.mark.parametrize(
    "privacy",
    [None, Privacy(True, "header"), Privacy(True, "pii", ("email",)), Privacy(True, "default")],
    ids=["unset", "header", "pii", "default"],
)
def test_guard_refuses_unless_marked_public(privacy: Privacy | None) -> None:
    guard = EgressGuard(EVERYTHING)
    with pytest.raises(PrivacyViolationError) as ei:
        guarded(privacy, lambda: guard(CLEAN))
    assert ei.value.status == 503 and ei.value.code == "private_request_unservable"
    assert guard.refused == 1


@pytest.mark.parametrize("body", [WITH_EMAIL, WITH_CARD_PART], ids=["email", "card-in-part"])
def test_guard_refuses_a_public_body_that_carries_data(body: dict[str, Any]) -> None:
    guard = EgressGuard(EVERYTHING)
    with pytest.raises(PrivacyViolationError) as ei:
        guarded(Privacy(False, "public-default"), lambda: guard(body))
    assert guard.refused == 1
    assert "carol@example.com" not in ei.value.message and "4111" not in ei.value.message


def test_guard_lets_clean_public_and_overridden_bodies_go() -> None:
    guard = EgressGuard(EVERYTHING)
    guarded(Privacy(False, "public-default"), lambda: guard(CLEAN))
    guarded(Privacy(False, "public-header"), lambda: guard(CLEAN))
    guarded(Privacy(False, "override", ("email",)), lambda: guard(WITH_EMAIL))
    assert guard.refused == 0


# -- the guard inside the remote client: nothing reaches the wire -------------------------------------------


def remote(wire: list[httpx.Request]) -> RemoteBackend:
    def handler(request: httpx.Request) -> httpx.Response:
        wire.append(request)
        body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]}
        return httpx.Response(200, json=body)

    model = RemoteModel(
        name="frontier", engine="remote", base_url="http://provider.test/v1", model="m",
        api_key_env="K", max_retries=2,
    )  # fmt: skip
    return RemoteBackend(
        model,
        env={"K": "sk-test"},
        egress_guard=EgressGuard(EVERYTHING),
        transport=httpx.MockTransport(handler),
    )


async def _complete(backend: RemoteBackend, body: dict[str, Any]) -> dict[str, Any]:
    try:
        return await backend.complete(body)
    finally:
        await backend.aclose()


@pytest.mark.parametrize(
    ("privacy", "body"),
    [(None, CLEAN), (Privacy(True, "header"), CLEAN), (Privacy(False, "public-default"), WITH_EMAIL)],
    ids=["unset", "private", "public-with-email"],
)
def test_remote_client_sends_nothing_when_the_guard_refuses(
    privacy: Privacy | None, body: dict[str, Any]
) -> None:
    wire: list[httpx.Request] = []
    backend = remote(wire)
    with pytest.raises(PrivacyViolationError):
        guarded(privacy, lambda: asyncio.run(_complete(backend, body)))
    assert wire == [] and backend.attempts == 0  # refused before the first byte, and never retried


def test_remote_client_sends_a_public_request() -> None:
    wire: list[httpx.Request] = []
    backend = remote(wire)
    result = guarded(Privacy(False, "public-default"), lambda: asyncio.run(_complete(backend, CLEAN)))
    assert result["choices"][0]["message"]["content"] == "hi"
    assert len(wire) == 1  # the test can see a request when one is sent


def test_every_client_written_field_is_scanned() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "card 4111 1111"},
                    {"type": "text", "text": " 1111 1111"},
                ],
            },
            {"role": "user", "content": "hi", "name": "alice@example.com"},
        ],
        "stop": ["123-45-6789"],
    }
    texts = body_texts(body)
    det = Detector(ALL_KINDS)
    assert det.kinds_in(texts) == ("card", "email", "ssn")  # a value split across parts is still seen


def test_guard_refuses_pii_hidden_in_name_or_stop() -> None:
    guard = EgressGuard(Detector(ALL_KINDS))
    token = CURRENT.set(Privacy(False, "public-default"))
    try:
        for body in (
            {"messages": [{"role": "user", "content": "hi", "name": "bob@example.com"}]},
            {"messages": [{"role": "user", "content": "hi"}], "stop": "4111 1111 1111 1111"},
        ):
            with pytest.raises(PrivacyViolationError):
                guard(body)
    finally:
        CURRENT.reset(token)


def test_redacting_guard_rescans_an_overridden_request() -> None:
    det = Detector(ALL_KINDS)
    token = CURRENT.set(Privacy(False, "override", ("email",)))
    try:
        EgressGuard(det)({"messages": [{"role": "user", "content": "mail a@b.io"}]})  # allowed as is
        with pytest.raises(PrivacyViolationError):  # with redaction on, anything left is refused
            EgressGuard(det, redacting=True)({"messages": [{"role": "user", "content": "mail a@b.io"}]})
        EgressGuard(det, redacting=True)({"messages": [{"role": "user", "content": "mail [EMAIL_1]"}]})
    finally:
        CURRENT.reset(token)
