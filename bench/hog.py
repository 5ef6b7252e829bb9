"""A CPU hog for `scripts/under_hog.sh` where stress-ng is not installed: N processes that spin until
the parent is stopped (SIGTERM, or Ctrl-C). Usage: python -m bench.hog [N=2]."""

from __future__ import annotations

import multiprocessing
import signal
import sys


def _spin() -> None:
    x = 0
    while True:
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 2
    procs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(n)]
    for p in procs:
        p.start()

    def stop(signum: int, frame: object) -> None:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for p in procs:
        p.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
