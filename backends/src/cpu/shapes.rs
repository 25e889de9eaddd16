//! Shapes at build time: every value's dimensions as [`Size`] polynomials of the bundle's
//! run-time symbols, and the element values of the small integer tensors that shape
//! arithmetic computes (so `reshape(x, concat(shape(x)[0], 12))` has a known shape).

use super::size::{Size, Sym};
use super::BackendError;
use llmc_ir::infer::slice_range;
use llmc_ir::ops::{norm_axis, AxisError};
use llmc_ir::{BinaryOp, DType, Dim, Graph, Op, ValueDef};

/// The run-time symbols of a bundle and the largest value each may take.
#[derive(Clone, Debug, Default)]
pub struct Symbols {
    pub names: Vec<String>,
    pub max: Vec<i64>,
}

impl Symbols {
    pub fn add(&mut self, name: &str, max: i64) -> Sym {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return i as Sym;
        }
        self.names.push(name.to_string());
        self.max.push(max);
        (self.names.len() - 1) as Sym
    }

    pub fn find(&self, name: &str) -> Option<Sym> {
        self.names.iter().position(|n| n == name).map(|i| i as Sym)
    }
}

/// What is known of one value at build time.
#[derive(Clone, Debug, Default)]
pub struct VShape {
    pub dims: Vec<Size>,
    /// Element values of a small integer tensor (rank 0 or 1), when known.
    pub value: Option<Vec<Size>>,
}

impl VShape {
    pub fn numel(&self) -> Size {
        Size::product(&self.dims)
    }
}

/// How input dimensions bind to symbols: the `seq` input dimension of a decoder is the
/// tokens of this call; `cache` is the symbol of tokens already in the KV cache.
pub struct Binding<'a> {
    pub dim: &'a dyn Fn(&Dim) -> Option<Size>,
    pub cache: Option<Sym>,
}

const MAX_VALUE_LEN: usize = 64;

fn err(g: &Graph, names: &[String], i: usize, msg: impl Into<String>) -> BackendError {
    BackendError::Unsupported(format!("{}: {}", g.describe_node(names, i), msg.into()))
}

fn fixed_dims(dims: &[Dim]) -> Option<Vec<Size>> {
    dims.iter()
        .map(|d| d.fixed().map(|n| Size::c(n as i64)))
        .collect()
}

/// Propagates shapes through the graph.
pub fn propagate(g: &Graph, bind: &Binding<'_>) -> Result<Vec<VShape>, BackendError> {
    let names = g.value_names();
    let mut sh: Vec<VShape> = vec![VShape::default(); g.values.len()];
    for (name, v) in &g.inputs {
        let ty = g.ty(*v);
        let dims: Option<Vec<Size>> = ty.shape.0.iter().map(|d| (bind.dim)(d)).collect();
        sh[v.0 as usize].dims = dims.ok_or_else(|| {
            BackendError::Unsupported(format!(
                "input '{name}' has type {ty}: every input dimension must be fixed or a named symbol (e.g. {{seq}})"
            ))
        })?;
    }
    for w in &g.weights {
        if let ValueDef::Weight(_) = g.def(w.value) {
            sh[w.value.0 as usize].dims =
                fixed_dims(&w.ty.shape.0).expect("weights have fixed shapes");
        }
    }
    for (i, n) in g.nodes.iter().enumerate() {
        let a: Vec<&VShape> = n.inputs.iter().map(|v| &sh[v.0 as usize]).collect();
        let outs = node_shapes(g, &names, i, &n.op, &a, bind)?;
        for (o, s) in n.outputs.iter().zip(outs) {
            sh[o.0 as usize] = s;
        }
    }
    Ok(sh)
}

fn bcast(x: &Size, y: &Size) -> Option<Size> {
    if x == y || y.as_const() == Some(1) {
        Some(x.clone())
    } else if x.as_const() == Some(1) {
        Some(y.clone())
    } else {
        None
    }
}

