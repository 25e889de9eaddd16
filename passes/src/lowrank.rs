//! Low-rank factorization of linear layers: `y = x Wᵀ` becomes `y = (x Rᵀ) Lᵀ` with
//! `W ≈ L·R`, `L` of `n × r` and `R` of `r × k`, only where that stores fewer values
//! (`r (n + k) < n k`).
//!
//! Two ways to choose the factors:
//! - `svd`: the truncated singular value decomposition of `W`, best in the Frobenius norm of
//!   the weight, blind to what the layer reads;
//! - `svd-llm` (Wang et al., 2024): the decomposition of `W S`, where `S Sᵀ = XᵀX` is the
//!   Cholesky factor of the calibration Gram matrix, mapped back through `S⁻¹`. Since
//!   `‖(W − W') X‖_F = ‖(W − W') S‖_F`, truncating `W S` minimizes the output error on the
//!   calibration tokens, not the weight error.
//!
//! The rank of each matrix is given outright, by the fraction of its parameters kept, or by
//! the fraction of its (whitened) spectral energy kept. `L` takes the weight's place (and
//! name); `R` is a new weight `<name>.lowrank_r`; both are dense f32, for later passes
//! (quantization) to encode.

use crate::calib::Stats;
use crate::gptq::output_error;
use crate::smooth::{set_weight_f32_shaped, weight_f32};
use crate::PassError;
use faer::{Mat, Side};
use llmc_ir::{DType, Graph, Op, Tensor, TensorType, WeightData};
use rayon::prelude::*;

/// How factors are found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LowRankMethod {
    Svd,
    SvdLlm,
}

impl LowRankMethod {
    pub fn parse(s: &str) -> Option<LowRankMethod> {
        match s {
            "svd" => Some(LowRankMethod::Svd),
            "svd-llm" | "svdllm" => Some(LowRankMethod::SvdLlm),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LowRankMethod::Svd => "svd",
            LowRankMethod::SvdLlm => "svd-llm",
        }
    }
}

/// How each matrix's rank is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RankRule {
    /// Exactly this rank.
    Rank(usize),
    /// The largest rank whose factors hold at most this fraction of the matrix's values.
    Params(f64),
    /// The smallest rank keeping this fraction of the sum of squared singular values.
    Energy(f64),
}

impl RankRule {
    fn rank(self, rows: usize, cols: usize, sigma: &[f64]) -> usize {
        let full = sigma.len();
        match self {
            RankRule::Rank(r) => r.min(full),
            RankRule::Params(f) => {
                (((rows * cols) as f64 * f) / (rows + cols) as f64).floor() as usize
            }
            RankRule::Energy(e) => {
                let total: f64 = sigma.iter().map(|s| s * s).sum();
                let mut acc = 0.0;
                for (i, s) in sigma.iter().enumerate() {
                    acc += s * s;
                    if acc >= e * total {
                        return i + 1;
                    }
                }
                full
            }
        }
        .clamp(1, full.max(1))
    }
}

/// Factors `W ≈ L·R` of one matrix.
#[derive(Clone, Debug)]
pub struct Factors {
    pub rank: usize,
    /// `rows × rank`, row-major.
    pub l: Vec<f32>,
    /// `rank × cols`, row-major.
    pub r: Vec<f32>,
}

impl Factors {
    /// `L·R`, `rows × cols`.
    pub fn product(&self, rows: usize, cols: usize) -> Vec<f32> {
        let l = Mat::<f32>::from_fn(rows, self.rank, |i, j| self.l[i * self.rank + j]);
        let r = Mat::<f32>::from_fn(self.rank, cols, |i, j| self.r[i * cols + j]);
        let p = &l * &r;
        let mut out = vec![0f32; rows * cols];
        for i in 0..rows {
            for j in 0..cols {
                out[i * cols + j] = p[(i, j)];
            }
        }
        out
    }
}

/// The lower Cholesky factor `S` of `G + λI`, `λ = damp · mean(diag G)`.
fn whitening(gram: &[f64], cols: usize, damp: f64) -> Result<Mat<f64>, String> {
    let mean = (0..cols).map(|c| gram[c * cols + c]).sum::<f64>() / cols as f64;
    let lambda = (damp * mean).max(f64::MIN_POSITIVE);
    let g = Mat::<f64>::from_fn(cols, cols, |i, j| {
        gram[i * cols + j] + if i == j { lambda } else { 0.0 }
    });
    let llt = g
        .llt(Side::Lower)
        .map_err(|e| format!("the Gram matrix is not positive definite ({e:?}); raise damp"))?;
    Ok(llt.L().to_owned())
}

