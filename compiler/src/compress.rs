//! What `llmc build` does between reading a model and generating code: the compression
//! pipeline the flags ask for, the calibration data it reads, the accuracy budget, and the
//! report table.

use crate::eval::{evaluate, join_texts, year_files, EvalResult, Protocol};
use crate::frontend::{Model, ModelKind};
use llmc_ir::Session;
use llmc_passes::calib::{decoder_feeds, spaced_windows, Calibration};
use llmc_passes::core::pass::{Pass, Progress};
use llmc_passes::quant::{Method, QuantOptions, QuantizePass, Scheme};
use llmc_runtime::{Sampler, SamplerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The asset cache: `$LLMC_CACHE`, by default `~/.cache/llmc`.
pub fn cache_dir() -> PathBuf {
    if let Some(c) = std::env::var_os("LLMC_CACHE") {
        return PathBuf::from(c);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".cache/llmc")
}

/// The default text of a year range of the State of the Union corpus that `scripts/setup.sh`
/// fetches (calibration: 1950–1999; evaluation: 2016–2021).
pub fn sotu_files(from: u32, to: u32, flag: &str) -> Result<Vec<PathBuf>, String> {
    let dir = cache_dir().join("sotu");
    let files = year_files(&dir, from, to).map_err(|e| {
        format!("{flag}: no files given and the default text is missing ({e}); run scripts/setup.sh, or pass {flag} FILES")
    })?;
    if files.is_empty() {
        return Err(format!(
            "{flag}: no files given and {} has none from {from}–{to}; run scripts/setup.sh, or pass {flag} FILES",
            dir.display()
        ));
    }
    Ok(files)
}

/// The `--quant-method` choices: the quantizer's methods and SmoothQuant (a `smooth` pass
/// before round-to-nearest).
pub const METHODS: [&str; 4] = ["rtn", "gptq", "awq", "smoothquant"];

/// The passes behind `--quant SCHEME --group N --quant-method M`.
pub fn preset_pipeline(
    scheme: Scheme,
    group: Option<u32>,
    method: &str,
    keep_head: bool,
    bpw: Option<f64>,
) -> Result<Vec<Box<dyn Pass>>, String> {
    let (m, smooth) = match method {
        "smoothquant" => (Method::Rtn, true),
        other => (
            Method::parse(other).ok_or_else(|| {
                format!(
                    "--quant-method '{other}' is not a method llmc knows (choose one of {})",
                    METHODS.join(", ")
                )
            })?,
            false,
        ),
    };
    if method != "rtn" && scheme.bits().is_none() {
        return Err(format!(
            "--quant-method {method} chooses integer weights; --quant {} has none (use w8a8, w4a16, ...)",
            Scheme::NAMES
                .iter()
                .find(|n| Scheme::parse(n) == Some(scheme))
                .unwrap_or(&"none")
        ));
    }
    let mut opts = QuantOptions::preset(scheme, group).with_method(m);
    opts.head = !keep_head;
    if let Some(b) = bpw {
        if scheme.bits().is_none() {
            return Err(
                "--bpw mixes integer encodings; give --quant w4a16, w4a8, w3a16, ...".into(),
            );
        }
        if !(b > 0.0 && b <= 32.0) {
            return Err(format!(
                "--bpw {b} is not a bits-per-weight target (e.g. 5.5)"
            ));
        }
        opts.bpw = Some(b);
    }
    let mut out: Vec<Box<dyn Pass>> = Vec::new();
    if smooth {
        out.push(Box::new(llmc_passes::quant::smoothquant::SmoothPass { alpha: 0.5 }));
    }
    out.push(Box::new(QuantizePass {
        opts,
        reports: Vec::new(),
    }));
    Ok(out)
}

/// Rank of the map that stands in for each run of layers `--prune layers:N --distill` removes.
pub const LAYER_BRIDGE_RANK: usize = 64;

/// The pass behind `--prune SPEC`: `METHOD:FRACTION` (`wanda:0.5`), `N:M` (Wanda, `2:4`) or
/// `METHOD:N:M` (`sparsegpt:2:4`); methods magnitude, wanda, sparsegpt. Structured:
/// `ffn:F`/`ffn-prunenet:F` (FFN channels), `heads:F` (query heads, the same number from every
/// KV group), `heads-kv:F` (whole KV groups) and `layers:N` (N whole decoder layers, ShortGPT).
/// With `distill`, structured pruning compensates what it removes: FFN channels and heads by
/// their mean output, layers by a rank-[`LAYER_BRIDGE_RANK`] map fitted on calibration.
pub fn prune_pass(spec: &str, distill: bool) -> Result<Box<dyn Pass>, String> {
    use llmc_passes::prune::unstructured::{PruneMethod, PrunePass, Sparsity};
    let bad = || {
        format!(
            "--prune '{spec}' is not a pruning spec (write wanda:0.5, magnitude:0.5, sparsegpt:0.5, 2:4, sparsegpt:2:4, ffn:0.25, ffn-prunenet:0.25, heads:0.25, heads-kv:0.34 or layers:4)"
        )
    };
    if let Some((kind, f)) = spec
        .split_once(':')
        .filter(|(k, _)| *k == "heads" || *k == "heads-kv")
    {
        use llmc_passes::prune::heads::{HeadUnit, PruneHeadsPass};
        let fraction: f64 = f.parse().map_err(|_| bad())?;
        if !(0.0..1.0).contains(&fraction) {
            return Err(format!("--prune '{spec}': the fraction must lie in [0, 1)"));
        }
        let unit = if kind == "heads" {
            HeadUnit::Query
        } else {
            HeadUnit::Kv
        };
        return Ok(Box::new(PruneHeadsPass {
            fraction,
            unit,
            compensate: distill,
        }));
    }
    if let Some(("layers", n)) = spec.split_once(':') {
        let count: usize = n.parse().map_err(|_| {
            format!(
                "--prune '{spec}': layers:N removes N whole layers; N must be a positive integer"
            )
        })?;
        if count == 0 {
            return Err(format!(
                "--prune '{spec}': layers:N removes N whole layers; N must be a positive integer"
            ));
        }
        return Ok(Box::new(llmc_passes::prune::layers::DropLayersPass {
            count,
            compensate: distill,
            rank: if distill { LAYER_BRIDGE_RANK } else { 0 },
        }));
    }
    if let Some((kind, f)) = spec.split_once(':').filter(|(k, _)| k.starts_with("ffn")) {
        use llmc_passes::prune::ffn::{ChannelScore, PruneFfnPass};
        let score = match kind {
            "ffn" => ChannelScore::Activation,
            "ffn-prunenet" => ChannelScore::Spectral,
            _ => return Err(bad()),
        };
        let fraction: f64 = f.parse().map_err(|_| bad())?;
        if !(0.0..1.0).contains(&fraction) {
            return Err(format!("--prune '{spec}': the fraction must lie in [0, 1)"));
        }
        return Ok(Box::new(PruneFfnPass {
            fraction,
            score,
            compensate: distill,
        }));
    }
    let parts: Vec<&str> = spec.split(':').collect();
    let (method, rest) = match PruneMethod::parse(parts[0]) {
        Some(m) => (m, &parts[1..]),
        None => (PruneMethod::Wanda, &parts[..]),
    };
    let sparsity = match rest {
        [f] => {
            let f: f32 = f.parse().map_err(|_| bad())?;
            if !(0.0..1.0).contains(&f) {
                return Err(format!("--prune '{spec}': the fraction must lie in [0, 1)"));
            }
            Sparsity::Fraction(f)
        }
        [n, m] => {
            let (n, m): (usize, usize) =
                (n.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
            if m < 2 || n == 0 || n >= m {
                return Err(format!("--prune '{spec}': N:M keeps 0 < N < M of every M"));
            }
            Sparsity::NM { n, m }
        }
        _ => return Err(bad()),
    };
    Ok(Box::new(PrunePass {
        method,
        sparsity,
        damp: 0.01,
        head: false,
    }))
}

/// The low-rank pass behind `--lowrank METHOD:FRACTION`: `svd:0.7` or `svd-llm:0.7` keep
/// 70% of each linear layer's values.
pub fn lowrank_pass(spec: &str) -> Result<Box<dyn Pass>, String> {
    use llmc_passes::core::linalg::RankRule;
    use llmc_passes::lowrank::svd::{LowRankMethod, LowRankPass};
    let bad = || {
        format!("--lowrank '{spec}' is not a low-rank spec (write svd:0.7 or svd-llm:0.7: the method and the fraction of each layer's values kept)")
    };
    let (m, f) = spec.split_once(':').ok_or_else(bad)?;
    let method = LowRankMethod::parse(m).ok_or_else(bad)?;
    let fraction: f64 = f.parse().map_err(|_| bad())?;
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(format!(
            "--lowrank '{spec}': the fraction of values kept must lie in (0, 1)"
        ));
    }
    Ok(Box::new(LowRankPass {
        method,
        rule: RankRule::Params(fraction),
        head: false,
        damp: 0.01,
    }))
}

/// The palettization pass behind `--palettize ENTRIES[:ROWS]`: `16` gives every linear weight
/// one codebook of 16 entries (4-bit indices), `16:128` one per run of 128 output rows.
/// `keep_head` leaves the output head (and an embedding tied to it) alone.
pub fn palettize_pass(spec: &str, keep_head: bool) -> Result<Box<dyn Pass>, String> {
    use llmc_passes::share::palettize::{PaletteOptions, PalettizePass};
    let bad = || {
        format!("--palettize '{spec}' is not a palette spec (write 16 for one codebook of 16 entries per tensor, or 16:128 for one per 128 output rows)")
    };
    let (entries, rows) = match spec.split_once(':') {
        Some((e, r)) => (e, Some(r)),
        None => (spec, None),
    };
    let entries: u32 = entries.trim().parse().map_err(|_| bad())?;
    if !(2..=256).contains(&entries) || !entries.is_power_of_two() {
        return Err(format!(
            "--palettize '{spec}': a codebook holds a power of two from 2 to 256 entries (indices of 1 to 8 bits), not {entries}"
        ));
    }
    let group = match rows {
        None => llmc_ir::Group::Tensor,
        Some(r) => match r.trim().parse::<u32>() {
            Ok(n) if n > 0 => llmc_ir::Group::Rows(n),
            _ => {
                return Err(format!(
                    "--palettize '{spec}': rows per codebook must be a positive number (16:128)"
                ))
            }
        },
    };
    Ok(Box::new(PalettizePass {
        opts: PaletteOptions {
            bits: entries.trailing_zeros() as u8,
            group,
            head: !keep_head,
            ..Default::default()
        },
    }))
}

/// The local distillation pass behind `--distill [SPEC]`: `bias` (the default) fits a bias
/// correction per changed linear layer; `rank:8` adds a rank-8 correction branch too.
pub fn distill_pass(spec: &str) -> Result<Box<dyn Pass>, String> {
    use llmc_passes::distill::{DistillOptions, DistillPass};
    let rank = match spec.trim() {
        "" | "bias" => 0,
        s => {
            let r = s.strip_prefix("rank:").ok_or_else(|| {
                format!("--distill '{spec}' is not a distillation spec (write --distill for a bias correction, or --distill rank:8 to add a rank-8 branch)")
            })?;
            match r.parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(format!(
                        "--distill '{spec}': the rank must be a positive number (rank:8)"
                    ))
                }
            }
        }
    };
    Ok(Box::new(DistillPass {
        opts: DistillOptions {
            rank,
            ..Default::default()
        },
    }))
}

