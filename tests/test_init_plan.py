"""`localroute init` without a model: the catalogue, the ladder it proposes for a given box, the
models.toml it renders, and the policy using measured figures (all pure, no server)."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime

import pytest

from localroute.config.models import LlamaCppModel, Measured
from localroute.config.schema import parse_config
from localroute.errors import ConfigError
from localroute.host.catalogue import load_catalogue, parse_catalogue
from localroute.host.init_toml import render
from localroute.host.plan import Box, plan_ladder
from localroute.host.resources import GPU, MiB
from localroute.protocol.chat import ChatCompletionRequest
from localroute.routing.policy import Cold, Features, Policy
from tests.conftest import ROOT

GiB = 1024 * MiB


def box(ram_gib: float = 32, gpus: tuple[GPU, ...] = (), disk_gib: float = 500) -> Box:
    return Box("Test CPU", 16, 8, int(ram_gib * GiB), int(ram_gib * GiB), int(disk_gib * GiB), gpus)


# -- the catalogue ------------------------------------------------------------------------------------


def test_registry_entries_pin_what_the_embedded_config_pins() -> None:
    """The offline entries are the repo's models.toml sources, byte for byte (sha256, files, size)."""
    repo = tomllib.loads((ROOT / "models.toml").read_text())["models"]
    repo_src = {m["name"]: m["source"] for m in repo if "source" in m}
    cat = {e.name: e for e in load_catalogue().models}
    for name in ("smollm2-135m", "all-minilm-l6-v2"):
        src = cat[name].source
        assert src is not None and not cat[name].needs_hub
        got = src.model_dump(exclude_none=True)
        for key, value in repo_src[name].items():
            assert got[key] == value, (name, key)
    gemma = cat["gemma3-270m"].source
    assert gemma is not None and getattr(gemma, "sha256", "").startswith("a5fd3b62")


def test_hub_entries_pin_no_checksum_and_no_size() -> None:
    for e in load_catalogue().models:
        if e.needs_hub and e.source is not None:
            assert getattr(e.source, "sha256", None) is None, e.name
            assert getattr(e.source, "size", None) is None, e.name
            assert "not pinned" in e.note, e.name


def test_a_registry_entry_without_sha256_is_refused() -> None:
    text = """version = 1
[[models]]
name = "x"
engine = "llama_cpp"
params = "1B"
rank = 1
licence = "MIT"
context_length = 2048
n_ctx = 2048
capabilities = []
needs_hub = false
approx_memory_mib = 10
note = "n"
source = { kind = "hf", repo = "a/b", file = "c.gguf" }
"""
    with pytest.raises(ConfigError, match="needs_hub must be True"):
        parse_catalogue(text)


# -- the ladder ---------------------------------------------------------------------------------------


def test_offline_the_ladder_is_registry_models_and_names_what_it_left_out() -> None:
    plan = plan_ladder(load_catalogue(), box(), 20 * GiB, hub=False)
    assert [r.entry.name for r in plan.chat] == ["smollm2-135m", "gemma3-270m"]
    assert plan.embed is not None and plan.embed.name == "all-minilm-l6-v2"
    left = dict(plan.left_out)
    assert "qwen2.5-7b" in left and "Hugging Face hub" in left["qwen2.5-7b"]
    assert all(not r.entry.needs_hub for r in plan.chat)


def test_with_the_hub_a_big_box_gets_bigger_models_within_the_budget() -> None:
    plan = plan_ladder(load_catalogue(), box(ram_gib=32), int(0.7 * 32 * GiB), hub=True)
    names = [r.entry.name for r in plan.chat]
    assert len(names) == 3 and names[0] == "smollm2-135m" and names[-1] == "qwen2.5-14b"
    assert [r.tier for r in plan.chat] == [0, 1, 2]
    assert [r.max_score for r in plan.chat] == sorted(r.max_score for r in plan.chat)
    assert "at most 3" in dict(plan.left_out)["qwen2.5-0.5b"]
    assert "GPU" in dict(plan.left_out)["qwen2.5-7b-vllm"]  # no GPU on this box


def test_a_small_budget_leaves_out_what_does_not_fit_and_says_by_how_much() -> None:
    plan = plan_ladder(load_catalogue(), box(), 300 * MiB, hub=False)
    assert [r.entry.name for r in plan.chat] == ["smollm2-135m"]
    assert "> memory budget 300 MiB" in dict(plan.left_out)["gemma3-270m"]
    assert plan.embed is None and "with smollm2-135m" in dict(plan.left_out)["all-minilm-l6-v2"]


