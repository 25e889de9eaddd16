//! Pruning of linear weights to zeros, unstructured (a fraction of each row) or N:M (n kept of
//! every m consecutive inputs):
//! - magnitude: the smallest |W_ij| go;
//! - Wanda (Sun et al., 2023): the smallest |W_ij|·‖x_j‖ go, ‖x_j‖ from calibration, compared
//!   within each output row;
//! - SparseGPT (Frantar & Alistarh, 2023): GPTQ's column sweep with "round to zero or keep":
//!   each block's mask by w²/[H⁻¹]_jj², every pruned weight's error carried into the columns
//!   not yet visited.
//!
//! An unstructured pruned weight stays dense f32 (zeros included) for the passes after it:
//! quantization keeps zeros exact (an integer zero point or the symmetric centre decodes to
//! 0). A 2:4 weight is stored compressed (`Encoding::Sparse24`: the kept half of the values
//! and a 2-bit position each), which quantization keeps, quantizing only the kept values.

use crate::calib::Stats;
use crate::core::edit::{set_weight_f32, set_weight_sparse24, split_2of4, weight_f32};
use crate::core::linalg::LinalgError;
use crate::core::linalg::{inverse_hessian_factor, obs_sweep, Columns};
use crate::core::pass::{OptionKind, OptionSpec, Options, Pass, PassContext, PassInfo};
use crate::core::report::{PassRow, PruneRow};
use crate::MatrixError;
use crate::PassError;
use llmc_ir::{DType, Encoding, Graph};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PruneMethod {
    Magnitude,
    Wanda,
    SparseGpt,
}

impl PruneMethod {
    pub fn parse(s: &str) -> Option<PruneMethod> {
        Some(match s {
            "magnitude" => PruneMethod::Magnitude,
            "wanda" => PruneMethod::Wanda,
            "sparsegpt" => PruneMethod::SparseGpt,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            PruneMethod::Magnitude => "magnitude",
            PruneMethod::Wanda => "wanda",
            PruneMethod::SparseGpt => "sparsegpt",
        }
    }
}

/// Which weights go.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sparsity {
    /// This fraction of each row (of each block for SparseGPT).
    Fraction(f32),
    /// Keep `n` of every `m` consecutive inputs of a row.
    NM { n: usize, m: usize },
}

/// Zeros `keep = false` entries of a row-major `[rows, cols]` matrix chosen from scores
/// (higher is kept), per row.
fn mask_by_scores(scores: &[f32], rows: usize, cols: usize, sp: Sparsity) -> Vec<bool> {
    let mut keep = vec![true; rows * cols];
    keep.par_chunks_mut(cols).enumerate().for_each(|(r, k)| {
        let s = &scores[r * cols..(r + 1) * cols];
        match sp {
            Sparsity::Fraction(f) => {
                let drop = ((cols as f32) * f).round() as usize;
                let mut idx: Vec<usize> = (0..cols).collect();
                idx.sort_by(|&a, &b| s[a].total_cmp(&s[b]).then(a.cmp(&b)));
                idx[..drop.min(cols)].iter().for_each(|&j| k[j] = false);
            }
            Sparsity::NM { n, m } => {
                for g0 in (0..cols).step_by(m) {
                    let mut idx: Vec<usize> = (g0..(g0 + m).min(cols)).collect();
                    idx.sort_by(|&a, &b| s[a].total_cmp(&s[b]).then(a.cmp(&b)));
                    let drop = idx.len().saturating_sub(n);
                    idx[..drop].iter().for_each(|&j| k[j] = false);
                }
            }
        }
    });
    keep
}