/// Calibration windows of a decoder from text files: the files joined as the evaluation
/// protocol joins them, tokenized, `count` windows of `len` tokens evenly spaced.
pub fn calibration(
    m: &Model,
    files: &[PathBuf],
    count: usize,
    len: usize,
) -> Result<Calibration, String> {
    let ModelKind::CausalLm { max_context, .. } = m.kind else {
        return Err(format!(
            "{}: calibration runs language models for now; this model is {:?}",
            m.path.display(),
            m.kind
        ));
    };
    let len = len.min(max_context);
    let tok = m.tokenizer.as_ref().ok_or_else(|| {
        format!(
            "{}: the model carries no tokenizer to read calibration text with",
            m.path.display()
        )
    })?;
    let text = join_texts(files).map_err(|e| e.to_string())?;
    let ids = tok.encode(&text, false).map_err(|e| e.to_string())?;
    let windows = spaced_windows(&ids, len, count).map_err(|e| format!("--calib: {e}"))?;
    Ok(Calibration {
        windows: decoder_feeds(&windows),
        label: format!(
            "{count} windows of {len} tokens from {} files ({} tokens)",
            files.len(),
            ids.len()
        ),
    })
}

/// The first token of each window is drawn uniformly from the vocabulary; the rest are
/// sampled from the model's own next-token distribution at temperature 1 among its 40 most
/// likely tokens.
const SELF_CALIB_TOP_K: usize = 40;

