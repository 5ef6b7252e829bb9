"""A labelled corpus for the PII detector, generated (seeded) so that nothing real is in it:

- `positives()`: (kind, value) in many written forms per kind — cards with Luhn-valid numbers in four
  groupings, IBANs of eight countries with correct check digits in print and typed forms, phones of
  five regions, addresses, SSNs and NINOs, IPv4/IPv6, and credentials in keys, assignments, URLs and
  `.env` lines — each set inside a sentence;
- `negatives()`: ordinary text that must stay public: prose with numbers, source code, logs, config
  files, version strings, dates, maths, identifiers and hashes.

`bench.pii_cost` reports recall per kind and the false-positive rate per negative family beside the
detector's cost. Made for localroute; drawn from no dataset.
"""

from __future__ import annotations

import random
import string

SENTENCES = (
    "Please update the record: {} thanks.",
    "My details are {} if you need them.",
    "{}",
    "Can you check why {} was rejected?",
    "Customer wrote (see ticket): {}.",
)


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body + "0")):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def _iban(country: str, bban: str) -> str:
    moved = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    return f"{country}{check:02d}{bban}"


_IBAN_SHAPES = {  # country: BBAN as (letters, digits) groups
    "DE": "n18", "GB": "a4n14", "FR": "n23", "ES": "n20",
    "IT": "a1n22", "NL": "a4n10", "BE": "n12", "CH": "n17",
}  # fmt: skip


def _bban(shape: str, rng: random.Random) -> str:
    out, i = [], 0
    while i < len(shape):
        kind, j = shape[i], i + 1
        while j < len(shape) and shape[j].isdigit():
            j += 1
        pool = string.ascii_uppercase if kind == "a" else string.digits
        out.append("".join(rng.choice(pool) for _ in range(int(shape[i + 1 : j]))))
        i = j
    return "".join(out)


def _groups(s: str, size: int = 4, sep: str = " ") -> str:
    return sep.join(s[i : i + size] for i in range(0, len(s), size))


def _fullwidth(s: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if c.isdigit() else c for c in s)


def positives(n: int = 12, seed: int = 15) -> list[tuple[str, str]]:
    """(kind, text) pairs; each text carries one value of `kind`."""
    rng = random.Random(seed)
    d = lambda k: "".join(rng.choice(string.digits) for _ in range(k))  # noqa: E731
    values: list[tuple[str, str]] = []
    for _ in range(n):
        card = _luhn_complete(rng.choice(["4", "51", "55", "37", "6011"]), 16, rng)
        values += [("card", card), ("card", _groups(card)), ("card", _groups(card, sep="-")),
                   ("card", _groups(card, sep=".")), ("card", _fullwidth(_groups(card)))]  # fmt: skip
        country = rng.choice(sorted(_IBAN_SHAPES))
        iban = _iban(country, _bban(_IBAN_SHAPES[country], rng))
        values += [("iban", iban), ("iban", _groups(iban)), ("iban", _groups(iban).lower())]
        area, ex, line = str(rng.randint(201, 989)), str(rng.randint(201, 989)), d(4)
        values += [
            ("phone", f"({area}) {ex}-{line}"), ("phone", f"{area}-{ex}-{line}"),
            ("phone", f"{area}.{ex}.{line}"), ("phone", f"+1 {area} {ex} {line}"),
            ("phone", f"+44 20 {d(4)} {d(4)}"), ("phone", f"020 {d(4)} {d(4)}"),
            ("phone", f"030 {d(8)}"), ("phone", f"+49 30 {d(8)}"),
            ("phone", f"0{rng.randint(1, 9)} {d(2)} {d(2)} {d(2)} {d(2)}"),
            ("phone", f"+33 6 {d(2)} {d(2)} {d(2)} {d(2)}"), ("phone", f"+91 {d(5)} {d(5)}"),
        ]  # fmt: skip
        user = rng.choice(["alice", "bob.smith", "j_doe", "c.martin+tax", "ops-team"])
        dom = rng.choice(["example.com", "mail.example.org", "corp.example.co.uk"])
        values += [("email", f"{user}@{dom}"), ("email", f"{user.upper()}@{dom}")]
        ssn = f"{rng.randint(1, 665):03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
        values += [("ssn", ssn), ("ssn", f"JK {d(2)} {d(2)} {d(2)} B"), ("ssn", f"AB{d(6)}C")]
        values += [
            ("ip", ".".join(str(rng.randint(1, 254)) for _ in range(4))),
            ("ip", f"2001:db8:{rng.randint(1, 0xFFFF):x}::{rng.randint(1, 0xFFFF):x}"),
        ]
        tok = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(32))
        values += [
            ("secret", f"sk-proj-{tok}"), ("secret", f"ghp_{tok}{tok[:4]}"),
            ("secret", f"AKIA{tok[:16].upper()}"),
            ("secret", f"password = {tok[:12]}"), ("secret", f'"password": "{tok[:10].lower()}"'),
            ("secret", f"postgres://app:{tok[:10]}@db.internal:5432/prod"),
            ("secret", f"DB_PASSWORD={tok[:14]}"), ("secret", f"export API_TOKEN='{tok[:20]}'"),
            ("secret", "-----BEGIN OPENSSH PRIVATE KEY-----"),
        ]  # fmt: skip
    return [(kind, rng.choice(SENTENCES).format(v)) for kind, v in values]


