//! Shape and type inference: the result types of an op from its operand types (and the
//! values of constant operands, where an op takes its parameters as operands).

use crate::ops::{norm_axis, AxisError, BinaryOp, Op, SliceSpec, UnaryOp};
use crate::tensor::Tensor;
use crate::types::{DType, Dim, Encoding, Shape, TensorType};

type R<T> = Result<T, InferError>;

/// Why an op does not accept operands of these types. Callers add the op and where it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InferError {
    #[error("takes {} operands, got {got}", arity_text(*min, *max))]
    Arity {
        min: usize,
        max: Option<usize>,
        got: usize,
    },
    #[error(
        "operand {index} is an encoded weight ({enc}); only linear, matmul and gather read those"
    )]
    EncodedOperand { index: usize, enc: Encoding },
    /// An operand of an element type the op does not take (`what`: condition, indices, ...).
    #[error("{what} must be {expected}, got {found}")]
    DType {
        what: &'static str,
        expected: &'static str,
        found: DType,
    },
    /// Operands that must share an element type but do not.
    #[error("{what} types differ: {a} and {b}")]
    DTypesDiffer {
        what: &'static str,
        a: DType,
        b: DType,
    },
    /// An operand of the wrong rank or layout (`expected` reads after "must be").
    #[error("{what} must be {expected}, got {found}")]
    Operand {
        what: &'static str,
        expected: &'static str,
        found: TensorType,
    },
    #[error(transparent)]
    Axis(#[from] AxisError),
    #[error("axis {axis} repeats")]
    RepeatedAxis { axis: usize },
    #[error("shapes {a} and {b} do not broadcast: dimensions {left} and {right} differ")]
    Broadcast {
        a: Shape,
        b: Shape,
        left: u64,
        right: u64,
    },
    #[error("inner dimensions differ: {a} times {b}")]
    InnerDims { a: TensorType, b: TensorType },
    #[error("input has {features} features but the weight {weight} takes {takes}")]
    Features {
        features: Dim,
        weight: TensorType,
        takes: Dim,
    },
    #[error("bias {bias} does not match {outputs} outputs")]
    Bias { bias: TensorType, outputs: Dim },
    /// A layer or RMS norm's scale or bias that does not fit the normalized dimensions.
    #[error("{what} {found} does not fit the normalized dimensions {norm}")]
    NormParam {
        what: &'static str,
        found: TensorType,
        norm: Shape,
    },
    #[error("operand {index} is {found} but operand 0 is {first}{}", dim.map(|d| format!(": dimension {d} differs")).unwrap_or_default())]
    Concat {
        index: usize,
        found: TensorType,
        first: TensorType,
        /// The dimension that differs, when rank and element type agree.
        dim: Option<usize>,
    },
    #[error("split sizes must be non-negative, got {sizes:?}")]
    NegativeSplit { sizes: Vec<i64> },
    #[error("split sizes {sizes:?} add up to {sum}, not {dim}")]
    SplitSum { sizes: Vec<i64>, sum: i64, dim: u64 },
    #[error("squeeze without axes cannot tell whether dimension {axis} ({dim}) is 1")]
    SqueezeUnknown { axis: usize, dim: Dim },
    #[error("cannot squeeze dimension {axis} of size {dim}")]
    SqueezeNotOne { axis: usize, dim: Dim },
    #[error("{repeats} repeats for rank {rank}")]
    TileRepeats { repeats: usize, rank: usize },
    #[error("value must hold one element, not {numel}")]
    FillValue { numel: usize },
    /// A step or delta of 0 (`what`: slice step, range delta).
    #[error("{what} must not be 0")]
    ZeroStep { what: &'static str },
    #[error("the shape operand's length must be known, got {found}")]
    UnknownShapeLength { found: TensorType },
    #[error(transparent)]
    Reshape(#[from] ReshapeError),
    #[error("permutation {perm:?} has {} entries for rank {rank}", perm.len())]
    PermLength { perm: Vec<i64>, rank: usize },
    #[error("{perm:?} is not a permutation")]
    NotPermutation { perm: Vec<i64> },
    #[error("starts, ends, axes and steps must have one length, not {starts}, {ends}, {axes} and {steps}")]
    SliceLengths {
        starts: usize,
        ends: usize,
        axes: usize,
        steps: usize,
    },
    #[error("rotary dims {dims} must be even and at most the head size {head}")]
    RotaryDims { dims: i64, head: u64 },
    #[error("head size {head} must be even")]
    OddHeadSize { head: u64 },
    #[error("{heads} query heads are not a multiple of {kv_heads} key/value heads")]
    Heads { heads: u64, kv_heads: u64 },
    #[error("q head size {q} differs from k head size {k}")]
    HeadSize { q: Dim, k: Dim },
    #[error("k {k} and v {v} differ in heads or length")]
    KeysValues { k: TensorType, v: TensorType },
}

fn arity_text(min: usize, max: Option<usize>) -> String {
    match max {
        Some(h) if h == min => format!("{min}"),
        Some(h) => format!("{min} to {h}"),
        None => format!("at least {min}"),
    }
}

/// Why a reshape target does not fit a shape (shared by inference and the interpreter).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReshapeError {
    #[error("0 at position {index} copies a dimension {shape} lacks")]
    CopiesMissing { index: usize, shape: Shape },
    #[error("target {target:?} has more than one -1")]
    TwoInferred { target: Vec<i64> },
    #[error("invalid target dimension {dim} in {target:?}")]
    BadDim { dim: i64, target: Vec<i64> },
    #[error("cannot reshape {shape} to {target:?}")]
    NotDivisible { shape: Shape, target: Vec<i64> },
    #[error("cannot reshape {shape} ({from} elements) to {target:?} ({to} elements)")]
    Count {
        shape: Shape,
        from: u64,
        target: Vec<i64>,
        to: u64,
    },
}

/// Whether inference of this op looks at constant operand values.
pub fn reads_const_operands(op: &Op) -> bool {
    matches!(
        op,
        Op::Reshape { shape: None }
            | Op::Expand { shape: None }
            | Op::Tile { repeats: None }
            | Op::Slice { spec: None }
            | Op::ConstantOfShape { .. }
            | Op::Range
    )
}

/// Result types of `op` applied to operands of types `t`; `consts[i]` is operand i's value when
/// it is a constant. The error says what does not fit.
pub fn infer(op: &Op, t: &[&TensorType], consts: &[Option<&Tensor>]) -> R<Vec<TensorType>> {
    let (lo, hi) = op.arity();
    if t.len() < lo || hi.is_some_and(|h| t.len() > h) {
        return Err(InferError::Arity {
            min: lo,
            max: hi,
            got: t.len(),
        });
    }
    for (i, ty) in t.iter().enumerate() {
        if !ty.enc.is_dense() && !op.accepts_encoded(i) {
            return Err(InferError::EncodedOperand {
                index: i,
                enc: ty.enc.clone(),
            });
        }
    }
    let one = |shape: Shape, dtype: DType| Ok(vec![TensorType::new(shape, dtype)]);
    let x = t.first().copied();
    match op {
        Op::Constant { value } => one(Shape::fixed(&value.shape), value.dtype()),
        Op::Unary(u) => {
            let x = x.unwrap();
            let d = x.dtype();
            let expected = match u {
                UnaryOp::Not if d != DType::Bool => Some("bool"),
                UnaryOp::Not => None,
                _ if u.float_only() && !d.is_float() => Some("float"),
                _ if d == DType::Bool => Some("a number"),
                _ => None,
            };
            if let Some(expected) = expected {
                return Err(dtype("operand", expected, d));
            }
            one(x.shape.clone(), d)
        }
        Op::Binary(b) => {
            let (a, c) = (t[0], t[1]);
            if a.dtype() != c.dtype() {
                return Err(InferError::DTypesDiffer {
                    what: "operand",
                    a: a.dtype(),
                    b: c.dtype(),
                });
            }
            if b.is_logical() && a.dtype() != DType::Bool {
                return Err(dtype("operands", "bool", a.dtype()));
            }
            if !b.is_logical() && !b.is_comparison() && a.dtype() == DType::Bool {
                return Err(dtype("operands", "numbers", a.dtype()));
            }
            let shape = broadcast(&a.shape, &c.shape)?;
            let d = if b.is_comparison() || b.is_logical() {
                DType::Bool
            } else {
                a.dtype()
            };
            if *b == BinaryOp::Pow && !d.is_float() && !d.is_int() {
                return Err(dtype("operands", "numbers", d));
            }
            one(shape, d)
        }
        Op::Where => {
            if t[0].dtype() != DType::Bool {
                return Err(dtype("condition", "bool", t[0].dtype()));
            }
            if t[1].dtype() != t[2].dtype() {
                return Err(InferError::DTypesDiffer {
                    what: "branch",
                    a: t[1].dtype(),
                    b: t[2].dtype(),
                });
            }
            let s = broadcast(&broadcast(&t[0].shape, &t[1].shape)?, &t[2].shape)?;
            one(s, t[1].dtype())
        }
        Op::Cast { to } => one(x.unwrap().shape.clone(), *to),
        Op::Clip { .. } => same(x.unwrap()),
        Op::MatMul => matmul(t[0], t[1]),
        Op::Linear { .. } => {
            let (x, w) = (t[0], t[1]);
            if w.rank() != 2 {
                return Err(operand("weight", "2-D [out, in]", w));
            }
            if x.rank() == 0 {
                return Err(operand("input", "at least 1-D", x));
            }
            let k = x.shape.0.last().unwrap();
            if !dims_may_equal(k, &w.shape.0[1]) {
                return Err(InferError::Features {
                    features: k.clone(),
                    weight: w.clone(),
                    takes: w.shape.0[1].clone(),
                });
            }
            if let Some(b) = t.get(2) {
                if b.rank() != 1 || !dims_may_equal(&b.shape.0[0], &w.shape.0[0]) {
                    return Err(InferError::Bias {
                        bias: (*b).clone(),
                        outputs: w.shape.0[0].clone(),
                    });
                }
            }
            if !x.dtype().is_float() {
                return Err(dtype("input", "float", x.dtype()));
            }
            let mut s = x.shape.clone();
            *s.0.last_mut().unwrap() = w.shape.0[0].clone();
            one(s, x.dtype())
        }
        Op::Softmax { axis } | Op::LogSoftmax { axis } => {
            let x = x.unwrap();
            norm_axis(*axis, x.rank())?;
            float("input", x)?;
            same(x)
        }
        Op::LayerNorm { axis, .. } | Op::RmsNorm { axis, .. } => {
            let x = x.unwrap();
            let a = norm_axis(*axis, x.rank())?;
            float("input", x)?;
            let norm = &x.shape.0[a..];
            for (i, p) in t[1..].iter().enumerate() {
                let ok = p.rank() <= norm.len()
                    && p.shape
                        .0
                        .iter()
                        .rev()
                        .zip(norm.iter().rev())
                        .all(|(a, b)| dims_may_equal(a, b) || *a == Dim::Fixed(1));
                if !ok {
                    return Err(InferError::NormParam {
                        what: ["scale", "bias"][i],
                        found: (*p).clone(),
                        norm: Shape(norm.to_vec()),
                    });
                }
            }
            same(x)
        }
        Op::Reduce { axes, keepdims, .. } => {
            let x = x.unwrap();
            let s = reduce_shape(&x.shape, axes, *keepdims)?;
            one(s, x.dtype())
        }
        Op::ArgMax { axis, keepdims } => {
            let x = x.unwrap();
            let s = reduce_shape(&x.shape, &[*axis], *keepdims)?;
            one(s, DType::I64)
        }
        Op::Gather { axis } => {
            let (d, i) = (t[0], t[1]);
            if !i.dtype().is_int() {
                return Err(dtype("indices", "integers", i.dtype()));
            }
            let a = norm_axis(*axis, d.rank())?;
            let mut s = d.shape.0[..a].to_vec();
            s.extend(i.shape.0.iter().cloned());
            s.extend(d.shape.0[a + 1..].iter().cloned());
            one(Shape(s), d.dtype())
        }
        Op::Reshape { shape } => {
            let x = x.unwrap();
            let target = match shape {
                Some(s) => s.clone(),
                None => match consts.get(1).copied().flatten() {
                    Some(c) => c.to_i64_vec(),
                    None => return one(unknown_shape_of_len(t[1])?, x.dtype()),
                },
            };
            one(reshape(&x.shape, &target)?, x.dtype())
        }
        Op::Transpose { perm } => {
            let x = x.unwrap();
            let p = perm_of(perm, x.rank())?;
            one(
                Shape(p.iter().map(|&i| x.shape.0[i].clone()).collect()),
                x.dtype(),
            )
        }
        Op::Concat { axis } => {
            let x0 = t[0];
            let a = norm_axis(*axis, x0.rank())?;
            let mut total = Some(0u64);
            let mut syms = vec![];
            for (i, ti) in t.iter().enumerate() {
                let differs = |dim| InferError::Concat {
                    index: i,
                    found: (*ti).clone(),
                    first: x0.clone(),
                    dim,
                };
                if ti.rank() != x0.rank() || ti.dtype() != x0.dtype() {
                    return Err(differs(None));
                }
                for (k, (d0, di)) in x0.shape.0.iter().zip(&ti.shape.0).enumerate() {
                    if k != a && !dims_may_equal(d0, di) {
                        return Err(differs(Some(k)));
                    }
                }
                match &ti.shape.0[a] {
                    Dim::Fixed(n) => total = total.map(|t| t + n),
                    d => {
                        syms.push(d.clone());
                        total = None
                    }
                }
            }
            let mut s = x0.shape.clone();
            s.0[a] = match total {
                Some(n) => Dim::Fixed(n),
                // a single symbolic piece plus empty ones keeps its name
                None if syms.len() == 1
                    && t.iter()
                        .all(|ti| ti.shape.0[a] == Dim::Fixed(0) || ti.shape.0[a] == syms[0]) =>
                {
                    syms[0].clone()
                }
                None => Dim::Any,
            };
            one(s, x0.dtype())
        }
        Op::Split { axis, sizes } => {
            let x = x.unwrap();
            let a = norm_axis(*axis, x.rank())?;
            if sizes.iter().any(|&s| s < 0) {
                return Err(InferError::NegativeSplit {
                    sizes: sizes.clone(),
                });
            }
            if let Dim::Fixed(n) = x.shape.0[a] {
                let sum: i64 = sizes.iter().sum();
                if sum as u64 != n {
                    return Err(InferError::SplitSum {
                        sizes: sizes.clone(),
                        sum,
                        dim: n,
                    });
                }
            }
            Ok(sizes
                .iter()
                .map(|&s| {
                    let mut sh = x.shape.clone();
                    sh.0[a] = Dim::Fixed(s as u64);
                    TensorType::new(sh, x.dtype())
                })
                .collect())
        }
        Op::Slice { spec } => {
            let x = x.unwrap();
            let spec = match spec {
                Some(s) => s.clone(),
                None => {
                    let c = |i: usize| consts.get(i).copied().flatten().map(|t| t.to_i64_vec());
                    match (c(1), c(2)) {
                        (Some(starts), Some(ends)) => {
                            let axes = if t.len() > 3 {
                                c(3)
                            } else {
                                Some((0..starts.len() as i64).collect())
                            };
                            let steps = if t.len() > 4 {
                                c(4)
                            } else {
                                Some(vec![1; starts.len()])
                            };
                            match (axes, steps) {
                                (Some(axes), Some(steps)) => SliceSpec {
                                    starts,
                                    ends,
                                    axes,
                                    steps,
                                },
                                _ => return one(Shape(vec![Dim::Any; x.rank()]), x.dtype()),
                            }
                        }
                        _ => return one(Shape(vec![Dim::Any; x.rank()]), x.dtype()),
                    }
                }
            };
            one(slice_shape(&x.shape, &spec)?, x.dtype())
        }
        Op::Squeeze { axes } => {
            let x = x.unwrap();
            let mut drop = vec![false; x.rank()];
            if axes.is_empty() {
                for (i, d) in x.shape.0.iter().enumerate() {
                    match d {
                        Dim::Fixed(1) => drop[i] = true,
                        Dim::Fixed(_) => {}
                        _ => {
                            return Err(InferError::SqueezeUnknown {
                                axis: i,
                                dim: d.clone(),
                            })
                        }
                    }
                }
            }
            for &a in axes {
                let a = norm_axis(a, x.rank())?;
                match &x.shape.0[a] {
                    Dim::Fixed(1) | Dim::Any | Dim::Sym(_) => drop[a] = true,
                    d => {
                        return Err(InferError::SqueezeNotOne {
                            axis: a,
                            dim: d.clone(),
                        })
                    }
                }
            }
            let s = x
                .shape
                .0
                .iter()
                .zip(&drop)
                .filter(|(_, &d)| !d)
                .map(|(d, _)| d.clone())
                .collect();
            one(Shape(s), x.dtype())
        }
        Op::Unsqueeze { axes } => {
            let x = x.unwrap();
            let r = x.rank() + axes.len();
            let mut ins = vec![false; r];
            for &a in axes {
                let a = norm_axis(a, r)?;
                if ins[a] {
                    return Err(InferError::RepeatedAxis { axis: a });
                }
                ins[a] = true;
            }
            let mut src = x.shape.0.iter();
            let s = ins
                .iter()
                .map(|&i| {
                    if i {
                        Dim::Fixed(1)
                    } else {
                        src.next().unwrap().clone()
                    }
                })
                .collect();
            one(Shape(s), x.dtype())
        }
        Op::Expand { shape } => {
            let x = x.unwrap();
            let target = match shape {
                Some(s) => s.clone(),
                None => match consts.get(1).copied().flatten() {
                    Some(c) => c.to_i64_vec(),
                    None => {
                        let n = unknown_shape_of_len(t[1])?;
                        let r = n.rank().max(x.rank());
                        return one(Shape(vec![Dim::Any; r]), x.dtype());
                    }
                },
            };
            let ts = Shape(
                target
                    .iter()
                    .map(|&d| Dim::Fixed(d.max(0) as u64))
                    .collect(),
            );
            one(broadcast(&x.shape, &ts)?, x.dtype())
        }
        Op::Flatten { axis } => {
            let x = x.unwrap();
            let r = x.rank() as i64;
            let a = if *axis < 0 { axis + r } else { *axis };
            if a < 0 || a > r {
                return Err(InferError::Axis(AxisError {
                    axis: *axis,
                    rank: x.rank(),
                }));
            }
            let prod = |ds: &[Dim]| {
                ds.iter()
                    .try_fold(1u64, |acc, d| d.fixed().map(|n| acc * n))
                    .map_or(Dim::Any, Dim::Fixed)
            };
            one(
                Shape(vec![
                    prod(&x.shape.0[..a as usize]),
                    prod(&x.shape.0[a as usize..]),
                ]),
                x.dtype(),
            )
        }
        Op::Tile { repeats } => {
            let x = x.unwrap();
            let reps = match repeats {
                Some(r) => r.clone(),
                None => match consts.get(1).copied().flatten() {
                    Some(c) => c.to_i64_vec(),
                    None => return one(Shape(vec![Dim::Any; x.rank()]), x.dtype()),
                },
            };
            if reps.len() != x.rank() {
                return Err(InferError::TileRepeats {
                    repeats: reps.len(),
                    rank: x.rank(),
                });
            }
            let s = x
                .shape
                .0
                .iter()
                .zip(&reps)
                .map(|(d, &r)| match (d, r) {
                    (_, 1) => d.clone(),
                    (Dim::Fixed(n), r) if r >= 0 => Dim::Fixed(n * r as u64),
                    _ => Dim::Any,
                })
                .collect();
            one(Shape(s), x.dtype())
        }
        Op::Shape { start, end } => {
            let r = x.unwrap().rank() as i64;
            let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r);
            let (s, e) = (clamp(*start), clamp(end.unwrap_or(r)));
            one(Shape::fixed(&[(e - s).max(0) as usize]), DType::I64)
        }
        Op::ConstantOfShape { value } => {
            if value.numel() != 1 {
                return Err(InferError::FillValue {
                    numel: value.numel(),
                });
            }
            let s = match consts.first().copied().flatten() {
                Some(c) => Shape(
                    c.to_i64_vec()
                        .into_iter()
                        .map(|d| Dim::Fixed(d.max(0) as u64))
                        .collect(),
                ),
                None => unknown_shape_of_len(t[0])?,
            };
            one(s, value.dtype())
        }
        Op::Range => {
            for (i, ti) in t.iter().enumerate() {
                if ti.rank() != 0 && ti.shape.numel() != Some(1) {
                    return Err(operand(["start", "limit", "delta"][i], "a scalar", ti));
                }
                if ti.dtype() != t[0].dtype() {
                    return Err(InferError::DTypesDiffer {
                        what: "start, limit and delta",
                        a: t[0].dtype(),
                        b: ti.dtype(),
                    });
                }
            }
            let c: Option<Vec<f64>> = (0..3)
                .map(|i| consts.get(i).copied().flatten().map(|t| t.data.to_f64()[0]))
                .collect();
            let n = match c {
                Some(v) if v[2] != 0.0 => Dim::Fixed(((v[1] - v[0]) / v[2]).ceil().max(0.0) as u64),
                Some(_) => return Err(InferError::ZeroStep { what: "delta" }),
                None => Dim::Any,
            };
            one(Shape(vec![n]), t[0].dtype())
        }
        Op::Rope { dims, .. } => {
            let (x, p) = (t[0], t[1]);
            float("input", x)?;
            if x.rank() != 4 {
                return Err(operand("input", "[batch, seq, heads, head_dim]", x));
            }
            if !p.dtype().is_int() || p.rank() != 2 {
                return Err(operand("positions", "integer [batch, seq]", p));
            }
            if let (Some(d), Dim::Fixed(hd)) = (dims, &x.shape.0[3]) {
                if *d <= 0 || *d as u64 > *hd || d % 2 != 0 {
                    return Err(InferError::RotaryDims {
                        dims: *d,
                        head: *hd,
                    });
                }
            } else if let Dim::Fixed(hd) = &x.shape.0[3] {
                if hd % 2 != 0 {
                    return Err(InferError::OddHeadSize { head: *hd });
                }
            }
            same(x)
        }
        Op::Attention { .. } => {
            let (q, k, v) = (t[0], t[1], t[2]);
            for (n, a) in [("q", q), ("k", k), ("v", v)] {
                if a.rank() != 4 {
                    return Err(operand(n, "[batch, heads, seq, head_dim]", a));
                }
                float(n, a)?;
            }
            if let (Dim::Fixed(h), Dim::Fixed(hk)) = (&q.shape.0[1], &k.shape.0[1]) {
                if *hk == 0 || h % hk != 0 {
                    return Err(InferError::Heads {
                        heads: *h,
                        kv_heads: *hk,
                    });
                }
            }
            if !dims_may_equal(&q.shape.0[3], &k.shape.0[3]) {
                return Err(InferError::HeadSize {
                    q: q.shape.0[3].clone(),
                    k: k.shape.0[3].clone(),
                });
            }
            if !dims_may_equal(&k.shape.0[2], &v.shape.0[2])
                || !dims_may_equal(&k.shape.0[1], &v.shape.0[1])
            {
                return Err(InferError::KeysValues {
                    k: k.clone(),
                    v: v.clone(),
                });
            }
            if let Some(m) = t.get(3) {
                if m.rank() > 4 || !m.dtype().is_float() {
                    return Err(operand(
                        "mask",
                        "a float tensor broadcastable to [batch, heads, seq, ctx]",
                        m,
                    ));
                }
            }
            let mut s = q.shape.clone();
            s.0[3] = v.shape.0[3].clone();
            one(s, q.dtype())
        }
        Op::CacheConcat { axis, .. } => {
            let x = x.unwrap();
            let a = norm_axis(*axis, x.rank())?;
            let mut s = x.shape.clone();
            s.0[a] = Dim::Any;
            one(s, x.dtype())
        }
    }
}