/// Calibration windows a language model writes itself, for calibrated methods without any
/// data (the data-free calibration of LLM-QAT): `count` windows of `len` tokens, each
/// continued from a random first token by sampling the model's next token, the interpreter
/// keeping the KV cache. The same `seed` writes the same windows.
pub fn self_calibration(
    m: &Model,
    count: usize,
    len: usize,
    seed: u64,
    progress: Option<&Progress>,
) -> Result<Calibration, String> {
    let ModelKind::CausalLm {
        vocab, max_context, ..
    } = m.kind
    else {
        return Err(format!(
            "{}: --calib-self needs a language model that writes text; this model is {:?}",
            m.path.display(),
            m.kind
        ));
    };
    if count == 0 || len < 2 {
        return Err(format!(
            "--calib-self writes {count} windows of {len} tokens; give at least one window of two tokens (--calib-windows, --calib-window)"
        ));
    }
    let len = len.min(max_context);
    let mut windows = Vec::with_capacity(count);
    for w in 0..count {
        let mut sampler = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: SELF_CALIB_TOP_K,
            top_p: 1.0,
            seed: seed.wrapping_add(w as u64),
        });
        let mut session = Session::new(&m.graph).map_err(|e| e.to_string())?;
        let mut ids = vec![sampler.below(vocab) as u32];
        while ids.len() < len {
            let pos = ids.len() - 1;
            let logits = crate::eval::interpreter_logits(&mut session, &ids[pos..], pos, vocab)
                .map_err(|e| format!("--calib-self: {e}"))?;
            ids.push(sampler.sample(&logits[logits.len() - vocab..]));
            if let Some(p) = progress {
                p(
                    "writing calibration text",
                    (w * len + ids.len()) as u64,
                    (count * len) as u64,
                );
            }
        }
        windows.push(ids);
    }
    Ok(Calibration {
        windows: decoder_feeds(&windows),
        label: format!(
            "{count} windows of {len} tokens the model wrote itself (seed {seed}, top-{SELF_CALIB_TOP_K} sampling)"
        ),
    })
}

