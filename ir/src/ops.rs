//! The operations of the IR, their attributes, and the generic attribute form the
//! printer and parser use.

use crate::tensor::Tensor;
use crate::types::DType;
use std::collections::BTreeMap;

/// Elementwise operations of one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Abs,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Reciprocal,
    Tanh,
    Sigmoid,
    Relu,
    Silu,
    /// Exact gelu: `x · Φ(x)` with the error function.
    Gelu,
    /// Tanh approximation of gelu.
    GeluTanh,
    Erf,
    Sin,
    Cos,
    Floor,
    Ceil,
    /// Round half to even, as ONNX Round.
    Round,
    Sign,
    Softplus,
    Not,
}

impl UnaryOp {
    pub const ALL: [UnaryOp; 22] = [
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Reciprocal,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
        UnaryOp::Silu,
        UnaryOp::Gelu,
        UnaryOp::GeluTanh,
        UnaryOp::Erf,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::Floor,
        UnaryOp::Ceil,
        UnaryOp::Round,
        UnaryOp::Sign,
        UnaryOp::Softplus,
        UnaryOp::Not,
    ];

    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Abs => "abs",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Reciprocal => "reciprocal",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Relu => "relu",
            UnaryOp::Silu => "silu",
            UnaryOp::Gelu => "gelu",
            UnaryOp::GeluTanh => "gelu_tanh",
            UnaryOp::Erf => "erf",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
            UnaryOp::Floor => "floor",
            UnaryOp::Ceil => "ceil",
            UnaryOp::Round => "round",
            UnaryOp::Sign => "sign",
            UnaryOp::Softplus => "softplus",
            UnaryOp::Not => "not",
        }
    }

    /// Operations defined on floats only (the rest also take integers, `not` takes bool).
    pub fn float_only(self) -> bool {
        !matches!(
            self,
            UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Relu | UnaryOp::Sign | UnaryOp::Not
        )
    }
}

/// Elementwise operations of two operands, with numpy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
    /// Remainder with the sign of the divisor for integers (ONNX `fmod = 0`), C fmod for floats.
    Mod,
    Equal,
    Less,
    LessEqual,
    Greater,
    GreaterEqual,
    And,
    Or,
    Xor,
}

impl BinaryOp {
    pub const ALL: [BinaryOp; 16] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Pow,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Mod,
        BinaryOp::Equal,
        BinaryOp::Less,
        BinaryOp::LessEqual,
        BinaryOp::Greater,
        BinaryOp::GreaterEqual,
        BinaryOp::And,
        BinaryOp::Or,
        BinaryOp::Xor,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Pow => "pow",
            BinaryOp::Max => "max",
            BinaryOp::Min => "min",
            BinaryOp::Mod => "mod",
            BinaryOp::Equal => "equal",
            BinaryOp::Less => "less",
            BinaryOp::LessEqual => "less_equal",
            BinaryOp::Greater => "greater",
            BinaryOp::GreaterEqual => "greater_equal",
            BinaryOp::And => "and",
            BinaryOp::Or => "or",
            BinaryOp::Xor => "xor",
        }
    }

    /// Comparisons give bool whatever their operand type.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Equal
                | BinaryOp::Less
                | BinaryOp::LessEqual
                | BinaryOp::Greater
                | BinaryOp::GreaterEqual
        )
    }

    /// Logical operations take and give bool.
    pub fn is_logical(self) -> bool {
        matches!(self, BinaryOp::And | BinaryOp::Or | BinaryOp::Xor)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceKind {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    /// Square root of the sum of squares.
    L2,
}

impl ReduceKind {
    pub const ALL: [ReduceKind; 6] = [
        ReduceKind::Sum,
        ReduceKind::Mean,
        ReduceKind::Max,
        ReduceKind::Min,
        ReduceKind::Prod,
        ReduceKind::L2,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ReduceKind::Sum => "reduce_sum",
            ReduceKind::Mean => "reduce_mean",
            ReduceKind::Max => "reduce_max",
            ReduceKind::Min => "reduce_min",
            ReduceKind::Prod => "reduce_prod",
            ReduceKind::L2 => "reduce_l2",
        }
    }
}

