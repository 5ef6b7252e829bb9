"""The LiteLLM proxy for the overhead benchmark: installed into its own venv, started offline.

The venv (default ~/.cache/localroute/bench-litellm-venv, or $LOCALROUTE_BENCH_LITELLM_VENV) is
created with `pip install 'litellm[proxy]'` on first use and reused after. LiteLLM runs as its docs
describe for a proxy without a database: one uvicorn worker (as localroute), a master key (it refuses
to start without one), `LITELLM_LOG=ERROR`, the bundled model cost map instead of the network fetch,
spend logs off. Failures come back as a reason string, never as an exception: the benchmark goes on
without the LiteLLM column.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

from bench.servers import MODEL, Child, free_port, spawn, wait_ready

DEFAULT_VENV = Path("~/.cache/localroute/bench-litellm-venv").expanduser()
SPEC = "litellm[proxy]"


def venv_dir() -> Path:
    env = os.environ.get("LOCALROUTE_BENCH_LITELLM_VENV")
    return Path(env).expanduser() if env else DEFAULT_VENV


def ensure_installed(venv: Path, spec: str, workdir: Path, install: bool = True) -> tuple[Path | None, str]:
    """(path of the `litellm` executable, its version) or (None, why not)."""
    exe = venv / "bin" / "litellm"
    if not exe.exists():
        if not install:
            return None, f"LiteLLM is not installed in {venv} (and --no-install was given)"
        log = workdir / "litellm-install.log"
        print(f"installing {spec} into {venv} (once; log: {log}) ...", flush=True)
        try:
            with log.open("wb") as fh:
                if not (venv / "bin" / "python").exists():
                    subprocess.run(
                        [sys.executable, "-m", "venv", str(venv)], check=True, stdout=fh, stderr=fh
                    )
                subprocess.run(
                    [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", spec],
                    check=True, stdout=fh, stderr=fh, timeout=900,
                )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            tail = (
                " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:]) if log.exists() else ""
            )
            return None, f"installing {spec} failed ({exc.__class__.__name__}): {tail[-300:]}"
    try:
        code = "import importlib.metadata as m; print(m.version('litellm'))"
        out = subprocess.run(
            [str(venv / "bin" / "python"), "-c", code], check=True, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"LiteLLM in {venv} does not import ({exc.__class__.__name__})"
    return exe, out.stdout.strip()


def config_yaml(mock_port: int) -> str:
    return f"""\
model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: http://127.0.0.1:{mock_port}/v1
      api_key: sk-bench-mock
litellm_settings:
  telemetry: false
  set_verbose: false
general_settings:
  disable_spend_logs: true
  disable_error_logs: true
"""


def start(exe: Path, mock_port: int, workdir: Path, timeout: float = 120.0) -> tuple[Child | None, str, str]:
    """(the running proxy, its master key, "") or (None, "", why it did not start)."""
    cfg = workdir / "litellm.yaml"
    cfg.write_text(config_yaml(mock_port), encoding="utf-8")
    key = "sk-" + secrets.token_hex(24)
    port = free_port()
    env = {
        "LITELLM_MASTER_KEY": key,
        "LITELLM_LOG": "ERROR",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list from GitHub
        "DISABLE_ADMIN_UI": "True",
        "NO_DOCS": "True",
        "LITELLM_TELEMETRY": "False",
    }
    cmd = [str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)]
    child = spawn("litellm", cmd, port, workdir, env)
    try:
        wait_ready(child, "/health/liveliness", timeout, token=key)
    except RuntimeError as exc:
        child.stop()
        return None, "", f"LiteLLM proxy did not start: {str(exc)[-400:]}"
    return child, key, ""
