"""`localroute init`: look at the box, propose a ladder from the catalogue, pull and measure each local
rung, and write a commented models.toml (docs/init.md).

An existing file is never changed without `--write`: init prints the unified diff of what it would
write. Progress goes to stderr (a bar per download batch and per measurement); each failure is one line
naming the model, and init goes on with the others.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from localroute.config.models import DEFAULT_MODELS_DIR, ConfidenceThreshold, LlamaCppModel, Measured
from localroute.config.schema import Config, load_config, parse_config
from localroute.errors import ConfigError
from localroute.host.catalogue import load_catalogue
from localroute.host.init_toml import Outcome, Threshold, render
from localroute.host.measure import MeasureError, Probe, measure, steps
from localroute.host.measure_embed import measure_embed
from localroute.host.plan import Box, Plan, inspect_box, plan_ladder
from localroute.host.probe_set import ProbeAnswer
from localroute.host.pull import ensure_model
from localroute.host.resources import MiB, parse_budget

DEFAULT_BUDGET = "70%"


@dataclass(frozen=True)
class Options:
    config: Path
    write: bool = False
    measure: bool = True
    budget: str = DEFAULT_BUDGET
    reps: int = 3
    max_tokens: int = 64  # decoded per measurement
    threads: int | None = None  # llama.cpp threads per chat rung; None: the box's (Box.threads)
    probe: int = 60  # probe questions per chat rung for its confidence threshold; 0: none
    probe_minutes: float = 5.0  # per rung
    # Fits a rung's threshold on its probe answers (rung, answers, tail fraction); routing/probe_fit.py,
    # given by the CLI (host sits below routing). None: no thresholds.
    fit: Callable[[str, Sequence[ProbeAnswer], float], Threshold] | None = None


PROBE_SEED = 0


def hub_status(timeout: float = 3.0) -> tuple[bool, str]:
    """Whether the Hugging Face hub answers, and one line saying so (and what follows from it)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        why = "HF_HUB_OFFLINE is set"
    else:
        import httpx

        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        try:
            httpx.head(endpoint + "/api/models", timeout=timeout)
            return True, f"Hugging Face hub: reachable at {endpoint}; hub models are candidates."
        except httpx.HTTPError as exc:
            why = f"{endpoint} did not answer ({exc.__class__.__name__})"
    return False, (
        f"Hugging Face hub: unreachable ({why}); this is the offline ladder, registry-carried models only."
    )


def _models_dir() -> Path:
    return Path(os.environ.get("LOCALROUTE_MODELS_DIR") or DEFAULT_MODELS_DIR).expanduser()


def _previous(path: Path) -> tuple[str | None, dict[str, Measured], dict[str, ConfidenceThreshold]]:
    """The existing file's text, the figures and thresholds it holds, by rung name (kept by
    `--no-measure`)."""
    if not path.is_file():
        return None, {}, {}
    text = path.read_text(encoding="utf-8")
    try:
        cfg = load_config(path)
    except ConfigError:
        return text, {}, {}
    local = [m for m in cfg.models if isinstance(m, LlamaCppModel)]
    figures = {m.name: m.measured for m in local if m.measured}
    return text, figures, {m.name: m.confidence for m in local if m.confidence}


def _bar(total: int, desc: str, err: TextIO, unit: str = "step"):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=err, leave=True, dynamic_ncols=True, unit=unit)


def _pull(cfg: Config, err: TextIO) -> dict[str, str]:
    """Ensure every llama.cpp rung's GGUF is here; {name: why} for those that could not be had."""
    local = [m for m in cfg.models if isinstance(m, LlamaCppModel)]
    failed: dict[str, str] = {}
    with _bar(len(local), "pull", err, "model") as bar:
        for m in local:
            bar.set_postfix_str(m.name)
            result = ensure_model(cfg, m, out=err)
            if not result.ok:
                failed[m.name] = result.detail
                bar.write(f"model {m.name}: pull failed: {result.detail}")
            bar.update(1)
    return failed


def _measure_all(
    cfg: Config, box: Box, opts: Options, failed: dict[str, str], err: TextIO
) -> tuple[dict[str, Outcome], dict[str, Threshold]]:
    outcomes: dict[str, Outcome] = {}
    thresholds: dict[str, Threshold] = {}
    n = opts.probe if opts.fit is not None else 0
    probe = Probe(n, PROBE_SEED, budget_s=60 * opts.probe_minutes)
    for m in cfg.ladder():
        if not isinstance(m, LlamaCppModel):
            continue
        if m.name in failed:
            outcomes[m.name] = thresholds[m.name] = "its GGUF could not be pulled"
            continue
        with _bar(steps(opts.reps, n), f"measure {m.name}", err) as bar:

            def tick(step: str, bar=bar) -> None:  # type: ignore[no-untyped-def]
                bar.set_postfix_str(step)
                bar.update(1)

            try:
                on = f"{box.cpu}, {m.threads} threads"
                got = measure(cfg.model_path(m), m, on=on, reps=opts.reps, max_tokens=opts.max_tokens,
                              probe=probe, progress=tick)  # fmt: skip
            except MeasureError as exc:
                outcomes[m.name] = thresholds[m.name] = f"the measurement failed ({exc.reason})"
                bar.write(f"model {m.name}: measurement failed: {exc.reason}")
                continue
        outcomes[m.name] = got.figures
        thresholds[m.name] = _threshold(m.name, got.answers, got.probe_note, cfg, opts)
        if isinstance(thresholds[m.name], str):
            print(f"init: {m.name}: confidence threshold not calibrated: {thresholds[m.name]}", file=err)
    return outcomes, thresholds


