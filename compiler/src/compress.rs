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

/// A compression flag llmc cannot use, or data a compression step needs and cannot have.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum CompressError {
    /// A flag's value is not one llmc takes: which flag, what it was given, and what is wrong.
    #[error("{flag} '{value}': {msg}")]
    #[diagnostic(code(llmc::build::flag))]
    Flag {
        flag: &'static str,
        value: String,
        msg: String,
        #[help]
        help: Option<String>,
    },
    /// A flag's value is none of those llmc takes.
    #[error("{flag} '{value}' is not {what}")]
    #[diagnostic(code(llmc::build::flag))]
    Unknown {
        flag: &'static str,
        value: String,
        what: &'static str,
        #[help]
        help: Option<String>,
    },
    /// Two flags that cannot go together.
    #[error("{msg}")]
    #[diagnostic(code(llmc::build::flags))]
    Conflict {
        msg: String,
        #[help]
        help: Option<String>,
    },
    /// The default text of `--calib` or `--eval` is not there.
    #[error("{flag}: no files given and the default text is missing: {msg}")]
    #[diagnostic(
        code(llmc::build::default_text),
        help("run scripts/setup.sh, or pass {flag} FILES")
    )]
    MissingText { flag: &'static str, msg: String },
    /// Calibration or evaluation could not read or run the model.
    #[error("{model}: {msg}")]
    #[diagnostic(code(llmc::build::data))]
    Data { model: PathBuf, msg: String },
}

impl CompressError {
    fn flag(flag: &'static str, value: impl ToString, msg: impl ToString) -> CompressError {
        CompressError::Flag {
            flag,
            value: value.to_string(),
            msg: msg.to_string(),
            help: None,
        }
    }

