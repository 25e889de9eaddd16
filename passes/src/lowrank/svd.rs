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
use crate::core::edit::{set_weight_f32_shaped, sole_linear_sites, weight_f32};
use crate::core::linalg::output_error;
use crate::core::linalg::{factor, Factors, RankRule};
use crate::core::pass::{OptionKind, OptionSpec, Options, Pass, PassContext, PassInfo};
use crate::core::report::{LowRankRow, PassRow};
use crate::PassError;
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
            let f = factor(&v, rows, cols, rule, gram, damp)
                .map_err(|e| PassError::matrix("lowrank", name, e))?;
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
        set_weight_f32_shaped(g, w, vec![rows, rank], f.l, &note)?;
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
    crate::core::edit::reinfer(g)?;
    Ok(reports)
}

/// The `lowrank` pass.
pub struct LowRankPass {
    pub method: LowRankMethod,
    pub rule: RankRule,
    pub head: bool,
    pub damp: f64,
}

pub static LOWRANK_INFO: PassInfo = PassInfo {
    name: "lowrank",
    summary: "factor linear weights W ≈ L·R where that saves values (method=svd-llm calibrates)",
    options: &[
        OptionSpec {
            name: "method",
            kind: OptionKind::Choice(&["svd", "svd-llm"]),
            default: "svd",
            help: "plain truncated SVD, or SVD of the weight whitened by the calibration Gram's Cholesky factor",
        },
        OptionSpec {
            name: "params",
            kind: OptionKind::Float,
            default: "0.7",
            help: "fraction of each matrix's values its factors may hold",
        },
        OptionSpec {
            name: "rank",
            kind: OptionKind::Int,
            default: "0",
            help: "a fixed rank instead of params (0: use params or energy)",
        },
        OptionSpec {
            name: "energy",
            kind: OptionKind::Float,
            default: "0",
            help: "keep this fraction of the squared singular values instead of params (0: unused)",
        },
        OptionSpec {
            name: "head",
            kind: OptionKind::Bool,
            default: "false",
            help: "factor the output head too",
        },
        OptionSpec {
            name: "damp",
            kind: OptionKind::Float,
            default: "0.01",
            help: "svd-llm: fraction of the Gram's mean diagonal added before the Cholesky factorization",
        },
    ],
    create: |o| Ok(Box::new(LowRankPass::from_options(o)?)),
};

impl LowRankPass {
    pub fn from_options(o: &Options) -> Result<LowRankPass, PassError> {
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

impl Pass for LowRankPass {
    fn info(&self) -> &'static PassInfo {
        &LOWRANK_INFO
    }

    fn needs_calibration(&self) -> bool {
        self.method == LowRankMethod::SvdLlm
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<(), PassError> {
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
            cx.report.push(PassRow::LowRank(LowRankRow {
                pass: "lowrank",
                weight: r.weight.clone(),
                method: self.method.name(),
                shape: [r.rows, r.cols],
                rank: r.rank,
                params_before: r.rows * r.cols,
                params_after: r.rank * (r.rows + r.cols),
                weight_error: r.weight_error,
                out_error: r.out_error,
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
    use crate::core::linalg::testing::{gram_of, lcg};

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
