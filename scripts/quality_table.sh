#!/usr/bin/env bash
# The README's quality table: SmolLM2-135M compressed by llmc under each configuration,
# measured with the ASSETS.md protocol (SOTU 2016-2021, 16 windows of 512 tokens from an
# empty cache, 8,176 predicted tokens; KL and top-1 against the uncompressed model, which
# the same run measures), beside llama.cpp's Q8_0 / Q4_0 / Q4_K_M on the same tokens.
#
#   scripts/quality_table.sh [--set quant|prune|lowrank|share|all] [--rows NAME,NAME...] [--no-peer]
#
# --set quant (the default) measures the quantization rows, prune the pruning rows, lowrank
# the factored (SVD, SVD-LLM) and CALDERA rows beside 2-bit GPTQ, share the palettized and
# locally distilled rows, all of them.
# Each llmc row is one `llmc build ... --eval --keep-head` (the 210 linear layers are
# compressed; the tied embedding / output head stays as shipped, Q8_0, which the reference
# decodes alike). Calibration: 64 windows of 512 tokens from SOTU 1950-1999, as ASSETS.md
# says. bpw counts every scale and zero point of the 210 linears. "compress s" is the time
# of the compression passes (calibration included); "build s" the whole build without the
# evaluation. Results: target/quality/<row>/report.json and target/quality/table.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cache=${LLMC_CACHE:-$HOME/.cache/llmc}
model=$cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
out=$root/target/quality
rows_wanted=""
peer=1
set_name=quant
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) rows_wanted=$2; shift 2 ;;
    --no-peer) peer=0; shift ;;
    --set) set_name=$2; shift 2 ;;
    *) echo "quality_table.sh: unknown argument '$1' (takes --set, --rows A,B and --no-peer)" >&2; exit 2 ;;
  esac
done
[ -f "$model" ] || { echo "quality_table.sh: $model is missing; run scripts/setup.sh" >&2; exit 1; }

