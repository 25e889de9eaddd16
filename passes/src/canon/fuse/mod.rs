//! Fusions: exporter decompositions turned back into the IR's compound ops (layer norm, gelu,
//! attention, linear). Each fires only on an exact match and never makes the graph worse.

mod attention;
mod gelu;
mod layer_norm;
mod linear;

pub use attention::FuseAttention;
pub use gelu::{FuseGelu, FuseGeluTanh};
pub use layer_norm::FuseLayerNorm;
pub use linear::FuseLinear;

use crate::canon::canonical_patterns;
use crate::core::rewrite::{apply_patterns, RewriteConfig, RewritePattern, RewriteStats, View};
use crate::PassError;
use llmc_ir::{BinaryOp, Graph, Op, ValueId};

/// The fusion patterns.
pub fn fusion_patterns() -> Vec<Box<dyn RewritePattern>> {
    vec![
        Box::new(FuseLayerNorm),
        Box::new(FuseGelu),
        Box::new(FuseGeluTanh),
        Box::new(FuseAttention),
        Box::new(FuseLinear),
    ]
}

/// Runs the fusions together with canonicalization, to a fixpoint.
pub fn fuse(g: &mut Graph) -> Result<RewriteStats, PassError> {
    let mut pats = canonical_patterns();
    pats.extend(fusion_patterns());
    apply_patterns(g, &pats, &RewriteConfig::default())
}

/// The operands of the binary node producing `v`, when it is `op`.
pub(crate) fn binary_of(g: &View<'_>, v: ValueId, op: BinaryOp) -> Option<(ValueId, ValueId)> {
    let n = g.node_of(v)?;
    (n.op == Op::Binary(op)).then(|| (n.inputs[0], n.inputs[1]))
}

/// The operand of the unary-like node producing `v`, when `pred` accepts its op.
pub(crate) fn operand_of(g: &View<'_>, v: ValueId, pred: impl Fn(&Op) -> bool) -> Option<ValueId> {
    let n = g.node_of(v)?;
    pred(&n.op).then(|| n.inputs[0])
}

/// For a commutative `a op b` where one side is a scalar constant: `(other side, scalar)`.
pub(crate) fn with_scalar(g: &View<'_>, a: ValueId, b: ValueId) -> Option<(ValueId, f64)> {
    if let Some(c) = g.scalar(b) {
        return Some((a, c));
    }
    g.scalar(a).map(|c| (b, c))
}

/// Whether `x` is within a relative `1e-5` of `want`.
pub(crate) fn near(x: f64, want: f64) -> bool {
    (x - want).abs() <= 1e-5 * want.abs().max(1e-30)
}

/// Finds `0.5 · x · a` built from `a` upward, in the orderings exporters write:
/// `(x·a)·0.5`, `(x·a)/2`, `x·(a·0.5)`, `(x·0.5)·a`, `(0.5·x)·a`, `(x/2)·a`. Returns the value
/// computing the product. `a` and every intermediate must be used only inside the product.
pub(crate) fn half_x_times(g: &View<'_>, a: ValueId, x: ValueId) -> Option<ValueId> {
    let u1 = g.sole_user(a)?;
    let n1 = &g.nodes[u1];
    if n1.op != Op::Binary(BinaryOp::Mul) {
        return None;
    }
    let p = if n1.inputs[0] == a {
        n1.inputs[1]
    } else {
        n1.inputs[0]
    };
    let m = n1.outputs[0];
    let is_half = |v: ValueId| g.scalar(v).is_some_and(|c| c == 0.5);
    if p == x {
        // (x·a)·0.5 or (x·a)/2
        let n2 = &g.nodes[g.sole_user(m)?];
        return match n2.op {
            Op::Binary(BinaryOp::Mul)
                if (n2.inputs[0] == m && is_half(n2.inputs[1]))
                    || (n2.inputs[1] == m && is_half(n2.inputs[0])) =>
            {
                Some(n2.outputs[0])
            }
            Op::Binary(BinaryOp::Div)
                if n2.inputs[0] == m && g.scalar(n2.inputs[1]) == Some(2.0) =>
            {
                Some(n2.outputs[0])
            }
            _ => None,
        };
    }
    if is_half(p) {
        // x·(a·0.5)
        let n2 = &g.nodes[g.sole_user(m)?];
        return (n2.op == Op::Binary(BinaryOp::Mul)
            && (n2.inputs[0] == x || n2.inputs[1] == x)
            && n2.inputs[0] != n2.inputs[1])
            .then(|| n2.outputs[0]);
    }
    // (x·0.5)·a, (0.5·x)·a, (x/2)·a
    if !g.single_use(p) {
        return None;
    }
    if let Some((l, r)) = binary_of(g, p, BinaryOp::Mul) {
        if (l == x && is_half(r)) || (r == x && is_half(l)) {
            return Some(m);
        }
    }
    if let Some((l, r)) = binary_of(g, p, BinaryOp::Div) {
        if l == x && g.scalar(r) == Some(2.0) {
            return Some(m);
        }
    }
    None
}
