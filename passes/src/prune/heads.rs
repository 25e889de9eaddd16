//! Structured pruning of attention heads: a fraction of each attention block's heads leave the
//! graph (rows of the q, k and v projections, columns of the output projection), the reshapes
//! that split and join heads and the KV-cache states are rewritten to the new head counts, and
//! every type is inferred anew.
//!
//! Heads are scored on calibration by the energy each writes into the residual stream through
//! the output projection, `Σ_t ‖W_o[:, h] x_{t,h}‖² = tr(W_hᵀ W_h G_hh)`, exact from the Gram
//! matrix `G = XᵀX` of the output projection's input that calibration gathers.
//!
//! Grouped-query attention stays valid: query head `h` reads KV head `h / (H / H_kv)`, so either
//! the same number of query heads leaves every KV group (`unit=query`: the KV cache and the k/v
//! projections stay), or whole KV groups leave with their query heads (`unit=kv`: the KV cache
//! shrinks too). With one query head per KV head (multi-head attention) both are whole heads.

use crate::calib::Stats;
use crate::core::edit::{
    reinfer, replace, rows_cols, set_weight_f32_shaped, weight_bytes, weight_f32, weight_index,
};
use crate::core::pass::{OptionKind, OptionSpec, Options, Pass, PassContext, PassInfo};
use crate::core::report::{HeadsRow, PassRow};
use crate::MatrixError;
use crate::PassError;
use llmc_ir::{Bytes, Dim, Encoding, Format, Graph, Op, Shape, ValueId, WeightData};
use rayon::prelude::*;
use std::ops::Range;

/// A linear projection: its node and the indices of its weight and bias.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proj {
    pub node: usize,
    pub weight: usize,
    pub bias: Option<usize>,
}

/// One attention block: `q, k, v = linear(x)` each split into heads by a reshape (then RoPE,
/// transposes, KV-cache appends), `attention(q, k, v)`, the heads joined by a reshape and read
/// by the output projection `o`. Every value between the projections and the attention is read
/// only on that path, so head counts can change there without touching anything else.
#[derive(Clone, Debug)]
pub struct AttnBlock {
    pub attention: usize,
    pub q: Proj,
    pub k: Proj,
    pub v: Proj,
    pub o: Proj,
    /// The value the output projection reads: its Gram matrix scores the heads.
    pub o_input: ValueId,
    /// The reshapes that split q, k and v into heads, and the one that joins the heads.
    pub q_reshape: usize,
    pub k_reshape: usize,
    pub v_reshape: usize,
    pub out_reshape: usize,
    /// The KV-cache states k and v are appended to, when cached.
    pub k_state: Option<u32>,
    pub v_state: Option<u32>,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Size of one value head (the output projection reads `heads × v_dim`).
    pub v_dim: usize,
}

/// Where one attention operand comes from: its projection, the reshape that splits heads and
/// the cache it passes through.
struct Source {
    linear: usize,
    reshape: usize,
    state: Option<u32>,
}

