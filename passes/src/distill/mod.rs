//! Local distillation: after the compression passes, every linear layer whose weight changed
//! gets a closed-form correction fitted on calibration statistics so its outputs come closer
//! to the uncompressed layer's: the student–teacher idea, one layer at a time, without a
//! training loop.
//!
//! With `W` the weight as the pipeline found it, `Ŵ` what the layer computes now (decoded; for
//! a factored layer `L·R`, for CALDERA `Q + L·R`) and `Δ = W − Ŵ`, the output error over the
//! calibration tokens is `E = Σ_t ‖Δ x_t‖² = tr(Δ G Δᵀ)`, `G = XᵀX`.
//! - Bias: `E(c) = Σ_t ‖Δ x_t − c‖²` is least at `c = Δ μ` (`μ` the mean input), where it is
//!   `E − N ‖Δ μ‖²`; `c` is added to the layer's bias.
//! - Low rank: a branch `y += (x Aᵀ) Bᵀ` with `B·A` the rank-`r` factors of `Δ` that minimize
//!   the output error: the SVD of `Δ` whitened by the Cholesky factor of the centred Gram
//!   `G − N μ μᵀ` (SVD-LLM's construction), the bias then taking what is left of the mean.
//!
//! Contract: the function of each corrected layer changes by `c` and `(x Aᵀ) Bᵀ`; each
//! correction is kept only where it lowers the layer's output error on the calibration
//! statistics, and the report gives that error before and after. A lower error per layer need
//! not make a better model (after pruning, the bias correction alone makes SmolLM2 worse): for a
//! language model the pass then measures the next-token loss on calibration windows with and
//! without the corrections, and keeps them all if it falls; else it keeps the layer roles
//! (`attn_q` of every layer, ...) whose corrections lower it alone, if together they still do,
//! and else none.

use crate::calib::{InputStats, Stats};
use crate::core::check::{is_language_model, lm_loss, spread, CHECK_WINDOWS};
use crate::core::edit::{add_to_bias, weight_index, Matrix};
use crate::core::linalg::output_error;
use crate::core::linalg::{factor, LinalgError, RankRule};
use crate::core::originals::Originals;
use crate::core::pass::{OptionKind, OptionSpec, Options, Pass, PassContext, PassInfo, Progress};
use crate::core::report::{DistillCheck, DistillCheckRow, DistillRow, DistillSkippedRow, PassRow};
use crate::PassError;
use llmc_ir::{
    ActQuant, BinaryOp, Bytes, DType, Format, Graph, Op, Tensor, TensorType, ValueId, WeightData,
};
use rayon::prelude::*;
use std::collections::BTreeMap;

/// Local distillation's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DistillOptions {
    /// Rank of the low-rank branch (0: none).
    pub rank: usize,
    /// Fit a bias correction.
    pub bias: bool,
    /// Type the branch's factors are stored in (f16 or f32).
    pub dtype: DType,
    /// Dampening of the Gram matrix before its Cholesky factorization, as a fraction of its
    /// mean diagonal.
    pub damp: f64,
    /// Gather statistics anew on the compressed graph instead of reusing those at hand.
    pub recalibrate: bool,
    /// Calibration windows on which a language model's loss decides whether the corrections
    /// stay (0: keep them unchecked).
    pub check: usize,
}

impl Default for DistillOptions {
    fn default() -> Self {
        DistillOptions {
            rank: 0,
            bias: true,
            dtype: DType::F16,
            damp: 0.01,
            recalibrate: false,
            check: CHECK_WINDOWS,
        }
    }
}

/// The correction fitted to one layer.
#[derive(Clone, Debug)]
pub struct Correction {
    /// Added to the layer's output, one per output row.
    pub bias: Option<Vec<f32>>,
    /// The branch `(x Aᵀ) Bᵀ`: rank, `B` (`rows × rank`), `A` (`rank × cols`), as stored.
    pub lowrank: Option<(usize, Vec<f32>, Vec<f32>)>,
    /// `tr(W G Wᵀ)`: the output's energy, what errors are relative to.
    pub base: f64,
    /// Output error before and after, squared and summed over tokens.
    pub before: f64,
    pub after: f64,
}

impl Correction {
    /// `bias`, `rank8`, `bias+rank8` or `none`.
    pub fn describe(&self) -> String {
        match (&self.bias, &self.lowrank) {
            (Some(_), Some((r, ..))) => format!("bias+rank{r}"),
            (None, Some((r, ..))) => format!("rank{r}"),
            (Some(_), None) => "bias".into(),
            (None, None) => "none".into(),
        }
    }
}