/// Which elements a rotary embedding rotates together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RopeMode {
    /// Adjacent pairs `(x[2i], x[2i+1])`, GGML's normal mode.
    Interleaved,
    /// Halves `(x[i], x[i + d/2])`, Hugging Face's `rotate_half` (GGML's neox mode).
    Half,
}

/// What a linear layer does to its input activations before the product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ActQuant {
    /// Used as they are.
    #[default]
    None,
    /// Each row (token) quantized to int8: `inv = 127 / max|x|`, `q = round_even(x · inv)`,
    /// used as `q · (max|x| / 127)`; a row of zeros stays zero.
    I8PerToken,
}

impl ActQuant {
    pub fn name(self) -> &'static str {
        match self {
            ActQuant::None => "none",
            ActQuant::I8PerToken => "i8_per_token",
        }
    }
}

/// Static slice parameters, as ONNX Slice after its inputs are known.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SliceSpec {
    pub starts: Vec<i64>,
    pub ends: Vec<i64>,
    pub axes: Vec<i64>,
    pub steps: Vec<i64>,
}

/// An operation. Operand conventions are given per variant; axes may be negative
/// (counted from the end) wherever an axis is taken.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A small literal tensor (shapes, scalars). Large data belongs in a weight.
    Constant { value: Tensor },
    /// `(x)`.
    Unary(UnaryOp),
    /// `(a, b)`, broadcast.
    Binary(BinaryOp),
    /// `(cond, a, b)`, broadcast: `cond ? a : b`.
    Where,
    /// `(x)` converted to `to`.
    Cast { to: DType },
    /// `(x)` clamped to `[min, max]`.
    Clip { min: Option<f32>, max: Option<f32> },
    /// `(a, b)` with numpy matmul semantics: batched, broadcast, 1-D operands promoted.
    MatMul,
    /// `(x [.., K], w [N, K], bias [N]?) -> [.., N]`: `x · wᵀ + bias`. The weight may be encoded;
    /// this is the op compression passes rewrite. `act` says how activations are quantized.
    Linear { act: ActQuant },
    /// `(x)` softmax over `axis`.
    Softmax { axis: i64 },
    /// `(x)` log-softmax over `axis`.
    LogSoftmax { axis: i64 },
    /// `(x, scale, bias?)` normalized over the dimensions from `axis` on.
    LayerNorm { axis: i64, eps: f32 },
    /// `(x, scale)`: `x / sqrt(mean(x², axis..) + eps) · scale`.
    RmsNorm { axis: i64, eps: f32 },
    /// `(x)` reduced over `axes` (all when empty).
    Reduce {
        kind: ReduceKind,
        axes: Vec<i64>,
        keepdims: bool,
    },
    /// `(x)` index of the largest element along `axis`, as i64 (first on ties).
    ArgMax { axis: i64, keepdims: bool },
    /// `(data, indices)` as ONNX Gather; `data` may be encoded (an embedding table).
    Gather { axis: i64 },
    /// `(x)` with `shape` (0 copies the input's dimension, -1 is inferred),
    /// or `(x, shape)` with the shape as an i64 operand when `shape` is absent.
    Reshape { shape: Option<Vec<i64>> },
    /// `(x)` with its dimensions permuted.
    Transpose { perm: Vec<i64> },
    /// `(x0, x1, ..)` joined along `axis`.
    Concat { axis: i64 },
    /// `(x)` cut along `axis` into pieces of `sizes`; one result per piece.
    Split { axis: i64, sizes: Vec<i64> },
    /// `(x)` sliced with a static spec, or `(x, starts, ends, axes?, steps?)` as ONNX Slice.
    Slice { spec: Option<SliceSpec> },
    /// `(x)` without the size-1 dimensions `axes` (all size-1 dimensions when empty).
    Squeeze { axes: Vec<i64> },
    /// `(x)` with size-1 dimensions inserted at `axes` (positions in the result).
    Unsqueeze { axes: Vec<i64> },
    /// `(x)` broadcast to `shape`, or `(x, shape)` as ONNX Expand.
    Expand { shape: Option<Vec<i64>> },
    /// `(x)` as a 2-D tensor: dimensions before `axis` form the rows.
    Flatten { axis: i64 },
    /// `(x)` repeated `repeats` times per dimension, or `(x, repeats)`.
    Tile { repeats: Option<Vec<i64>> },
    /// `(x)` -> its shape as a 1-D i64 tensor, dimensions `start..end`.
    Shape { start: i64, end: Option<i64> },
    /// `(shape)` -> a tensor of that shape filled with `value` (a scalar tensor, giving the type).
    ConstantOfShape { value: Tensor },
    /// `(start, limit, delta)` scalars -> 1-D range.
    Range,
    /// `(x [B, S, H, D], positions [B, S])` rotated by `positions · base^(-2i/d)` over the first
    /// `dims` elements of D (all when absent).
    Rope {
        base: f32,
        mode: RopeMode,
        dims: Option<i64>,
    },
    /// `(q [B, H, S, D], k [B, Hkv, T, D], v [B, Hkv, T, Dv], mask?) -> [B, H, S, Dv]`.
    /// `H` is a multiple of `Hkv` (grouped KV heads). With `causal`, query `i` sees keys
    /// `j <= i + T − S`. `mask` is added to the scores, broadcast to `[B, H, S, T]`.
    Attention { causal: bool, scale: f32 },
    /// `(x)` appended along `axis` to the decoder state `state`; the result is the whole state
    /// after the append (past and new entries). The KV cache.
    CacheConcat { state: u32, axis: i64 },
}