/// The attention blocks of a graph, in graph order. Blocks of another form (fused QKV, a mask
/// with a head axis, dynamic reshapes) are left out.
pub fn attention_blocks(g: &Graph) -> Vec<AttnBlock> {
    let producers = g.producers();
    let users = g.users();
    let single =
        |v: ValueId| users[v.0 as usize].len() == 1 && !g.outputs.iter().any(|(_, o)| *o == v);
    let fixed = |v: ValueId, axis: usize| -> Option<usize> {
        g.ty(v)
            .shape
            .0
            .get(axis)
            .and_then(|d| d.fixed())
            .map(|d| d as usize)
    };
    // from an operand of the attention back to its projection
    let source = |mut v: ValueId| -> Option<Source> {
        let mut reshape = None;
        let mut state = None;
        loop {
            if !single(v) {
                return None;
            }
            let p = producers[v.0 as usize]?;
            match &g.nodes[p].op {
                Op::Linear { .. } => {
                    return Some(Source {
                        linear: p,
                        reshape: reshape?,
                        state,
                    })
                }
                Op::Reshape { shape: Some(_) } if reshape.is_none() => reshape = Some(p),
                Op::Transpose { .. } | Op::Rope { .. } => {}
                Op::CacheConcat { state: s, .. } if state.is_none() => state = Some(*s),
                _ => return None,
            }
            v = g.nodes[p].inputs[0];
        }
    };
    let proj = |node: usize| -> Option<Proj> {
        let n = &g.nodes[node];
        let weight = weight_index(g, n.inputs[1]).filter(|_| single(n.inputs[1]))?;
        let bias = match n.inputs.get(2) {
            Some(&b) => Some(weight_index(g, b).filter(|_| single(b))?),
            None => None,
        };
        Some(Proj { node, weight, bias })
    };
    // the reshape splitting heads: `[.., heads, dim]` with the heads written out (or -1)
    let splits = |node: usize, heads: usize, dim: usize| -> bool {
        let Op::Reshape { shape: Some(s) } = &g.nodes[node].op else {
            return false;
        };
        let n = s.len();
        n >= 2
            && (s[n - 2] == heads as i64 || s[n - 2] == -1)
            && (s[n - 1] == dim as i64 || s[n - 1] == -1)
            && !(s[n - 2] == -1 && s[n - 1] == -1)
    };
    let mut out = Vec::new();
    for (a, n) in g.nodes.iter().enumerate() {
        if !matches!(n.op, Op::Attention { .. }) || n.inputs.len() < 3 {
            continue;
        }
        let (q, k, v) = (n.inputs[0], n.inputs[1], n.inputs[2]);
        let (Some(heads), Some(kv_heads), Some(head_dim), Some(v_dim)) =
            (fixed(q, 1), fixed(k, 1), fixed(q, 3), fixed(v, 3))
        else {
            continue;
        };
        if kv_heads == 0 || heads % kv_heads != 0 || fixed(v, 1) != Some(kv_heads) {
            continue;
        }
        // a mask must broadcast over the heads
        if let Some(&m) = n.inputs.get(3) {
            let t = g.ty(m);
            if t.rank() == 4 && t.shape.0[1].fixed() != Some(1) {
                continue;
            }
        }
        let (Some(qs), Some(ks), Some(vs)) = (source(q), source(k), source(v)) else {
            continue;
        };
        if !splits(qs.reshape, heads, head_dim)
            || !splits(ks.reshape, kv_heads, head_dim)
            || !splits(vs.reshape, kv_heads, v_dim)
        {
            continue;
        }
        // forward from the attention to the output projection
        let mut x = n.outputs[0];
        let mut out_reshape = None;
        let o_node = loop {
            if !single(x) {
                break None;
            }
            let u = users[x.0 as usize][0];
            let un = &g.nodes[u];
            match &un.op {
                Op::Linear { .. } if un.inputs[0] == x => break Some(u),
                Op::Reshape { shape: Some(s) }
                    if out_reshape.is_none()
                        && matches!(s.last(), Some(&l) if l == (heads * v_dim) as i64 || l == -1) =>
                {
                    out_reshape = Some(u)
                }
                Op::Transpose { .. } => {}
                _ => break None,
            }
            x = un.outputs[0];
        };
        let (Some(o_node), Some(out_reshape)) = (o_node, out_reshape) else {
            continue;
        };
        if fixed(x, g.ty(x).rank().saturating_sub(1)) != Some(heads * v_dim) {
            continue;
        }
        let (Some(qp), Some(kp), Some(vp), Some(op)) = (
            proj(qs.linear),
            proj(ks.linear),
            proj(vs.linear),
            proj(o_node),
        ) else {
            continue;
        };
        let rows = |w: usize| rows_cols(g, w);
        let ok = rows(qp.weight).0 == heads * head_dim
            && rows(kp.weight).0 == kv_heads * head_dim
            && rows(vp.weight).0 == kv_heads * v_dim
            && rows(op.weight).1 == heads * v_dim
            && qp.bias.is_none_or(|b| rows(b).1 == heads * head_dim)
            && kp.bias.is_none_or(|b| rows(b).1 == kv_heads * head_dim)
            && vp.bias.is_none_or(|b| rows(b).1 == kv_heads * v_dim)
            && [qs.state, ks.state, vs.state].iter().flatten().all(|&s| {
                g.states.get(s as usize).is_some_and(|d| {
                    d.ty.rank() == 4 && d.ty.shape.0[1].fixed() == Some(kv_heads as u64)
                })
            })
            && qs.state.is_none();
        if !ok {
            continue;
        }
        out.push(AttnBlock {
            attention: a,
            q: qp,
            k: kp,
            v: vp,
            o: op,
            o_input: x,
            q_reshape: qs.reshape,
            k_reshape: ks.reshape,
            v_reshape: vs.reshape,
            out_reshape,
            k_state: ks.state,
            v_state: vs.state,
            heads,
            kv_heads,
            head_dim,
            v_dim,
        });
    }
    out
}