fn round_to(v: Vec<f32>, dt: DType) -> Vec<f32> {
    match dt {
        DType::F16 => v
            .into_iter()
            .map(|x| half::f16::from_f32(x).to_f32())
            .collect(),
        DType::BF16 => v
            .into_iter()
            .map(|x| half::bf16::from_f32(x).to_f32())
            .collect(),
        _ => v,
    }
}

/// `m · μ` for a row-major `rows × cols` matrix.
fn times_mean(m: &[f32], cols: usize, mu: &[f64]) -> Vec<f32> {
    m.chunks(cols)
        .map(|row| row.iter().zip(mu).map(|(&a, b)| a as f64 * b).sum::<f64>() as f32)
        .collect()
}

/// Fits the correction of a layer whose weight `w` became `approx` (both `rows × cols`) on
/// the statistics of its input. Among bias alone and bias with the low-rank branch (as the
/// options allow) it keeps the one with the least output error, and nothing when no
/// correction lowers it.
pub fn fit(
    w: &[f32],
    approx: &[f32],
    rows: usize,
    cols: usize,
    st: &InputStats,
    o: &DistillOptions,
) -> Result<Correction, LinalgError> {
    let zero = vec![0f32; w.len()];
    let base = output_error(w, &zero, rows, cols, &st.gram);
    let before = output_error(w, approx, rows, cols, &st.gram);
    let delta: Vec<f32> = w.iter().zip(approx).map(|(a, b)| a - b).collect();
    let n = st.tokens as f64;
    let mu = st.mean();
    let mut best = Correction {
        bias: None,
        lowrank: None,
        base,
        before,
        after: before,
    };
    if o.bias {
        let c = times_mean(&delta, cols, &mu);
        let gain = n * c.iter().map(|&x| (x as f64).powi(2)).sum::<f64>();
        if gain > 0.0 && before - gain < best.after {
            best.after = (before - gain).max(0.0);
            best.bias = Some(c);
        }
    }
    if o.rank > 0 {
        // with a bias to take the mean, the branch fits the centred inputs
        let gram: Vec<f64> = if o.bias {
            let mut g = st.gram.clone();
            for i in 0..cols {
                for j in 0..cols {
                    g[i * cols + j] -= n * mu[i] * mu[j];
                }
            }
            g
        } else {
            st.gram.clone()
        };
        let f = factor(
            &delta,
            rows,
            cols,
            RankRule::Rank(o.rank),
            Some(&gram),
            o.damp,
        )?;
        let l = round_to(f.l, o.dtype);
        let r = round_to(f.r, o.dtype);
        let lr = crate::core::linalg::Factors {
            rank: f.rank,
            l: l.clone(),
            r: r.clone(),
        }
        .product(rows, cols);
        let after = output_error(&delta, &lr, rows, cols, &gram);
        if after < best.after {
            let resid: Vec<f32> = delta.iter().zip(&lr).map(|(a, b)| a - b).collect();
            best.after = after.max(0.0);
            best.bias = o.bias.then(|| times_mean(&resid, cols, &mu));
            best.lowrank = Some((f.rank, l, r));
        }
    }
    Ok(best)
}

/// How a layer's compressed weight is spread over the graph.
#[derive(Clone, Copy, Debug)]
enum Form {
    /// One weight, re-encoded, pruned or rescaled in place.
    Direct { w: usize },
    /// CALDERA: `Q` in the weight's place plus the branch `(x Rᵀ) Lᵀ`.
    Caldera { q: usize, l: usize, r: usize },
    /// Low-rank factors: `L` in the weight's place, reading `x Rᵀ`.
    LowRank { l: usize, r: usize },
}

/// A linear layer to correct: the node whose output takes the correction, the value its
/// input statistics belong to, and the form of its weight.
#[derive(Clone, Debug)]
struct Site {
    node: usize,
    input: ValueId,
    name: String,
    form: Form,
}

