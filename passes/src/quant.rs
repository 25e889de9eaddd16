//! Weight quantization by round-to-nearest: linear layers' weights become block-quantized (or
//! f16) encodings, and `a8` schemes quantize activations per token at the consumer.
//!
//! Contract: only the weights of `linear` ops change (an embedding tied to the output head
//! changes with it); the numeric error is the rounding of each weight to its group's grid,
//! reported per weight as the relative Frobenius error.

use crate::calib::Stats;
use crate::PassError;
use llmc_ir::weights::encode_quant;
use llmc_ir::{
    ActQuant, Bytes, DType, Encoding, Format, Graph, Group, Op, QuantSpec, TensorType, ValueDef,
    ValueId, WeightData, Zero,
};
use rayon::prelude::*;
use std::collections::BTreeSet;

/// The `--quant` presets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Weights as they are (decoded to f32 where the source was quantized).
    None,
    F16,
    W8A16,
    W8A8,
    W4A16,
    W4A8,
    W3A16,
}

impl Scheme {
    pub const NAMES: [&'static str; 7] = ["none", "f16", "w8a16", "w8a8", "w4a16", "w4a8", "w3a16"];

    pub fn parse(s: &str) -> Option<Scheme> {
        Some(match s {
            "none" | "f32" => Scheme::None,
            "f16" => Scheme::F16,
            "w8a16" => Scheme::W8A16,
            "w8a8" => Scheme::W8A8,
            "w4a16" => Scheme::W4A16,
            "w4a8" => Scheme::W4A8,
            "w3a16" => Scheme::W3A16,
            _ => return None,
        })
    }

    pub fn bits(self) -> Option<u8> {
        match self {
            Scheme::W8A16 | Scheme::W8A8 => Some(8),
            Scheme::W4A16 | Scheme::W4A8 => Some(4),
            Scheme::W3A16 => Some(3),
            _ => None,
        }
    }

    pub fn act(self) -> ActQuant {
        match self {
            Scheme::W8A8 | Scheme::W4A8 => ActQuant::I8PerToken,
            _ => ActQuant::None,
        }
    }
}

/// What linear weights become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    /// Decoded to f32.
    F32,
    F16,
    /// Block-quantized integers of this many bits (2 to 8).
    Int(u8),
}

#[derive(Clone, Debug)]
pub struct QuantOptions {
    pub weights: WeightFormat,
    /// Group size along the input dimension; `None`: per output channel.
    pub group: Option<u32>,
    pub zero: Zero,
    /// What linear layers do to their activations.
    pub act: ActQuant,
    /// A weight whose rows the group size does not divide is an error; otherwise (the
    /// default) it takes the largest smaller power of two that divides them (SmolLM2's rows
    /// of 576 take groups of 64 under `--group 128`), and the report shows which.
    pub strict_group: bool,
    /// How integer weights are rounded.
    pub method: Method,
    /// Search each group's clipping range (weighted by calibration energy when available).
    pub clip: bool,
    /// Quantize the output head (and the embedding tied to it) too.
    pub head: bool,
    /// GPTQ's settings.
    pub gptq: crate::gptq::GptqOptions,
    /// Mixed precision: a bits-per-weight target over the quantized weights; layers whose
    /// calibration output error falls most per extra byte move to int8 per channel until the
    /// target is met.
    pub bpw: Option<f64>,
}

/// How integer weights are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Round to nearest.
    Rtn,
    /// GPTQ: error feedback through the inverse Hessian of the calibration inputs.
    Gptq,
    /// AWQ: per-input-channel scales from calibration, searched and folded into the previous
    /// op, then round to nearest with a clipping search.
    Awq,
}

