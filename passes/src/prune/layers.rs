//! Whole-layer removal in the manner of ShortGPT: each decoder layer is scored by its Block
//! Influence on calibration, `BI_i = 1 − mean_t cos(h_i, h_{i+1})` with `h_i` the residual
//! stream entering layer `i`, and the `count` layers that change the stream least are cut out:
//! the stream is rewired past them and their nodes, weights and KV-cache states go.
//!
//! With `compensate`, each run of removed layers is stood in for, and kept only if the
//! next-token loss on calibration falls: by its mean change of the stream (on the bias of the
//! projection that writes the stream before it), or with `rank` by a [`Bridge`], an affine map
//! of the stream fitted in closed form to what the run added.
//!
//! Layers are found from the residual stream of a pre-norm decoder: a chain of additions
//! `r_{k+1} = r_k + branch(norm(r_k))`; a layer begins at the addition whose branch holds an
//! attention.

use crate::calib::Calibration;
use crate::core::linalg::LinalgError;
use crate::core::pass::{OptionKind, OptionSpec, Options, Pass, PassContext, PassInfo};
use crate::core::report::{LayersRow, PassRow};
use crate::PassError;
use llmc_ir::{BinaryOp, Graph, Op, Session, Tensor, ValueId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The residual stream of a decoder and its layers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stream {
    /// The stream's values `r_0 … r_K`, in order.
    pub values: Vec<ValueId>,
    /// `adds[k]` is the addition node making `r_{k+1}` from `r_k`.
    pub adds: Vec<usize>,
    /// Where each layer's input lies in `values`: layer `i` maps `values[starts[i]]` to
    /// `values[starts[i + 1]]` (the last layer ends at `r_K`).
    pub starts: Vec<usize>,
}

impl Stream {
    /// The stream value entering layer `i`; `i == layers()` is the value after the last one.
    pub fn entering(&self, i: usize) -> ValueId {
        match self.starts.get(i) {
            Some(&k) => self.values[k],
            None => *self.values.last().expect("a stream has values"),
        }
    }

    pub fn layers(&self) -> usize {
        self.starts.len()
    }
}

fn bad(g: &Graph, msg: impl Into<String>) -> PassError {
    PassError::Pattern {
        pattern: "drop-layers",
        at: format!("graph @{}", g.name),
        msg: msg.into(),
    }
}

/// Finds the residual stream of a pre-norm decoder: additions `r + b` where `r` is also read by
/// a normalization; they must form one chain, and each layer must hold one attention.
pub fn residual_stream(g: &Graph) -> Result<Stream, PassError> {
    let producers = g.producers();
    let users = g.users();
    let normed = |v: ValueId| {
        users[v.0 as usize].iter().any(|&u| {
            matches!(g.nodes[u].op, Op::RmsNorm { .. } | Op::LayerNorm { .. })
                && g.nodes[u].inputs[0] == v
        })
    };
    // residual additions by the stream value they read
    let mut next: BTreeMap<ValueId, usize> = BTreeMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        if n.op != Op::Binary(BinaryOp::Add) || n.inputs.len() != 2 {
            continue;
        }
        let skip: Vec<ValueId> = n.inputs.iter().copied().filter(|&v| normed(v)).collect();
        if skip.len() == 1
            && g.ty(skip[0]) == g.ty(n.outputs[0])
            && next.insert(skip[0], i).is_some()
        {
            return Err(bad(
                g,
                format!(
                    "the stream value %{} is read by two residual additions",
                    skip[0].0
                ),
            ));
        }
    }
    let made: BTreeSet<ValueId> = next.values().map(|&i| g.nodes[i].outputs[0]).collect();
    let heads: Vec<ValueId> = next.keys().copied().filter(|v| !made.contains(v)).collect();
    let [r0] = heads[..] else {
        return Err(bad(
            g,
            format!(
                "drop-layers needs one pre-norm residual stream (r + f(norm(r)) chains); found {}",
                heads.len()
            ),
        ));
    };
    let mut values = vec![r0];
    let mut adds = Vec::new();
    while let Some(&a) = next.get(values.last().expect("not empty")) {
        adds.push(a);
        values.push(g.nodes[a].outputs[0]);
    }
    if adds.len() != next.len() {
        return Err(bad(g, "the residual additions do not form one chain"));
    }
    // the sub-block ending at adds[k] spans the nodes after the previous addition
    let attention: Vec<usize> = g
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n.op, Op::Attention { .. }))
        .map(|(i, _)| i)
        .collect();
    let first = producers[r0.0 as usize].map_or(0, |p| p + 1);
    let mut starts = Vec::new();
    for (k, &a) in adds.iter().enumerate() {
        let from = if k == 0 { first } else { adds[k - 1] + 1 };
        let holds = attention
            .iter()
            .filter(|&&t| (from..a).contains(&t))
            .count();
        if holds > 1 {
            return Err(bad(
                g,
                format!("one residual branch holds {holds} attentions"),
            ));
        }
        if holds == 1 {
            starts.push(k);
        }
    }
    if starts.first() != Some(&0) || starts.len() != attention.len() {
        return Err(bad(
            g,
            format!(
                "the stream's branches hold {} of the graph's {} attentions, and a layer must begin the stream",
                starts.len(),
                attention.len()
            ),
        ));
    }
    Ok(Stream {
        values,
        adds,
        starts,
    })
}