/// The linear layers whose weights changed since the snapshot, and those that cannot be
/// compared (their shape changed some other way), with why.
fn sites(g: &Graph, originals: &Originals) -> (Vec<Site>, Vec<(String, String)>) {
    let by_name: BTreeMap<&str, usize> = g
        .weights
        .iter()
        .enumerate()
        .map(|(i, w)| (w.name.as_str(), i))
        .collect();
    let producers = g.producers();
    let mut seen = std::collections::BTreeSet::new();
    let (mut out, mut skipped) = (Vec::new(), Vec::new());
    for (node, n) in g.nodes.iter().enumerate() {
        if !matches!(n.op, Op::Linear { .. }) {
            continue;
        }
        let Some(w) = weight_index(g, n.inputs[1]) else {
            continue;
        };
        let name = &g.weights[w].name;
        let Some(orig) = originals.get(name) else {
            continue;
        };
        if !seen.insert(name.clone()) {
            continue;
        }
        let dims =
            |ty: &TensorType| -> Vec<u64> { ty.shape.0.iter().filter_map(|d| d.fixed()).collect() };
        let (was, now) = (dims(&orig.ty), dims(&g.weights[w].ty));
        let branch = |suffix: &str| by_name.get(format!("{name}{suffix}").as_str()).copied();
        let form = if was == now {
            match (branch(".caldera_l"), branch(".caldera_r")) {
                (Some(l), Some(r)) => Form::Caldera { q: w, l, r },
                _ if g.weights[w].hash == orig.hash => continue,
                _ => Form::Direct { w },
            }
        } else {
            let inner = producers[n.inputs[0].0 as usize].map(|p| &g.nodes[p]);
            match (inner, branch(".lowrank_r")) {
                (Some(m), Some(r))
                    if matches!(m.op, Op::Linear { .. })
                        && weight_index(g, m.inputs[1]) == Some(r) =>
                {
                    out.push(Site {
                        node,
                        input: m.inputs[0],
                        name: name.clone(),
                        form: Form::LowRank { l: w, r },
                    });
                    continue;
                }
                _ => {
                    skipped.push((
                        name.clone(),
                        format!("its shape changed from {was:?} to {now:?}"),
                    ));
                    continue;
                }
            }
        };
        out.push(Site {
            node,
            input: n.inputs[0],
            name: name.clone(),
            form,
        });
    }
    (out, skipped)
}

fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    crate::core::linalg::Factors {
        rank: k,
        l: a.to_vec(),
        r: b.to_vec(),
    }
    .product(m, n)
}

/// What the layer's weight computes now, `rows × cols`.
fn effective(g: &Graph, form: Form) -> Result<Matrix, PassError> {
    let w = |i| crate::core::edit::weight_f32(g, i);
    Ok(match form {
        Form::Direct { w: i } => w(i)?,
        Form::Caldera { q, l, r } => {
            let (mut qv, rows, cols) = w(q)?;
            let (lv, _, rank) = w(l)?;
            let (rv, _, _) = w(r)?;
            qv.iter_mut()
                .zip(matmul(&lv, &rv, rows, rank, cols))
                .for_each(|(a, b)| *a += b);
            (qv, rows, cols)
        }
        Form::LowRank { l, r } => {
            let (lv, rows, rank) = w(l)?;
            let (rv, _, cols) = w(r)?;
            (matmul(&lv, &rv, rows, rank, cols), rows, cols)
        }
    })
}

/// One corrected (or examined) layer, for the report.
#[derive(Clone, Debug)]
pub struct DistillReport {
    pub weight: String,
    /// `direct`, `caldera` or `lowrank`.
    pub form: &'static str,
    pub rows: usize,
    pub cols: usize,
    /// `bias`, `bias+rank8`, ... or `none` when nothing lowered the error.
    pub correction: String,
    /// Relative output error on calibration, `‖(W − Ŵ)X‖ / ‖WX‖`, before and after.
    pub out_error_before: f64,
    pub out_error_after: f64,
    /// Values the correction stores (bias and branch).
    pub params_added: usize,
}

fn data(values: &[f32], shape: &[usize], dt: DType, note: &str) -> (TensorType, WeightData) {
    let ty = TensorType::fixed(shape, dt);
    let bytes: Vec<u8> = match dt {
        DType::F16 => values
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        _ => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
    };
    (
        ty,
        WeightData::new(Bytes::owned(bytes), Format::Canonical, note),
    )
}

/// What [`apply`] did: a row per changed layer, and the layers it could not examine, with
/// why.
#[derive(Clone, Debug, Default)]
pub struct Distilled {
    pub reports: Vec<DistillReport>,
    pub skipped: Vec<(String, String)>,
}

/// The corrections fitted to every linear layer whose weight changed, before any is applied.
pub struct Fits {
    work: Vec<Site>,
    fits: Vec<Option<(Correction, usize, usize)>>,
    skipped: Vec<(String, String)>,
}