/// An attribute value in the generic form.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Bool(bool),
    Str(String),
    Ints(Vec<i64>),
    Type(DType),
    Tensor(Tensor),
}

impl Op {
    /// A linear layer on unquantized activations.
    pub const LINEAR: Op = Op::Linear {
        act: ActQuant::None,
    };

    /// The op's name in the text form.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Constant { .. } => "const",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::Where => "where",
            Op::Cast { .. } => "cast",
            Op::Clip { .. } => "clip",
            Op::MatMul => "matmul",
            Op::Linear { .. } => "linear",
            Op::Softmax { .. } => "softmax",
            Op::LogSoftmax { .. } => "log_softmax",
            Op::LayerNorm { .. } => "layer_norm",
            Op::RmsNorm { .. } => "rms_norm",
            Op::Reduce { kind, .. } => kind.name(),
            Op::ArgMax { .. } => "argmax",
            Op::Gather { .. } => "gather",
            Op::Reshape { .. } => "reshape",
            Op::Transpose { .. } => "transpose",
            Op::Concat { .. } => "concat",
            Op::Split { .. } => "split",
            Op::Slice { .. } => "slice",
            Op::Squeeze { .. } => "squeeze",
            Op::Unsqueeze { .. } => "unsqueeze",
            Op::Expand { .. } => "expand",
            Op::Flatten { .. } => "flatten",
            Op::Tile { .. } => "tile",
            Op::Shape { .. } => "shape",
            Op::ConstantOfShape { .. } => "constant_of_shape",
            Op::Range => "range",
            Op::Rope { .. } => "rope",
            Op::Attention { .. } => "attention",
            Op::CacheConcat { .. } => "cache_concat",
        }
    }

    /// Every op name the text form knows.
    pub fn all_names() -> Vec<&'static str> {
        let mut v: Vec<&'static str> = vec![
            "const",
            "where",
            "cast",
            "clip",
            "matmul",
            "linear",
            "softmax",
            "log_softmax",
            "layer_norm",
            "rms_norm",
            "argmax",
            "gather",
            "reshape",
            "transpose",
            "concat",
            "split",
            "slice",
            "squeeze",
            "unsqueeze",
            "expand",
            "flatten",
            "tile",
            "shape",
            "constant_of_shape",
            "range",
            "rope",
            "attention",
            "cache_concat",
        ];
        v.extend(UnaryOp::ALL.iter().map(|u| u.name()));
        v.extend(BinaryOp::ALL.iter().map(|b| b.name()));
        v.extend(ReduceKind::ALL.iter().map(|r| r.name()));
        v
    }

    /// Operand count the op takes: (min, max), `None` max for variadic.
    pub fn arity(&self) -> (usize, Option<usize>) {
        match self {
            Op::Constant { .. } => (0, Some(0)),
            Op::Unary(_) | Op::Cast { .. } | Op::Clip { .. } => (1, Some(1)),
            Op::Binary(_) | Op::MatMul => (2, Some(2)),
            Op::Where | Op::Range => (3, Some(3)),
            Op::Linear { .. } => (2, Some(3)),
            Op::Softmax { .. } | Op::LogSoftmax { .. } | Op::Reduce { .. } | Op::ArgMax { .. } => {
                (1, Some(1))
            }
            Op::LayerNorm { .. } => (2, Some(3)),
            Op::RmsNorm { .. } | Op::Gather { .. } => (2, Some(2)),
            Op::Reshape { shape } => dyn_arity(shape.is_some(), 2),
            Op::Expand { shape } => dyn_arity(shape.is_some(), 2),
            Op::Tile { repeats } => dyn_arity(repeats.is_some(), 2),
            Op::Slice { spec } => {
                if spec.is_some() {
                    (1, Some(1))
                } else {
                    (3, Some(5))
                }
            }
            Op::Transpose { .. }
            | Op::Split { .. }
            | Op::Squeeze { .. }
            | Op::Unsqueeze { .. }
            | Op::Flatten { .. }
            | Op::Shape { .. }
            | Op::ConstantOfShape { .. }
            | Op::CacheConcat { .. } => (1, Some(1)),
            Op::Concat { .. } => (1, None),
            Op::Rope { .. } => (2, Some(2)),
            Op::Attention { .. } => (3, Some(4)),
        }
    }

    /// Number of results.
    pub fn num_results(&self) -> usize {
        match self {
            Op::Split { sizes, .. } => sizes.len(),
            _ => 1,
        }
    }

    /// Operand positions that may hold an encoded (non-dense) weight.
    pub fn accepts_encoded(&self, operand: usize) -> bool {
        matches!(
            (self, operand),
            (Op::Linear { .. }, 1) | (Op::Gather { .. }, 0) | (Op::MatMul, 1)
        )
    }

    /// Attributes in the generic form, sorted by name.
    pub fn attrs(&self) -> Vec<(&'static str, Attr)> {
        let mut a: Vec<(&'static str, Attr)> = match self {
            Op::Constant { value } => vec![("value", Attr::Tensor(value.clone()))],
            Op::Linear { act } => match act {
                ActQuant::None => vec![],
                a => vec![("act", Attr::Str(a.name().into()))],
            },
            Op::Unary(_) | Op::Binary(_) | Op::Where | Op::MatMul | Op::Range => {
                vec![]
            }
            Op::Cast { to } => vec![("to", Attr::Type(*to))],
            Op::Clip { min, max } => {
                let mut v = vec![];
                if let Some(m) = min {
                    v.push(("min", Attr::Float(*m)));
                }
                if let Some(m) = max {
                    v.push(("max", Attr::Float(*m)));
                }
                v
            }
            Op::Softmax { axis }
            | Op::LogSoftmax { axis }
            | Op::Gather { axis }
            | Op::Concat { axis } => {
                vec![("axis", Attr::Int(*axis))]
            }
            Op::Flatten { axis } => vec![("axis", Attr::Int(*axis))],
            Op::LayerNorm { axis, eps } | Op::RmsNorm { axis, eps } => {
                vec![("axis", Attr::Int(*axis)), ("eps", Attr::Float(*eps))]
            }
            Op::Reduce { axes, keepdims, .. } => {
                vec![
                    ("axes", Attr::Ints(axes.clone())),
                    ("keepdims", Attr::Bool(*keepdims)),
                ]
            }
            Op::ArgMax { axis, keepdims } => vec![
                ("axis", Attr::Int(*axis)),
                ("keepdims", Attr::Bool(*keepdims)),
            ],
            Op::Reshape { shape } | Op::Expand { shape } => shape
                .iter()
                .map(|s| ("shape", Attr::Ints(s.clone())))
                .collect(),
            Op::Tile { repeats } => repeats
                .iter()
                .map(|s| ("repeats", Attr::Ints(s.clone())))
                .collect(),
            Op::Transpose { perm } => vec![("perm", Attr::Ints(perm.clone()))],
            Op::Split { axis, sizes } => vec![
                ("axis", Attr::Int(*axis)),
                ("sizes", Attr::Ints(sizes.clone())),
            ],
            Op::Slice { spec } => match spec {
                None => vec![],
                Some(s) => vec![
                    ("axes", Attr::Ints(s.axes.clone())),
                    ("ends", Attr::Ints(s.ends.clone())),
                    ("starts", Attr::Ints(s.starts.clone())),
                    ("steps", Attr::Ints(s.steps.clone())),
                ],
            },
            Op::Squeeze { axes } | Op::Unsqueeze { axes } => {
                vec![("axes", Attr::Ints(axes.clone()))]
            }
            Op::Shape { start, end } => {
                let mut v = vec![("start", Attr::Int(*start))];
                if let Some(e) = end {
                    v.push(("end", Attr::Int(*e)));
                }
                v
            }
            Op::ConstantOfShape { value } => vec![("value", Attr::Tensor(value.clone()))],
            Op::Rope { base, mode, dims } => {
                let mut v = vec![
                    ("base", Attr::Float(*base)),
                    (
                        "mode",
                        Attr::Str(
                            match mode {
                                RopeMode::Interleaved => "interleaved",
                                RopeMode::Half => "half",
                            }
                            .into(),
                        ),
                    ),
                ];
                if let Some(d) = dims {
                    v.push(("dims", Attr::Int(*d)));
                }
                v
            }
            Op::Attention { causal, scale } => vec![
                ("causal", Attr::Bool(*causal)),
                ("scale", Attr::Float(*scale)),
            ],
            Op::CacheConcat { state, axis } => {
                vec![
                    ("axis", Attr::Int(*axis)),
                    ("state", Attr::Int(*state as i64)),
                ]
            }
        };
        a.sort_by_key(|(k, _)| *k);
        a
    }

    /// Builds an op from its name and generic attributes; the error says what is wrong.
    pub fn from_parts(name: &str, attrs: &BTreeMap<String, Attr>) -> Result<Op, AttrError> {
        let mut r = AttrReader {
            op: name,
            attrs,
            used: Vec::new(),
        };
        let op = match name {
            "const" => Op::Constant {
                value: r.tensor("value")?,
            },
            "where" => Op::Where,
            "cast" => Op::Cast { to: r.dtype("to")? },
            "clip" => Op::Clip {
                min: r.opt_float("min")?,
                max: r.opt_float("max")?,
            },
            "matmul" => Op::MatMul,
            "linear" => Op::Linear {
                act: match r.opt_str("act")?.as_deref() {
                    None | Some("none") => ActQuant::None,
                    Some("i8_per_token") => ActQuant::I8PerToken,
                    Some(a) => {
                        return Err(r.invalid(
                            "act",
                            "\"i8_per_token\" or \"none\"",
                            Attr::Str(a.into()),
                        ))
                    }
                },
            },
            "softmax" => Op::Softmax {
                axis: r.int("axis")?,
            },
            "log_softmax" => Op::LogSoftmax {
                axis: r.int("axis")?,
            },
            "layer_norm" => Op::LayerNorm {
                axis: r.int("axis")?,
                eps: r.float("eps")?,
            },
            "rms_norm" => Op::RmsNorm {
                axis: r.int("axis")?,
                eps: r.float("eps")?,
            },
            "argmax" => Op::ArgMax {
                axis: r.int("axis")?,
                keepdims: r.bool("keepdims")?,
            },
            "gather" => Op::Gather {
                axis: r.int("axis")?,
            },
            "reshape" => Op::Reshape {
                shape: r.opt_ints("shape")?,
            },
            "transpose" => Op::Transpose {
                perm: r.ints("perm")?,
            },
            "concat" => Op::Concat {
                axis: r.int("axis")?,
            },
            "split" => Op::Split {
                axis: r.int("axis")?,
                sizes: r.ints("sizes")?,
            },
            "slice" => {
                if attrs.is_empty() {
                    Op::Slice { spec: None }
                } else {
                    Op::Slice {
                        spec: Some(SliceSpec {
                            starts: r.ints("starts")?,
                            ends: r.ints("ends")?,
                            axes: r.ints("axes")?,
                            steps: r.ints("steps")?,
                        }),
                    }
                }
            }
            "squeeze" => Op::Squeeze {
                axes: r.ints("axes")?,
            },
            "unsqueeze" => Op::Unsqueeze {
                axes: r.ints("axes")?,
            },
            "expand" => Op::Expand {
                shape: r.opt_ints("shape")?,
            },
            "flatten" => Op::Flatten {
                axis: r.int("axis")?,
            },
            "tile" => Op::Tile {
                repeats: r.opt_ints("repeats")?,
            },
            "shape" => Op::Shape {
                start: r.int("start")?,
                end: r.opt_int("end")?,
            },
            "constant_of_shape" => Op::ConstantOfShape {
                value: r.tensor("value")?,
            },
            "range" => Op::Range,
            "rope" => Op::Rope {
                base: r.float("base")?,
                mode: match r.str("mode")?.as_str() {
                    "interleaved" => RopeMode::Interleaved,
                    "half" => RopeMode::Half,
                    m => {
                        return Err(r.invalid(
                            "mode",
                            "\"interleaved\" or \"half\"",
                            Attr::Str(m.into()),
                        ))
                    }
                },
                dims: r.opt_int("dims")?,
            },
            "attention" => Op::Attention {
                causal: r.bool("causal")?,
                scale: r.float("scale")?,
            },
            "cache_concat" => {
                let state = r.int("state")?;
                Op::CacheConcat {
                    state: u32::try_from(state).map_err(|_| {
                        r.invalid("state", "a small non-negative index", Attr::Int(state))
                    })?,
                    axis: r.int("axis")?,
                }
            }
            _ => {
                if let Some(u) = UnaryOp::ALL.iter().find(|u| u.name() == name) {
                    Op::Unary(*u)
                } else if let Some(b) = BinaryOp::ALL.iter().find(|b| b.name() == name) {
                    Op::Binary(*b)
                } else if let Some(k) = ReduceKind::ALL.iter().find(|k| k.name() == name) {
                    Op::Reduce {
                        kind: *k,
                        axes: r.ints("axes")?,
                        keepdims: r.bool("keepdims")?,
                    }
                } else {
                    return Err(AttrError::UnknownOp { op: name.into() });
                }
            }
        };
        if let Some(extra) = attrs.keys().find(|k| !r.used.contains(k)) {
            return Err(AttrError::Unexpected {
                op: name.into(),
                attr: extra.clone(),
            });
        }
        Ok(op)
    }
}

