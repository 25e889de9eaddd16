//! The next-token loss check: passes that may help or hurt a language model as a whole (local
//! distillation, structured pruning's compensation) measure its mean next-token loss on a few
//! calibration windows and keep only what lowers it.

use crate::PassError;
use llmc_ir::{Graph, Tensor};
use rayon::prelude::*;

/// Calibration windows on which a language model's next-token loss decides whether
/// corrections stay, unless `check` says otherwise (structured pruning's compensation too).
pub const CHECK_WINDOWS: usize = 8;

/// Whether `g` is a language model whose loss the check can measure: a decoder (whose
/// `tokens` input and `logits` output the verifier checked).
pub fn is_language_model(g: &Graph) -> bool {
    g.kind == llmc_ir::ModelKind::Decoder
}

/// `n` of `windows`, evenly spaced.
pub fn spread<T: Clone>(windows: &[T], n: usize) -> Vec<T> {
    let len = windows.len();
    (0..n.min(len))
        .map(|i| windows[i * len / n.min(len)].clone())
        .collect()
}

/// Mean next-token negative log-likelihood of a language model over `windows` (each from an
/// empty state): the logits at position t against the token at t + 1.
pub fn lm_loss(g: &Graph, windows: &[Vec<(String, Tensor)>]) -> Result<f64, PassError> {
    let err = PassError::Check;
    let mut s = llmc_ir::Session::new(g).map_err(|e| err(e.to_string()))?;
    let (mut sum, mut count) = (0f64, 0usize);
    for w in windows {
        let feed: Vec<(&str, Tensor)> = w.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        let tokens: Vec<i64> = w
            .iter()
            .find(|(n, _)| n == "tokens")
            .map(|(_, t)| t.to_f32_vec().into_iter().map(|x| x as i64).collect())
            .unwrap_or_default();
        s.reset();
        let out = s.run(&feed).map_err(|e| err(e.to_string()))?;
        let logits = out
            .into_iter()
            .find(|(n, _)| n == "logits")
            .ok_or_else(|| err("the graph gave no logits".into()))?
            .1
            .to_f32_vec();
        let vocab = logits.len() / tokens.len().max(1);
        let losses: Vec<f64> = logits
            .par_chunks(vocab)
            .zip(tokens.par_iter().skip(1))
            .map(|(row, &next)| {
                let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                let lse = max
                    + row
                        .iter()
                        .map(|&x| (x as f64 - max).exp())
                        .sum::<f64>()
                        .ln();
                lse - row.get(next as usize).map_or(f64::NAN, |&x| x as f64)
            })
            .collect();
        count += losses.len();
        sum += losses.iter().sum::<f64>();
    }
    Ok(sum / count.max(1) as f64)
}