impl Fits {
    /// The names of the layers that got a correction.
    pub fn corrected(&self) -> impl Iterator<Item = &str> {
        self.work
            .iter()
            .zip(&self.fits)
            .filter(|(_, f)| f.as_ref().is_some_and(|(c, ..)| c.describe() != "none"))
            .map(|(s, _)| s.name.as_str())
    }
}

fn distill_err(at: &str, msg: String) -> PassError {
    PassError::Pattern {
        pattern: "distill",
        at: format!("@{at}"),
        msg,
    }
}

/// Fits the correction of every linear layer of `g` whose weight changed since `originals`.
pub fn fit_all(
    g: &Graph,
    originals: &Originals,
    stats: &Stats,
    o: &DistillOptions,
    progress: Option<&Progress>,
) -> Result<Fits, PassError> {
    let err = distill_err;
    let (work, skipped) = sites(g, originals);
    let total = work.len() as u64;
    let done = std::sync::atomic::AtomicU64::new(0);
    let fits = work
        .par_iter()
        .map(|s| {
            let (w, rows, cols) = originals
                .weight_f32(&s.name)
                .expect("sites come from the snapshot")
                .map_err(|e| PassError::Edit {
                    what: "read the original of",
                    weight: s.name.clone(),
                    msg: e.to_string(),
                })?;
            let (approx, r2, c2) = effective(g, s.form)?;
            if (r2, c2) != (rows, cols) {
                return Err(err(
                    &s.name,
                    format!("computes a {r2}x{c2} weight, was {rows}x{cols}"),
                ));
            }
            let Some(st) = stats.inputs.get(&s.input).filter(|st| st.cols == cols) else {
                return Ok(None);
            };
            let c = fit(&w, &approx, rows, cols, st, o)
                .map_err(|e| PassError::matrix("distill", &s.name, e))?;
            let k = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if let Some(p) = progress {
                p("distilled layers", k, total);
            }
            Ok(Some((c, rows, cols)))
        })
        .collect::<Result<Vec<_>, PassError>>()?;
    Ok(Fits {
        work,
        fits,
        skipped,
    })
}

/// Applies the fitted corrections of the layers `keep` names to `g` (the graph they were
/// fitted on); the others are reported as rejected.
pub fn apply(
    g: &mut Graph,
    fits: &Fits,
    o: &DistillOptions,
    keep: impl Fn(&str) -> bool,
) -> Result<Distilled, PassError> {
    let err = distill_err;
    let mut skipped = fits.skipped.clone();
    let mut reports = Vec::new();
    for (s, f) in fits.work.iter().zip(&fits.fits) {
        let Some((c, rows, cols)) = f else {
            skipped.push((
                s.name.clone(),
                "no calibration statistics for its input".into(),
            ));
            continue;
        };
        let (rows, cols) = (*rows, *cols);
        let rel = |e: f64| (e / c.base.max(f64::MIN_POSITIVE)).max(0.0).sqrt();
        let form = match s.form {
            Form::Direct { .. } => "direct",
            Form::Caldera { .. } => "caldera",
            Form::LowRank { .. } => "lowrank",
        };
        if !keep(&s.name) {
            reports.push(DistillReport {
                weight: s.name.clone(),
                form,
                rows,
                cols,
                correction: match c.describe().as_str() {
                    "none" => "none".into(),
                    d => format!("none (rejected: {d})"),
                },
                out_error_before: rel(c.before),
                out_error_after: rel(c.before),
                params_added: 0,
            });
            continue;
        }
        let mut added = 0;
        let note = format!("distill {}", c.describe());
        if let Some(b) = &c.bias {
            if !add_to_bias(g, s.node, &format!("{}.distill_bias", s.name), b, &note)? {
                skipped.push((s.name.clone(), "its bias is computed, not a weight".into()));
                continue;
            }
            added += rows;
        }
        if let Some((rank, l, r)) = &c.lowrank {
            let (rt, rd) = data(r, &[*rank, cols], o.dtype, &note);
            let (lt, ld) = data(l, &[rows, *rank], o.dtype, &note);
            let rn = format!("{}.distill_a", s.name);
            let ln = format!("{}.distill_b", s.name);
            let rv = g
                .add_weight(&rn, rt, Some(rd))
                .map_err(|e| err(&rn, e.to_string()))?;
            let lv = g
                .add_weight(&ln, lt, Some(ld))
                .map_err(|e| err(&ln, e.to_string()))?;
            let y = g.nodes[s.node].outputs[0];
            let lin = Op::Linear {
                act: ActQuant::None,
            };
            let t = g
                .add1(lin.clone(), &[s.input, rv])
                .map_err(|e| err(&s.name, e.to_string()))?;
            let u = g
                .add1(lin, &[t, lv])
                .map_err(|e| err(&s.name, e.to_string()))?;
            let sum = g
                .add1(Op::Binary(BinaryOp::Add), &[y, u])
                .map_err(|e| err(&s.name, e.to_string()))?;
            g.replace_uses_except(y, sum, g.nodes.len() - 1);
            added += rank * (rows + cols);
        }
        reports.push(DistillReport {
            weight: s.name.clone(),
            form,
            rows,
            cols,
            correction: c.describe(),
            out_error_before: rel(c.before),
            out_error_after: rel(c.after),
            params_added: added,
        });
    }
    g.sort().map_err(|e| err("graph", e.to_string()))?;
    Ok(Distilled { reports, skipped })
}

