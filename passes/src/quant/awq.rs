//! AWQ (Lin et al., 2023): activation-aware scaling of the input channels before rounding, so
//! the channels that carry the most energy round on a finer grid; the scales fold into the
//! producer ([`super::apply`]), so the graph computes the same function.

use super::smoothquant::{apply, sites};
use super::{spec_for, QuantOptions, WeightReport};
use crate::calib::Stats;
use crate::core::edit::unpalettized_linear_weights;
use crate::core::grid::rtn;
use crate::PassError;
use llmc_ir::Graph;
use rayon::prelude::*;
use std::collections::BTreeSet;

/// AWQ's search: for every site whose linear layers are all quantized, the per-channel scale
/// `s = mean|x|^α` (α on a grid of 20 in [0, 1), normalized to a geometric mean of 1) whose
/// round-to-nearest weights have the least output error on calibration, folded into the
/// producer. α = 0 is plain rounding, so the search never does worse on its own data.
pub(super) fn awq(
    g: &mut Graph,
    opts: &QuantOptions,
    bits: u8,
    stats: &mut Stats,
) -> Result<Vec<WeightReport>, PassError> {
    let quantized: BTreeSet<usize> = unpalettized_linear_weights(g, opts.head)
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    let mut rows_out = Vec::new();
    for site in sites(g) {
        if !site.linears.iter().all(|i| quantized.contains(i)) {
            continue;
        }
        let Some(st) = stats.inputs.get(&site.input) else {
            continue;
        };
        let mean: Vec<f32> = st.abs_mean().iter().map(|&m| m as f32).collect();
        let mut layers = Vec::new();
        for &i in &site.linears {
            let (v, rows, cols) = crate::core::edit::weight_f32(g, i)?;
            let q = spec_for(opts, bits, cols as u64)
                .map_err(|e| PassError::matrix("quantize", &g.weights[i].name, e))?;
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
                        crate::core::linalg::output_error(v, &back, *rows, *cols, gram)
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
            apply(g, &site, &s, Some(stats), "awq")?;
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
