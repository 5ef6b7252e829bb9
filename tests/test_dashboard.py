"""The dashboard in a real browser: a real gateway over the real model, real traffic from the `openai`
SDK, Debian's chromium driven by playwright. The page's numbers must be the stats API's numbers, and
the page must never reach past the gateway's origin."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from localroute.observe.stats import summarize
from tests.conftest import Server, start_server

CHROMIUM = "/usr/bin/chromium"
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(
        f"{CHROMIUM} is missing (Debian package `chromium`; .ci/run installs it)", allow_module_level=True
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is missing (the `test` extra has it)"
)

MODEL = "smollm2-135m"
MINUS, DASH = "\u2212", "\u2013"  # the page's minus sign and its "no value" dash
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# The page's number formats, mirrored from static/dashboard.js (JavaScript rounds halves up).
def _fixed(x: float, places: int) -> str:
    return str(Decimal(x).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def fmt_usd(v: float) -> str:
    a = abs(v)
    if a == 0:
        s = "0.00"
    elif a >= 1:
        s = f"{Decimal(_fixed(a, 2)):,.2f}"
    else:
        s = _fixed(a, min(10, 2 - math.floor(math.log10(a))))
    return (MINUS + "$" if v < 0 else "$") + s


def fmt_pct(percent: float) -> str:
    s = _fixed(abs(percent), 1).removesuffix(".0")
    return (MINUS if percent < 0 and s != "0" else "") + s + "%"


def test_formats_mirror_the_page() -> None:
    assert fmt_usd(0) == "$0.00"
    assert fmt_usd(1234.5) == "$1,234.50"
    assert fmt_usd(0.5) == "$0.500"
    assert fmt_usd(0.000012345) == "$0.0000123"
    assert fmt_usd(-0.25) == MINUS + "$0.250"
    assert fmt_pct(87.25) == "87.3%"
    assert fmt_pct(100.0) == "100%"
    assert fmt_pct(-3.0) == MINUS + "3%"


@pytest.fixture(scope="module")
def gateway(repo_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A gateway of its own, so that its stats hold only the traffic sent here."""
    srv = start_server(repo_config, tmp_path_factory.mktemp("dash"), deterministic=True)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def traffic(gateway: Server) -> dict[str, Any]:
    """Three chat completions (one streamed, one private), then the stats the page must show."""
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    ask = [{"role": "user", "content": "Name three colours."}]
    client.chat.completions.create(model="auto", messages=ask, max_tokens=12, temperature=0)  # type: ignore[arg-type]
    client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hi"}],
        max_tokens=8,
        extra_headers={"X-LocalRoute-Privacy": "private"},
    )
    stream = client.chat.completions.create(model="auto", messages=ask, max_tokens=12, stream=True)  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    stats: dict[str, Any] = httpx.get(gateway.url + "/v1/localroute/stats", timeout=10).json()
    assert stats["totals"]["requests"] == 3, stats["totals"]
    return stats


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=ARGS,
            viewport={"width": 1360, "height": 900},
            color_scheme="light",
        )
        try:
            yield ctx
        finally:
            ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


class Watch:
    """Every request the page makes, with any that leave the gateway's origin stopped and kept."""

    def __init__(self, page: Any, origin: str) -> None:
        self.seen: list[str] = []
        self.foreign: list[str] = []
        self.problems: list[str] = []
        page.on("request", lambda r: self.seen.append(r.url))
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("console", self._console)
        page.route("**/*", self._gate(origin))

    def _gate(self, origin: str) -> Any:
        def gate(route: Any) -> None:
            url = route.request.url
            if url.startswith(origin + "/") or url.startswith("data:"):
                route.fallback()
            else:
                self.foreign.append(url)
                route.abort()

        return gate

    def _console(self, msg: Any) -> None:
        # A failed stats poll is logged by the browser itself; any other error (a CSP refusal, a
        # missing asset, a script error) is a bug.
        if msg.type == "error" and "/v1/localroute/stats" not in msg.location.get("url", ""):
            self.problems.append(f"console: {msg.text} at {msg.location.get('url')}")


def screenshot_path(tmp_path: Path) -> Path:
    return Path(os.environ.get("LOCALROUTE_SCREENSHOT") or tmp_path / "dashboard.png")