/// What calibration says of every layer.
#[derive(Clone, Debug)]
pub struct Influence {
    /// Block Influence: `1 − mean cos(h_i, h_{i+1})` over every calibration token.
    pub scores: Vec<f64>,
    /// The mean over calibration tokens, each window's first left out, of what the layer adds
    /// to the stream, `h_{i+1} − h_i`.
    pub mean_change: Vec<Vec<f64>>,
}

/// The width of the residual stream.
fn stream_width(g: &Graph, s: &Stream) -> Result<usize, PassError> {
    g.ty(s.entering(0))
        .shape
        .0
        .last()
        .and_then(|d| d.fixed())
        .map(|d| d as usize)
        .filter(|&d| d > 0)
        .ok_or_else(|| PassError::Calibration("the residual stream's width is not fixed".into()))
}

/// Runs every calibration window through the interpreter from an empty state, as far as the
/// last of the stream `boundaries` (`i`: the stream entering layer `i`, `layers()` the one
/// after the last), and hands `seen` each window's values at them, in their order.
fn observe_stream(
    g: &Graph,
    s: &Stream,
    calib: &Calibration,
    boundaries: &[usize],
    mut seen: impl FnMut(usize, &[Arc<Tensor>]) -> Result<(), PassError>,
) -> Result<(), PassError> {
    let err = |m: String| PassError::Calibration(m);
    if calib.windows.is_empty() {
        return Err(err("no calibration windows".into()));
    }
    // where each boundary value is seen: as an argument of a node that reads it
    let users = g.users();
    let mut watch: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
    for (k, &i) in boundaries.iter().enumerate() {
        let v = s.entering(i);
        let u = *users[v.0 as usize]
            .iter()
            .min()
            .ok_or_else(|| err(format!("nothing reads the stream after layer {i}")))?;
        let pos = g.nodes[u]
            .inputs
            .iter()
            .position(|&x| x == v)
            .expect("a user reads it");
        watch.entry(u).or_default().push((pos, k));
    }
    let last = *watch
        .keys()
        .last()
        .ok_or_else(|| err("no boundary to watch".into()))?;
    let mut session = Session::new(g).map_err(|e| err(e.to_string()))?;
    for (w, feed) in calib.windows.iter().enumerate() {
        session.reset();
        let inputs: Vec<(&str, Tensor)> =
            feed.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        let mut at: Vec<Option<Arc<Tensor>>> = vec![None; boundaries.len()];
        session
            .run_observed(&inputs, &mut |i, args: &[Arc<Tensor>]| {
                if let Some(list) = watch.get(&i) {
                    for &(pos, k) in list {
                        at[k] = Some(args[pos].clone());
                    }
                }
                i < last
            })
            .map_err(|e| err(format!("window {w}: {e}")))?;
        let at: Vec<Arc<Tensor>> = at
            .into_iter()
            .zip(boundaries)
            .map(|(t, i)| {
                t.ok_or_else(|| {
                    err(format!(
                        "window {w}: the stream entering layer {i} was not seen"
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        seen(w, &at)?;
    }
    Ok(())
}

/// Block Influence of every layer, and its mean change of the stream.
pub fn block_influence(
    g: &Graph,
    s: &Stream,
    calib: &Calibration,
    mut progress: impl FnMut(usize),
) -> Result<Influence, PassError> {
    let err = |m: String| PassError::Calibration(m);
    let layers = s.layers();
    let dim = stream_width(g, s)?;
    let mut sums = vec![0f64; layers];
    let mut tokens = vec![0usize; layers];
    let mut change = vec![vec![0f64; dim]; layers];
    let mut changed = vec![0usize; layers];
    let all: Vec<usize> = (0..=layers).collect();
    observe_stream(g, s, calib, &all, |w, seen| {
        for i in 0..layers {
            let (a, b) = (&seen[i], &seen[i + 1]);
            if a.numel() != b.numel() || a.numel() % dim != 0 {
                return Err(err(format!(
                    "window {w}: layer {i} changes the stream's shape"
                )));
            }
            let (c, n) = cosine_rows(a, b, dim);
            sums[i] += c;
            tokens[i] += n;
            // the mean change leaves out a window's first token, where the attention sink's
            // massive activations would outweigh every other position
            let (x, y) = (a.to_f32_vec(), b.to_f32_vec());
            let skip = usize::from(x.len() > dim);
            for (xr, yr) in x.chunks(dim).zip(y.chunks(dim)).skip(skip) {
                for ((m, &p), &q) in change[i].iter_mut().zip(xr).zip(yr) {
                    *m += (q - p) as f64;
                }
            }
            changed[i] += x.len() / dim - skip;
        }
        progress(w + 1);
        Ok(())
    })?;
    for (m, &n) in change.iter_mut().zip(&changed) {
        m.iter_mut().for_each(|v| *v /= n.max(1) as f64);
    }
    Ok(Influence {
        scores: sums
            .iter()
            .zip(&tokens)
            .map(|(&c, &n)| 1.0 - c / n.max(1) as f64)
            .collect(),
        mean_change: change,
    })
}

/// A run of removed layers `first..=last` bridged by an affine map fitted on calibration: the
/// stream after the run ≈ `x + (x Rᵀ) Lᵀ + c`, `x` the stream entering it.
#[derive(Clone, Debug)]
pub struct Bridge {
    pub first: usize,
    pub last: usize,
    pub rank: usize,
    /// `dim × rank`.
    pub l: Vec<f32>,
    /// `rank × dim`.
    pub r: Vec<f32>,
    pub c: Vec<f32>,
    /// `Σ_t ‖Δ_t‖²` over calibration (`Δ` what the run adds), and what is left of it after the
    /// map.
    pub before: f64,
    pub after: f64,
}

/// The runs of consecutive layers in `drop` (sorted), as `(first, last)`.
pub fn runs(drop: &[usize]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for &l in drop {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == l => *last = l,
            _ => out.push((l, l)),
        }
    }
    out
}

/// `acc += aᵀ b` for row-major `a` (`rows × p`) and `b` (`rows × q`), summed in f64.
fn add_cross(acc: &mut [f64], a: &[f32], b: &[f32], p: usize, q: usize) {
    let rows = a.len() / p;
    let mut m = vec![0f32; p * q];
    // SAFETY: a holds rows × p values, b rows × q and m p × q, matching shapes and strides.
    let (at, bm, dst) = unsafe {
        (
            faer::MatRef::<f32>::from_raw_parts(a.as_ptr(), p, rows, 1, p as isize),
            faer::MatRef::<f32>::from_raw_parts(b.as_ptr(), rows, q, q as isize, 1),
            faer::MatMut::<f32>::from_raw_parts_mut(m.as_mut_ptr(), p, q, q as isize, 1),
        )
    };
    faer::linalg::matmul::matmul(
        dst,
        faer::Accum::Replace,
        at,
        bm,
        1.0f32,
        faer::Par::rayon(0),
    );
    acc.iter_mut().zip(&m).for_each(|(a, &v)| *a += v as f64);
}

/// What a run of layers adds to the stream, `Δ`, beside the stream entering it, `x`, summed
/// over tokens: `Σ xxᵀ`, `Σ Δxᵀ`, `Σ x`, `Σ Δ`, `Σ ‖Δ‖²`.
struct RunStats {
    dim: usize,
    xx: Vec<f64>,
    dx: Vec<f64>,
    xs: Vec<f64>,
    ds: Vec<f64>,
    dd: f64,
    tokens: usize,
}

impl RunStats {
    fn new(dim: usize) -> RunStats {
        RunStats {
            dim,
            xx: vec![0.0; dim * dim],
            dx: vec![0.0; dim * dim],
            xs: vec![0.0; dim],
            ds: vec![0.0; dim],
            dd: 0.0,
            tokens: 0,
        }
    }

    /// Adds tokens: `x` and `d` hold rows of `dim`.
    fn add(&mut self, x: &[f32], d: &[f32]) {
        let dim = self.dim;
        add_cross(&mut self.xx, x, x, dim, dim);
        add_cross(&mut self.dx, d, x, dim, dim);
        for (row, drow) in x.chunks(dim).zip(d.chunks(dim)) {
            self.xs
                .iter_mut()
                .zip(row)
                .for_each(|(a, &v)| *a += v as f64);
            self.ds
                .iter_mut()
                .zip(drow)
                .for_each(|(a, &v)| *a += v as f64);
            self.dd += drow.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
        }
        self.tokens += x.len() / dim;
    }

    /// The rank-`rank` affine map `Δ ≈ (x Rᵀ) Lᵀ + c` of least squared error: ridge regression
    /// (`damp` of each channel's variance) on the centred statistics, truncated to `rank` in
    /// the norm of the inputs' covariance (reduced-rank regression: the whitened SVD of the
    /// full solution): the bridge of layers `first..=last`.
    fn fit(
        &self,
        first: usize,
        last: usize,
        rank: usize,
        damp: f64,
    ) -> Result<Bridge, LinalgError> {
        let dim = self.dim;
        let t = self.tokens.max(1) as f64;
        let mx: Vec<f64> = self.xs.iter().map(|v| v / t).collect();
        let md: Vec<f64> = self.ds.iter().map(|v| v / t).collect();
        // centred: Σ = Σ xxᵀ − t μx μxᵀ, C = Σ Δxᵀ − t μΔ μxᵀ
        let cov: Vec<f64> = (0..dim * dim)
            .map(|k| self.xx[k] - t * mx[k / dim] * mx[k % dim])
            .collect();
        let cross =
            faer::Mat::<f64>::from_fn(dim, dim, |i, j| self.dx[i * dim + j] - t * md[i] * mx[j]);
        // W = C (Σ + λ)⁻¹, λ in proportion to each channel's own variance
        let ridged = faer::Mat::<f64>::from_fn(dim, dim, |i, j| {
            let v = cov[i * dim + j];
            if i == j {
                v + damp * v.max(0.0) + 1e-12
            } else {
                v
            }
        });
        let llt = ridged
            .llt(faer::Side::Lower)
            .map_err(|e| LinalgError::cholesky("the stream's covariance", damp, e))?;
        use faer::linalg::solvers::Solve;
        let w = llt.solve(cross.transpose()).transpose().to_owned();
        let wv: Vec<f32> = (0..dim * dim)
            .map(|k| w[(k / dim, k % dim)] as f32)
            .collect();
        let f = crate::core::linalg::factor(
            &wv,
            dim,
            dim,
            crate::core::linalg::RankRule::Rank(rank),
            Some(&cov),
            damp,
        )?;
        let m = f.product(dim, dim);
        let c: Vec<f32> = (0..dim)
            .map(|i| {
                let row = &m[i * dim..(i + 1) * dim];
                (md[i] - row.iter().zip(&mx).map(|(&a, b)| a as f64 * b).sum::<f64>()) as f32
            })
            .collect();
        // what is left: Σ‖Δ − M x − c‖² = tr Σ_ΔΔ − 2 tr(M Cᵀ) + tr(M Σ Mᵀ), centred
        let centred = self.dd - t * md.iter().map(|v| v * v).sum::<f64>();
        let mut mc = 0.0;
        let mut msm = 0.0;
        for i in 0..dim {
            let row = &m[i * dim..(i + 1) * dim];
            for j in 0..dim {
                mc += row[j] as f64 * cross[(i, j)];
            }
            for (j, cj) in cov.chunks(dim).enumerate() {
                let sj: f64 = row.iter().zip(cj).map(|(&a, b)| a as f64 * b).sum();
                msm += sj * row[j] as f64;
            }
        }
        Ok(Bridge {
            first,
            last,
            rank: f.rank,
            l: f.l,
            r: f.r,
            c,
            before: self.dd,
            after: (centred - 2.0 * mc + msm).max(0.0),
        })
    }
}

/// Fits a rank-`rank` affine [`Bridge`] to each run of `drop` on calibration (each window's
/// first token left out): [`RunStats::fit`] of what the run adds on the stream entering it.
pub fn fit_bridges(
    g: &Graph,
    s: &Stream,
    calib: &Calibration,
    drop: &[usize],
    rank: usize,
    damp: f64,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Bridge>, PassError> {
    let err = |m: String| PassError::Calibration(m);
    let dim = stream_width(g, s)?;
    let runs = runs(drop);
    let mut boundaries: Vec<usize> = runs.iter().flat_map(|&(a, b)| [a, b + 1]).collect();
    boundaries.sort_unstable();
    boundaries.dedup();
    let slot = |i: usize| boundaries.binary_search(&i).expect("a watched boundary");
    let mut stats: Vec<RunStats> = runs.iter().map(|_| RunStats::new(dim)).collect();
    observe_stream(g, s, calib, &boundaries, |w, seen| {
        for (st, &(a, b)) in stats.iter_mut().zip(&runs) {
            let (x, y) = (seen[slot(a)].to_f32_vec(), seen[slot(b + 1)].to_f32_vec());
            if x.len() != y.len() || x.len() % dim != 0 {
                return Err(err(format!(
                    "window {w}: layers {a}..={b} change the stream's shape"
                )));
            }
            let skip = usize::from(x.len() > dim) * dim;
            let (x, y) = (&x[skip..], &y[skip..]);
            let d: Vec<f32> = y.iter().zip(x).map(|(q, p)| q - p).collect();
            st.add(x, &d);
        }
        progress(w + 1);
        Ok(())
    })?;
    runs.iter()
        .zip(&stats)
        .map(|(&(first, last), st)| {
            st.fit(first, last, rank, damp)
                .map_err(|source| PassError::Bridge {
                    first,
                    last,
                    source,
                })
        })
        .collect()
}

/// Puts `b` into `g`, a graph whose layers `b.first..=b.last` are gone and where `x` is the
/// stream that entered them: every reader of `x` reads `x + (x Rᵀ) Lᵀ + c` instead.
fn insert_bridge(g: &mut Graph, x: ValueId, b: &Bridge, dim: usize) -> Result<(), PassError> {
    use llmc_ir::{ActQuant, DType, TensorType, WeightData};
    let note = format!("drop-layers bridge over layers {}..={}", b.first, b.last);
    let mut weight = |name: String, shape: &[usize], v: &[f32]| {
        g.add_weight(
            &name,
            TensorType::fixed(shape, DType::F32),
            Some(WeightData::from_tensor(
                &Tensor::f32(shape.to_vec(), v.to_vec()),
                note.clone(),
            )),
        )
        .map_err(|e| bad_weight(&name, e.to_string()))
    };
    let stem = format!("blk.{}.bridge", b.first);
    let rv = weight(format!("{stem}_down.weight"), &[b.rank, dim], &b.r)?;
    let lv = weight(format!("{stem}_up.weight"), &[dim, b.rank], &b.l)?;
    let cv = weight(format!("{stem}_up.bias"), &[dim], &b.c)?;
    let lin = Op::Linear {
        act: ActQuant::None,
    };
    let fail = |e: llmc_ir::IrError| bad_weight(&stem, e.to_string());
    let t = g.add1(lin.clone(), &[x, rv]).map_err(fail)?;
    let reads_t = g.nodes.len() - 1;
    let u = g.add1(lin, &[t, lv, cv]).map_err(fail)?;
    let sum = g.add1(Op::Binary(BinaryOp::Add), &[x, u]).map_err(fail)?;
    let adds = g.nodes.len() - 1;
    g.replace_uses(x, sum);
    g.nodes[reads_t].inputs[0] = x;
    g.nodes[adds].inputs[0] = x;
    g.sort().map_err(fail)
}

fn bad_weight(name: &str, msg: String) -> PassError {
    PassError::Pattern {
        pattern: "drop-layers",
        at: name.to_string(),
        msg,
    }
}

/// The weight of the linear layer whose output the stream addition `add` adds, if it is one.
fn writer_of(g: &Graph, add: usize, stream: ValueId) -> Option<usize> {
    let producers = g.producers();
    let delta = *g.nodes[add].inputs.iter().find(|&&v| v != stream)?;
    let n = &g.nodes[producers[delta.0 as usize]?];
    if !matches!(n.op, Op::Linear { .. }) {
        return None;
    }
    match g.def(n.inputs[1]) {
        llmc_ir::ValueDef::Weight(w) => Some(w as usize),
        _ => None,
    }
}

/// Sum over rows of `d` values of the cosine between `a` and `b`, and the row count.
fn cosine_rows(a: &Tensor, b: &Tensor, d: usize) -> (f64, usize) {
    let (a, b) = (a.to_f32_vec(), b.to_f32_vec());
    let mut sum = 0.0;
    let mut n = 0;
    for (x, y) in a.chunks_exact(d).zip(b.chunks_exact(d)) {
        sum += cosine(x, y);
        n += 1;
    }
    (sum, n)
}

/// Cosine similarity of two vectors (1 when either is zero: nothing changed direction).
pub fn cosine(x: &[f32], y: &[f32]) -> f64 {
    let (mut xy, mut xx, mut yy) = (0f64, 0f64, 0f64);
    for (&p, &q) in x.iter().zip(y) {
        xy += p as f64 * q as f64;
        xx += p as f64 * p as f64;
        yy += q as f64 * q as f64;
    }
    let den = (xx * yy).sqrt();
    if den > 0.0 {
        xy / den
    } else {
        1.0
    }
}

/// The `count` layers with the lowest scores (the earlier on ties), sorted.
pub fn lowest_layers(scores: &[f64], count: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    let mut out: Vec<usize> = idx.into_iter().take(count).collect();
    out.sort_unstable();
    out
}

/// Which nodes the graph's outputs need (cache appends count only when read).
fn live_nodes(g: &Graph) -> Vec<bool> {
    let mut live = vec![false; g.values.len()];
    for (_, v) in &g.outputs {
        live[v.0 as usize] = true;
    }
    let mut keep = vec![false; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate().rev() {
        if n.outputs.iter().any(|o| live[o.0 as usize]) {
            keep[i] = true;
            for v in &n.inputs {
                live[v.0 as usize] = true;
            }
        }
    }
    keep
}

/// Cuts layers `drop` (sorted) out of `g`: the stream after each runs on from the stream before
/// the first of a run of dropped layers; their nodes, cache appends, states and weights go.
pub fn remove_layers(g: &mut Graph, s: &Stream, drop: &[usize]) -> Result<(), PassError> {
    let dropped: BTreeSet<usize> = drop.iter().copied().collect();
    let before = live_nodes(g);
    for &i in drop {
        let mut j = i;
        while j > 0 && dropped.contains(&(j - 1)) {
            j -= 1;
        }
        // r_{i+1} == r_j: the layers j..=i add nothing
        g.replace_uses(s.entering(i + 1), s.entering(j));
    }
    let after = live_nodes(g);
    let mut k = 0;
    g.nodes.retain(|n| {
        k += 1;
        let i = k - 1;
        !(matches!(n.op, Op::CacheConcat { .. }) && before[i] && !after[i])
    });
    g.remove_dead();
    // states nothing appends to any more go, and the others are numbered anew
    let mut used = vec![false; g.states.len()];
    for n in &g.nodes {
        if let Op::CacheConcat { state, .. } = n.op {
            used[state as usize] = true;
        }
    }
    let mut map = vec![0u32; g.states.len()];
    let mut next = 0u32;
    for (i, &u) in used.iter().enumerate() {
        map[i] = next;
        next += u as u32;
    }
    let mut i = 0;
    g.states.retain(|_| {
        i += 1;
        used[i - 1]
    });
    for n in &mut g.nodes {
        if let Op::CacheConcat { state, .. } = &mut n.op {
            *state = map[*state as usize];
        }
    }
    crate::core::rewrite::compact(g, &[]);
    Ok(())
}

/// The `drop-layers` pass.
pub struct DropLayersPass {
    pub count: usize,
    /// Compensate each run of removed layers, kept only if the next-token loss falls: with
    /// `rank` 0 its mean change of the stream joins the bias of the projection that writes the
    /// stream last before it; else a rank-`rank` affine [`Bridge`] takes its place.
    pub compensate: bool,
    pub rank: usize,
}

/// Ridge of the bridges' regression, in proportion to each channel's variance.
const BRIDGE_DAMP: f64 = 0.01;

pub static DROP_LAYERS_INFO: PassInfo = PassInfo {
    name: "drop-layers",
    summary: "remove the decoder layers that change the residual stream least on calibration (ShortGPT Block Influence)",
    options: &[
        OptionSpec {
            name: "count",
            kind: OptionKind::Int,
            default: "4",
            help: "how many layers are removed",
        },
        OptionSpec {
            name: "compensate",
            kind: OptionKind::Bool,
            default: "false",
            help: "compensate each run of removed layers, kept if the next-token loss on 8 calibration windows falls (--distill asks for it): its mean change of the stream on the bias of the projection writing the stream before it, or with rank a fitted map",
        },
        OptionSpec {
            name: "rank",
            kind: OptionKind::Int,
            default: "0",
            help: "with compensate, a rank-R affine map x + (x R) L + c fitted on calibration (ridge regression of what the run adds on the stream entering it) bridges each run of removed layers; 0: the mean change alone",
        },
    ],
    create: |o| Ok(Box::new(DropLayersPass::from_options(o)?)),
};

impl DropLayersPass {
    pub fn from_options(o: &Options) -> Result<DropLayersPass, PassError> {
        let count = o.int("count")?;
        if count < 1 {
            return Err(PassError::Options {
                pass: "drop-layers".into(),
                msg: format!("count must be at least 1, not {count}"),
            });
        }
        let rank = o.int("rank")?;
        if rank < 0 {
            return Err(PassError::Options {
                pass: "drop-layers".into(),
                msg: format!("rank must be at least 0, not {rank}"),
            });
        }
        Ok(DropLayersPass {
            count: count as usize,
            compensate: o.bool("compensate"),
            rank: rank as usize,
        })
    }
}

impl Pass for DropLayersPass {
    fn info(&self) -> &'static PassInfo {
        &DROP_LAYERS_INFO
    }

    fn needs_calibration(&self) -> bool {
        true
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<(), PassError> {
        let s = residual_stream(g)?;
        if self.count >= s.layers() {
            return Err(bad(
                g,
                format!(
                    "count={} would remove every one of the model's {} layers",
                    self.count,
                    s.layers()
                ),
            ));
        }
        let calib = cx.calib.as_ref().ok_or_else(|| {
            PassError::Calibration(
                "drop-layers needs calibration data (llmc build --calib FILES, or the default text that scripts/setup.sh fetches)".into(),
            )
        })?;
        let t0 = std::time::Instant::now();
        let total = calib.windows.len() as u64;
        let progress = cx.progress.clone();
        let influence = block_influence(g, &s, calib, |w| {
            if let Some(p) = &progress {
                p("block influence", w as u64, total)
            }
        })?;
        let bi = &influence.scores;
        cx.calib_seconds += t0.elapsed().as_secs_f64();
        let drop = lowest_layers(bi, self.count);
        let mut bridges = Vec::new();
        if self.compensate && self.rank > 0 {
            let t1 = std::time::Instant::now();
            bridges = fit_bridges(g, &s, calib, &drop, self.rank, BRIDGE_DAMP, |w| {
                if let Some(p) = &progress {
                    p("fitting the bridges", w as u64, total)
                }
            })?;
            cx.calib_seconds += t1.elapsed().as_secs_f64();
        }
        // each removed layer's mean change, by the projection that writes the stream last
        // before it (a layer with none before it gets no compensation), in the layers' order
        let mut writes: Vec<(String, Vec<f64>)> = Vec::new();
        if self.compensate && self.rank == 0 {
            for &l in &drop {
                let Some(k) = (0..l).rev().find(|k| !drop.contains(k)) else {
                    continue;
                };
                let at = s.starts.get(k + 1).copied().unwrap_or(s.values.len() - 1);
                let Some(w) = writer_of(g, s.adds[at - 1], s.values[at - 1]) else {
                    continue;
                };
                let name = &g.weights[w].name;
                let slot = match writes.iter().position(|(n, _)| n == name) {
                    Some(i) => i,
                    None => {
                        writes.push((name.clone(), vec![0.0; influence.mean_change[l].len()]));
                        writes.len() - 1
                    }
                };
                writes[slot]
                    .1
                    .iter_mut()
                    .zip(&influence.mean_change[l])
                    .for_each(|(a, &m)| *a += m);
            }
        }
        let weights_before: u64 = crate::core::edit::all_weight_bytes(g);
        remove_layers(g, &s, &drop)?;
        let weights_after: u64 = crate::core::edit::all_weight_bytes(g);
        // one edit per run or writer, so each removed layer's compensation stays or goes alone
        let mut edits = Vec::new();
        if !bridges.is_empty() {
            // the stream entering each run, in the graph without the removed layers: edits add
            // values and reorder nodes, but keep these
            let left = residual_stream(g)?;
            let dim = stream_width(g, &left)?;
            for b in bridges {
                let x = left.entering(b.first - drop.iter().filter(|&&l| l < b.first).count());
                let what = format!(
                    "a rank-{} map over layer{} {} (calibration error {:.3} of what they add)",
                    b.rank,
                    if b.first == b.last { "" } else { "s" },
                    if b.first == b.last {
                        b.first.to_string()
                    } else {
                        format!("{}-{}", b.first, b.last)
                    },
                    (b.after / b.before.max(f64::MIN_POSITIVE)).sqrt()
                );
                edits.push(super::compensate::Edit {
                    what,
                    apply: Box::new(move |h: &mut Graph| {
                        insert_bridge(h, x, &b, dim)?;
                        Ok(true)
                    }),
                });
            }
        }
        let note = format!("drop-layers {}", self.count);
        for (name, b) in writes {
            let b: Vec<f32> = b.iter().map(|&v| v as f32).collect();
            let note = note.clone();
            edits.push(super::compensate::Edit {
                what: format!("the mean change of the stream on {name}'s bias"),
                apply: Box::new(move |h: &mut Graph| {
                    let Some(node) = h.nodes.iter().position(|n| {
                        matches!(n.op, Op::Linear { .. })
                            && matches!(h.def(n.inputs[1]), llmc_ir::ValueDef::Weight(w) if h.weights[w as usize].name == name)
                    }) else {
                        return Ok(false);
                    };
                    crate::core::edit::add_to_bias(h, node, &format!("{name}.prune_bias"), &b, &note)
                }),
            });
        }
        cx.report.push(PassRow::DropLayers(LayersRow {
            pass: "drop-layers",
            layers_before: s.layers(),
            layers_after: s.layers() - drop.len(),
            removed: drop.clone(),
            block_influence: bi.clone(),
            bytes_before: weights_before,
            bytes_after: weights_after,
            calibration: calib.label.clone(),
        }));
        if !edits.is_empty() {
            super::compensate::compensate(g, cx, edits, "drop-layers")?;
        }
        // statistics name values of the graph before
        cx.stats = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosines_and_the_lowest_layers() {
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!(cosine(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-12);
        assert_eq!(lowest_layers(&[0.3, 0.1, 0.2, 0.1], 2), vec![1, 3]);
        assert_eq!(lowest_layers(&[0.3, 0.1, 0.2, 0.1], 3), vec![1, 2, 3]);
        assert_eq!(runs(&[1, 2, 4, 7, 8, 9]), vec![(1, 2), (4, 4), (7, 9)]);
    }

    /// A change that is a rank-2 affine function of loud and quiet channels, plus noise: the
    /// rank-2 fit recovers it, and the error it reports is the one measured on the tokens.
    #[test]
    fn bridges_recover_an_affine_change() {
        let (dim, tokens) = (12, 600);
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f64 / (1u64 << 31) as f64 - 0.5) as f32
        };
        let x: Vec<f32> = (0..tokens * dim)
            .map(|i| rnd() * if i % dim < 2 { 30.0 } else { 1.0 } + 0.5)
            .collect();
        let (u, v): (Vec<f32>, Vec<f32>) = (
            (0..2 * dim).map(|_| rnd()).collect(),
            (0..2 * dim).map(|_| rnd()).collect(),
        );
        let bias: Vec<f32> = (0..dim).map(|_| rnd()).collect();
        let map = |row: &[f32], i: usize| -> f32 {
            (0..2)
                .map(|k| {
                    u[i * 2 + k]
                        * row
                            .iter()
                            .zip(&v[k * dim..(k + 1) * dim])
                            .map(|(a, b)| a * b)
                            .sum::<f32>()
                })
                .sum::<f32>()
                + bias[i]
        };
        let d: Vec<f32> = x
            .chunks(dim)
            .flat_map(|row| (0..dim).map(|i| map(row, i)).collect::<Vec<_>>())
            .map(|v| v + 0.01 * rnd())
            .collect();
        let mut st = RunStats::new(dim);
        st.add(&x[..300 * dim], &d[..300 * dim]);
        st.add(&x[300 * dim..], &d[300 * dim..]);
        let b = st.fit(0, 0, 2, 1e-9).unwrap();
        let (l, r, c, before, after) = (b.l, b.r, b.c, b.before, b.after);
        assert_eq!(b.rank, 2);
        let mut left = 0f64;
        for (row, drow) in x.chunks(dim).zip(d.chunks(dim)) {
            let t: Vec<f32> = (0..2)
                .map(|k| {
                    r[k * dim..(k + 1) * dim]
                        .iter()
                        .zip(row)
                        .map(|(a, b)| a * b)
                        .sum()
                })
                .collect();
            for i in 0..dim {
                let y = l[i * 2] * t[0] + l[i * 2 + 1] * t[1] + c[i];
                left += ((drow[i] - y) as f64).powi(2);
            }
        }
        let total: f64 = d.iter().map(|&v| (v as f64).powi(2)).sum();
        assert!(
            (before - total).abs() <= 1e-6 * total,
            "{before} vs {total}"
        );
        assert!(
            (after - left).abs() <= 1e-3 * left + 1e-6 * total,
            "{after} vs {left}"
        );
        assert!(left < 1e-3 * total, "{left} of {total}");
    }
}