impl Method {
    pub const NAMES: [&'static str; 3] = ["rtn", "gptq", "awq"];

    pub fn parse(s: &str) -> Option<Method> {
        Some(match s {
            "rtn" => Method::Rtn,
            "gptq" => Method::Gptq,
            "awq" => Method::Awq,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::Rtn => "rtn",
            Method::Gptq => "gptq",
            Method::Awq => "awq",
        }
    }

    /// Whether the method reads calibration statistics.
    pub fn calibrated(self) -> bool {
        self != Method::Rtn
    }
}

impl QuantOptions {
    /// The preset's defaults: int8 symmetric per channel; int4 in groups of 64 with an
    /// integer zero point (round-to-nearest int4 without one loses too much: SmolLM2 stops
    /// answering "Paris").
    pub fn preset(scheme: Scheme, group: Option<u32>) -> QuantOptions {
        let weights = match scheme {
            Scheme::None => WeightFormat::F32,
            Scheme::F16 => WeightFormat::F16,
            s => WeightFormat::Int(s.bits().expect("integer scheme")),
        };
        QuantOptions::new(weights, group, None, scheme.act())
    }

    /// Options with defaults for what is not given: groups of 64 and an integer zero point
    /// below 8 bits, symmetric per channel at 8.
    pub fn new(
        weights: WeightFormat,
        group: Option<u32>,
        zero: Option<Zero>,
        act: ActQuant,
    ) -> QuantOptions {
        let low = matches!(weights, WeightFormat::Int(b) if b < 8);
        let default_group = if low { Some(64) } else { None };
        let zero = zero.unwrap_or(if low { Zero::Int } else { Zero::Symmetric });
        QuantOptions {
            weights,
            group: group.or(default_group),
            zero,
            act,
            strict_group: false,
            method: Method::Rtn,
            clip: false,
            head: true,
            gptq: Default::default(),
            bpw: None,
        }
    }

    /// The same options with another rounding method (GPTQ and AWQ search clipping ranges).
    pub fn with_method(mut self, method: Method) -> QuantOptions {
        self.method = method;
        self.clip = method != Method::Rtn;
        self
    }

    fn describe(&self) -> String {
        let w = match self.weights {
            WeightFormat::F32 => "f32".to_string(),
            WeightFormat::F16 => "f16".to_string(),
            WeightFormat::Int(b) => format!(
                "int{b} {} {}",
                self.group.map_or("pc".to_string(), |g| format!("g{g}")),
                self.zero
            ),
        };
        format!("{w} act={} {}", self.act.name(), self.method.name())
    }
}

/// One weight's entry in the report.
#[derive(Clone, Debug)]
pub struct WeightReport {
    pub name: String,
    pub from: String,
    pub to: String,
    /// How it was rounded (`rtn`, `rtn+clip`, `gptq`; `awq-scale` for AWQ's search rows).
    pub method: String,
    /// Weights in the tensor.
    pub params: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// ‖W − Ŵ‖ / ‖W‖ against the weight as it decoded before the pass (for `awq-scale` rows:
    /// the searched loss over plain rounding's).
    pub rel_error: f64,
    /// ‖(W − Ŵ)X‖ / ‖WX‖ over the calibration inputs, when calibrated.
    pub out_error: Option<f64>,
    /// For `awq-scale` rows: the weights whose input columns were multiplied, and by what.
    pub rescaled: Option<(Vec<String>, Vec<f32>)>,
}

/// Rewrites linear weights to the scheme's encoding by round-to-nearest; returns what changed.
pub fn quantize(g: &mut Graph, opts: &QuantOptions) -> Result<Vec<WeightReport>, PassError> {
    let opts = QuantOptions {
        method: Method::Rtn,
        ..opts.clone()
    };
    quantize_with(g, &opts, None, None)
}

/// The integer spec of a `[rows, cols]` weight under the options.
fn spec_for(opts: &QuantOptions, bits: u8, name: &str, cols: u64) -> Result<QuantSpec, String> {
    let group = match opts.group {
        Some(gs) if cols % gs as u64 == 0 => Group::Size(gs),
        Some(gs) if !opts.strict_group => {
            let mut g = gs;
            while g > 1 && cols % g as u64 != 0 {
                g /= 2;
            }
            if g >= 8 {
                Group::Size(g)
            } else {
                Group::Channel
            }
        }
        Some(gs) => {
            return Err(format!(
                "weight @{name} has rows of {cols}, not a multiple of the group size {gs}"
            ))
        }
        None => Group::Channel,
    };
    Ok(QuantSpec {
        bits,
        group,
        scale: DType::F16,
        zero: opts.zero,
    })
}

/// The weights of linear layers (indices, each once) and, for each, the value its linear
/// layer reads; the output head's only when `head`. What quantization and pruning change.
pub fn targets(g: &Graph, head: bool) -> Vec<(usize, ValueId)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for n in &g.nodes {
        if let Op::Linear { .. } = n.op {
            let is_head = g.outputs.iter().any(|(_, o)| n.outputs.contains(o));
            if is_head && !head {
                continue;
            }
            if let ValueDef::Weight(w) = g.def(n.inputs[1]) {
                if seen.insert(w) {
                    out.push((w as usize, n.inputs[0]));
                }
            }
        }
    }
    out.sort();
    out
}

/// The [`targets`] quantization changes: all but weights another pass palettized (a palette
/// is the weight's compression already, not a source to round again).
fn quantizable(g: &Graph, head: bool) -> Vec<(usize, ValueId)> {
    targets(g, head)
        .into_iter()
        .filter(|&(i, _)| !matches!(g.weights[i].ty.enc, Encoding::Palette(_)))
        .collect()
}

/// Rewrites linear weights to the options' encoding with their method, reading calibration
/// statistics (`stats`) where the method needs them; returns what changed.
pub fn quantize_with(
    g: &mut Graph,
    opts: &QuantOptions,
    mut stats: Option<&mut Stats>,
    progress: Option<&crate::manager::Progress>,
) -> Result<Vec<WeightReport>, PassError> {
    let err = |msg: String| PassError::Pattern {
        pattern: "quantize",
        at: "graph".into(),
        msg,
    };
    if let Some(gs) = opts.group {
        if gs == 0 || !gs.is_power_of_two() {
            return Err(err(format!("group size {gs} must be a power of two")));
        }
    }
    if opts.method.calibrated() && stats.is_none() {
        return Err(PassError::Calibration(format!(
            "quantize method={} needs calibration statistics",
            opts.method.name()
        )));
    }
    // the linear layers whose weights change take the scheme's activations too
    let act = opts.act;
    let heads: BTreeSet<usize> = g
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| g.outputs.iter().any(|(_, o)| n.outputs.contains(o)))
        .map(|(i, _)| i)
        .collect();
    let palettes: BTreeSet<ValueId> = g
        .weights
        .iter()
        .filter(|w| matches!(w.ty.enc, Encoding::Palette(_)))
        .map(|w| w.value)
        .collect();
    for (i, n) in g.nodes.iter_mut().enumerate() {
        if let Op::Linear { act: a } = &mut n.op {
            if (opts.head || !heads.contains(&i)) && !palettes.contains(&n.inputs[1]) {
                *a = act;
            }
        }
    }
    // what each weight was before this pass (AWQ's scaling rewrites them as f32 first)
    let original: std::collections::BTreeMap<usize, (String, Option<u64>)> =
        quantizable(g, opts.head)
            .into_iter()
            .map(|(i, _)| {
                let w = &g.weights[i];
                let dims: Option<Vec<u64>> = w.ty.shape.0.iter().map(|d| d.fixed()).collect();
                let bytes = dims.and_then(|d| w.ty.enc.byte_size(&d));
                (i, (w.ty.enc.to_string(), bytes))
            })
            .collect();
    let mut awq_rows = Vec::new();
    if let (Method::Awq, WeightFormat::Int(bits), Some(st)) =
        (opts.method, opts.weights, stats.as_deref_mut())
    {
        awq_rows = awq(g, opts, bits, st)?;
    }
    let work = quantizable(g, opts.head);
    let high = match (opts.bpw, opts.weights, stats.as_deref()) {
        (Some(bpw), WeightFormat::Int(bits), Some(st)) => {
            mixed_precision(g, opts, bits, bpw, &work, st)?
        }
        (Some(_), WeightFormat::Int(_), None) => {
            return Err(PassError::Calibration(
                "quantize bpw= (mixed precision) needs calibration statistics".into(),
            ))
        }
        (Some(_), _, _) => {
            return Err(PassError::Options {
                pass: "quantize".into(),
                msg: "bpw= chooses among integer encodings; give bits=3..8".into(),
            })
        }
        _ => BTreeSet::new(),
    };
    let total = work.len() as u64;
    let done = std::sync::atomic::AtomicU64::new(0);
    let stats_ref = stats.as_deref();
    let results: Vec<Result<(usize, TensorType, WeightData, WeightReport), PassError>> = work
        .par_iter()
        .map(|&(i, input)| {
            let w = &g.weights[i];
            let data = w
                .data
                .as_ref()
                .ok_or_else(|| err(format!("weight @{} has no data", w.name)))?;
            let dims: Vec<u64> =
                w.ty.shape
                    .0
                    .iter()
                    .map(|d| d.fixed().expect("weights are fixed"))
                    .collect();
            let (from, before) = match original.get(&i) {
                Some((e, b)) => (e.clone(), b.unwrap_or(0)),
                None => (w.ty.enc.to_string(), w.ty.enc.byte_size(&dims).unwrap_or(0)),
            };
            let t = data.decode_f32(&w.ty).map_err(|e| err(e.to_string()))?;
            let v = t.to_f32_vec();
            let (rows, cols) = llmc_ir::types::rows_cols(&dims);
            let st = stats_ref
                .and_then(|s| s.inputs.get(&input))
                .filter(|s| s.cols as u64 == cols);
            // a 2:4 weight keeps its form: only its kept values are encoded
            let sparse = matches!(w.ty.enc, Encoding::Sparse24(_))
                .then(|| crate::prune::split_2of4(&v, rows as usize, cols as usize))
                .flatten();
            let (enc, bytes, approx, how) = if let Some((kept, pos)) = &sparse {
                let (rows, half) = (rows as usize, cols as usize / 2);
                let (inner, mut bytes, kept_approx, how) = match opts.weights {
                    WeightFormat::F16 => {
                        let h: Vec<half::f16> =
                            kept.iter().map(|&x| half::f16::from_f32(x)).collect();
                        (
                            Encoding::Dense(DType::F16),
                            h.iter().flat_map(|x| x.to_le_bytes()).collect(),
                            h.iter().map(|x| x.to_f32()).collect(),
                            "f16 (2:4 kept values)",
                        )
                    }
                    WeightFormat::F32 => (
                        Encoding::Dense(DType::F32),
                        kept.iter().flat_map(|x| x.to_le_bytes()).collect(),
                        kept.clone(),
                        "f32 (2:4 kept values)",
                    ),
                    WeightFormat::Int(bits) => {
                        // rows of kept values have no common input columns: round to
                        // nearest; a group spans as many columns of the weight as dense
                        let kept_opts = QuantOptions {
                            group: opts.group.map(|g| (g / 2).max(1)),
                            ..opts.clone()
                        };
                        let q = spec_for(&kept_opts, bits, &w.name, half as u64).map_err(err)?;
                        let (b, a) = rtn_with(kept, rows, half, &q, opts.clip, None);
                        (Encoding::Quant(q), b, a, "rtn (2:4 kept values)")
                    }
                };
                for r in 0..rows {
                    bytes.extend(llmc_ir::weights::pack_codes(
                        &pos[r * half..(r + 1) * half],
                        2,
                    ));
                }
                let mut approx = vec![0f32; rows * 2 * half];
                for (i, (&a, &p)) in kept_approx.iter().zip(pos.iter()).enumerate() {
                    let (r, kk) = (i / half, i % half);
                    approx[r * 2 * half + (kk / 2) * 4 + p as usize] = a;
                }
                (Encoding::Sparse24(Box::new(inner)), bytes, approx, how)
            } else {
                match opts.weights {
                    WeightFormat::F16 => {
                        let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
                        let approx: Vec<f32> = h.iter().map(|x| x.to_f32()).collect();
                        let bytes = h.iter().flat_map(|x| x.to_le_bytes()).collect();
                        (Encoding::Dense(DType::F16), bytes, approx, "f16")
                    }
                    WeightFormat::F32 => (
                        Encoding::Dense(DType::F32),
                        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                        v.clone(),
                        "f32",
                    ),
                    WeightFormat::Int(bits) => {
                        let q = if high.contains(&i) {
                            HIGH
                        } else {
                            spec_for(opts, bits, &w.name, cols).map_err(err)?
                        };
                        let energy: Option<Vec<f32>> = st
                            .map(|s| (0..s.cols).map(|j| s.gram[j * s.cols + j] as f32).collect());
                        let (bytes, approx, how) = match (opts.method, st) {
                            (Method::Gptq, Some(s)) => {
                                let o = crate::gptq::GptqOptions {
                                    clip: opts.clip,
                                    ..opts.gptq
                                };
                                let (b, a) = crate::gptq::gptq(
                                    &v,
                                    rows as usize,
                                    cols as usize,
                                    &s.gram,
                                    &q,
                                    &o,
                                )
                                .map_err(|m| err(format!("weight @{}: {m}", w.name)))?;
                                (b, a, "gptq")
                            }
                            _ => {
                                let (b, a) = rtn_with(
                                    &v,
                                    rows as usize,
                                    cols as usize,
                                    &q,
                                    opts.clip,
                                    energy.as_deref(),
                                );
                                (b, a, if opts.clip { "rtn+clip" } else { "rtn" })
                            }
                        };
                        (Encoding::Quant(q), bytes, approx, how)
                    }
                }
            };
            let (mut num, mut den) = (0f64, 0f64);
            for (a, b) in v.iter().zip(&approx) {
                num += ((a - b) as f64).powi(2);
                den += (*a as f64).powi(2);
            }
            let out_error = st.map(|s| {
                let e =
                    crate::gptq::output_error(&v, &approx, rows as usize, cols as usize, &s.gram);
                let zero = vec![0f32; v.len()];
                let base =
                    crate::gptq::output_error(&v, &zero, rows as usize, cols as usize, &s.gram);
                if base > 0.0 {
                    (e / base).sqrt()
                } else {
                    0.0
                }
            });
            let ty = TensorType {
                shape: w.ty.shape.clone(),
                enc: enc.clone(),
            };
            let after = enc.byte_size(&dims).unwrap_or(0);
            let wd = WeightData::new(
                Bytes::owned(bytes),
                Format::Canonical,
                format!("{} ({})", data.origin, opts.describe()),
            );
            let rep = WeightReport {
                name: w.name.clone(),
                from,
                to: enc.to_string(),
                method: how.to_string(),
                params: rows * cols,
                bytes_before: before,
                bytes_after: after,
                rel_error: if den > 0.0 { (num / den).sqrt() } else { 0.0 },
                out_error,
                rescaled: None,
            };
            let k = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if let Some(p) = progress {
                p("quantized weights", k, total);
            }
            Ok((i, ty, wd, rep))
        })
        .collect();
    let mut reports = Vec::new();
    let changed: Vec<usize> = work.iter().map(|&(i, _)| i).collect();
    for r in results {
        let (i, ty, wd, rep) = r?;
        let w = &mut g.weights[i];
        w.hash = wd.hash();
        w.ty = ty.clone();
        w.data = Some(wd);
        let v = w.value;
        g.values[v.0 as usize].ty = ty;
        reports.push(rep);
    }
    reports.extend(awq_rows);
    keep_other_uses(g, &changed);
    g.sort().map_err(|source| PassError::Ir {
        pass: "quantize".into(),
        source,
    })?;
    llmc_ir::verify(g).map_err(|source| PassError::Ir {
        pass: "quantize".into(),
        source,
    })?;
    Ok(reports)
}