# name | llmc build flags
quant_configs=(
  "w8a16 rtn pc|--quant w8a16"
  "w8a8 rtn|--quant w8a8"
  "w8a8 smoothquant|--quant w8a8 --quant-method smoothquant"
  "w4a16 g128 rtn|--quant w4a16 --group 128"
  "w4a16 g128 gptq|--quant w4a16 --group 128 --quant-method gptq"
  "w4a16 g128 awq|--quant w4a16 --group 128 --quant-method awq"
  "w4a8 g128 gptq|--quant w4a8 --group 128 --quant-method gptq"
  "w3a16 g128 gptq|--quant w3a16 --group 128 --quant-method gptq"
  "mixed w4/w8 5.5 gptq|--quant w4a16 --group 128 --quant-method gptq --bpw 5.5"
)
# unstructured pruned weights stay dense (bpw of their storage, f32 or the quantized encoding);
# 2:4 weights are stored as !sp24 (half the values and a 2-bit position each)
prune_configs=(
  "magnitude 50%|--prune magnitude:0.5"
  "wanda 50%|--prune wanda:0.5"
  "sparsegpt 50%|--prune sparsegpt:0.5"
  "wanda 2:4|--prune wanda:2:4"
  "sparsegpt 2:4|--prune sparsegpt:2:4"
  "wanda 2:4 + w4a16 g128 rtn|--prune wanda:2:4 --quant w4a16 --group 128"
  "sparsegpt 2:4 + w4a16 g128 rtn|--prune sparsegpt:2:4 --quant w4a16 --group 128"
  "ffn 25% channels (calibrated)|--prune ffn:0.25"
  "ffn 25% channels (prunenet)|--prune ffn-prunenet:0.25"
  "ffn 25% channels (self-calibrated, no data)|--prune ffn:0.25 --calib-self"
  "wanda 50% (self-calibrated, no data)|--prune wanda:0.5 --calib-self"
  "4 layers removed (shortgpt)|--prune layers:4"
  "1/3 of query heads|--prune heads:0.25"
)
# low-rank rows: bpw over the original parameter count (factors are f32 unless quantized)
# CALDERA against GPTQ at equal or more bits: w2 g32 (2.75 bpw) against q2 + rank 32, the
# table's w3a16 g128 gptq (3.328) against q3 + rank 8; a group of 192 divides SmolLM2's rows
# of 576 and 1536, where 128 falls back to 64
lowrank_configs=(
  "svd 70% of values|--lowrank svd:0.7"
  "svd-llm 70% of values|--lowrank svd-llm:0.7"
  "w2a16 g64 asym gptq|--passes quantize{bits=2,group=64,zero=asym,method=gptq,head=false}"
  "w2a16 g32 asym gptq|--passes quantize{bits=2,group=32,zero=asym,method=gptq,head=false}"
  "w3a16 g128 gptq|--quant w3a16 --group 128 --quant-method gptq"
  "caldera q2 g192 + rank 32 w4|--passes caldera{bits=2,group=192,rank=32}"
  "caldera q2 + rank 64 w4|--passes caldera{bits=2,rank=64}"
  "caldera q3 g192 + rank 8 w4|--passes caldera{bits=3,group=192,rank=8}"
)
# weight sharing and local distillation: palettes count their codebooks (f16 entries); a
# distilled row adds its bias (not a linear weight) and any correction branch (f16, counted);
# after structured pruning --distill compensates what was removed: the mean output of removed
# channels and heads, a rank-64 bridge for each run of removed layers
share_configs=(
  "palettize 16 per tensor, unweighted|--passes palettize{bits=4,head=false,weighted=false}"
  "palettize 16 per tensor|--palettize 16"
  "palettize 16 per 128 rows|--palettize 16:128"
  "palettize 16 per 128 rows + distill|--palettize 16:128 --distill"
  "w4a16 g128 rtn + distill|--quant w4a16 --group 128 --distill"
  "w4a16 g128 rtn + distill rank 8|--quant w4a16 --group 128 --distill rank:8"
  "w3a16 g128 gptq + distill|--quant w3a16 --group 128 --quant-method gptq --distill"
  "w3a16 g128 gptq + distill rank 8|--quant w3a16 --group 128 --quant-method gptq --distill rank:8"
  "w4a16 g128 rtn + entropy coding|--quant w4a16 --group 128 --entropy"
  "w4a16 g128 rtn + distill + entropy coding|--quant w4a16 --group 128 --distill --entropy"
  "wanda 50% + distill|--prune wanda:0.5 --distill"
  "wanda 50% + distill rank 8|--prune wanda:0.5 --distill rank:8"
  "wanda 2:4 + w4a16 g128 rtn + distill|--prune wanda:2:4 --quant w4a16 --group 128 --distill"
  "svd-llm 70% + distill|--lowrank svd-llm:0.7 --distill"
  "magnitude 50% + distill|--prune magnitude:0.5 --distill"
  "sparsegpt 50% + distill|--prune sparsegpt:0.5 --distill"
  "sparsegpt 2:4 + w4a16 g128 rtn + distill|--prune sparsegpt:2:4 --quant w4a16 --group 128 --distill"
  "palettize 16 per tensor + distill|--palettize 16 --distill"
  "caldera q2 g192 + rank 32 w4 + distill|--passes caldera{bits=2,group=192,rank=32},distill"
  "caldera q3 g192 + rank 8 w4 + distill|--passes caldera{bits=3,group=192,rank=8},distill"
  "ffn 25% channels + distill|--prune ffn:0.25 --distill"
  "1/3 of query heads + distill|--prune heads:0.25 --distill"
  "4 layers removed + distill|--prune layers:4 --distill"
  "wanda 2:4 + distill|--prune wanda:2:4 --distill"
  "sparsegpt 2:4 + distill|--prune sparsegpt:2:4 --distill"
)
case "$set_name" in
  quant) configs=("${quant_configs[@]}") ;;
  share) configs=("${share_configs[@]}"); peer=0 ;;
  prune) configs=("${prune_configs[@]}"); peer=0 ;;
  lowrank) configs=("${lowrank_configs[@]}"); peer=0 ;;
  all) configs=("${quant_configs[@]}" "${prune_configs[@]}" "${lowrank_configs[@]}" "${share_configs[@]}") ;;
  *) echo "quality_table.sh: --set takes quant, prune, lowrank, share or all, not '$set_name'" >&2; exit 2 ;;
esac

