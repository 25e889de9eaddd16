//! Canonicalization: constant and shape folding, parameters that arrive as operands turned into
//! static attributes, identities dropped, transposes and reshapes merged, dead code removed.

use super::fold::{FoldConstants, FoldShapes};
use crate::core::rewrite::{
    apply_patterns, Patch, RewriteConfig, RewritePattern, RewriteStats, View,
};
use crate::core::symbolic::{known, sym_value, Sym};
use crate::PassError;
use llmc_ir::infer::{dims_may_equal, slice_range};
use llmc_ir::ops::norm_axis;
use llmc_ir::{BinaryOp, Dim, Graph, Op, SliceSpec, ValueId};

/// The canonicalization rules, in the order the driver offers nodes to them.
pub fn canonical_patterns() -> Vec<Box<dyn RewritePattern>> {
    vec![
        Box::new(FoldConstants),
        Box::new(FoldShapes),
        Box::new(StaticParams),
        Box::new(DropIdentity),
        Box::new(MergeTransposes),
        Box::new(MergeReshapes),
    ]
}

/// Folds constants and shape arithmetic, makes operand parameters static, drops identities and
/// dead code, to a fixpoint. The graph must verify before and verifies after.
pub fn canonicalize(g: &mut Graph) -> Result<RewriteStats, PassError> {
    apply_patterns(g, &canonical_patterns(), &RewriteConfig::default())
}

/// `reshape(x, shape(x)[0], shape(x)[1], 12, 32) == reshape{[0, 0, 12, 32]}(x)`: shape, repeat,
/// slice and expand parameters known at build time (or as dimensions of the operand) become
/// static attributes.
pub struct StaticParams;

impl RewritePattern for StaticParams {
    fn name(&self) -> &'static str {
        "static-params"
    }

    fn match_and_rewrite(&self, g: &View<'_>, node: usize) -> Result<Option<Patch>, PassError> {
        let n = &g.nodes[node];
        let x = match n.inputs.first() {
            Some(x) => *x,
            None => return Ok(None),
        };
        let xdims = &g.ty(x).shape.0;
        let op = match &n.op {
            Op::Reshape { shape: None } => {
                let Some(target) = sym_value(g, n.inputs[1]) else {
                    return Ok(None);
                };
                let has_minus_one = target.contains(&Sym::Known(-1));
                let mut out = Vec::with_capacity(target.len());
                let mut open = Vec::new();
                for (i, e) in target.iter().enumerate() {
                    match e {
                        Sym::Known(k) => out.push(*k),
                        Sym::Dim { .. } if i < xdims.len() && e.same_dim(x, i, &xdims[i]) => {
                            out.push(0)
                        }
                        Sym::Dim { .. } => {
                            open.push(i);
                            out.push(-1);
                        }
                    }
                }
                // One dimension nothing else tells is what the element count leaves over.
                if open.len() > 1 || (open.len() == 1 && has_minus_one) {
                    return Ok(None);
                }
                Op::Reshape { shape: Some(out) }
            }
            Op::Expand { shape: None } => {
                let Some(target) = sym_value(g, n.inputs[1]) else {
                    return Ok(None);
                };
                let r = target.len().max(xdims.len());
                let mut out = Vec::with_capacity(target.len());
                for (i, e) in target.iter().enumerate() {
                    match e {
                        Sym::Known(k) => out.push(*k),
                        Sym::Dim { .. } => {
                            // broadcasting 1 against the operand's own dimension keeps it
                            let xi = (i + xdims.len()) as i64 - r as i64;
                            if xi >= 0 && e.same_dim(x, xi as usize, &xdims[xi as usize]) {
                                out.push(1);
                            } else {
                                return Ok(None);
                            }
                        }
                    }
                }
                Op::Expand { shape: Some(out) }
            }
            Op::Tile { repeats: None } => {
                let Some(r) = sym_value(g, n.inputs[1]).and_then(|s| known(&s)) else {
                    return Ok(None);
                };
                Op::Tile { repeats: Some(r) }
            }
            Op::Slice { spec: None } => {
                let Some(starts) = sym_value(g, n.inputs[1]).and_then(|s| known(&s)) else {
                    return Ok(None);
                };
                let k = starts.len();
                let axes = match n.inputs.get(3) {
                    Some(a) => match sym_value(g, *a).and_then(|s| known(&s)) {
                        Some(a) => a,
                        None => return Ok(None),
                    },
                    None => (0..k as i64).collect(),
                };
                let steps = match n.inputs.get(4) {
                    Some(a) => match sym_value(g, *a).and_then(|s| known(&s)) {
                        Some(a) => a,
                        None => return Ok(None),
                    },
                    None => vec![1; k],
                };
                let Some(ends_sym) = sym_value(g, n.inputs[2]) else {
                    return Ok(None);
                };
                if axes.len() != k || steps.len() != k || ends_sym.len() != k {
                    return Ok(None);
                }
                let mut ends = Vec::with_capacity(k);
                for (i, e) in ends_sym.iter().enumerate() {
                    match e {
                        Sym::Known(v) => ends.push(*v),
                        // slicing up to the operand's own length
                        Sym::Dim { .. } => {
                            let Ok(a) = norm_axis(axes[i], xdims.len()) else {
                                return Ok(None);
                            };
                            if steps[i] > 0 && e.same_dim(x, a, &xdims[a]) {
                                ends.push(i64::MAX);
                            } else {
                                return Ok(None);
                            }
                        }
                    }
                }
                Op::Slice {
                    spec: Some(SliceSpec {
                        starts,
                        ends,
                        axes,
                        steps,
                    }),
                }
            }
            _ => return Ok(None),
        };
        let mut p = Patch::new();
        let v = p.add(op, &[x.into()]);
        p.replace(n.outputs[0], v);
        Ok(Some(p))
    }
}