/// What mixed precision promotes layers to: int8, symmetric, per output channel.
const HIGH: QuantSpec = QuantSpec {
    bits: 8,
    group: Group::Channel,
    scale: DType::F16,
    zero: Zero::Symmetric,
};

/// Mixed precision: the weights to promote to [`HIGH`] so the quantized weights average at
/// most `bpw` bits. Each layer's relative output error on calibration at both encodings
/// (round to nearest) ranks it; promotions go by error removed per extra byte, greedily.
fn mixed_precision(
    g: &Graph,
    opts: &QuantOptions,
    bits: u8,
    bpw: f64,
    work: &[(usize, ValueId)],
    stats: &Stats,
) -> Result<BTreeSet<usize>, PassError> {
    let err = |msg: String| PassError::Options {
        pass: "quantize".into(),
        msg,
    };
    struct Choice {
        idx: usize,
        params: u64,
        low: u64,
        high: u64,
        gain: f64,
    }
    let choices: Vec<Result<Choice, PassError>> = work
        .par_iter()
        .map(|&(i, input)| {
            let (v, rows, cols) = crate::smooth::weight_f32(g, i)?;
            let dims = [rows as u64, cols as u64];
            let lq = spec_for(opts, bits, &g.weights[i].name, cols as u64).map_err(err)?;
            let low = Encoding::Quant(lq).byte_size(&dims).unwrap_or(0);
            let high = Encoding::Quant(HIGH).byte_size(&dims).unwrap_or(0);
            let gain = match stats.inputs.get(&input).filter(|s| s.cols == cols) {
                Some(st) => {
                    let zero = vec![0f32; v.len()];
                    let base =
                        crate::gptq::output_error(&v, &zero, rows, cols, &st.gram).max(1e-30);
                    let (_, a) = rtn(&v, rows, cols, &lq);
                    let (_, b) = rtn(&v, rows, cols, &HIGH);
                    (crate::gptq::output_error(&v, &a, rows, cols, &st.gram)
                        - crate::gptq::output_error(&v, &b, rows, cols, &st.gram))
                        / base
                }
                None => 0.0,
            };
            Ok(Choice {
                idx: i,
                params: (rows * cols) as u64,
                low,
                high,
                gain,
            })
        })
        .collect();
    let mut choices: Vec<Choice> = choices.into_iter().collect::<Result<_, _>>()?;
    let params: u64 = choices.iter().map(|c| c.params).sum();
    let budget = (bpw * params as f64 / 8.0).floor() as u64;
    let mut used: u64 = choices.iter().map(|c| c.low).sum();
    if used > budget {
        return Err(err(format!(
            "bpw={bpw} is below what int{bits} alone takes ({:.3} bits per weight)",
            used as f64 * 8.0 / params.max(1) as f64
        )));
    }
    choices.sort_by(|a, b| {
        let ra = a.gain / (a.high.saturating_sub(a.low).max(1)) as f64;
        let rb = b.gain / (b.high.saturating_sub(b.low).max(1)) as f64;
        rb.total_cmp(&ra).then(a.idx.cmp(&b.idx))
    });
    let mut out = BTreeSet::new();
    for c in &choices {
        let extra = c.high.saturating_sub(c.low);
        if c.gain > 0.0 && used + extra <= budget {
            used += extra;
            out.insert(c.idx);
        }
    }
    Ok(out)
}