cd "$root"
cargo build -q -p llmc
out=$out/$set_name
mkdir -p "$out"
# a copy, so rebuilding llmc while the table runs does not change its rows
cp "$root/target/debug/llmc" "$out/llmc"
llmc=$out/llmc
results=$out/results.tsv
: >"$results"
for c in "${configs[@]}"; do
  name=${c%%|*}
  flags=${c#*|}
  slug=$(echo "$name" | tr ' /.' '___')
  if [ -n "$rows_wanted" ] && [[ ",$rows_wanted," != *",$name,"* ]] && [[ ",$rows_wanted," != *",$slug,"* ]]; then
    continue
  fi
  echo "== $name: llmc build $flags" >&2
  dir=$out/$slug
  # shellcheck disable=SC2086
  "$llmc" build "$model" -o "$dir" --force --keep-head --eval $flags >"$dir.log" 2>&1 \
    || { tail -n 20 "$dir.log" >&2; echo "quality_table.sh: row '$name' failed (log: $dir.log)" >&2; exit 1; }
  python3 - "$name" "$dir/report.json" "$dir.log" >>"$results" <<'EOF'
import json, re, sys
name, report, log = sys.argv[1:]
r = json.load(open(report))
text = open(log).read()
compress = sum(float(m) for m in re.findall(r"^pass \S+\s+([0-9.]+) s", text, re.M))
build = float(re.search(r"^built .* in ([0-9.]+) s", text, re.M).group(1))
e, t = r["eval"], r["totals"]
dppl = 100 * (e["perplexity"] / e["reference_perplexity"] - 1)
import glob, os
files = glob.glob(os.path.join(os.path.dirname(report), "*.weights"))
mb = f"{os.path.getsize(files[0]) / 1e6:.1f}" if files else "-"
print("\t".join(map(str, [name, f"{t['bits_per_weight']:.3f}", f"{e['perplexity']:.3f}",
                          f"{dppl:+.2f}%", f"{e['kl']:.4f}", f"{100 * e['top1']:.2f}%",
                          f"{compress:.0f}", f"{build:.0f}", e["reference_perplexity"], e["predicted"], mb])))
EOF
  tail -n 1 "$results" >&2
done

if [ "$set_name" = quant ] || [ "$set_name" = all ]; then
  # MiniLM-L6 (true fp32 weights): sentence embeddings under w8a8 and w4a16 g128
  echo "== MiniLM-L6 embeddings (cargo test --test compress minilm)" >&2
  cargo test -q -p llmc --test compress minilm -- --nocapture 2>&1 | grep "MiniLM-L6" | tee "$out/minilm.txt" >&2
fi

peer_json=$out/llamacpp.json
if [ "$peer" = 1 ]; then
  echo "== llama.cpp (scripts/llamacpp_peer.sh quality)" >&2
  "$here/llamacpp_peer.sh" quality --json "$peer_json" >&2
fi

python3 - "$results" "$peer_json" "$peer" <<'EOF' | tee "$out/table.md"
import json, os, sys
results, peer_json, peer = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(results) if l.strip()]
ref = float(rows[0][8]) if rows else float("nan")
n = rows[0][9] if rows else "?"
print(f"SmolLM2-135M, ASSETS.md protocol: {n} predicted tokens; uncompressed perplexity {ref:.3f}.")
print("bpw: bits per weight of the 210 linear layers, every scale and zero included.\n")
print("weights MB: the bundle's weights file on disk (tied embedding, head and norms included).\n")
print("| configuration | bpw | perplexity | Δppl | KL | top-1 | weights MB | compress s | build s |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    mb = r[10] if len(r) > 10 else "-"
    print(f"| llmc {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {mb} | {r[6]} | {r[7]} |")
if peer == "1" and os.path.exists(peer_json):
    for r in json.load(open(peer_json))["rows"]:
        if r["model"] == "F32":
            continue
        print(f"| llama.cpp {r['model']} | {r['linear_bpw']:.3f} | {r['ppl']:.3f} | {r['dppl_pct']:+.2f}% "
              f"| {r['kl']:.4f} | {100 * r['top1']:.2f}% | - | - | - |")
minilm = os.path.join(os.path.dirname(results), "minilm.txt")
if os.path.exists(minilm):
    print()
    for line in open(minilm):
        print(line.strip())
EOF
