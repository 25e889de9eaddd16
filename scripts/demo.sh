#!/usr/bin/env bash
# The README's first command: set up, compile the bundled default model (SmolLM2-135M, GGUF)
# into a w4a8 bundle for this machine, and run the compiled code on a prompt.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cache=${LLMC_CACHE:-$HOME/.cache/llmc}
model=$cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
cargo build -q -p llmc
llmc=target/debug/llmc
$llmc inspect "$model"
echo
$llmc build "$model" --quant w4a8 -o out/smol --name smol --max-context 512 --force
echo
echo "--- greedy continuation, compiled code (out/smol/libsmol.so) ---"
$llmc run out/smol --prompt "The capital of France is" -n 24
echo
$llmc bench out/smol --runs 3
