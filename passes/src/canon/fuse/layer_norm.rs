//! Layer norm from its exported decomposition.

use super::{binary_of, operand_of, with_scalar};
use crate::core::rewrite::{PValue, Patch, RewritePattern, View};
use crate::PassError;
use llmc_ir::ops::norm_axis;
use llmc_ir::{BinaryOp, Dim, Op, ReduceKind, Tensor, TensorType, UnaryOp, ValueId};

/// `(x - mean(x)) / sqrt(mean((x - mean(x))²) + eps) · γ + β == layer_norm{eps}(x, γ, β)`,
/// the means over the trailing axes with kept dimensions, the square as `pow(d, 2)` or `d·d`,
/// `γ` and `β` optional (a missing `γ` becomes ones).
pub struct FuseLayerNorm;

/// The trailing axis a mean over `axes` of a rank-`r` value normalizes from, when the axes are
/// exactly the last ones.
fn trailing_axis(axes: &[i64], r: usize) -> Option<usize> {
    if axes.is_empty() || r == 0 {
        return None;
    }
    let mut a: Vec<usize> = axes
        .iter()
        .map(|&x| norm_axis(x, r).ok())
        .collect::<Option<_>>()?;
    a.sort_unstable();
    a.dedup();
    let first = a[0];
    (a.len() == r - first && a.iter().enumerate().all(|(i, &x)| x == first + i)).then_some(first)
}

/// The operand of a `reduce_mean` with kept dimensions producing `v`, and the axis it normalizes from.
fn mean_of(g: &View<'_>, v: ValueId) -> Option<(ValueId, usize)> {
    let n = g.node_of(v)?;
    match &n.op {
        Op::Reduce {
            kind: ReduceKind::Mean,
            axes,
            keepdims: true,
        } => {
            let x = n.inputs[0];
            Some((x, trailing_axis(axes, g.ty(x).rank())?))
        }
        _ => None,
    }
}

/// Whether a scale or bias of type `p` fits the normalized dimensions `norm` without widening
/// the result.
fn fits(p: &TensorType, norm: &[Dim]) -> bool {
    p.rank() <= norm.len()
        && p.shape
            .0
            .iter()
            .rev()
            .zip(norm.iter().rev())
            .all(|(a, b)| a == b || *a == Dim::Fixed(1))
}

impl RewritePattern for FuseLayerNorm {
    fn name(&self) -> &'static str {
        "fuse-layer-norm"
    }

    fn match_and_rewrite(&self, g: &View<'_>, node: usize) -> Result<Option<Patch>, PassError> {
        let n = &g.nodes[node];
        if n.op != Op::Binary(BinaryOp::Div) {
            return Ok(None);
        }
        let (d, s) = (n.inputs[0], n.inputs[1]);
        let normed = n.outputs[0];
        // d = x - mean(x)
        let Some((x, m)) = binary_of(g, d, BinaryOp::Sub) else {
            return Ok(None);
        };
        let Some((x2, axis)) = mean_of(g, m) else {
            return Ok(None);
        };
        if x2 != x || !g.ty(x).dtype().is_float() {
            return Ok(None);
        }
        // s = sqrt(mean(d²) + eps)
        let Some(e) = operand_of(g, s, |o| *o == Op::Unary(UnaryOp::Sqrt)) else {
            return Ok(None);
        };
        let Some((va, vb)) = binary_of(g, e, BinaryOp::Add) else {
            return Ok(None);
        };
        let Some((v, eps)) = with_scalar(g, va, vb) else {
            return Ok(None);
        };
        let Some((sq, axis2)) = mean_of(g, v) else {
            return Ok(None);
        };
        if axis2 != axis || !(0.0..1.0).contains(&eps) {
            return Ok(None);
        }
        let Some(sq_node) = g.producer(sq) else {
            return Ok(None);
        };
        let square = match &g.nodes[sq_node].op {
            Op::Binary(BinaryOp::Pow) => {
                g.nodes[sq_node].inputs[0] == d && g.scalar(g.nodes[sq_node].inputs[1]) == Some(2.0)
            }
            Op::Binary(BinaryOp::Mul) => g.nodes[sq_node].inputs == [d, d],
            _ => false,
        };
        if !square {
            return Ok(None);
        }
        // Everything in between is used only by the pattern.
        let inner_once = [m, sq, v, e, s].iter().all(|&w| g.single_use(w));
        let d_uses_ok = !g.is_output(d) && g.uses(d).iter().all(|&u| u == sq_node || u == node);
        if !inner_once || !d_uses_ok {
            return Ok(None);
        }
        let xt = g.ty(x);
        let norm = &xt.shape.0[axis..];
        // optional · γ, then + β
        let mut result = normed;
        let mut scale = None;
        let mut bias = None;
        if let Some(u) = g.sole_user(result) {
            let un = &g.nodes[u];
            if un.op == Op::Binary(BinaryOp::Mul) {
                let other = if un.inputs[0] == result {
                    un.inputs[1]
                } else {
                    un.inputs[0]
                };
                if other != result
                    && fits(g.ty(other), norm)
                    && g.ty(other).dtype() == xt.dtype()
                    && g.is_param(other)
                {
                    scale = Some(other);
                    result = un.outputs[0];
                }
            }
        }
        if let Some(u) = g.sole_user(result) {
            let un = &g.nodes[u];
            if un.op == Op::Binary(BinaryOp::Add) {
                let other = if un.inputs[0] == result {
                    un.inputs[1]
                } else {
                    un.inputs[0]
                };
                if other != result
                    && fits(g.ty(other), norm)
                    && g.ty(other).dtype() == xt.dtype()
                    && g.is_param(other)
                {
                    bias = Some(other);
                    result = un.outputs[0];
                }
            }
        }
        let mut p = Patch::new();
        let scale: PValue = match scale {
            Some(s) => s.into(),
            None => {
                let Some(dims) = llmc_ir::Shape(norm.to_vec()).as_fixed() else {
                    return Ok(None);
                };
                let count: usize = dims.iter().product();
                let ones = Tensor::f32(dims, vec![1.0; count]).cast(xt.dtype());
                p.tensor("layer_norm.ones", ones)
            }
        };
        let mut args = vec![PValue::from(x), scale];
        if let Some(b) = bias {
            args.push(b.into());
        }
        let ln = p.add(
            Op::LayerNorm {
                axis: axis as i64 - xt.rank() as i64,
                eps: eps as f32,
            },
            &args,
        );
        p.replace(result, ln);
        Ok(Some(p))
    }
}