/// Energy each head writes through the output projection over the calibration tokens:
/// `e_h = Σ_t ‖W[:, h·dv..(h+1)·dv] x_{t,h}‖² = Σ_{a,b} G[h·dv+a, h·dv+b] · (W_hᵀ W_h)[a, b]`,
/// for `w` the `rows × heads·dv` output projection (row-major) and `gram` the `heads·dv` square
/// Gram matrix of its input.
pub fn head_energy(w: &[f32], rows: usize, heads: usize, dv: usize, gram: &[f64]) -> Vec<f64> {
    let cols = heads * dv;
    (0..heads)
        .into_par_iter()
        .map(|h| {
            let c0 = h * dv;
            // W_hᵀ W_h, dv × dv
            let mut m = vec![0f64; dv * dv];
            for r in 0..rows {
                let wr = &w[r * cols + c0..r * cols + c0 + dv];
                for a in 0..dv {
                    let wa = wr[a] as f64;
                    for b in 0..dv {
                        m[a * dv + b] += wa * wr[b] as f64;
                    }
                }
            }
            let mut e = 0.0;
            for a in 0..dv {
                for b in 0..dv {
                    e += gram[(c0 + a) * cols + c0 + b] * m[a * dv + b];
                }
            }
            e
        })
        .collect()
}

/// Which heads leave: a fixed number of query heads from every KV group, or whole KV groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadUnit {
    /// `round(fraction × H/H_kv)` query heads from every KV group; the KV heads stay.
    Query,
    /// `round(fraction × H_kv)` whole KV groups, with their query heads.
    Kv,
}

/// The heads a block keeps, sorted: KV heads and query heads (every kept group keeps the same
/// number of query heads, in order, so query head `i` of the result reads KV head
/// `i / (H' / H_kv')`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadSelection {
    pub kv_keep: Vec<usize>,
    pub q_keep: Vec<usize>,
}

/// The heads to keep of a block of `heads` query and `kv_heads` KV heads scored by `energy`
/// (one per query head; the lowest go first, the lower index first on ties).
pub fn select_heads(
    energy: &[f64],
    heads: usize,
    kv_heads: usize,
    fraction: f64,
    unit: HeadUnit,
) -> Result<HeadSelection, MatrixError> {
    let per = heads / kv_heads;
    let lowest = |scores: &[f64], drop: usize| -> Vec<usize> {
        let mut idx: Vec<usize> = (0..scores.len()).collect();
        idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
        let mut keep = idx[drop..].to_vec();
        keep.sort_unstable();
        keep
    };
    if unit == HeadUnit::Kv || per == 1 {
        let drop = (kv_heads as f64 * fraction).round() as usize;
        if drop >= kv_heads {
            return Err(MatrixError::DropsAllGroups {
                fraction,
                drop,
                groups: kv_heads,
            });
        }
        let group: Vec<f64> = (0..kv_heads)
            .map(|k| energy[k * per..(k + 1) * per].iter().sum())
            .collect();
        let kv_keep = lowest(&group, drop);
        let q_keep = kv_keep
            .iter()
            .flat_map(|&k| k * per..(k + 1) * per)
            .collect();
        return Ok(HeadSelection { kv_keep, q_keep });
    }
    let drop = (per as f64 * fraction).round() as usize;
    if drop >= per {
        return Err(MatrixError::DropsAllHeads {
            fraction,
            drop,
            per_group: per,
        });
    }
    let q_keep = (0..kv_heads)
        .flat_map(|k| {
            lowest(&energy[k * per..(k + 1) * per], drop)
                .into_iter()
                .map(move |i| k * per + i)
        })
        .collect();
    Ok(HeadSelection {
        kv_keep: (0..kv_heads).collect(),
        q_keep,
    })
}