def test_dashboard_shows_the_stats_api(
    gateway: Server, traffic: dict[str, Any], browser: Any, tmp_path: Path
) -> None:
    page = browser.new_page()
    watch = Watch(page, gateway.url)
    page.goto(gateway.url + "/dashboard#since=")  # all time: the same window as the bare API call
    page.wait_for_selector("#conn[data-state=live]", timeout=15_000)
    page.wait_for_selector("body[data-rendered]")
    api = httpx.get(gateway.url + "/v1/localroute/stats", timeout=10).json()
    assert api["totals"] == traffic["totals"]  # nothing else reached this gateway meanwhile

    def text(testid: str, within: Any = page) -> str:
        return str(within.get_by_test_id(testid).inner_text()).strip()

    def value(testid: str) -> str | None:
        return page.get_by_test_id(testid).get_attribute("data-value")  # type: ignore[no-any-return]

    t = api["totals"]
    assert text("total-requests") == "3" and value("total-requests") == "3"
    assert text("ok-count") == str(t["ok"]) and text("error-count") == str(t["errors"])
    assert text("local-share") == fmt_pct(t["local_share"] * 100) == "100%"
    assert text("escalation-rate") == fmt_pct(t["escalation_rate"] * 100)
    assert text("cost-usd") == fmt_usd(t["cost_usd"]) and float(value("cost-usd") or "nan") == t["cost_usd"]
    assert text("baseline-usd") == fmt_usd(t["baseline_usd"])
    assert float(value("baseline-usd") or "nan") == t["baseline_usd"]
    assert text("saved-usd") == fmt_usd(t["saved_usd"])
    assert t["savings_pct"] is not None and text("savings-pct") == fmt_pct(t["savings_pct"])
    assert [m["model"] for m in api["models"]] == [MODEL]
    for m in api["models"]:
        row = page.get_by_test_id(f"model-row-{m['model']}")
        assert text("model-requests", row) == str(m["requests"]) == "3"
        assert text("model-cost", row) == fmt_usd(m["cost_usd"])
        assert text("model-baseline", row) == fmt_usd(m["baseline_usd"])
    assert page.get_by_test_id("recent-row").count() == len(api["recent"]) == 3
    ids = [page.get_by_test_id("recent-row").nth(i).get_attribute("data-id") for i in range(3)]
    assert ids == [r["id"] for r in api["recent"]]
    assert page.get_by_test_id("empty-state").is_hidden()
    for chart in ("chart-savings", "chart-rungs", "chart-latency"):
        assert page.get_by_test_id(chart).locator("svg").count() >= 1, chart

    # The window selector asks the API for that window. (No wait_for_function: the page's CSP forbids
    # the string evaluation it needs, which is the point of the CSP.)
    before = page.get_attribute("body", "data-rendered")
    page.get_by_test_id("since").select_option("15m")
    page.wait_for_selector(f'body:not([data-rendered="{before}"])')
    assert page.evaluate("location.hash") == "#since=15m"
    assert any(u.endswith("/v1/localroute/stats?since=15m") for u in watch.seen)
    assert text("total-requests") == "3"

    shot = screenshot_path(tmp_path)
    page.screenshot(path=str(shot), full_page=True)
    print(f"dashboard screenshot: {shot}")

    assert watch.foreign == []
    assert watch.seen and all(u.startswith(gateway.url + "/") for u in watch.seen), watch.seen
    assert watch.problems == []
    page.close()


def test_dashboard_says_when_polling_fails_and_recovers(gateway: Server, browser: Any) -> None:
    page = browser.new_page()
    watch = Watch(page, gateway.url)
    page.goto(gateway.url + "/dashboard")
    page.wait_for_selector("#conn[data-state=live]", timeout=15_000)
    page.route("**/v1/localroute/stats*", lambda route: route.fulfill(status=503, body="down"))
    page.wait_for_selector("#conn[data-state=stale]", timeout=10_000)
    assert "HTTP 503" in text_of(page, "#conn")
    page.unroute("**/v1/localroute/stats*")
    page.wait_for_selector("#conn[data-state=live]", timeout=10_000)
    assert watch.foreign == [] and watch.problems == []
    page.close()


