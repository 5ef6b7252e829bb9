"""`localroute init`'s measured decode rate against the raw llama-cpp-python side of
bench.local_efficiency (bench.local_sides), for the same model file, arguments and box, in one run.

    python -m bench.init_agreement [--model smollm2-135m] [--budget 300MiB] [--threads 1] [--reps 3]
                                   [--decode-tokens 64] [--no-append]

It runs the real `localroute init` (hub offline) into a temporary models.toml, then times the raw side
`--reps` times on that file (stream mode, as bench.local_efficiency's raw column), and prints init's
figures, the raw median and their ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import append_result, median
from bench.local_sides import RawSide
from localroute.config.models import LlamaCppModel
from localroute.config.schema import load_config

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--budget", default="300MiB")
    ap.add_argument("--threads", default="1")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env["LOCALROUTE_MODELS_DIR"] = str(load_config(ROOT / "models.toml").models_dir())
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "models.toml"
        cmd = [sys.executable, "-m", "localroute", "init", "--config", str(config), "--budget", args.budget]
        cmd += [
            "--threads",
            args.threads,
            "--reps",
            str(args.reps),
            "--decode-tokens",
            str(args.decode_tokens),
        ]
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        m = load_config(config).model(args.model)
        if not isinstance(m, LlamaCppModel) or m.measured is None:
            raise SystemExit(f"{args.model}: init wrote no measured figures")
        raw = RawSide(config, args.model, env)
        try:
            rates = [raw.run("stream", args.decode_tokens)[1] for _ in range(args.reps)]
        finally:
            raw.close()
    fig, raw_tps = m.measured, median(rates)
    head = "| model | threads | init load s | init prompt tok/s | init TTFT ms | init decode tok/s "
    head += "| raw decode tok/s (median) | init / raw |"
    samples = ", ".join(f"{r:.1f}" for r in rates)
    row = (
        f"| {args.model} | {m.threads} | {fig.load_s} | {fig.prompt_tps} | {fig.ttft_ms} | {fig.decode_tps} "
    )
    row += f"| {raw_tps:.1f} ({samples}) | {fig.decode_tps / raw_tps:.2f} |"
    table = "\n".join([head, "|---|---|---|---|---|---|---|---|", row])
    notes = (
        "init measures in its own child (host/measure.py), streaming the bench's chat prompt; the raw side "
        "is bench.local_sides' child streaming the same prompt; both load the file init wrote."
    )
    if args.no_append:
        print(table + "\n\n" + notes)
    else:
        title = "localroute init: measured decode vs raw llama-cpp-python"
        append_result("bench.init_agreement", title, table, notes, ("llama-cpp-python",))


if __name__ == "__main__":
    main()
