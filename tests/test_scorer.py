"""The learned scorer: featurisation, the fitted model, the artifact's verification, `localroute train`,
`eval --scorer`, `explain --scorer`, and a real gateway routing with it."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from localroute.config.schema import load_config, parse_config
from localroute.errors import ConfigError
from localroute.routing.features import Featuriser, Turn, prompt_turns
from localroute.routing.fit import fit
from localroute.routing.policy import Policy
from localroute.routing.scorer import DEFAULT_ARTIFACT, Artifact, digest, load_scorer
from localroute.routing.train import cross_validate, featurise_all, labels, load_labelled
from tests.conftest import ROOT, answering, start_gateway

# Hard prompts ask for multi-step work; easy ones for a small transformation. Words differ per group, so
# a model must generalise across groups to rank the held-out one.
HARD = ["Prove that {x} holds for every n and derive the bound step by step.",
        "Work out the total cost of {x} over 7 years with compound interest, showing each step.",
        "Analyse why {x} fails under load and design a fix with trade-offs."]  # fmt: skip
# Easy prompts are as long as hard ones or longer, so that length alone cannot rank them.
EASY = [
    "Please translate this sentence into French for me: '{x} is near the old market square.'",
    "Please fix the spelling in this short note for me: 'we visted {x} on tusday, lovley'",
    "Please say hello to {x} for me in a friendly way, and wish everyone a nice weekend.",
]
TOPICS = {
    "alpha": ["the tree", "the garden", "a rose"],
    "beta": ["the server", "a queue", "the cache"],
    "gamma": ["a loan", "the budget", "a mortgage"],
    "delta": ["the bridge", "a tunnel", "the road"],
}


def write_groups(folder: Path, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for group, topics in TOPICS.items():
        with (folder / f"{group}.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["prompt", "weak", "strong"])
            for i in range(24):
                hard = i % 2 == 0
                prompt = rng.choice(HARD if hard else EASY).format(x=rng.choice(topics))
                # mostly right labels, a few flipped: a ranking problem, not a lookup
                weak_ok = (not hard) if rng.random() > 0.1 else hard
                w.writerow([prompt, str(weak_ok), "True"])
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("scorer")
    data = write_groups(tmp / "data")
    out = tmp / "scorer.json"
    r = run_cli("train", "--config", str(ROOT / "models.toml"), "--data", str(data), "--weak", "weak",
                "--strong", "strong", "--out", str(out), "--folds", "4")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "held-out group" in r.stdout and "learned" in r.stdout and "length" in r.stdout
    return data, out


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "localroute", *args], input=stdin, capture_output=True,
                          text=True, timeout=600, cwd=ROOT, env=env)  # fmt: skip


def test_featurise_is_a_flat_dict_with_the_recipe_parts() -> None:
    f = Featuriser().featurise([Turn("system", "be brief"), Turn("user", "hi"), Turn("assistant", "hello"),
                                Turn("user", "Prove the theorem step by step, please.")])  # fmt: skip
    assert f["depth"] == 1.0 and f["len"] > 0
    assert any(k.startswith("e") for k in f) and any(k.startswith("h") for k in f)
    assert not any(k.startswith("s:") for k in f)  # recipe 2: no keyword scan, the words carry them
    assert all(isinstance(v, float) for v in f.values())


def test_fast_score_equals_the_model_on_the_features(trained: tuple[Path, Path]) -> None:
    """The folded per-word path gives the logit the trainer's model gives on featurise()'s dict."""
    _, path = trained
    scorer = load_scorer(path)
    art = scorer.artifact
    fz = scorer.featuriser
    for text in ["Prove that the bridge holds and derive the bound.", "Say hello to the garden.",
                 "zzqx unknownword " * 50, ""]:  # fmt: skip
        turns = prompt_turns(text)
        row = fz.featurise(turns)
        z = art.bias + sum(art.weights.get(k, 0.0) * v for k, v in row.items())
        for _ in range(2):  # new words (folded and cached), then the cached one-pass path
            assert scorer.score(turns).probability == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-9)


def test_artifact_roundtrip_keeps_weights_and_digest(tmp_path: Path) -> None:
    fz = Featuriser()
    rows = [fz.featurise(prompt_turns(t)) for t in ["prove it step by step", "hello there", "translate cat"]]
    model = fit(rows, [1, 0, 0], steps=20)
    sha = Artifact(model.bias, model.weights, fz.recipe, {"n": 3}).save(tmp_path / "a.json")
    again = load_scorer(tmp_path / "a.json")
    assert again.sha256 == sha and again.artifact.meta == {"n": 3}
    assert again.artifact.bias == pytest.approx(model.bias, abs=1e-6)


def _edit(src: Path, dst: Path, change: object, reseal: bool) -> Path:
    doc = json.loads(src.read_text())
    assert callable(change)
    change(doc)
    doc.pop("sha256")
    doc["sha256"] = digest(doc) if reseal else json.loads(src.read_text())["sha256"]
    dst.write_text(json.dumps(doc))
    return dst


def test_tampered_mismatched_and_unpinned_artifacts_are_refused(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    _, good = trained
    tampered = _edit(good, tmp_path / "t.json", lambda d: d.update(bias=d["bias"] + 1), reseal=False)
    with pytest.raises(ConfigError, match="does not match its sha256"):
        load_scorer(tampered)
    other = _edit(good, tmp_path / "r.json", lambda d: d["recipe"].update(version=0), reseal=True)
    with pytest.raises(ConfigError, match=r"another feature recipe .*version"):
        load_scorer(other)
    vectors = _edit(
        good, tmp_path / "v.json", lambda d: d["recipe"].update(vectors_sha256="0" * 64), reseal=True
    )
    with pytest.raises(ConfigError, match="vectors_sha256"):
        load_scorer(vectors)
    with pytest.raises(ConfigError, match="pinned"):
        load_scorer(good, pin="f" * 64)
    (tmp_path / "junk.json").write_text("not json")
    with pytest.raises(ConfigError, match="not a JSON scorer"):
        load_scorer(tmp_path / "junk.json")


def test_a_bad_artifact_in_the_config_stops_startup_with_one_line(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    _, good = trained
    bad = _edit(good, tmp_path / "bad.json", lambda d: d["weights"].update(len=9.0), reseal=False)
    text = (ROOT / "models.toml").read_text().replace("[routing]\n", f'[routing]\nscorer = "{bad}"\n', 1)
    (tmp_path / "models.toml").write_text(text)
    with pytest.raises(ConfigError):
        Policy(load_config(tmp_path / "models.toml"))
    r = run_cli("serve", "--config", str(tmp_path / "models.toml"))
    assert r.returncode == 2
    assert "does not match its sha256" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cross_validation_holds_out_whole_groups(trained: tuple[Path, Path]) -> None:
    data_dir, _ = trained
    data = load_labelled([data_dir], "weak", "strong")
    rows = featurise_all(data, Featuriser())
    report, oof = cross_validate(data, rows, [0.5] * len(rows), folds=4, steps=100)
    assert [g for g, _, _ in report.rows] == sorted(TOPICS)
    learned, length = report.routers.index("learned"), report.routers.index("length")
    # the signal is in the words, not the length: the learned ranking must beat length on held-out groups
    for _, _, vals in report.rows:
        assert (vals[learned] or 0) > (vals[length] or 0)
    assert len(oof) == len(labels(data))


def test_eval_and_explain_with_a_scorer(trained: tuple[Path, Path]) -> None:
    data, path = trained
    r = run_cli("eval", "--config", str(ROOT / "models.toml"), "--scorer", str(path), "--data", str(data),
                "--weak", "weak", "--strong", "strong", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    routers = json.loads(r.stdout)["routers"]
    assert {"learned", "heuristic", "length", "random", "oracle"} <= set(routers)
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": "Prove that the road holds, step by step."}],
    }
    r = run_cli(
        "explain", "--config", str(ROOT / "models.toml"), "--scorer", str(path), stdin=json.dumps(body)
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    sha = json.loads(path.read_text())["sha256"]
    assert out["reasons"][0].startswith(f"learned scorer {sha[:12]}")
    assert "words" in out["reasons"][1] and "length" in out["reasons"][1]


def test_train_refuses_bad_input_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("prompt,weak\nhi,True\n")
    r = run_cli("train", "--config", str(ROOT / "models.toml"), "--data", str(tmp_path / "x.csv"), "--weak",
                "weak", "--strong", "strong", "--out", str(tmp_path / "o.json"))  # fmt: skip
    assert r.returncode == 2 and "no column 'strong'" in r.stderr and "Traceback" not in r.stderr


def test_train_reads_chat_jsonl(tmp_path: Path) -> None:
    lines = []
    for i in range(40):
        hard = i % 2 == 0
        text = "Derive and prove the bound step by step" if hard else "Translate hello"
        msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": f"{text} #{i}"}]  # fmt: skip
        lines.append(
            json.dumps({"messages": msgs, "ok_small": not hard, "ok_big": True, "group": f"g{i % 4}"})
        )
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    data = load_labelled([tmp_path / "d.jsonl"], "ok_small", "ok_big")
    assert len(data.convs) == 40 and data.convs[0][-1].role == "user" and len(set(data.groups)) == 4


def test_the_packaged_scorer_loads_and_is_named_learned() -> None:
    if not DEFAULT_ARTIFACT.is_file():
        pytest.fail("the packaged scorer is missing (localroute/routing/data/scorer.json)")
    cfg = parse_config(
        (ROOT / "models.toml").read_text().replace("[routing]\n", '[routing]\nscorer = "learned"\n')
    )
    p = Policy(cfg)
    assert p.scorer is not None
    hard = p.score_text("Prove that there are infinitely many primes of the form 4k+3, step by step.")
    assert 0.0 < p.score_text("hi, thanks!") < hard < 1.0


def test_a_real_gateway_routes_with_the_learned_scorer(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, path = trained
    text = (ROOT / "models.toml").read_text().replace("[routing]\n", f'[routing]\nscorer = "{path}"\n', 1)
    # Routing needs no loaded model: wait for startup, not for the engines (a busy box can fail their check).
    srv = start_gateway(
        tmp_path, text, {"LOCALROUTE_AUDIT_PATH": str(tmp_path / "audit.jsonl")}, until=answering
    )
    try:
        body = {"model": "auto", "messages": [{"role": "user", "content": "Say hello to the garden."}]}
        r = httpx.post(srv.url + "/v1/route/explain", json=body, timeout=30)
        assert r.status_code == 200, r.text
        d = r.json()
        sha = json.loads(path.read_text())["sha256"]
        assert d["reasons"][0].startswith(f"learned scorer {sha[:12]}")
        expected = load_scorer(path).score(prompt_turns("Say hello to the garden.")).probability
        assert d["score"] == pytest.approx(expected, abs=1e-4)
    finally:
        srv.stop()