/// AWQ's search: for every site whose linear layers are all quantized, the per-channel scale
/// `s = mean|x|^α` (α on a grid of 20 in [0, 1), normalized to a geometric mean of 1) whose
/// round-to-nearest weights have the least output error on calibration, folded into the
/// producer. α = 0 is plain rounding, so the search never does worse on its own data.
fn awq(
    g: &mut Graph,
    opts: &QuantOptions,
    bits: u8,
    stats: &mut Stats,
) -> Result<Vec<WeightReport>, PassError> {
    let quantized: BTreeSet<usize> = quantizable(g, opts.head)
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    let mut rows_out = Vec::new();
    for site in crate::smooth::sites(g) {
        if !site.linears.iter().all(|i| quantized.contains(i)) {
            continue;
        }
        let Some(st) = stats.inputs.get(&site.input) else {
            continue;
        };
        let mean: Vec<f32> = st.abs_mean().iter().map(|&m| m as f32).collect();
        let mut layers = Vec::new();
        for &i in &site.linears {
            let (v, rows, cols) = crate::smooth::weight_f32(g, i)?;
            let q = spec_for(opts, bits, &g.weights[i].name, cols as u64).map_err(|m| {
                PassError::Pattern {
                    pattern: "quantize",
                    at: "graph".into(),
                    msg: m,
                }
            })?;
            layers.push((v, rows, cols, q));
        }
        let gram = &st.gram;
        let grid: Vec<f32> = (0..20).map(|k| k as f32 / 20.0).collect();
        let losses: Vec<(f64, Vec<f32>)> = grid
            .par_iter()
            .map(|&alpha| {
                let mut s: Vec<f32> = mean.iter().map(|&m| m.max(1e-8).powf(alpha)).collect();
                let (lo, hi) = s
                    .iter()
                    .fold((f32::INFINITY, 0f32), |(a, b), &x| (a.min(x), b.max(x)));
                let norm = (lo * hi).sqrt();
                s.iter_mut().for_each(|x| *x = (*x / norm).max(1e-4));
                let loss: f64 = layers
                    .iter()
                    .map(|(v, rows, cols, q)| {
                        let scaled: Vec<f32> = v
                            .chunks(*cols)
                            .flat_map(|row| row.iter().zip(&s).map(|(x, s)| x * s))
                            .collect();
                        let (_, a) = rtn(&scaled, *rows, *cols, q);
                        let back: Vec<f32> = a
                            .chunks(*cols)
                            .flat_map(|row| row.iter().zip(&s).map(|(x, s)| x / s))
                            .collect();
                        crate::gptq::output_error(v, &back, *rows, *cols, gram)
                    })
                    .sum();
                (loss, s)
            })
            .collect();
        let (best, (base_loss, best_loss)) = losses
            .iter()
            .enumerate()
            .min_by(|a, b| a.1 .0.total_cmp(&b.1 .0))
            .map(|(k, (l, _))| (k, (losses[0].0, *l)))
            .expect("grid is not empty");
        let rescaled = if best > 0 {
            let s = losses[best].1.clone();
            crate::smooth::apply(g, &site, &s, Some(stats), "awq")?;
            let names = site.linears.iter().map(|&i| g.weights[i].name.clone());
            Some((names.collect(), s))
        } else {
            None
        };
        rows_out.push(WeightReport {
            name: site
                .linears
                .iter()
                .map(|&i| g.weights[i].name.clone())
                .collect::<Vec<_>>()
                .join(","),
            from: "awq".into(),
            to: format!("alpha={:.2}", grid[best]),
            method: "awq-scale".into(),
            params: 0,
            bytes_before: 0,
            bytes_after: 0,
            rel_error: if base_loss > 0.0 {
                best_loss / base_loss
            } else {
                1.0
            },
            out_error: None,
            rescaled,
        });
    }
    Ok(rows_out)
}

