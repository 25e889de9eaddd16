//! Weight quantization by round-to-nearest: linear layers' weights become block-quantized (or
//! f16) encodings, and `a8` schemes quantize activations per token at the consumer.
//!
//! Contract: only the weights of `linear` ops change (an embedding tied to the output head
//! changes with it); the numeric error is the rounding of each weight to its group's grid,
//! reported per weight as the relative Frobenius error.

use crate::PassError;
use llmc_ir::weights::encode_quant;
use llmc_ir::{
    ActQuant, Bytes, DType, Encoding, Format, Graph, Group, Op, QuantSpec, TensorType, WeightData,
    Zero,
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
}

impl Scheme {
    pub const NAMES: [&'static str; 6] = ["none", "f16", "w8a16", "w8a8", "w4a16", "w4a8"];

    pub fn parse(s: &str) -> Option<Scheme> {
        Some(match s {
            "none" | "f32" => Scheme::None,
            "f16" => Scheme::F16,
            "w8a16" => Scheme::W8A16,
            "w8a8" => Scheme::W8A8,
            "w4a16" => Scheme::W4A16,
            "w4a8" => Scheme::W4A8,
            _ => return None,
        })
    }

    pub fn bits(self) -> Option<u8> {
        match self {
            Scheme::W8A16 | Scheme::W8A8 => Some(8),
            Scheme::W4A16 | Scheme::W4A8 => Some(4),
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
    /// A weight whose rows the group size does not divide is an error (a group the user
    /// asked for); otherwise it takes the largest smaller power of two that divides them.
    pub strict_group: bool,
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
            strict_group: group.is_some(),
        }
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
        format!("{w} act={} rtn", self.act.name())
    }
}

/// One weight's entry in the report.
#[derive(Clone, Debug)]
pub struct WeightReport {
    pub name: String,
    pub from: String,
    pub to: String,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// ‖W − Ŵ‖ / ‖W‖ against the weight as it decoded before the pass.
    pub rel_error: f64,
}

/// Rewrites linear weights to the scheme's encoding; returns what changed.
pub fn quantize(g: &mut Graph, opts: &QuantOptions) -> Result<Vec<WeightReport>, PassError> {
    let err = |msg: String| PassError::Pattern {
        pattern: "quantize",
        at: "graph".into(),
        msg,
    };
    let mut targets = BTreeSet::new();
    for n in &g.nodes {
        if let Op::Linear { .. } = n.op {
            if let Some(w) = g.weight_of(n.inputs[1]) {
                targets.insert(w.name.clone());
            }
        }
    }
    if let Some(gs) = opts.group {
        if gs == 0 || !gs.is_power_of_two() {
            return Err(err(format!("group size {gs} must be a power of two")));
        }
    }
    let act = opts.act;
    for n in &mut g.nodes {
        if let Op::Linear { act: a } = &mut n.op {
            *a = act;
        }
    }
    let indices: Vec<usize> = g
        .weights
        .iter()
        .enumerate()
        .filter(|(_, w)| targets.contains(&w.name))
        .map(|(i, _)| i)
        .collect();
    let results: Vec<Result<(usize, TensorType, WeightData, WeightReport), PassError>> = indices
        .par_iter()
        .map(|&i| {
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
            let before = w.ty.enc.byte_size(&dims).unwrap_or(0);
            let t = data.decode_f32(&w.ty).map_err(|e| err(e.to_string()))?;
            let v = t.to_f32_vec();
            let (rows, cols) = llmc_ir::types::rows_cols(&dims);
            let (enc, bytes, approx) = match opts.weights {
                WeightFormat::F16 => {
                    let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
                    let approx: Vec<f32> = h.iter().map(|x| x.to_f32()).collect();
                    let bytes = h.iter().flat_map(|x| x.to_le_bytes()).collect();
                    (Encoding::Dense(DType::F16), bytes, approx)
                }
                WeightFormat::F32 => (
                    Encoding::Dense(DType::F32),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    v.clone(),
                ),
                WeightFormat::Int(bits) => {
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
                            return Err(err(format!(
                            "weight @{} has rows of {cols}, not a multiple of the group size {gs}",
                            w.name
                        )))
                        }
                        None => Group::Channel,
                    };
                    let q = QuantSpec {
                        bits,
                        group,
                        scale: DType::F16,
                        zero: opts.zero,
                    };
                    let (bytes, approx) = rtn(&v, rows as usize, cols as usize, &q);
                    (Encoding::Quant(q), bytes, approx)
                }
            };
            let (mut num, mut den) = (0f64, 0f64);
            for (a, b) in v.iter().zip(&approx) {
                num += ((a - b) as f64).powi(2);
                den += (*a as f64).powi(2);
            }
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
                from: w.ty.enc.to_string(),
                to: enc.to_string(),
                bytes_before: before,
                bytes_after: after,
                rel_error: if den > 0.0 { (num / den).sqrt() } else { 0.0 },
            };
            Ok((i, ty, wd, rep))
        })
        .collect();
    let mut reports = Vec::new();
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
    keep_other_uses(g, &indices);
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

