//! CALDERA (Saha et al., 2024): each linear weight becomes `W ≈ Q + L·R`, a low-precision
//! backbone `Q` (2–4 bits) plus a low-rank term whose factors are themselves quantized (4–8
//! bits), found by alternating calibration-aware updates:
//!
//! 1. `Q ← GPTQ(W − L·R)` against the layer's Hessian `XᵀX` (LDLQ is GPTQ's update rule);
//! 2. `L, R ← ` the rank-`r` factors of `W − Q` that minimize the output error on the
//!    calibration inputs (the SVD of the residual whitened by the Cholesky factor of `XᵀX`,
//!    as SVD-LLM), then `R` quantized by GPTQ against `XᵀX` (it reads the layer's input) and
//!    `L` against `R XᵀX Rᵀ` (it reads `R x`).
//!
//! The best of the iterations by output error is kept. In the graph `y = x Wᵀ` becomes
//! `y = x Qᵀ + (x Rᵀ) Lᵀ`: three linear layers and an add, every weight in a block
//! quantization the CPU backend unpacks inside its kernels.

use crate::calib::Stats;
use crate::core::edit::replace;
use crate::core::grid::{gptq, GptqOptions};
use crate::core::linalg::output_error;
use crate::core::linalg::{factor, RankRule};
use crate::core::pass::{OptionKind, OptionSpec, Options, Pass, PassContext, PassInfo, Progress};
use crate::core::report::{CalderaRow, PassRow};
use crate::MatrixError;
use crate::PassError;
use faer::Mat;
use llmc_ir::{
    BinaryOp, Bytes, DType, Encoding, Format, Graph, Group, Op, QuantSpec, TensorType, WeightData,
    Zero,
};
use rayon::prelude::*;

/// CALDERA's settings.
#[derive(Clone, Copy, Debug)]
pub struct CalderaOptions {
    /// Bits of the backbone `Q`.
    pub bits: u8,
    /// Group size of `Q` (halved until it divides a row).
    pub group: u32,
    /// Rank of `L·R`.
    pub rank: usize,
    /// Bits of `L` and `R`.
    pub lr_bits: u8,
    /// Alternations of the two updates.
    pub iters: usize,
    /// Hessian dampening, as a fraction of its mean diagonal.
    pub damp: f64,
    /// Whether the output head is decomposed too.
    pub head: bool,
}

impl Default for CalderaOptions {
    fn default() -> Self {
        CalderaOptions {
            bits: 2,
            group: 128,
            rank: 64,
            lr_bits: 4,
            iters: 3,
            damp: 0.01,
            head: false,
        }
    }
}

/// An asymmetric block spec of `bits` over rows of `cols`, in groups of `group` halved until
/// they divide the row (per channel below 8).
fn spec(bits: u8, group: u32, cols: usize) -> QuantSpec {
    let mut g = group as usize;
    while g > 1 && cols % g != 0 {
        g /= 2;
    }
    QuantSpec {
        bits,
        group: if g >= 8 && g < cols {
            Group::Size(g as u32)
        } else {
            Group::Channel
        },
        scale: DType::F16,
        zero: Zero::Int,
    }
}

/// One weight decomposed: canonical bytes and specs of `Q`, `L`, `R`, and the errors.
#[derive(Clone, Debug)]
pub struct Decomposed {
    pub q: (QuantSpec, Vec<u8>),
    pub l: (QuantSpec, Vec<u8>),
    pub r: (QuantSpec, Vec<u8>),
    pub rank: usize,
    /// ‖W − (Q + LR)‖_F / ‖W‖_F.
    pub weight_error: f64,
    /// Output error on calibration relative to the output's energy.
    pub out_error: f64,
    /// The relative output error after each iteration.
    pub history: Vec<f64>,
}

fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let am = Mat::<f32>::from_fn(m, k, |i, j| a[i * k + j]);
    let bm = Mat::<f32>::from_fn(k, n, |i, j| b[i * n + j]);
    let p = &am * &bm;
    (0..m * n).map(|x| p[(x / n, x % n)]).collect()
}

/// `R G Rᵀ` (`rank × rank`): the Gram matrix of `R x` from that of `x`.
fn projected_gram(r: &[f32], rank: usize, cols: usize, gram: &[f64]) -> Vec<f64> {
    let rm = Mat::<f64>::from_fn(rank, cols, |i, j| r[i * cols + j] as f64);
    let gm = Mat::<f64>::from_fn(cols, cols, |i, j| gram[i * cols + j]);
    let p = &rm * &gm * rm.transpose();
    (0..rank * rank).map(|x| p[(x / rank, x % rank)]).collect()
}