def _measure_embedder(cfg: Config, failed: dict[str, str], err: TextIO) -> str:
    m = next((m for m in cfg.models if isinstance(m, LlamaCppModel) and m.task == "embed"), None)
    if m is None or m.name in failed:
        return ""
    with _bar(1, f"measure {m.name}", err) as bar:
        note = measure_embed(cfg.model_path(m), m)
        bar.update(1)
    return note


def _threshold(name: str, answers: Sequence[ProbeAnswer], note: str, cfg: Config, opts: Options) -> Threshold:
    if opts.fit is None or not opts.probe:
        return "--probe-questions 0 was given"
    fitted = opts.fit(name, answers, cfg.routing.cascade.tail_fraction)
    return f"{note}; {fitted}" if note and isinstance(fitted, str) else fitted


def _report(plan: Plan, box: Box, budget: int, hub_line: str, out: TextIO) -> None:
    print(f"init: the box: {box.describe()}; {box.ram_available // MiB} MiB RAM available, "
          f"{box.disk_free // MiB} MiB disk free for models", file=out)  # fmt: skip
    print(f"init: {hub_line}", file=out)
    print(f"init: memory budget {budget // MiB} MiB", file=out)
    for r in plan.chat:
        e = r.entry
        print(f"init: rung {r.tier}: {e.name} ({e.engine}, {e.params}, ~{e.approx_memory_mib} MiB, "
              f"max_score {r.max_score})", file=out)  # fmt: skip
    if plan.embed is not None:
        print(f"init: embeddings: {plan.embed.name}", file=out)
    for name, why in plan.left_out:
        print(f"init: left out {name}: {why}", file=out)


def run(opts: Options, out: TextIO, err: TextIO) -> int:
    """Do the whole `localroute init`; returns an exit code."""
    cat = load_catalogue()
    box = inspect_box(_models_dir())
    try:
        budget = parse_budget(opts.budget, box.ram_total)
    except ValueError as exc:
        print(f"init: --budget: {exc}", file=err)
        return 2
    hub, hub_line = hub_status()
    plan = plan_ladder(cat, box, budget, hub)
    _report(plan, box, budget, hub_line, out)
    if not plan.chat:
        print("init: no chat model of the catalogue fits this box; nothing written", file=err)
        return 1
    old_text, old_figures, old_thresholds = _previous(opts.config)
    probe = f"{opts.probe} probe questions (host/probe_set.py, seed {PROBE_SEED})"

    def text_for(outcomes: dict[str, Outcome], thresholds: dict[str, Threshold], embed_note: str = "") -> str:
        return render(plan, box, catalogue_version=cat.version, budget=opts.budget, hub_line=hub_line,
                      outcomes=outcomes, threads=opts.threads or box.threads, thresholds=thresholds,
                      probe=probe, embed_note=embed_note)  # fmt: skip

    base = opts.config.resolve().parent
    cfg = parse_config(text_for({}, {}), source="the generated models.toml", base_dir=base)
    failed = _pull(cfg, err)
    embed_note = ""
    if opts.measure:
        outcomes, thresholds = _measure_all(cfg, box, opts, failed, err)
        embed_note = _measure_embedder(cfg, failed, err)
    else:
        names = [r.entry.name for r in plan.chat]
        outcomes = {n: old_figures.get(n, "--no-measure was given") for n in names}
        thresholds = {n: old_thresholds.get(n, "--no-measure was given") for n in names}
    text = text_for(outcomes, thresholds, embed_note)
    parse_config(text, source="the generated models.toml", base_dir=base)  # never write what cannot load
    return _apply(opts, old_text, text, out)


def _apply(opts: Options, old: str | None, new: str, out: TextIO) -> int:
    path = opts.config
    if old is None:
        _write(path, new)
        print(f"init: wrote {path}", file=out)
        return 0
    if old == new:
        print(f"init: {path} is up to date", file=out)
        return 0
    diff = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                fromfile=str(path), tofile=f"{path} (proposed)")  # fmt: skip
    out.writelines(diff)
    if opts.write:
        _write(path, new)
        print(f"init: wrote {path}", file=out)
    else:
        print(f"init: {path} left unchanged; re-run with --write to apply this diff", file=out)
    return 0


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".init-tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