/// The layers a correction is kept or rejected with: a weight's name with its layer numbers
/// taken out (`blk.3.attn_q.weight` → `blk.#.attn_q.weight`), one role in every layer.
fn group_of(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut digits = false;
    for ch in name.chars() {
        if ch.is_ascii_digit() {
            if !digits {
                out.push('#');
            }
            digits = true;
        } else {
            out.push(ch);
            digits = false;
        }
    }
    out
}

impl DistillPass {
    /// Which groups of corrections (see [`group_of`]) stay: all of them if they lower the
    /// next-token loss on `windows`, else the groups that lower it alone, if together they
    /// still do, else none. Returns the groups and the check's record for the report.
    fn choose(
        &self,
        g: &Graph,
        fits: &Fits,
        windows: &[Vec<(String, Tensor)>],
        progress: Option<&Progress>,
    ) -> Result<(std::collections::BTreeSet<String>, DistillCheck), PassError> {
        use std::collections::BTreeSet;
        let groups: BTreeSet<String> = fits.corrected().map(group_of).collect();
        let steps = 2 + groups.len() as u64 + 1;
        let step = std::cell::Cell::new(0u64);
        let loss_with = |keep: &BTreeSet<String>| -> Result<f64, PassError> {
            if let Some(p) = progress {
                p("checking the corrections", step.get(), steps);
            }
            step.set(step.get() + 1);
            if keep.is_empty() {
                return lm_loss(g, windows);
            }
            let mut h = g.clone();
            apply(&mut h, fits, &self.opts, |n| keep.contains(&group_of(n)))?;
            lm_loss(&h, windows)
        };
        let before = loss_with(&BTreeSet::new())?;
        let all = loss_with(&groups)?;
        let mut tried = BTreeMap::new();
        let (keep, after) = if all < before {
            (groups.clone(), all)
        } else {
            let mut helpful = BTreeSet::new();
            for k in &groups {
                let l = loss_with(&BTreeSet::from([k.clone()]))?;
                tried.insert(k.clone(), l);
                if l < before {
                    helpful.insert(k.clone());
                }
            }
            let together = match helpful.len() {
                0 => before,
                1 => tried[helpful.first().expect("one")],
                _ => loss_with(&helpful)?,
            };
            if together < before {
                (helpful, together)
            } else {
                (BTreeSet::new(), before)
            }
        };
        let check = DistillCheck {
            windows: windows.len(),
            loss_before: before,
            loss_all: all,
            loss_by_group: tried,
            loss_after: after,
            kept: !keep.is_empty(),
            groups_kept: keep.iter().cloned().collect(),
            groups: groups.len(),
        };
        Ok((keep, check))
    }
}

/// The `distill` pass.
pub struct DistillPass {
    pub opts: DistillOptions,
}

