//! Symbolic values of the small integer tensors exporters compute from shapes
//! (`Concat(Unsqueeze(Gather(Shape(x), 0)), [12], [32])`): each element is a known number or a
//! named dimension of some value.

use crate::core::rewrite::View;
use llmc_ir::ops::norm_axis;
use llmc_ir::{BinaryOp, DType, Dim, Op, SliceSpec, ValueId};

/// Elements beyond which a value is not worth tracking.
const MAX_LEN: usize = 64;
/// How far back through producers the evaluation looks.
const MAX_DEPTH: usize = 32;

/// One element of a symbolic shape value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Sym {
    Known(i64),
    /// Dimension `axis` of value `of`, which its type calls `dim`.
    Dim {
        of: ValueId,
        axis: usize,
        dim: Dim,
    },
}

impl Sym {
    /// Whether two symbolic dimensions are equal at run time whatever the inputs are.
    pub(crate) fn same_dim(&self, of: ValueId, axis: usize, dim: &Dim) -> bool {
        match self {
            Sym::Known(k) => *dim == Dim::Fixed(*k as u64) && *k >= 0,
            Sym::Dim {
                of: o,
                axis: a,
                dim: d,
            } => (*o == of && *a == axis) || (matches!(d, Dim::Sym(_)) && d == dim),
        }
    }
}

/// The symbolic value of a rank-0 or rank-1 integer (or bool) value, when it can be told.
pub(crate) fn sym_value(g: &View<'_>, v: ValueId) -> Option<Vec<Sym>> {
    eval(g, v, 0)
}

/// The value's elements when every one is known.
pub(crate) fn known(s: &[Sym]) -> Option<Vec<i64>> {
    s.iter()
        .map(|e| {
            if let Sym::Known(k) = e {
                Some(*k)
            } else {
                None
            }
        })
        .collect()
}

