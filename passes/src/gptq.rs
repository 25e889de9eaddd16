//! GPTQ (Frantar et al., 2022): weights quantized one input column at a time, each column's
//! rounding error spread over the columns not yet quantized through the inverse Hessian
//! `H = XᵀX` of the layer's calibration inputs, so the layer's outputs on that data move as
//! little as the grid allows.
//!
//! The column loop works on the transposed weight (one input column is a contiguous row of
//! output values) in blocks of 128 columns: inside a block each error updates the block's
//! remaining columns; after the block one matrix product carries the block's errors to every
//! later column. With act-order the columns go by decreasing `H_jj`; the groups' grids are then
//! fixed up front from the original weights ("static groups"), so the stored layout keeps
//! groups of consecutive input channels.

use crate::quant::{group_len, Grid};
use faer::linalg::solvers::DenseSolveCore;
use faer::{Mat, Side};
use llmc_ir::interp::kernels::gemm_f32;
use llmc_ir::weights::encode_quant;
use llmc_ir::QuantSpec;

#[derive(Clone, Copy, Debug)]
pub struct GptqOptions {
    /// Dampening added to the Hessian's diagonal, as a fraction of its mean.
    pub damp: f64,
    /// Quantize columns in order of decreasing Hessian diagonal.
    pub act_order: bool,
    /// Columns per lazy-update block.
    pub block: usize,
    /// Search each group's clipping range (energy-weighted by the Hessian's diagonal).
    pub clip: bool,
}

impl Default for GptqOptions {
    fn default() -> Self {
        GptqOptions {
            damp: 0.01,
            act_order: true,
            block: 128,
            clip: true,
        }
    }
}

/// GPTQ of a row-major `[rows, cols]` weight against the Gram matrix `gram` (`cols × cols`,
/// XᵀX of its inputs): the canonical bytes of the quantized weight and the values they decode
/// to.
pub fn gptq(
    w: &[f32],
    rows: usize,
    cols: usize,
    gram: &[f64],
    q: &QuantSpec,
    o: &GptqOptions,
) -> Result<(Vec<u8>, Vec<f32>), String> {
    assert_eq!(w.len(), rows * cols);
    assert_eq!(gram.len(), cols * cols);
    let gs = group_len(q, rows, cols);
    if gs > cols || cols % gs != 0 {
        return Err(format!(
            "GPTQ needs groups within rows: {cols} columns, groups of {gs}"
        ));
    }
    let ngroups = cols / gs;
    // the weight transposed: wt[c * rows + r] = w[r, c]
    let mut wt = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            wt[c * rows + r] = w[r * cols + c];
        }
    }
    let mut h = gram.to_vec();
    let mut diag: Vec<f64> = (0..cols).map(|c| h[c * cols + c]).collect();
    for c in 0..cols {
        if diag[c] <= 0.0 {
            // a channel that is always zero: its weights never matter
            h[c * cols + c] = 1.0;
            diag[c] = 1.0;
            wt[c * rows..(c + 1) * rows].fill(0.0);
        }
    }
    let mut perm: Vec<usize> = (0..cols).collect();
    if o.act_order {
        perm.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]).then(a.cmp(&b)));
    }
    let energy: Vec<f32> = diag.iter().map(|&d| d as f32).collect();
    let fit = |wt: &[f32], r: usize, gi: usize| -> Grid {
        let xs: Vec<f32> = (gi * gs..(gi + 1) * gs).map(|c| wt[c * rows + r]).collect();
        if o.clip {
            Grid::search(&xs, Some(&energy[gi * gs..(gi + 1) * gs]), q)
        } else {
            Grid::fit(&xs, q, 1.0)
        }
    };
    // grids per (row, group); static when columns leave their natural order
    let mut grids = vec![
        Grid {
            scale: 0.0,
            zero: 0.0
        };
        rows * ngroups
    ];
    if o.act_order {
        for r in 0..rows {
            for gi in 0..ngroups {
                grids[r * ngroups + gi] = fit(&wt, r, gi);
            }
        }
    }
    let u = inverse_hessian_factor(&h, &perm, o.damp)?;
    // the permuted transposed weight
    let mut wp = vec![0f32; rows * cols];
    for (i, &c) in perm.iter().enumerate() {
        wp[i * rows..(i + 1) * rows].copy_from_slice(&wt[c * rows..(c + 1) * rows]);
    }
    let mut codes = vec![0u8; rows * cols];
    let mut approx = vec![0f32; rows * cols];
    struct Round<'a> {
        perm: &'a [usize],
        gs: usize,
        ngroups: usize,
        rows: usize,
        cols: usize,
        dynamic: bool,
        clip: bool,
        energy: &'a [f32],
        q: &'a QuantSpec,
        grids: &'a mut [Grid],
        codes: &'a mut [u8],
        approx: &'a mut [f32],
    }
    impl Columns for Round<'_> {
        fn column(&mut self, i: usize, wp: &[f32], out: &mut [f32]) {
            let (rows, cols, gs) = (self.rows, self.cols, self.gs);
            let c = self.perm[i];
            let gi = c / gs;
            if self.dynamic && c % gs == 0 {
                // the group's grid from its columns as the updates left them
                for r in 0..rows {
                    let xs: Vec<f32> = (0..gs).map(|t| wp[(i + t) * rows + r]).collect();
                    self.grids[r * self.ngroups + gi] = if self.clip {
                        Grid::search(&xs, Some(&self.energy[c..c + gs]), self.q)
                    } else {
                        Grid::fit(&xs, self.q, 1.0)
                    };
                }
            }
            let col = &wp[i * rows..(i + 1) * rows];
            for r in 0..rows {
                let (code, a) = self.grids[r * self.ngroups + gi].quantize(col[r], self.q);
                self.codes[r * cols + c] = code;
                self.approx[r * cols + c] = a;
                out[r] = a;
            }
        }
    }
    obs_sweep(
        &mut wp,
        rows,
        cols,
        &u,
        o.block,
        &mut Round {
            perm: &perm,
            gs,
            ngroups,
            rows,
            cols,
            dynamic: !o.act_order,
            clip: o.clip,
            energy: &energy,
            q,
            grids: &mut grids,
            codes: &mut codes,
            approx: &mut approx,
        },
    );
    let scales: Vec<f32> = grids.iter().map(|g| g.scale).collect();
    let zeros: Vec<f32> = grids.iter().map(|g| g.zero).collect();
    Ok((
        encode_quant(q, rows as u64, cols as u64, &codes, &scales, &zeros),
        approx,
    ))
}

