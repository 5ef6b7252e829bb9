"""The dashboard's engine-endpoints panel (static/endpoints.js) in a real browser, against a real gateway
whose rung lists a live stand-in engine and a dead address."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import config_text, free_port, start_gateway
from tests.endpoint_servers import MODEL, HostedStandin

CHROMIUM = "/usr/bin/chromium"
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"{CHROMIUM} is missing (Debian package `chromium`)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing (the test extra)")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    profile = tmp_path / "chromium-profile"
    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield ctx
        finally:
            ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


def test_the_panel_lists_every_endpoint_with_its_state(tmp_path: Path, browser: Any) -> None:
    live = HostedStandin("127.0.0.1", model=MODEL).start()
    dead = f"http://127.0.0.1:{free_port()}"
    rung = {"name": "lan", "engine": "vllm", "model": MODEL, "endpoints": [live.url, dead],
            "balance": {"health_path": "/v1/models", "health_every_s": 0.2}, "preload": True}  # fmt: skip
    srv = start_gateway(tmp_path, config_text(models=[rung], privacy={"audit_enabled": False}))
    try:
        r = httpx.get(srv.url + "/dashboard/assets/endpoints.js", timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
        page = browser.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.goto(srv.url + "/dashboard")
        table = page.get_by_test_id("endpoints-table")
        table.wait_for(state="visible")  # hidden until /health lists an endpoint
        row = page.locator(f'tr[data-endpoint="{live.url}"]')
        row.wait_for()
        assert page.get_by_test_id("endpoint-row").count() == 2
        assert "127.0.0.1 · trusted" in row.inner_text()
        dead_row = page.locator(f'tr[data-endpoint="{dead}"]')
        dead_row.get_by_text("open").wait_for()  # its circuit opens as the probes fail
        assert problems == [] or all("/health" not in p for p in problems)
        page.close()
    finally:
        srv.stop()
        live.stop()
