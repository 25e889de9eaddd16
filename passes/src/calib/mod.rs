//! Calibration: the interpreter runs the calibration windows once and every linear layer's
//! input gets its statistics: per input channel mean |x| and max |x|, and the Gram matrix
//! XᵀX summed over every calibration token. Linear layers that read the same value (q, k and v
//! after one norm) share one entry.
//!
//! Passes that rescale a layer's input channels (SmoothQuant, AWQ) update the statistics in
//! place with [`InputStats::divide_channels`], so later passes see the graph as it is.

use crate::PassError;
use llmc_ir::{Graph, Op, Session, Tensor, ValueId};
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The calibration data: one set of named graph inputs per window.
#[derive(Clone, Debug)]
pub struct Calibration {
    pub windows: Vec<Vec<(String, Tensor)>>,
    /// Where the windows came from, for reports (`64 windows of 512 tokens from …`).
    pub label: String,
}

/// Statistics of one value that linear layers read, over every calibration token.
#[derive(Clone, Debug)]
pub struct InputStats {
    /// Input channels (the last dimension).
    pub cols: usize,
    /// Tokens seen (rows of X).
    pub tokens: usize,
    /// Σ |x_j| over tokens, per channel.
    pub abs_sum: Vec<f64>,
    /// Σ x_j over tokens, per channel (signed: the mean input, for bias corrections).
    pub sum: Vec<f64>,
    /// max |x_j| over tokens, per channel.
    pub abs_max: Vec<f32>,
    /// XᵀX, `cols × cols`, row-major.
    pub gram: Vec<f64>,
}

impl InputStats {
    fn new(cols: usize) -> InputStats {
        InputStats {
            cols,
            tokens: 0,
            abs_sum: vec![0.0; cols],
            sum: vec![0.0; cols],
            abs_max: vec![0.0; cols],
            gram: vec![0.0; cols * cols],
        }
    }

    /// The statistics of the rows of `x` (`tokens × cols`, row-major), as calibration
    /// gathers them.
    pub fn from_rows(x: &[f32], cols: usize) -> InputStats {
        let mut s = InputStats::new(cols);
        s.add(x);
        s.finish();
        s
    }

    /// Mean |x_j| per channel.
    pub fn abs_mean(&self) -> Vec<f64> {
        let n = self.tokens.max(1) as f64;
        self.abs_sum.iter().map(|s| s / n).collect()
    }

    /// Mean x_j per channel.
    pub fn mean(&self) -> Vec<f64> {
        let n = self.tokens.max(1) as f64;
        self.sum.iter().map(|s| s / n).collect()
    }

    fn add(&mut self, x: &[f32]) {
        let c = self.cols;
        let rows = x.len() / c;
        self.tokens += rows;
        for row in x.chunks_exact(c) {
            for (((s, m), t), &v) in self
                .abs_sum
                .iter_mut()
                .zip(&mut self.abs_max)
                .zip(&mut self.sum)
                .zip(row)
            {
                *s += v.abs() as f64;
                *m = m.max(v.abs());
                *t += v as f64;
            }
        }
        // XᵀX of this window in f32 (at most a window of tokens), summed in f64; only the
        // lower triangle is computed here, [`InputStats::finish`] mirrors it
        let mut g = vec![0f32; c * c];
        // SAFETY: x holds rows × c values and g c × c, matching the shapes and strides.
        let (xt, xm, dst) = unsafe {
            (
                faer::MatRef::<f32>::from_raw_parts(x.as_ptr(), c, rows, 1, c as isize),
                faer::MatRef::<f32>::from_raw_parts(x.as_ptr(), rows, c, c as isize, 1),
                faer::MatMut::<f32>::from_raw_parts_mut(g.as_mut_ptr(), c, c, c as isize, 1),
            )
        };
        use faer::linalg::matmul::triangular::{matmul, BlockStructure};
        matmul(
            dst,
            BlockStructure::TriangularLower,
            faer::Accum::Replace,
            xt,
            BlockStructure::Rectangular,
            xm,
            BlockStructure::Rectangular,
            1.0f32,
            faer::Par::rayon(0),
        );
        self.gram
            .par_chunks_mut(c)
            .zip(g.par_chunks(c))
            .enumerate()
            .for_each(|(i, (acc, w))| {
                acc[..=i]
                    .iter_mut()
                    .zip(&w[..=i])
                    .for_each(|(a, &b)| *a += b as f64)
            });
    }

