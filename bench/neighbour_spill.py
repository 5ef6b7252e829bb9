"""Does one target's after-work land on another's measurement? bench.overhead's single-client order, checked.

    python -m bench.neighbour_spill [--reps 150] [--seconds 30] [--rounds 2]

The mock, bench.floors' `raw` forwarder, localroute and the LiteLLM proxy (installed by
`bench.overhead`; this does not install it) in one run. For each order of bench.overhead's latency
phase (`shuffled`, `blocks`) the added p50 of `raw` and localroute is measured with LiteLLM out of
the rotation and in it, `--rounds` times (out first in odd rounds, in first in even ones), with
`direct`'s own p50 beside them: a target's after-work landing on `direct` would lower every "added".
An order that measures each target on its own shows the same figures either way; one where
LiteLLM's work after its response (logging, callbacks) runs during the next target's request shows
the others slower with LiteLLM in.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
from pathlib import Path

from bench import litellm_env, servers
from bench.common import pct
from bench.floors import start_floor
from bench.overhead import latency_phase, make_target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=150, help="measured requests per target and kind")
    ap.add_argument("--seconds", type=float, default=30.0, help="time limit of each latency phase")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    import uvloop

    with tempfile.TemporaryDirectory(prefix="localroute-order-") as tmp:
        work = Path(tmp)
        exe, info = litellm_env.ensure_installed(
            litellm_env.venv_dir(), litellm_env.SPEC, work, install=False
        )
        if exe is None:
            raise SystemExit(f"needs LiteLLM (run bench.overhead once to install it): {info}")
        children: list[servers.Child] = []
        try:
            mock = servers.start_mock(work)
            children.append(mock)
            lr = servers.start_localroute(mock.port, work)
            children.append(lr)
            raw = start_floor("raw", mock.port, work)
            children.append(raw)
            ll, token, why = litellm_env.start(exe, mock.port, work)
            if ll is None:
                raise SystemExit(f"LiteLLM did not start: {why}")
            children.append(ll)
            base = [
                make_target("direct", mock.port, token),
                make_target("raw", raw.port, None),
                make_target("localroute", lr.port, token),
            ]
            print(f"LiteLLM {info}\n")
            print(
                "| order | LiteLLM | round | kind | direct p50 ms | raw, added p50 ms | localroute, added |"
            )
            print("|---|---|---|---|---|---|---|")
            for order in ("shuffled", "blocks"):
                for rnd in range(args.rounds):
                    for with_ll in (False, True) if rnd % 2 == 0 else (True, False):  # no time order
                        targets = base + ([make_target("litellm", ll.port, token)] if with_ll else [])
                        gc.collect()
                        gc.disable()  # as bench.overhead: this client's collections land on no one
                        try:
                            lat = uvloop.run(latency_phase(targets, args.reps, args.seconds, order))
                        finally:
                            gc.enable()
                        for mode in ("json", "stream"):
                            d = pct(lat[("direct", mode)].total, 0.5)
                            added = [pct(lat[(n, mode)].total, 0.5) - d for n in ("raw", "localroute")]
                            cells = (order, "in" if with_ll else "out", rnd + 1, mode, d, *added)
                            print(
                                "| {} | {} | {} | {} | {:.3f} | {:.3f} | {:.3f} |".format(*cells), flush=True
                            )
        finally:
            for c in reversed(children):
                c.stop()


if __name__ == "__main__":
    main()