fn same(x: &TensorType) -> R<Vec<TensorType>> {
    Ok(vec![TensorType::new(x.shape.clone(), x.dtype())])
}

fn float(what: &'static str, x: &TensorType) -> R<()> {
    if x.dtype().is_float() {
        Ok(())
    } else {
        Err(dtype(what, "float", x.dtype()))
    }
}

fn dtype(what: &'static str, expected: &'static str, found: DType) -> InferError {
    InferError::DType {
        what,
        expected,
        found,
    }
}

fn operand(what: &'static str, expected: &'static str, found: &TensorType) -> InferError {
    InferError::Operand {
        what,
        expected,
        found: found.clone(),
    }
}

/// Whether two dimensions can be equal at run time.
pub fn dims_may_equal(a: &Dim, b: &Dim) -> bool {
    match (a, b) {
        (Dim::Fixed(x), Dim::Fixed(y)) => x == y,
        _ => true,
    }
}

/// The broadcast of two dimensions, or the two sizes that differ.
fn broadcast_dim(a: &Dim, b: &Dim) -> Result<Dim, (u64, u64)> {
    Ok(match (a, b) {
        (Dim::Fixed(1), x) | (x, Dim::Fixed(1)) => x.clone(),
        (Dim::Fixed(m), Dim::Fixed(n)) => {
            if m != n {
                return Err((*m, *n));
            }
            Dim::Fixed(*m)
        }
        (Dim::Fixed(n), _) | (_, Dim::Fixed(n)) => Dim::Fixed(*n),
        (Dim::Sym(s), Dim::Sym(t)) if s == t => Dim::Sym(s.clone()),
        _ => Dim::Any,
    })
}