fn eval(g: &View<'_>, v: ValueId, depth: usize) -> Option<Vec<Sym>> {
    if depth > MAX_DEPTH {
        return None;
    }
    let ty = g.ty(v);
    let dt = ty.dtype();
    if ty.rank() > 1 || !(dt.is_int() || dt == DType::Bool) {
        return None;
    }
    if let Some(t) = g.const_value(v) {
        if t.numel() > MAX_LEN {
            return None;
        }
        return Some(t.to_i64_vec().into_iter().map(Sym::Known).collect());
    }
    let n = g.node_of(v)?;
    let arg = |i: usize| -> Option<Vec<Sym>> { eval(g, *n.inputs.get(i)?, depth + 1) };
    let out = match &n.op {
        Op::Shape { start, end } => {
            let x = n.inputs[0];
            let dims = &g.ty(x).shape.0;
            let r = dims.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let (s, e) = (clamp(*start), clamp(end.unwrap_or(r)));
            (s..e.max(s))
                .map(|i| match &dims[i] {
                    Dim::Fixed(k) => Sym::Known(*k as i64),
                    d => Sym::Dim {
                        of: x,
                        axis: i,
                        dim: d.clone(),
                    },
                })
                .collect()
        }
        Op::Gather { axis } => {
            if g.ty(n.inputs[0]).rank() != 1 || norm_axis(*axis, 1).ok()? != 0 {
                return None;
            }
            let data = arg(0)?;
            let idx = g.const_value(n.inputs[1])?;
            let len = data.len() as i64;
            idx.to_i64_vec()
                .into_iter()
                .map(|i| {
                    let j = if i < 0 { i + len } else { i };
                    (0..len).contains(&j).then(|| data[j as usize].clone())
                })
                .collect::<Option<Vec<_>>>()?
        }
        Op::Unsqueeze { .. } | Op::Squeeze { .. } | Op::Reshape { .. } | Op::Flatten { .. } => {
            arg(0)?
        }
        Op::Cast { to } => {
            let a = arg(0)?;
            match to {
                DType::Bool => a
                    .into_iter()
                    .map(|e| {
                        if let Sym::Known(k) = e {
                            Some(Sym::Known((k != 0) as i64))
                        } else {
                            None
                        }
                    })
                    .collect::<Option<_>>()?,
                t if t.is_int() => a,
                _ => return None,
            }
        }
        Op::Concat { .. } => {
            let mut all = Vec::new();
            for i in 0..n.inputs.len() {
                all.extend(arg(i)?);
            }
            all
        }
        Op::Slice { spec } => {
            let a = arg(0)?;
            let spec = match spec {
                Some(s) => s.clone(),
                None => {
                    let c = |i: usize| g.const_value(n.inputs[i]).map(|t| t.to_i64_vec());
                    let starts = c(1)?;
                    let k = starts.len();
                    SliceSpec {
                        ends: c(2)?,
                        axes: if n.inputs.len() > 3 {
                            c(3)?
                        } else {
                            (0..k as i64).collect()
                        },
                        steps: if n.inputs.len() > 4 {
                            c(4)?
                        } else {
                            vec![1; k]
                        },
                        starts,
                    }
                }
            };
            if spec.starts.len() != 1
                || spec.ends.len() != 1
                || spec.steps.len() != 1
                || spec.axes.len() != 1
                || spec.steps[0] == 0
            {
                return None;
            }
            norm_axis(spec.axes[0], 1).ok()?;
            let (s, step, len) = llmc_ir::infer::slice_range(
                a.len() as i64,
                spec.starts[0],
                spec.ends[0],
                spec.steps[0],
            );
            (0..len)
                .map(|i| a[(s + i * step) as usize].clone())
                .collect()
        }
        Op::Binary(b) => {
            let (x, y) = (arg(0)?, arg(1)?);
            let len = match (x.len(), y.len()) {
                (a, b) if a == b => a,
                (1, b) => b,
                (a, 1) => a,
                _ => return None,
            };
            (0..len)
                .map(|i| binary(*b, &x[i % x.len()], &y[i % y.len()]))
                .collect::<Option<Vec<_>>>()?
        }
        Op::Where => {
            let (c, x, y) = (arg(0)?, arg(1)?, arg(2)?);
            let len = c.len().max(x.len()).max(y.len());
            if [c.len(), x.len(), y.len()]
                .iter()
                .any(|&l| l != len && l != 1)
            {
                return None;
            }
            (0..len)
                .map(|i| match &c[i % c.len()] {
                    Sym::Known(k) => Some(if *k != 0 {
                        x[i % x.len()].clone()
                    } else {
                        y[i % y.len()].clone()
                    }),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?
        }
        Op::ConstantOfShape { value } => {
            let s = known(&arg(0)?)?;
            let n: i64 = s.iter().product();
            if s.len() > 1
                || !(0..=MAX_LEN as i64).contains(&n)
                || !(value.dtype().is_int() || value.dtype() == DType::Bool)
            {
                return None;
            }
            vec![Sym::Known(value.to_i64_vec()[0]); n as usize]
        }
        _ => return None,
    };
    (out.len() <= MAX_LEN).then_some(out)
}

fn binary(op: BinaryOp, a: &Sym, b: &Sym) -> Option<Sym> {
    use BinaryOp as B;
    if let (Sym::Known(x), Sym::Known(y)) = (a, b) {
        let (x, y) = (*x, *y);
        let r = match op {
            B::Add => x.checked_add(y)?,
            B::Sub => x.checked_sub(y)?,
            B::Mul => x.checked_mul(y)?,
            B::Div => x.checked_div(y)?,
            B::Max => x.max(y),
            B::Min => x.min(y),
            B::Equal => (x == y) as i64,
            B::Less => (x < y) as i64,
            B::LessEqual => (x <= y) as i64,
            B::Greater => (x > y) as i64,
            B::GreaterEqual => (x >= y) as i64,
            _ => return None,
        };
        return Some(Sym::Known(r));
    }
    match (op, a, b) {
        // d+0 == d, d-0 == d, d*1 == d, d/1 == d
        (B::Add | B::Sub, d @ Sym::Dim { .. }, Sym::Known(0))
        | (B::Add, Sym::Known(0), d @ Sym::Dim { .. }) => Some(d.clone()),
        (B::Mul | B::Div, d @ Sym::Dim { .. }, Sym::Known(1))
        | (B::Mul, Sym::Known(1), d @ Sym::Dim { .. }) => Some(d.clone()),
        // a dimension is never negative
        (B::Equal, Sym::Dim { .. }, Sym::Known(k)) | (B::Equal, Sym::Known(k), Sym::Dim { .. })
            if *k < 0 =>
        {
            Some(Sym::Known(0))
        }
        (B::Equal, Sym::Dim { of, axis, dim }, other)
        | (B::Equal, other, Sym::Dim { of, axis, dim })
            if other.same_dim(*of, *axis, dim) =>
        {
            Some(Sym::Known(1))
        }
        _ => None,
    }
}

/// Fills dimensions inference left unknown in the results of node `node` from the symbolic
/// values of its shape operands (`expand(x, [shape(y)[0], 5])`, a dynamic `reshape`,
/// `constant_of_shape`).
pub(crate) fn refine(g: &View<'_>, node: usize, types: &mut [llmc_ir::TensorType]) {
    let n = &g.nodes[node];
    // A slice with run-time bounds keeps the dimensions its axes leave alone.
    if let Op::Slice { spec: None } = &n.op {
        let xd = &g.ty(n.inputs[0]).shape.0;
        let axes: Option<Vec<i64>> = match n.inputs.get(3) {
            Some(a) => g.const_value(*a).map(|t| t.to_i64_vec()),
            None => g
                .ty(n.inputs[1])
                .shape
                .0
                .first()
                .and_then(|d| d.fixed())
                .map(|k| (0..k as i64).collect()),
        };
        let (Some(axes), Some(ty)) = (axes, types.first_mut()) else {
            return;
        };
        let cut: Option<Vec<usize>> = axes.iter().map(|&a| norm_axis(a, xd.len()).ok()).collect();
        if let Some(cut) = cut {
            for (i, d) in xd.iter().enumerate() {
                if !cut.contains(&i) && ty.shape.0.get(i) == Some(&Dim::Any) {
                    ty.shape.0[i] = d.clone();
                }
            }
        }
        return;
    }
    let (target, x_dims): (usize, Option<&[Dim]>) = match &n.op {
        Op::Expand { shape: None } => (1, Some(&g.ty(n.inputs[0]).shape.0)),
        Op::Reshape { shape: None } => (1, None),
        Op::ConstantOfShape { .. } => (0, None),
        _ => return,
    };
    let Some(ty) = types.first_mut() else { return };
    let Some(s) = n.inputs.get(target).and_then(|v| sym_value(g, *v)) else {
        return;
    };
    let r = ty.rank();
    if s.len() > r {
        return;
    }
    let off = r - s.len();
    for (j, e) in s.iter().enumerate() {
        let slot = &mut ty.shape.0[off + j];
        if *slot != Dim::Any {
            continue;
        }
        let want = match e {
            Sym::Known(k) if *k > 0 && x_dims.is_none() => Dim::Fixed(*k as u64),
            Sym::Dim {
                dim: d @ Dim::Sym(_),
                ..
            } => d.clone(),
            _ => continue,
        };
        match x_dims {
            // broadcasting against the operand: its dimension must be 1 or the same symbol
            Some(xd) => {
                let xi = (off + j) as i64 - (r - xd.len()) as i64;
                let ok = xi < 0 || xd[xi as usize] == Dim::Fixed(1) || xd[xi as usize] == want;
                if ok {
                    *slot = want;
                }
            }
            None => *slot = want,
        }
    }
}
