"""llama.cpp as llmc's peer: speed and quality of SmolLM2-135M on the same weights and tokens.

Run it through scripts/llamacpp_peer.sh, which provides the pinned venv (llama-cpp-python built
for this CPU, gguf, numpy). Three modes:

  prepare   Write an F32 GGUF of SmolLM2-135M by dequantizing every tensor of the shipped
            Q4_1 GGUF (all metadata copied), then quantize it with llama.cpp's own quantizer
            to Q8_0, Q4_0 and Q4_K_M. Files are cached in ${LLMC_CACHE:-~/.cache/llmc}/peer/.
  bench     Prefill of 128 tokens from an empty cache and batch-1 decode at context 128, for
            F32, Q8_0 and Q4_0 with 1 and 2 threads: tokens/s, median and min-max over runs.
  quality   The ASSETS.md evaluation protocol (SOTU 2016-2021, 16 windows of 512 tokens, each
            from an empty cache, 8,176 predicted tokens): perplexity, mean KL(F32 || quantized),
            top-1 agreement with F32, and bits per weight of the linear layers.

bench and quality run prepare first (a no-op once the files are cached); both print a table
and write JSON to --json. llama.cpp runs as it ships: f16 KV cache, default flash-attention
choice, logits of the last token only during prefill, all logits in quality mode.
"""

import argparse
import ctypes
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import gguf
from gguf.quants import dequantize
import llama_cpp as L

SOURCE_NAME = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

EVAL_YEARS = range(2016, 2022)
EVAL_TEXT_BYTES = 211_660
EVAL_TEXT_SHA256 = "fb4e51482722b21ed1041940a5e56ccd2c6315adbcc484ce9b37fc7e39208548"
EVAL_TEXT_TOKENS = 45_385
WINDOW = 512
N_WINDOWS = 16

# llama.cpp file types made from the F32 GGUF.
QUANT_FTYPES = {
    "Q8_0": L.LLAMA_FTYPE_MOSTLY_Q8_0,
    "Q4_0": L.LLAMA_FTYPE_MOSTLY_Q4_0,
    "Q4_K_M": L.LLAMA_FTYPE_MOSTLY_Q4_K_M,
}
BENCH_MODELS = ("F32", "Q8_0", "Q4_0")
QUALITY_MODELS = ("F32", "Q8_0", "Q4_0", "Q4_K_M")

# Figures this protocol gave before (ASSETS.md, issue 4), printed beside the measured ones.
EXPECTED = {
    "F32": {"ppl": 24.897, "bpw": 32.0},
    "Q8_0": {"dppl_pct": 0.74, "bpw": 8.5},
    "Q4_0": {"dppl_pct": 21.3, "bpw": 4.5},
    "Q4_K_M": {"dppl_pct": 4.66, "bpw": 5.53},
}

LINEAR_RE = re.compile(r"^blk\.\d+\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)\.weight$")


def fail(message):
    raise SystemExit(f"llamacpp_peer: {message}")


def log(message):
    print(f"[peer] {message}", file=sys.stderr, flush=True)


def cache_dir():
    return Path(os.environ.get("LLMC_CACHE", Path.home() / ".cache" / "llmc"))


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# llama.cpp logging: keep warnings and errors, drop the load-time chatter unless --verbose.

# ggml_log_level in vendor/llama.cpp/ggml/include/ggml.h: DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5.
_LOG_WARN, _LOG_ERROR, _LOG_CONT = 3, 4, 5
_log_state = {"verbose": False, "last": 0}


@L.llama_log_callback
def _llama_log(level, text, _user_data):
    if level == _LOG_CONT:
        level = _log_state["last"]
    _log_state["last"] = level
    if _log_state["verbose"] or level in (_LOG_WARN, _LOG_ERROR):
        sys.stderr.write(text.decode("utf-8", "replace"))


def init_llama(verbose):
    _log_state["verbose"] = verbose
    L.llama_log_set(_llama_log, ctypes.c_void_p(0))
    L.llama_backend_init()


# ---------------------------------------------------------------------------------------------
# prepare: F32 GGUF from the shipped Q4_1 GGUF, then llama.cpp's quantizer.

# Keys the writer produces itself or that describe the source's quantization.
SKIPPED_KEYS = ("general.architecture", "general.file_type", "general.quantization_version")


