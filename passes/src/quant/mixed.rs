//! Mixed precision: the layers that lose most at the scheme's bits (relative output error on
//! calibration, round to nearest) are promoted to int8 per channel, greedily by error removed
//! per extra byte, until the quantized weights average the `--bpw` target.

use super::{spec_for, QuantOptions};
use crate::calib::Stats;
use crate::core::grid::rtn;
use crate::PassError;
use llmc_ir::{DType, Encoding, Graph, Group, QuantSpec, ValueId, Zero};
use rayon::prelude::*;
use std::collections::BTreeSet;

/// What mixed precision promotes layers to: int8, symmetric, per output channel.
pub(super) const HIGH: QuantSpec = QuantSpec {
    bits: 8,
    group: Group::Channel,
    scale: DType::F16,
    zero: Zero::Symmetric,
};

/// Mixed precision: the weights to promote to [`HIGH`] so the quantized weights average at
/// most `bpw` bits. Each layer's relative output error on calibration at both encodings
/// (round to nearest) ranks it; promotions go by error removed per extra byte, greedily.
pub(super) fn mixed_precision(
    g: &Graph,
    opts: &QuantOptions,
    bits: u8,
    bpw: f64,
    work: &[(usize, ValueId)],
    stats: &Stats,
) -> Result<BTreeSet<usize>, PassError> {
    let err = |msg: String| PassError::Options {
        pass: "quantize".into(),
        msg,
    };
    struct Choice {
        idx: usize,
        params: u64,
        low: u64,
        high: u64,
        gain: f64,
    }
    let choices: Vec<Result<Choice, PassError>> = work
        .par_iter()
        .map(|&(i, input)| {
            let (v, rows, cols) = crate::core::edit::weight_f32(g, i)?;
            let dims = [rows as u64, cols as u64];
            let lq = spec_for(opts, bits, cols as u64)
                .map_err(|e| PassError::matrix("quantize", &g.weights[i].name, e))?;
            let low = Encoding::Quant(lq).byte_size(&dims).unwrap_or(0);
            let high = Encoding::Quant(HIGH).byte_size(&dims).unwrap_or(0);
            let gain = match stats.inputs.get(&input).filter(|s| s.cols == cols) {
                Some(st) => {
                    let zero = vec![0f32; v.len()];
                    let base = crate::core::linalg::output_error(&v, &zero, rows, cols, &st.gram)
                        .max(1e-30);
                    let (_, a) = rtn(&v, rows, cols, &lq);
                    let (_, b) = rtn(&v, rows, cols, &HIGH);
                    (crate::core::linalg::output_error(&v, &a, rows, cols, &st.gram)
                        - crate::core::linalg::output_error(&v, &b, rows, cols, &st.gram))
                        / base
                }
                None => 0.0,
            };
            Ok(Choice {
                idx: i,
                params: (rows * cols) as u64,
                low,
                high,
                gain,
            })
        })
        .collect();
    let mut choices: Vec<Choice> = choices.into_iter().collect::<Result<_, _>>()?;
    let params: u64 = choices.iter().map(|c| c.params).sum();
    let budget = (bpw * params as f64 / 8.0).floor() as u64;
    let mut used: u64 = choices.iter().map(|c| c.low).sum();
    if used > budget {
        return Err(err(format!(
            "bpw={bpw} is below what int{bits} alone takes ({:.3} bits per weight)",
            used as f64 * 8.0 / params.max(1) as f64
        )));
    }
    choices.sort_by(|a, b| {
        let ra = a.gain / (a.high.saturating_sub(a.low).max(1)) as f64;
        let rb = b.gain / (b.high.saturating_sub(b.low).max(1)) as f64;
        rb.total_cmp(&ra).then(a.idx.cmp(&b.idx))
    });
    let mut out = BTreeSet::new();
    for c in &choices {
        let extra = c.high.saturating_sub(c.low);
        if c.gain > 0.0 && used + extra <= budget {
            used += extra;
            out.insert(c.idx);
        }
    }
    Ok(out)
}