/// A progress bar on stderr for long passes (hidden when stderr is not a terminal).
pub fn progress_bar() -> (Progress, Arc<Mutex<Option<indicatif::ProgressBar>>>) {
    let slot: Arc<Mutex<Option<indicatif::ProgressBar>>> = Arc::new(Mutex::new(None));
    let s = slot.clone();
    let p: Progress = Arc::new(move |what: &str, done: u64, total: u64| {
        let mut g = s.lock().expect("progress lock");
        let bar = g.get_or_insert_with(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:24} [{bar:30}] {pos}/{len} {elapsed} (eta {eta})",
                )
                .expect("template")
                .progress_chars("=> "),
            );
            b
        });
        if bar.message() != what {
            bar.reset();
            bar.set_message(what.to_string());
        }
        bar.set_length(total);
        bar.set_position(done);
        if done >= total {
            bar.finish_and_clear();
            *g = None;
        }
    });
    (p, slot)
}

/// `5%` or `5`: a percentage.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let t = s.trim().trim_end_matches('%');
    match t.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!(
            "--max-ppl-increase '{s}' is not a percentage (write 5%)"
        )),
    }
}

/// Evaluates the compressed model against the uncompressed one on the protocol's windows.
pub fn eval_against(
    compressed: &Model,
    model_path: &Path,
    files: &[PathBuf],
    p: Protocol,
    progress: Option<&Progress>,
) -> Result<EvalResult, String> {
    let reference = crate::frontend::load(model_path).map_err(|e| e.to_string())?;
    let tok = compressed
        .tokenizer
        .as_ref()
        .ok_or_else(|| format!("{}: the model carries no tokenizer", model_path.display()))?;
    let text = join_texts(files).map_err(|e| e.to_string())?;
    let ids = tok.encode(&text, false).map_err(|e| e.to_string())?;
    let total = p.windows as u64;
    evaluate(compressed, Some(&reference), &ids, p, |w| {
        if let Some(pr) = progress {
            pr("evaluation windows", w as u64, total)
        }
    })
    .map_err(|e| e.to_string())
}