/// CALDERA of a row-major `[rows, cols]` weight against the Gram matrix of its input.
pub fn decompose(
    w: &[f32],
    rows: usize,
    cols: usize,
    gram: &[f64],
    o: &CalderaOptions,
) -> Result<Decomposed, MatrixError> {
    let rank = o.rank.min(rows).min(cols);
    let qs = spec(o.bits, o.group, cols);
    let rs = spec(o.lr_bits, o.group, cols);
    let ls = spec(o.lr_bits, o.group, rank);
    let go = GptqOptions {
        damp: o.damp,
        ..Default::default()
    };
    let zero = vec![0f32; w.len()];
    let base = output_error(w, &zero, rows, cols, gram).max(f64::MIN_POSITIVE);
    let mut lr = vec![0f32; rows * cols];
    let mut best: Option<Decomposed> = None;
    let mut history = Vec::new();
    for _ in 0..o.iters.max(1) {
        let target: Vec<f32> = w.iter().zip(&lr).map(|(a, b)| a - b).collect();
        let (qb, qa) = gptq(&target, rows, cols, gram, &qs, &go)?;
        let resid: Vec<f32> = w.iter().zip(&qa).map(|(a, b)| a - b).collect();
        let f = factor(&resid, rows, cols, RankRule::Rank(rank), Some(gram), o.damp)?;
        let (rb, ra) = gptq(&f.r, f.rank, cols, gram, &rs, &go)?;
        let gt = projected_gram(&ra, f.rank, cols, gram);
        let (lb, la) = gptq(&f.l, rows, f.rank, &gt, &ls, &go)?;
        lr = matmul(&la, &ra, rows, f.rank, cols);
        let approx: Vec<f32> = qa.iter().zip(&lr).map(|(a, b)| a + b).collect();
        let e = (output_error(w, &approx, rows, cols, gram) / base).sqrt();
        history.push(e);
        if best.as_ref().is_none_or(|b| e < b.out_error) {
            let num: f64 = w
                .iter()
                .zip(&approx)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum();
            let den: f64 = w.iter().map(|a| (*a as f64).powi(2)).sum();
            best = Some(Decomposed {
                q: (qs, qb),
                l: (ls, lb),
                r: (rs, rb),
                rank: f.rank,
                weight_error: (num / den.max(f64::MIN_POSITIVE)).sqrt(),
                out_error: e,
                history: vec![],
            });
        }
    }
    let mut d = best.expect("at least one iteration");
    d.history = history;
    Ok(d)
}

/// What decomposing one weight did, for the report.
#[derive(Clone, Debug)]
pub struct CalderaReport {
    pub weight: String,
    pub rows: usize,
    pub cols: usize,
    pub rank: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub weight_error: f64,
    pub out_error: f64,
    pub history: Vec<f64>,
}

