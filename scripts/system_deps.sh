#!/usr/bin/env bash
# Install the Debian packages the full suite uses, when missing: chromium (the dashboard's browser test)
# and stress-ng (CI's second pass of the `timing` tests under a CPU hog). Best effort: apt-get as root,
# or through `sudo -n` (never a password prompt); otherwise a warning names what will be skipped or
# replaced. Usage: scripts/system_deps.sh [PACKAGE...] (default: chromium stress-ng).
set -uo pipefail
want=("$@")
[ ${#want[@]} -gt 0 ] || want=(chromium stress-ng)
missing=()
for pkg in "${want[@]}"; do
  command -v "$pkg" >/dev/null || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
if command -v apt-get >/dev/null \
  && $SUDO apt-get update -qq >/dev/null 2>&1 \
  && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; then
  exit 0
fi
for pkg in "${missing[@]}"; do
  case "$pkg" in
    chromium) echo "WARNING: chromium is missing and could not be installed: tests/test_dashboard.py will be" \
                   "skipped (install it with: sudo apt-get install chromium)" >&2 ;;
    stress-ng) echo "WARNING: stress-ng is missing and could not be installed: the CPU hog falls back to" \
                    "two Python busy loops (bench/hog.py)" >&2 ;;
    redis-server) echo "WARNING: redis-server is missing and could not be installed: tests/test_replicas.py" \
                       "will be skipped (install it with: sudo apt-get install redis-server)" >&2 ;;
    *) echo "WARNING: could not install $pkg" >&2 ;;
  esac
done
exit 0