    /// Fills the upper triangle of the Gram matrix from the lower one.
    fn finish(&mut self) {
        let c = self.cols;
        for i in 0..c {
            for j in i + 1..c {
                self.gram[i * c + j] = self.gram[j * c + i];
            }
        }
    }

    /// The statistics of `x / s` (channel j divided by `s[j]`): what the layer sees after a
    /// rescaling folds `1/s` into the op that produces its input.
    pub fn divide_channels(&mut self, s: &[f32]) {
        let c = self.cols;
        for j in 0..c {
            let inv = 1.0 / s[j] as f64;
            self.abs_sum[j] *= inv;
            self.sum[j] *= inv;
            self.abs_max[j] = (self.abs_max[j] as f64 * inv) as f32;
        }
        self.gram
            .par_chunks_mut(c)
            .enumerate()
            .for_each(|(i, row)| {
                let si = s[i] as f64;
                row.iter_mut()
                    .zip(s)
                    .for_each(|(g, &sj)| *g /= si * sj as f64);
            });
    }
}

/// Statistics for the inputs of linear layers, by the value they read.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub inputs: BTreeMap<ValueId, InputStats>,
    /// What was run: windows and tokens.
    pub windows: usize,
    pub label: String,
}

/// The values that the graph's linear layers read as their input, in graph order.
pub fn linear_inputs(g: &Graph) -> BTreeSet<ValueId> {
    g.nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Linear { .. }))
        .map(|n| n.inputs[0])
        .collect()
}

/// Runs every calibration window through the interpreter (each from an empty state) and
/// gathers the statistics of every linear layer's input. The run stops after the last linear
/// layer's input is seen, so the output head's product is never computed. `progress` is told
/// after each window.
pub fn collect(
    g: &Graph,
    calib: &Calibration,
    mut progress: impl FnMut(usize),
) -> Result<Stats, PassError> {
    let err = |msg: String| PassError::Calibration(msg);
    if calib.windows.is_empty() {
        return Err(err("no calibration windows".into()));
    }
    let wanted = linear_inputs(g);
    // the node after which nothing more is needed: the last linear layer
    let last = g
        .nodes
        .iter()
        .rposition(|n| matches!(n.op, Op::Linear { .. }));
    let Some(last) = last else {
        return Ok(Stats {
            windows: calib.windows.len(),
            label: calib.label.clone(),
            ..Default::default()
        });
    };
    let mut stats: BTreeMap<ValueId, InputStats> = BTreeMap::new();
    let mut session = Session::new(g).map_err(|e| err(e.to_string()))?;
    for (w, feed) in calib.windows.iter().enumerate() {
        session.reset();
        let inputs: Vec<(&str, Tensor)> =
            feed.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        let mut seen = BTreeSet::new();
        let mut failure = None;
        session
            .run_observed(&inputs, &mut |i, args: &[Arc<Tensor>]| {
                let n = &g.nodes[i];
                if matches!(n.op, Op::Linear { .. }) {
                    let v = n.inputs[0];
                    if wanted.contains(&v) && seen.insert(v) {
                        let x = &args[0];
                        let cols = *x.shape.last().unwrap_or(&1);
                        let st = stats.entry(v).or_insert_with(|| InputStats::new(cols));
                        if st.cols != cols {
                            failure = Some(format!(
                                "value %{} has {cols} channels in one window and {} in another",
                                v.0, st.cols
                            ));
                            return false;
                        }
                        match x.as_f32() {
                            Some(xs) => st.add(xs),
                            None => st.add(&x.to_f32_vec()),
                        }
                    }
                }
                i < last
            })
            .map_err(|e| err(format!("window {w}: {e}")))?;
        if let Some(f) = failure {
            return Err(err(f));
        }
        progress(w + 1);
    }
    stats.values_mut().for_each(InputStats::finish);
    Ok(Stats {
        inputs: stats,
        windows: calib.windows.len(),
        label: calib.label.clone(),
    })
}

