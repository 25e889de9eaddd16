//! Linear layers from matrix products with a weight.

use crate::core::rewrite::{PValue, Patch, RewritePattern, View};
use crate::PassError;
use llmc_ir::ops::norm_axis;
use llmc_ir::{BinaryOp, Bytes, Dim, Format, Op, TensorType, ValueId, WeightData};

/// `matmul(x, W) + b == linear(x, Wᵀ, b)` for a 2-D weight `W [K, N]`: the new weight is `W`'s
/// bytes read transposed (no copy); `matmul(x, transpose(W)) == linear(x, W)`; a following add
/// of a bias `[N]` (a weight or constant) folds into the linear.
pub struct FuseLinear;

/// The name a transposed copy of weight `w` takes: `*.weight` beside a `*.bias` when the
/// exporter left the weight anonymous (`onnx::MatMul_470`), else its own name.
fn weight_name(w: &str, bias: Option<&str>) -> String {
    match bias.and_then(|b| b.strip_suffix(".bias")) {
        Some(prefix) if w.starts_with("onnx::") || w.contains("MatMul") => {
            format!("{prefix}.weight")
        }
        _ => w.to_string(),
    }
}

impl RewritePattern for FuseLinear {
    fn name(&self) -> &'static str {
        "fuse-linear"
    }

    fn match_and_rewrite(&self, g: &View<'_>, node: usize) -> Result<Option<Patch>, PassError> {
        let n = &g.nodes[node];
        if n.op != Op::MatMul {
            return Ok(None);
        }
        let (x, w) = (n.inputs[0], n.inputs[1]);
        let (xt, wt) = (g.ty(x), g.ty(w));
        if xt.rank() == 0
            || wt.rank() != 2
            || !xt.dtype().is_float()
            || !wt.enc.is_dense()
            || wt.dtype() != xt.dtype()
        {
            return Ok(None);
        }
        // W itself, or transpose(W) of a 2-D weight
        enum Src<'a> {
            Transpose(&'a llmc_ir::Weight),
            Direct(ValueId),
        }
        let src = if let Some(weight) = g.weight_of(w) {
            Src::Transpose(weight)
        } else {
            match g.node_of(w) {
                Some(t) if matches!(&t.op, Op::Transpose { perm } if perm.is_empty() || perm.iter().map(|&p| norm_axis(p, 2).ok()).collect::<Vec<_>>() == [Some(1), Some(0)]) =>
                {
                    let inner = t.inputs[0];
                    match g.weight_of(inner) {
                        Some(iw) if iw.ty.enc.is_dense() && iw.ty.rank() == 2 => Src::Direct(inner),
                        _ => return Ok(None),
                    }
                }
                _ => return Ok(None),
            }
        };
        let mm = n.outputs[0];
        let Dim::Fixed(cols) = wt.shape.0[1] else {
            return Ok(None);
        };
        // + b with b [N] (or [1, .., 1, N]), used once after the product
        let mut bias: Option<ValueId> = None;
        let mut result = mm;
        if let Some(u) = g.sole_user(mm) {
            let un = &g.nodes[u];
            if un.op == Op::Binary(BinaryOp::Add) && un.inputs[0] != un.inputs[1] {
                let b = if un.inputs[0] == mm {
                    un.inputs[1]
                } else {
                    un.inputs[0]
                };
                let bt = g.ty(b);
                let shape_ok = bt.rank() >= 1
                    && bt.rank() <= g.ty(mm).rank()
                    && bt.shape.0.last() == Some(&Dim::Fixed(cols))
                    && bt.shape.0[..bt.rank() - 1]
                        .iter()
                        .all(|d| *d == Dim::Fixed(1));
                if shape_ok && bt.dtype() == xt.dtype() && bt.enc.is_dense() && g.is_param(b) {
                    bias = Some(b);
                    result = un.outputs[0];
                }
            }
        }
        let mut p = Patch::new();
        let bias_name = bias.and_then(|b| g.weight_of(b)).map(|w| w.name.clone());
        let weight: PValue = match src {
            Src::Direct(v) => v.into(),
            Src::Transpose(weight) => {
                let flipped = match weight.data.as_ref().map(|d| d.format) {
                    Some(Format::Canonical) | None => Format::Transposed,
                    Some(Format::Transposed) => Format::Canonical,
                    Some(_) => return Ok(None),
                };
                let (k, nn) = (weight.ty.shape.0[0].clone(), weight.ty.shape.0[1].clone());
                let ty = TensorType {
                    shape: llmc_ir::Shape(vec![nn, k]),
                    enc: weight.ty.enc.clone(),
                };
                let data = weight
                    .data
                    .as_ref()
                    .map(|d| WeightData::new(d.bytes.clone(), flipped, d.origin.clone()));
                let name = weight_name(&weight.name, bias_name.as_deref());
                p.weight(&name, ty, data, weight.hash ^ 0x9e37_79b9_7f4a_7c15)
            }
        };
        let mut args = vec![PValue::from(x), weight];
        if let Some(b) = bias {
            let bt = g.ty(b);
            if bt.rank() == 1 {
                args.push(b.into());
            } else if let Some(Op::Constant { value }) = g.op_of(b) {
                let t = value.clone().reshape(vec![cols as usize]);
                args.push(p.constant(t));
            } else if let Some(bw) = g.weight_of(b) {
                let ty = TensorType::fixed(&[cols as usize], bt.dtype());
                let data = match &bw.data {
                    Some(d) if d.format == Format::Canonical => Some(WeightData::new(
                        Bytes::clone(&d.bytes),
                        Format::Canonical,
                        d.origin.clone(),
                    )),
                    Some(_) => return Ok(None),
                    None => None,
                };
                args.push(p.weight(&bw.name, ty, data, bw.hash));
            } else {
                return Ok(None);
            }
        }
        let lin = p.add(Op::LINEAR, &args);
        p.replace(result, lin);
        Ok(Some(p))
    }
}