/// Numpy broadcasting of two shapes.
pub fn broadcast(a: &Shape, b: &Shape) -> R<Shape> {
    let r = a.rank().max(b.rank());
    let one = Dim::Fixed(1);
    let mut out = Vec::with_capacity(r);
    for i in 0..r {
        let da = if i + a.rank() >= r {
            &a.0[i + a.rank() - r]
        } else {
            &one
        };
        let db = if i + b.rank() >= r {
            &b.0[i + b.rank() - r]
        } else {
            &one
        };
        out.push(
            broadcast_dim(da, db).map_err(|(left, right)| InferError::Broadcast {
                a: a.clone(),
                b: b.clone(),
                left,
                right,
            })?,
        );
    }
    Ok(Shape(out))
}

fn matmul(a: &TensorType, b: &TensorType) -> R<Vec<TensorType>> {
    if a.rank() == 0 || b.rank() == 0 {
        let x = if a.rank() == 0 { a } else { b };
        return Err(operand("matmul operands", "at least 1-D", x));
    }
    if a.dtype() != b.dtype() {
        return Err(InferError::DTypesDiffer {
            what: "operand",
            a: a.dtype(),
            b: b.dtype(),
        });
    }
    let mut sa = a.shape.0.clone();
    let mut sb = b.shape.0.clone();
    let a1 = sa.len() == 1;
    let b1 = sb.len() == 1;
    if a1 {
        sa.insert(0, Dim::Fixed(1));
    }
    if b1 {
        sb.push(Dim::Fixed(1));
    }
    let (m, ka) = (&sa[sa.len() - 2], &sa[sa.len() - 1]);
    let (kb, n) = (&sb[sb.len() - 2], &sb[sb.len() - 1]);
    if !dims_may_equal(ka, kb) {
        return Err(InferError::InnerDims {
            a: a.clone(),
            b: b.clone(),
        });
    }
    let batch = broadcast(
        &Shape(sa[..sa.len() - 2].to_vec()),
        &Shape(sb[..sb.len() - 2].to_vec()),
    )?;
    let mut s = batch.0;
    if !a1 {
        s.push(m.clone());
    }
    if !b1 {
        s.push(n.clone());
    }
    Ok(vec![TensorType::new(Shape(s), a.dtype())])
}

