"""`localroute train --from-traffic`, end to end: a real gateway and the real small model serve
requests, a client reports outcomes to /v1/localroute/feedback, the command fits a scorer on the
feedback store and judges it on the newest requests, and a gateway serves with the artifact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from tests import conftest
from tests.conftest import DEFAULT_MODEL, ROOT, repo_rung, start_gateway

FILLER = "Consider the proof of the theorem about prime gaps, and every lemma it rests on, in detail. "


def train(cfg: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localroute", "train", "--from-traffic", "--config", str(cfg),
         "--out", str(out), "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=300, env=conftest._environment(cfg, {}),
    )  # fmt: skip


def test_feedback_then_train_from_traffic_then_serve_with_it(tmp_path: Path) -> None:
    text = conftest.config_text(models=[repo_rung(DEFAULT_MODEL, cache_prompt=False)])
    srv = start_gateway(tmp_path, text)
    cfg = tmp_path / "models.toml"
    try:
        too_few = train(cfg, tmp_path / "none.json")  # nothing labelled yet
        assert too_few.returncode == 2 and "labelled requests" in too_few.stderr, too_few.stderr
        for i in range(32):
            hard = i % 2 == 1  # long, worded like a proof: the client says the stronger model was needed
            content = FILLER * 4 if hard else "Say hi."  # ~100 tokens, quick to read
            body = {
                "model": DEFAULT_MODEL,
                "max_tokens": 1,
                "messages": [{"role": "user", "content": content}],
            }
            r = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=120)
            assert r.status_code == 200, r.text
            outcome = "strong_needed" if hard else "good"
            said = {"id": r.headers["x-request-id"], "outcome": outcome}
            fb = httpx.post(srv.url + "/v1/localroute/feedback", json=said, timeout=30)
            assert fb.status_code == 200, fb.text
    finally:
        srv.stop()
    out = tmp_path / "traffic-scorer.json"
    done = train(cfg, out)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["rows"] + report["held_back"] == 32 and report["held_back"] >= 6
    apgr = report["held_back_apgr"]
    # The label follows the request's kind exactly: a scorer fitted on the older rows ranks the newer
    # ones at least as well as length does, and clearly better than random order.
    assert apgr["fitted"] >= 0.7 and apgr["fitted"] >= apgr["length"] - 1e-9, apgr
    assert "prompt" not in out.read_text()  # the artifact holds weights, not text
    assert "[routing]" not in text
    (tmp_path / "next").mkdir()
    served = start_gateway(tmp_path / "next", text + f'\n[routing]\nscorer = "{out}"\n')
    try:
        body = {"model": "auto", "messages": [{"role": "user", "content": FILLER * 12}]}
        ex = httpx.post(served.url + "/v1/route/explain", json=body, timeout=60).json()
        sha = json.loads(done.stdout)["sha256"]
        assert f"learned scorer {sha[:12]}" in " ".join(ex["reasons"]), ex
    finally:
        served.stop()
