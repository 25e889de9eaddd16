//! Scaled dot-product attention from its exported decomposition.

use super::with_scalar;
use crate::core::rewrite::{PValue, Patch, RewritePattern, View};
use crate::PassError;
use llmc_ir::infer::dims_may_equal;
use llmc_ir::ops::norm_axis;
use llmc_ir::{BinaryOp, Dim, Op, ValueId};

/// `softmax(q·kᵀ · c + mask) · v == attention{scale = c}(q, k, v, mask)` for
/// `q [B, H, S, D]`, `kᵀ [B, Hk, D, T]`, `v [B, Hk, T, Dv]` with `Hk` equal to `H` or 1: the
/// scale as a multiplication or division by a scalar after the product (or on `q` and `kᵀ`
/// before it), the additive mask optional and broadcast to `[B, H, S, T]`.
pub struct FuseAttention;

/// Peels multiplications and divisions by scalars off `v` (each used once): the value under
/// them and the product of their factors.
fn peel_scale(g: &View<'_>, mut v: ValueId) -> Option<(ValueId, f64)> {
    let mut scale = 1.0;
    for _ in 0..4 {
        let Some(n) = g.node_of(v) else { break };
        let next = match n.op {
            Op::Binary(BinaryOp::Mul) => with_scalar(g, n.inputs[0], n.inputs[1]),
            Op::Binary(BinaryOp::Div) => g
                .scalar(n.inputs[1])
                .filter(|c| *c != 0.0)
                .map(|c| (n.inputs[0], 1.0 / c)),
            _ => None,
        };
        let Some((inner, c)) = next else { break };
        if !c.is_finite() {
            return None;
        }
        scale *= c;
        v = inner;
        if !g.single_use(v) {
            break;
        }
    }
    Some((v, scale))
}

/// The same dimension whatever the inputs are.
fn same(a: &Dim, b: &Dim) -> bool {
    match (a, b) {
        (Dim::Fixed(x), Dim::Fixed(y)) => x == y,
        (Dim::Sym(x), Dim::Sym(y)) => x == y,
        _ => false,
    }
}

impl RewritePattern for FuseAttention {
    fn name(&self) -> &'static str {
        "fuse-attention"
    }

    fn match_and_rewrite(&self, g: &View<'_>, node: usize) -> Result<Option<Patch>, PassError> {
        let n = &g.nodes[node];
        let Op::Softmax { axis } = n.op else {
            return Ok(None);
        };
        let z = n.inputs[0];
        let probs = n.outputs[0];
        let zt = g.ty(z);
        if zt.rank() != 4 || norm_axis(axis, 4) != Ok(3) || !g.single_use(z) {
            return Ok(None);
        }
        // probs · v, probs used only there
        let Some(u) = g.sole_user(probs) else {
            return Ok(None);
        };
        let un = &g.nodes[u];
        if un.op != Op::MatMul || un.inputs[0] != probs || un.inputs[1] == probs {
            return Ok(None);
        }
        let (v, out) = (un.inputs[1], un.outputs[0]);
        // z = scaled scores (+ mask)
        let mut candidates: Vec<(ValueId, Option<ValueId>)> = vec![(z, None)];
        if let Some(zn) = g.node_of(z) {
            if zn.op == Op::Binary(BinaryOp::Add) && zn.inputs[0] != zn.inputs[1] {
                candidates.push((zn.inputs[0], Some(zn.inputs[1])));
                candidates.push((zn.inputs[1], Some(zn.inputs[0])));
            }
        }
        for (scores_scaled, mask) in candidates {
            if mask.is_some() && !g.single_use(scores_scaled) {
                continue;
            }
            let Some((scores, scale)) = peel_scale(g, scores_scaled) else {
                continue;
            };
            let Some(sn) = g.node_of(scores) else {
                continue;
            };
            if sn.op != Op::MatMul || (scores != z && !g.single_use(scores)) {
                continue;
            }
            let (q0, kt0) = (sn.inputs[0], sn.inputs[1]);
            let (q, qs) = if g.single_use(q0) {
                peel_scale(g, q0).unwrap_or((q0, 1.0))
            } else {
                (q0, 1.0)
            };
            let (kt, ks) = if g.single_use(kt0) {
                peel_scale(g, kt0).unwrap_or((kt0, 1.0))
            } else {
                (kt0, 1.0)
            };
            let scale = scale * qs * ks;
            let (qt, ktt, vt) = (g.ty(q), g.ty(kt), g.ty(v));
            if qt.rank() != 4 || ktt.rank() != 4 || vt.rank() != 4 {
                continue;
            }
            let dt = qt.dtype();
            if !dt.is_float() || ktt.dtype() != dt || vt.dtype() != dt {
                continue;
            }
            let (qd, kd, vd) = (&qt.shape.0, &ktt.shape.0, &vt.shape.0);
            // Batch equal; key/value heads equal to the query heads or 1. Head and key sizes the
            // products check at run time anyway (a mismatch fails in both forms).
            let heads_ok = (same(&kd[1], &qd[1]) || kd[1] == Dim::Fixed(1)) && same(&vd[1], &kd[1]);
            let batch_ok = |a: &Dim, b: &Dim| same(a, b) || (*a == Dim::Any && *b == Dim::Any);
            let inner_ok = dims_may_equal(&kd[2], &qd[3]) && dims_may_equal(&kd[3], &vd[2]);
            if !batch_ok(&kd[0], &qd[0]) || !batch_ok(&vd[0], &qd[0]) || !heads_ok || !inner_ok {
                continue;
            }
            if let Some(m) = mask {
                let mt = g.ty(m);
                if mt.dtype() != dt || mt.rank() > 4 {
                    continue;
                }
                let st = g.ty(scores).shape.0.clone();
                // The mask broadcasts to the scores without widening them (where sizes are only
                // known at run time, a mismatch fails in both forms).
                let ok = mt
                    .shape
                    .0
                    .iter()
                    .rev()
                    .zip(st.iter().rev())
                    .all(|(md, sd)| {
                        *md == Dim::Fixed(1)
                            || same(md, sd)
                            || (*sd != Dim::Fixed(1) && dims_may_equal(md, sd))
                    });
                if !ok {
                    continue;
                }
            }
            let mut p = Patch::new();
            let k = p.add(
                Op::Transpose {
                    perm: vec![0, 1, 3, 2],
                },
                &[kt.into()],
            );
            let mut args = vec![PValue::from(q), k, v.into()];
            if let Some(m) = mask {
                args.push(m.into());
            }
            let a = p.add(
                Op::Attention {
                    causal: false,
                    scale: scale as f32,
                },
                &args,
            );
            p.replace(out, a);
            return Ok(Some(p));
        }
        Ok(None)
    }
}