pub static DISTILL_INFO: PassInfo = PassInfo {
    name: "distill",
    summary: "local distillation, last in a pipeline: per changed linear layer, a closed-form bias (and optional low-rank branch) fitted on calibration so its outputs match the uncompressed layer's (calibrates)",
    options: &[
        OptionSpec {
            name: "rank",
            kind: OptionKind::Int,
            default: "0",
            help: "rank of a correction branch y += (x Aᵀ) Bᵀ (0: none)",
        },
        OptionSpec {
            name: "bias",
            kind: OptionKind::Bool,
            default: "true",
            help: "fit a bias correction (W − Ŵ)·mean(x)",
        },
        OptionSpec {
            name: "dtype",
            kind: OptionKind::Choice(&["f16", "f32"]),
            default: "f16",
            help: "type the branch's factors are stored in",
        },
        OptionSpec {
            name: "damp",
            kind: OptionKind::Float,
            default: "0.01",
            help: "fraction of the Gram's mean diagonal added before the Cholesky factorization",
        },
        OptionSpec {
            name: "recalibrate",
            kind: OptionKind::Bool,
            default: "false",
            help: "gather input statistics anew on the compressed graph instead of reusing those at hand",
        },
        OptionSpec {
            name: "check",
            kind: OptionKind::Int,
            default: "8",
            help: "calibration windows on which a language model's next-token loss must fall for corrections to stay, all of them or those of the layer roles that lower it (0: keep them unchecked)",
        },
    ],
    create: |o| Ok(Box::new(DistillPass::from_options(o)?)),
};

impl DistillPass {
    pub fn from_options(o: &Options) -> Result<DistillPass, PassError> {
        let bad = |msg: String| PassError::Options {
            pass: "distill".into(),
            msg,
        };
        let rank = o.int("rank")?;
        if rank < 0 {
            return Err(bad(format!("rank must be at least 0, not {rank}")));
        }
        let bias = o.bool("bias");
        if rank == 0 && !bias {
            return Err(bad(
                "with bias=false and rank=0 there is nothing to fit; give rank=8 or bias=true"
                    .into(),
            ));
        }
        let check = o.int("check")?;
        if check < 0 {
            return Err(bad(format!("check must be at least 0, not {check}")));
        }
        let damp = o.float("damp")?;
        if !(0.0..1.0).contains(&damp) {
            return Err(bad(format!("damp must lie in [0, 1), not {damp}")));
        }
        Ok(DistillPass {
            opts: DistillOptions {
                rank: rank as usize,
                bias,
                dtype: if o.str("dtype") == "f32" {
                    DType::F32
                } else {
                    DType::F16
                },
                damp,
                recalibrate: o.bool("recalibrate"),
                check: check as usize,
            },
        })
    }
}