fn dyn_arity(static_attr: bool, dynamic: usize) -> (usize, Option<usize>) {
    if static_attr {
        (1, Some(1))
    } else {
        (dynamic, Some(dynamic))
    }
}

/// Why a name and generic attributes do not make an op (the parser adds file and line).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AttrError {
    #[error("unknown op '{op}'")]
    UnknownOp { op: String },
    #[error("op '{op}' has no attribute '{attr}'")]
    Unexpected { op: String, attr: String },
    /// (The parser's location points at the op, so the message leaves it out.)
    #[error("missing attribute '{attr}'")]
    Missing { op: String, attr: &'static str },
    /// An attribute of the wrong kind, or a value the op does not take.
    #[error(
        "attribute '{attr}' of {op} must be {expected}, not {}",
        crate::print::fmt_attr(found)
    )]
    Invalid {
        op: String,
        attr: &'static str,
        expected: &'static str,
        found: Attr,
    },
}

/// An axis outside `-rank..rank` (for rank 0, outside `-1..1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("axis {axis} is out of range for rank {rank}")]
pub struct AxisError {
    pub axis: i64,
    pub rank: usize,
}

struct AttrReader<'a> {
    op: &'a str,
    attrs: &'a BTreeMap<String, Attr>,
    used: Vec<&'a String>,
}

