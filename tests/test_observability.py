"""Known traffic through a real gateway (the real small model under the stand-in remote rung), then:
per-request cost from measured compute, /metrics parsed by prometheus-client's parser,
/v1/localroute/stats, `localroute report` on the audit log, and the JSON request log all agree."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import conftest
from tests.conftest import ROOT, Server, remote_rung, repo_rung, start_gateway
from tests.standin_fixtures import STANDIN_KEY
from tests.standin_provider import StandinProvider

LOCAL = "smollm2-135m"
REMOTE = "frontier"
KEY_ENV = "LR_OBS_KEY"
CPU_PER_HOUR = 0.36  # $ per CPU-core-hour: large enough that a request's measured seconds show
IN_PRICE, OUT_PRICE = 2.5, 10.0
# Scores far above smollm2's max_score: `auto` sends it straight to the remote rung.
HARD = (
    "Prove step by step that the sum of the first n odd numbers is n squared, then implement a Python "
    "function that checks it for every n below 1000 and analyze its time complexity."
)


def config_text(base_url: str) -> str:
    models = [
        repo_rung(LOCAL, cache_prompt=False, price={"per_hour": CPU_PER_HOUR}),
        remote_rung(
            base_url, KEY_ENV, max_retries=0, price={"input_per_mtok": IN_PRICE, "output_per_mtok": OUT_PRICE}
        ),
    ]
    # Every `auto` answer from the small model is judged unsure: one escalation we can count.
    cascade = {"min_mean_logprob": -0.01, "min_length_tokens": 0}
    return conftest.config_text(models=models, cascade=cascade, cost={"baseline": REMOTE})


class Traffic:
    """The gateway, what was sent, and the request ids the client saw."""

    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.ids: dict[str, str] = {}
        self.bodies: list[str] = []


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traffic]:
    with StandinProvider(api_key=STANDIN_KEY) as provider:
        text = config_text(provider.base_url)
        srv = start_gateway(tmp_path_factory.mktemp("obs"), text, {KEY_ENV: STANDIN_KEY})
        try:
            t = Traffic(srv)
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
            msg = [{"role": "user", "content": "Say hi"}]

            r = client.chat.completions.with_raw_response.create(model=LOCAL, messages=msg, max_tokens=8)
            t.ids["local"] = r.headers["x-request-id"]
            t.bodies.append(r.text)
            with client.chat.completions.with_streaming_response.create(
                model=LOCAL, messages=msg, max_tokens=8, stream=True, stream_options={"include_usage": True}
            ) as s:
                t.ids["stream"] = s.headers["x-request-id"]
                t.bodies.append("".join(s.iter_lines()))
            r = client.chat.completions.with_raw_response.create(model="auto", messages=msg, max_tokens=8)
            assert r.headers["x-localroute-route"] == "escalated:low_confidence"
            t.ids["escalated"] = r.headers["x-request-id"]
            t.bodies.append(r.text)
            hard = [{"role": "user", "content": HARD}]
            r = client.chat.completions.with_raw_response.create(model="auto", messages=hard, max_tokens=8)
            assert r.headers["x-localroute-model"] == REMOTE
            t.ids["remote"] = r.headers["x-request-id"]
            t.bodies.append(r.text)
            with pytest.raises(openai.NotFoundError) as err:
                client.chat.completions.create(model="no-such-model", messages=msg)
            t.ids["error"] = err.value.response.headers["x-request-id"]
            yield t
        finally:
            srv.stop()


def audit(t: Traffic) -> dict[str, dict[str, Any]]:
    recs = [json.loads(line) for line in t.srv.audit.read_text().splitlines()]
    return {r["id"]: r for r in recs}


def stats(t: Traffic, since: str | None = None) -> dict[str, Any]:
    params = {"since": since} if since else {}
    r = httpx.get(t.srv.url + "/v1/localroute/stats", params=params, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_engine_accounting_never_reaches_the_client(traffic: Traffic) -> None:
    assert len(traffic.bodies) == 4
    for body in traffic.bodies:
        assert "x_localroute" not in body and "compute_s" not in body


def test_local_cost_is_measured_cpu_time_at_the_configured_price(traffic: Traffic) -> None:
    recs = audit(traffic)
    for key in ("local", "stream"):
        r = recs[traffic.ids[key]]
        assert r["local"] is True and r["model"] == LOCAL
        # The worker's measured CPU-seconds, nonzero, and physically possible: at most its 2
        # decode threads (plus one for the server) busy for the whole request.
        assert 0 < r["compute_s"] <= (r["latency_ms"] / 1000) * 3
        assert r["cost_usd"] == pytest.approx(r["compute_s"] * CPU_PER_HOUR / 3600, rel=1e-3)
        tokens = r["tokens"]
        assert tokens["prompt"] > 0 and tokens["completion"] > 0
        want = (tokens["prompt"] * IN_PRICE + tokens["completion"] * OUT_PRICE) / 1e6
        assert r["baseline_usd"] == pytest.approx(want, rel=1e-6)
    assert recs[traffic.ids["stream"]]["ttft_ms"] is not None
    assert recs[traffic.ids["stream"]]["stream"] is True


def test_an_escalation_is_charged_for_both_rungs(traffic: Traffic) -> None:
    r = audit(traffic)[traffic.ids["escalated"]]
    assert r["moves"] == ["escalated:low_confidence"] and r["model"] == REMOTE and r["local"] is False
    local, remote = r["attempts"]
    assert local["model"] == LOCAL and local["outcome"] == "escalated" and local["compute_s"] > 0
    assert local["cost_usd"] == pytest.approx(local["compute_s"] * CPU_PER_HOUR / 3600, rel=1e-3)
    t = remote["tokens"]
    assert remote["cost_usd"] == pytest.approx((t["prompt"] * IN_PRICE + t["completion"] * OUT_PRICE) / 1e6)
    assert r["cost_usd"] == pytest.approx(local["cost_usd"] + remote["cost_usd"], rel=1e-6)
    assert r["cost_usd"] > r["baseline_usd"]  # escalating costs more than going straight up


def test_stats_api_counts_the_known_traffic(traffic: Traffic) -> None:
    s = stats(traffic)
    t = s["totals"]
    assert (t["requests"], t["ok"], t["errors"], t["local"], t["escalated"]) == (5, 4, 1, 2, 1)
    assert t["local_share"] == 0.5 and t["escalation_rate"] == 0.25
    assert s["escalations"] == {"low_confidence": 1}
    assert {m["model"]: m["requests"] for m in s["models"]} == {LOCAL: 2, REMOTE: 2}
    recs = audit(traffic)
    assert t["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in recs.values()), abs=1e-8)
    assert t["baseline_usd"] == pytest.approx(sum(r["baseline_usd"] for r in recs.values()), abs=1e-8)
    assert t["savings_pct"] == pytest.approx(100 * t["saved_usd"] / t["baseline_usd"], abs=0.01)
    assert [r["id"] for r in s["recent"]] == [
        traffic.ids[k] for k in ("error", "remote", "escalated", "stream", "local")
    ]
    assert stats(traffic, since="1h")["totals"]["requests"] == 5
    assert stats(traffic, since="2999-01-01T00:00:00Z")["totals"]["requests"] == 0


def test_stats_rejects_a_bad_since(traffic: Traffic) -> None:
    r = httpx.get(traffic.srv.url + "/v1/localroute/stats", params={"since": "last tuesday"}, timeout=10)
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == "since"


def test_report_on_the_audit_log_agrees_with_the_stats_api(traffic: Traffic) -> None:
    live = stats(traffic)
    out = subprocess.run(
        [sys.executable, "-m", "localroute", "report", str(traffic.srv.audit), "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    offline = json.loads(out.stdout)
    for key in ("totals", "models", "escalations", "routes", "privacy", "latency_histogram", "recent"):
        assert offline[key] == live[key], key
    text = subprocess.run(
        [sys.executable, "-m", "localroute", "report", str(traffic.srv.audit), "--since", "1h"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "requests 5 (ok 4, errors 1)" in text and "served locally 50.0%" in text
    assert LOCAL in text and REMOTE in text


def metric_samples(t: Traffic) -> list[tuple[str, dict[str, str], float]]:
    r = httpx.get(t.srv.url + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(r.text) for s in f.samples]


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


def test_metrics_count_the_known_traffic(traffic: Traffic) -> None:
    m = metric_samples(traffic)
    s = stats(traffic)
    assert total(m, "localroute_requests_total") == 5
    assert total(m, "localroute_requests_total", model=LOCAL, status="200") == 2
    assert total(m, "localroute_requests_total", model=REMOTE, status="200") == 2
    assert total(m, "localroute_requests_total", model="none", status="404") == 1
    assert total(m, "localroute_requests_total", privacy="public") == 5
    assert total(m, "localroute_escalations_total", reason="low_confidence") == 1
    for kind in ("prompt", "completion"):
        assert total(m, "localroute_tokens_total", kind=kind) == s["totals"]["tokens"][kind]
    assert total(m, "localroute_cost_usd_total") == pytest.approx(s["totals"]["cost_usd"], abs=1e-7)
    assert total(m, "localroute_baseline_cost_usd_total") == pytest.approx(
        s["totals"]["baseline_usd"], abs=1e-7
    )
    assert total(m, "localroute_compute_seconds_total", model=LOCAL) > 0
    assert total(m, "localroute_request_duration_seconds_count") == 4
    assert total(m, "localroute_time_to_first_token_seconds_count", model=LOCAL) == 1
    assert total(m, "localroute_engine_state", model=LOCAL, state="ready") == 1
    assert total(m, "localroute_engine_state", model=LOCAL) == 1  # one state at a time
    assert total(m, "localroute_queue_depth", model=LOCAL) == 0
    assert total(m, "localroute_engine_rss_bytes", model=LOCAL) > 50 * 1024 * 1024
    # Bounded cardinality: no request ids, no text from the requests in any label.
    values = {v for _, lab, _ in m for v in lab.values()}
    assert not any(v.startswith("req-") or "hi" in v.lower().split() or "no-such-model" in v for v in values)


def test_one_json_log_line_per_request_with_the_audit_fields(traffic: Traffic) -> None:
    lines = [json.loads(x) for x in traffic.srv.log.read_text().splitlines() if x.startswith("{")]
    requests = [x for x in lines if x["logger"] == "localroute.request"]
    recs = audit(traffic)
    assert sorted(x["id"] for x in requests) == sorted(recs)
    for line in requests:
        rec = {k: v for k, v in recs[line["id"]].items() if k not in ("prev", "hash")}
        assert {k: line[k] for k in rec} == rec
        assert "content" not in line and "Say hi" not in json.dumps(line)
    assert all(x["level"] in ("debug", "info", "warning", "error") for x in lines)


def test_log_level_from_the_environment(tmp_path: Path) -> None:
    """LOCALROUTE_LOG_LEVEL=warning silences the per-request info lines."""
    srv = start_gateway(tmp_path, (ROOT / "models.toml").read_text(), {"LOCALROUTE_LOG_LEVEL": "warning"})
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        client.chat.completions.create(
            model=LOCAL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    finally:
        srv.stop()
    assert '"logger":"localroute.request"' not in srv.log.read_text()
    assert len(srv.audit.read_text().splitlines()) == 1
