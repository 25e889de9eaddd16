//! Per-input-channel rescaling folded into the op before a linear layer: `x W ᵀ = (x / s)
//! (W diag(s))ᵀ`, with `1/s` multiplied into a norm's scale (and bias) or into the rows of the
//! linear layer whose output the input is an elementwise product with (SwiGLU's up
//! projection). The graph computes the same function; what changes is which side holds the
//! range: SmoothQuant moves activation outliers into the weights so per-token int8 loses less,
//! AWQ scales up the input channels that matter most so their weights round more finely.
//!
//! A site is a value read only by linear layers (all of them rescaled together) whose producer
//! can absorb `1/s`. Inputs without such a producer (the attention output before `o_proj`)
//! are left alone.

use crate::calib::Stats;
use crate::core::edit::{set_weight_f32, weight_f32, weight_index};
use crate::core::pass::{OptionKind, OptionSpec, Pass, PassContext, PassInfo};
use crate::core::report::{PassRow, SmoothRow};
use crate::PassError;
use llmc_ir::{Graph, Op, ValueId};

/// Where a site's `1/s` goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Fold {
    /// A norm's per-channel scale, and its bias when it has one (weight indices).
    Norm { scale: usize, bias: Option<usize> },
    /// The rows (output channels) of a linear layer's weight, and its bias.
    Rows { weight: usize, bias: Option<usize> },
}

/// A value read only by linear layers, whose producer can absorb a per-channel scale.
#[derive(Clone, Debug)]
pub struct Site {
    pub input: ValueId,
    pub cols: usize,
    /// The weights (indices) of the linear layers reading it, `[n, cols]` each.
    pub linears: Vec<usize>,
    pub fold: Fold,
}

/// The sites of a graph, in graph order.
pub fn sites(g: &Graph) -> Vec<Site> {
    let users = g.users();
    let producers = g.producers();
    let only_use =
        |v: ValueId| users[v.0 as usize].len() == 1 && !g.outputs.iter().any(|(_, o)| *o == v);
    let fixed =
        |v: ValueId| -> Option<Vec<u64>> { g.ty(v).shape.0.iter().map(|d| d.fixed()).collect() };
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for n in &g.nodes {
        if !matches!(n.op, Op::Linear { .. }) || !seen.insert(n.inputs[0]) {
            continue;
        }
        let v = n.inputs[0];
        if g.outputs.iter().any(|(_, o)| *o == v) {
            continue;
        }
        let Some(cols) = g.ty(v).shape.0.last().and_then(|d| d.fixed()) else {
            continue;
        };
        let cols = cols as usize;
        // every reader is a linear layer taking it as its input, with a weight of its own
        let mut linears = Vec::new();
        let ok = users[v.0 as usize].iter().all(|&u| {
            let un = &g.nodes[u];
            if !matches!(un.op, Op::Linear { .. }) || un.inputs[1..].contains(&v) {
                return false;
            }
            match weight_index(g, un.inputs[1]) {
                Some(w) if only_use(un.inputs[1]) => {
                    linears.push(w);
                    true
                }
                _ => false,
            }
        });
        if !ok || linears.is_empty() {
            continue;
        }
        let Some(p) = producers[v.0 as usize] else {
            continue;
        };
        let pn = &g.nodes[p];
        let per_channel = |w: ValueId| {
            weight_index(g, w).filter(|_| only_use(w) && fixed(w) == Some(vec![cols as u64]))
        };
        let fold = match &pn.op {
            Op::RmsNorm { axis, .. } | Op::LayerNorm { axis, .. }
                if *axis == -1 || *axis as usize + 1 == g.ty(v).rank() =>
            {
                let Some(scale) = pn.inputs.get(1).and_then(|&w| per_channel(w)) else {
                    continue;
                };
                let bias = match pn.inputs.get(2) {
                    Some(&b) => match per_channel(b) {
                        Some(b) => Some(b),
                        None => continue,
                    },
                    None => None,
                };
                Fold::Norm { scale, bias }
            }
            Op::Binary(llmc_ir::BinaryOp::Mul) => {
                // one factor is a linear layer's output read only here, of v's shape
                let found = pn.inputs.iter().find_map(|&f| {
                    let lp = producers[f.0 as usize]?;
                    let ln = &g.nodes[lp];
                    if !matches!(ln.op, Op::Linear { .. })
                        || !only_use(f)
                        || g.ty(f).shape != g.ty(v).shape
                    {
                        return None;
                    }
                    let w = weight_index(g, ln.inputs[1]).filter(|_| only_use(ln.inputs[1]))?;
                    if fixed(ln.inputs[1])?.first() != Some(&(cols as u64)) {
                        return None;
                    }
                    let bias = match ln.inputs.get(2) {
                        Some(&b) => Some(per_channel(b)?),
                        None => None,
                    };
                    Some(Fold::Rows { weight: w, bias })
                });
                let other_same_shape = pn.inputs.iter().all(|&f| g.ty(f).shape == g.ty(v).shape);
                match found {
                    Some(f) if other_same_shape => f,
                    _ => continue,
                }
            }
            _ => continue,
        };
        out.push(Site {
            input: v,
            cols,
            linears,
            fold,
        });
    }
    out
}

