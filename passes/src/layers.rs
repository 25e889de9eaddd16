//! Whole-layer removal in the manner of ShortGPT: each decoder layer is scored by its Block
//! Influence on calibration, `BI_i = 1 − mean_t cos(h_i, h_{i+1})` with `h_i` the residual
//! stream entering layer `i`, and the `count` layers that change the stream least are cut out:
//! the stream is rewired past them and their nodes, weights and KV-cache states go.
//!
//! Layers are found from the residual stream of a pre-norm decoder: a chain of additions
//! `r_{k+1} = r_k + branch(norm(r_k))`; a layer begins at the addition whose branch holds an
//! attention.

use crate::calib::Calibration;
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

/// Block Influence of every layer, and its mean change of the stream. The interpreter runs
/// each window from an empty state and stops after the last layer.
pub fn block_influence(
    g: &Graph,
    s: &Stream,
    calib: &Calibration,
    mut progress: impl FnMut(usize),
) -> Result<Influence, PassError> {
    let err = |m: String| PassError::Calibration(m);
    if calib.windows.is_empty() {
        return Err(err("no calibration windows".into()));
    }
    let layers = s.layers();
    let dim = g
        .ty(s.entering(0))
        .shape
        .0
        .last()
        .and_then(|d| d.fixed())
        .ok_or_else(|| err("the residual stream's width is not fixed".into()))?
        as usize;
    // where each boundary value is seen: as an argument of a node that reads it
    let users = g.users();
    let mut watch: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
    for i in 0..=layers {
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
        watch.entry(u).or_default().push((pos, i));
    }
    let last = *watch.keys().last().expect("layers exist");
    let mut sums = vec![0f64; layers];
    let mut tokens = vec![0usize; layers];
    let mut change = vec![vec![0f64; dim]; layers];
    let mut changed = vec![0usize; layers];
    let mut session = Session::new(g).map_err(|e| err(e.to_string()))?;
    for (w, feed) in calib.windows.iter().enumerate() {
        session.reset();
        let inputs: Vec<(&str, Tensor)> =
            feed.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        let mut seen: Vec<Option<Arc<Tensor>>> = vec![None; layers + 1];
        session
            .run_observed(&inputs, &mut |i, args: &[Arc<Tensor>]| {
                if let Some(list) = watch.get(&i) {
                    for &(pos, b) in list {
                        seen[b] = Some(args[pos].clone());
                    }
                }
                i < last
            })
            .map_err(|e| err(format!("window {w}: {e}")))?;
        for i in 0..layers {
            let (Some(a), Some(b)) = (&seen[i], &seen[i + 1]) else {
                return Err(err(format!(
                    "window {w}: the stream around layer {i} was not seen"
                )));
            };
            if a.numel() != b.numel() || a.numel() % dim.max(1) != 0 {
                return Err(err(format!(
                    "window {w}: layer {i} changes the stream's shape"
                )));
            }
            let (c, n) = cosine_rows(a, b, dim.max(1));
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
    }
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
    crate::rewrite::compact(g, &[]);
    let left = s.layers() - dropped.len();
    for (k, v) in g.meta.iter_mut() {
        if k.ends_with(".block_count") {
            *v = left.to_string();
        }
    }
    Ok(())
}

/// The `drop-layers` pass.
pub struct DropLayersPass {
    pub count: usize,
    /// Add each removed layer's mean change of the stream to the bias of the projection that
    /// writes the stream last before it, kept only if the next-token loss falls.
    pub compensate: bool,
}

pub static DROP_LAYERS_INFO: crate::manager::PassInfo = crate::manager::PassInfo {
    name: "drop-layers",
    summary: "remove the decoder layers that change the residual stream least on calibration (ShortGPT Block Influence)",
    options: &[
        crate::manager::OptionSpec {
            name: "count",
            kind: "int",
            default: "4",
            help: "how many layers are removed",
        },
        crate::manager::OptionSpec {
            name: "compensate",
            kind: "bool",
            default: "false",
            help: "add each removed layer's mean change of the stream to the bias of the projection writing the stream before it, kept if the next-token loss on 8 calibration windows falls (--distill asks for it)",
        },
    ],
};

impl DropLayersPass {
    pub fn from_options(o: &crate::manager::Options) -> Result<DropLayersPass, PassError> {
        let count = o.int("count")?;
        if count < 1 {
            return Err(PassError::Options {
                pass: "drop-layers".into(),
                msg: format!("count must be at least 1, not {count}"),
            });
        }
        Ok(DropLayersPass {
            count: count as usize,
            compensate: o.bool("compensate"),
        })
    }
}

impl crate::manager::Pass for DropLayersPass {
    fn info(&self) -> &'static crate::manager::PassInfo {
        &DROP_LAYERS_INFO
    }

    fn needs_calibration(&self) -> bool {
        true
    }

    fn run(
        &mut self,
        g: &mut Graph,
        cx: &mut crate::manager::PassContext,
    ) -> Result<(), PassError> {
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
        // each removed layer's mean change, by the projection that writes the stream last
        // before it (a layer with none before it gets no compensation), in the layers' order
        let mut writes: Vec<(String, Vec<f64>)> = Vec::new();
        if self.compensate {
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
        let weights_before: u64 = (0..g.weights.len())
            .map(|i| crate::heads::weight_bytes(g, i))
            .sum();
        remove_layers(g, &s, &drop)?;
        let weights_after: u64 = (0..g.weights.len())
            .map(|i| crate::heads::weight_bytes(g, i))
            .sum();
        // one group per writer, so each removed layer's compensation stays or goes alone
        let groups: Vec<Vec<crate::structured::Bias>> = writes
            .into_iter()
            .filter_map(|(name, b)| {
                let node = g.nodes.iter().position(|n| {
                    matches!(n.op, Op::Linear { .. })
                        && matches!(g.def(n.inputs[1]), llmc_ir::ValueDef::Weight(w) if g.weights[w as usize].name == name)
                })?;
                Some(vec![(node, format!("{name}.prune_bias"), b.iter().map(|&v| v as f32).collect())])
            })
            .collect();
        cx.report.push(serde_json::json!({
            "pass": "drop-layers",
            "layers_before": s.layers(),
            "layers_after": s.layers() - drop.len(),
            "removed": drop,
            "block_influence": bi,
            "bytes_before": weights_before,
            "bytes_after": weights_after,
            "calibration": calib.label,
        }));
        if !groups.is_empty() {
            let note = format!("drop-layers {}", self.count);
            crate::structured::compensate(g, cx, groups, "drop-layers", &note)?;
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
    }
}