def copy_metadata(reader, writer):
    """Copy every key/value of reader into writer, except the file-structure ones."""
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in SKIPPED_KEYS:
            continue
        if name == "general.alignment":
            writer.add_custom_alignment(int(field.contents()))
            continue
        vtype = field.types[0]
        sub_type = None
        if vtype == gguf.GGUFValueType.ARRAY:
            if len(field.types) != 2:
                fail(f"metadata key {name}: nested arrays are not supported")
            sub_type = field.types[1]
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub_type)
    writer.add_file_type(L.LLAMA_FTYPE_ALL_F32)


def dequantized_tensors(reader):
    """Yield (name, f32 array in numpy order) for every tensor of reader."""
    for t in reader.tensors:
        array = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        want = tuple(int(n) for n in reversed(t.shape))
        if array.shape != want:
            fail(f"tensor {t.name}: dequantized shape {array.shape}, expected {want}")
        yield t.name, array


def write_f32_gguf(source, dest):
    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    tmp = dest.with_suffix(".tmp")
    writer = gguf.GGUFWriter(tmp, arch)
    copy_metadata(reader, writer)
    for name, array in dequantized_tensors(reader):
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(dest)


def quantize_gguf(source, dest, ftype):
    params = L.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    tmp = dest.with_suffix(".tmp")
    rc = L.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0 or not tmp.exists():
        fail(f"llama_model_quantize({source} -> {dest}, ftype {ftype}) returned {rc}")
    tmp.replace(dest)


def prepare_models(args):
    """Return {name: path} of the F32 and quantized GGUFs, making the missing ones."""
    source = Path(args.model) if args.model else cache_dir() / SOURCE_NAME
    if not source.exists():
        fail(f"{source} not found: run scripts/setup.sh --assets")
    out_dir = cache_dir() / "peer"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"F32": out_dir / "smollm2-f32.gguf"}
    if not paths["F32"].exists():
        if not args.model and sha256_of(source) != SOURCE_SHA256:
            fail(f"{source} does not match sha256 {SOURCE_SHA256}")
        log(f"writing {paths['F32']} from {source}")
        start = time.perf_counter()
        write_f32_gguf(source, paths["F32"])
        log(f"  done in {time.perf_counter() - start:.1f} s")
    for name, ftype in QUANT_FTYPES.items():
        paths[name] = out_dir / f"smollm2-{name.lower()}.gguf"
        if not paths[name].exists():
            log(f"quantizing to {paths[name]}")
            start = time.perf_counter()
            quantize_gguf(paths["F32"], paths[name], ftype)
            log(f"  done in {time.perf_counter() - start:.1f} s")
    return paths


# ---------------------------------------------------------------------------------------------
# What a GGUF holds: bits per weight of the linears, bytes a decoded token reads.


def type_bits(tensor_type):
    block, nbytes = gguf.GGML_QUANT_SIZES[tensor_type]
    return 8.0 * nbytes / block


def weight_summary(path):
    reader = gguf.GGUFReader(path)
    bits = weights = 0.0
    mix = {}
    types = {}
    total_bytes = 0
    for t in reader.tensors:
        total_bytes += int(t.n_bytes)
        types[t.name] = t.tensor_type.name
        if not LINEAR_RE.match(t.name):
            continue
        n = int(t.n_elements)
        bits += n * type_bits(t.tensor_type)
        weights += n
        entry = mix.setdefault(t.tensor_type.name, {"tensors": 0, "weights": 0})
        entry["tensors"] += 1
        entry["weights"] += n
    if weights == 0:
        fail(f"{path}: no linear layers found")
    return {
        "linear_bpw": bits / weights,
        "linear_weights": int(weights),
        "linear_mix": mix,
        "token_embd_type": types.get("token_embd.weight"),
        "output_type": types.get("output.weight", "tied to token_embd"),
        # Every tensor is read once per decoded token (the tied embedding as the output head).
        "weight_bytes": total_bytes,
        "file_bytes": path.stat().st_size,
    }


def mix_text(mix):
    total = sum(e["weights"] for e in mix.values())
    parts = sorted(mix.items(), key=lambda kv: -kv[1]["weights"])
    return ", ".join(f"{name} {100.0 * e['weights'] / total:.0f}%" for name, e in parts)