def test_a_gpu_adds_the_strongest_vllm_rung_that_fits_on_top() -> None:
    gpu = GPU(0, "Test GPU", 24576, 23000)
    plan = plan_ladder(load_catalogue(), box(gpus=(gpu,)), 20 * GiB, hub=True)
    top = plan.chat[-1].entry
    assert (top.engine, top.name) == ("vllm", "qwen2.5-7b-vllm")  # the 32B AWQ needs ~24000 > 23000 free
    assert "GPU memory" in dict(plan.left_out)["qwen2.5-32b-awq-vllm"]


def test_the_rendered_file_loads_and_says_where_each_figure_came_from() -> None:
    plan = plan_ladder(load_catalogue(), box(), 20 * GiB, hub=True)
    at = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    fig = Measured(
        load_s=0.5, prompt_tps=900.0, decode_tps=80.0, ttft_ms=40.0, at=at, on="Test CPU, 8 threads"
    )
    outcomes = {plan.chat[0].entry.name: fig, plan.chat[1].entry.name: "the measurement failed (boom)"}
    text = render(plan, box(), catalogue_version=1, budget="70%", hub_line="hub: reachable",
                  outcomes=outcomes, threads=8)  # fmt: skip
    cfg = parse_config(text)
    first = cfg.ladder()[0]
    assert isinstance(first, LlamaCppModel) and first.measured == fig
    assert "# measured by `localroute init` at 2026-12-03T12:00:00Z" in text
    assert "# not measured: the measurement failed (boom)" in text
    assert "sha256 and size not pinned" in text  # a hub rung says its checksum is checked at pull


# -- the policy uses the figures ----------------------------------------------------------------------

RUNGS = """
[[models]]
name = "small"
engine = "llama_cpp"
source = {{ kind = "path", path = "small.gguf" }}
price = {{ per_hour = 3.6 }}
max_score = 0.9
{measured}
[[models]]
name = "mid"
engine = "llama_cpp"
tier = 1
source = {{ kind = "path", path = "mid.gguf" }}
max_score = 0.9

[resources]
max_cold_wait_s = 5
"""
FIGURES = (
    "measured = {{ load_s = {load}, prompt_tps = {p}, decode_tps = {d}, ttft_ms = 10, "
    "at = 2026-12-03T12:00:00Z }}"
)


def policy(load: float | None = None, p: float = 1000.0, d: float = 100.0) -> Policy:
    measured = (
        "" if load is None else FIGURES.format(load=load, p=p, d=d).replace("{{", "{").replace("}}", "}")
    )
    return Policy(parse_config(RUNGS.format(measured=measured)))


@pytest.mark.parametrize(
    ("load", "p", "d", "seconds"),
    [
        (None, 0, 0, 1000 / 250 + 100 / 50),  # not measured: the fixed guess
        (1.0, 1000.0, 100.0, 1000 / 1000 + 100 / 100),  # measured: this box's rates
        (1.0, 100.0, 10.0, 1000 / 100 + 100 / 10),  # a slow box costs more
    ],
)
def test_the_local_cost_estimate_uses_measured_rates(
    load: float | None, p: float, d: float, seconds: float
) -> None:
    pol = policy(load, p or 1.0, d or 1.0)
    small = pol.ladder[0]
    f = Features(estimated_tokens=1000, fit_tokens=1000, output_tokens=100, depth=1, hits=())
    assert pol.estimated_cost(small, f) == pytest.approx(3.6 * seconds / 3600)


def req() -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    )


@pytest.mark.parametrize(
    ("load", "cold", "want"),
    [
        (20.0, {"small": Cold(None)}, "mid"),  # never loaded here: init's 20 s load > 5 s, mid is warm
        (1.0, {"small": Cold(None)}, "small"),  # init measured a quick load: worth the wait
        (20.0, {"small": Cold(1.0)}, "small"),  # a load in this process beats init's figure
        (None, {"small": Cold(None)}, "small"),  # nothing known: no reason to avoid it
        (20.0, {}, "small"),  # warm: its load time does not matter
    ],
)
def test_cold_wait_uses_the_measured_load_before_the_first_load(
    load: float | None, cold: dict[str, Cold], want: str
) -> None:
    d = policy(load).decide(req(), cold=cold)
    assert d.model == want, d
    if want == "mid":
        assert any("measured by init" in r for r in d.reasons), d.reasons