/// `W` (`rows × cols`, row-major) factored under `rule`; with `gram` (XᵀX of the layer's
/// input, `cols × cols`) the factors minimize the output error on those inputs (SVD-LLM),
/// otherwise the weight error (SVD). `L = U_r Σ_r^½` and `R = Σ_r^½ V_rᵀ (S⁻¹)`, so the two
/// factors have equal scale for a later quantization.
pub fn factor(
    w: &[f32],
    rows: usize,
    cols: usize,
    rule: RankRule,
    gram: Option<&[f64]>,
    damp: f64,
) -> Result<Factors, String> {
    let s = match gram {
        Some(g) => Some(whitening(g, cols, damp)?),
        None => None,
    };
    let wm = Mat::<f64>::from_fn(rows, cols, |i, j| w[i * cols + j] as f64);
    let a = match &s {
        Some(s) => &wm * s,
        None => wm,
    };
    let svd = a
        .thin_svd()
        .map_err(|e| format!("the singular value decomposition did not converge ({e:?})"))?;
    let sigma: Vec<f64> = svd.S().column_vector().iter().copied().collect();
    let rank = rule.rank(rows, cols, &sigma);
    let (u, v) = (svd.U(), svd.V());
    let root: Vec<f64> = sigma[..rank].iter().map(|x| x.max(0.0).sqrt()).collect();
    let mut l = vec![0f32; rows * rank];
    for i in 0..rows {
        for k in 0..rank {
            l[i * rank + k] = (u[(i, k)] * root[k]) as f32;
        }
    }
    // Rᵀ = S⁻ᵀ V_r Σ_r^½: solve Sᵀ Z = V_r (S lower, so Sᵀ upper)
    let mut z = Mat::<f64>::from_fn(cols, rank, |i, k| v[(i, k)] * root[k]);
    if let Some(s) = &s {
        faer::linalg::triangular_solve::solve_upper_triangular_in_place(
            s.transpose(),
            z.as_mut(),
            faer::Par::Seq,
        );
    }
    let mut r = vec![0f32; rank * cols];
    for k in 0..rank {
        for j in 0..cols {
            r[k * cols + j] = z[(j, k)] as f32;
        }
    }
    Ok(Factors { rank, l, r })
}

/// What factoring one weight did, for the report.
#[derive(Clone, Debug)]
pub struct LowRankReport {
    pub weight: String,
    pub rows: usize,
    pub cols: usize,
    pub rank: usize,
    /// ‖W − LR‖_F / ‖W‖_F.
    pub weight_error: f64,
    /// Output error on calibration relative to the output's energy, when calibrated.
    pub out_error: Option<f64>,
}

/// `(node, weight, input)` of each linear layer that alone reads its 2-D weight (the output
/// head's only when `head`): the layers a rewrite may split without touching anything else
/// (a tied embedding, say).
pub fn sole_linear_sites(g: &Graph, head: bool) -> Vec<(usize, usize, llmc_ir::ValueId)> {
    let users = g.users();
    crate::quant::targets(g, head)
        .into_iter()
        .filter_map(|(w, x)| {
            let v = g.weights[w].value;
            let [node] = users[v.0 as usize][..] else {
                return None;
            };
            let n = &g.nodes[node];
            (n.inputs[1] == v && n.inputs[0] == x && g.weights[w].ty.rank() == 2)
                .then_some((node, w, x))
        })
        .collect()
}

