//! The linear algebra the compression passes share: the inverse-Hessian factor and the
//! optimal-brain-surgeon column sweep (GPTQ, SparseGPT, palettes), the output error of a
//! replaced weight measured through the calibration Gram matrix, and low-rank factors
//! (truncated SVD, whitened by the Gram matrix for SVD-LLM, CALDERA and distillation).

use faer::linalg::solvers::{DenseSolveCore, LltError};
use faer::{Mat, Side};
use llmc_ir::interp::kernels::gemm_f32;

/// A factorization that failed: the matrix it was given is too ill-conditioned for it.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum LinalgError {
    /// Cholesky met a non-positive pivot: `what` (the Hessian, the Gram matrix, ...) is not
    /// positive definite even with `damp` (a fraction of its mean diagonal) added.
    #[error("{what} is not positive definite (pivot {pivot} with damp {damp}); raise damp")]
    NotPositiveDefinite {
        what: &'static str,
        damp: f64,
        pivot: usize,
    },
    #[error("the singular value decomposition did not converge")]
    SvdDidNotConverge,
}

impl LinalgError {
    /// The error of a Cholesky factorization of `what` dampened by `damp`.
    pub fn cholesky(what: &'static str, damp: f64, e: LltError) -> LinalgError {
        let LltError::NonPositivePivot { index } = e;
        LinalgError::NotPositiveDefinite {
            what,
            damp,
            pivot: index,
        }
    }
}

/// `U`, the upper Cholesky factor of `(H + λI)⁻¹` with `H` taken in the order `perm` and
/// `λ = damp · mean(diag H)`, row-major `cols × cols`: the optimal-brain-surgeon updates of
/// GPTQ and SparseGPT read it row by row.
pub fn inverse_hessian_factor(
    h: &[f64],
    perm: &[usize],
    damp: f64,
) -> Result<Vec<f32>, LinalgError> {
    let cols = perm.len();
    let mean = (0..cols).map(|c| h[c * cols + c]).sum::<f64>() / cols as f64;
    let lambda = damp * mean;
    let hp = Mat::<f64>::from_fn(cols, cols, |i, j| {
        h[perm[i] * cols + perm[j]] + if i == j { lambda } else { 0.0 }
    });
    let hinv = hp
        .llt(Side::Lower)
        .map_err(|e| LinalgError::cholesky("the Hessian", damp, e))?
        .inverse();
    let l = hinv
        .llt(Side::Lower)
        .map_err(|e| LinalgError::cholesky("the inverse Hessian", damp, e))?;
    let lf = l.L();
    // u[i * cols + j] = U[i, j] = L[j, i]
    let mut u = vec![0f32; cols * cols];
    for i in 0..cols {
        for j in i..cols {
            u[i * cols + j] = lf[(j, i)] as f32;
        }
    }
    Ok(u)
}

/// What replaces each column in an [`obs_sweep`].
pub trait Columns {
    /// Called at the start of each block `[b0, b1)` with the weight as the updates left it.
    fn block(&mut self, _b0: usize, _b1: usize, _wp: &[f32], _u: &[f32]) {}
    /// Writes into `out` (one value per row) what column `i` of `wp` becomes.
    fn column(&mut self, i: usize, wp: &[f32], out: &mut [f32]);
}

