"""`localroute init` on this machine, end to end: the real command with the hub unreachable, the real
small model measured in a child process, a real gateway serving the file it wrote, a real `openai`
client, and a raw llama-cpp-python measurement of the same model in the same test."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from openai import OpenAI

from bench.local_sides import RawSide
from localroute.config.models import LlamaCppModel
from localroute.config.schema import load_config
from localroute.host.measure import MeasureError, measure
from localroute.host.measure_embed import measure_embed
from tests.conftest import ROOT, Server, free_port

# Two rungs would double the minutes on a shared 2-core box; 300 MiB keeps SmolLM2 (~290 MiB) and leaves
# out gemma3-270m (~460 MiB) and the embedder (it would not fit beside SmolLM2), which also exercises
# the budget's reason lines.
# One thread: on a box whose cores other processes share, llama.cpp's second thread spins at barriers.
# 60 probe questions (the default) take SmolLM2 ~3.5 minutes here; the time limit leaves room for a busy box.
INIT_ARGS = [
    "--budget",
    "300MiB",
    "--reps",
    "2",
    "--decode-tokens",
    "32",
    "--threads",
    "1",
    "--probe-minutes",
    "15",
]


def _env() -> dict[str, str]:
    models_dir = load_config(ROOT / "models.toml").models_dir()  # where bootstrap pulled the models
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update(HF_HUB_OFFLINE="1", LOCALROUTE_MODELS_DIR=str(models_dir), PYTHONPATH=str(ROOT))
    return env


def _init(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "localroute", "init", "--config", str(config), *INIT_ARGS, *extra]
    return subprocess.run(
        cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=1200, check=False
    )


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    config = tmp_path_factory.mktemp("init") / "models.toml"
    return config, _init(config)


def test_offline_init_writes_a_measured_ladder_and_names_what_it_left_out(
    initialised: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    config, proc = initialised
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "Hugging Face hub: unreachable (HF_HUB_OFFLINE is set)" in out
    assert "left out qwen2.5-7b: needs the Hugging Face hub, which cannot be reached" in out
    assert "left out gemma3-270m: needs ~460 MiB (approximate) > memory budget 300 MiB" in out
    assert "left out all-minilm-l6-v2: with smollm2-135m it needs ~490 MiB" in out
    assert f"wrote {config}" in out
    assert "measure smollm2-135m" in proc.stderr  # the progress bar
    cfg = load_config(config)
    assert [m.name for m in cfg.ladder()] == ["smollm2-135m", "frontier"]
    smol = cfg.model("smollm2-135m")
    assert isinstance(smol, LlamaCppModel) and smol.measured is not None
    fig = smol.measured
    assert fig.load_s > 0 and fig.prompt_tps > 0 and fig.decode_tps > 0 and fig.ttft_ms > 0
    assert "1 threads" in fig.on
    text = config.read_text()
    assert (
        "# measured by `localroute init` at" in text and "#   qwen2.5-14b: needs the Hugging Face hub" in text
    )
    assert cfg.resources.max_cold_wait_s == max(5.0, math.ceil(1.5 * fig.load_s))


def test_init_calibrates_the_rungs_confidence_threshold_on_its_probe_answers(
    initialised: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """SmolLM2 gets about a quarter of the probe right (bench.cascade_signals), enough of each outcome
    to fit; the file says what the threshold was fitted on, and the fit is the probe's best signal."""
    config, proc = initialised
    assert proc.returncode == 0, proc.stderr[-2000:]
    smol = load_config(config).model("smollm2-135m")
    assert isinstance(smol, LlamaCppModel)
    t = smol.confidence
    assert t is not None, proc.stderr[-2000:]
    assert t.n == 60 and t.right is not None and 10 <= t.right <= 50 and t.auroc is not None and t.auroc > 0.5
    text = config.read_text()
    assert (
        f"on 60 probe questions (host/probe_set.py, seed 0): {t.n} answers here, {t.right} right and\n"
        f"# {t.n - t.right} wrong; {t.signal} ranks them with AUROC {t.auroc}"
    ) in text