/// Prunes a row-major `[rows, cols]` weight; `gram` (XᵀX of its inputs) is needed by Wanda
/// and SparseGPT.
pub fn prune_matrix(
    w: &[f32],
    rows: usize,
    cols: usize,
    method: PruneMethod,
    sp: Sparsity,
    gram: Option<&[f64]>,
    damp: f64,
) -> Result<Vec<f32>, MatrixError> {
    if let Sparsity::NM { n, m } = sp {
        if m == 0 || n > m || cols % m != 0 {
            return Err(MatrixError::NmShape { n, m, cols });
        }
    }
    let need = |method| MatrixError::NoStatistics { method };
    match method {
        PruneMethod::Magnitude | PruneMethod::Wanda => {
            let norms: Vec<f32> = match method {
                PruneMethod::Wanda => {
                    let g = gram.ok_or_else(|| need("wanda"))?;
                    (0..cols)
                        .map(|j| g[j * cols + j].max(0.0).sqrt() as f32)
                        .collect()
                }
                _ => vec![1.0; cols],
            };
            let scores: Vec<f32> = w
                .iter()
                .enumerate()
                .map(|(i, x)| x.abs() * norms[i % cols])
                .collect();
            let keep = mask_by_scores(&scores, rows, cols, sp);
            Ok(w.iter()
                .zip(&keep)
                .map(|(&x, &k)| if k { x } else { 0.0 })
                .collect())
        }
        PruneMethod::SparseGpt => {
            let g = gram.ok_or_else(|| need("sparsegpt"))?;
            Ok(sparsegpt(w, rows, cols, g, sp, damp)?)
        }
    }
}

fn sparsegpt(
    w: &[f32],
    rows: usize,
    cols: usize,
    gram: &[f64],
    sp: Sparsity,
    damp: f64,
) -> Result<Vec<f32>, LinalgError> {
    let mut h = gram.to_vec();
    let mut wt = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            wt[c * rows + r] = w[r * cols + c];
        }
    }
    for c in 0..cols {
        if h[c * cols + c] <= 0.0 {
            h[c * cols + c] = 1.0;
            wt[c * rows..(c + 1) * rows].fill(0.0);
        }
    }
    let perm: Vec<usize> = (0..cols).collect();
    let u = inverse_hessian_factor(&h, &perm, damp)?;
    struct Mask {
        rows: usize,
        cols: usize,
        sp: Sparsity,
        /// pruned[i * rows + r]: column i, row r goes
        pruned: Vec<bool>,
        /// 1 / U_jj²: the OBS score of w_j is w_j² / U_jj²
        inv_d2: Vec<f32>,
    }
    impl Columns for Mask {
        fn block(&mut self, b0: usize, b1: usize, wp: &[f32], u: &[f32]) {
            let (rows, cols) = (self.rows, self.cols);
            if let Sparsity::Fraction(f) = self.sp {
                // the block's smallest w² / U_jj², over all its rows and columns
                let mut s: Vec<(f32, usize)> = (b0 * rows..b1 * rows)
                    .map(|k| {
                        let d = u[(k / rows) * cols + k / rows];
                        (wp[k] * wp[k] / (d * d), k)
                    })
                    .collect();
                let drop = ((s.len() as f32) * f).round() as usize;
                s.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                for &(_, k) in &s[..drop.min(s.len())] {
                    self.pruned[k] = true;
                }
            }
        }

        fn column(&mut self, i: usize, wp: &[f32], out: &mut [f32]) {
            let rows = self.rows;
            if let Sparsity::NM { n, m } = self.sp {
                if i % m == 0 {
                    // the group's mask by OBS score, from its columns as the updates left them
                    let inv = &self.inv_d2;
                    for r in 0..rows {
                        let mut idx: Vec<usize> = (i..i + m).collect();
                        idx.sort_by(|&a, &b| {
                            let (x, y) = (wp[a * rows + r], wp[b * rows + r]);
                            (x * x * inv[a])
                                .total_cmp(&(y * y * inv[b]))
                                .then(a.cmp(&b))
                        });
                        for &j in &idx[..m - n] {
                            self.pruned[j * rows + r] = true;
                        }
                    }
                }
            }
            let col = &wp[i * rows..(i + 1) * rows];
            for r in 0..rows {
                out[r] = if self.pruned[i * rows + r] {
                    0.0
                } else {
                    col[r]
                };
            }
        }
    }
    let mut mask = Mask {
        rows,
        cols,
        sp,
        pruned: vec![false; rows * cols],
        inv_d2: (0..cols)
            .map(|j| {
                let d = u[j * cols + j];
                1.0 / (d * d)
            })
            .collect(),
    };
    obs_sweep(&mut wt, rows, cols, &u, 128, &mut mask);
    // the kept weights as the sweep left them, the pruned ones zero
    let mut out = vec![0f32; rows * cols];
    for c in 0..cols {
        for r in 0..rows {
            if !mask.pruned[c * rows + r] {
                out[r * cols + c] = wt[c * rows + r];
            }
        }
    }
    Ok(out)
}