/// The column sweep shared by GPTQ and SparseGPT over the transposed weight `wp`
/// (`cols × rows`, column `i` contiguous): each column is replaced as `f` says and its error,
/// scaled by `1/U_ii`, is taken out of the columns after it; inside a block of `block`
/// columns one column at a time, past the block by one matrix product.
pub fn obs_sweep(
    wp: &mut [f32],
    rows: usize,
    cols: usize,
    u: &[f32],
    block: usize,
    f: &mut dyn Columns,
) {
    let mut out = vec![0f32; rows];
    let mut b0 = 0;
    while b0 < cols {
        let b1 = (b0 + block.max(1)).min(cols);
        f.block(b0, b1, wp, u);
        let mut err = vec![0f32; (b1 - b0) * rows];
        for i in b0..b1 {
            f.column(i, wp, &mut out);
            let d = u[i * cols + i];
            let (head, tail) = wp.split_at_mut((i + 1) * rows);
            let col = &head[i * rows..];
            let e = &mut err[(i - b0) * rows..(i - b0 + 1) * rows];
            for r in 0..rows {
                e[r] = (col[r] - out[r]) / d;
            }
            for j in i + 1..b1 {
                let uij = u[i * cols + j];
                if uij == 0.0 {
                    continue;
                }
                let dst = &mut tail[(j - i - 1) * rows..(j - i) * rows];
                dst.iter_mut()
                    .zip(e.iter())
                    .for_each(|(x, &e)| *x -= uij * e);
            }
        }
        if b1 < cols {
            // wp[b1..] -= U[b0..b1, b1..]ᵀ · err
            let m = cols - b1;
            let k = b1 - b0;
            let mut delta = vec![0f32; m * rows];
            gemm_f32(
                m,
                rows,
                k,
                &u[b0 * cols + b1..],
                1,
                cols as isize,
                &err,
                rows as isize,
                1,
                &mut delta,
                true,
            );
            wp[b1 * rows..]
                .iter_mut()
                .zip(&delta)
                .for_each(|(x, d)| *x -= d);
        }
        b0 = b1;
    }
}

/// `Σ_rows (Ŵ − W) G (Ŵ − W)ᵀ`: the squared output error over the calibration tokens of
/// replacing `w` by `approx`, from the Gram matrix alone.
pub fn output_error(w: &[f32], approx: &[f32], rows: usize, cols: usize, gram: &[f64]) -> f64 {
    let d: Vec<f32> = w.iter().zip(approx).map(|(a, b)| b - a).collect();
    let g: Vec<f32> = gram.iter().map(|&x| x as f32).collect();
    let mut dg = vec![0f32; rows * cols];
    gemm_f32(
        rows,
        cols,
        cols,
        &d,
        cols as isize,
        1,
        &g,
        cols as isize,
        1,
        &mut dg,
        true,
    );
    dg.iter()
        .zip(&d)
        .map(|(a, b)| (*a as f64) * (*b as f64))
        .sum()
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
    pub fn rank(self, rows: usize, cols: usize, sigma: &[f64]) -> usize {
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
fn whitening(gram: &[f64], cols: usize, damp: f64) -> Result<Mat<f64>, LinalgError> {
    let mean = (0..cols).map(|c| gram[c * cols + c]).sum::<f64>() / cols as f64;
    let lambda = (damp * mean).max(f64::MIN_POSITIVE);
    let g = Mat::<f64>::from_fn(cols, cols, |i, j| {
        gram[i * cols + j] + if i == j { lambda } else { 0.0 }
    });
    let llt = g
        .llt(Side::Lower)
        .map_err(|e| LinalgError::cholesky("the Gram matrix", damp, e))?;
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
) -> Result<Factors, LinalgError> {
    let s = match gram {
        Some(g) => Some(whitening(g, cols, damp)?),
        None => None,
    };
    let wm = Mat::<f64>::from_fn(rows, cols, |i, j| w[i * cols + j] as f64);
    let a = match &s {
        Some(s) => &wm * s,
        None => wm,
    };
    let svd = a.thin_svd().map_err(|_| LinalgError::SvdDidNotConverge)?;
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

/// `A·B` of row-major `m × k` and `k × n` matrices.
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    gemm_f32(m, n, k, a, k as isize, 1, b, n as isize, 1, &mut out, true);
    out
}

/// Deterministic data for the passes' unit tests.
#[cfg(test)]
pub(crate) mod testing {

    /// Deterministic values in [-0.5, 0.5).
    pub(crate) fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    }

    /// XᵀX of `x` (`tokens × cols`, row-major), summed in f64.
    pub(crate) fn gram_of(x: &[f32], cols: usize) -> Vec<f64> {
        let mut gram = vec![0f64; cols * cols];
        for row in x.chunks_exact(cols) {
            for i in 0..cols {
                for j in 0..cols {
                    gram[i * cols + j] += (row[i] * row[j]) as f64;
                }
            }
        }
        gram
    }
}
