//! The quantization grid of a group (scale and zero) and the two ways onto it:
//! - round-to-nearest, with an optional search of each group's clipping range;
//! - GPTQ (Frantar et al., 2022): weights quantized one input column at a time, each column's
//!   rounding error spread over the columns not yet quantized through the inverse Hessian
//!   `H = XᵀX` of the layer's calibration inputs, so the layer's outputs on that data move as
//!   little as the grid allows. The column loop works on the transposed weight in blocks of
//!   128 columns ([`obs_sweep`]). With act-order the columns go by decreasing `H_jj`; the
//!   groups' grids are then fixed up front from the original weights ("static groups"), so
//!   the stored layout keeps groups of consecutive input channels.

use crate::core::linalg::{inverse_hessian_factor, obs_sweep, Columns};
use crate::MatrixError;
use llmc_ir::weights::encode_quant;
use llmc_ir::{DType, Group, QuantSpec, Zero};
use rayon::prelude::*;

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
) -> Result<(Vec<u8>, Vec<f32>), MatrixError> {
    assert_eq!(w.len(), rows * cols);
    assert_eq!(gram.len(), cols * cols);
    let gs = group_len(q, rows, cols);
    if gs > cols || cols % gs != 0 {
        return Err(MatrixError::GptqGroups { cols, group: gs });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::linalg::output_error;
    use crate::core::linalg::testing::{gram_of, lcg};
    use llmc_ir::{Bytes, Encoding, Format, Shape, TensorType, WeightData};

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
