//! Gelu (exact and tanh approximation) from their exported decompositions.

use super::{binary_of, half_x_times, near, with_scalar};
use crate::core::rewrite::{Patch, RewritePattern, View};
use crate::PassError;
use llmc_ir::{BinaryOp, Op, UnaryOp, ValueId};

/// `x · 0.5 · (1 + erf(x / √2)) == gelu(x)` in the usual orderings (`x · (1/√2)` inside erf too).
pub struct FuseGelu;

/// `0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³))) == gelu_tanh(x)`, the cube as `pow(x, 3)`
/// or `x·x·x`.
pub struct FuseGeluTanh;

/// `1 + t` (either order), when `t` is used only there: the sum.
fn plus_one(g: &View<'_>, t: ValueId) -> Option<ValueId> {
    let u = g.sole_user(t)?;
    let n = &g.nodes[u];
    if n.op != Op::Binary(BinaryOp::Add) {
        return None;
    }
    let other = if n.inputs[0] == t {
        n.inputs[1]
    } else {
        n.inputs[0]
    };
    (g.scalar(other) == Some(1.0)).then(|| n.outputs[0])
}

/// Replaces `top` by `op(x)` when the types agree.
fn rewrite_to(g: &View<'_>, top: ValueId, x: ValueId, op: UnaryOp) -> Option<Patch> {
    let (tt, xt) = (g.ty(top), g.ty(x));
    if tt.dtype() != xt.dtype() || tt.shape != xt.shape || !xt.dtype().is_float() {
        return None;
    }
    let mut p = Patch::new();
    let v = p.add(Op::Unary(op), &[x.into()]);
    p.replace(top, v);
    Some(p)
}

impl RewritePattern for FuseGelu {
    fn name(&self) -> &'static str {
        "fuse-gelu"
    }

    fn match_and_rewrite(&self, g: &View<'_>, node: usize) -> Result<Option<Patch>, PassError> {
        let n = &g.nodes[node];
        if n.op != Op::Unary(UnaryOp::Erf) {
            return Ok(None);
        }
        let u = n.inputs[0];
        if !g.single_use(u) {
            return Ok(None);
        }
        // u = x / √2 or x · (1/√2)
        let x = if let Some((x, c)) = binary_of(g, u, BinaryOp::Div) {
            match g.scalar(c) {
                Some(c) if near(c, std::f64::consts::SQRT_2) => x,
                _ => return Ok(None),
            }
        } else if let Some((a, b)) = binary_of(g, u, BinaryOp::Mul) {
            match with_scalar(g, a, b) {
                Some((x, c)) if near(c, std::f64::consts::FRAC_1_SQRT_2) => x,
                _ => return Ok(None),
            }
        } else {
            return Ok(None);
        };
        let Some(a) = plus_one(g, n.outputs[0]) else {
            return Ok(None);
        };
        let Some(top) = half_x_times(g, a, x) else {
            return Ok(None);
        };
        Ok(rewrite_to(g, top, x, UnaryOp::Gelu))
    }
}

/// `x³` as `pow(x, 3)`, `(x·x)·x` or `x·(x·x)`, every intermediate used once: `x`.
fn cube_of(g: &View<'_>, v: ValueId) -> Option<ValueId> {
    if let Some((x, e)) = binary_of(g, v, BinaryOp::Pow) {
        return (g.scalar(e) == Some(3.0)).then_some(x);
    }
    let (a, b) = binary_of(g, v, BinaryOp::Mul)?;
    for (sq, x) in [(a, b), (b, a)] {
        if let Some((p, q)) = binary_of(g, sq, BinaryOp::Mul) {
            if p == x && q == x && g.single_use(sq) {
                return Some(x);
            }
        }
    }
    None
}

impl RewritePattern for FuseGeluTanh {
    fn name(&self) -> &'static str {
        "fuse-gelu-tanh"
    }

    fn match_and_rewrite(&self, g: &View<'_>, node: usize) -> Result<Option<Patch>, PassError> {
        let n = &g.nodes[node];
        if n.op != Op::Unary(UnaryOp::Tanh) {
            return Ok(None);
        }
        // w = √(2/π) · inner
        let w = n.inputs[0];
        let Some((wa, wb)) = binary_of(g, w, BinaryOp::Mul) else {
            return Ok(None);
        };
        let Some((inner, c1)) = with_scalar(g, wa, wb) else {
            return Ok(None);
        };
        if !near(c1, (2.0 / std::f64::consts::PI).sqrt()) {
            return Ok(None);
        }
        // inner = x + 0.044715 · x³
        let Some((ia, ib)) = binary_of(g, inner, BinaryOp::Add) else {
            return Ok(None);
        };
        let mut found = None;
        for (x, k) in [(ia, ib), (ib, ia)] {
            let Some((ka, kb)) = binary_of(g, k, BinaryOp::Mul) else {
                continue;
            };
            let Some((cube, c2)) = with_scalar(g, ka, kb) else {
                continue;
            };
            if near(c2, 0.044715)
                && cube_of(g, cube) == Some(x)
                && g.single_use(cube)
                && g.single_use(k)
            {
                found = Some(x);
                break;
            }
        }
        let Some(x) = found else { return Ok(None) };
        if !g.single_use(w) || !g.single_use(inner) {
            return Ok(None);
        }
        let Some(a) = plus_one(g, n.outputs[0]) else {
            return Ok(None);
        };
        let Some(top) = half_x_times(g, a, x) else {
            return Ok(None);
        };
        Ok(rewrite_to(g, top, x, UnaryOp::GeluTanh))
    }
}
