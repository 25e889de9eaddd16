//! The reference interpreter: what a graph means. Every other executor is tested against it.

pub mod kernels;

use crate::error::IrError;
use crate::graph::{Graph, ValueDef, ValueId};
use crate::infer::{slice_range, ReshapeError};
use crate::ops::{norm_axis, AxisError, Op, SliceSpec};
use crate::tensor::{strides, Data, Tensor};
use crate::types::{DType, Dim, Encoding, Shape};
use kernels as k;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

type R<T> = Result<T, EvalError>;

/// Why a node cannot run on the values it was given; [`IrError::Eval`] adds the node.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Axis(#[from] AxisError),
    #[error(transparent)]
    Reshape(#[from] ReshapeError),
    /// An operand of an element type the kernel does not take.
    #[error("{what} must be {expected}, got {found}")]
    DType {
        what: &'static str,
        expected: &'static str,
        found: DType,
    },
    #[error("{what} types differ: {a} and {b}")]
    DTypesDiffer {
        what: &'static str,
        a: DType,
        b: DType,
    },
    #[error("{what} must have a dimension")]
    Scalar { what: &'static str },
    #[error("shapes {a:?} and {b:?} do not broadcast")]
    Broadcast { a: Vec<usize>, b: Vec<usize> },
    /// An operand that must broadcast to a fixed shape (`what`: scale, bias, mask).
    #[error("{what} {shape:?} does not broadcast to {to:?}")]
    BroadcastTo {
        what: &'static str,
        shape: Vec<usize>,
        to: Vec<usize>,
    },
    #[error("inner dimensions differ: {a:?} times {b:?}")]
    InnerDims { a: Vec<usize>, b: Vec<usize> },
    #[error("input has {features} features but the weight takes {takes}")]
    Features { features: usize, takes: usize },
    #[error("integer {what} by zero")]
    DivisionByZero { what: &'static str },
    #[error("{op} over an empty axis {axis}")]
    EmptyAxis { op: &'static str, axis: usize },
    #[error("cannot squeeze dimension {axis} of size {size}")]
    SqueezeNotOne { axis: usize, size: usize },
    /// A shape read from an operand with a negative entry (`what`: expand shape, shape).
    #[error("{what} {dims:?} has a negative dimension")]
    NegativeDim { what: &'static str, dims: Vec<i64> },
    #[error("repeats {repeats:?} do not fit rank {rank}")]
    TileRepeats { repeats: Vec<i64>, rank: usize },
    /// A step or delta of 0 (`what`: slice step, range delta).
    #[error("{what} must not be 0")]
    ZeroStep { what: &'static str },
    #[error("starts, ends, axes and steps must have one length, not {starts}, {ends}, {axes} and {steps}")]
    SliceLengths {
        starts: usize,
        ends: usize,
        axes: usize,
        steps: usize,
    },
    #[error("index {index} is out of range for dimension {axis} of size {size}")]
    IndexOutOfRange {
        index: i64,
        axis: usize,
        size: usize,
    },
    #[error("cannot concatenate {shape:?} {dtype} with {first_shape:?} {first_dtype}")]
    ConcatTypes {
        shape: Vec<usize>,
        dtype: DType,
        first_shape: Vec<usize>,
        first_dtype: DType,
    },
    #[error("cannot concatenate {shape:?} with {first:?} along axis {axis}")]
    ConcatShapes {
        shape: Vec<usize>,
        first: Vec<usize>,
        axis: usize,
    },
    #[error("split sizes {sizes:?} do not add up to dimension {axis} of {shape:?}")]
    SplitSizes {
        sizes: Vec<i64>,
        axis: usize,
        shape: Vec<usize>,
    },
    #[error("positions {positions:?} do not fit input {input:?}")]
    Positions {
        positions: Vec<usize>,
        input: Vec<usize>,
    },
    #[error("q {q:?}, k {k:?} and v {v:?} do not fit together")]
    Attention {
        q: Vec<usize>,
        k: Vec<usize>,
        v: Vec<usize>,
    },
    #[error("{heads} query heads are not a multiple of {kv_heads} key/value heads")]
    Heads { heads: usize, kv_heads: usize },
    #[error("causal attention needs at least as many keys ({keys}) as queries ({queries})")]
    Causal { keys: usize, queries: usize },
    #[error("appends {appended} entries where another cache append in this run added {previous}")]
    CacheAppend { appended: usize, previous: usize },
}

/// Decoded weights, shared by every session over the same graph.
pub struct WeightCache {
    dense: Vec<OnceLock<Arc<Tensor>>>,
    f32: Vec<OnceLock<Arc<Tensor>>>,
}

impl WeightCache {
    pub fn new(g: &Graph) -> WeightCache {
        WeightCache {
            dense: (0..g.weights.len()).map(|_| OnceLock::new()).collect(),
            f32: (0..g.weights.len()).map(|_| OnceLock::new()).collect(),
        }
    }
}

/// A graph ready to run, with its decoder state (the KV cache).
pub struct Session<'g> {
    graph: &'g Graph,
    cache: Arc<WeightCache>,
    states: Vec<Option<Tensor>>,
    /// For every value, the last node that reads it (values are freed after it).
    last_use: Vec<usize>,
    names: Vec<String>,
    /// Tokens held in the state, counted along the appended axis.
    context: usize,
}

impl<'g> Session<'g> {
    /// Prepares a graph; it must verify.
    pub fn new(graph: &'g Graph) -> Result<Session<'g>, IrError> {
        Self::with_cache(graph, Arc::new(WeightCache::new(graph)))
    }

    /// As [`Session::new`], sharing decoded weights with other sessions over the same graph.
    pub fn with_cache(graph: &'g Graph, cache: Arc<WeightCache>) -> Result<Session<'g>, IrError> {
        crate::verify::verify(graph)?;
        if let Some(w) = graph.weights.iter().find(|w| w.data.is_none()) {
            return Err(IrError::Run(format!(
                "weight @{} has no data (graphs parsed from text carry only hashes)",
                w.name
            )));
        }
        let mut last_use = vec![usize::MAX; graph.values.len()];
        for (i, n) in graph.nodes.iter().enumerate() {
            for v in &n.inputs {
                last_use[v.0 as usize] = i;
            }
        }
        for (_, v) in &graph.outputs {
            last_use[v.0 as usize] = usize::MAX;
        }
        Ok(Session {
            graph,
            cache,
            states: vec![None; graph.states.len()],
            last_use,
            names: graph.value_names(),
            context: 0,
        })
    }

    pub fn weight_cache(&self) -> Arc<WeightCache> {
        self.cache.clone()
    }

    /// Forgets the decoder state (empties the KV cache).
    pub fn reset(&mut self) {
        self.states.iter_mut().for_each(|s| *s = None);
        self.context = 0;
    }

    /// Entries held in the decoder state (tokens in the KV cache).
    pub fn context_len(&self) -> usize {
        self.context
    }

    fn weight(&self, i: usize, as_f32: bool) -> Result<Arc<Tensor>, IrError> {
        let w = &self.graph.weights[i];
        // dense f32 weights decode the same either way: keep one copy
        let as_f32 = as_f32 || w.ty.enc == Encoding::Dense(DType::F32);
        let slot = if as_f32 || !w.ty.enc.is_dense() {
            &self.cache.f32[i]
        } else {
            &self.cache.dense[i]
        };
        if let Some(t) = slot.get() {
            return Ok(t.clone());
        }
        let data = w.data.as_ref().expect("checked at session start");
        let t = if as_f32 || !w.ty.enc.is_dense() {
            data.decode_f32(&w.ty)?
        } else {
            data.decode_dense(&w.ty)?
        };
        Ok(slot.get_or_init(|| Arc::new(t)).clone())
    }

    /// Runs the graph on named inputs; returns the outputs in declaration order.
    pub fn run(&mut self, inputs: &[(&str, Tensor)]) -> Result<Vec<(String, Tensor)>, IrError> {
        self.run_observed(inputs, &mut |_, _| true)
    }

    /// As [`Session::run`], showing `observe` every node's index and arguments before the node
    /// runs (calibration reads the inputs of linear layers this way). When `observe` returns
    /// false the run stops there and returns no outputs (the state is left partly updated:
    /// reset it before the next run).
    pub fn run_observed(
        &mut self,
        inputs: &[(&str, Tensor)],
        observe: &mut dyn FnMut(usize, &[Arc<Tensor>]) -> bool,
    ) -> Result<Vec<(String, Tensor)>, IrError> {
        let g = self.graph;
        let mut env: Vec<Option<Arc<Tensor>>> = vec![None; g.values.len()];
        let given: HashMap<&str, &Tensor> = inputs.iter().map(|(n, t)| (*n, t)).collect();
        if let Some((n, _)) = inputs
            .iter()
            .find(|(n, _)| !g.inputs.iter().any(|(m, _)| m == n))
        {
            let known: Vec<&str> = g.inputs.iter().map(|(m, _)| m.as_str()).collect();
            return Err(IrError::Run(format!(
                "the graph has no input '{n}' (inputs: {})",
                known.join(", ")
            )));
        }
        let mut syms: HashMap<String, u64> = HashMap::new();
        for (name, v) in &g.inputs {
            let t = given
                .get(name.as_str())
                .ok_or_else(|| IrError::Run(format!("input '{name}' is missing")))?;
            let ty = g.ty(*v);
            if t.dtype() != ty.dtype() || t.rank() != ty.rank() {
                return Err(IrError::Run(format!(
                    "input '{name}' must be {ty}, got {} with shape {:?}",
                    t.dtype(),
                    t.shape
                )));
            }
            for (i, (d, &n)) in ty.shape.0.iter().zip(&t.shape).enumerate() {
                let ok = match d {
                    Dim::Fixed(f) => *f == n as u64,
                    Dim::Sym(s) => *syms.entry(s.clone()).or_insert(n as u64) == n as u64,
                    Dim::Any => true,
                };
                if !ok {
                    return Err(IrError::Run(format!(
                        "input '{name}' dimension {i} is {n}, but the graph expects {d} (shape {:?} given for {ty})",
                        t.shape
                    )));
                }
            }
            env[v.0 as usize] = Some(Arc::new((*t).clone()));
        }
        let mut appended: Option<usize> = None;
        for (i, n) in g.nodes.iter().enumerate() {
            let mut args: Vec<Arc<Tensor>> = Vec::with_capacity(n.inputs.len());
            for (pos, v) in n.inputs.iter().enumerate() {
                let t = match g.def(*v) {
                    ValueDef::Weight(w) => {
                        // gather keeps a dense table's element type, as inference says it does
                        let dense_gather = matches!(n.op, Op::Gather { .. })
                            && g.weights[w as usize].ty.enc.is_dense();
                        self.weight(w as usize, n.op.accepts_encoded(pos) && !dense_gather)?
                    }
                    _ => env[v.0 as usize].clone().ok_or_else(|| {
                        IrError::Invalid(format!("{} has no value", self.names[v.0 as usize]))
                    })?,
                };
                args.push(t);
            }
            if !observe(i, &args) {
                return Ok(Vec::new());
            }
            let outs = self
                .eval(&n.op, &args, &mut appended)
                .map_err(|source| IrError::Eval {
                    node: g.describe_node(&self.names, i),
                    source,
                })?;
            drop(args);
            for (o, t) in n.outputs.iter().zip(outs) {
                env[o.0 as usize] = Some(Arc::new(t));
            }
            for v in &n.inputs {
                if self.last_use[v.0 as usize] == i {
                    env[v.0 as usize] = None;
                }
            }
        }
        if let Some(a) = appended {
            self.context += a;
        }
        g.outputs
            .iter()
            .map(|(name, v)| {
                let t = match g.def(*v) {
                    ValueDef::Weight(w) => self.weight(w as usize, false)?,
                    _ => env[v.0 as usize].clone().ok_or_else(|| {
                        IrError::Invalid(format!("output {name} was not computed"))
                    })?,
                };
                Ok((
                    name.clone(),
                    Arc::try_unwrap(t).unwrap_or_else(|a| (*a).clone()),
                ))
            })
            .collect()
    }

    fn eval(&mut self, op: &Op, a: &[Arc<Tensor>], appended: &mut Option<usize>) -> R<Vec<Tensor>> {
        let one = |t: Tensor| Ok(vec![t]);
        let x = a.first().map(|t| t.as_ref());
        match op {
            Op::Constant { value } => one(value.clone()),
            Op::Unary(u) => one(k::unary(*u, x.unwrap())?),
            Op::Binary(b) => one(k::binary(*b, &a[0], &a[1])?),
            Op::Where => one(k::where_(&a[0], &a[1], &a[2])?),
            Op::Cast { to } => one(x.unwrap().cast(*to)),
            Op::Clip { min, max } => {
                let x = x.unwrap();
                let lo = min.unwrap_or(f32::NEG_INFINITY);
                let hi = max.unwrap_or(f32::INFINITY);
                let data = match &x.data {
                    Data::F32(v) => Data::F32(
                        v.iter()
                            .map(|&z| if z.is_nan() { z } else { z.max(lo).min(hi) })
                            .collect(),
                    ),
                    d if d.dtype().is_float() => {
                        Data::F32(d.to_f32().iter().map(|&z| z.max(lo).min(hi)).collect())
                            .cast(d.dtype())
                    }
                    d => {
                        let (lo, hi) = (
                            min.map_or(i64::MIN, |m| m as i64),
                            max.map_or(i64::MAX, |m| m as i64),
                        );
                        Data::I64(
                            d.to_i64()
                                .iter()
                                .map(|&z| z.clamp(lo, hi.max(lo)))
                                .collect(),
                        )
                        .cast(d.dtype())
                    }
                };
                one(Tensor::new(x.shape.clone(), data))
            }
            Op::MatMul => one(k::matmul(&a[0], &a[1])?),
            Op::Linear { act } => {
                let (x, w) = (&a[0], &a[1]);
                let kdim = *x.shape.last().ok_or(EvalError::Scalar { what: "input" })?;
                let (n, kw) = (w.shape[0], w.shape[1]);
                if kdim != kw {
                    return Err(EvalError::Features {
                        features: kdim,
                        takes: kw,
                    });
                }
                let rows = x.numel() / kdim.max(1);
                let xv;
                let xs: &[f32] = match (x.as_f32(), act) {
                    (Some(v), crate::ops::ActQuant::None) => v,
                    _ => {
                        let mut v = x.to_f32_vec();
                        if *act == crate::ops::ActQuant::I8PerToken {
                            k::quantize_rows_i8(&mut v, kdim);
                        }
                        xv = v;
                        &xv
                    }
                };
                let wv;
                let ws: &[f32] = match w.as_f32() {
                    Some(v) => v,
                    None => {
                        wv = w.to_f32_vec();
                        &wv
                    }
                };
                let bias = a.get(2).map(|b| b.to_f32_vec());
                let out = k::linear(xs, rows, kdim, ws, n, bias.as_deref());
                let mut shape = x.shape.clone();
                *shape.last_mut().unwrap() = n;
                one(Tensor::f32(shape, out).cast(x.dtype()))
            }
            Op::Softmax { axis } | Op::LogSoftmax { axis } => {
                let x = x.unwrap();
                let ax = norm_axis(*axis, x.rank())?;
                one(k::softmax(x, ax, matches!(op, Op::LogSoftmax { .. })))
            }
            Op::LayerNorm { axis, eps } | Op::RmsNorm { axis, eps } => {
                let x = x.unwrap();
                let ax = norm_axis(*axis, x.rank())?;
                let cols: usize = x.shape[ax..].iter().product();
                let expand = |what: &'static str, t: &Tensor| -> R<Vec<f32>> {
                    let full = &x.shape[ax..];
                    k::broadcast_shapes(&t.shape, full).map_err(|_| EvalError::BroadcastTo {
                        what,
                        shape: t.shape.clone(),
                        to: full.to_vec(),
                    })?;
                    Ok(k::broadcast_to(t, full).to_f32_vec())
                };
                let scale = expand("scale", &a[1])?;
                let bias = a.get(2).map(|b| expand("bias", b)).transpose()?;
                one(k::norm(
                    x,
                    cols,
                    &scale,
                    bias.as_deref(),
                    *eps,
                    matches!(op, Op::LayerNorm { .. }),
                ))
            }
            Op::Reduce {
                kind,
                axes,
                keepdims,
            } => one(reduce(x.unwrap(), *kind, axes, *keepdims)?),
            Op::ArgMax { axis, keepdims } => {
                let x = x.unwrap();
                let ax = norm_axis(*axis, x.rank())?;
                let v = x.to_f32_vec();
                let (outer, n, inner) = k::around(&x.shape, ax);
                if n == 0 {
                    return Err(EvalError::EmptyAxis {
                        op: "argmax",
                        axis: ax,
                    });
                }
                let mut out = vec![0i64; outer * inner];
                for o in 0..outer {
                    for i in 0..inner {
                        let mut best = 0;
                        for j in 1..n {
                            if v[(o * n + j) * inner + i] > v[(o * n + best) * inner + i] {
                                best = j;
                            }
                        }
                        out[o * inner + i] = best as i64;
                    }
                }
                let mut shape = x.shape.clone();
                if *keepdims {
                    shape[ax] = 1;
                } else {
                    shape.remove(ax);
                }
                one(Tensor::i64(shape, out))
            }
            Op::Gather { axis } => one(gather(&a[0], &a[1], *axis)?),
            Op::Reshape { shape } => {
                let x = x.unwrap();
                let target = match shape {
                    Some(s) => s.clone(),
                    None => a[1].to_i64_vec(),
                };
                let dims = resolve_reshape(&x.shape, &target)?;
                one((*x).clone().reshape(dims))
            }
            Op::Transpose { perm } => {
                let x = x.unwrap();
                let p: Vec<usize> = if perm.is_empty() {
                    (0..x.rank()).rev().collect()
                } else {
                    perm.iter()
                        .map(|&p| norm_axis(p, x.rank()))
                        .collect::<Result<_, _>>()?
                };
                one(k::transpose(x, &p))
            }
            Op::Concat { axis } => one(concat(a, *axis)?),
            Op::Split { axis, sizes } => split(x.unwrap(), *axis, sizes),
            Op::Slice { spec } => {
                let x = x.unwrap();
                let spec = match spec {
                    Some(s) => s.clone(),
                    None => {
                        let starts = a[1].to_i64_vec();
                        let n = starts.len();
                        SliceSpec {
                            ends: a[2].to_i64_vec(),
                            axes: a
                                .get(3)
                                .map(|t| t.to_i64_vec())
                                .unwrap_or_else(|| (0..n as i64).collect()),
                            steps: a
                                .get(4)
                                .map(|t| t.to_i64_vec())
                                .unwrap_or_else(|| vec![1; n]),
                            starts,
                        }
                    }
                };
                one(slice(x, &spec)?)
            }
            Op::Squeeze { axes } => {
                let x = x.unwrap();
                let mut drop = vec![false; x.rank()];
                if axes.is_empty() {
                    x.shape
                        .iter()
                        .enumerate()
                        .for_each(|(i, &d)| drop[i] = d == 1);
                }
                for &ax in axes {
                    let ax = norm_axis(ax, x.rank())?;
                    if x.shape[ax] != 1 {
                        return Err(EvalError::SqueezeNotOne {
                            axis: ax,
                            size: x.shape[ax],
                        });
                    }
                    drop[ax] = true;
                }
                let s = x
                    .shape
                    .iter()
                    .zip(&drop)
                    .filter(|(_, &d)| !d)
                    .map(|(&s, _)| s)
                    .collect();
                one((*x).clone().reshape(s))
            }
            Op::Unsqueeze { axes } => {
                let x = x.unwrap();
                let r = x.rank() + axes.len();
                let mut ins = vec![false; r];
                for &ax in axes {
                    ins[norm_axis(ax, r)?] = true;
                }
                let mut src = x.shape.iter();
                let s = ins
                    .iter()
                    .map(|&i| if i { 1 } else { *src.next().unwrap() })
                    .collect();
                one((*x).clone().reshape(s))
            }
            Op::Expand { shape } => {
                let x = x.unwrap();
                let target = match shape {
                    Some(s) => s.clone(),
                    None => a[1].to_i64_vec(),
                };
                if target.iter().any(|&d| d < 0) {
                    return Err(EvalError::NegativeDim {
                        what: "expand shape",
                        dims: target,
                    });
                }
                let t: Vec<usize> = target.iter().map(|&d| d as usize).collect();
                let full = k::broadcast_shapes(&x.shape, &t)?;
                one(k::broadcast_to(x, &full))
            }
            Op::Flatten { axis } => {
                let x = x.unwrap();
                let r = x.rank() as i64;
                let ax = if *axis < 0 { axis + r } else { *axis } as usize;
                let rows: usize = x.shape[..ax].iter().product();
                let cols: usize = x.shape[ax..].iter().product();
                one((*x).clone().reshape(vec![rows, cols]))
            }
            Op::Tile { repeats } => {
                let x = x.unwrap();
                let reps = match repeats {
                    Some(r) => r.clone(),
                    None => a[1].to_i64_vec(),
                };
                if reps.len() != x.rank() || reps.iter().any(|&r| r < 0) {
                    return Err(EvalError::TileRepeats {
                        repeats: reps,
                        rank: x.rank(),
                    });
                }
                let shape: Vec<usize> = x
                    .shape
                    .iter()
                    .zip(&reps)
                    .map(|(&d, &r)| d * r as usize)
                    .collect();
                let st = strides(&x.shape);
                let n: usize = shape.iter().product();
                let ost = strides(&shape);
                let idx: Vec<usize> = (0..n)
                    .map(|i| {
                        (0..shape.len())
                            .map(|d| (i / ost[d] % shape[d]) % x.shape[d] * st[d])
                            .sum()
                    })
                    .collect();
                one(Tensor::new(shape, x.data.gather(&idx)))
            }
            Op::Shape { start, end } => {
                let x = x.unwrap();
                let r = x.rank() as i64;
                let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let (s, e) = (clamp(*start), clamp(end.unwrap_or(r)));
                let dims: Vec<i64> = x.shape[s..e.max(s)].iter().map(|&d| d as i64).collect();
                one(Tensor::i64(vec![dims.len()], dims))
            }
            Op::ConstantOfShape { value } => {
                let dims = a[0].to_i64_vec();
                if dims.iter().any(|&d| d < 0) {
                    return Err(EvalError::NegativeDim {
                        what: "shape",
                        dims,
                    });
                }
                let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
                let n: usize = shape.iter().product();
                one(Tensor::new(shape, value.data.gather(&vec![0; n])))
            }
            Op::Range => {
                let (s, l, d) = (
                    a[0].data.to_f64()[0],
                    a[1].data.to_f64()[0],
                    a[2].data.to_f64()[0],
                );
                if d == 0.0 {
                    return Err(EvalError::ZeroStep {
                        what: "range delta",
                    });
                }
                let n = ((l - s) / d).ceil().max(0.0) as usize;
                let dt = a[0].dtype();
                let data = if dt.is_float() {
                    Data::F32((0..n).map(|i| (s + i as f64 * d) as f32).collect()).cast(dt)
                } else {
                    let (s, d) = (a[0].to_i64_vec()[0], a[2].to_i64_vec()[0]);
                    Data::I64((0..n as i64).map(|i| s + i * d).collect()).cast(dt)
                };
                one(Tensor::new(vec![n], data))
            }
            Op::Rope { base, mode, dims } => {
                let (x, p) = (&a[0], &a[1]);
                let (b, s) = (x.shape[0], x.shape[1]);
                let pos = p.to_i64_vec();
                if p.shape != [b, s] && !(p.shape.len() == 2 && p.shape[0] == 1 && p.shape[1] == s)
                {
                    return Err(EvalError::Positions {
                        positions: p.shape.clone(),
                        input: x.shape.clone(),
                    });
                }
                let d = dims.map_or(x.shape[3], |d| d as usize);
                one(k::rope(x, &pos, *base, *mode, d))
            }
            Op::Attention { causal, scale } => one(k::attention(
                &a[0],
                &a[1],
                &a[2],
                a.get(3).map(|m| m.as_ref()),
                *causal,
                *scale,
            )?),
            Op::CacheConcat { state, axis } => {
                let x = x.unwrap();
                let ax = norm_axis(*axis, x.rank())?;
                let n = x.shape[ax];
                if let Some(prev) = appended.replace(n) {
                    if prev != n {
                        return Err(EvalError::CacheAppend {
                            appended: n,
                            previous: prev,
                        });
                    }
                }
                let full = match self.states[*state as usize].take() {
                    None => x.clone(),
                    Some(past) => concat(&[Arc::new(past), Arc::new(x.clone())], *axis)?,
                };
                self.states[*state as usize] = Some(full.clone());
                one(full)
            }
        }
    }
}

fn resolve_reshape(shape: &[usize], target: &[i64]) -> Result<Vec<usize>, ReshapeError> {
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &d) in target.iter().enumerate() {
        match d {
            0 => out.push(*shape.get(i).ok_or_else(|| ReshapeError::CopiesMissing {
                index: i,
                shape: Shape::fixed(shape),
            })?),
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            -1 => {
                return Err(ReshapeError::TwoInferred {
                    target: target.to_vec(),
                })
            }
            d if d > 0 => out.push(d as usize),
            d => {
                return Err(ReshapeError::BadDim {
                    dim: d,
                    target: target.to_vec(),
                })
            }
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || n % known != 0 {
            return Err(ReshapeError::NotDivisible {
                shape: Shape::fixed(shape),
                target: target.to_vec(),
            });
        }
        out[i] = n / known;
    } else if known != n {
        return Err(ReshapeError::Count {
            shape: Shape::fixed(shape),
            from: n as u64,
            target: target.to_vec(),
            to: known as u64,
        });
    }
    Ok(out)
}

fn gather(data: &Tensor, idx: &Tensor, axis: i64) -> R<Tensor> {
    let ax = norm_axis(axis, data.rank())?;
    let (outer, n, inner) = k::around(&data.shape, ax);
    let ids = idx.to_i64_vec();
    let mut pick = Vec::with_capacity(outer * ids.len() * inner);
    for o in 0..outer {
        for &i in &ids {
            let j = if i < 0 { i + n as i64 } else { i };
            if j < 0 || j >= n as i64 {
                return Err(EvalError::IndexOutOfRange {
                    index: i,
                    axis: ax,
                    size: n,
                });
            }
            let base = (o * n + j as usize) * inner;
            pick.extend(base..base + inner);
        }
    }
    let mut shape = data.shape[..ax].to_vec();
    shape.extend(&idx.shape);
    shape.extend(&data.shape[ax + 1..]);
    Ok(Tensor::new(shape, data.data.gather(&pick)))
}

fn concat(parts: &[Arc<Tensor>], axis: i64) -> R<Tensor> {
    let first = &parts[0];
    let ax = norm_axis(axis, first.rank())?;
    for p in parts {
        if p.rank() != first.rank() || p.dtype() != first.dtype() {
            return Err(EvalError::ConcatTypes {
                shape: p.shape.clone(),
                dtype: p.dtype(),
                first_shape: first.shape.clone(),
                first_dtype: first.dtype(),
            });
        }
        for d in 0..first.rank() {
            if d != ax && p.shape[d] != first.shape[d] {
                return Err(EvalError::ConcatShapes {
                    shape: p.shape.clone(),
                    first: first.shape.clone(),
                    axis: ax,
                });
            }
        }
    }
    let outer: usize = first.shape[..ax].iter().product();
    let inner: usize = first.shape[ax + 1..].iter().product();
    let total: usize = parts.iter().map(|p| p.shape[ax]).sum();
    let mut idx: Vec<(usize, usize)> = Vec::with_capacity(outer * total * inner);
    for o in 0..outer {
        for (pi, p) in parts.iter().enumerate() {
            let len = p.shape[ax] * inner;
            idx.extend((o * len..(o + 1) * len).map(|e| (pi, e)));
        }
    }
    let mut shape = first.shape.clone();
    shape[ax] = total;
    macro_rules! cat {
        ($variant:ident) => {{
            let srcs: Vec<&Vec<_>> = parts
                .iter()
                .map(|p| match &p.data {
                    Data::$variant(v) => v,
                    _ => unreachable!("types checked"),
                })
                .collect();
            Data::$variant(idx.iter().map(|&(p, e)| srcs[p][e]).collect())
        }};
    }
    let data = match first.data {
        Data::F32(_) => cat!(F32),
        Data::F16(_) => cat!(F16),
        Data::BF16(_) => cat!(BF16),
        Data::I64(_) => cat!(I64),
        Data::I32(_) => cat!(I32),
        Data::I8(_) => cat!(I8),
        Data::U8(_) => cat!(U8),
        Data::Bool(_) => cat!(Bool),
    };
    Ok(Tensor::new(shape, data))
}

fn split(x: &Tensor, axis: i64, sizes: &[i64]) -> R<Vec<Tensor>> {
    let ax = norm_axis(axis, x.rank())?;
    let total: i64 = sizes.iter().sum();
    if total != x.shape[ax] as i64 {
        return Err(EvalError::SplitSizes {
            sizes: sizes.to_vec(),
            axis: ax,
            shape: x.shape.clone(),
        });
    }
    let mut start = 0i64;
    sizes
        .iter()
        .map(|&s| {
            let spec = SliceSpec {
                starts: vec![start],
                ends: vec![start + s],
                axes: vec![ax as i64],
                steps: vec![1],
            };
            start += s;
            slice(x, &spec)
        })
        .collect()
}

fn slice(x: &Tensor, spec: &SliceSpec) -> R<Tensor> {
    let r = x.rank();
    let mut start = vec![0i64; r];
    let mut step = vec![1i64; r];
    let mut len: Vec<i64> = x.shape.iter().map(|&d| d as i64).collect();
    if spec.ends.len() != spec.starts.len()
        || spec.axes.len() != spec.starts.len()
        || spec.steps.len() != spec.starts.len()
    {
        return Err(EvalError::SliceLengths {
            starts: spec.starts.len(),
            ends: spec.ends.len(),
            axes: spec.axes.len(),
            steps: spec.steps.len(),
        });
    }
    for i in 0..spec.starts.len() {
        let ax = norm_axis(spec.axes[i], r)?;
        if spec.steps[i] == 0 {
            return Err(EvalError::ZeroStep { what: "slice step" });
        }
        let (s, st, n) = slice_range(
            x.shape[ax] as i64,
            spec.starts[i],
            spec.ends[i],
            spec.steps[i],
        );
        start[ax] = s;
        step[ax] = st;
        len[ax] = n;
    }
    let shape: Vec<usize> = len.iter().map(|&l| l as usize).collect();
    let n: usize = shape.iter().product();
    let st = strides(&x.shape);
    let ost = strides(&shape);
    let idx: Vec<usize> = (0..n)
        .map(|i| {
            (0..r)
                .map(|d| ((start[d] + (i / ost[d] % shape[d]) as i64 * step[d]) as usize) * st[d])
                .sum()
        })
        .collect();
    Ok(Tensor::new(shape, x.data.gather(&idx)))
}

fn reduce(x: &Tensor, kind: crate::ops::ReduceKind, axes: &[i64], keepdims: bool) -> R<Tensor> {
    use crate::ops::ReduceKind as K;
    let r = x.rank();
    let mut red = vec![axes.is_empty(); r];
    for &a in axes {
        red[norm_axis(a, r)?] = true;
    }
    // move reduced axes last, then reduce rows
    let perm: Vec<usize> = (0..r)
        .filter(|&d| !red[d])
        .chain((0..r).filter(|&d| red[d]))
        .collect();
    let t = k::transpose(x, &perm);
    let cols: usize = (0..r).filter(|&d| red[d]).map(|d| x.shape[d]).product();
    // Counted from the kept dimensions: an empty reduced axis still leaves rows to fill.
    let rows: usize = (0..r).filter(|&d| !red[d]).map(|d| x.shape[d]).product();
    let out_shape: Vec<usize> = (0..r)
        .filter_map(|d| {
            if !red[d] {
                Some(x.shape[d])
            } else if keepdims {
                Some(1)
            } else {
                None
            }
        })
        .collect();
    let is_int = x.dtype().is_int();
    let v = t.data.to_f64();
    let res: Vec<f64> = (0..rows)
        .map(|i| {
            let row = &v[i * cols..(i + 1) * cols];
            match kind {
                K::Sum => row.iter().sum(),
                K::Mean => row.iter().sum::<f64>() / cols as f64,
                K::Max => row.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                K::Min => row.iter().cloned().fold(f64::INFINITY, f64::min),
                K::Prod => row.iter().product(),
                K::L2 => row.iter().map(|z| z * z).sum::<f64>().sqrt(),
            }
        })
        .collect();
    let data = if is_int {
        Data::I64(res.iter().map(|&z| z as i64).collect()).cast(x.dtype())
    } else {
        Data::F32(res.iter().map(|&z| z as f32).collect()).cast(x.dtype())
    };
    Ok(Tensor::new(out_shape, data))
}

/// Runs a graph once on fresh state (for graphs that are not decoders, or a single window).
pub fn run_once(g: &Graph, inputs: &[(&str, Tensor)]) -> Result<Vec<(String, Tensor)>, IrError> {
    Session::new(g)?.run(inputs)
}

/// Evaluates a graph's value by name for debugging: every node result in order.
pub fn trace(g: &Graph, inputs: &[(&str, Tensor)]) -> Result<Vec<(ValueId, Tensor)>, IrError> {
    // build a copy of the graph whose outputs are every node result
    let mut t = g.clone();
    t.outputs = g
        .nodes
        .iter()
        .flat_map(|n| n.outputs.iter())
        .map(|v| (format!("v{}", v.0), *v))
        .collect();
    let res = Session::new(&t)?.run(inputs)?;
    Ok(t.outputs
        .iter()
        .map(|(_, v)| *v)
        .zip(res.into_iter().map(|(_, t)| t))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::ReduceKind;
    use crate::types::TensorType;
    use crate::weights::WeightData;

    #[test]
    fn gather_of_a_dense_half_table_keeps_its_type() {
        // inference says gather(bf16 table) is bf16; the interpreter must agree
        let mut g = Graph::new("t");
        let ids = g.add_input("ids", TensorType::fixed(&[2], DType::I64));
        let table = Tensor::f32(vec![3, 2], vec![1., 2., 3., 4., 5., 6.]).cast(DType::BF16);
        let w = g
            .add_weight(
                "emb",
                TensorType::fixed(&[3, 2], DType::BF16),
                Some(WeightData::from_tensor(&table, "t")),
            )
            .unwrap();
        let y = g.add1(Op::Gather { axis: 0 }, &[w, ids]).unwrap();
        assert_eq!(g.ty(y).dtype(), DType::BF16);
        g.set_output("y", y);
        let out = Session::new(&g)
            .unwrap()
            .run(&[("ids", Tensor::i64(vec![2], vec![2, 0]))])
            .unwrap();
        assert_eq!(out[0].1.dtype(), DType::BF16);
        assert_eq!(out[0].1.to_f32_vec(), vec![5., 6., 1., 2.]);
    }

    #[test]
    fn reducing_an_empty_axis_gives_the_identity_of_the_reduction() {
        // [2, 0, 3] reduced over the empty axis 1: six rows of nothing
        let x = Tensor::f32(vec![2, 0, 3], vec![]);
        let s = reduce(&x, ReduceKind::Sum, &[1], true).unwrap();
        assert_eq!(s.shape, vec![2, 1, 3]);
        assert_eq!(s.as_f32().unwrap(), &[0.0; 6]);
        let p = reduce(&x, ReduceKind::Prod, &[1], false).unwrap();
        assert_eq!(p.shape, vec![2, 3]);
        assert_eq!(p.as_f32().unwrap(), &[1.0; 6]);
        let m = reduce(&x, ReduceKind::Max, &[1], false).unwrap();
        assert!(m.as_f32().unwrap().iter().all(|v| *v == f32::NEG_INFINITY));
    }
}