/// The linear layers' weights of a graph (the output head's only when `head`): values and
/// bytes as stored, scales, zeros and codebooks included.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Footprint {
    pub params: u64,
    pub bytes: u64,
}

impl Footprint {
    pub fn of(g: &llmc_ir::Graph, head: bool) -> Footprint {
        llmc_passes::core::edit::linear_weights(g, head)
            .iter()
            .map(|&(w, _)| {
                let t = &g.weights[w].ty;
                let dims: Vec<u64> = t.shape.0.iter().filter_map(|d| d.fixed()).collect();
                (
                    dims.iter().product::<u64>(),
                    t.enc.byte_size(&dims).unwrap_or(0),
                )
            })
            .fold(Footprint::default(), |f, (p, b)| Footprint {
                params: f.params + p,
                bytes: f.bytes + b,
            })
    }
}

/// Totals of a build: the linear layers before and after compression, with bits per weight
/// over the original parameter count (a factored or pruned layer stores fewer values).
pub fn totals_json(before: Footprint, after: Footprint) -> serde_json::Value {
    serde_json::json!({
        "params": before.params,
        "params_after": after.params,
        "bytes_before": before.bytes,
        "bytes_after": after.bytes,
        "bits_per_weight": if before.params > 0 { after.bytes as f64 * 8.0 / before.params as f64 } else { 0.0 },
    })
}

/// The report as a table: one line per quantized weight, then the linear layers' totals.
pub fn print_table(rows: &[serde_json::Value], totals: &serde_json::Value) {
    print_rows(rows);
    let (params, after) = (
        totals["params"].as_u64().unwrap_or(0),
        totals["params_after"].as_u64().unwrap_or(0),
    );
    if totals["bytes_before"] != totals["bytes_after"] || params != after {
        println!(
            "linear layers: {params} weights{} in {} -> {} bytes, {:.3} bits per weight",
            if after != params {
                format!(" ({after} after factoring/pruning)")
            } else {
                String::new()
            },
            totals["bytes_before"],
            totals["bytes_after"],
            totals["bits_per_weight"].as_f64().unwrap_or(0.0)
        );
    }
}