/// Whether `a` and `b` are the same dimension whatever the inputs: equal sizes or one symbol.
fn same_dim(a: &Dim, b: &Dim) -> bool {
    matches!((a, b), (Dim::Fixed(x), Dim::Fixed(y)) if x == y)
        || matches!((a, b), (Dim::Sym(x), Dim::Sym(y)) if x == y)
}

/// Ops that give back an operand: `reshape(x, shape(x)) == x`, `transpose{identity}(x) == x`,
/// `cast<t>(x: t) == x`, `concat(x) == x`, `x*1 == x`, `x+0 == x`, `where(false, a, b) == b`, ...
pub struct DropIdentity;

impl RewritePattern for DropIdentity {
    fn name(&self) -> &'static str {
        "drop-identity"
    }

    fn match_and_rewrite(&self, g: &View<'_>, node: usize) -> Result<Option<Patch>, PassError> {
        let n = &g.nodes[node];
        if n.outputs.len() != 1 || n.inputs.is_empty() {
            return Ok(None);
        }
        let out = n.outputs[0];
        // where(true, a, b) == a, where(false, a, b) == b
        if n.op == Op::Where {
            let Some(c) = g.const_value(n.inputs[0]) else {
                return Ok(None);
            };
            let v = c.to_i64_vec();
            let pick = if v.iter().all(|&b| b != 0) {
                n.inputs[1]
            } else if v.iter().all(|&b| b == 0) {
                n.inputs[2]
            } else {
                return Ok(None);
            };
            let (pt, ot) = (g.ty(pick), g.ty(out));
            let same = pt.dtype() == ot.dtype()
                && pt.rank() == ot.rank()
                && pt
                    .shape
                    .0
                    .iter()
                    .zip(&ot.shape.0)
                    .all(|(a, b)| same_dim(a, b));
            if !same {
                return Ok(None);
            }
            let mut p = Patch::new();
            p.replace(out, pick);
            return Ok(Some(p));
        }
        let x = n.inputs[0];
        let (xt, ot) = (g.ty(x), g.ty(out));
        let same_type = xt.dtype() == ot.dtype()
            && xt.rank() == ot.rank()
            && xt
                .shape
                .0
                .iter()
                .zip(&ot.shape.0)
                .all(|(a, b)| same_dim(a, b));
        let keep = match &n.op {
            // reshape(x, shape(x)) == x
            Op::Reshape { shape: Some(t) } => {
                let d = &xt.shape.0;
                t.len() == d.len() && {
                    let exact =
                        |i: usize| t[i] == 0 || matches!(d[i], Dim::Fixed(k) if k as i64 == t[i]);
                    let open = (0..t.len()).filter(|&i| !exact(i)).collect::<Vec<_>>();
                    open.is_empty() || (open.len() == 1 && t[open[0]] == -1)
                }
            }
            // transpose{0, 1, .., r-1}(x) == x
            Op::Transpose { perm } => {
                (perm.is_empty() && xt.rank() <= 1)
                    || (perm.len() == xt.rank()
                        && perm
                            .iter()
                            .enumerate()
                            .all(|(i, &p)| norm_axis(p, xt.rank()) == Ok(i)))
            }
            // cast<t>(x: t) == x
            Op::Cast { to } => *to == xt.dtype(),
            // concat(x) == x
            Op::Concat { .. } => n.inputs.len() == 1,
            // expand(x, shape(x)) == x, tile(x, 1) == x
            Op::Expand { shape: Some(_) } | Op::Tile { repeats: Some(_) } => same_type,
            Op::Tile { repeats: None } | Op::Expand { shape: None } => false,
            Op::Unsqueeze { axes } | Op::Squeeze { axes } if axes.is_empty() => {
                matches!(n.op, Op::Unsqueeze { .. })
            }
            // slice{0:n}(x) == x
            Op::Slice { spec: Some(s) } => {
                s.starts.len() == s.ends.len()
                    && s.axes.len() == s.starts.len()
                    && s.steps.len() == s.starts.len()
                    && (0..s.starts.len()).all(|i| {
                        let Ok(a) = norm_axis(s.axes[i], xt.rank()) else {
                            return false;
                        };
                        s.steps[i] == 1
                            && match xt.shape.0[a] {
                                Dim::Fixed(k) => {
                                    slice_range(k as i64, s.starts[i], s.ends[i], 1)
                                        == (0, 1, k as i64)
                                }
                                _ => s.starts[i] == 0 && s.ends[i] >= i32::MAX as i64,
                            }
                    })
            }
            Op::Binary(b @ (BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div)) => {
                let c = n.inputs[1];
                let unit = if matches!(b, BinaryOp::Add | BinaryOp::Sub) {
                    0.0
                } else {
                    1.0
                };
                // x+0 == x, x-0 == x, x*1 == x, x/1 == x (and 0+x, 1*x)
                let right = g.const_value(c).is_some_and(|t| {
                    t.numel() <= 4096 && t.data.to_f64().iter().all(|&v| v == unit)
                }) && same_type;
                if right {
                    true
                } else if matches!(b, BinaryOp::Add | BinaryOp::Mul) {
                    let y = n.inputs[1];
                    let yt = g.ty(y);
                    let y_same = yt.dtype() == ot.dtype()
                        && yt.rank() == ot.rank()
                        && yt
                            .shape
                            .0
                            .iter()
                            .zip(&ot.shape.0)
                            .all(|(a, b)| same_dim(a, b));
                    let left = g.const_value(x).is_some_and(|t| {
                        t.numel() <= 4096 && t.data.to_f64().iter().all(|&v| v == unit)
                    }) && y_same;
                    if left {
                        let mut p = Patch::new();
                        p.replace(out, y);
                        return Ok(Some(p));
                    }
                    false
                } else {
                    false
                }
            }
            _ => false,
        };
        if !keep || !same_type_loose(g, x, out) {
            return Ok(None);
        }
        let mut p = Patch::new();
        p.replace(out, x);
        Ok(Some(p))
    }
}