NEGATIVES: dict[str, list[str]] = {
    "prose": [
        "The committee met on Tuesday, 14 May 2024, and approved 3 of the 12 proposals.",
        "Revenue grew 12.5 percent to 1,234,567 dollars; costs fell by 250,000.",
        "Chapter 12 34 56 covers the password policy and the key rotation schedule.",
        "Call me after 10:30 or before 16:45; the meeting room is 2.14.",
        "The population was 1234567 in 2020 and about 1300000 in 2023.",
        "Keep the secret, change your password often, and never share a token.",
        "ISBN 978-3-16-148410-0 was printed in 1998; order 20240517 shipped.",
        "He ran 42.195 km in 3:05:12, a personal best by 1.5 minutes.",
        # number-shaped references that are not phones, cards or accounts (the hard cases)
        "Part no. 0421 5567 889 fits the 2019 model; tracking 1Z 999 AA1 0123 4567 84.",
        "Invoice 0123 456789 is due; batch 02-2024-118 passed QA.",
        "Table 3 lists 415 555 0132 samples across 12 sites.",
    ],
    "code": [
        "token = request.headers.get('x-token')\nif not token:\n    return 401",
        "def login(user, password):\n    return check(user, password=password)",
        "for i in range(1000000):\n    total += i * 3.14159\nprint(total)",
        "std::vector<int> v; Foo::Bar::baz(); a[1::3]",
        "const url = `https://api.example.com/v1/items/${id}?page=2`;",
        "SELECT id, amount FROM orders WHERE created > '2024-05-17' LIMIT 100;",
        "git clone https://github.com/org/repo.git && cd repo && make -j4",
        "sha = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'",
    ],
    "logs": [
        "2024-05-17 10:30:12 INFO worker 3 took 120 ms for job 48213 status=200 bytes=5120",
        "2024-05-17T10:30:12.123Z WARN retry 2/5 after 1500 ms (queue 17, p99 250.4 ms)",
        "[12345.678901] usb 1-1.2: new high-speed USB device number 4 using xhci_hcd",
        "GET /v1/models 200 0.8ms pid=48213 tid=48219 rss=1024MiB",
        "commit 3f9a2b1c0d4e5f67890abcdef1234567890abcd merged into main at 17:02",
    ],
    "config": [
        "DB_PASSWORD=${DB_PASSWORD}\nAPI_TOKEN=<your token here>\nPORT=8000\nWORKERS=4",
        '[server]\nhost = "127.0.0.1"\nport = 8000\ntimeout_s = 600\nmax_body_bytes = 4194304',
        "replicas: 3\nimage: registry.example.com/app:1.2.3\nmemory: 512Mi\ncpu: 250m",
        "password_min_length = 12\ntoken_ttl_s = 3600\nsecret_rotation_days = 90",
        'login(password="******")\nDB_URL=postgres://db.internal:5432/app',
    ],
    "versions": [
        "Upgrade from version 10.15.7 to 1.2.3 and then to version 1.2.3.4 today.",
        "Firmware v10.0.0.1 and build 2024.05.17.1 are in the release notes.",
        "numpy==1.26.4, torch 2.6.0, CUDA 12.4.1, driver 550.54.15",
        "The sequence 0.1 0.2 0.3 0.4 converges; pi is 3.14159265358979.",
        "Windows 10.0.19045.4291 and macOS 14.4.1 (23E224) were tested.",
    ],
}


def negatives() -> list[tuple[str, str]]:
    """(family, text) pairs of ordinary text with no personal data."""
    return [(family, t) for family, texts in NEGATIVES.items() for t in texts]