/// Rescales a site: its linear layers' input columns by `s`, its producer by `1/s`, and the
/// input's statistics with them.
pub fn apply(
    g: &mut Graph,
    site: &Site,
    s: &[f32],
    stats: Option<&mut Stats>,
    note: &str,
) -> Result<(), PassError> {
    assert_eq!(s.len(), site.cols);
    let c = site.cols;
    let divide = |g: &mut Graph, i: usize, per_row: bool| -> Result<(), PassError> {
        let (mut v, rows, cols) = weight_f32(g, i)?;
        if per_row {
            for (r, row) in v.chunks_mut(cols).enumerate().take(rows) {
                row.iter_mut().for_each(|x| *x /= s[r]);
            }
        } else {
            v.iter_mut().zip(s).for_each(|(x, s)| *x /= s);
        }
        set_weight_f32(g, i, v, note)?;
        Ok(())
    };
    match site.fold {
        Fold::Norm { scale, bias } => {
            divide(g, scale, false)?;
            if let Some(b) = bias {
                divide(g, b, false)?;
            }
        }
        Fold::Rows { weight, bias } => {
            divide(g, weight, true)?;
            if let Some(b) = bias {
                divide(g, b, false)?;
            }
        }
    }
    for &i in &site.linears {
        let (mut v, _, cols) = weight_f32(g, i)?;
        debug_assert_eq!(cols, c);
        for row in v.chunks_mut(c) {
            row.iter_mut().zip(s).for_each(|(x, s)| *x *= s);
        }
        set_weight_f32(g, i, v, note)?;
    }
    if let Some(st) = stats.and_then(|st| st.inputs.get_mut(&site.input)) {
        st.divide_channels(s);
    }
    Ok(())
}

/// SmoothQuant's scales for a site: `s_j = max|x_j|^α / max|W_:j|^(1−α)` over every linear
/// layer reading it (1 for channels that never fire or have no weight).
pub fn smoothquant_scales(act_max: &[f32], w_max: &[f32], alpha: f32) -> Vec<f32> {
    act_max
        .iter()
        .zip(w_max)
        .map(|(&a, &w)| {
            if a <= 0.0 || w <= 0.0 {
                1.0
            } else {
                (a.powf(alpha) / w.powf(1.0 - alpha)).clamp(1e-5, 1e5)
            }
        })
        .collect()
}

/// The `smooth` pass (SmoothQuant): migrates activation outliers into the weights of every
/// site, ahead of int8 activations.
pub struct SmoothPass {
    pub alpha: f32,
}

pub static SMOOTH_INFO: PassInfo = PassInfo {
    name: "smooth",
    summary: "SmoothQuant: per-channel scales from calibration move activation outliers into the weights (for a8 schemes); needs calibration",
    options: &[OptionSpec {
        name: "alpha",
        kind: OptionKind::Float,
        default: "0.5",
        help: "migration strength: 0 keeps the activations, 1 moves all of their range into the weights",
    }],
    create: |o| {
        Ok(Box::new(SmoothPass {
            alpha: o.float("alpha")? as f32,
        }))
    },
};

