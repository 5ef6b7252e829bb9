"""`localroute train`: fit a learned scorer on labelled prompts and report leave-groups-out APGR.

Data: CSV files or folders of them (the `../shared/eval` format: `prompt` and boolean columns; the group
is a `group` column if there is one, else the file's name), or JSONL of chat requests (`messages`)
with boolean labels under the `--weak`/`--strong` keys and an optional `group`. `--weak`/`--strong`
may list alternatives separated by commas: each file uses the first one it has.

The label is "the weak model was wrong" (1) — a difficulty, which is what a ranking router needs.
Cross-validation holds out whole groups (subjects, domains), so each group's figure comes from a
model that never saw that group: what a scorer does on traffic unlike its training data. Pooled
figures are given twice: within each fold (one model ranks several unseen groups together) and across
folds (out-of-fold scores of different models mixed, which also tests their calibration).
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from localroute.routing.evaluate import (
    EvalError,
    apgr,
    length_scores,
    oracle_scores,
    pgr_curve,
    quality_curve,
)
from localroute.routing.features import Featuriser, Turn
from localroute.routing.fit import Linear, fit

_BOOL = {"true": True, "false": False, "1": True, "0": False}


@dataclass(frozen=True)
class Labelled:
    """Conversations with the weak and strong model's correctness and a group name each."""

    convs: tuple[tuple[Turn, ...], ...]
    weak: tuple[bool, ...]
    strong: tuple[bool, ...]
    groups: tuple[str, ...]
    sources: tuple[int, ...] = ()  # which --data path each prompt came from

    def weights(self) -> list[float]:
        """Each --data path weighs the same in the fit, however many prompts it holds: a small
        everyday set must not drown under ten thousand exam questions."""
        if not self.sources:
            return [1.0] * len(self.convs)
        counts: dict[int, int] = {}
        for x in self.sources:
            counts[x] = counts.get(x, 0) + 1
        return [len(self.convs) / (len(counts) * counts[x]) for x in self.sources]

    def text(self, i: int) -> str:
        return "\n".join(t.text for t in self.convs[i])


def _bool(v: object, where: str, col: str) -> bool:
    if isinstance(v, bool):
        return v
    b = _BOOL.get(str(v).strip().lower())
    if b is None:
        raise EvalError(f"{where}: {col!r} holds {str(v)[:20]!r}, expected true or false")
    return b


def _pick(cols: Sequence[str], wanted: str, where: str) -> str:
    for c in wanted.split(","):
        if c in cols:
            return c
    raise EvalError(f"{where}: no column {wanted!r} (columns: {', '.join(cols) or 'none'})")


def _content(c: object) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        return "\n".join(str(p.get("text", "")) for p in c if isinstance(p, dict))
    return ""


def load_labelled(paths: Sequence[str | Path], weak: str, strong: str) -> Labelled:
    """Read CSV (files or folders) and JSONL files; every failure is a one-line EvalError."""
    convs: list[tuple[Turn, ...]] = []
    w: list[bool] = []
    s: list[bool] = []
    g: list[str] = []
    src: list[int] = []
    files: list[tuple[int, Path]] = []
    for k, p in enumerate(map(Path, paths)):
        if not p.exists():
            raise EvalError(f"{p}: no such file or folder")
        found = sorted([*p.glob("*.csv"), *p.glob("*.jsonl")]) if p.is_dir() else [p]
        if not found:
            raise EvalError(f"{p}: folder holds no .csv or .jsonl files")
        files.extend((k, f) for f in found)
    for k, f in files:
        try:
            if f.suffix == ".jsonl":
                for n, line in enumerate(f.open(encoding="utf-8"), 1):
                    if not line.strip():
                        continue
                    where = f"{f}:{n}"
                    try:
                        doc = json.loads(line)
                    except ValueError:
                        raise EvalError(f"{where}: not a JSON object") from None
                    if not isinstance(doc, dict) or not isinstance(doc.get("messages"), list):
                        raise EvalError(f"{where}: expected an object with `messages`")
                    keys = list(doc)
                    turns = tuple(Turn(str(m.get("role", "")), _content(m.get("content")))
                                  for m in doc["messages"] if isinstance(m, dict))  # fmt: skip
                    convs.append(turns)
                    w.append(_bool(doc[_pick(keys, weak, where)], where, weak))
                    s.append(_bool(doc[_pick(keys, strong, where)], where, strong))
                    g.append(str(doc.get("group") or f.stem))
                    src.append(k)
                continue
            with f.open(encoding="utf-8", newline="") as fh:
                reader = csv.DictReader(fh)
                cols = list(reader.fieldnames or [])
                if "prompt" not in cols:
                    raise EvalError(f"{f}: no column 'prompt'")
                wc, sc = _pick(cols, weak, str(f)), _pick(cols, strong, str(f))
                for row in reader:
                    where = f"{f}:{reader.line_num}"
                    convs.append((Turn("user", row["prompt"] or ""),))
                    w.append(_bool(row[wc], where, wc))
                    s.append(_bool(row[sc], where, sc))
                    g.append(row.get("group") or f.stem)
                    src.append(k)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise EvalError(f"{f}: not readable ({exc.__class__.__name__})") from None
    if not convs:
        raise EvalError("no labelled prompts found in the data")
    return Labelled(tuple(convs), tuple(w), tuple(s), tuple(g), tuple(src))


def labels(data: Labelled) -> list[int]:
    """1 where the weak model was wrong: the difficulty the scorer learns to rank."""
    return [int(not x) for x in data.weak]