# ---------------------------------------------------------------------------------------------
# A model and one context through llama.cpp's C API.


class Session:
    """One model, one context with an f16 KV cache of n_ctx tokens, one token batch."""

    def __init__(self, path, n_ctx, threads):
        self.path = path
        self.n_ctx = n_ctx
        self.model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
        if not self.model:
            fail(f"llama.cpp could not load {path}")
        params = L.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_ctx
        params.n_ubatch = n_ctx
        params.n_seq_max = 1
        params.n_threads = threads
        params.n_threads_batch = threads
        self.config = {
            "n_ctx": n_ctx,
            "kv_cache_type": gguf.GGMLQuantizationType(params.type_k).name,
            "flash_attn": L.llama_flash_attn_type_name(params.flash_attn_type).decode(),
        }
        self.ctx = L.llama_init_from_model(self.model, params)
        if not self.ctx:
            fail(f"llama.cpp could not create a context for {path}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.memory = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(n_ctx, 0, 1)

    def close(self):
        L.llama_batch_free(self.batch)
        L.llama_free(self.ctx)
        L.llama_model_free(self.model)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def set_threads(self, threads):
        L.llama_set_n_threads(self.ctx, threads, threads)

    def clear(self):
        L.llama_memory_clear(self.memory, True)

    def tokenize(self, text):
        data = text.encode("utf-8")
        buf = (L.llama_token * (len(data) + 8))()
        n = L.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, False)
        if n < 0:
            fail(f"llama_tokenize needs {-n} tokens of room")
        return list(buf[:n])

    def decode(self, tokens, first_pos, all_logits):
        """Append tokens at positions first_pos..; logits for every token or only the last."""
        n = len(tokens)
        if n > self.n_ctx or first_pos + n > self.n_ctx:
            fail(f"decode of {n} tokens at {first_pos} exceeds n_ctx {self.n_ctx}")
        b = self.batch
        b.n_tokens = n
        for i, tok in enumerate(tokens):
            b.token[i] = tok
            b.pos[i] = first_pos + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = 1 if all_logits or i == n - 1 else 0
        rc = L.llama_decode(self.ctx, b)
        if rc != 0:
            fail(f"llama_decode returned {rc} ({self.path.name}, {n} tokens at {first_pos})")
        L.llama_synchronize(self.ctx)

    def logits(self, rows):
        """The logits of the last decode: rows x n_vocab, copied out of llama.cpp's buffer."""
        ptr = L.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(rows, self.n_vocab)).copy()


# ---------------------------------------------------------------------------------------------
# Evaluation text (ASSETS.md).


def eval_text(sotu_dir):
    files = sorted(p for p in sotu_dir.glob("*.txt") if p.name[:4].isdigit() and int(p.name[:4]) in EVAL_YEARS)
    if len(files) != len(EVAL_YEARS):
        fail(f"{sotu_dir}: expected {len(EVAL_YEARS)} files for 2016-2021, found {len(files)}")
    text = "\n\n".join(p.read_text(encoding="utf-8").strip() for p in files)
    data = text.encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != EVAL_TEXT_BYTES or digest != EVAL_TEXT_SHA256:
        fail(f"evaluation text is {len(data)} bytes, sha256 {digest}; expected "
             f"{EVAL_TEXT_BYTES} bytes, sha256 {EVAL_TEXT_SHA256}")
    return text


def eval_tokens(session, sotu_dir):
    ids = session.tokenize(eval_text(sotu_dir))
    if len(ids) != EVAL_TEXT_TOKENS:
        fail(f"llama.cpp tokenizes the evaluation text into {len(ids)} tokens, the protocol "
             f"says {EVAL_TEXT_TOKENS}: tokenizers disagree")
    return ids


# ---------------------------------------------------------------------------------------------
# bench


def spread(samples):
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "runs": [round(s, 3) for s in samples],
    }


def time_prefill(session, tokens, runs):
    """Tokens/s of one batch of len(tokens) from an empty cache, logits of the last token."""
    rates = []
    for run in range(runs + 1):
        session.clear()
        start = time.perf_counter()
        session.decode(tokens, 0, all_logits=False)
        elapsed = time.perf_counter() - start
        if run > 0:  # run 0 warms caches and llama.cpp's graph allocator
            rates.append(len(tokens) / elapsed)
    return rates