/// Row or column ranges of `size` elements per kept head.
fn head_ranges(keep: &[usize], size: usize) -> Vec<Range<usize>> {
    keep.iter().map(|&h| h * size..(h + 1) * size).collect()
}

/// Keeps the rows `rows` (all when `None`) and the columns `cols` (all when `None`) of weight
/// `i`, seen as `[rows, cols]` (a 1-D weight is one row). Dense data and GGML blocks are cut as
/// stored when the column ranges fall on block boundaries, so the encoding stays; other
/// encodings are decoded and stored as dense f32.
pub fn slice_weight(
    g: &mut Graph,
    i: usize,
    rows: Option<&[Range<usize>]>,
    cols: Option<&[Range<usize>]>,
    note: &str,
) -> Result<(), PassError> {
    let (r, c) = rows_cols(g, i);
    let (all_r, all_c) = (
        vec![Range { start: 0, end: r }],
        vec![Range { start: 0, end: c }],
    );
    let rows = rows.unwrap_or(&all_r);
    let cols = cols.unwrap_or(&all_c);
    let nr: usize = rows.iter().map(|x| x.len()).sum();
    let nc: usize = cols.iter().map(|x| x.len()).sum();
    let w = &g.weights[i];
    let name = w.name.clone();
    if rows.iter().any(|x| x.end > r) || cols.iter().any(|x| x.end > c) {
        return Err(PassError::Pattern {
            pattern: "slice-weight",
            at: format!("@{name}"),
            msg: format!("ranges fall outside the weight's {r}x{c}"),
        });
    }
    let rank = w.ty.rank();
    let new_shape: Vec<usize> = if rank <= 1 { vec![nc] } else { vec![nr, nc] };
    if rank > 2 {
        return Err(PassError::Pattern {
            pattern: "slice-weight",
            at: format!("@{name}"),
            msg: format!("only 1-D and 2-D weights can be cut, this one is {}", w.ty),
        });
    }
    let data = w.data.as_ref().ok_or_else(|| PassError::Pattern {
        pattern: "slice-weight",
        at: format!("@{name}"),
        msg: "the weight has no data".into(),
    })?;
    // elements and bytes of the smallest piece of a row that can be cut out as stored
    let unit = match (data.format, &w.ty.enc) {
        (Format::Canonical, Encoding::Dense(dt)) => Some((1, dt.size())),
        (Format::Ggml(t), _) => Some((t.block_len(), t.block_bytes())),
        _ => None,
    };
    let aligned = |(el, _): &(usize, usize)| {
        cols.iter().all(|x| x.start % el == 0 && x.end % el == 0) && c % el == 0
    };
    if let Some((el, by)) = unit.filter(aligned) {
        let raw = data.bytes.as_slice();
        let row_bytes = c / el * by;
        let mut out = Vec::with_capacity(nr * nc / el * by);
        for rr in rows.iter().flat_map(|x| x.clone()) {
            let row = &raw[rr * row_bytes..(rr + 1) * row_bytes];
            for x in cols {
                out.extend_from_slice(&row[x.start / el * by..x.end / el * by]);
            }
        }
        let origin = format!("{} ({note})", data.origin);
        let wd = WeightData::new(Bytes::owned(out), data.format, origin);
        let mut ty = w.ty.clone();
        ty.shape = Shape::fixed(&new_shape);
        return replace(g, i, ty, wd);
    }
    let (v, _, _) = weight_f32(g, i)?;
    let mut out = Vec::with_capacity(nr * nc);
    for rr in rows.iter().flat_map(|x| x.clone()) {
        for x in cols {
            out.extend_from_slice(&v[rr * c + x.start..rr * c + x.end]);
        }
    }
    set_weight_f32_shaped(g, i, new_shape, out, note)?;
    Ok(())
}