/// Ops other than linear layers that read a changed weight (an embedding tied to the head)
/// keep their result type: a weight now f16 is gathered as f16 and cast back.
fn keep_other_uses(g: &mut Graph, changed: &[usize]) {
    let values: BTreeSet<llmc_ir::ValueId> = changed.iter().map(|&i| g.weights[i].value).collect();
    for i in 0..g.nodes.len() {
        let n = &g.nodes[i];
        if matches!(n.op, Op::Linear { .. }) || !n.inputs.iter().any(|v| values.contains(v)) {
            continue;
        }
        let Ok(tys) = g.infer_node(&n.op, &n.inputs) else {
            continue;
        };
        for (k, ty) in tys.into_iter().enumerate() {
            let old = g.nodes[i].outputs[k];
            let old_ty = g.ty(old).clone();
            if ty.dtype() == old_ty.dtype() {
                continue;
            }
            let fresh = g.retype_output(i, k, ty);
            let cast = g.push_node(
                Op::Cast { to: old_ty.dtype() },
                &[fresh],
                vec![old_ty],
                None,
            )[0];
            g.replace_uses(old, cast);
        }
    }
}

/// The grid of one group: scale, and zero (the integer zero point for `asym`, the float
/// offset for `min`, unused for `sym`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grid {
    pub scale: f32,
    pub zero: f32,
}