fn reduce_shape(x: &Shape, axes: &[i64], keepdims: bool) -> R<Shape> {
    let mut red = vec![axes.is_empty(); x.rank()];
    for &a in axes {
        red[norm_axis(a, x.rank())?] = true;
    }
    Ok(Shape(
        x.0.iter()
            .zip(&red)
            .filter_map(|(d, &r)| match (r, keepdims) {
                (false, _) => Some(d.clone()),
                (true, true) => Some(Dim::Fixed(1)),
                (true, false) => None,
            })
            .collect(),
    ))
}

fn unknown_shape_of_len(shape_operand: &TensorType) -> R<Shape> {
    if shape_operand.rank() != 1 || !shape_operand.dtype().is_int() {
        return Err(operand(
            "shape operand",
            "a 1-D integer tensor",
            shape_operand,
        ));
    }
    match shape_operand.shape.0[0] {
        Dim::Fixed(n) => Ok(Shape(vec![Dim::Any; n as usize])),
        _ => Err(InferError::UnknownShapeLength {
            found: shape_operand.clone(),
        }),
    }
}

/// Resolves a reshape target (0 copies, -1 infers) against an input shape.
pub fn reshape(x: &Shape, target: &[i64]) -> Result<Shape, ReshapeError> {
    let mut out: Vec<Dim> = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, &d) in target.iter().enumerate() {
        match d {
            0 => out.push(
                x.0.get(i)
                    .cloned()
                    .ok_or_else(|| ReshapeError::CopiesMissing {
                        index: i,
                        shape: x.clone(),
                    })?,
            ),
            -1 => {
                if infer_at.replace(i).is_some() {
                    return Err(ReshapeError::TwoInferred {
                        target: target.to_vec(),
                    });
                }
                out.push(Dim::Any);
            }
            d if d > 0 => out.push(Dim::Fixed(d as u64)),
            d => {
                return Err(ReshapeError::BadDim {
                    dim: d,
                    target: target.to_vec(),
                })
            }
        }
    }
    // Cancel the dimensions both sides share (symbols and fixed sizes), then compare what is left.
    let mut left: Vec<Dim> = x.0.clone();
    let mut right_fixed = 1u64;
    let mut right_syms: Vec<Dim> = vec![];
    for (i, d) in out.iter().enumerate() {
        if Some(i) == infer_at {
            continue;
        }
        match d {
            Dim::Fixed(n) => right_fixed *= n,
            other => right_syms.push(other.clone()),
        }
    }
    let mut unknown = false;
    for s in &right_syms {
        match left.iter().position(|l| l == s && !matches!(l, Dim::Any)) {
            Some(p) => {
                left.remove(p);
            }
            None => unknown = true,
        }
    }
    let left_fixed: Option<u64> = left
        .iter()
        .try_fold(1u64, |acc, d| d.fixed().map(|n| acc * n));
    match (infer_at, left_fixed, unknown) {
        (Some(i), Some(l), false) => {
            if right_fixed == 0 || l % right_fixed != 0 {
                return Err(ReshapeError::NotDivisible {
                    shape: x.clone(),
                    target: target.to_vec(),
                });
            }
            out[i] = Dim::Fixed(l / right_fixed);
        }
        (None, Some(l), false) if l != right_fixed => {
            return Err(ReshapeError::Count {
                shape: x.clone(),
                from: l,
                target: target.to_vec(),
                to: right_fixed,
            });
        }
        _ => {}
    }
    Ok(Shape(out))
}