def text_of(page: Any, selector: str) -> str:
    return str(page.inner_text(selector))


def _serve(page: Any, stats: dict[str, Any]) -> None:
    body = json.dumps(stats)
    page.route(
        "**/v1/localroute/stats*",
        lambda route: route.fulfill(status=200, content_type="application/json", body=body),
    )


def test_a_gateway_with_keys_gets_the_key_from_the_user(gateway: Server, browser: Any) -> None:
    """The stats API answers 401 without the key (a gateway with [[keys]]): the page asks for it,
    then sends it as a bearer token on every poll; it never goes into the URL."""
    stats = json.dumps(summarize([], None, datetime.now(UTC)))
    seen: list[str | None] = []

    def gate(route: Any) -> None:
        auth = route.request.headers.get("authorization")
        seen.append(auth)
        if auth == "Bearer team-key-1":
            route.fulfill(status=200, content_type="application/json", body=stats)
        else:
            body = {"error": {"message": "Missing or invalid API key.", "type": "invalid_request_error",
                              "param": None, "code": "invalid_api_key"}}  # fmt: skip
            route.fulfill(status=401, content_type="application/json", body=json.dumps(body))

    page = browser.new_page()
    page.route("**/v1/localroute/stats*", gate)
    page.goto(gateway.url + "/dashboard")
    page.wait_for_selector("[data-testid=auth-form]:not([hidden])", timeout=15_000)
    assert "API key needed" in text_of(page, "#conn")
    page.get_by_test_id("auth-key").fill("team-key-1")
    page.get_by_test_id("auth-key").press("Enter")
    page.wait_for_selector("#conn[data-state=live]", timeout=15_000)
    assert page.locator("[data-testid=auth-form]").is_hidden()
    assert seen[0] is None and seen[-1] == "Bearer team-key-1"
    assert "team-key-1" not in page.url
    page.close()


def test_empty_state(gateway: Server, browser: Any) -> None:
    page = browser.new_page()
    _serve(page, summarize([], None, datetime.now(UTC)))
    page.goto(gateway.url + "/dashboard")
    page.wait_for_selector("body[data-rendered]", timeout=15_000)
    assert page.get_by_test_id("empty-state").is_visible()
    assert page.get_by_test_id("total-requests").inner_text() == "0"
    assert page.get_by_test_id("local-share").inner_text() == DASH
    page.close()


def test_data_is_text_never_markup(gateway: Server, browser: Any) -> None:
    evil = '<img src=x onerror="document.title=1">'
    rec = {
        "ts": datetime.now(UTC).isoformat(),
        "id": evil,
        "status": 200,
        "model": evil,
        "tier": 0,
        "local": True,
        "route": evil,
        "moves": [f"escalate:{evil}"],
        "escalations": 1,
        "latency_ms": 12.0,
        "privacy": {"class": evil},
    }
    page = browser.new_page()
    watch = Watch(page, gateway.url)
    _serve(page, summarize([rec], None, datetime.now(UTC)))
    page.goto(gateway.url + "/dashboard")
    page.wait_for_selector("body[data-rendered]", timeout=15_000)
    assert page.locator("img").count() == 0
    assert page.title() != "1"
    assert evil in page.get_by_test_id(f"model-row-{evil}").inner_text()
    assert watch.foreign == [] and watch.problems == []
    page.close()


def test_page_and_assets_are_served_with_a_strict_policy(gateway: Server) -> None:
    r = httpx.get(gateway.url + "/dashboard", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["cache-control"] == "no-cache"
    assert "http://" not in r.text.replace("http://www.w3.org", "") and "https://" not in r.text
    again = httpx.get(gateway.url + "/dashboard", headers={"if-none-match": r.headers["etag"]}, timeout=10)
    assert again.status_code == 304
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        a = httpx.get(f"{gateway.url}/dashboard/assets/{name}", timeout=10)
        assert a.status_code == 200 and a.headers["content-type"].startswith(kind)
        assert "https://" not in a.text and "http://" not in a.text.replace("http://www.w3.org", "")
    missing = httpx.get(gateway.url + "/dashboard/assets/..%2fapp.py", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
