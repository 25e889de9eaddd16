//! Structured pruning of feed-forward channels: a fraction of each FFN's hidden channels leave
//! the graph (rows of the up and gate projections, columns of the down projection), and every
//! type that depends on the hidden width is inferred anew, so the weights file and the work
//! shrink with it.
//!
//! Channels are scored either from calibration (`activation`: the channel's RMS input to the
//! down projection times the norm of its down column, the size of what it writes into the
//! residual stream) or without data, in the spirit of PruneNet (`spectral`: the rows of the
//! channel matrix `[gate | up | downᵀ]` that carry the most of its leading singular values,
//! those holding 90% of the energy, are kept, so its spectrum changes least).

use super::compensate::{compensate, removed_mean_output, Edit};
use crate::calib::Stats;
use crate::core::edit::{reinfer, set_weight_f32_shaped, weight_bytes, weight_f32, weight_index};
use crate::core::linalg::LinalgError;
use crate::core::pass::{OptionKind, OptionSpec, Options, Pass, PassContext, PassInfo};
use crate::core::report::{FfnRow, PassRow};
use crate::PassError;
use faer::Mat;
use llmc_ir::{BinaryOp, Graph, Op};
use rayon::prelude::*;

/// One feed-forward block: `down(act(gate(x)) · up(x))` or `down(act(up(x)))`.
#[derive(Clone, Debug)]
pub struct Ffn {
    /// Weight indices: the projections into the hidden width (gate and up, or up alone) and
    /// their biases, and the projection out.
    pub into: Vec<usize>,
    pub into_bias: Vec<usize>,
    pub down: usize,
    /// The down projection's node.
    pub node: usize,
    /// The value the down projection reads.
    pub hidden: llmc_ir::ValueId,
    pub width: usize,
}

/// The FFN blocks of a graph: a linear layer whose input is an elementwise product of (an
/// activation of) linear outputs, or an activation of one linear output, each read only there.
pub fn ffns(g: &Graph) -> Vec<Ffn> {
    let producers = g.producers();
    let users = g.users();
    let only = |v: llmc_ir::ValueId| users[v.0 as usize].len() == 1;
    // the linear layer behind v, through at most one unary activation
    let linear_behind = |v: llmc_ir::ValueId| -> Option<usize> {
        let p = producers[v.0 as usize]?;
        let n = &g.nodes[p];
        let p = match n.op {
            Op::Unary(_) if only(n.inputs[0]) => producers[n.inputs[0].0 as usize]?,
            Op::Linear { .. } => p,
            _ => return None,
        };
        matches!(g.nodes[p].op, Op::Linear { .. }).then_some(p)
    };
    let mut out = Vec::new();
    for (node, n) in g.nodes.iter().enumerate() {
        if !matches!(n.op, Op::Linear { .. }) {
            continue;
        }
        let hidden = n.inputs[0];
        if !only(hidden) || n.inputs.len() > 2 {
            continue;
        }
        let Some(down) = weight_index(g, n.inputs[1]).filter(|_| only(n.inputs[1])) else {
            continue;
        };
        let Some(p) = producers[hidden.0 as usize] else {
            continue;
        };
        let pn = &g.nodes[p];
        let into_nodes: Vec<usize> = match pn.op {
            Op::Binary(BinaryOp::Mul) if pn.inputs.iter().all(|&v| only(v)) => {
                let found: Vec<Option<usize>> =
                    pn.inputs.iter().map(|&v| linear_behind(v)).collect();
                if found.iter().any(|f| f.is_none()) {
                    continue;
                }
                found.into_iter().flatten().collect()
            }
            Op::Unary(_) => match linear_behind(hidden) {
                Some(l) => vec![l],
                None => continue,
            },
            _ => continue,
        };
        let mut into = Vec::new();
        let mut into_bias = Vec::new();
        let mut ok = true;
        for &l in &into_nodes {
            let ln = &g.nodes[l];
            match weight_index(g, ln.inputs[1]).filter(|_| only(ln.inputs[1])) {
                Some(w) => into.push(w),
                None => ok = false,
            }
            if let Some(&b) = ln.inputs.get(2) {
                match weight_index(g, b).filter(|_| only(b)) {
                    Some(w) => into_bias.push(w),
                    None => ok = false,
                }
            }
        }
        let width = g.ty(hidden).shape.0.last().and_then(|d| d.fixed());
        match (ok, width) {
            (true, Some(w)) => out.push(Ffn {
                into,
                into_bias,
                down,
                node,
                hidden,
                width: w as usize,
            }),
            _ => continue,
        }
    }
    out
}

/// How channels are scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelScore {
    /// From calibration: RMS of the channel times its down column's norm.
    Activation,
    /// Without data: each channel's share of the leading singular values of
    /// `[gate | up | downᵀ]`.
    Spectral,
}