/// Numpy broadcasting of symbolic shapes; `None` when it cannot be proven.
pub fn broadcast(a: &[Size], b: &[Size]) -> Option<Vec<Size>> {
    let r = a.len().max(b.len());
    let one = Size::c(1);
    (0..r)
        .map(|i| {
            let x = if i + a.len() >= r {
                &a[i + a.len() - r]
            } else {
                &one
            };
            let y = if i + b.len() >= r {
                &b[i + b.len() - r]
            } else {
                &one
            };
            bcast(x, y)
        })
        .collect()
}

fn shape_from_value(v: &Option<Vec<Size>>) -> Option<Vec<Size>> {
    v.clone()
}

/// Resolves a reshape target of symbolic sizes (0 copies, -1 infers).
fn reshape(x: &[Size], target: &[Size]) -> Option<Vec<Size>> {
    let total = Size::product(x);
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, t) in target.iter().enumerate() {
        match t.as_const() {
            Some(0) => out.push(x.get(i)?.clone()),
            Some(-1) => {
                infer = Some(i);
                out.push(Size::c(1));
            }
            Some(c) if c < 0 => return None,
            _ => out.push(t.clone()),
        }
    }
    if let Some(i) = infer {
        out[i] = total.div(&Size::product(&out))?;
    } else if Size::product(&out) != total {
        return None;
    }
    Some(out)
}

fn binary_value(op: BinaryOp, a: &[Size], b: &[Size]) -> Option<Vec<Size>> {
    let n = a.len().max(b.len());
    if !(a.len() == n || a.len() == 1) || !(b.len() == n || b.len() == 1) {
        return None;
    }
    (0..n)
        .map(|i| {
            let (x, y) = (&a[i.min(a.len() - 1)], &b[i.min(b.len() - 1)]);
            match op {
                BinaryOp::Add => Some(x.add(y)),
                BinaryOp::Sub => Some(x.sub(y)),
                BinaryOp::Mul => Some(x.mul(y)),
                // integer division truncates toward zero, as the interpreter's
                BinaryOp::Div => match (x.as_const(), y.as_const()) {
                    (Some(p), Some(q)) => p.checked_div(q).map(Size::c),
                    _ => x.div(y),
                },
                BinaryOp::Max | BinaryOp::Min => match (x.as_const(), y.as_const()) {
                    (Some(p), Some(q)) => Some(Size::c(if op == BinaryOp::Max {
                        p.max(q)
                    } else {
                        p.min(q)
                    })),
                    _ if x == y => Some(x.clone()),
                    _ => None,
                },
                _ => None,
            }
        })
        .collect()
}

/// Length of a slice of a symbolic dimension, when it can be proven.
fn slice_len(dim: &Size, start: &Size, end: &Size, step: i64) -> Option<Size> {
    if let (Some(n), Some(s), Some(e)) = (dim.as_const(), start.as_const(), end.as_const()) {
        return Some(Size::c(slice_range(n, s, e, step).2));
    }
    if step != 1 {
        return None;
    }
    let s = start.as_const()?;
    if s < 0 {
        // x[-k:] of a dimension known to hold at least k
        return (end.as_const()? >= i32::MAX as i64).then(|| Size::c(-s));
    }
    match end.as_const() {
        Some(e) if e >= i32::MAX as i64 => Some(dim.sub(&Size::c(s))),
        Some(e) if e < 0 => Some(dim.add(&Size::c(e - s))),
        // a symbolic end is taken to lie within the dimension (exporters slice buffers to a length)
        _ => Some(end.sub(&Size::c(s))),
    }
}

