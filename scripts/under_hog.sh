#!/usr/bin/env bash
# Run a command while two CPU hogs keep the box busy (`stress-ng --cpu 2`, or two Python busy loops
# where stress-ng is missing), as a busy CI runner or a laptop compiling something would. The hogs are
# stopped however the command ends; its exit status is returned. Usage: scripts/under_hog.sh CMD...
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v stress-ng >/dev/null; then
  stress-ng --cpu 2 --quiet &
else
  "${PYTHON:-.venv/bin/python}" -m bench.hog 2 &
fi
HOG=$!
trap 'kill -TERM "$HOG" 2>/dev/null; wait "$HOG" 2>/dev/null || true' EXIT
echo "under_hog: CPU hog running (pid $HOG): $*" >&2
"$@"
