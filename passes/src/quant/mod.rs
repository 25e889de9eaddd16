//! Weight quantization by round-to-nearest: linear layers' weights become block-quantized (or
//! f16) encodings, and `a8` schemes quantize activations per token at the consumer.
//!
//! Contract: only the weights of `linear` ops change (an embedding tied to the output head
//! changes with it); the numeric error is the rounding of each weight to its group's grid,
//! reported per weight as the relative Frobenius error.

mod awq;
mod mixed;
pub mod smoothquant;

use crate::calib::Stats;
use crate::core::edit::{replace, unpalettized_linear_weights};
use crate::core::grid::rtn_with;
use crate::core::pass::{OptionKind, OptionSpec, Options, Pass, PassContext, PassInfo, Progress};
use crate::core::report::{PassRow, WeightRow};
use crate::PassError;
use llmc_ir::types::EncodingError;
use llmc_ir::{
    ActQuant, Bytes, DType, Encoding, Format, Graph, Group, Op, QuantSpec, TensorType, ValueId,
    WeightData, Zero,
};
use mixed::{mixed_precision, HIGH};
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
    pub gptq: crate::core::grid::GptqOptions,
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
fn spec_for(opts: &QuantOptions, bits: u8, cols: u64) -> Result<QuantSpec, EncodingError> {
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
        Some(group) => return Err(EncodingError::GroupCols { cols, group }),
        None => Group::Channel,
    };
    Ok(QuantSpec {
        bits,
        group,
        scale: DType::F16,
        zero: opts.zero,
    })
}

/// Rewrites linear weights to the options' encoding with their method, reading calibration
/// statistics (`stats`) where the method needs them; returns what changed.
pub fn quantize_with(
    g: &mut Graph,
    opts: &QuantOptions,
    mut stats: Option<&mut Stats>,
    progress: Option<&Progress>,
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
        unpalettized_linear_weights(g, opts.head)
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
        awq_rows = awq::awq(g, opts, bits, st)?;
    }
    let work = unpalettized_linear_weights(g, opts.head);
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
                .then(|| crate::core::edit::split_2of4(&v, rows as usize, cols as usize))
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
                        let q = spec_for(&kept_opts, bits, half as u64)
                            .map_err(|e| PassError::matrix("quantize", &w.name, e))?;
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
                            spec_for(opts, bits, cols)
                                .map_err(|e| PassError::matrix("quantize", &w.name, e))?
                        };
                        let energy: Option<Vec<f32>> = st
                            .map(|s| (0..s.cols).map(|j| s.gram[j * s.cols + j] as f32).collect());
                        let (bytes, approx, how) = match (opts.method, st) {
                            (Method::Gptq, Some(s)) => {
                                let o = crate::core::grid::GptqOptions {
                                    clip: opts.clip,
                                    ..opts.gptq
                                };
                                let (b, a) = crate::core::grid::gptq(
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
                let e = crate::core::linalg::output_error(
                    &v,
                    &approx,
                    rows as usize,
                    cols as usize,
                    &s.gram,
                );
                let zero = vec![0f32; v.len()];
                let base = crate::core::linalg::output_error(
                    &v,
                    &zero,
                    rows as usize,
                    cols as usize,
                    &s.gram,
                );
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
        replace(g, i, ty, wd)?;
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

/// The `quantize` pass.
pub struct QuantizePass {
    pub opts: QuantOptions,
    pub reports: Vec<WeightReport>,
}

pub static QUANTIZE_INFO: PassInfo = PassInfo {
    name: "quantize",
    summary:
        "round-to-nearest quantization of linear weights, optionally int8 activations per token",
    options: &[
        OptionSpec {
            name: "bits",
            kind: OptionKind::Choice(&["2", "3", "4", "5", "6", "7", "8", "16", "32"]),
            default: "4",
            help: "integer bits of the weights; 16 converts to f16, 32 keeps f32",
        },
        OptionSpec {
            name: "group",
            kind: OptionKind::Int,
            default: "0",
            help:
                "weights per scale along the input dimension; 0: 64 below 8 bits, per channel at 8",
        },
        OptionSpec {
            name: "zero",
            kind: OptionKind::Choice(&["auto", "sym", "asym", "min"]),
            default: "auto",
            help: "zero point: none, integer, or float offset; auto: asym below 8 bits, sym at 8",
        },
        OptionSpec {
            name: "act",
            kind: OptionKind::Choice(&["none", "i8"]),
            default: "none",
            help: "activations quantized to int8 per token (w*a8 kernels)",
        },
        OptionSpec {
            name: "method",
            kind: OptionKind::Choice(&["rtn", "gptq", "awq"]),
            default: "rtn",
            help: "how weights are rounded: round to nearest, GPTQ, or AWQ scales then rounding (gptq and awq need calibration)",
        },
        OptionSpec {
            name: "clip",
            kind: OptionKind::Choice(&["auto", "true", "false"]),
            default: "auto",
            help: "search each group's clipping range; auto: on for gptq and awq",
        },
        OptionSpec {
            name: "head",
            kind: OptionKind::Bool,
            default: "true",
            help: "quantize the output head (and an embedding tied to it)",
        },
        OptionSpec {
            name: "bpw",
            kind: OptionKind::Float,
            default: "0",
            help: "mixed precision: average bits per weight to reach by moving the most sensitive layers to int8 (0: off; needs calibration)",
        },
        OptionSpec {
            name: "damp",
            kind: OptionKind::Float,
            default: "0.01",
            help: "GPTQ: dampening of the Hessian's diagonal, as a fraction of its mean",
        },
        OptionSpec {
            name: "act_order",
            kind: OptionKind::Bool,
            default: "true",
            help: "GPTQ: quantize columns by decreasing Hessian diagonal",
        },
    ],
    create: |o| Ok(Box::new(QuantizePass::from_options(o)?)),
};

impl QuantizePass {
    pub fn from_options(o: &Options) -> Result<QuantizePass, PassError> {
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

impl Pass for QuantizePass {
    fn info(&self) -> &'static PassInfo {
        &QUANTIZE_INFO
    }

    fn needs_calibration(&self) -> bool {
        matches!(self.opts.weights, WeightFormat::Int(_))
            && (self.opts.method.calibrated() || self.opts.bpw.is_some())
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<(), PassError> {
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
            cx.report.push(PassRow::Weight(WeightRow {
                pass: "quantize",
                weight: r.name.clone(),
                from: r.from.clone(),
                to: r.to.clone(),
                method: r.method.clone(),
                params: r.params,
                bytes_before: r.bytes_before,
                bytes_after: r.bytes_after,
                bits_per_weight: WeightRow::bits(r.bytes_after, r.params),
                rel_error: r.rel_error,
                out_error: r.out_error,
                iterations: None,
            }));
        }
        Ok(())
    }
}
