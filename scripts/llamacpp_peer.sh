#!/usr/bin/env bash
# Run scripts/llamacpp_peer.py (llama.cpp as a speed and quality peer) in its own venv.
#   scripts/llamacpp_peer.sh prepare               convert SmolLM2 to F32 GGUF, quantize it
#   scripts/llamacpp_peer.sh bench --json OUT      prefill / decode tokens/s
#   scripts/llamacpp_peer.sh quality --json OUT    perplexity, KL, top-1 (ASSETS.md protocol)
#   scripts/llamacpp_peer.sh --install-only        only create the venv
# The venv lives at ${LLMC_CACHE:-~/.cache/llmc}/peer-venv and holds exactly the pins of
# scripts/requirements-peer.txt. llama-cpp-python is compiled from source for this CPU
# (-march=native), which takes about 9 minutes on 2 cores; it is redone only when the
# requirements file or CMAKE_ARGS change. Needs gcc/g++ and the SmolLM2 and SOTU assets
# (scripts/setup.sh --assets).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${LLMC_CACHE:-$HOME/.cache/llmc}
venv=$cache/peer-venv
requirements=$here/requirements-peer.txt
# Native build (SOURCE_DATE_EPOCH would otherwise turn it off); no multimodal library.
cmake_args=${PEER_CMAKE_ARGS:--DGGML_NATIVE=ON -DLLAVA_BUILD=OFF}

fail() {
  echo "llamacpp_peer.sh: $*" >&2
  exit 1
}

install_venv() {
  local stamp_want
  stamp_want="$(sha256sum "$requirements" | cut -d' ' -f1) $cmake_args"
  if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.peer-stamp" 2>/dev/null)" = "$stamp_want" ]; then
    return
  fi
  command -v g++ >/dev/null || fail "g++ not found: install build-essential (apt-get install g++)"
  echo "llamacpp_peer.sh: creating $venv (builds llama-cpp-python from source, ~9 min)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" || fail "python3 -m venv $venv failed"
  local pip=("$venv/bin/python" -m pip --disable-pip-version-check)
  # Build tools first, at the pinned versions, so the source build can run without isolation.
  "${pip[@]}" install -q -c "$requirements" cmake ninja scikit-build-core packaging pathspec \
    || fail "installing the build tools from $requirements failed"
  local log=$cache/peer-build.log
  # No wheel cache: a cached wheel would ignore CMAKE_ARGS and the CPU it was built for.
  if ! PATH="$venv/bin:$PATH" CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
      "${pip[@]}" install --no-cache-dir --no-build-isolation --no-binary llama-cpp-python \
      -r "$requirements" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    fail "pip install -r $requirements failed (full log: $log)"
  fi
  "$venv/bin/python" -c "import llama_cpp, gguf, numpy" \
    || fail "the venv at $venv cannot import llama_cpp, gguf and numpy"
  echo "$stamp_want" >"$venv/.peer-stamp"
  echo "llamacpp_peer.sh: venv ready (build log: $log)" >&2
}

install_venv
if [ "${1:-}" = "--install-only" ]; then
  exit 0
fi
exec "$venv/bin/python" "$here/llamacpp_peer.py" "$@"