def time_decode(session, context, following, runs):
    """Tokens/s of one-token decodes of `following` after `context` is in the cache."""
    rates = []
    for run in range(runs + 1):
        session.clear()
        session.decode(context, 0, all_logits=False)
        start = time.perf_counter()
        for i, tok in enumerate(following):
            session.decode([tok], len(context) + i, all_logits=False)
        elapsed = time.perf_counter() - start
        if run > 0:
            rates.append(len(following) / elapsed)
    return rates


def bench(args, paths):
    threads_list = [int(t) for t in args.threads.split(",")]
    n_ctx = WINDOW
    if args.context + args.steps > n_ctx or args.prefill > n_ctx:
        fail(f"--prefill, --context + --steps must fit in {n_ctx} tokens")
    rows = []
    for name in BENCH_MODELS:
        summary = weight_summary(paths[name])
        with Session(paths[name], n_ctx, threads_list[0]) as session:
            ids = eval_tokens(session, cache_dir() / "sotu")
            prompt = ids[: args.prefill]
            context = ids[: args.context]
            following = ids[args.context: args.context + args.steps]
            for threads in threads_list:
                session.set_threads(threads)
                prefill = spread(time_prefill(session, prompt, args.runs))
                decode = spread(time_decode(session, context, following, args.runs))
                row = {
                    "model": name,
                    "threads": threads,
                    "prefill_tokens": len(prompt),
                    "prefill_tok_s": prefill,
                    "decode_context": len(context),
                    "decode_steps": args.steps,
                    "decode_tok_s": decode,
                    "weight_bytes": summary["weight_bytes"],
                    "decode_weight_GB_s": summary["weight_bytes"] * decode["median"] / 1e9,
                    "context_config": session.config,
                }
                rows.append(row)
                log(f"{name} t={threads}: prefill {prefill['median']:.1f} tok/s, "
                    f"decode {decode['median']:.2f} tok/s")
    print_bench(rows)
    return {"mode": "bench", "runs": args.runs, "rows": rows}


def print_bench(rows):
    print()
    print(f"{'model':<7} {'thr':>3}  {'prefill tok/s (min-max)':>28}  {'decode tok/s (min-max)':>26}  {'GB/s':>6}")
    for r in rows:
        p, d = r["prefill_tok_s"], r["decode_tok_s"]
        print(f"{r['model']:<7} {r['threads']:>3}  "
              f"{p['median']:>9.1f} ({p['min']:>7.1f}-{p['max']:<7.1f})  "
              f"{d['median']:>8.2f} ({d['min']:>6.2f}-{d['max']:<6.2f})  "
              f"{r['decode_weight_GB_s']:>6.2f}")
    print("prefill: 128 tokens from an empty cache; decode: one token at a time after 128;"
          " GB/s: weight bytes read per token x decode tok/s")


# ---------------------------------------------------------------------------------------------
# quality


def log_softmax(logits):
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return x


def window_logprobs(session, window):
    """Log-probabilities at positions 0..n-2 of a window evaluated from an empty cache."""
    session.clear()
    session.decode(window, 0, all_logits=True)
    return log_softmax(session.logits(len(window))[:-1])


class Scores:
    """Running sums for perplexity, KL(reference || model) and top-1 agreement."""

    def __init__(self):
        self.nll = 0.0
        self.kl = 0.0
        self.top1 = 0
        self.count = 0

    def add(self, logp, ref_logp, targets):
        rows = np.arange(len(targets))
        self.nll -= float(logp[rows, targets].sum())
        self.kl += float((np.exp(ref_logp) * (ref_logp - logp)).sum())
        self.top1 += int((logp.argmax(-1) == ref_logp.argmax(-1)).sum())
        self.count += len(targets)

    def result(self):
        return {
            "predicted_tokens": self.count,
            "ppl": math.exp(self.nll / self.count),
            "kl": self.kl / self.count,
            "top1": self.top1 / self.count,
        }


