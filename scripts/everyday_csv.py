"""Write bench/data/everyday/<group>.csv from bench/data/everyday.txt (`group|E or H|prompt` lines).

Columns: prompt, weak (True for E: a small local model answers it well), strong (always True).
    python scripts/everyday_csv.py
"""

from __future__ import annotations

import csv
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "bench" / "data" / "everyday.txt"


def main() -> None:
    out = SRC.parent / "everyday"
    out.mkdir(exist_ok=True)
    groups: dict[str, list[tuple[str, bool]]] = {}
    for line in SRC.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        group, label, prompt = line.split("|", 2)
        groups.setdefault(group, []).append((prompt, label == "E"))
    for group, rows in groups.items():
        with (out / f"{group}.csv").open("w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["prompt", "weak", "strong"])
            w.writerows([p, str(easy), "True"] for p, easy in rows)


if __name__ == "__main__":
    main()