def test_measured_decode_rate_agrees_with_raw_llama_cpp(
    initialised: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """init's decode tokens/s against bench.local_sides' raw child (the raw side of
    bench.local_efficiency), loaded from the same file with the same arguments, measured right after.
    Tolerance 0.5x-2x: the two time the same llama.cpp decode loop, but init bans end-of-text on a raw
    continuation and the bench streams a chat answer, and this box's cores are shared with other work,
    which moves one sample by tens of percent; a wrong figure (prompt time counted in, characters
    counted as tokens, the wrong thread count or model) lands far outside."""
    config, proc = initialised
    assert proc.returncode == 0, proc.stderr[-2000:]
    smol = load_config(config).model("smollm2-135m")
    assert isinstance(smol, LlamaCppModel) and smol.measured is not None
    raw = RawSide(config, "smollm2-135m", _env())
    try:
        rates = [raw.run("stream", 32)[1] for _ in range(2)]
    finally:
        raw.close()
    raw_tps = sorted(rates)[len(rates) // 2]
    ratio = smol.measured.decode_tps / raw_tps
    assert 0.5 <= ratio <= 2.0, (smol.measured.decode_tps, rates)


def test_the_written_config_serves(initialised: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    config, proc = initialised
    assert proc.returncode == 0, proc.stderr[-2000:]
    srv = Server(config, free_port(), {"LOCALROUTE_MODELS_DIR": _env()["LOCALROUTE_MODELS_DIR"]}).started()
    try:
        client = OpenAI(base_url=srv.url + "/v1", api_key="unused")
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "Say hi"}], max_tokens=8, temperature=0
        )
        answer = raw.parse()
        assert raw.headers["x-localroute-model"] == "smollm2-135m"
        assert answer.choices[0].message.content
        engine = srv.health()["engines"]["smollm2-135m"]  # type: ignore[index]
        assert engine["state"] == "ready"
        measured = load_config(config).model("smollm2-135m").measured  # type: ignore[union-attr]
        assert (
            measured is not None and engine["measured"]["decode_tps"] == measured.decode_tps
        )  # /health shows it
    finally:
        srv.stop()


def test_a_rerun_shows_a_diff_and_writes_only_with_write(
    initialised: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    config, proc = initialised
    assert proc.returncode == 0, proc.stderr[-2000:]
    generated = config.read_text()
    edited = generated.replace("threads = 1\n", "threads = 3\n", 1).replace("port = 8000", "port = 8111")
    assert edited != generated
    config.write_text(edited)

    again = _init(config, "--no-measure")  # keeps the file's measured figures
    assert again.returncode == 0, again.stderr[-2000:]
    assert (
        f"--- {config}\n" in again.stdout
        and "-port = 8111\n" in again.stdout
        and "+port = 8000\n" in again.stdout
    )
    assert "-threads = 3\n" in again.stdout and "+threads = 1\n" in again.stdout
    assert not any(
        line[:1] in "+-" and ("measured =" in line or "confidence" in line)
        for line in again.stdout.splitlines()
    )
    assert "left unchanged; re-run with --write" in again.stdout
    assert config.read_text() == edited  # nothing written

    written = _init(config, "--no-measure", "--write")
    assert written.returncode == 0, written.stderr[-2000:]
    assert config.read_text() == generated
    assert "is up to date" in _init(config, "--no-measure").stdout


def test_a_model_that_cannot_be_measured_is_one_line(tmp_path: Path) -> None:
    """A file llama.cpp cannot load: the child reports it, the parent raises one line, no traceback."""
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    m = LlamaCppModel.model_validate(
        {"name": "bad", "engine": "llama_cpp", "source": {"kind": "path", "path": str(bad)}, "threads": 1}
    )
    with pytest.raises(MeasureError) as exc:
        measure(bad, m, on="test", reps=1, max_tokens=4)
    reason = exc.value.reason
    assert reason and "\n" not in reason and "Traceback" not in reason


def test_the_embedder_is_measured_for_a_comment(tmp_path: Path) -> None:
    """The real MiniLM GGUF: load time and inputs/s, as comment lines; a file llama.cpp cannot load
    gives one line saying why."""
    cfg = load_config(ROOT / "models.toml")
    m = cfg.model("all-minilm-l6-v2")
    assert isinstance(m, LlamaCppModel)
    env_dir = _env()["LOCALROUTE_MODELS_DIR"]
    note = measure_embed(Path(env_dir) / cfg.model_path(m).name, m)
    assert re.fullmatch(r"# measured by `localroute init` on this box \(1 threads\): load [\d.]+ s, "
                        r"[\d.]+ inputs/s\n# \(32 one-line sentences .*\)\.", note), note  # fmt: skip
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    assert measure_embed(bad, m).startswith("# not measured: ")
    assert "\n" not in measure_embed(bad, m)