fn print_rows(rows: &[serde_json::Value]) {
    let pruned: Vec<&serde_json::Value> = rows.iter().filter(|r| r["pass"] == "prune").collect();
    if !pruned.is_empty() {
        let mean = pruned
            .iter()
            .filter_map(|r| r["sparsity"].as_f64())
            .sum::<f64>()
            / pruned.len() as f64;
        let worst = pruned
            .iter()
            .filter_map(|r| r["out_error"].as_f64())
            .fold(0.0, f64::max);
        println!(
            "pruned {} weights ({}): mean sparsity {:.1}%, worst output error on calibration {worst:.4}",
            pruned.len(),
            pruned[0]["method"].as_str().unwrap_or("?"),
            mean * 100.0
        );
    }
    let heads: Vec<&serde_json::Value> =
        rows.iter().filter(|r| r["pass"] == "prune-heads").collect();
    if !heads.is_empty() {
        let sum = |k: &str| heads.iter().filter_map(|r| r[k].as_u64()).sum::<u64>();
        let energy = heads
            .iter()
            .filter_map(|r| r["energy_removed"].as_f64())
            .sum::<f64>()
            / heads.len() as f64;
        println!(
            "removed attention heads in {} blocks: {} -> {} query heads, {} -> {} KV heads, {} -> {} bytes; mean share of output energy removed on calibration {:.1}%",
            heads.len(),
            sum("heads_before"),
            sum("heads_after"),
            sum("kv_heads_before"),
            sum("kv_heads_after"),
            sum("bytes_before"),
            sum("bytes_after"),
            energy * 100.0
        );
    }
    if let Some(r) = rows.iter().find(|r| r["pass"] == "drop-layers") {
        let bi: Vec<String> = r["block_influence"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_f64())
                    .map(|x| format!("{x:.3}"))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "removed layers {} of {} (block influence per layer: {})",
            r["removed"],
            r["layers_before"],
            bi.join(" ")
        );
    }
    let factored: Vec<&serde_json::Value> =
        rows.iter().filter(|r| r["pass"] == "lowrank").collect();
    if !factored.is_empty() {
        let sum = |k: &str| factored.iter().filter_map(|r| r[k].as_u64()).sum::<u64>();
        let worst = factored
            .iter()
            .filter_map(|r| r["out_error"].as_f64().or(r["weight_error"].as_f64()))
            .fold(0.0, f64::max);
        println!(
            "factored {} weights ({}): {} -> {} values, worst relative error {worst:.4}",
            factored.len(),
            factored[0]["method"].as_str().unwrap_or("?"),
            sum("params_before"),
            sum("params_after"),
        );
    }
    let distilled: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| r["pass"] == "distill" && r["correction"].is_string())
        .collect();
    if !distilled.is_empty() {
        let mean = |k: &str| {
            distilled.iter().filter_map(|r| r[k].as_f64()).sum::<f64>() / distilled.len() as f64
        };
        let applied = |r: &&&serde_json::Value| {
            !r["correction"]
                .as_str()
                .is_some_and(|c| c.starts_with("none"))
        };
        let corrected = distilled.iter().filter(applied).count();
        let skipped = rows
            .iter()
            .filter(|r| r["pass"] == "distill" && r["skipped"].is_string())
            .count();
        println!(
            "distilled {corrected} of {} changed layers ({}): mean output error on calibration {:.4} -> {:.4}, {} values added{}",
            distilled.len(),
            distilled
                .iter()
                .find(applied)
                .and_then(|r| r["correction"].as_str())
                .unwrap_or("none"),
            mean("out_error_before"),
            mean("out_error_after"),
            distilled
                .iter()
                .filter_map(|r| r["params_added"].as_u64())
                .sum::<u64>(),
            if skipped > 0 {
                format!(", {skipped} skipped")
            } else {
                String::new()
            }
        );
    }
    for (pass, c) in rows
        .iter()
        .filter_map(|r| Some((r["pass"].as_str()?, r.get("compensation")?)))
    {
        let check = &c["check"];
        let edits = c["edits"].as_array().map(Vec::as_slice).unwrap_or_default();
        let verdict = |e: &serde_json::Value| {
            if e["kept"] == true {
                "kept"
            } else {
                "rejected"
            }
        };
        let (before, after) = (check["loss_before"].as_f64(), check["loss_after"].as_f64());
        let windows = &check["windows"];
        let (outcome, losses) = match edits {
            [one] => (
                format!("{}, {}", one["what"].as_str().unwrap_or("?"), verdict(one)),
                match (before, one["loss"].as_f64()) {
                    (Some(b), Some(a)) => format!(
                        " (next-token loss on {windows} calibration windows {b:.4} without, {a:.4} with)"
                    ),
                    _ => String::new(),
                },
            ),
            _ => (
                format!(
                    "{} of {} kept, each tried after those kept before it",
                    edits.iter().filter(|e| e["kept"] == true).count(),
                    edits.len()
                ),
                match (before, after) {
                    (Some(b), Some(a)) => format!(
                        " (next-token loss on {windows} calibration windows {b:.4} without, {a:.4} with those kept)"
                    ),
                    _ => String::new(),
                },
            ),
        };
        let each: Vec<String> = if edits.len() > 1 {
            edits
                .iter()
                .map(|e| match e["loss"].as_f64() {
                    Some(l) => format!(
                        "\n  {}: {l:.4}, {}",
                        e["what"].as_str().unwrap_or("?"),
                        verdict(e)
                    ),
                    None => format!("\n  {}: {}", e["what"].as_str().unwrap_or("?"), verdict(e)),
                })
                .collect()
        } else {
            Vec::new()
        };
        let added = match c["bytes_added"].as_i64() {
            Some(b) if b != 0 => format!(", {:+.3} MB of weights", b as f64 / 1e6),
            _ => String::new(),
        };
        let losses = format!("{added}{losses}{}", each.concat());
        println!("{pass} compensation: {outcome}{losses}");
    }
    for c in rows
        .iter()
        .filter(|r| r["pass"] == "distill")
        .filter_map(|r| r.get("check"))
    {
        let kept: Vec<&str> = c["groups_kept"]
            .as_array()
            .map(|a| a.iter().filter_map(|g| g.as_str()).collect())
            .unwrap_or_default();
        let groups = c["groups"].as_u64().unwrap_or(0) as usize;
        println!(
            "distill check on {} calibration windows: next-token loss {:.4} uncorrected, {:.4} with every correction, {:.4} as kept: {}",
            c["windows"],
            c["loss_before"].as_f64().unwrap_or(f64::NAN),
            c["loss_all"].as_f64().unwrap_or(f64::NAN),
            c["loss_after"].as_f64().unwrap_or(f64::NAN),
            if kept.is_empty() {
                "corrections rejected, the graph is as it was before distill".to_string()
            } else if kept.len() == groups {
                "every correction kept".to_string()
            } else {
                format!("kept for {} of {groups} layer roles ({})", kept.len(), kept.join(", "))
            }
        );
    }
    let q: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| {
            (r["pass"] == "quantize" || r["pass"] == "palettize")
                && r["params"].as_u64().unwrap_or(0) > 0
        })
        .collect();
    if q.is_empty() {
        return;
    }
    println!(
        "{:<28} {:<34} {:<8} {:>6} {:>10} {:>10} {:>8} {:>8}",
        "weight", "encoding", "method", "bpw", "bytes", "after", "w err", "out err"
    );
    for r in &q {
        let out = r["out_error"]
            .as_f64()
            .map_or("-".to_string(), |e| format!("{e:.4}"));
        println!(
            "{:<28} {:<34} {:<8} {:>6.3} {:>10} {:>10} {:>8.4} {:>8}",
            r["weight"].as_str().unwrap_or("?"),
            r["to"].as_str().unwrap_or("?"),
            r["method"].as_str().unwrap_or("?"),
            r["bits_per_weight"].as_f64().unwrap_or(0.0),
            r["bytes_before"].as_u64().unwrap_or(0),
            r["bytes_after"].as_u64().unwrap_or(0),
            r["rel_error"].as_f64().unwrap_or(0.0),
            out
        );
    }
}