fn round_scale(q: &QuantSpec, s: f32) -> f32 {
    match q.scale {
        DType::F16 => half::f16::from_f32(s).to_f32(),
        DType::BF16 => half::bf16::from_f32(s).to_f32(),
        _ => s,
    }
}

impl Grid {
    /// The round-to-nearest grid of a group, its range shrunk by `clip` (1: the full range).
    /// Scales are rounded to the scale type before codes are chosen.
    pub fn fit(xs: &[f32], q: &QuantSpec, clip: f32) -> Grid {
        let levels = ((1u32 << q.bits) - 1) as f32;
        let center = (1u32 << (q.bits - 1)) as f32;
        match q.zero {
            Zero::Symmetric => {
                // the element of largest magnitude maps to the most negative code
                let m = xs
                    .iter()
                    .fold(0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
                Grid {
                    scale: round_scale(q, m * clip / -center),
                    zero: 0.0,
                }
            }
            Zero::Int | Zero::Float => {
                let (lo, hi) = xs
                    .iter()
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
                        (a.min(x), b.max(x))
                    });
                let (lo, hi) = (lo.min(0.0) * clip, hi.max(0.0) * clip);
                let s = round_scale(q, (hi - lo) / levels);
                let zero = if q.zero == Zero::Int {
                    let inv = if s != 0.0 { 1.0 / s } else { 0.0 };
                    (-lo * inv).round_ties_even().clamp(0.0, levels)
                } else {
                    round_scale(q, lo)
                };
                Grid { scale: s, zero }
            }
        }
    }

    /// The grid among clip factors 1, 0.95, … 0.55 with the least squared error on the group,
    /// each element weighted by `weight` (the layer's input energy per channel) when given.
    pub fn search(xs: &[f32], weight: Option<&[f32]>, q: &QuantSpec) -> Grid {
        let mut best = (f64::INFINITY, Grid::fit(xs, q, 1.0));
        for step in 0..10 {
            let g = Grid::fit(xs, q, 1.0 - 0.05 * step as f32);
            let err: f64 = xs
                .iter()
                .enumerate()
                .map(|(i, &x)| {
                    let d = (x - g.quantize(x, q).1) as f64;
                    d * d * weight.map_or(1.0, |w| w[i] as f64)
                })
                .sum();
            if err < best.0 {
                best = (err, g);
            }
        }
        best.1
    }

    /// The code of `x` and the value it decodes to.
    #[inline]
    pub fn quantize(&self, x: f32, q: &QuantSpec) -> (u8, f32) {
        let levels = ((1u32 << q.bits) - 1) as f32;
        let s = self.scale;
        let inv = if s != 0.0 { 1.0 / s } else { 0.0 };
        match q.zero {
            Zero::Symmetric => {
                let center = (1u32 << (q.bits - 1)) as f32;
                let c = ((x * inv).round_ties_even() + center).clamp(0.0, levels);
                (c as u8, s * (c - center))
            }
            Zero::Int => {
                let c = ((x * inv).round_ties_even() + self.zero).clamp(0.0, levels);
                (c as u8, s * (c - self.zero))
            }
            Zero::Float => {
                let c = ((x - self.zero) * inv).round_ties_even().clamp(0.0, levels);
                (c as u8, s * c + self.zero)
            }
        }
    }
}