/// The `prune` pass.
pub struct PrunePass {
    pub method: PruneMethod,
    pub sparsity: Sparsity,
    pub damp: f64,
    /// Prune the output head too.
    pub head: bool,
}

pub static PRUNE_INFO: PassInfo = PassInfo {
    name: "prune",
    summary: "zero linear weights: magnitude, Wanda or SparseGPT, unstructured or N:M (wanda and sparsegpt need calibration)",
    options: &[
        OptionSpec {
            name: "method",
            kind: OptionKind::Choice(&["magnitude", "wanda", "sparsegpt"]),
            default: "wanda",
            help: "how weights are scored: |W|, |W|·‖x‖, or SparseGPT's OBS sweep",
        },
        OptionSpec {
            name: "sparsity",
            kind: OptionKind::Float,
            default: "0.5",
            help: "fraction of each row pruned (unstructured)",
        },
        OptionSpec {
            name: "n",
            kind: OptionKind::Int,
            default: "0",
            help: "N:M: weights kept of every m consecutive inputs (0: unstructured)",
        },
        OptionSpec {
            name: "m",
            kind: OptionKind::Int,
            default: "4",
            help: "N:M: the group of consecutive inputs",
        },
        OptionSpec {
            name: "damp",
            kind: OptionKind::Float,
            default: "0.01",
            help: "SparseGPT: dampening of the Hessian's diagonal, as a fraction of its mean",
        },
        OptionSpec {
            name: "head",
            kind: OptionKind::Bool,
            default: "false",
            help: "prune the output head too",
        },
    ],
    create: |o| Ok(Box::new(PrunePass::from_options(o)?)),
};

impl PrunePass {
    pub fn from_options(o: &Options) -> Result<PrunePass, PassError> {
        let bad = |msg: String| PassError::Options {
            pass: "prune".into(),
            msg,
        };
        let method = PruneMethod::parse(o.str("method")).expect("checked by the option spec");
        let n = o.int("n")?;
        let m = o.int("m")?;
        let sparsity = if n > 0 {
            if m < 2 || n >= m {
                return Err(bad(format!(
                    "n:m must keep fewer than m of m ≥ 2, not {n}:{m}"
                )));
            }
            Sparsity::NM {
                n: n as usize,
                m: m as usize,
            }
        } else {
            let f = o.float("sparsity")?;
            if !(0.0..1.0).contains(&f) {
                return Err(bad(format!("sparsity must lie in [0, 1), not {f}")));
            }
            Sparsity::Fraction(f as f32)
        };
        let damp = o.float("damp")?;
        if !(0.0..1.0).contains(&damp) {
            return Err(bad(format!("damp must lie in [0, 1), not {damp}")));
        }
        Ok(PrunePass {
            method,
            sparsity,
            damp,
            head: o.bool("head"),
        })
    }
}