fn perm_of(perm: &[i64], rank: usize) -> R<Vec<usize>> {
    if perm.is_empty() {
        return Ok((0..rank).rev().collect());
    }
    if perm.len() != rank {
        return Err(InferError::PermLength {
            perm: perm.to_vec(),
            rank,
        });
    }
    let mut seen = vec![false; rank];
    let mut p = Vec::with_capacity(rank);
    for &a in perm {
        let a = norm_axis(a, rank)?;
        if std::mem::replace(&mut seen[a], true) {
            return Err(InferError::NotPermutation {
                perm: perm.to_vec(),
            });
        }
        p.push(a);
    }
    Ok(p)
}

/// Resolved start, step and length of one sliced axis of size `n`, ONNX rules.
pub fn slice_range(n: i64, start: i64, end: i64, step: i64) -> (i64, i64, i64) {
    let clamp = |v: i64, lo: i64, hi: i64| v.clamp(lo, hi);
    let norm = |v: i64| if v < 0 { v + n } else { v };
    if step > 0 {
        let s = clamp(norm(start), 0, n);
        let e = clamp(norm(end), 0, n);
        (s, step, ((e - s).max(0) + step - 1) / step)
    } else {
        let s = clamp(norm(start), -1, n - 1);
        let e = clamp(norm(end), -1, n - 1);
        (s, step, ((s - e).max(0) + (-step) - 1) / (-step))
    }
}