/// Elements per group of a spec over `[rows, cols]`.
pub fn group_len(q: &QuantSpec, rows: usize, cols: usize) -> usize {
    match q.group {
        Group::Size(g) => g as usize,
        Group::Channel => cols,
        Group::Tensor => rows * cols,
        Group::Rows(g) => g as usize * cols,
    }
}

/// Round-to-nearest quantization of a `[rows, cols]` matrix: canonical bytes and the values
/// they decode to. With `energy` (per input channel, from calibration) each group's range is
/// clipped where that lowers the energy-weighted error; `clip` without it weighs all alike.
pub fn rtn(v: &[f32], rows: usize, cols: usize, q: &QuantSpec) -> (Vec<u8>, Vec<f32>) {
    rtn_with(v, rows, cols, q, false, None)
}

/// [`rtn`] with the clipping search of [`Grid::search`].
pub fn rtn_with(
    v: &[f32],
    rows: usize,
    cols: usize,
    q: &QuantSpec,
    clip: bool,
    energy: Option<&[f32]>,
) -> (Vec<u8>, Vec<f32>) {
    let gsize = group_len(q, rows, cols);
    let n = rows * cols;
    let groups = n.div_ceil(gsize);
    let per: Vec<(Vec<u8>, Grid, Vec<f32>)> = (0..groups)
        .into_par_iter()
        .map(|gi| {
            let at = gi * gsize;
            let xs = &v[at..(at + gsize).min(n)];
            let grid = if clip {
                // a group never straddles rows unless it is the whole tensor
                let w = energy.filter(|_| gsize <= cols).map(|e| {
                    let c0 = at % cols;
                    &e[c0..c0 + xs.len()]
                });
                Grid::search(xs, w, q)
            } else {
                Grid::fit(xs, q, 1.0)
            };
            let (codes, approx) = xs.iter().map(|&x| grid.quantize(x, q)).unzip();
            (codes, grid, approx)
        })
        .collect();
    let mut codes = Vec::with_capacity(n);
    let mut scales = Vec::with_capacity(groups);
    let mut zeros = Vec::with_capacity(groups);
    let mut approx = Vec::with_capacity(n);
    for (c, g, a) in per {
        codes.extend(c);
        scales.push(g.scale);
        zeros.push(g.zero);
        approx.extend(a);
    }
    (
        encode_quant(q, rows as u64, cols as u64, &codes, &scales, &zeros),
        approx,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmc_ir::Shape;

    #[test]
    fn rtn_codes_decode_to_the_reported_values() {
        let v: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) * 0.1)
            .collect();
        for zero in [Zero::Symmetric, Zero::Int, Zero::Float] {
            for bits in [4u8, 8] {
                let q = QuantSpec {
                    bits,
                    group: Group::Size(32),
                    scale: DType::F16,
                    zero,
                };
                let (bytes, approx) = rtn(&v, 2, 32, &q);
                let ty = TensorType {
                    shape: Shape::fixed(&[2, 32]),
                    enc: Encoding::Quant(q),
                };
                let d = WeightData::new(Bytes::owned(bytes), Format::Canonical, "t")
                    .decode_f32(&ty)
                    .unwrap();
                assert_eq!(d.to_f32_vec(), approx, "{zero:?} {bits}");
                let err: f32 = v
                    .iter()
                    .zip(&approx)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(
                    err <= 0.8 / (1 << (bits - 1)) as f32 + 1e-3,
                    "{zero:?} {bits}: {err}"
                );
            }
        }
    }
}

/// The `quantize` pass.
pub struct QuantizePass {
    pub opts: QuantOptions,
    pub reports: Vec<WeightReport>,
}