fn same_type_loose(g: &View<'_>, a: ValueId, b: ValueId) -> bool {
    let (ta, tb) = (g.ty(a), g.ty(b));
    ta.dtype() == tb.dtype()
        && ta.rank() == tb.rank()
        && ta
            .shape
            .0
            .iter()
            .zip(&tb.shape.0)
            .all(|(x, y)| dims_may_equal(x, y))
}

/// `transpose{q}(transpose{p}(x)) == transpose{p∘q}(x)`.
pub struct MergeTransposes;

impl RewritePattern for MergeTransposes {
    fn name(&self) -> &'static str {
        "merge-transposes"
    }

    fn match_and_rewrite(&self, g: &View<'_>, node: usize) -> Result<Option<Patch>, PassError> {
        let n = &g.nodes[node];
        let Op::Transpose { perm: q } = &n.op else {
            return Ok(None);
        };
        let inner = n.inputs[0];
        let Some(Op::Transpose { perm: p }) = g.op_of(inner) else {
            return Ok(None);
        };
        let Some(src) = g.node_of(inner) else {
            return Ok(None);
        };
        let x = src.inputs[0];
        let r = g.ty(x).rank();
        let full = |perm: &[i64]| -> Option<Vec<usize>> {
            if perm.is_empty() {
                Some((0..r).rev().collect())
            } else {
                perm.iter().map(|&a| norm_axis(a, r).ok()).collect()
            }
        };
        let (Some(p), Some(q)) = (full(p), full(q)) else {
            return Ok(None);
        };
        if p.len() != r || q.len() != r {
            return Ok(None);
        }
        let composed: Vec<i64> = q.iter().map(|&i| p[i] as i64).collect();
        let mut patch = Patch::new();
        let v = patch.add(Op::Transpose { perm: composed }, &[x.into()]);
        patch.replace(n.outputs[0], v);
        Ok(Some(patch))
    }
}

/// `reshape{s}(reshape(x)) == reshape{s}(x)` when `s` copies no dimension (has no 0), and
/// `reshape{s}(squeeze/unsqueeze/flatten(x))` likewise.
pub struct MergeReshapes;

impl RewritePattern for MergeReshapes {
    fn name(&self) -> &'static str {
        "merge-reshapes"
    }

    fn match_and_rewrite(&self, g: &View<'_>, node: usize) -> Result<Option<Patch>, PassError> {
        let n = &g.nodes[node];
        let Op::Reshape { shape: Some(s) } = &n.op else {
            return Ok(None);
        };
        if s.contains(&0) {
            return Ok(None);
        }
        let inner = n.inputs[0];
        let Some(src) = g.node_of(inner) else {
            return Ok(None);
        };
        let reshaping = matches!(
            src.op,
            Op::Reshape { shape: Some(_) }
                | Op::Squeeze { .. }
                | Op::Unsqueeze { .. }
                | Op::Flatten { .. }
        );
        if !reshaping {
            return Ok(None);
        }
        let mut p = Patch::new();
        let v = p.add(
            Op::Reshape {
                shape: Some(s.clone()),
            },
            &[src.inputs[0].into()],
        );
        p.replace(n.outputs[0], v);
        Ok(Some(p))
    }
}