/// Decomposes the linear weights of `g` that one linear layer reads alone (the output head
/// only when `o.head`), rewriting each layer into `Q` plus the `L·R` branch.
pub fn caldera(
    g: &mut Graph,
    o: &CalderaOptions,
    stats: &Stats,
    progress: Option<&Progress>,
) -> Result<Vec<CalderaReport>, PassError> {
    let err = |w: &str, msg: String| PassError::Pattern {
        pattern: "caldera",
        at: format!("@{w}"),
        msg,
    };
    let sites = crate::core::edit::sole_linear_sites(g, o.head);
    let total = sites.len() as u64;
    let done = std::sync::atomic::AtomicU64::new(0);
    let found: Vec<Result<(Decomposed, CalderaReport), PassError>> = sites
        .par_iter()
        .map(|&(_, w, x)| {
            let name = &g.weights[w].name;
            let (v, rows, cols) = crate::core::edit::weight_f32(g, w)?;
            let st = stats
                .inputs
                .get(&x)
                .filter(|s| s.cols == cols)
                .ok_or_else(|| {
                    PassError::matrix(
                        "caldera",
                        name,
                        MatrixError::NoStatistics { method: "caldera" },
                    )
                })?;
            let d = decompose(&v, rows, cols, &st.gram, o)
                .map_err(|e| PassError::matrix("caldera", name, e))?;
            let ty = &g.weights[w].ty;
            let bytes_before = ty.enc.byte_size(&[rows as u64, cols as u64]).unwrap_or(0);
            let size = |q: &QuantSpec, r: usize, c: usize| {
                Encoding::Quant(*q)
                    .byte_size(&[r as u64, c as u64])
                    .unwrap_or(0)
            };
            let bytes_after =
                size(&d.q.0, rows, cols) + size(&d.l.0, rows, d.rank) + size(&d.r.0, d.rank, cols);
            let report = CalderaReport {
                weight: name.clone(),
                rows,
                cols,
                rank: d.rank,
                bytes_before,
                bytes_after,
                weight_error: d.weight_error,
                out_error: d.out_error,
                history: d.history.clone(),
            };
            let k = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if let Some(p) = progress {
                p("decomposed weights", k, total);
            }
            Ok((d, report))
        })
        .collect();
    let mut reports = Vec::new();
    for (&(node, w, x), f) in sites.iter().zip(found) {
        let (d, report) = f?;
        let (rows, cols, rank) = (report.rows, report.cols, d.rank);
        let name = g.weights[w].name.clone();
        let origin = g.weights[w]
            .data
            .as_ref()
            .map_or(String::new(), |d| d.origin.clone());
        let note = format!("{origin} (caldera rank {rank})");
        let data = |bytes: Vec<u8>| WeightData::new(Bytes::owned(bytes), Format::Canonical, &note);
        let ty = |q: QuantSpec, r: usize, c: usize| TensorType {
            enc: Encoding::Quant(q),
            ..TensorType::fixed(&[r, c], DType::F32)
        };
        // Q takes the weight's place
        replace(g, w, ty(d.q.0, rows, cols), data(d.q.1))?;
        let _qv = g.weights[w].value;
        let add = |g: &mut Graph, suffix: &str, q: QuantSpec, r: usize, c: usize, b: Vec<u8>| {
            let n = format!("{name}.caldera_{suffix}");
            g.add_weight(&n, ty(q, r, c), Some(data(b)))
                .map_err(|e| err(&n, e.to_string()))
        };
        let rv = add(g, "r", d.r.0, rank, cols, d.r.1)?;
        let lv = add(g, "l", d.l.0, rows, rank, d.l.1)?;
        let act = match g.nodes[node].op {
            Op::Linear { act } => act,
            _ => unreachable!("sites are linear layers"),
        };
        let y = g.nodes[node].outputs[0];
        let t = g
            .add1(Op::Linear { act }, &[x, rv])
            .map_err(|e| err(&name, e.to_string()))?;
        let u = g
            .add1(Op::Linear { act }, &[t, lv])
            .map_err(|e| err(&name, e.to_string()))?;
        let sum = g
            .add1(Op::Binary(BinaryOp::Add), &[y, u])
            .map_err(|e| err(&name, e.to_string()))?;
        g.replace_uses_except(y, sum, g.nodes.len() - 1);
        reports.push(report);
    }
    g.sort().map_err(|e| err("graph", e.to_string()))?;
    Ok(reports)
}

/// The `caldera` pass.
pub struct CalderaPass {
    pub opts: CalderaOptions,
}

pub static CALDERA_INFO: PassInfo = PassInfo {
    name: "caldera",
    summary: "W ≈ Q + L·R: a 2–4-bit backbone plus a quantized low-rank term, by alternating Hessian-aware updates (calibrates)",
    options: &[
        OptionSpec {
            name: "bits",
            kind: OptionKind::Int,
            default: "2",
            help: "bits of the backbone Q (2-4)",
        },
        OptionSpec {
            name: "group",
            kind: OptionKind::Int,
            default: "128",
            help: "group size of every quantized factor, a multiple of 8 (halved until it divides a row)",
        },
        OptionSpec {
            name: "rank",
            kind: OptionKind::Int,
            default: "64",
            help: "rank of L·R",
        },
        OptionSpec {
            name: "lr_bits",
            kind: OptionKind::Int,
            default: "4",
            help: "bits of L and R (4-8)",
        },
        OptionSpec {
            name: "iters",
            kind: OptionKind::Int,
            default: "3",
            help: "alternations of the Q and L·R updates",
        },
        OptionSpec {
            name: "damp",
            kind: OptionKind::Float,
            default: "0.01",
            help: "Hessian dampening, as a fraction of its mean diagonal",
        },
        OptionSpec {
            name: "head",
            kind: OptionKind::Bool,
            default: "false",
            help: "decompose the output head too",
        },
    ],
    create: |o| Ok(Box::new(CalderaPass::from_options(o)?)),
};