/// Factors the linear weights of `g` (the output head only when `head`) under `rule`, with
/// the calibration Gram matrices of `stats` for SVD-LLM; rewrites each linear layer whose
/// factors are smaller into two. Weights read by anything else than one linear layer (a tied
/// embedding) are left alone.
pub fn lowrank(
    g: &mut Graph,
    method: LowRankMethod,
    rule: RankRule,
    head: bool,
    damp: f64,
    stats: Option<&Stats>,
) -> Result<Vec<LowRankReport>, PassError> {
    if method == LowRankMethod::SvdLlm && stats.is_none() {
        return Err(PassError::Calibration(
            "lowrank method=svd-llm needs calibration statistics".into(),
        ));
    }
    let sites = sole_linear_sites(g, head);
    let err = |w: &str, msg: String| PassError::Pattern {
        pattern: "lowrank",
        at: format!("@{w}"),
        msg,
    };
    let found: Vec<Result<Option<(Factors, LowRankReport)>, PassError>> = sites
        .par_iter()
        .map(|&(_, w, x)| {
            let name = &g.weights[w].name;
            let (v, rows, cols) = weight_f32(g, w)?;
            let gram = match (method, stats) {
                (LowRankMethod::SvdLlm, Some(s)) => Some(
                    s.inputs
                        .get(&x)
                        .ok_or_else(|| err(name, "no calibration statistics for its input".into()))?
                        .gram
                        .as_slice(),
                ),
                _ => None,
            };
            let f = factor(&v, rows, cols, rule, gram, damp).map_err(|m| err(name, m))?;
            if f.rank * (rows + cols) >= rows * cols {
                return Ok(None);
            }
            let approx = f.product(rows, cols);
            let num: f64 = v
                .iter()
                .zip(&approx)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum();
            let den: f64 = v.iter().map(|a| (*a as f64).powi(2)).sum();
            let out_error = stats.and_then(|s| s.inputs.get(&x)).map(|st| {
                let zero = vec![0f32; v.len()];
                output_error(&v, &approx, rows, cols, &st.gram)
                    / output_error(&v, &zero, rows, cols, &st.gram).max(f64::MIN_POSITIVE)
            });
            let report = LowRankReport {
                weight: name.clone(),
                rows,
                cols,
                rank: f.rank,
                weight_error: (num / den.max(f64::MIN_POSITIVE)).sqrt(),
                out_error,
            };
            Ok(Some((f, report)))
        })
        .collect();
    let mut reports = Vec::new();
    for (&(node, w, x), f) in sites.iter().zip(found) {
        let Some((f, report)) = f? else { continue };
        let (rows, cols, rank) = (report.rows, report.cols, f.rank);
        let note = format!("{} rank {rank}", method.name());
        set_weight_f32_shaped(g, w, vec![rows, rank], f.l, &note);
        let r_name = format!("{}.lowrank_r", g.weights[w].name);
        let r = g
            .add_weight(
                &r_name,
                TensorType::fixed(&[rank, cols], DType::F32),
                Some(WeightData::from_tensor(
                    &Tensor::f32(vec![rank, cols], f.r),
                    note.clone(),
                )),
            )
            .map_err(|e| err(&r_name, e.to_string()))?;
        let Op::Linear { act } = g.nodes[node].op else {
            unreachable!("sites are linear layers")
        };
        let inner = g
            .add1(Op::Linear { act }, &[x, r])
            .map_err(|e| err(&r_name, e.to_string()))?;
        g.nodes[node].inputs[0] = inner;
        reports.push(report);
    }
    g.sort().map_err(|e| err("graph", e.to_string()))?;
    crate::structured::reinfer(g)?;
    Ok(reports)
}

/// The `lowrank` pass.
pub struct LowRankPass {
    pub method: LowRankMethod,
    pub rule: RankRule,
    pub head: bool,
    pub damp: f64,
}

pub static LOWRANK_INFO: crate::manager::PassInfo = crate::manager::PassInfo {
    name: "lowrank",
    summary: "factor linear weights W ≈ L·R where that saves values (method=svd-llm calibrates)",
    options: &[
        crate::manager::OptionSpec {
            name: "method",
            kind: "svd|svd-llm",
            default: "svd",
            help: "plain truncated SVD, or SVD of the weight whitened by the calibration Gram's Cholesky factor",
        },
        crate::manager::OptionSpec {
            name: "params",
            kind: "float",
            default: "0.7",
            help: "fraction of each matrix's values its factors may hold",
        },
        crate::manager::OptionSpec {
            name: "rank",
            kind: "int",
            default: "0",
            help: "a fixed rank instead of params (0: use params or energy)",
        },
        crate::manager::OptionSpec {
            name: "energy",
            kind: "float",
            default: "0",
            help: "keep this fraction of the squared singular values instead of params (0: unused)",
        },
        crate::manager::OptionSpec {
            name: "head",
            kind: "bool",
            default: "false",
            help: "factor the output head too",
        },
        crate::manager::OptionSpec {
            name: "damp",
            kind: "float",
            default: "0.01",
            help: "svd-llm: fraction of the Gram's mean diagonal added before the Cholesky factorization",
        },
    ],
};