/// Rewrites one block to keep `sel`: projections, reshapes and cache states.
fn rewrite_block(
    g: &mut Graph,
    b: &AttnBlock,
    sel: &HeadSelection,
    note: &str,
) -> Result<(), PassError> {
    let (hd, dv) = (b.head_dim, b.v_dim);
    let q_rows = head_ranges(&sel.q_keep, hd);
    let k_rows = head_ranges(&sel.kv_keep, hd);
    let v_rows = head_ranges(&sel.kv_keep, dv);
    let o_cols = head_ranges(&sel.q_keep, dv);
    for (p, rows) in [(&b.q, &q_rows), (&b.k, &k_rows), (&b.v, &v_rows)] {
        slice_weight(g, p.weight, Some(rows), None, note)?;
        if let Some(bias) = p.bias {
            slice_weight(g, bias, None, Some(rows), note)?;
        }
    }
    slice_weight(g, b.o.weight, None, Some(&o_cols), note)?;
    let (h2, kv2) = (sel.q_keep.len() as i64, sel.kv_keep.len() as i64);
    // reshape{[.., H, D]} == reshape{[.., H', D]} once the projection has H' heads
    let set = |g: &mut Graph, node: usize, from: i64, to: i64, back: usize| {
        if let Op::Reshape { shape: Some(s) } = &mut g.nodes[node].op {
            let n = s.len();
            if s[n - back] == from {
                s[n - back] = to;
            }
        }
    };
    set(g, b.q_reshape, b.heads as i64, h2, 2);
    set(g, b.k_reshape, b.kv_heads as i64, kv2, 2);
    set(g, b.v_reshape, b.kv_heads as i64, kv2, 2);
    set(g, b.out_reshape, (b.heads * dv) as i64, h2 * dv as i64, 1);
    for s in [b.k_state, b.v_state].into_iter().flatten() {
        g.states[s as usize].ty.shape.0[1] = Dim::Fixed(kv2 as u64);
    }
    Ok(())
}

/// The `prune-heads` pass.
pub struct PruneHeadsPass {
    pub fraction: f64,
    pub unit: HeadUnit,
    /// Add the removed heads' mean output to the output projection's bias, kept only where it
    /// lowers the next-token loss on calibration windows.
    pub compensate: bool,
}

pub static PRUNE_HEADS_INFO: PassInfo = PassInfo {
    name: "prune-heads",
    summary: "remove a fraction of every attention block's heads from the graph, scored by their output energy on calibration",
    options: &[
        OptionSpec {
            name: "fraction",
            kind: OptionKind::Float,
            default: "0.25",
            help: "fraction of heads removed, rounded per KV group (query) or per block (kv)",
        },
        OptionSpec {
            name: "unit",
            kind: OptionKind::Choice(&["query", "kv"]),
            default: "query",
            help: "query: the same number of query heads from every KV group (KV cache stays); kv: whole KV groups",
        },
        OptionSpec {
            name: "compensate",
            kind: OptionKind::Bool,
            default: "false",
            help: "add the removed heads' mean output to the output projection's bias, kept if the next-token loss on 8 calibration windows falls (--distill asks for it)",
        },
    ],
    create: |o| Ok(Box::new(PruneHeadsPass::from_options(o)?)),
};