impl CalderaPass {
    pub fn from_options(o: &Options) -> Result<CalderaPass, PassError> {
        let bad = |msg: String| PassError::Options {
            pass: "caldera".into(),
            msg,
        };
        let (bits, lr_bits, group, rank, iters) = (
            o.int("bits")?,
            o.int("lr_bits")?,
            o.int("group")?,
            o.int("rank")?,
            o.int("iters")?,
        );
        if !(2..=4).contains(&bits) {
            return Err(bad(format!("bits must be 2 to 4, not {bits}")));
        }
        if !(4..=8).contains(&lr_bits) {
            return Err(bad(format!("lr_bits must be 4 to 8, not {lr_bits}")));
        }
        if group < 8 || group % 8 != 0 {
            return Err(bad(format!(
                "group must be a positive multiple of 8 (e.g. 128, or 192 for rows of 576), not {group}"
            )));
        }
        if rank < 1 {
            return Err(bad(format!("rank must be at least 1, not {rank}")));
        }
        if !(1..=20).contains(&iters) {
            return Err(bad(format!("iters must be 1 to 20, not {iters}")));
        }
        Ok(CalderaPass {
            opts: CalderaOptions {
                bits: bits as u8,
                group: group as u32,
                rank: rank as usize,
                lr_bits: lr_bits as u8,
                iters: iters as usize,
                damp: o.float("damp")?,
                head: o.bool("head"),
            },
        })
    }
}

impl Pass for CalderaPass {
    fn info(&self) -> &'static PassInfo {
        &CALDERA_INFO
    }

    fn needs_calibration(&self) -> bool {
        true
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<(), PassError> {
        let stats = cx.take_stats(g, "caldera")?;
        let reports = caldera(g, &self.opts, &stats, cx.progress.as_ref())?;
        for r in &reports {
            cx.report.push(PassRow::Caldera(CalderaRow {
                pass: "caldera",
                weight: r.weight.clone(),
                shape: [r.rows, r.cols],
                rank: r.rank,
                bits: self.opts.bits,
                lr_bits: self.opts.lr_bits,
                params: r.rows * r.cols,
                bytes_before: r.bytes_before,
                bytes_after: r.bytes_after,
                bits_per_weight: r.bytes_after as f64 * 8.0 / (r.rows * r.cols) as f64,
                weight_error: r.weight_error,
                out_error: r.out_error,
                out_error_by_iteration: r.history.clone(),
            }));
        }
        cx.stats = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::linalg::testing::{gram_of, lcg};

    #[test]
    fn the_low_rank_term_lowers_the_error_of_a_two_bit_backbone() {
        let (rows, cols, tokens) = (64, 128, 512);
        let mut seed = 5u64;
        // a weight with a strong low-rank part, as trained layers have
        let u: Vec<f32> = (0..rows * 4).map(|_| lcg(&mut seed)).collect();
        let v: Vec<f32> = (0..4 * cols).map(|_| lcg(&mut seed)).collect();
        let lowr = matmul(&u, &v, rows, 4, cols);
        let w: Vec<f32> = lowr
            .iter()
            .map(|&x| x * 4.0 + 0.1 * lcg(&mut seed))
            .collect();
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| lcg(&mut seed) * if i % cols < 4 { 10.0 } else { 1.0 })
            .collect();
        let gram = gram_of(&x, cols);
        let o = CalderaOptions {
            group: 32,
            rank: 8,
            ..Default::default()
        };
        let d = decompose(&w, rows, cols, &gram, &o).unwrap();
        let q = spec(2, 32, cols);
        let (_, plain) = gptq(&w, rows, cols, &gram, &q, &GptqOptions::default()).unwrap();
        let zero = vec![0f32; w.len()];
        let base = output_error(&w, &zero, rows, cols, &gram);
        let e_gptq = (output_error(&w, &plain, rows, cols, &gram) / base).sqrt();
        assert!(
            d.out_error < 0.5 * e_gptq,
            "caldera {} ({:?}) vs gptq 2-bit {e_gptq}",
            d.out_error,
            d.history
        );
        // the backbone, L and R decode to what the error was measured on
        let dq = |(s, b): &(QuantSpec, Vec<u8>), r: usize, c: usize| {
            WeightData::new(Bytes::owned(b.clone()), Format::Canonical, "t")
                .decode_f32(&TensorType {
                    enc: Encoding::Quant(*s),
                    ..TensorType::fixed(&[r, c], DType::F32)
                })
                .unwrap()
                .to_f32_vec()
        };
        let approx: Vec<f32> = dq(&d.q, rows, cols)
            .iter()
            .zip(matmul(
                &dq(&d.l, rows, d.rank),
                &dq(&d.r, d.rank, cols),
                rows,
                d.rank,
                cols,
            ))
            .map(|(a, b)| a + b)
            .collect();
        let e = (output_error(&w, &approx, rows, cols, &gram) / base).sqrt();
        assert!((e - d.out_error).abs() < 1e-3, "{e} vs {}", d.out_error);
    }
}