/// Round-to-nearest quantization of a `[rows, cols]` matrix: canonical bytes and the values
/// they decode to. Scales are rounded to the scale type before the codes are chosen.
pub fn rtn(v: &[f32], rows: usize, cols: usize, q: &QuantSpec) -> (Vec<u8>, Vec<f32>) {
    let gsize = match q.group {
        Group::Size(g) => g as usize,
        Group::Channel => cols,
        Group::Tensor => rows * cols,
    };
    let levels = (1u32 << q.bits) - 1;
    let center = (1u32 << (q.bits - 1)) as f32;
    let round_scale = |s: f32| match q.scale {
        DType::F16 => half::f16::from_f32(s).to_f32(),
        DType::BF16 => half::bf16::from_f32(s).to_f32(),
        _ => s,
    };
    let n = rows * cols;
    let groups = n.div_ceil(gsize);
    let per: Vec<(Vec<u8>, f32, f32, Vec<f32>)> = (0..groups)
        .into_par_iter()
        .map(|gi| {
            let xs = &v[gi * gsize..((gi + 1) * gsize).min(n)];
            match q.zero {
                Zero::Symmetric => {
                    // the element of largest magnitude maps to the most negative code
                    let m = xs
                        .iter()
                        .fold(0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
                    let s = round_scale(m / -center);
                    let inv = if s != 0.0 { 1.0 / s } else { 0.0 };
                    let codes: Vec<u8> = xs
                        .iter()
                        .map(|&x| {
                            ((x * inv).round_ties_even() + center).clamp(0.0, levels as f32) as u8
                        })
                        .collect();
                    let approx = codes.iter().map(|&c| s * (c as f32 - center)).collect();
                    (codes, s, 0.0, approx)
                }
                Zero::Int | Zero::Float => {
                    let (lo, hi) = xs
                        .iter()
                        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
                            (a.min(x), b.max(x))
                        });
                    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
                    let s = round_scale((hi - lo) / levels as f32);
                    let inv = if s != 0.0 { 1.0 / s } else { 0.0 };
                    if q.zero == Zero::Int {
                        let z = (-lo * inv).round_ties_even().clamp(0.0, levels as f32);
                        let codes: Vec<u8> = xs
                            .iter()
                            .map(|&x| {
                                ((x * inv).round_ties_even() + z).clamp(0.0, levels as f32) as u8
                            })
                            .collect();
                        let approx = codes.iter().map(|&c| s * (c as f32 - z)).collect();
                        (codes, s, z, approx)
                    } else {
                        let m = round_scale(lo);
                        let codes: Vec<u8> = xs
                            .iter()
                            .map(|&x| {
                                ((x - m) * inv).round_ties_even().clamp(0.0, levels as f32) as u8
                            })
                            .collect();
                        let approx = codes.iter().map(|&c| s * c as f32 + m).collect();
                        (codes, s, m, approx)
                    }
                }
            }
        })
        .collect();
    let mut codes = Vec::with_capacity(n);
    let mut scales = Vec::with_capacity(groups);
    let mut zeros = Vec::with_capacity(groups);
    let mut approx = Vec::with_capacity(n);
    for (c, s, z, a) in per {
        codes.extend(c);
        scales.push(s);
        zeros.push(z);
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
            kind: "rtn",
            default: "rtn",
            help: "how weights are rounded",
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
        Ok(QuantizePass {
            opts: QuantOptions::new(weights, group, zero, act),
            reports: Vec::new(),
        })
    }
}

impl crate::manager::Pass for QuantizePass {
    fn info(&self) -> &'static crate::manager::PassInfo {
        &QUANTIZE_INFO
    }

    fn run(
        &mut self,
        g: &mut Graph,
        cx: &mut crate::manager::PassContext,
    ) -> Result<(), PassError> {
        self.reports = quantize(g, &self.opts)?;
        for r in &self.reports {
            cx.report.push(serde_json::json!({
                "pass": "quantize",
                "weight": r.name,
                "from": r.from,
                "to": r.to,
                "bytes_before": r.bytes_before,
                "bytes_after": r.bytes_after,
                "rel_error": r.rel_error,
            }));
        }
        Ok(())
    }
}
