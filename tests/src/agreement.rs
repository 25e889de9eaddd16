//! How close two runs of a language model are in distribution: mean KL and top-1 agreement
//! over positions, and the interpreter's own spread under float noise, which is the yardstick
//! for code whose int8 activations round differently from the interpreter's.

use llmc_ir::{DType, Graph, Session, Tensor, TensorType, WeightData};

/// Mean KL(reference ‖ other) per position and the fraction of positions with the same top
/// token; both hold rows of `vocab` logits.
pub fn agreement(reference: &[f32], other: &[f32], vocab: usize) -> (f64, f64) {
    assert_eq!(reference.len(), other.len(), "logit counts differ");
    let rows = reference.len() / vocab;
    let mut kl = 0f64;
    let mut same = 0usize;
    for r in 0..rows {
        let (a, b) = (
            &reference[r * vocab..(r + 1) * vocab],
            &other[r * vocab..(r + 1) * vocab],
        );
        let (la, lb) = (log_sum_exp(a), log_sum_exp(b));
        kl += a
            .iter()
            .zip(b)
            .map(|(&x, &y)| ((x as f64 - la).exp()) * ((x as f64 - la) - (y as f64 - lb)))
            .sum::<f64>();
        same += (argmax(a) == argmax(b)) as usize;
    }
    (kl / rows as f64, same as f64 / rows as f64)
}

fn log_sum_exp(v: &[f32]) -> f64 {
    let m = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    m + v.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
}

/// Index of the largest value (the first, on ties).
pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |bi, (i, &x)| if x > v[bi] { i } else { bi })
}

/// The interpreter's logits for `ids` (one prefill from position 0).
pub fn interpreter_logits(g: &Graph, ids: &[u32]) -> Vec<f32> {
    let n = ids.len();
    let mut s = Session::new(g).expect("the graph verifies");
    s.run(&[
        (
            "tokens",
            Tensor::i64(vec![1, n], ids.iter().map(|&t| t as i64).collect()),
        ),
        (
            "positions",
            Tensor::i64(vec![1, n], (0..n as i64).collect()),
        ),
    ])
    .expect("the interpreter runs")
    .into_iter()
    .find(|(name, _)| name == "logits")
    .expect("logits")
    .1
    .to_f32_vec()
}

/// The interpreter's logits with every norm weight scaled by 1 ± 1e-6 (the sign alternating
/// with `seed`): float noise everywhere, as a different summation order gives.
pub fn nudged_logits(g: &Graph, ids: &[u32], seed: usize) -> Vec<f32> {
    let mut g = g.clone();
    for (i, w) in g.weights.iter_mut().enumerate() {
        if !w.name.contains("norm") {
            continue;
        }
        let sign = if (i + seed) % 2 == 0 { 1.0 } else { -1.0 };
        let t = w.data.as_ref().unwrap().decode_f32(&w.ty).unwrap();
        let v: Vec<f32> = t
            .to_f32_vec()
            .iter()
            .map(|x| x * (1.0 + sign * 1e-6))
            .collect();
        w.ty = TensorType::fixed(&t.shape, DType::F32);
        w.data = Some(WeightData::from_tensor(
            &Tensor::f32(t.shape.clone(), v),
            "nudged",
        ));
    }
    let tys: Vec<_> = g.weights.iter().map(|w| (w.value, w.ty.clone())).collect();
    for (v, ty) in tys {
        g.values[v.0 as usize].ty = ty;
    }
    interpreter_logits(&g, ids)
}

/// The interpreter's own spread on `ids` around its logits `want`: the largest KL and the
/// lowest top-1 agreement of three nudges by [`nudged_logits`].
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    pub kl: f64,
    pub top1: f64,
}

impl Spread {
    pub fn measure(g: &Graph, ids: &[u32], want: &[f32], vocab: usize) -> Spread {
        let mut s = Spread { kl: 0.0, top1: 1.0 };
        for seed in 0..3 {
            let (k, t) = agreement(want, &nudged_logits(g, ids, seed), vocab);
            s.kl = s.kl.max(k);
            s.top1 = s.top1.min(t);
        }
        s
    }

    /// Holds `got` to the interpreter's own sensitivity: int8 activations round, so a 1e-6
    /// difference upstream moves some values across a rounding boundary and 30 layers amplify
    /// it (SmolLM2 w8a8: one norm weight scaled by 1 + 1e-6 moves logits by 2.0). `got` may
    /// have at most `factor` times the spread's KL (floored at 1e-4) and top-1 agreement at
    /// most 0.25 below (over ~20 positions top-1 moves in steps of 5%: a change of summation
    /// order in the interpreter's matrix products alone moved it by 0.16). Returns a
    /// description of the comparison, as the error when it fails.
    pub fn check(
        &self,
        want: &[f32],
        got: &[f32],
        vocab: usize,
        factor: f64,
    ) -> Result<String, String> {
        let (kl, top1) = agreement(want, got, vocab);
        let line = format!(
            "KL {kl:.2e}, top-1 {top1:.3} (interpreter nudged by 1e-6: KL {:.2e}, top-1 {:.3})",
            self.kl, self.top1
        );
        if kl <= factor * self.kl.max(1e-4) && top1 >= self.top1 - 0.25 {
            Ok(line)
        } else {
            Err(line)
        }
    }
}