pub static QUANTIZE_INFO: crate::manager::PassInfo = crate::manager::PassInfo {
    name: "quantize",
    summary:
        "round-to-nearest quantization of linear weights, optionally int8 activations per token",
    options: &[
        crate::manager::OptionSpec {
            name: "bits",
            kind: "2|3|4|5|6|7|8|16|32",
            default: "4",
            help: "integer bits of the weights; 16 converts to f16, 32 keeps f32",
        },
        crate::manager::OptionSpec {
            name: "group",
            kind: "int",
            default: "0",
            help:
                "weights per scale along the input dimension; 0: 64 below 8 bits, per channel at 8",
        },
        crate::manager::OptionSpec {
            name: "zero",
            kind: "auto|sym|asym|min",
            default: "auto",
            help: "zero point: none, integer, or float offset; auto: asym below 8 bits, sym at 8",
        },
        crate::manager::OptionSpec {
            name: "act",
            kind: "none|i8",
            default: "none",
            help: "activations quantized to int8 per token (w*a8 kernels)",
        },
        crate::manager::OptionSpec {
            name: "method",
            kind: "rtn|gptq|awq",
            default: "rtn",
            help: "how weights are rounded: round to nearest, GPTQ, or AWQ scales then rounding (gptq and awq need calibration)",
        },
        crate::manager::OptionSpec {
            name: "clip",
            kind: "auto|true|false",
            default: "auto",
            help: "search each group's clipping range; auto: on for gptq and awq",
        },
        crate::manager::OptionSpec {
            name: "head",
            kind: "bool",
            default: "true",
            help: "quantize the output head (and an embedding tied to it)",
        },
        crate::manager::OptionSpec {
            name: "bpw",
            kind: "float",
            default: "0",
            help: "mixed precision: average bits per weight to reach by moving the most sensitive layers to int8 (0: off; needs calibration)",
        },
        crate::manager::OptionSpec {
            name: "damp",
            kind: "float",
            default: "0.01",
            help: "GPTQ: dampening of the Hessian's diagonal, as a fraction of its mean",
        },
        crate::manager::OptionSpec {
            name: "act_order",
            kind: "bool",
            default: "true",
            help: "GPTQ: quantize columns by decreasing Hessian diagonal",
        },
    ],
};

impl QuantizePass {
    pub fn from_options(o: &crate::manager::Options) -> Result<QuantizePass, PassError> {
        let bits = o.int("bits")?;
        let weights = match bits {
            32 => WeightFormat::F32,
            16 => WeightFormat::F16,
            b => WeightFormat::Int(b as u8),
        };
        let group = match o.int("group")? {
            0 => None,
            g if g > 0 => Some(g as u32),
            g => {
                return Err(PassError::Options {
                    pass: "quantize".into(),
                    msg: format!("group must be at least 0, not {g}"),
                })
            }
        };
        let zero = match o.str("zero") {
            "sym" => Some(Zero::Symmetric),
            "asym" => Some(Zero::Int),
            "min" => Some(Zero::Float),
            _ => None,
        };
        let act = if o.str("act") == "i8" {
            ActQuant::I8PerToken
        } else {
            ActQuant::None
        };
        let method = Method::parse(o.str("method")).expect("checked by the option spec");
        let mut opts = QuantOptions::new(weights, group, zero, act).with_method(method);
        match o.str("clip") {
            "true" => opts.clip = true,
            "false" => opts.clip = false,
            _ => {}
        }
        opts.head = o.bool("head");
        let damp = o.float("damp")?;
        if !(0.0..1.0).contains(&damp) {
            return Err(PassError::Options {
                pass: "quantize".into(),
                msg: format!("damp must lie in [0, 1), not {damp}"),
            });
        }
        opts.gptq.damp = damp;
        opts.gptq.act_order = o.bool("act_order");
        let bpw = o.float("bpw")?;
        opts.bpw = (bpw > 0.0).then_some(bpw);
        Ok(QuantizePass {
            opts,
            reports: Vec::new(),
        })
    }
}

impl crate::manager::Pass for QuantizePass {
    fn info(&self) -> &'static crate::manager::PassInfo {
        &QUANTIZE_INFO
    }

    fn needs_calibration(&self) -> bool {
        matches!(self.opts.weights, WeightFormat::Int(_))
            && (self.opts.method.calibrated() || self.opts.bpw.is_some())
    }

    fn run(
        &mut self,
        g: &mut Graph,
        cx: &mut crate::manager::PassContext,
    ) -> Result<(), PassError> {
        let int = matches!(self.opts.weights, WeightFormat::Int(_));
        // statistics sharpen clipping and feed the report's output errors when at hand
        let want = int
            && (self.opts.method.calibrated()
                || self.opts.bpw.is_some()
                || (self.opts.clip && cx.calib.is_some()));
        let mut stats = if want || cx.stats.is_some() {
            Some(cx.take_stats(g, "quantize")?)
        } else {
            None
        };
        let progress = cx.progress.clone();
        self.reports = quantize_with(g, &self.opts, stats.as_mut(), progress.as_ref())?;
        cx.stats = stats;
        if let Some(o) = cx.originals.as_mut() {
            for (names, s) in self.reports.iter().filter_map(|r| r.rescaled.as_ref()) {
                names.iter().for_each(|n| o.scale_columns(n, s));
            }
        }
        for r in &self.reports {
            cx.report.push(serde_json::json!({
                "pass": "quantize",
                "weight": r.name,
                "from": r.from,
                "to": r.to,
                "method": r.method,
                "params": r.params,
                "bytes_before": r.bytes_before,
                "bytes_after": r.bytes_after,
                "bits_per_weight": if r.params > 0 { r.bytes_after as f64 * 8.0 / r.params as f64 } else { 0.0 },
                "rel_error": r.rel_error,
                "out_error": r.out_error,
            }));
        }
        Ok(())
    }
}