fn node_shapes(
    g: &Graph,
    names: &[String],
    i: usize,
    op: &Op,
    a: &[&VShape],
    bind: &Binding<'_>,
) -> Result<Vec<VShape>, BackendError> {
    let n = &g.nodes[i];
    let e = |m: &str| err(g, names, i, m);
    let one = |dims: Vec<Size>| Ok(vec![VShape { dims, value: None }]);
    let x = a.first().copied();
    let is_int_small = |dims: &[Size]| {
        let dt = g.ty(n.outputs[0]).dtype();
        (dt.is_int() || dt == DType::Bool)
            && dims.len() <= 1
            && dims
                .iter()
                .all(|d| d.as_const().is_some_and(|c| c as usize <= MAX_VALUE_LEN))
    };
    match op {
        Op::Constant { value } => {
            let dims: Vec<Size> = value.shape.iter().map(|&d| Size::c(d as i64)).collect();
            let v = (value.dtype().is_int() || value.dtype() == DType::Bool)
                && value.rank() <= 1
                && value.numel() <= MAX_VALUE_LEN;
            Ok(vec![VShape {
                value: v.then(|| value.to_i64_vec().into_iter().map(Size::c).collect()),
                dims,
            }])
        }
        Op::Unary(u) => {
            let x = x.unwrap();
            let value = match u {
                llmc_ir::UnaryOp::Neg => x
                    .value
                    .as_ref()
                    .map(|v| v.iter().map(|s| s.neg()).collect()),
                _ => None,
            };
            Ok(vec![VShape {
                dims: x.dims.clone(),
                value,
            }])
        }
        Op::Cast { to } => {
            let x = x.unwrap();
            Ok(vec![VShape {
                dims: x.dims.clone(),
                value: if to.is_int() { x.value.clone() } else { None },
            }])
        }
        Op::Clip { .. }
        | Op::Softmax { .. }
        | Op::LogSoftmax { .. }
        | Op::LayerNorm { .. }
        | Op::RmsNorm { .. }
        | Op::Rope { .. } => one(x.unwrap().dims.clone()),
        Op::Binary(b) => {
            let dims = broadcast(&a[0].dims, &a[1].dims)
                .ok_or_else(|| e("cannot prove the operand shapes broadcast"))?;
            let value = match (&a[0].value, &a[1].value) {
                (Some(p), Some(q)) if is_int_small(&dims) => binary_value(*b, p, q),
                _ => None,
            };
            Ok(vec![VShape { dims, value }])
        }
        Op::Where => {
            let d = broadcast(&a[0].dims, &a[1].dims).and_then(|d| broadcast(&d, &a[2].dims));
            one(d.ok_or_else(|| e("cannot prove the operand shapes broadcast"))?)
        }
        Op::MatMul => {
            let (mut sa, mut sb) = (a[0].dims.clone(), a[1].dims.clone());
            let (a1, b1) = (sa.len() == 1, sb.len() == 1);
            if a1 {
                sa.insert(0, Size::c(1));
            }
            if b1 {
                sb.push(Size::c(1));
            }
            let batch = broadcast(&sa[..sa.len() - 2], &sb[..sb.len() - 2])
                .ok_or_else(|| e("cannot prove the batch dimensions broadcast"))?;
            let mut d = batch;
            if !a1 {
                d.push(sa[sa.len() - 2].clone());
            }
            if !b1 {
                d.push(sb[sb.len() - 1].clone());
            }
            one(d)
        }
        Op::Linear { .. } => {
            let mut d = a[0].dims.clone();
            *d.last_mut().ok_or_else(|| e("input has no dimension"))? = a[1].dims[0].clone();
            one(d)
        }
        Op::Reduce { axes, keepdims, .. } => {
            one(reduce_dims(&x.unwrap().dims, axes, *keepdims).map_err(|m| e(&m.to_string()))?)
        }
        Op::ArgMax { axis, keepdims } => {
            one(reduce_dims(&x.unwrap().dims, &[*axis], *keepdims)
                .map_err(|m| e(&m.to_string()))?)
        }
        Op::Gather { axis } => {
            let (d, idx) = (a[0], a[1]);
            let ax = norm_axis(*axis, d.dims.len()).map_err(|m| e(&m.to_string()))?;
            let mut dims = d.dims[..ax].to_vec();
            dims.extend(idx.dims.iter().cloned());
            dims.extend(d.dims[ax + 1..].iter().cloned());
            let value = match (&d.value, &idx.value) {
                (Some(dv), Some(iv)) if d.dims.len() == 1 => iv
                    .iter()
                    .map(|k| {
                        let k = k.as_const()?;
                        let k = if k < 0 { k + dv.len() as i64 } else { k };
                        dv.get(usize::try_from(k).ok()?).cloned()
                    })
                    .collect(),
                _ => None,
            };
            Ok(vec![VShape { dims, value }])
        }
        Op::Reshape { shape } => {
            let target: Vec<Size> = match shape {
                Some(s) => s.iter().map(|&d| Size::c(d)).collect(),
                None => shape_from_value(&a[1].value).ok_or_else(|| {
                    e("the target shape is computed from data the build cannot see")
                })?,
            };
            let dims = reshape(&x.unwrap().dims, &target)
                .ok_or_else(|| e("cannot prove the reshape keeps the element count"))?;
            Ok(vec![VShape {
                dims,
                value: x.unwrap().value.clone(),
            }])
        }
        Op::Transpose { perm } => {
            let x = x.unwrap();
            let r = x.dims.len();
            let p: Vec<usize> = if perm.is_empty() {
                (0..r).rev().collect()
            } else {
                perm.iter()
                    .map(|&p| norm_axis(p, r))
                    .collect::<Result<_, _>>()
                    .map_err(|m| e(&m.to_string()))?
            };
            one(p.iter().map(|&k| x.dims[k].clone()).collect())
        }
        Op::Concat { axis } => {
            let ax = norm_axis(*axis, a[0].dims.len()).map_err(|m| e(&m.to_string()))?;
            let mut dims = a[0].dims.clone();
            dims[ax] = a.iter().fold(Size::c(0), |s, p| s.add(&p.dims[ax]));
            let value = if a.iter().all(|p| p.value.is_some()) && dims.len() == 1 {
                Some(a.iter().flat_map(|p| p.value.clone().unwrap()).collect())
            } else {
                None
            };
            Ok(vec![VShape { dims, value }])
        }
        Op::Split { axis, sizes } => {
            let x = x.unwrap();
            let ax = norm_axis(*axis, x.dims.len()).map_err(|m| e(&m.to_string()))?;
            let mut start = 0usize;
            Ok(sizes
                .iter()
                .map(|&s| {
                    let mut dims = x.dims.clone();
                    dims[ax] = Size::c(s);
                    let value = x
                        .value
                        .as_ref()
                        .filter(|_| x.dims.len() == 1)
                        .map(|v| v[start..start + s as usize].to_vec());
                    start += s as usize;
                    VShape { dims, value }
                })
                .collect())
        }
        Op::Slice { spec } => {
            let x = x.unwrap();
            let r = x.dims.len();
            let (starts, ends, axes, steps): (Vec<Size>, Vec<Size>, Vec<i64>, Vec<i64>) = match spec
            {
                Some(s) => (
                    s.starts.iter().map(|&v| Size::c(v)).collect(),
                    s.ends.iter().map(|&v| Size::c(v)).collect(),
                    s.axes.clone(),
                    s.steps.clone(),
                ),
                None => {
                    let get = |k: usize| a.get(k).and_then(|v| v.value.clone());
                    let starts = get(1).ok_or_else(|| {
                        e("slice starts are computed from data the build cannot see")
                    })?;
                    let ends = get(2).ok_or_else(|| {
                        e("slice ends are computed from data the build cannot see")
                    })?;
                    let axes = match get(3) {
                        Some(v) => v
                            .iter()
                            .map(|s| s.as_const())
                            .collect::<Option<Vec<_>>>()
                            .ok_or_else(|| e("slice axes must be known"))?,
                        None => (0..starts.len() as i64).collect(),
                    };
                    let steps = match get(4) {
                        Some(v) => v
                            .iter()
                            .map(|s| s.as_const())
                            .collect::<Option<Vec<_>>>()
                            .ok_or_else(|| e("slice steps must be known"))?,
                        None => vec![1; starts.len()],
                    };
                    (starts, ends, axes, steps)
                }
            };
            let mut dims = x.dims.clone();
            let mut value = x.value.clone();
            for k in 0..starts.len() {
                let ax = norm_axis(axes[k], r).map_err(|m| e(&m.to_string()))?;
                dims[ax] = slice_len(&x.dims[ax], &starts[k], &ends[k], steps[k])
                    .ok_or_else(|| e("cannot tell the slice's length at build time"))?;
                if let (Some(v), Some(s), Some(en)) =
                    (&value, starts[k].as_const(), ends[k].as_const())
                {
                    let (s, st, len) = slice_range(v.len() as i64, s, en, steps[k]);
                    value = Some((0..len).map(|j| v[(s + j * st) as usize].clone()).collect());
                } else {
                    value = None;
                }
            }
            Ok(vec![VShape {
                dims,
                value: value.filter(|_| r == 1),
            }])
        }
        Op::Squeeze { axes } => {
            let x = x.unwrap();
            let r = x.dims.len();
            let mut drop = vec![false; r];
            if axes.is_empty() {
                for (k, d) in x.dims.iter().enumerate() {
                    drop[k] = d.as_const() == Some(1);
                }
            }
            for &ax in axes {
                drop[norm_axis(ax, r).map_err(|m| e(&m.to_string()))?] = true;
            }
            let dims = x
                .dims
                .iter()
                .zip(&drop)
                .filter(|(_, &d)| !d)
                .map(|(s, _)| s.clone())
                .collect();
            Ok(vec![VShape {
                dims,
                value: x.value.clone(),
            }])
        }
        Op::Unsqueeze { axes } => {
            let x = x.unwrap();
            let r = x.dims.len() + axes.len();
            let mut ins = vec![false; r];
            for &ax in axes {
                ins[norm_axis(ax, r).map_err(|m| e(&m.to_string()))?] = true;
            }
            let mut src = x.dims.iter();
            let dims: Vec<Size> = ins
                .iter()
                .map(|&k| {
                    if k {
                        Size::c(1)
                    } else {
                        src.next().unwrap().clone()
                    }
                })
                .collect();
            let value = x.value.clone().filter(|_| dims.len() <= 1);
            Ok(vec![VShape { dims, value }])
        }
        Op::Expand { shape } => {
            let target: Vec<Size> = match shape {
                Some(s) => s.iter().map(|&d| Size::c(d)).collect(),
                None => shape_from_value(&a[1].value).ok_or_else(|| {
                    e("the target shape is computed from data the build cannot see")
                })?,
            };
            one(broadcast(&x.unwrap().dims, &target)
                .ok_or_else(|| e("cannot prove the shapes broadcast"))?)
        }
        Op::Flatten { axis } => {
            let x = x.unwrap();
            let r = x.dims.len() as i64;
            let ax = (if *axis < 0 { axis + r } else { *axis }) as usize;
            one(vec![
                Size::product(&x.dims[..ax]),
                Size::product(&x.dims[ax..]),
            ])
        }
        Op::Tile { repeats } => {
            let reps: Vec<Size> = match repeats {
                Some(r) => r.iter().map(|&d| Size::c(d)).collect(),
                None => shape_from_value(&a[1].value)
                    .ok_or_else(|| e("repeats are computed from data the build cannot see"))?,
            };
            one(x
                .unwrap()
                .dims
                .iter()
                .zip(&reps)
                .map(|(d, r)| d.mul(r))
                .collect())
        }
        Op::Shape { start, end } => {
            let x = x.unwrap();
            let r = x.dims.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let (s, en) = (clamp(*start), clamp(end.unwrap_or(r)));
            let v: Vec<Size> = x.dims[s..en.max(s)].to_vec();
            Ok(vec![VShape {
                dims: vec![Size::c(v.len() as i64)],
                value: Some(v),
            }])
        }
        Op::ConstantOfShape { value } => {
            let dims = shape_from_value(&a[0].value)
                .ok_or_else(|| e("the shape is computed from data the build cannot see"))?;
            let v = (value.dtype().is_int()
                && dims.len() == 1
                && dims[0]
                    .as_const()
                    .is_some_and(|c| c as usize <= MAX_VALUE_LEN))
            .then(|| vec![Size::c(value.to_i64_vec()[0]); dims[0].as_const().unwrap() as usize]);
            Ok(vec![VShape { dims, value: v }])
        }
        Op::Range if g.ty(n.outputs[0]).dtype().is_float() => {
            let (s, l, d) = float_range(g, &n.inputs)
                .ok_or_else(|| e("float range bounds must be constants"))?;
            if d == 0.0 {
                return Err(e("range delta must not be 0"));
            }
            one(vec![Size::c(((l - s) / d).ceil().max(0.0) as i64)])
        }
        Op::Range => {
            let get = |k: usize| a[k].value.as_ref().and_then(|v| v.first().cloned());
            let (s, l, d) = (get(0), get(1), get(2));
            let (Some(s), Some(l), Some(d)) = (s, l, d) else {
                return Err(e(
                    "range bounds must be known at build time (up to the bundle's symbols)",
                ));
            };
            let len = match (s.as_const(), l.as_const(), d.as_const()) {
                (Some(s), Some(l), Some(d)) if d != 0 => {
                    Size::c(((l - s) as f64 / d as f64).ceil().max(0.0) as i64)
                }
                (_, _, Some(1)) => l.sub(&s),
                _ => return Err(e("range length cannot be told at build time")),
            };
            one(vec![len])
        }
        Op::Attention { .. } => {
            let mut d = a[0].dims.clone();
            d[3] = a[2].dims[3].clone();
            one(d)
        }
        Op::CacheConcat { axis, .. } => {
            let x = x.unwrap();
            let ax = norm_axis(*axis, x.dims.len()).map_err(|m| e(&m.to_string()))?;
            let cache = bind
                .cache
                .ok_or_else(|| e("this graph has a KV cache but the bundle kind has none"))?;
            let mut dims = x.dims.clone();
            dims[ax] = x.dims[ax].add(&Size::sym(cache));
            one(dims)
        }
    }
}