/// Why calibration windows cannot be cut from a text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("calibration needs at least one window of at least one token, not {count} of {len}")]
    Empty { count: usize, len: usize },
    #[error("the calibration text makes {tokens} tokens, fewer than one window of {len}")]
    TooFewTokens { tokens: usize, len: usize },
}

/// The token windows of the calibration protocol: `count` windows of `len` tokens at evenly
/// spaced offsets over `ids`, the first at 0 and the last ending at the final token
/// (`offset_i = i·(N−len) div (count−1)`).
pub fn spaced_windows(ids: &[u32], len: usize, count: usize) -> Result<Vec<Vec<u32>>, WindowError> {
    if count == 0 || len == 0 {
        return Err(WindowError::Empty { count, len });
    }
    if ids.len() < len {
        return Err(WindowError::TooFewTokens {
            tokens: ids.len(),
            len,
        });
    }
    let span = ids.len() - len;
    Ok((0..count)
        .map(|i| {
            let off = if count == 1 {
                0
            } else {
                i * span / (count - 1)
            };
            ids[off..off + len].to_vec()
        })
        .collect())
}

/// A decoder's feeds for token windows: `tokens` and `positions`, batch 1.
pub fn decoder_feeds(windows: &[Vec<u32>]) -> Vec<Vec<(String, Tensor)>> {
    windows
        .iter()
        .map(|w| {
            let n = w.len();
            vec![
                (
                    "tokens".to_string(),
                    Tensor::i64(vec![1, n], w.iter().map(|&t| t as i64).collect()),
                ),
                (
                    "positions".to_string(),
                    Tensor::i64(vec![1, n], (0..n as i64).collect()),
                ),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_evenly_spaced_and_end_at_the_last_token() {
        let ids: Vec<u32> = (0..1000).collect();
        let w = spaced_windows(&ids, 100, 4).unwrap();
        assert_eq!(w.len(), 4);
        assert_eq!(w[0][0], 0);
        assert_eq!(w[1][0], 300);
        assert_eq!(*w[3].last().unwrap(), 999);
        assert_eq!(
            spaced_windows(&ids[..50], 100, 4),
            Err(WindowError::TooFewTokens {
                tokens: 50,
                len: 100
            })
        );
    }

    #[test]
    fn statistics_match_a_direct_computation_and_follow_a_rescaling() {
        let x: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) * 0.5).collect(); // 4 x 3
        let mut s = InputStats::new(3);
        s.add(&x);
        s.finish();
        assert_eq!(s.tokens, 4);
        for i in 0..3 {
            for j in 0..3 {
                let d: f64 = (0..4)
                    .map(|r| x[r * 3 + i] as f64 * x[r * 3 + j] as f64)
                    .sum();
                assert!((s.gram[i * 3 + j] - d).abs() < 1e-4, "{i},{j}");
            }
            let m = (0..4).map(|r| x[r * 3 + i].abs()).fold(0f32, f32::max);
            assert_eq!(s.abs_max[i], m);
            let t: f64 = (0..4).map(|r| x[r * 3 + i] as f64).sum();
            assert!((s.mean()[i] - t / 4.0).abs() < 1e-9, "{i}");
        }
        let mut t = s.clone();
        t.divide_channels(&[2.0, 1.0, 0.5]);
        assert!((t.gram[0] - s.gram[0] / 4.0).abs() < 1e-9);
        assert!((t.gram[2] - s.gram[2]).abs() < 1e-9);
        assert!((t.gram[8] - s.gram[8] * 4.0).abs() < 1e-9);
        assert_eq!(t.abs_max[2], s.abs_max[2] * 2.0);
        assert!((t.mean()[0] - s.mean()[0] / 2.0).abs() < 1e-12);
        assert!((t.sum[2] - s.sum[2] * 2.0).abs() < 1e-9);
    }
}