impl LowRankPass {
    pub fn from_options(o: &crate::manager::Options) -> Result<LowRankPass, PassError> {
        let bad = |msg: String| PassError::Options {
            pass: "lowrank".into(),
            msg,
        };
        let method = LowRankMethod::parse(o.str("method")).ok_or_else(|| {
            bad(format!(
                "method must be svd or svd-llm, not {}",
                o.str("method")
            ))
        })?;
        let (rank, energy, params) = (o.int("rank")?, o.float("energy")?, o.float("params")?);
        let rule = if rank > 0 {
            RankRule::Rank(rank as usize)
        } else if energy > 0.0 {
            if energy > 1.0 {
                return Err(bad(format!("energy must lie in (0, 1], not {energy}")));
            }
            RankRule::Energy(energy)
        } else {
            if !(params > 0.0 && params < 1.0) {
                return Err(bad(format!("params must lie in (0, 1), not {params}")));
            }
            RankRule::Params(params)
        };
        let damp = o.float("damp")?;
        if damp < 0.0 {
            return Err(bad(format!("damp must not be negative, not {damp}")));
        }
        Ok(LowRankPass {
            method,
            rule,
            head: o.bool("head"),
            damp,
        })
    }
}

impl crate::manager::Pass for LowRankPass {
    fn info(&self) -> &'static crate::manager::PassInfo {
        &LOWRANK_INFO
    }

    fn needs_calibration(&self) -> bool {
        self.method == LowRankMethod::SvdLlm
    }

    fn run(
        &mut self,
        g: &mut Graph,
        cx: &mut crate::manager::PassContext,
    ) -> Result<(), PassError> {
        let stats = if self.needs_calibration() || cx.stats.is_some() {
            Some(cx.take_stats(g, "lowrank")?)
        } else {
            None
        };
        let progress = cx.progress.clone();
        if let Some(p) = &progress {
            p("factoring", 0, 1);
        }
        let reports = lowrank(
            g,
            self.method,
            self.rule,
            self.head,
            self.damp,
            stats.as_ref(),
        )?;
        if let Some(p) = &progress {
            p("factoring", 1, 1);
        }
        for r in &reports {
            cx.report.push(serde_json::json!({
                "pass": "lowrank",
                "weight": r.weight,
                "method": self.method.name(),
                "shape": [r.rows, r.cols],
                "rank": r.rank,
                "params_before": r.rows * r.cols,
                "params_after": r.rank * (r.rows + r.cols),
                "weight_error": r.weight_error,
                "out_error": r.out_error,
            }));
        }
        // the factored layers read new values: statistics must be gathered anew
        cx.stats = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gptq::tests::{gram_of, lcg};

    #[test]
    fn full_rank_factors_reproduce_the_matrix() {
        let (rows, cols) = (12, 8);
        let mut seed = 3u64;
        let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
        let x: Vec<f32> = (0..64 * cols).map(|_| lcg(&mut seed)).collect();
        let gram = gram_of(&x, cols);
        for g in [None, Some(gram.as_slice())] {
            let f = factor(&w, rows, cols, RankRule::Rank(8), g, 1e-9).unwrap();
            let p = f.product(rows, cols);
            let d = w
                .iter()
                .zip(&p)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-4, "max difference {d}");
        }
    }

    #[test]
    fn whitening_lowers_the_output_error_at_equal_rank() {
        // inputs with a few loud channels, as real activations have
        let (rows, cols, tokens) = (32, 24, 256);
        let mut seed = 11u64;
        let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| lcg(&mut seed) * if i % cols < 3 { 20.0 } else { 1.0 })
            .collect();
        let gram = gram_of(&x, cols);
        let plain = factor(&w, rows, cols, RankRule::Rank(6), None, 0.0).unwrap();
        let white = factor(&w, rows, cols, RankRule::Rank(6), Some(&gram), 1e-6).unwrap();
        let e = |f: &Factors| output_error(&w, &f.product(rows, cols), rows, cols, &gram);
        let (ep, ew) = (e(&plain), e(&white));
        assert!(ew < 0.8 * ep, "svd-llm {ew} vs svd {ep}");
    }

    #[test]
    fn rank_rules() {
        let sigma = [4.0, 2.0, 1.0, 1.0];
        assert_eq!(RankRule::Params(0.5).rank(8, 8, &sigma), 2);
        assert_eq!(RankRule::Energy(0.9).rank(8, 8, &sigma), 2);
        assert_eq!(RankRule::Energy(1.0).rank(8, 8, &sigma), 4);
        assert_eq!(RankRule::Rank(9).rank(8, 8, &sigma), 4);
    }
}