/// `U`, the upper Cholesky factor of `(H + λI)⁻¹` with `H` taken in the order `perm` and
/// `λ = damp · mean(diag H)`, row-major `cols × cols`: the optimal-brain-surgeon updates of
/// GPTQ and SparseGPT read it row by row.
pub fn inverse_hessian_factor(h: &[f64], perm: &[usize], damp: f64) -> Result<Vec<f32>, String> {
    let cols = perm.len();
    let mean = (0..cols).map(|c| h[c * cols + c]).sum::<f64>() / cols as f64;
    let damp = damp * mean;
    let hp = Mat::<f64>::from_fn(cols, cols, |i, j| {
        h[perm[i] * cols + perm[j]] + if i == j { damp } else { 0.0 }
    });
    let hinv = hp
        .llt(Side::Lower)
        .map_err(|e| format!("the Hessian is not positive definite ({e:?}); raise damp"))?
        .inverse();
    let l = hinv
        .llt(Side::Lower)
        .map_err(|e| format!("the inverse Hessian is not positive definite ({e:?}); raise damp"))?;
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::quant::rtn;
    use llmc_ir::{DType, Group, Zero};

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

    #[test]
    fn gptq_has_less_output_error_than_rounding() {
        let (rows, cols, tokens) = (16, 64, 256);
        let mut seed = 7;
        let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
        // correlated inputs with a few strong channels, as real activations have
        let base: Vec<f32> = (0..tokens * 8).map(|_| lcg(&mut seed)).collect();
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| {
                let (t, c) = (i / cols, i % cols);
                let s = if c % 13 == 0 { 8.0 } else { 1.0 };
                s * (base[t * 8 + c % 8] + 0.3 * lcg(&mut seed))
            })
            .collect();
        let gram = gram_of(&x, cols);
        for (group, zero) in [
            (Group::Size(32), Zero::Int),
            (Group::Channel, Zero::Symmetric),
        ] {
            let q = QuantSpec {
                bits: 4,
                group,
                scale: DType::F16,
                zero,
            };
            let (_, plain) = rtn(&w, rows, cols, &q);
            let e_rtn = output_error(&w, &plain, rows, cols, &gram);
            for act_order in [false, true] {
                let o = GptqOptions {
                    act_order,
                    block: 16,
                    ..Default::default()
                };
                let (bytes, approx) = gptq(&w, rows, cols, &gram, &q, &o).unwrap();
                let e = output_error(&w, &approx, rows, cols, &gram);
                assert!(
                    e < 0.8 * e_rtn,
                    "{group:?} act_order={act_order}: gptq {e} vs rtn {e_rtn}"
                );
                // the bytes decode to the values reported
                let ty = llmc_ir::TensorType {
                    shape: llmc_ir::Shape::fixed(&[rows, cols]),
                    enc: llmc_ir::Encoding::Quant(q),
                };
                let d = llmc_ir::WeightData::new(
                    llmc_ir::Bytes::owned(bytes),
                    llmc_ir::Format::Canonical,
                    "t",
                )
                .decode_f32(&ty)
                .unwrap();
                assert_eq!(d.to_f32_vec(), approx);
            }
        }
    }
}