impl PruneHeadsPass {
    pub fn from_options(o: &Options) -> Result<PruneHeadsPass, PassError> {
        let fraction = o.float("fraction")?;
        if !(0.0..1.0).contains(&fraction) {
            return Err(PassError::Options {
                pass: "prune-heads".into(),
                msg: format!("fraction must lie in [0, 1), not {fraction}"),
            });
        }
        let unit = match o.str("unit") {
            "query" => HeadUnit::Query,
            "kv" => HeadUnit::Kv,
            other => {
                return Err(PassError::Options {
                    pass: "prune-heads".into(),
                    msg: format!("unit must be query or kv, not '{other}'"),
                })
            }
        };
        Ok(PruneHeadsPass {
            fraction,
            unit,
            compensate: o.bool("compensate"),
        })
    }
}

/// The selection for one block from its calibration statistics, with the energies.
fn score_block(
    g: &Graph,
    b: &AttnBlock,
    stats: &Stats,
    fraction: f64,
    unit: HeadUnit,
) -> Result<(HeadSelection, Vec<f64>), PassError> {
    let err = |m: String| PassError::Pattern {
        pattern: "prune-heads",
        at: format!("@{}", g.weights[b.o.weight].name),
        msg: m,
    };
    let cols = b.heads * b.v_dim;
    let st = stats
        .inputs
        .get(&b.o_input)
        .filter(|s| s.cols == cols)
        .ok_or_else(|| {
            err("calibration gathered no statistics of this projection's input".into())
        })?;
    let (w, rows, wc) = weight_f32(g, b.o.weight)?;
    if wc != cols {
        return Err(err(format!("takes {wc} inputs, the heads give {cols}")));
    }
    let e = head_energy(&w, rows, b.heads, b.v_dim, &st.gram);
    let sel = select_heads(&e, b.heads, b.kv_heads, fraction, unit)
        .map_err(|e| PassError::matrix("prune-heads", &g.weights[b.o.weight].name, e))?;
    Ok((sel, e))
}