    fn data(model: &Path, msg: impl ToString) -> CompressError {
        CompressError::Data {
            model: model.to_path_buf(),
            msg: msg.to_string(),
        }
    }
}

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
pub fn sotu_files(from: u32, to: u32, flag: &'static str) -> Result<Vec<PathBuf>, CompressError> {
    let dir = cache_dir().join("sotu");
    let files = year_files(&dir, from, to).map_err(|e| CompressError::MissingText {
        flag,
        msg: e.to_string(),
    })?;
    if files.is_empty() {
        return Err(CompressError::MissingText {
            flag,
            msg: format!("{} has none from {from}–{to}", dir.display()),
        });
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
) -> Result<Vec<Box<dyn Pass>>, CompressError> {
    let (m, smooth) = match method {
        "smoothquant" => (Method::Rtn, true),
        other => (
            Method::parse(other).ok_or_else(|| CompressError::Unknown {
                flag: "--quant-method",
                value: other.to_string(),
                what: "a method llmc knows",
                help: Some(format!("choose one of {}", METHODS.join(", "))),
            })?,
            false,
        ),
    };
    if method != "rtn" && scheme.bits().is_none() {
        return Err(CompressError::Conflict {
            msg: format!(
                "--quant-method {method} chooses integer weights; --quant {} has none",
                Scheme::NAMES
                    .iter()
                    .find(|n| Scheme::parse(n) == Some(scheme))
                    .unwrap_or(&"none")
            ),
            help: Some("use --quant w8a8, w4a16, ...".into()),
        });
    }
    let mut opts = QuantOptions::preset(scheme, group).with_method(m);
    opts.head = !keep_head;
    if let Some(b) = bpw {
        if scheme.bits().is_none() {
            return Err(CompressError::Conflict {
                msg: "--bpw mixes integer encodings".into(),
                help: Some("give --quant w4a16, w4a8, w3a16, ...".into()),
            });
        }
        if !(b > 0.0 && b <= 32.0) {
            return Err(CompressError::Unknown {
                flag: "--bpw",
                value: b.to_string(),
                what: "a bits-per-weight target",
                help: Some("write --bpw 5.5".into()),
            });
        }
        opts.bpw = Some(b);
    }
    let mut out: Vec<Box<dyn Pass>> = Vec::new();
    if smooth {
        out.push(Box::new(llmc_passes::quant::smoothquant::SmoothPass {
            alpha: 0.5,
        }));
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
pub fn prune_pass(spec: &str, distill: bool) -> Result<Box<dyn Pass>, CompressError> {
    use llmc_passes::prune::unstructured::{PruneMethod, PrunePass, Sparsity};
    let bad = || {
        CompressError::Unknown {
        flag: "--prune",
        value: spec.to_string(),
        what: "a pruning spec",
        help: Some("write wanda:0.5, magnitude:0.5, sparsegpt:0.5, 2:4, sparsegpt:2:4, ffn:0.25, ffn-prunenet:0.25, heads:0.25, heads-kv:0.34 or layers:4".into()),
    }
    };
    let fraction_range = || CompressError::flag("--prune", spec, "the fraction must lie in [0, 1)");
    if let Some((kind, f)) = spec
        .split_once(':')
        .filter(|(k, _)| *k == "heads" || *k == "heads-kv")
    {
        use llmc_passes::prune::heads::{HeadUnit, PruneHeadsPass};
        let fraction: f64 = f.parse().map_err(|_| bad())?;
        if !(0.0..1.0).contains(&fraction) {
            return Err(fraction_range());
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
        let layers = || {
            CompressError::flag(
                "--prune",
                spec,
                "layers:N removes N whole layers; N must be a positive integer",
            )
        };
        let count: usize = n.parse().map_err(|_| layers())?;
        if count == 0 {
            return Err(layers());
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
            return Err(fraction_range());
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
                return Err(fraction_range());
            }
            Sparsity::Fraction(f)
        }
        [n, m] => {
            let (n, m): (usize, usize) =
                (n.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
            if m < 2 || n == 0 || n >= m {
                return Err(CompressError::flag(
                    "--prune",
                    spec,
                    "N:M keeps 0 < N < M of every M",
                ));
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
pub fn lowrank_pass(spec: &str) -> Result<Box<dyn Pass>, CompressError> {
    use llmc_passes::core::linalg::RankRule;
    use llmc_passes::lowrank::svd::{LowRankMethod, LowRankPass};
    let bad = || CompressError::Unknown {
        flag: "--lowrank",
        value: spec.to_string(),
        what: "a low-rank spec",
        help: Some(
            "write svd:0.7 or svd-llm:0.7: the method and the fraction of each layer's values kept"
                .into(),
        ),
    };
    let (m, f) = spec.split_once(':').ok_or_else(bad)?;
    let method = LowRankMethod::parse(m).ok_or_else(bad)?;
    let fraction: f64 = f.parse().map_err(|_| bad())?;
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(CompressError::flag(
            "--lowrank",
            spec,
            "the fraction of values kept must lie in (0, 1)",
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
pub fn palettize_pass(spec: &str, keep_head: bool) -> Result<Box<dyn Pass>, CompressError> {
    use llmc_passes::share::palettize::{PaletteOptions, PalettizePass};
    let bad = || {
        CompressError::Unknown {
        flag: "--palettize",
        value: spec.to_string(),
        what: "a palette spec",
        help: Some("write 16 for one codebook of 16 entries per tensor, or 16:128 for one per 128 output rows".into()),
    }
    };
    let (entries, rows) = match spec.split_once(':') {
        Some((e, r)) => (e, Some(r)),
        None => (spec, None),
    };
    let entries: u32 = entries.trim().parse().map_err(|_| bad())?;
    if !(2..=256).contains(&entries) || !entries.is_power_of_two() {
        return Err(CompressError::flag(
            "--palettize",
            spec,
            format!("a codebook holds a power of two from 2 to 256 entries (indices of 1 to 8 bits), not {entries}"),
        ));
    }
    let group = match rows {
        None => llmc_ir::Group::Tensor,
        Some(r) => match r.trim().parse::<u32>() {
            Ok(n) if n > 0 => llmc_ir::Group::Rows(n),
            _ => {
                return Err(CompressError::flag(
                    "--palettize",
                    spec,
                    "rows per codebook must be a positive number (16:128)",
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
pub fn distill_pass(spec: &str) -> Result<Box<dyn Pass>, CompressError> {
    use llmc_passes::distill::{DistillOptions, DistillPass};
    let rank = match spec.trim() {
        "" | "bias" => 0,
        s => {
            let r = s.strip_prefix("rank:").ok_or_else(|| CompressError::Unknown {
                flag: "--distill",
                value: spec.to_string(),
                what: "a distillation spec",
                help: Some("write --distill for a bias correction, or --distill rank:8 to add a rank-8 branch".into()),
            })?;
            match r.parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(CompressError::flag(
                        "--distill",
                        spec,
                        "the rank must be a positive number (rank:8)",
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
) -> Result<Calibration, CompressError> {
    let ModelKind::CausalLm { max_context, .. } = m.kind else {
        return Err(CompressError::data(
            &m.path,
            format!(
                "calibration runs language models for now; this model is {}",
                m.kind.describe()
            ),
        ));
    };
    let len = len.min(max_context);
    let tok = m.tokenizer.as_ref().ok_or_else(|| {
        CompressError::data(
            &m.path,
            "the model carries no tokenizer to read calibration text with",
        )
    })?;
    let text = join_texts(files).map_err(|e| CompressError::data(&m.path, e))?;
    let ids = tok
        .encode(&text, false)
        .map_err(|e| CompressError::data(&m.path, e))?;
    let windows = spaced_windows(&ids, len, count)
        .map_err(|e| CompressError::data(&m.path, format!("--calib: {e}")))?;
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
) -> Result<Calibration, CompressError> {
    let ModelKind::CausalLm {
        vocab, max_context, ..
    } = m.kind
    else {
        return Err(CompressError::data(
            &m.path,
            format!(
                "--calib-self needs a language model that writes text; this model is {}",
                m.kind.describe()
            ),
        ));
    };
    if count == 0 || len < 2 {
        return Err(CompressError::Conflict {
            msg: format!("--calib-self writes {count} windows of {len} tokens"),
            help: Some(
                "give at least one window of two tokens (--calib-windows, --calib-window)".into(),
            ),
        });
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
        let mut session = Session::new(&m.graph).map_err(|e| CompressError::data(&m.path, e))?;
        let mut ids = vec![sampler.below(vocab) as u32];
        while ids.len() < len {
            let pos = ids.len() - 1;
            let logits = crate::eval::interpreter_logits(&mut session, &ids[pos..], pos, vocab)
                .map_err(|e| CompressError::data(&m.path, format!("--calib-self: {e}")))?;
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
pub fn parse_percent(s: &str) -> Result<f64, CompressError> {
    let t = s.trim().trim_end_matches('%');
    match t.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        _ => Err(CompressError::Unknown {
            flag: "--max-ppl-increase",
            value: s.to_string(),
            what: "a percentage",
            help: Some("write --max-ppl-increase 5%".into()),
        }),
    }
}

/// Evaluates the compressed model against the uncompressed one on the protocol's windows.
pub fn eval_against(
    compressed: &Model,
    model_path: &Path,
    files: &[PathBuf],
    p: Protocol,
    progress: Option<&Progress>,
) -> Result<EvalResult, CompressError> {
    let data =
        |e: &dyn std::fmt::Display| CompressError::data(model_path, format!("evaluation: {e}"));
    let reference = crate::frontend::load(model_path).map_err(|e| data(&e))?;
    let tok = compressed
        .tokenizer
        .as_ref()
        .ok_or_else(|| data(&"the model carries no tokenizer"))?;
    let text = join_texts(files).map_err(|e| data(&e))?;
    let ids = tok.encode(&text, false).map_err(|e| data(&e))?;
    let total = p.windows as u64;
    evaluate(compressed, Some(&reference), &ids, p, |w| {
        if let Some(pr) = progress {
            pr("evaluation windows", w as u64, total)
        }
    })
    .map_err(|e| data(&e))
}