fn slice_shape(x: &Shape, spec: &SliceSpec) -> R<Shape> {
    let k = spec.starts.len();
    if spec.ends.len() != k || spec.axes.len() != k || spec.steps.len() != k {
        return Err(InferError::SliceLengths {
            starts: k,
            ends: spec.ends.len(),
            axes: spec.axes.len(),
            steps: spec.steps.len(),
        });
    }
    let mut out = x.0.clone();
    for i in 0..k {
        let a = norm_axis(spec.axes[i], x.rank())?;
        if spec.steps[i] == 0 {
            return Err(InferError::ZeroStep { what: "slice step" });
        }
        out[a] = match &x.0[a] {
            Dim::Fixed(n) => Dim::Fixed(
                slice_range(*n as i64, spec.starts[i], spec.ends[i], spec.steps[i]).2 as u64,
            ),
            d if spec.starts[i] == 0 && spec.ends[i] >= i32::MAX as i64 && spec.steps[i] == 1 => {
                d.clone()
            }
            _ => Dim::Any,
        };
    }
    Ok(Shape(out))
}

/// Whether a declared type is acceptable where inference gives `inferred`: same encoding,
/// same rank, and every dimension equal unless inference left it unknown.
pub fn refines(declared: &TensorType, inferred: &TensorType) -> bool {
    let enc_ok = match (&declared.enc, &inferred.enc) {
        (Encoding::Dense(a), Encoding::Dense(b)) => a == b,
        (a, b) => a == b,
    };
    enc_ok
        && declared.rank() == inferred.rank()
        && declared
            .shape
            .0
            .iter()
            .zip(&inferred.shape.0)
            .all(|(d, i)| d == i || *i == Dim::Any)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tt(s: &str) -> TensorType {
        crate::parse::parse_type(s).unwrap()
    }

    #[test]
    fn reshape_resolves_symbols_and_minus_one() {
        let x = tt("tensor<{batch}x{seq}x576xf32>").shape;
        assert_eq!(
            reshape(&x, &[0, 0, 9, 64]).unwrap().to_string(),
            "{batch}x{seq}x9x64"
        );
        assert_eq!(
            reshape(&x, &[0, 0, -1, 64]).unwrap().to_string(),
            "{batch}x{seq}x9x64"
        );
        let y = tt("tensor<{batch}x{seq}x9x64xf32>").shape;
        assert_eq!(
            reshape(&y, &[0, 0, 576]).unwrap().to_string(),
            "{batch}x{seq}x576"
        );
        assert!(reshape(&Shape::fixed(&[2, 3]), &[4]).is_err());
        assert_eq!(
            reshape(&Shape::fixed(&[2, 3]), &[-1]).unwrap().to_string(),
            "6"
        );
    }

    #[test]
    fn matmul_and_linear_shapes() {
        let r = infer(
            &Op::MatMul,
            &[
                &tt("tensor<{b}x9x{s}x64xf32>"),
                &tt("tensor<{b}x9x64x{t}xf32>"),
            ],
            &[None, None],
        )
        .unwrap();
        assert_eq!(r[0].to_string(), "tensor<{b}x9x{s}x{t}xf32>");
        let r = infer(
            &Op::MatMul,
            &[&tt("tensor<3xf32>"), &tt("tensor<3x4xf32>")],
            &[None, None],
        )
        .unwrap();
        assert_eq!(r[0].to_string(), "tensor<4xf32>");
        let w = tt("tensor<1536x576x!q4<g32,f16,min>>");
        let r = infer(
            &Op::LINEAR,
            &[&tt("tensor<{b}x{s}x576xf32>"), &w],
            &[None, None],
        )
        .unwrap();
        assert_eq!(r[0].to_string(), "tensor<{b}x{s}x1536xf32>");
        let e = infer(
            &Op::LINEAR,
            &[&tt("tensor<{b}x{s}x512xf32>"), &w],
            &[None, None],
        )
        .unwrap_err();
        assert!(matches!(e, InferError::Features { .. }), "{e:?}");
        assert!(e.to_string().contains("512 features"), "{e}");
        let e = infer(&Op::Binary(BinaryOp::Add), &[&w, &w], &[None, None]).unwrap_err();
        assert!(
            matches!(e, InferError::EncodedOperand { index: 0, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("encoded weight"), "{e}");
    }

    #[test]
    fn slices_follow_onnx_clamping() {
        assert_eq!(slice_range(10, 0, i64::MAX, 1), (0, 1, 10));
        assert_eq!(slice_range(10, -3, 100, 1), (7, 1, 3));
        assert_eq!(slice_range(10, -1, i64::MIN, -1), (9, -1, 10));
        assert_eq!(slice_range(10, 5, 2, 1).2, 0);
    }
}
