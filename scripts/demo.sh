#!/usr/bin/env bash
# The README's first command: set up, then run the bundled default model (SmolLM2-135M, GGUF)
# on a prompt, and show what llmc sees in it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cache=${LLMC_CACHE:-$HOME/.cache/llmc}
model=$cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
cargo build --release -q -p llmc
llmc=target/release/llmc
$llmc inspect "$model" | head -20
echo
echo "--- greedy continuation (reference interpreter) ---"
$llmc run "$model" --prompt "The capital of France is" -n 24