impl Pass for SmoothPass {
    fn info(&self) -> &'static PassInfo {
        &SMOOTH_INFO
    }

    fn needs_calibration(&self) -> bool {
        true
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<(), PassError> {
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(PassError::Options {
                pass: "smooth".into(),
                msg: format!("alpha must lie in [0, 1], not {}", self.alpha),
            });
        }
        let mut stats = cx.take_stats(g, "smooth")?;
        for site in sites(g) {
            let Some(st) = stats.inputs.get(&site.input) else {
                continue;
            };
            let mut w_max = vec![0f32; site.cols];
            for &i in &site.linears {
                let (v, _, cols) = weight_f32(g, i)?;
                for row in v.chunks(cols) {
                    w_max
                        .iter_mut()
                        .zip(row)
                        .for_each(|(m, x)| *m = m.max(x.abs()));
                }
            }
            let s = smoothquant_scales(&st.abs_max, &w_max, self.alpha);
            let before = st.abs_max.iter().cloned().fold(0f32, f32::max);
            apply(g, &site, &s, Some(&mut stats), "smoothquant")?;
            if let Some(o) = cx.originals.as_mut() {
                for &i in &site.linears {
                    o.scale_columns(&g.weights[i].name, &s);
                }
            }
            let after = stats.inputs[&site.input]
                .abs_max
                .iter()
                .cloned()
                .fold(0f32, f32::max);
            cx.report.push(PassRow::Smooth(SmoothRow {
                pass: "smooth",
                weights: site
                    .linears
                    .iter()
                    .map(|&i| g.weights[i].name.clone())
                    .collect(),
                alpha: self.alpha,
                act_max_before: before,
                act_max_after: after,
            }));
        }
        cx.stats = Some(stats);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmc_ir::{DType, Session, Tensor, TensorType, WeightData};

    /// x → rms_norm(γ) → {linear A, linear B}; and up/gate → silu·up → linear C.
    fn graph() -> Graph {
        let t = |v: Vec<f32>, s: &[usize]| {
            Some(WeightData::from_tensor(&Tensor::f32(s.to_vec(), v), "t"))
        };
        let mut g = Graph::new("s");
        let x = g.add_input("x", TensorType::fixed(&[3, 4], DType::F32));
        let gamma = g
            .add_weight(
                "gamma",
                TensorType::fixed(&[4], DType::F32),
                t(vec![1.0, 2.0, 0.5, 1.5], &[4]),
            )
            .unwrap();
        let w = |g: &mut Graph, name: &str, n: usize, k: usize, seed: f32| {
            let v: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.37 + seed).sin()).collect();
            g.add_weight(name, TensorType::fixed(&[n, k], DType::F32), t(v, &[n, k]))
                .unwrap()
        };
        let n = g
            .add1(
                Op::RmsNorm {
                    axis: -1,
                    eps: 1e-5,
                },
                &[x, gamma],
            )
            .unwrap();
        let (wa, wb) = (w(&mut g, "a", 6, 4, 0.1), w(&mut g, "b", 6, 4, 0.7));
        let a = g
            .add1(
                Op::Linear {
                    act: llmc_ir::ActQuant::None,
                },
                &[n, wa],
            )
            .unwrap();
        let b = g
            .add1(
                Op::Linear {
                    act: llmc_ir::ActQuant::None,
                },
                &[n, wb],
            )
            .unwrap();
        let sa = g.add1(Op::Unary(llmc_ir::UnaryOp::Silu), &[a]).unwrap();
        let m = g
            .add1(Op::Binary(llmc_ir::BinaryOp::Mul), &[sa, b])
            .unwrap();
        let wc = w(&mut g, "c", 4, 6, 1.3);
        let c = g
            .add1(
                Op::Linear {
                    act: llmc_ir::ActQuant::None,
                },
                &[m, wc],
            )
            .unwrap();
        g.set_output("y", c);
        g
    }

    #[test]
    fn rescaling_sites_keeps_the_function() {
        let mut g = graph();
        let found = sites(&g);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(matches!(found[0].fold, Fold::Norm { .. }));
        assert_eq!(found[0].linears.len(), 2);
        assert!(matches!(found[1].fold, Fold::Rows { .. }));
        let x = Tensor::f32(
            vec![3, 4],
            (0..12).map(|i| (i as f32 * 0.9).cos()).collect(),
        );
        let before = Session::new(&g).unwrap().run(&[("x", x.clone())]).unwrap()[0]
            .1
            .to_f32_vec();
        for site in &found {
            let s: Vec<f32> = (0..site.cols).map(|j| 0.5 + j as f32 * 0.75).collect();
            apply(&mut g, site, &s, None, "test").unwrap();
        }
        llmc_ir::verify(&g).unwrap();
        let after = Session::new(&g).unwrap().run(&[("x", x)]).unwrap()[0]
            .1
            .to_f32_vec();
        for (p, q) in before.iter().zip(&after) {
            assert!(
                (p - q).abs() < 1e-4 * (1.0 + p.abs()),
                "{before:?} vs {after:?}"
            );
        }
    }
}