/// Prunes every linear weight of the graph; report rows as the quantizer writes them.
pub fn prune(
    g: &mut Graph,
    p: &PrunePass,
    stats: Option<&Stats>,
) -> Result<Vec<PassRow>, PassError> {
    let work = crate::core::edit::linear_weights(g, p.head);
    let results: Vec<Result<(usize, Vec<f32>, PassRow), PassError>> = work
        .par_iter()
        .map(|&(i, input)| {
            let (w, rows, cols) = weight_f32(g, i)?;
            let st = stats
                .and_then(|s| s.inputs.get(&input))
                .filter(|s| s.cols == cols);
            let name = &g.weights[i].name;
            let pruned = prune_matrix(
                &w,
                rows,
                cols,
                p.method,
                p.sparsity,
                st.map(|s| s.gram.as_slice()),
                p.damp,
            )
            .map_err(|e| PassError::matrix("prune", name, e))?;
            let zeros = pruned.iter().filter(|x| **x == 0.0).count();
            let (mut num, mut den) = (0f64, 0f64);
            for (a, b) in w.iter().zip(&pruned) {
                num += ((a - b) as f64).powi(2);
                den += (*a as f64).powi(2);
            }
            let out_error = st.map(|s| {
                let e = crate::core::linalg::output_error(&w, &pruned, rows, cols, &s.gram);
                let base = crate::core::linalg::output_error(
                    &w,
                    &vec![0f32; w.len()],
                    rows,
                    cols,
                    &s.gram,
                );
                if base > 0.0 {
                    (e / base).sqrt()
                } else {
                    0.0
                }
            });
            let row = PassRow::Prune(PruneRow {
                pass: "prune",
                weight: name.clone(),
                method: p.method.name(),
                sparsity: zeros as f64 / w.len().max(1) as f64,
                rel_error: if den > 0.0 { (num / den).sqrt() } else { 0.0 },
                out_error,
            });
            Ok((i, pruned, row))
        })
        .collect();
    let mut rows = Vec::new();
    let two_of_four = matches!(p.sparsity, Sparsity::NM { n, m: 4 } if n <= 2);
    for r in results {
        let (i, v, row) = r?;
        let (_, _, cols) = weight_f32(g, i)?;
        let rows_n = v.len() / cols.max(1);
        // 2:4 weights are stored compressed: half the values and 2-bit positions
        match two_of_four.then(|| split_2of4(&v, rows_n, cols)).flatten() {
            Some((kept, pos)) => {
                let bytes = kept.iter().flat_map(|x| x.to_le_bytes()).collect();
                set_weight_sparse24(
                    g,
                    i,
                    Encoding::Dense(DType::F32),
                    bytes,
                    &pos,
                    p.method.name(),
                )?;
            }
            None => set_weight_f32(g, i, v, p.method.name())?,
        }
        rows.push(row);
    }
    Ok(rows)
}

impl Pass for PrunePass {
    fn info(&self) -> &'static PassInfo {
        &PRUNE_INFO
    }

    fn needs_calibration(&self) -> bool {
        self.method != PruneMethod::Magnitude
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<(), PassError> {
        let stats = if self.needs_calibration() || cx.stats.is_some() {
            Some(cx.take_stats(g, "prune")?)
        } else {
            None
        };
        let rows = prune(g, self, stats.as_ref())?;
        cx.stats = stats;
        cx.report.extend(rows);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::linalg::testing::{gram_of, lcg};

    #[test]
    fn methods_reach_their_sparsity_and_rank_as_expected() {
        let (rows, cols, tokens) = (16, 64, 256);
        let mut seed = 11;
        let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| {
                let c = i % cols;
                (if c % 7 == 0 { 6.0 } else { 1.0 }) * lcg(&mut seed)
            })
            .collect();
        let gram = gram_of(&x, cols);
        for sp in [Sparsity::Fraction(0.5), Sparsity::NM { n: 2, m: 4 }] {
            let mut errs = Vec::new();
            for m in [
                PruneMethod::Magnitude,
                PruneMethod::Wanda,
                PruneMethod::SparseGpt,
            ] {
                let p = prune_matrix(&w, rows, cols, m, sp, Some(&gram), 0.01).unwrap();
                let zeros = p.iter().filter(|v| **v == 0.0).count();
                assert_eq!(zeros, rows * cols / 2, "{m:?} {sp:?}");
                if let Sparsity::NM { .. } = sp {
                    for g in p.chunks(4) {
                        assert_eq!(g.iter().filter(|v| **v == 0.0).count(), 2, "{m:?}");
                    }
                }
                errs.push(crate::core::linalg::output_error(&w, &p, rows, cols, &gram));
            }
            // Wanda below magnitude, SparseGPT below Wanda, on the calibration data
            assert!(errs[1] < errs[0] && errs[2] < errs[1], "{sp:?}: {errs:?}");
        }
    }
}
