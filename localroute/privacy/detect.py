"""Detection of personal and secret data, the only input to a request's privacy class besides headers,
keys and the config default.

Detection is local, regex-and-checksum only (no model call): e-mail addresses, phone numbers, payment
cards (Luhn), IBANs (mod 97), US SSNs, IP addresses, API keys / tokens / private-key blocks, and the
operator's own patterns. Findings carry kinds and offsets, never reach a log, and are never returned
to a client.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from localroute.config.privacy import PIIKind

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}")
# Runs of 7+ number characters, classified afterwards in Python; an IBAN is found from its digits
# by looking back for the country code (`DE89 3704 ...`, `GB82 WEST 1234 ...`).
_RUNS = re.compile(r"[0-9][0-9 .()/+-]{5,}[0-9]")  # no ':': times and IPv6 are not runs
_DATE_LED = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}\b|\d{1,2}[-./]\d{1,2}[-./]\d{4}\b")
_IBAN_HEAD = re.compile(r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){0,2} ?[A-Z0-9]{0,3}$")
_IBAN_HEAD_TYPED = re.compile(r"(?<![a-z0-9])[a-z]{2}[0-9]{0,2}(?: ?[a-z0-9]{4}){0,2} ?[a-z0-9]{0,3}$")
_NUMERIC = frozenset({"phone", "card", "ssn", "iban", "ip"})
_SSN_IN = re.compile(r"(?<!\d)(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?!\d)")
_PHONE_SHAPE = re.compile(
    r"^(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}$|^\+\d{8,15}$"
)
# North American numbers, dotted too: (415) 555-0132, 415.555.0132, 1-415-555-0132.
_NANP = re.compile(r"^(?:1[ .-]?)?(?:\([2-9]\d{2}\)|[2-9]\d{2})[ .-]?[2-9]\d{2}[ .-]\d{4}$")
# National formats with a trunk 0: 030 12345678 (DE), 020 7946 0958 (UK), 01 23 45 67 89 (FR), 06-12345678.
_NATIONAL = re.compile(r"^(?:\(0[1-9]\d{0,3}\)|0[1-9]\d{0,3})(?:[ /-]\d{2,8}){1,4}$")
_IBAN = re.compile(r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?![A-Za-z0-9])")
_IPV4 = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
_HEX = frozenset("0123456789abcdefABCDEF")
_IPV6 = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")
# Secrets: each form starts with a literal, checked with `in` (C speed) before its regex runs.
_SECRET_FORMS: tuple[tuple[tuple[str, ...], re.Pattern[str]], ...] = (
    (("-----BEGIN",), re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    (("sk-",), re.compile(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}")),
    (("AKIA", "ASIA"), re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    (("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}")),
    (("xox",), re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}")),
    (("AIza",), re.compile(r"\bAIza[0-9A-Za-z_-]{35}")),
    (("glpat-",), re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}")),
    (("eyJ",), re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    # Credentials in a URL: postgres://user:pass@host, https://user:token@example.com/.
    (
        ("://",),
        re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]{1,20}://[^\s/:@]{1,64}:(?![*xX]+@)[^\s/@]{1,128}@[^\s/@]"),
    ),
    # A quoted password value, as in JSON or code: "password": "correcthorse", pwd = 'hunter22'.
    (
        ("password", "Password", "PASSWORD", "passwd", "pwd"),
        re.compile(
            r"(?i)\b(?:password|passwd|pwd)[\"']?[ \t]*[:=][ \t]*[\"'](?![*xX•]+[\"'])[^\"'\s]{6,128}[\"']"
        ),
    ),
)
# `.env` and shell lines: DB_PASSWORD=..., export GITHUB_TOKEN="..." (not ${VAR} or <placeholder>). The
# name is bounded and its keyword checked after the match: a keyword between two unbounded runs
# backtracked quadratically on a long line of capitals.
_ENV_WORDS = ("PASSWORD", "PASSWD", "SECRET", "TOKEN", "API_KEY", "APIKEY")
_ENV_LINE = re.compile(
    r"(?m)^[ \t]{0,16}(?:export[ \t]{1,8})?([A-Z][A-Z0-9_]{0,63})"
    r"[ \t]{0,8}=[ \t]{0,8}[\"']?(?![$<{*])[^\s\"'#]{6,}"
)
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
# The UK's National Insurance number (its social-security number): AB 12 34 56 C. Reported as `ssn`.
# No look-around in the pattern: it runs over the whole text, and a leading character class is the
# cheapest start (0.06 ms per 8,000 characters); the boundaries and excluded prefixes are checked after.
_NINO = re.compile(r"[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d\d ?\d\d ?\d\d ?[A-D]")
_NINO_NEVER = frozenset({"BG", "GB", "NK", "KN", "TN", "NT", "ZZ"})
_NOBODY = re.compile(r"127\.|0\.0\.0\.0$")  # loopback and "any": addresses of no one
# An IPv4-shaped run after one of these words is a version number: `version 1.2.3.4`, `v1.2.3.4`.
_VERSION_BEFORE = re.compile(r"(?i)(?:\bv|\bversion|\bver\.?|\brelease|\bbuild|\bfirmware|\bfw)[ \t:]*$")
# `password = ...`, `api_key: ...`: gated on the lowercased text containing one of these words.
_ASSIGN_WORDS = ("key", "secret", "token", "passw")
_ASSIGN = re.compile(
    r"(?i:(?<![A-Za-z0-9])(?:api[_-]?key|secret(?:[_-]?(?:access[_-]?)?key)?|access[_-]?(?:key|token)|auth[_-]?token|token|password|passwd)\b)"
    # The value must look like a credential (letters and digits, no call or attribute syntax), so
    # that `token = request.headers.get(...)` in code is not a secret but `password = hunter2x9z` is.
    r"[\"']?\s*[:=]\s*[\"']?(?=[A-Za-z_+/=-]{0,256}[0-9])(?=[0-9_+/=-]{0,256}[A-Za-z])[A-Za-z0-9_+/=-]{8,}(?![\w(]|\.[\w(])"
)
_NO_DIGITS = str.maketrans("", "", "0123456789")
_RUN_SEPARATORS = str.maketrans("", "", " .()/+-")
# Cards are written as one run of digits or in groups (4-4-4-4, Amex 4-6-5), with spaces or dashes.
_CARD_SHAPE = re.compile(r"\d{13,19}|\d{4}([ .-]?)\d{4}\1\d{4}\1\d{1,7}|\d{4}([ .-]?)\d{6}\2\d{5}")
# ... and one inside a longer run, set off by separators: `4111 1111 1111 1111 12/27` (its expiry date).
_CARD_IN = re.compile(r"(?<![0-9])(?:" + _CARD_SHAPE.pattern + r")(?![0-9])")
_IBAN_LENGTHS = {"DE": 22, "FR": 27, "GB": 22, "ES": 24, "IT": 27, "NL": 18, "BE": 16, "CH": 21,
                 "AT": 20, "PL": 28, "SE": 24, "NO": 15, "DK": 18, "FI": 18, "IE": 22, "PT": 25,
                 "LU": 20, "CZ": 24}  # fmt: skip


# Invisible characters someone (or a copy-paste) puts inside a value: `4111\u200b1111...`.
_INVISIBLE = frozenset("\u00ad\u180e\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff")
_INVISIBLE_RX = re.compile("[" + "".join(sorted(_INVISIBLE)) + "]")


def normalized(text: str) -> tuple[str, list[int] | None]:
    """`text` as a person reads it (NFKC, so full-width digits are digits, invisible characters
    dropped), with the index in `text` of each character of the result; None when nothing changed.
    ASCII text, nearly every prompt, costs one C-speed check."""
    if text.isascii() or (unicodedata.is_normalized("NFKC", text) and not _INVISIBLE_RX.search(text)):
        return text, None
    out: list[str] = []
    where: list[int] = []
    for i, ch in enumerate(text):
        if ch in _INVISIBLE:
            continue
        n = unicodedata.normalize("NFKC", ch) if not ch.isascii() else ch
        out.append(n)
        where += [i] * len(n)
    where.append(len(text))  # the end of the last character
    return "".join(out), where


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(raw: str) -> bool:
    s = raw.replace(" ", "")
    want = _IBAN_LENGTHS.get(s[:2])
    if not 15 <= len(s) <= 34 or (want is not None and len(s) != want):
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


class Detector:
    """Finds personal and secret data. `scan` is the whole cost of privacy on the hot path."""

    def __init__(self, kinds: Iterable[PIIKind], extra: Mapping[str, str] | None = None) -> None:
        self.kinds = frozenset(kinds)
        self.extra = tuple((name, re.compile(p)) for name, p in (extra or {}).items())

    def scan(self, text: str) -> list[Finding]:
        """Every finding in `text`, with offsets into `text`. The text is read normalised (NFKC, no
        invisible characters): a value written in full-width digits or split by a zero-width space
        is still found, and its span covers what was written."""
        norm, where = normalized(text)
        found = self._scan(norm)
        if where is None:
            return found
        # A finding's end is the position after its last character, in the original text. The raw
        # text is scanned too: dropping an invisible separator can join a value to the word before it
        # (`x\u200b4111...`), and NFKC can turn `²` into a digit that breaks a checksum.
        mapped = [Finding(f.kind, where[f.start], where[f.end - 1] + 1) for f in found if f.end > f.start]
        return _merged(mapped + self._scan(text))

    def _scan(self, text: str) -> list[Finding]:
        """Costs one regex pass over digit runs at most, plus local matches around literal hints
        (`@`, `sk-`, `password`, ...) found with `in` and `find`."""
        out: list[Finding] = []
        k = self.kinds
        if "email" in k and "@" in text:
            out += self._emails(text)
        # Every numeric kind needs at least 4 digits; most prose has fewer, and skips all of this.
        digits = len(text) - len(text.translate(_NO_DIGITS))
        if digits >= 4 and k & _NUMERIC:
            out += self._numbers(text)
        if "ssn" in k and digits >= 6:
            out += [Finding("ssn", m.start(), m.end()) for m in _NINO.finditer(text) if _nino_ok(text, m)]
        if "ip" in k and ":" in text:
            out += self._ipv6(text)
        if "secret" in k:
            secrets = self._secrets(text)
            if secrets and out:  # `pass@host` inside postgres://user:pass@host is the secret, not an address
                out = [
                    f for f in out if f.kind != "email" or not any(x.start < f.start < x.end for x in secrets)
                ]
            out += secrets
        for name, rx in self.extra:
            out += [Finding(name, m.start(), m.end()) for m in rx.finditer(text)]
        return out

    @staticmethod
    def _emails(text: str) -> list[Finding]:
        out, at, done = [], text.find("@"), 0
        while at >= 0:
            # From the end of the last address: searching from before it would find it again and
            # skip an address that follows within 64 characters.
            m = _EMAIL.search(text, max(done, at - 64), at + 256)
            if m is not None and m.start() <= at < m.end():
                out.append(Finding("email", m.start(), m.end()))
                done = m.end()
                at = text.find("@", m.end())
            else:
                at = text.find("@", at + 1)
        return out

    def _numbers(self, text: str) -> list[Finding]:
        out: list[Finding] = []
        pos = 0
        while (m := _RUNS.search(text, pos)) is not None:
            start, end = m.start(), m.end()
            pos = end
            if "iban" in self.kinds and start >= 2:
                iban = self._iban_at(text, start)
                if iban is not None:
                    out.append(iban)
                    pos = iban.end  # the run may go on past it (`DE89... 4111 ...`): look at the rest
                    continue
            if start and text[start - 1].isalnum():
                continue  # inside a word: abc123
            if start and text[start - 1] in "+(":
                start -= 1
            out += self._classify(text[start:end], start, text[max(0, start - 12) : start])
        return out

    @staticmethod
    def _iban_at(text: str, start: int) -> Finding | None:
        """An IBAN whose digits include the run at `start`, written in capitals (as banks print
        them) or in lower case (as people type them: `de89 3704 ...`)."""
        found = Detector._iban_upper(text, start)
        if found is not None or not (text[start - 1].islower() or text[start - 1] == " "):
            return found
        lo = max(0, start - 16)
        back = text[lo:start]
        if _IBAN_HEAD_TYPED.search(back):
            # ASCII only: "ß".upper() is "SS", which would shift every offset after it.
            f = Detector._iban_upper(text[lo : start + 42].translate(_ASCII_UPPER), start - lo)
            found = None if f is None else Finding("iban", lo + f.start, lo + f.end)
        return found

    @staticmethod
    def _iban_upper(text: str, start: int) -> Finding | None:
        """An IBAN whose digits include the run at `start`, if its head sits just before it."""
        cc = text[start - 2 : start]
        heads = [start - 2] if cc.isalpha() and cc.isupper() else []
        back = text[max(0, start - 16) : start]
        # GB82 WEST 1234 ..., NL91ABNA0417..., IT60X0542...: the country code is further back.
        if (heads or back[-1:] == " " or back[-1:].isupper()) and not back.islower():
            mb = _IBAN_HEAD.search(back)
            if mb is not None:
                heads.append(start - len(back) + mb.start())
        for h in heads:
            if h and text[h - 1].isalnum():
                continue
            mi = _IBAN.match(text, h)
            if mi is None:
                continue
            # A number written after it (`AT18 0000 ... 0000 2 times`) is matched too: cut at spaces.
            cand = mi.group()
            for cut in (len(cand), *(i for i in range(len(cand) - 1, 14, -1) if cand[i] == " ")):
                if iban_ok(cand[:cut]):
                    return Finding("iban", h, h + cut)
        return None

    def _classify(self, run: str, start: int, before: str = "") -> list[Finding]:
        k, out = self.kinds, list[Finding]()
        dots = run.count(".")
        if len(run.translate(_RUN_SEPARATORS)) < 7 and dots < 3:
            return out  # too few digits for any kind but an IPv4 address
        if "ip" in k and dots >= 3 and not _VERSION_BEFORE.search(before):
            pos = 0
            for tok in run.split(" "):
                # Loopback and 0.0.0.0 identify no one: `host = "127.0.0.1"` is configuration.
                if (
                    _IPV4.fullmatch(tok)
                    and all(int(p) <= 255 for p in tok.split("."))
                    and not _NOBODY.match(tok)
                ):
                    out.append(Finding("ip", start + pos, start + pos + len(tok)))
                pos += len(tok) + 1
            if out:
                return out
        if "ssn" in k and "-" in run:
            out += [Finding("ssn", start + m.start(), start + m.end()) for m in _SSN_IN.finditer(run)]
            if out:
                return out
        digits = run.translate(_RUN_SEPARATORS)
        if "card" in k and len(digits) >= 13 and not _CARD_SHAPE.fullmatch(run):
            for m in _CARD_IN.finditer(run):
                if luhn_ok(m.group().translate(_RUN_SEPARATORS)):
                    out.append(Finding("card", start + m.start(), start + m.end()))
            if out:
                return out
        if _DATE_LED.match(run):
            return out  # 2024-05-17, 17/05/2024 (and what follows them): not phones, not cards
        if "card" in k and 13 <= len(digits) <= 19 and _CARD_SHAPE.fullmatch(run) and luhn_ok(digits):
            out.append(Finding("card", start, start + len(run)))
        elif "phone" in k and 7 <= len(digits) <= 15 and _is_phone(run, digits):
            out.append(Finding("phone", start, start + len(run)))
        return out

    @staticmethod
    def _ipv6(text: str) -> list[Finding]:
        """Only around a colon between hex digits (`db8:85a3`, `db8::1`), never a full-text pass."""
        out: list[Finding] = []
        at, hexd, end = text.find(":"), _HEX, 0
        while at >= 0:
            after = text[at + 1 : at + 2]
            near = after == ":" or text.count(":", at, at + 30) >= 3  # `::`, or a full 8-group form
            if near and at >= end and text[at - 1 : at] in hexd and (after in hexd or after == ":"):
                m = _IPV6.search(text, max(0, at - 4), at + 40)
                if m is not None:
                    end = m.end()
                    try:
                        ipaddress.IPv6Address(m.group())
                        if _ipv6_shaped(m.group()):
                            out.append(Finding("ip", m.start(), m.end()))
                    except ValueError:
                        pass
            at = text.find(":", max(at + 1, end))
        return out

    @staticmethod
    def _secrets(text: str) -> list[Finding]:
        out = [
            Finding("secret", m.start(), m.end())
            for literals, rx in _SECRET_FORMS
            if any(lit in text for lit in literals)
            for m in rx.finditer(text)
        ]
        if "=" in text and any(w in text for w in _ENV_WORDS):
            out += [Finding("secret", m.start(), m.end()) for m in _ENV_LINE.finditer(text)
                    if any(w in m.group(1) for w in _ENV_WORDS)]  # fmt: skip
        low = text.lower()
        for word in _ASSIGN_WORDS:
            at = low.find(word)
            while at >= 0:
                tail = low[at : at + 24]
                if "=" not in tail and ":" not in tail:  # no assignment follows: not a credential
                    at = low.find(word, at + len(word))
                    continue
                begin = at  # back to the start of the identifier: api_key, access_token, ...
                while begin > 0 and at - begin < 12 and (low[begin - 1].isalpha() or low[begin - 1] in "_-"):
                    begin -= 1
                m = None
                for st in [begin, *(j + 1 for j in range(begin, at) if low[j] in "_-")]:
                    m = _ASSIGN.match(text, st)
                    if m is not None:
                        break
                if m is not None:
                    out.append(Finding("secret", m.start(), m.end()))
                    at = low.find(word, m.end())
                else:
                    at = low.find(word, at + 1)
        return out

    def kinds_in(self, texts: Iterable[str]) -> tuple[str, ...]:
        found = {f.kind for t in texts for f in self.scan(t)}
        return tuple(sorted(found))


def _ipv6_shaped(addr: str) -> bool:
    """`a[1::3]` (a slice) and `Db::Add` (C++) parse as IPv6 too; an address written by a person has
    three or more colons, or a four-digit group with a digit in it (`fe80::1`, `2001::1`)."""
    return addr.count(":") >= 3 or any(len(g) == 4 and not g.isalpha() for g in addr.split(":"))


def _merged(findings: list[Finding]) -> list[Finding]:
    """Overlapping findings as one span (the first one's kind), so redaction leaves no tail behind."""
    out: list[Finding] = []
    for f in sorted(findings, key=lambda f: (f.start, -f.end)):
        if out and f.start < out[-1].end:
            if f.end > out[-1].end:
                out[-1] = Finding(out[-1].kind, out[-1].start, f.end)
            continue
        out.append(f)
    return out


def _nino_ok(text: str, m: re.Match[str]) -> bool:
    a, b = m.start(), m.end()
    alone = (a == 0 or not text[a - 1].isalnum()) and (b == len(text) or not text[b].isalnum())
    return alone and text[a : a + 2] not in _NINO_NEVER


def _is_phone(s: str, digits: str) -> bool:
    if s.startswith("+"):
        return len(digits) >= 8
    if _NANP.match(s) or (9 <= len(digits) <= 12 and _NATIONAL.match(s)):
        return True
    # A bare run of digits is a number, not a phone; a phone is written with separators.
    return len(digits) >= 10 and bool(_PHONE_SHAPE.match(s)) and not s.replace(".", "").isdigit()