/// Start, limit and delta of a range whose operands are constants, as f64.
pub fn float_range(g: &Graph, inputs: &[llmc_ir::ValueId]) -> Option<(f64, f64, f64)> {
    let producers = g.producers();
    let c = |k: usize| {
        g.const_value_with(&producers, *inputs.get(k)?)
            .and_then(|t| t.data.to_f64().first().copied())
    };
    Some((c(0)?, c(1)?, c(2)?))
}

fn reduce_dims(x: &[Size], axes: &[i64], keepdims: bool) -> Result<Vec<Size>, AxisError> {
    let r = x.len();
    let mut red = vec![axes.is_empty(); r];
    for &ax in axes {
        red[norm_axis(ax, r)?] = true;
    }
    Ok(x.iter()
        .zip(&red)
        .filter_map(|(d, &k)| match (k, keepdims) {
            (false, _) => Some(d.clone()),
            (true, true) => Some(Size::c(1)),
            (true, false) => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbolic_reshape_and_slices() {
        let t = Size::sym(0);
        let x = vec![Size::c(1), t.clone(), Size::c(576)];
        let r = reshape(&x, &[Size::c(0), Size::c(0), Size::c(9), Size::c(-1)]).unwrap();
        assert_eq!(r[3], Size::c(64));
        assert_eq!(r[1], t);
        assert!(reshape(&x, &[Size::c(5), Size::c(-1)]).is_none());
        assert_eq!(slice_len(&Size::c(512), &Size::c(0), &t, 1).unwrap(), t);
        assert_eq!(
            slice_len(&t, &Size::c(1), &Size::c(i64::MAX), 1).unwrap(),
            t.sub(&Size::c(1))
        );
        assert_eq!(
            slice_len(&Size::c(10), &Size::c(-3), &Size::c(i64::MAX), 1).unwrap(),
            Size::c(3)
        );
    }
}