impl Pass for DistillPass {
    fn info(&self) -> &'static PassInfo {
        &DISTILL_INFO
    }

    fn needs_calibration(&self) -> bool {
        true
    }

    fn needs_originals(&self) -> bool {
        true
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<(), PassError> {
        let Some(originals) = cx.originals.take() else {
            return Err(PassError::Calibration(
                "distill compares against the weights as the pipeline found them, and none were kept (run it through the pass manager)".into(),
            ));
        };
        if self.opts.recalibrate {
            cx.stats = None;
        }
        let stats = cx.take_stats(g, "distill")?;
        let progress = cx.progress.clone();
        let windows = match &cx.calib {
            Some(c) if self.opts.check > 0 && is_language_model(g) => {
                spread(&c.windows, self.opts.check)
            }
            _ => Vec::new(),
        };
        let fits = fit_all(g, &originals, &stats, &self.opts, progress.as_ref())?;
        cx.originals = Some(originals);
        let keep = if windows.is_empty() || fits.corrected().next().is_none() {
            None
        } else {
            let (keep, check) = self.choose(g, &fits, &windows, progress.as_ref())?;
            cx.report.push(PassRow::DistillCheck(DistillCheckRow {
                pass: "distill",
                check,
            }));
            Some(keep)
        };
        let Distilled { reports, skipped } = apply(g, &fits, &self.opts, |name| {
            keep.as_ref().is_none_or(|k| k.contains(&group_of(name)))
        })?;
        for r in reports {
            cx.report.push(PassRow::Distill(DistillRow {
                pass: "distill",
                weight: r.weight,
                form: r.form,
                shape: [r.rows, r.cols],
                correction: r.correction,
                out_error_before: r.out_error_before,
                out_error_after: r.out_error_after,
                params_added: r.params_added,
            }));
        }
        for (weight, skipped) in skipped {
            cx.report.push(PassRow::DistillSkipped(DistillSkippedRow {
                pass: "distill",
                weight,
                skipped,
            }));
        }
        // corrected layers change what later layers read
        cx.stats = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::linalg::testing::lcg;

    /// Statistics of `x` (`tokens × cols`) as calibration gathers them.
    fn stats_of(x: &[f32], cols: usize) -> InputStats {
        InputStats::from_rows(x, cols)
    }

    #[test]
    fn bias_correction_is_the_exact_optimum_for_a_constant_mean_input() {
        // every token is the same vector: the error is all mean, and the bias removes it
        let (rows, cols, tokens) = (6, 5, 40);
        let mut seed = 1u64;
        let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
        let approx: Vec<f32> = w.iter().map(|&x| (x * 4.0).round() / 4.0).collect();
        let m: Vec<f32> = (0..cols).map(|_| lcg(&mut seed) + 1.0).collect();
        let x: Vec<f32> = (0..tokens).flat_map(|_| m.iter().copied()).collect();
        let st = stats_of(&x, cols);
        let c = fit(&w, &approx, rows, cols, &st, &DistillOptions::default()).unwrap();
        let b = c.bias.as_ref().expect("a bias");
        for r in 0..rows {
            let want: f64 = (0..cols)
                .map(|j| (w[r * cols + j] - approx[r * cols + j]) as f64 * m[j] as f64)
                .sum();
            assert!((b[r] as f64 - want).abs() < 1e-5, "row {r}");
        }
        assert!(c.before > 0.0);
        assert!(c.after < 1e-6 * c.before, "{} -> {}", c.before, c.after);
    }

    #[test]
    fn corrections_lower_the_output_error_of_a_quantized_layer() {
        let (rows, cols, tokens) = (24, 32, 512);
        let mut seed = 9u64;
        let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
        // inputs with a mean and a few loud channels, as after a norm
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| {
                let j = i % cols;
                0.3 + (j % 3) as f32 * 0.2 + lcg(&mut seed) * if j < 3 { 8.0 } else { 1.0 }
            })
            .collect();
        let st = stats_of(&x, cols);
        let q = llmc_ir::QuantSpec {
            bits: 3,
            group: llmc_ir::Group::Channel,
            scale: DType::F16,
            zero: llmc_ir::Zero::Int,
        };
        let (_, approx) = crate::core::grid::rtn(&w, rows, cols, &q);
        // the error measured on the tokens themselves
        let direct = |wh: &[f32], b: Option<&[f32]>, lr: Option<&[f32]>| -> f64 {
            let mut e = 0f64;
            for t in x.chunks(cols) {
                for r in 0..rows {
                    let mut d = 0f64;
                    for j in 0..cols {
                        let corr = lr.map_or(0.0, |l| l[r * cols + j]);
                        d += (w[r * cols + j] - wh[r * cols + j] - corr) as f64 * t[j] as f64;
                    }
                    d -= b.map_or(0.0, |b| b[r] as f64);
                    e += d * d;
                }
            }
            e
        };
        let e0 = direct(&approx, None, None);
        let bias = fit(&w, &approx, rows, cols, &st, &DistillOptions::default()).unwrap();
        let e1 = direct(&approx, bias.bias.as_deref(), None);
        assert!(
            (bias.before - e0).abs() < 1e-3 * e0,
            "{} vs {e0}",
            bias.before
        );
        assert!(
            (bias.after - e1).abs() < 1e-3 * e0,
            "{} vs {e1}",
            bias.after
        );
        assert!(e1 < 0.9 * e0, "bias: {e0} -> {e1}");
        let o = DistillOptions {
            rank: 4,
            dtype: DType::F32,
            damp: 1e-6,
            ..Default::default()
        };
        let both = fit(&w, &approx, rows, cols, &st, &o).unwrap();
        let (rank, l, r) = both.lowrank.as_ref().expect("a branch");
        let lr = matmul(l, r, rows, *rank, cols);
        // the branch adds B·A to the weight: the residual the direct check subtracts
        let e2 = direct(&approx, both.bias.as_deref(), Some(&lr));
        assert!(e2 < 0.8 * e1, "bias {e1} -> bias+rank4 {e2}");
        assert!(
            (both.after - e2).abs() < 1e-2 * e2,
            "{} vs {e2}",
            both.after
        );
    }

    /// x → rms_norm → linear a [24×16] → silu → linear b [16×24] → y, random weights.
    fn graph() -> Graph {
        let mut seed = 21u64;
        let mut t = |n: usize, k: usize, scale: f32| {
            let v: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed) * scale).collect();
            (
                TensorType::fixed(&[n, k], DType::F32),
                Some(WeightData::from_tensor(&Tensor::f32(vec![n, k], v), "t")),
            )
        };
        let mut g = Graph::new("d");
        let x = g.add_input("x", TensorType::fixed(&[64, 16], DType::F32));
        let gamma: Vec<f32> = (0..16).map(|j| 0.5 + j as f32 * 0.1).collect();
        let gm = g
            .add_weight(
                "gamma",
                TensorType::fixed(&[16], DType::F32),
                Some(WeightData::from_tensor(&Tensor::f32(vec![16], gamma), "t")),
            )
            .unwrap();
        let (ta, da) = t(24, 16, 1.0);
        let (tb, db) = t(16, 24, 0.5);
        let wa = g.add_weight("a", ta, da).unwrap();
        let wb = g.add_weight("b", tb, db).unwrap();
        let lin = Op::Linear {
            act: ActQuant::None,
        };
        let n = g
            .add1(
                Op::RmsNorm {
                    axis: -1,
                    eps: 1e-5,
                },
                &[x, gm],
            )
            .unwrap();
        let a = g.add1(lin.clone(), &[n, wa]).unwrap();
        let s = g.add1(Op::Unary(llmc_ir::UnaryOp::Silu), &[a]).unwrap();
        let y = g.add1(lin, &[s, wb]).unwrap();
        g.set_output("y", y);
        g
    }

    #[test]
    fn distilled_pipelines_move_the_graph_toward_the_uncompressed_one() {
        use crate::core::{manager::PassManager, pass::PassContext};
        let mut seed = 5u64;
        // inputs with a per-channel offset, so that means matter
        let windows: Vec<Vec<(String, Tensor)>> = (0..4)
            .map(|_| {
                let v: Vec<f32> = (0..64 * 16)
                    .map(|i| 0.4 * ((i % 16) as f32 - 6.0) + lcg(&mut seed))
                    .collect();
                vec![("x".to_string(), Tensor::f32(vec![64, 16], v))]
            })
            .collect();
        let run = |g: &Graph| -> Vec<f32> {
            let mut s = llmc_ir::Session::new(g).unwrap();
            windows
                .iter()
                .flat_map(|w| {
                    let feed: Vec<(&str, Tensor)> =
                        w.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
                    s.reset();
                    s.run(&feed).unwrap()[0].1.to_f32_vec()
                })
                .collect()
        };
        let reference = run(&graph());
        let error = |p: &str| -> (f64, Vec<PassRow>) {
            let mut g = graph();
            let mut cx = PassContext {
                calib: Some(crate::calib::Calibration {
                    windows: windows.clone(),
                    label: "test".into(),
                }),
                ..Default::default()
            };
            let mut pm = PassManager::new(crate::registry::pipeline(p).unwrap());
            pm.run(&mut g, &mut cx, |_, _| {}).unwrap();
            let out = run(&g);
            let e = out
                .iter()
                .zip(&reference)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>();
            (e, cx.report)
        };
        for (plain, extra) in [
            ("quantize{bits=3,group=8}", "distill"),
            ("quantize{bits=3,group=8}", "distill{rank=2}"),
            (
                "smooth,quantize{bits=3,group=8,act=i8}",
                "distill{rank=2,dtype=f32}",
            ),
            ("palettize{bits=2}", "distill{rank=2}"),
            ("palettize{bits=3,group=rows:8}", "distill"),
            ("lowrank{rank=4,head=true}", "distill{rank=2}"),
            (
                "caldera{bits=2,group=8,rank=2,iters=1,head=true}",
                "distill{rank=2}",
            ),
        ] {
            let (e0, _) = error(plain);
            let (e1, rows) = error(&format!("{plain},{extra}"));
            let corrected: Vec<&DistillRow> = rows
                .iter()
                .filter_map(|r| match r {
                    PassRow::Distill(d) => Some(d),
                    _ => None,
                })
                .collect();
            assert_eq!(corrected.len(), 2, "{plain},{extra}: {corrected:?}");
            for r in &corrected {
                assert!(
                    r.out_error_after <= r.out_error_before,
                    "{plain},{extra}: {r:?}"
                );
            }
            assert!(e1 < 0.9 * e0, "{plain} -> {extra}: {e0} -> {e1}");
        }
    }

    #[test]
    fn an_unchanged_layer_gets_no_correction() {
        let (rows, cols) = (4, 8);
        let mut seed = 2u64;
        let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
        let x: Vec<f32> = (0..64 * cols).map(|_| lcg(&mut seed) + 0.5).collect();
        let st = stats_of(&x, cols);
        let o = DistillOptions {
            rank: 2,
            ..Default::default()
        };
        let c = fit(&w, &w, rows, cols, &st, &o).unwrap();
        assert_eq!(c.describe(), "none");
        assert_eq!(c.after, c.before);
    }
}