def quality(args, paths):
    threads = os.cpu_count() or 1
    sessions = {name: Session(paths[name], WINDOW, threads) for name in QUALITY_MODELS}
    try:
        ids = eval_tokens(sessions["F32"], cache_dir() / "sotu")
        scores = {name: Scores() for name in QUALITY_MODELS}
        start = time.perf_counter()
        for w in range(N_WINDOWS):
            window = ids[w * WINDOW:(w + 1) * WINDOW]
            targets = np.asarray(window[1:])
            ref = window_logprobs(sessions["F32"], window)
            scores["F32"].add(ref, ref, targets)
            for name in QUALITY_MODELS[1:]:
                scores[name].add(window_logprobs(sessions[name], window), ref, targets)
            log(f"window {w + 1}/{N_WINDOWS}: F32 running ppl {scores['F32'].result()['ppl']:.3f}")
        elapsed = time.perf_counter() - start
    finally:
        for s in sessions.values():
            s.close()
    rows = []
    base_ppl = scores["F32"].result()["ppl"]
    for name in QUALITY_MODELS:
        row = {"model": name, **scores[name].result(), **weight_summary(paths[name])}
        row["dppl_pct"] = 100.0 * (row["ppl"] / base_ppl - 1.0)
        row["expected"] = EXPECTED[name]
        rows.append(row)
    print_quality(rows)
    return {
        "mode": "quality",
        "text_tokens": len(ids),
        "windows": N_WINDOWS,
        "window": WINDOW,
        "tokenizer": "llama.cpp (no BOS)",
        "threads": threads,
        "context_config": sessions["F32"].config,
        "eval_seconds": elapsed,
        "rows": rows,
    }


def print_quality(rows):
    print()
    print(f"{'model':<7} {'bpw':>6} {'ppl':>8} {'dppl':>8} {'KL':>8} {'top-1':>7}   "
          f"{'expected':<18} linear mix")
    for r in rows:
        exp = r["expected"]
        expected = (f"ppl {exp['ppl']:.3f}" if "ppl" in exp else f"{exp['dppl_pct']:+.2f}% @ {exp['bpw']}")
        print(f"{r['model']:<7} {r['linear_bpw']:>6.3f} {r['ppl']:>8.3f} {r['dppl_pct']:>+7.2f}% "
              f"{r['kl']:>8.5f} {100 * r['top1']:>6.2f}%   {expected:<18} {mix_text(r['linear_mix'])}")
    n = rows[0]["predicted_tokens"]
    print(f"{n} predicted tokens; KL(F32 || model) in nats per token; top-1 agreement with F32;"
          " bpw over the 210 linear layers")


# ---------------------------------------------------------------------------------------------


def environment():
    return {
        "llama_cpp_python": L.__version__,
        "gguf": importlib.metadata.version("gguf"),
        "system_info": L.llama_print_system_info().decode(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
    }


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("prepare", "bench", "quality"))
    parser.add_argument("--json", help="write the results as JSON to this path")
    parser.add_argument("--model", help="source GGUF (default: the cached SmolLM2 Q4_1)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per figure (bench)")
    parser.add_argument("--threads", default="1,2", help="thread counts (bench)")
    parser.add_argument("--prefill", type=int, default=128, help="prefill length (bench)")
    parser.add_argument("--context", type=int, default=128, help="context before decode (bench)")
    parser.add_argument("--steps", type=int, default=32, help="timed decode steps (bench)")
    parser.add_argument("--verbose", action="store_true", help="show llama.cpp's own log")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    init_llama(args.verbose)
    env = environment()
    paths = prepare_models(args)
    if args.mode == "prepare":
        for name, path in paths.items():
            s = weight_summary(path)
            print(f"{name:<7} {path}  linears {s['linear_bpw']:.3f} bpw ({mix_text(s['linear_mix'])}),"
                  f" token_embd {s['token_embd_type']}")
        return
    result = bench(args, paths) if args.mode == "bench" else quality(args, paths)
    env["loadavg_at_end"] = os.getloadavg()
    print(f"load average at start {env['loadavg_at_start'][0]:.2f}, at end {env['loadavg_at_end'][0]:.2f}"
          f" on {env['cpu_count']} CPUs (other work running makes timings noisy)")
    result["environment"] = env
    result["models"] = {name: str(path) for name, path in paths.items()}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main(sys.argv[1:])
