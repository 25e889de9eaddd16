#!/usr/bin/env bash
# The CPU benchmark of issue 3, in one run: SmolLM2-135M as llmc bundles (f32, w8a8, w4a8)
# and through llama.cpp (F32, Q8_0, Q4_0 from the same weights), batch-1 decode at context
# 128 and a 128-token prefill, 1 and 2 threads, beside the machine's read bandwidth and
# AVX-512 VNNI peak. Run it on an otherwise idle machine:
#   scripts/bench_cpu.sh [OUT_DIR]      (default: bench-out; JSON and tables are left there)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-out}
mkdir -p "$out"
cache=${LLMC_CACHE:-$HOME/.cache/llmc}
model=$cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
bash scripts/setup.sh --assets >/dev/null
cargo build -q -p llmc
llmc=target/debug/llmc
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for q in none w8a8 w4a8; do
  "$llmc" build "$model" -o "$out/$q" --name smol --quant "$q" --max-context 512 --max-tokens 128 --force >/dev/null
done
# the machine's limits once, with the f32 bundle
"$llmc" bench "$out/none" --threads 1,2 --runs 5 --decode 32 --machine --json >"$out/llmc-none.json"
for q in w8a8 w4a8; do
  "$llmc" bench "$out/$q" --threads 1,2 --runs 5 --decode 32 --json >"$out/llmc-$q.json"
done
bash scripts/llamacpp_peer.sh bench --runs 5 --threads 1,2 --json "$out/llamacpp.json" >"$out/llamacpp.txt"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$out" <<'PY'
import json, sys, os
out = sys.argv[1]
llmc = {q: json.load(open(os.path.join(out, f"llmc-{q}.json"))) for q in ("none", "w8a8", "w4a8")}
peer = json.load(open(os.path.join(out, "llamacpp.json")))
limits = {r["threads"]: r["machine"] for r in llmc["none"]["results"]}
rows = []
for q, label in (("none", "llmc f32"), ("w8a8", "llmc w8a8"), ("w4a8", "llmc w4a8")):
    for r in llmc[q]["results"]:
        rows.append((label, r["threads"], r["prefill_tokens_per_s"]["median"], r["decode_tokens_per_s"]["median"],
                     r["decode_weight_gb_per_s"]["median"], r["prefill_linear_gops"]["median"]))
for r in peer["rows"]:
    rows.append((f"llama.cpp {r['model']}", r["threads"], r["prefill_tok_s"]["median"], r["decode_tok_s"]["median"],
                 r["decode_weight_GB_s"], float("nan")))
print(f"{'':<18}{'threads':>8}{'prefill tok/s':>15}{'decode tok/s':>14}{'decode GB/s':>13}{'prefill GOPS':>14}")
for label, t, pf, dc, gb, gops in sorted(rows, key=lambda r: (r[1], r[0])):
    print(f"{label:<18}{t:>8}{pf:>15.1f}{dc:>14.1f}{gb:>13.2f}{gops:>14.1f}")
for t, m in sorted(limits.items()):
    print(f"machine, {t} thread(s): read bandwidth {m['read_gb_per_s']:.1f} GB/s, VNNI peak {m['vnni_gops'] or 0:.0f} GOPS")
PY