impl<'a> AttrReader<'a> {
    fn get(&mut self, key: &str) -> Option<&'a Attr> {
        let (k, v) = self.attrs.get_key_value(key)?;
        self.used.push(k);
        Some(v)
    }

    fn invalid(&self, attr: &'static str, expected: &'static str, found: Attr) -> AttrError {
        AttrError::Invalid {
            op: self.op.into(),
            attr,
            expected,
            found,
        }
    }

    fn req(&mut self, key: &'static str) -> Result<&'a Attr, AttrError> {
        self.get(key).ok_or_else(|| AttrError::Missing {
            op: self.op.into(),
            attr: key,
        })
    }

    /// Attribute `key` read by `f`, which says what it takes when the kind is wrong.
    fn read<T>(
        &mut self,
        key: &'static str,
        expected: &'static str,
        f: impl FnOnce(&'a Attr) -> Option<T>,
    ) -> Result<T, AttrError> {
        let a = self.req(key)?;
        f(a).ok_or_else(|| self.invalid(key, expected, a.clone()))
    }

    /// Attribute `key` read by `f` when present.
    fn opt<T>(
        &mut self,
        key: &'static str,
        f: impl FnOnce(&mut Self, &'static str) -> Result<T, AttrError>,
    ) -> Result<Option<T>, AttrError> {
        if self.attrs.contains_key(key) {
            f(self, key).map(Some)
        } else {
            Ok(None)
        }
    }

    fn int(&mut self, key: &'static str) -> Result<i64, AttrError> {
        self.read(key, "an integer", |a| match a {
            Attr::Int(i) => Some(*i),
            _ => None,
        })
    }

    fn opt_int(&mut self, key: &'static str) -> Result<Option<i64>, AttrError> {
        self.opt(key, Self::int)
    }

    fn float(&mut self, key: &'static str) -> Result<f32, AttrError> {
        self.read(key, "a float", |a| match a {
            Attr::Float(f) => Some(*f),
            Attr::Int(i) => Some(*i as f32),
            _ => None,
        })
    }

    fn opt_float(&mut self, key: &'static str) -> Result<Option<f32>, AttrError> {
        self.opt(key, Self::float)
    }

    fn bool(&mut self, key: &'static str) -> Result<bool, AttrError> {
        self.read(key, "true or false", |a| match a {
            Attr::Bool(b) => Some(*b),
            _ => None,
        })
    }

    fn str(&mut self, key: &'static str) -> Result<String, AttrError> {
        self.read(key, "a string", |a| match a {
            Attr::Str(s) => Some(s.clone()),
            _ => None,
        })
    }

    fn opt_str(&mut self, key: &'static str) -> Result<Option<String>, AttrError> {
        self.opt(key, Self::str)
    }

    fn ints(&mut self, key: &'static str) -> Result<Vec<i64>, AttrError> {
        self.read(key, "a list of integers", |a| match a {
            Attr::Ints(v) => Some(v.clone()),
            _ => None,
        })
    }

    fn opt_ints(&mut self, key: &'static str) -> Result<Option<Vec<i64>>, AttrError> {
        self.opt(key, Self::ints)
    }

    fn dtype(&mut self, key: &'static str) -> Result<DType, AttrError> {
        self.read(key, "an element type", |a| match a {
            Attr::Type(t) => Some(*t),
            _ => None,
        })
    }

    fn tensor(&mut self, key: &'static str) -> Result<Tensor, AttrError> {
        self.read(key, "a dense<..> tensor", |a| match a {
            Attr::Tensor(t) => Some(t.clone()),
            _ => None,
        })
    }
}

/// Resolves a possibly negative axis against a rank.
pub fn norm_axis(axis: i64, rank: usize) -> Result<usize, AxisError> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) {
        return Err(AxisError { axis, rank });
    }
    Ok(a as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_round_trips_through_generic_attrs() {
        let ops = vec![
            Op::Constant {
                value: Tensor::i64(vec![2], vec![3, 4]),
            },
            Op::Unary(UnaryOp::GeluTanh),
            Op::Binary(BinaryOp::GreaterEqual),
            Op::Cast { to: DType::F16 },
            Op::Clip {
                min: Some(0.0),
                max: None,
            },
            Op::LayerNorm {
                axis: -1,
                eps: 1e-12,
            },
            Op::Reduce {
                kind: ReduceKind::Mean,
                axes: vec![-1],
                keepdims: true,
            },
            Op::Reshape {
                shape: Some(vec![0, 0, 9, 64]),
            },
            Op::Reshape { shape: None },
            Op::Split {
                axis: 1,
                sizes: vec![2, 3],
            },
            Op::Slice {
                spec: Some(SliceSpec {
                    starts: vec![0],
                    ends: vec![4],
                    axes: vec![1],
                    steps: vec![1],
                }),
            },
            Op::Shape {
                start: 0,
                end: Some(2),
            },
            Op::Rope {
                base: 100000.0,
                mode: RopeMode::Interleaved,
                dims: None,
            },
            Op::Attention {
                causal: true,
                scale: 0.125,
            },
            Op::CacheConcat { state: 3, axis: 2 },
            Op::Linear {
                act: ActQuant::I8PerToken,
            },
            Op::LINEAR,
        ];
        for op in ops {
            let attrs: BTreeMap<String, Attr> = op
                .attrs()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            assert_eq!(Op::from_parts(op.name(), &attrs).unwrap(), op);
        }
    }

    #[test]
    fn unknown_names_and_attributes_are_errors() {
        assert_eq!(
            Op::from_parts("frobnicate", &BTreeMap::new()).unwrap_err(),
            AttrError::UnknownOp {
                op: "frobnicate".into()
            }
        );
        let mut a = BTreeMap::new();
        a.insert("axis".to_string(), Attr::Int(1));
        a.insert("bogus".to_string(), Attr::Int(1));
        let e = Op::from_parts("softmax", &a).unwrap_err();
        assert_eq!(e.to_string(), "op 'softmax' has no attribute 'bogus'");
        let e = Op::from_parts("softmax", &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("missing attribute 'axis'"), "{e}");
        a.remove("bogus");
        a.insert("axis".to_string(), Attr::Float(1.5));
        let e = Op::from_parts("softmax", &a).unwrap_err();
        assert!(
            matches!(
                &e,
                AttrError::Invalid {
                    attr: "axis",
                    expected: "an integer",
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "attribute 'axis' of softmax must be an integer, not 1.5"
        );
    }

    #[test]
    fn axes_normalize() {
        assert_eq!(norm_axis(-1, 3), Ok(2));
        assert_eq!(norm_axis(0, 0), Ok(0));
        assert_eq!(norm_axis(3, 3), Err(AxisError { axis: 3, rank: 3 }));
        assert!(norm_axis(-4, 3).is_err());
    }
}