impl Pass for PruneHeadsPass {
    fn info(&self) -> &'static PassInfo {
        &PRUNE_HEADS_INFO
    }

    fn needs_calibration(&self) -> bool {
        true
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<(), PassError> {
        let blocks = attention_blocks(g);
        if blocks.is_empty() {
            return Err(PassError::Pattern {
                pattern: "prune-heads",
                at: format!("graph @{}", g.name),
                msg: "found no attention block of the form linear → reshape → attention → reshape → linear with static head counts".into(),
            });
        }
        // a fraction that leaves a block without heads fails before calibration runs
        for b in &blocks {
            select_heads(
                &vec![0.0; b.heads],
                b.heads,
                b.kv_heads,
                self.fraction,
                self.unit,
            )
            .map_err(|e| PassError::matrix("prune-heads", &g.weights[b.o.weight].name, e))?;
        }
        let stats = cx.take_stats(g, "prune-heads")?;
        let scored: Vec<Result<(HeadSelection, Vec<f64>), PassError>> = blocks
            .iter()
            .map(|b| score_block(g, b, &stats, self.fraction, self.unit))
            .collect();
        let note = format!("prune-heads {}", self.fraction);
        let mut compensation = Vec::new();
        for (b, s) in blocks.iter().zip(scored) {
            let (sel, e) = s?;
            if self.compensate {
                let (w, rows, cols) = weight_f32(g, b.o.weight)?;
                let removed: Vec<usize> = (0..b.heads)
                    .filter(|h| !sel.q_keep.contains(h))
                    .flat_map(|h| h * b.v_dim..(h + 1) * b.v_dim)
                    .collect();
                // score_block found these statistics
                let st = &stats.inputs[&b.o_input];
                let bias = super::compensate::removed_mean_output(&w, rows, cols, &removed, st);
                let name = format!("{}.prune_bias", g.weights[b.o.weight].name);
                compensation.push((b.o.node, name, bias));
            }
            let ws: Vec<usize> = [&b.q, &b.k, &b.v, &b.o]
                .iter()
                .flat_map(|p| [Some(p.weight), p.bias])
                .flatten()
                .collect();
            let before: u64 = ws.iter().map(|&i| weight_bytes(g, i)).sum();
            rewrite_block(g, b, &sel, &note)?;
            let after: u64 = ws.iter().map(|&i| weight_bytes(g, i)).sum();
            let total: f64 = e.iter().sum();
            let kept: f64 = sel.q_keep.iter().map(|&h| e[h]).sum();
            let removed: Vec<usize> = (0..b.heads).filter(|h| !sel.q_keep.contains(h)).collect();
            cx.report.push(PassRow::PruneHeads(HeadsRow {
                pass: "prune-heads",
                weight: g.weights[b.o.weight].name.clone(),
                heads_before: b.heads,
                heads_after: sel.q_keep.len(),
                kv_heads_before: b.kv_heads,
                kv_heads_after: sel.kv_keep.len(),
                removed,
                energy: e,
                energy_removed: if total > 0.0 { 1.0 - kept / total } else { 0.0 },
                bytes_before: before,
                bytes_after: after,
            }));
        }
        reinfer(g)?;
        if !compensation.is_empty() {
            use super::compensate::{compensate, Edit};
            let what = format!(
                "{} biases for the mean output of what was removed",
                compensation.len()
            );
            let edit = Edit::biases(what, compensation, note.clone());
            compensate(g, cx, vec![edit], "prune-heads")?;
        }
        // head statistics no longer line up with the graph
        cx.stats = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_energy_is_the_output_norm_summed_over_tokens() {
        let (rows, heads, dv, tokens) = (5, 3, 4, 7);
        let cols = heads * dv;
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.1)
            .collect();
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| ((i * 13 % 7) as f32 - 3.0) * (1.0 + (i % cols / dv) as f32))
            .collect();
        let mut gram = vec![0f64; cols * cols];
        for t in 0..tokens {
            for a in 0..cols {
                for b in 0..cols {
                    gram[a * cols + b] += x[t * cols + a] as f64 * x[t * cols + b] as f64;
                }
            }
        }
        let e = head_energy(&w, rows, heads, dv, &gram);
        for h in 0..heads {
            let mut direct = 0.0;
            for t in 0..tokens {
                for r in 0..rows {
                    let y: f64 = (0..dv)
                        .map(|j| w[r * cols + h * dv + j] as f64 * x[t * cols + h * dv + j] as f64)
                        .sum();
                    direct += y * y;
                }
            }
            assert!(
                (e[h] - direct).abs() < 1e-6 * direct.max(1.0),
                "{h}: {} vs {direct}",
                e[h]
            );
        }
    }

    #[test]
    fn selections_keep_the_grouping_valid() {
        // 6 query heads in 2 KV groups of 3
        let e = [5.0, 1.0, 3.0, 0.5, 9.0, 2.0];
        let s = select_heads(&e, 6, 2, 0.34, HeadUnit::Query).unwrap();
        assert_eq!(s.kv_keep, vec![0, 1]);
        assert_eq!(s.q_keep, vec![0, 2, 4, 5]);
        let s = select_heads(&e, 6, 2, 0.5, HeadUnit::Kv).unwrap();
        assert_eq!(s.kv_keep, vec![1]);
        assert_eq!(s.q_keep, vec![3, 4, 5]);
        // multi-head attention: whole heads
        let s = select_heads(&e, 6, 6, 0.5, HeadUnit::Query).unwrap();
        assert_eq!(s.q_keep, vec![0, 2, 4]);
        assert_eq!(s.kv_keep, vec![0, 2, 4]);
        // nothing may be left without heads
        let m = select_heads(&e, 6, 2, 0.9, HeadUnit::Query).unwrap_err();
        assert!(
            matches!(
                m,
                MatrixError::DropsAllHeads {
                    drop: 3,
                    per_group: 3,
                    ..
                }
            ),
            "{m:?}"
        );
        assert!(
            m.to_string().contains("removes 3 of the 3 query heads"),
            "{m}"
        );
        assert!(select_heads(&e, 6, 2, 0.8, HeadUnit::Kv).is_err());
    }
}
