"""`localroute eval`: hand-computed metrics, tie handling, baselines, costs, and the CLI end to end."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from localroute import cli
from localroute.config.models import Price
from localroute.config.schema import Config, parse_config
from localroute.routing.evaluate import (
    DEFAULT_STRONG_PRICE,
    METRICS,
    Dataset,
    EvalError,
    apgr,
    cost_model,
    evaluate,
    first_share,
    load_dataset,
    oracle_scores,
    pgr_curve,
    quality_curve,
    request_cost,
    routed_sums,
    router_result,
)
from localroute.routing.policy import Policy

ROOT = Path(__file__).resolve().parents[1]
WEAK_RUNG = """
[[models]]
name = "small"
engine = "llama_cpp"
source = { kind = "path", path = "small.gguf" }
price = { per_hour = 0.02 }
"""
STRONG_RUNG = """
[[models]]
name = "big"
engine = "remote"
tier = 10
base_url = "https://api.example.com/v1"
model = "big-1"
price = { input_per_mtok = 3.0, output_per_mtok = 15.0 }
"""
W = "org/weak-model"
S = "strong-model"

# Four prompts: gains (strong - weak) are 0, +1, +1, -1; q_weak = 0.5, q_strong = 0.75.
WEAK4 = [True, False, False, True]
STRONG4 = [True, True, True, False]


def one_rung() -> Config:
    return parse_config(WEAK_RUNG)


def pgr_of(scores: list[float], weak: list[bool], strong: list[bool]) -> list[float]:
    n = len(weak)
    return pgr_curve(quality_curve(scores, weak, strong), sum(weak) / n, sum(strong) / n)


# -- metrics by hand -------------------------------------------------------------------------------


def test_oracle_order_on_four_prompts() -> None:
    # Order: the two +1 prompts, the 0, the -1. Cumulative gains 0,1,2,2,1 -> PGR 0,1,2,2,1.
    pgr = pgr_of(oracle_scores(WEAK4, STRONG4), WEAK4, STRONG4)
    assert pgr == pytest.approx([0, 1, 2, 2, 1])
    assert apgr(pgr) == pytest.approx((0 / 2 + 1 + 2 + 2 + 1 / 2) / 4)  # 1.375
    assert first_share(pgr, 0.5) == 0.25
    assert first_share(pgr, 0.8) == 0.25


def test_reversed_router_on_four_prompts() -> None:
    # Order: the -1, the 0, then the two +1. Cumulative gains 0,-1,-1,0,1.
    reversed_scores = [-x for x in oracle_scores(WEAK4, STRONG4)]
    pgr = pgr_of(reversed_scores, WEAK4, STRONG4)
    assert pgr == pytest.approx([0, -1, -1, 0, 1])
    assert apgr(pgr) == pytest.approx(-0.375)
    assert first_share(pgr, 0.5) == 1.0
    # A ranking and its reverse always sum to 1.
    assert apgr(pgr) + apgr(pgr_of(oracle_scores(WEAK4, STRONG4), WEAK4, STRONG4)) == pytest.approx(1.0)


def test_ties_are_routed_fractionally() -> None:
    assert routed_sums([1.0, 0.5, 0.5, 0.0], [1.0, 1.0, 0.0, 5.0]) == pytest.approx([0, 1, 1.5, 2, 7])
    # The input is in oracle order: breaking ties by input order would score 1.375. Averaging gives
    # the random line exactly.
    ordered_weak, ordered_strong = [False, False, True, True], [True, True, True, False]
    pgr = pgr_of([0.3] * 4, ordered_weak, ordered_strong)
    assert pgr == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    assert apgr(pgr) == pytest.approx(0.5)
    assert first_share(pgr, 0.5) == 0.5
    assert first_share(pgr, 0.8) == 1.0


def test_pgr_needs_a_gap() -> None:
    with pytest.raises(ValueError, match="equal accuracy"):
        pgr_curve([0.5, 0.5], 0.5, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        routed_sums([float("nan")], [1.0])


def test_share_and_savings_at_95_percent() -> None:
    r = router_result("x", [0.5, 0.75, 1.0, 1.0, 0.75], [1, 2, 3, 4, 10], q_weak=0.5, q_strong=0.75)
    assert r.strong_share_at_95 == 0.25  # first q >= 0.7125
    assert r.savings_at_95 == pytest.approx(0.8)
    assert r.apgr == pytest.approx(1.375)


def test_request_cost() -> None:
    tokens_only = request_cost(Price(input_per_mtok=2.5, output_per_mtok=10.0), 400, 256)
    assert tokens_only == pytest.approx((100 * 2.5 + 256 * 10.0) / 1e6)
    compute_only = request_cost(Price(per_hour=3.6), 400, 256)  # 100/250 + 256/50 = 5.52 s
    assert compute_only == pytest.approx(3.6 * 5.52 / 3600)


def test_cost_model_uses_the_ladder_or_a_documented_default() -> None:
    single = cost_model(one_rung(), 256)
    assert single.strong == DEFAULT_STRONG_PRICE
    assert "default" in single.strong_label
    two = cost_model(parse_config(STRONG_RUNG + WEAK_RUNG), 128)
    assert (two.weak_label, two.strong_label) == ("small", "big")
    assert two.strong.output_per_mtok == 15.0


# -- baselines on a synthetic set ------------------------------------------------------------------


def synthetic(n: int, seed: int) -> Dataset:
    rng = random.Random(seed)
    prompts = tuple(f"Question {i}: " + "why would this be so? " * rng.randint(1, 30) for i in range(n))
    strong = tuple(rng.random() < 0.8 for _ in range(n))
    weak = tuple((s and rng.random() < 0.8) or (not s and rng.random() < 0.3) for s in strong)
    return Dataset(prompts, weak, strong, ("synthetic.csv",))


def test_random_is_one_half_and_oracle_beats_everything() -> None:
    cfg = one_rung()
    rep = evaluate(synthetic(3000, seed=7), Policy(cfg), W, S, cost_model(cfg, 256), seed=3)
    by = {r.name: r for r in rep.routers}
    assert list(by) == ["policy", "length", "random", "oracle"]
    assert by["random"].apgr == pytest.approx(0.5, abs=0.02)
    assert by["random"].cpt50 == pytest.approx(0.5, abs=0.05)
    for name in ("policy", "length", "random"):
        assert by["oracle"].apgr >= by[name].apgr
        assert by["oracle"].strong_share_at_95 <= by[name].strong_share_at_95
        assert by["oracle"].cpt80 is not None and by["oracle"].cpt80 <= (by[name].cpt80 or 1.0)
    assert all(0.0 <= r.savings_at_95 <= 1.0 for r in rep.routers)
    # The same seed gives the same random baseline.
    again = evaluate(synthetic(3000, seed=7), Policy(cfg), W, S, cost_model(cfg, 256), seed=3)
    assert again.routers[2].quality == by["random"].quality


# -- data loading and the CLI ----------------------------------------------------------------------


def write_csv(
    path: Path, rows: list[tuple[str, str, str]], header: tuple[str, ...] = ("prompt", W, S)
) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def small_csv(folder: Path) -> Path:
    rng = random.Random(1)
    rows = []
    for i in range(40):
        prompt = f"Q{i}. Prove that the integral of x^{i} converges?\nA. yes\nB. no\nAnswer:" * (1 + i % 3)
        strong = rng.random() < 0.85
        weak = strong and rng.random() < 0.6
        rows.append((prompt, str(weak), str(strong)))
    return write_csv(folder / "small.csv", rows)


def run_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    cfg = cwd / "models.toml"
    if not cfg.exists():
        cfg.write_text(WEAK_RUNG, encoding="utf-8")
    cmd = [sys.executable, "-m", "localroute", "eval", "--weak", W, "--strong", S, "--config", str(cfg)]
    return subprocess.run([*cmd, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_load_dataset_reads_folders_and_checks_values(tmp_path: Path) -> None:
    write_csv(tmp_path / "a.csv", [("p1", "True", "False"), ("p2", "false", "TRUE")])
    write_csv(tmp_path / "b.csv", [("p3", "1", "0")])
    data = load_dataset([tmp_path], W, S)
    assert data.prompts == ("p1", "p2", "p3")
    assert (data.weak, data.strong) == ((True, False, True), (False, True, False))
    write_csv(tmp_path / "c.csv", [("p4", "True", "maybe")])
    with pytest.raises(EvalError, match=r"c\.csv:2: column 'strong-model' holds 'maybe'"):
        load_dataset([tmp_path], W, S)


def test_cli_table(tmp_path: Path) -> None:
    data = small_csv(tmp_path)
    out = run_cli("--data", data, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("N = 40 prompts from 1 file(s)")
    assert any(line.startswith("q_weak") for line in lines)
    header = next(line for line in lines if line.startswith("router"))
    for col in ("APGR", "CPT(50%)", "CPT(80%)", "strong@95%", "saved@95%"):
        assert col in header
    for name in ("policy", "length", "random", "oracle"):
        assert any(line.startswith(name + " ") for line in lines), name
    assert "default frontier price" in out.stdout
    assert "RouteLLM on MMLU" in out.stdout


def test_cli_json_and_folder(tmp_path: Path) -> None:
    small_csv(tmp_path)
    out = run_cli("--data", tmp_path, "--json", "--seed", "5", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["n"] == 40
    assert set(doc["weak"]) == {"column", "accuracy"}
    assert set(doc["routers"]) == {"policy", "length", "random", "oracle"}
    for row in doc["routers"].values():
        assert set(row) == set(METRICS)
    assert doc["routers"]["oracle"]["apgr"] >= doc["routers"]["policy"]["apgr"]


def test_cli_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "curve.png"
    out = run_cli("--data", small_csv(tmp_path), "--plot", png, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("rows", "header", "expected"),
    [
        ([("p", "True", "True")], ("prompt", W, "other"), "no column 'strong-model'"),
        ([("p", "True", "yes")], ("prompt", W, S), "holds 'yes', expected True or False"),
        ([("p", "True", "True")], ("prompt", W, S), "equal accuracy"),
    ],
)
def test_cli_bad_data_is_one_line(
    tmp_path: Path, rows: list[tuple[str, str, str]], header: tuple[str, ...], expected: str
) -> None:
    out = run_cli("--data", write_csv(tmp_path / "bad.csv", rows, header), cwd=tmp_path)
    assert out.returncode == 2
    assert expected in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr


def test_cli_missing_file_is_one_line(tmp_path: Path) -> None:
    out = run_cli("--data", tmp_path / "nope.csv", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == f"localroute: {tmp_path / 'nope.csv'}: no such file or folder"


def test_plot_without_matplotlib_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    cfg = tmp_path / "models.toml"
    cfg.write_text(WEAK_RUNG, encoding="utf-8")
    argv = ["eval", "--data", str(small_csv(tmp_path)), "--weak", W, "--strong", S, "--config", str(cfg)]
    assert cli.main([*argv, "--plot", str(tmp_path / "x.png")]) == 1
    assert "pip install matplotlib" in capsys.readouterr().err
    assert cli.main(argv) == 0  # without --plot, matplotlib is not needed