/// Each row's share of the leading singular values of `a` (`rows × cols`, row-major):
/// `Σ_{j<k} σ_j² U_rj²` over the leading `k` singular vectors that hold `energy` of the squared
/// singular values. Rows with little of it can go with the least change to the spectrum.
pub fn leverage(a: &[f32], rows: usize, cols: usize, energy: f64) -> Result<Vec<f64>, LinalgError> {
    let m = Mat::<f64>::from_fn(rows, cols, |i, j| a[i * cols + j] as f64);
    let svd = m.thin_svd().map_err(|_| LinalgError::SvdDidNotConverge)?;
    let s = svd.S();
    let k_all = s.dim();
    let total: f64 = (0..k_all).map(|i| s[i] * s[i]).sum();
    let mut acc = 0.0;
    let mut k = 0;
    while k < k_all && acc < energy * total {
        acc += s[k] * s[k];
        k += 1;
    }
    let u = svd.U();
    Ok((0..rows)
        .map(|r| (0..k).map(|j| (s[j] * u[(r, j)]).powi(2)).sum())
        .collect())
}

/// The channels to keep (sorted) of one FFN.
fn keep_channels(
    g: &Graph,
    f: &Ffn,
    fraction: f64,
    score: ChannelScore,
    stats: Option<&Stats>,
) -> Result<Vec<usize>, PassError> {
    let err = |m: String| PassError::Pattern {
        pattern: "prune-ffn",
        at: format!("@{}", g.weights[f.down].name),
        msg: m,
    };
    let w = f.width;
    let (down, _, dcols) = weight_f32(g, f.down)?;
    if dcols != w {
        return Err(err(format!(
            "down takes {dcols} inputs, the hidden width is {w}"
        )));
    }
    let d_rows = down.len() / w;
    let col_norm: Vec<f64> = (0..w)
        .map(|c| {
            (0..d_rows)
                .map(|r| (down[r * w + c] as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    let scores: Vec<f64> = match score {
        ChannelScore::Activation => {
            let st = stats
                .and_then(|s| s.inputs.get(&f.hidden))
                .filter(|s| s.cols == w)
                .ok_or_else(|| err("score=activation needs calibration statistics".into()))?;
            let n = st.tokens.max(1) as f64;
            (0..w)
                .map(|c| (st.gram[c * w + c] / n).sqrt() * col_norm[c])
                .collect()
        }
        ChannelScore::Spectral => {
            // one row per channel: its gate and up rows and its down column
            let mut parts = Vec::new();
            for &i in &f.into {
                let (v, rows, cols) = weight_f32(g, i)?;
                if rows != w {
                    return Err(err(format!(
                        "@{} has {rows} rows, not {w}",
                        g.weights[i].name
                    )));
                }
                parts.push((v, cols));
            }
            let width: usize = parts.iter().map(|p| p.1).sum::<usize>() + d_rows;
            let mut a = vec![0f32; w * width];
            for c in 0..w {
                let row = &mut a[c * width..(c + 1) * width];
                let mut at = 0;
                for (v, cols) in &parts {
                    row[at..at + cols].copy_from_slice(&v[c * cols..(c + 1) * cols]);
                    at += cols;
                }
                for r in 0..d_rows {
                    row[at + r] = down[r * w + c];
                }
            }
            leverage(&a, w, width, 0.9)
                .map_err(|e| PassError::matrix("prune-ffn", &g.weights[f.down].name, e))?
        }
    };
    let drop = ((w as f64) * fraction).round() as usize;
    let mut idx: Vec<usize> = (0..w).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    let mut keep: Vec<usize> = idx[drop.min(w)..].to_vec();
    keep.sort_unstable();
    if keep.is_empty() {
        return Err(err("no channel would remain".into()));
    }
    Ok(keep)
}

/// The `prune-ffn` pass.
pub struct PruneFfnPass {
    pub fraction: f64,
    pub score: ChannelScore,
    /// Add the removed channels' mean output to the down projection's bias (calibrated),
    /// kept only where it lowers the next-token loss on calibration windows.
    pub compensate: bool,
}

pub static PRUNE_FFN_INFO: PassInfo = PassInfo {
    name: "prune-ffn",
    summary: "remove a fraction of every feed-forward block's hidden channels from the graph (score=activation calibrates)",
    options: &[
        OptionSpec {
            name: "fraction",
            kind: OptionKind::Float,
            default: "0.25",
            help: "fraction of each FFN's hidden channels removed",
        },
        OptionSpec {
            name: "score",
            kind: OptionKind::Choice(&["activation", "spectral"]),
            default: "activation",
            help: "calibration RMS × down-column norm, or PruneNet-style spectral leverage (no data)",
        },
        OptionSpec {
            name: "compensate",
            kind: OptionKind::Bool,
            default: "false",
            help: "add the removed channels' mean output to the down projection's bias, kept if the next-token loss on 8 calibration windows falls (calibrates; --distill asks for it)",
        },
    ],
    create: |o| Ok(Box::new(PruneFfnPass::from_options(o)?)),
};

impl PruneFfnPass {
    pub fn from_options(o: &Options) -> Result<PruneFfnPass, PassError> {
        let fraction = o.float("fraction")?;
        if !(0.0..1.0).contains(&fraction) {
            return Err(PassError::Options {
                pass: "prune-ffn".into(),
                msg: format!("fraction must lie in [0, 1), not {fraction}"),
            });
        }
        Ok(PruneFfnPass {
            fraction,
            score: if o.str("score") == "spectral" {
                ChannelScore::Spectral
            } else {
                ChannelScore::Activation
            },
            compensate: o.bool("compensate"),
        })
    }
}

impl Pass for PruneFfnPass {
    fn info(&self) -> &'static PassInfo {
        &PRUNE_FFN_INFO
    }

    fn needs_calibration(&self) -> bool {
        self.score == ChannelScore::Activation || self.compensate
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<(), PassError> {
        let stats = if self.needs_calibration() {
            Some(cx.take_stats(g, "prune-ffn")?)
        } else {
            None
        };
        let blocks = ffns(g);
        let keeps: Vec<Result<Vec<usize>, PassError>> = blocks
            .par_iter()
            .map(|f| keep_channels(g, f, self.fraction, self.score, stats.as_ref()))
            .collect();
        let note = format!("prune-ffn {}", self.fraction);
        let mut compensation = Vec::new();
        for (f, keep) in blocks.iter().zip(keeps) {
            let keep = keep?;
            let w = f.width;
            if self.compensate {
                let st = stats
                    .as_ref()
                    .and_then(|s| s.inputs.get(&f.hidden))
                    .filter(|s| s.cols == w)
                    .ok_or_else(|| PassError::Pattern {
                        pattern: "prune-ffn",
                        at: format!("@{}", g.weights[f.down].name),
                        msg: "compensate needs calibration statistics of the hidden channels"
                            .into(),
                    })?;
                let (down, rows, _) = weight_f32(g, f.down)?;
                let removed: Vec<usize> =
                    (0..w).filter(|c| keep.binary_search(c).is_err()).collect();
                let b = removed_mean_output(&down, rows, w, &removed, st);
                compensation.push((f.node, format!("{}.prune_bias", g.weights[f.down].name), b));
            }
            // bytes of the three projections (and the biases of gate and up)
            let projections = |g: &Graph| -> u64 {
                f.into
                    .iter()
                    .chain(&f.into_bias)
                    .chain([&f.down])
                    .map(|&i| weight_bytes(g, i))
                    .sum()
            };
            let before = projections(g);
            for &i in f.into.iter().chain(&f.into_bias) {
                let (v, rows, cols) = weight_f32(g, i)?;
                let per = if rows == w { cols } else { 1 };
                let mut out = Vec::with_capacity(keep.len() * per);
                for &c in &keep {
                    out.extend_from_slice(&v[c * per..(c + 1) * per]);
                }
                let shape = if rows == w && g.weights[i].ty.rank() == 2 {
                    vec![keep.len(), cols]
                } else {
                    vec![keep.len()]
                };
                set_weight_f32_shaped(g, i, shape, out, &note)?;
            }
            let (v, rows, _) = weight_f32(g, f.down)?;
            let mut out = Vec::with_capacity(rows * keep.len());
            for r in 0..rows {
                out.extend(keep.iter().map(|&c| v[r * w + c]));
            }
            set_weight_f32_shaped(g, f.down, vec![rows, keep.len()], out, &note)?;
            let after = projections(g);
            cx.report.push(PassRow::PruneFfn(FfnRow {
                pass: "prune-ffn",
                weight: g.weights[f.down].name.clone(),
                channels_before: w,
                channels_after: keep.len(),
                f32_bytes_after: after,
                bytes_before: before,
            }));
        }
        reinfer(g)?;
        if !compensation.is_empty() {
            let what = format!(
                "{} biases for the mean output of what was removed",
                compensation.len()
            );
            let edit = Edit::biases(what, compensation, note);
            compensate(g, cx, vec![edit], "prune-ffn")?;
        }
        // channel statistics no longer line up with the graph
        cx.stats = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spectral_scores_find_the_rows_that_carry_the_spectrum() {
        // rows 0..4 span the matrix; rows 4..8 are tiny copies of row 0
        let mut a = vec![0f32; 8 * 4];
        for r in 0..4 {
            a[r * 4 + r] = 1.0 + r as f32;
        }
        for r in 4..8 {
            a[r * 4] = 0.01;
        }
        let l = leverage(&a, 8, 4, 0.9).unwrap();
        let best: Vec<usize> = {
            let mut i: Vec<usize> = (0..8).collect();
            i.sort_by(|&x, &y| l[y].total_cmp(&l[x]));
            i[..3].to_vec()
        };
        assert!(best.iter().all(|&r| (1..4).contains(&r)), "{l:?}");
    }
}