def group_apgr(scores: Sequence[float], data: Labelled, idx: Sequence[int]) -> float | None:
    """APGR of `scores` on the prompts `idx`; None where the two models tie there."""
    ww, ss = [data.weak[i] for i in idx], [data.strong[i] for i in idx]
    qw, qs = sum(ww) / len(idx), sum(ss) / len(idx)
    if qw == qs:
        return None
    return apgr(pgr_curve(quality_curve([scores[i] for i in idx], ww, ss), qw, qs))


@dataclass(frozen=True)
class CVReport:
    """Out-of-fold APGR per held-out group and pooled, for each router."""

    routers: tuple[str, ...]
    rows: tuple[tuple[str, int, tuple[float | None, ...]], ...]  # (group, n, apgr per router)
    pooled: tuple[float | None, ...]
    folds: int
    by_fold: tuple[float | None, ...] = ()  # mean over folds of the APGR pooled within each fold

    def table(self) -> str:
        head = f"{'held-out group':<40} {'n':>5} " + " ".join(f"{r:>9}" for r in self.routers)
        lines = [head]
        lines += [f"{g[:40]:<40} {n:>5} " + " ".join(fmt(v) for v in vals) for g, n, vals in self.rows]
        valid = [vals for _, _, vals in self.rows if all(v is not None for v in vals)]
        means = tuple(sum(v[i] or 0.0 for v in valid) / len(valid) if valid else None
                      for i in range(len(self.routers)))  # fmt: skip
        lines.append(f"{'mean over groups':<40} {len(valid):>5} " + " ".join(fmt(v) for v in means))
        medians = tuple(_median([v[i] for v in valid]) for i in range(len(self.routers)))
        lines.append(f"{'median over groups':<40} {len(valid):>5} " + " ".join(fmt(v) for v in medians))
        lines.append(f"{'pooled within each fold, mean':<40} {self.folds:>5} "
                     + " ".join(fmt(v) for v in self.by_fold))  # fmt: skip
        lines.append(f"{'pooled across folds':<40} {sum(n for _, n, _ in self.rows):>5} "
                     + " ".join(fmt(v) for v in self.pooled))  # fmt: skip
        li, le = self.routers.index("learned"), self.routers.index("length")
        wins = sum(1 for v in valid if (v[li] or 0) > (v[le] or 0))
        lines.append(f"learned > length on {wins} of {len(valid)} held-out groups; "
                     f"{self.folds}-fold leave-groups-out; random's expected APGR is 0.5")  # fmt: skip
        return "\n".join(lines)

    def as_json(self) -> dict[str, object]:
        groups = {g: {"n": n, **dict(zip(self.routers, v, strict=True))} for g, n, v in self.rows}
        pooled = dict(zip(self.routers, self.pooled, strict=True))
        by_fold = dict(zip(self.routers, self.by_fold, strict=True))
        return {"folds": self.folds, "routers": list(self.routers), "pooled": pooled, "by_fold": by_fold,
                "groups": groups}  # fmt: skip


def cross_validate(
    data: Labelled,
    rows: Sequence[dict[str, float]],
    heuristic: Sequence[float],
    folds: int = 8,
    seed: int = 0,
    steps: int | None = None,
) -> tuple[CVReport, list[float]]:
    """Leave-groups-out: groups are dealt into `folds` folds; each fold is scored by a model fitted on
    the others. Returns the report and the out-of-fold learned scores."""
    groups = sorted(set(data.groups))
    if len(groups) < 2:
        raise EvalError("cross-validation needs at least two groups (files or a `group` column)")
    folds = min(folds, len(groups))
    order = groups[:]
    random.Random(seed).shuffle(order)
    y = labels(data)
    sw = data.weights()
    oof = [0.0] * len(rows)
    fold_sets: list[list[int]] = []
    for k in range(folds):
        held = set(order[k::folds])
        fold_sets.append([i for i, gr in enumerate(data.groups) if gr in held])
        train = [i for i, gr in enumerate(data.groups) if gr not in held]
        model = _fit([rows[i] for i in train], [y[i] for i in train], [sw[i] for i in train], steps)
        for i, gr in enumerate(data.groups):
            if gr in held:
                oof[i] = model.logit(rows[i])
    texts = [data.text(i) for i in range(len(rows))]
    scores = {"learned": oof, "heuristic": list(heuristic), "length": length_scores(texts),
              "oracle": oracle_scores(data.weak, data.strong)}  # fmt: skip
    names = tuple(scores)
    out = []
    for gr in groups:
        idx = [i for i, x in enumerate(data.groups) if x == gr]
        out.append((gr, len(idx), tuple(group_apgr(scores[r], data, idx) for r in names)))
    every = list(range(len(rows)))
    pooled = tuple(group_apgr(scores[r], data, every) for r in names)
    by_fold = tuple(_mean([group_apgr(scores[r], data, f) for f in fold_sets]) for r in names)
    return CVReport(names, tuple(out), pooled, folds, by_fold), oof


def _median(xs: Sequence[float | None]) -> float | None:
    v = sorted(x for x in xs if x is not None)
    return (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2 if v else None


def _mean(xs: Sequence[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return sum(v) / len(v) if v else None


def fmt(v: float | None) -> str:
    return f"{v:>9.3f}" if v is not None else f"{'n/a':>9}"


def _fit(
    rows: Sequence[dict[str, float]], y: Sequence[int], sw: Sequence[float], steps: int | None
) -> Linear:
    return fit(rows, y, sw) if steps is None else fit(rows, y, sw, steps=steps)


def featurise_all(data: Labelled, featuriser: Featuriser) -> list[dict[str, float]]:
    return [featuriser.featurise(c) for c in data.convs]
