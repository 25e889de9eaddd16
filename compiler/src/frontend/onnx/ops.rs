//! The ONNX operators llmc imports, each mapped onto IR ops (several onto small compositions),
//! with their attributes checked: an attribute llmc does not know is an error, not ignored.

use super::proto::{attr_type as at, AttributeProto, NodeProto};
use super::{node_label, tensor, Importer};
use crate::frontend::{FrontendError, Result};
use llmc_ir::ops::norm_axis;
use llmc_ir::{BinaryOp, DType, Data, Dim, Op, ReduceKind, SliceSpec, Tensor, UnaryOp, ValueId};
use std::sync::OnceLock;

/// Every operator llmc imports, with the oldest default-domain opset whose definition of it
/// llmc implements (13 unless the operator has not changed since an older one).
const OPS: &[(&str, i64)] = &[
    ("Abs", 13),
    ("Add", 13),
    ("And", 7),
    ("ArgMax", 13),
    ("ArgMin", 13),
    ("Cast", 13),
    ("CastLike", 15),
    ("Ceil", 13),
    ("Celu", 12),
    ("Clip", 13),
    ("Concat", 13),
    ("Constant", 13),
    ("ConstantOfShape", 13),
    ("Cos", 13),
    ("Cosh", 13),
    ("Div", 13),
    ("Dropout", 13),
    ("Elu", 13),
    ("Equal", 13),
    ("Erf", 13),
    ("Exp", 13),
    ("Expand", 13),
    ("Flatten", 13),
    ("Floor", 13),
    ("Gather", 13),
    ("Gelu", 20),
    ("Gemm", 13),
    ("Greater", 13),
    ("GreaterOrEqual", 13),
    ("HardSigmoid", 13),
    ("HardSwish", 14),
    ("Identity", 13),
    ("IsInf", 13),
    ("IsNaN", 13),
    ("LayerNormalization", 17),
    ("LeakyRelu", 13),
    ("Less", 13),
    ("LessOrEqual", 13),
    ("Log", 13),
    ("LogSoftmax", 13),
    ("MatMul", 13),
    ("Max", 13),
    ("Mean", 13),
    ("Min", 13),
    ("Mish", 18),
    ("Mod", 13),
    ("Mul", 13),
    ("Neg", 13),
    ("Not", 1),
    ("Or", 7),
    ("Pow", 13),
    ("PRelu", 13),
    ("Range", 11),
    ("Reciprocal", 13),
    ("ReduceL1", 13),
    ("ReduceL2", 13),
    ("ReduceLogSum", 13),
    ("ReduceLogSumExp", 13),
    ("ReduceMax", 13),
    ("ReduceMean", 13),
    ("ReduceMin", 13),
    ("ReduceProd", 13),
    ("ReduceSum", 13),
    ("ReduceSumSquare", 13),
    ("Relu", 13),
    ("Reshape", 13),
    ("Round", 13),
    ("Selu", 13),
    ("Shape", 13),
    ("Sigmoid", 13),
    ("Sign", 13),
    ("Sin", 13),
    ("Sinh", 13),
    ("Size", 13),
    ("Slice", 13),
    ("Softmax", 13),
    ("Softplus", 13),
    ("Softsign", 13),
    ("Split", 13),
    ("Sqrt", 13),
    ("Squeeze", 13),
    ("Sub", 13),
    ("Sum", 13),
    ("Swish", 13),
    ("Tan", 13),
    ("Tanh", 13),
    ("ThresholdedRelu", 13),
    ("Tile", 13),
    ("Transpose", 13),
    ("Unsqueeze", 13),
    ("Where", 13),
    ("Xor", 7),
];

/// The ONNX operators (default domain) the importer claims, sorted.
pub fn supported_ops() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| OPS.iter().map(|(n, _)| *n).collect())
}

/// Operand positions of `op` that llmc must know at build time.
pub(crate) fn parameter_operands(op: &str) -> &'static [usize] {
    match op {
        "Clip" => &[1, 2],
        "Squeeze" | "Unsqueeze" | "Split" => &[1],
        "Dropout" => &[2],
        o if o.starts_with("Reduce") => &[1],
        _ => &[],
    }
}

/// One ONNX node being imported.
struct Cx<'a, 'b> {
    imp: &'a mut Importer<'b>,
    n: &'a NodeProto,
    label: String,
    op: &'a str,
}

/// Imports node `n` (the `index`-th of the graph) and binds its outputs.
pub(crate) fn import_node(imp: &mut Importer<'_>, n: &NodeProto, index: usize) -> Result<()> {
    let op = n.op_type.as_deref().unwrap_or("");
    let label = node_label(n, index);
    let domain = n.domain.as_deref().unwrap_or("");
    if !(domain.is_empty() || domain == "ai.onnx") {
        return Err(FrontendError::unsupported(
            imp.path,
            format!("{label}: operator domain '{domain}' is not supported; llmc imports the default ONNX domain only (export without custom or runtime-specific ops)"),
        ));
    }
    let Some(&(_, since)) = OPS.iter().find(|(name, _)| *name == op) else {
        return Err(FrontendError::unsupported(
            imp.path,
            format!(
                "{label}: operator '{op}' is not supported; llmc imports {}",
                supported_ops().join(", ")
            ),
        ));
    };
    if imp.opset < since {
        return Err(FrontendError::unsupported(
            imp.path,
            format!(
                "{label}: the model uses opset {}, older than {since}, the first whose {op} llmc imports; re-export it with opset 13 or newer (torch.onnx.export(..., opset_version=17)) or convert it with onnx.version_converter",
                imp.opset
            ),
        ));
    }
    for a in &n.attribute {
        if a.ref_attr_name.as_deref().is_some_and(|r| !r.is_empty()) {
            return Err(FrontendError::unsupported(imp.path, format!("{label}: attribute '{}' refers to a function attribute; llmc imports graphs, not function bodies", a.name.as_deref().unwrap_or(""))));
        }
    }
    let mut cx = Cx { imp, n, label, op };
    let outs = cx.map()?;
    for (i, name) in n.output.iter().enumerate() {
        if name.is_empty() {
            continue;
        }
        let Some(&v) = outs.get(i) else {
            return Err(cx.unsupported(format!("output {i} ('{name}') is not supported")));
        };
        cx.imp.env.insert(name.clone(), v);
    }
    Ok(())
}

fn scalar(v: f64, dt: DType) -> Tensor {
    if dt.is_float() {
        Tensor::f32(vec![], vec![v as f32]).cast(dt)
    } else {
        Tensor::i64(vec![], vec![v as i64]).cast(dt)
    }
}

impl<'a, 'b> Cx<'a, 'b> {
    fn bad(&self, msg: impl std::fmt::Display) -> FrontendError {
        FrontendError::bad(self.imp.path, format!("{}: {msg}", self.label))
    }

    fn unsupported(&self, msg: impl std::fmt::Display) -> FrontendError {
        FrontendError::unsupported(self.imp.path, format!("{}: {msg}", self.label))
    }

    // ---- operands ----

    /// Operand `i`, `None` when absent or left empty.
    fn input(&self, i: usize) -> Result<Option<ValueId>> {
        match self.n.input.get(i).map(|s| s.as_str()) {
            None | Some("") => Ok(None),
            Some(name) => match self.imp.env.get(name) {
                Some(v) => Ok(Some(*v)),
                None => Err(self.bad(format!(
                    "reads '{name}', which no earlier node, graph input or initializer defines (nodes must come in topological order)"
                ))),
            },
        }
    }

    /// Operand `i`, which must be present.
    fn req(&self, i: usize) -> Result<ValueId> {
        self.input(i)?
            .ok_or_else(|| self.bad(format!("operand {i} is missing")))
    }

    /// Operand `i`'s value when present; it must be known at build time.
    fn const_input(&self, i: usize, what: &str) -> Result<Option<Tensor>> {
        let Some(v) = self.input(i)? else {
            return Ok(None);
        };
        match self.imp.known(v) {
            Some(t) => Ok(Some(t)),
            None => Err(self.unsupported(format!(
                "the {what} (operand {i}, '{}') must be known when the model is built; make it an initializer or a Constant, or pin the graph input",
                self.n.input[i]
            ))),
        }
    }

    fn ints_input(&self, i: usize, what: &str) -> Result<Option<Vec<i64>>> {
        Ok(self.const_input(i, what)?.map(|t| t.to_i64_vec()))
    }

    fn variadic(&self) -> Result<Vec<ValueId>> {
        let mut v = Vec::new();
        for i in 0..self.n.input.len() {
            if let Some(x) = self.input(i)? {
                v.push(x);
            }
        }
        if v.is_empty() {
            return Err(self.bad("takes at least one operand"));
        }
        Ok(v)
    }

    fn dtype(&self, v: ValueId) -> DType {
        self.imp.g.ty(v).dtype()
    }

    fn rank(&self, v: ValueId) -> usize {
        self.imp.g.ty(v).rank()
    }

    // ---- building ----

    fn add(&mut self, op: Op, inputs: &[ValueId]) -> Result<Vec<ValueId>> {
        let label = self.label.clone();
        self.imp.add(op, inputs, &label)
    }

    fn add1(&mut self, op: Op, inputs: &[ValueId]) -> Result<ValueId> {
        Ok(self.add(op, inputs)?[0])
    }

    fn un(&mut self, u: UnaryOp, x: ValueId) -> Result<ValueId> {
        self.add1(Op::Unary(u), &[x])
    }

    fn bin(&mut self, b: BinaryOp, x: ValueId, y: ValueId) -> Result<ValueId> {
        self.add1(Op::Binary(b), &[x, y])
    }

    /// A scalar constant of `x`'s element type.
    fn scalar_like(&mut self, v: f64, x: ValueId) -> ValueId {
        let dt = self.dtype(x);
        self.imp.constant(scalar(v, dt))
    }

    // ---- attributes ----

    fn attr(&self, name: &str) -> Option<&'a AttributeProto> {
        self.n
            .attribute
            .iter()
            .find(|a| a.name.as_deref() == Some(name))
    }

    /// Rejects attributes the op does not know.
    fn only(&self, known: &[&str]) -> Result<()> {
        for a in &self.n.attribute {
            let name = a.name.as_deref().unwrap_or("");
            if !known.contains(&name) {
                return Err(self.unsupported(format!(
                    "attribute '{name}' is not supported (llmc knows {} for {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    },
                    self.op
                )));
            }
        }
        Ok(())
    }

    fn check_type(&self, a: &AttributeProto, want: i32) -> Result<()> {
        match a.r#type {
            Some(t) if t != want && t != 0 => Err(self.bad(format!(
                "attribute '{}' must be of type {}, not {}",
                a.name.as_deref().unwrap_or(""),
                at::name(want),
                at::name(t)
            ))),
            _ => Ok(()),
        }
    }

    fn int(&self, name: &str, default: i64) -> Result<i64> {
        match self.attr(name) {
            None => Ok(default),
            Some(a) => {
                self.check_type(a, at::INT)?;
                Ok(a.i.unwrap_or(0))
            }
        }
    }

    fn float(&self, name: &str, default: f32) -> Result<f32> {
        match self.attr(name) {
            None => Ok(default),
            Some(a) => {
                self.check_type(a, at::FLOAT)?;
                Ok(a.f.unwrap_or(0.0))
            }
        }
    }

    fn ints(&self, name: &str) -> Result<Option<Vec<i64>>> {
        match self.attr(name) {
            None => Ok(None),
            Some(a) => {
                self.check_type(a, at::INTS)?;
                Ok(Some(a.ints.clone()))
            }
        }
    }

    fn string(&self, name: &str) -> Result<Option<String>> {
        match self.attr(name) {
            None => Ok(None),
            Some(a) => {
                self.check_type(a, at::STRING)?;
                let s = a.s.clone().unwrap_or_default();
                String::from_utf8(s)
                    .map(Some)
                    .map_err(|_| self.bad(format!("attribute '{name}' is not UTF-8")))
            }
        }
    }

    fn tensor_attr(&self, name: &str) -> Result<Option<Tensor>> {
        match self.attr(name) {
            None => Ok(None),
            Some(a) => {
                self.check_type(a, at::TENSOR)?;
                let t =
                    a.t.as_ref()
                        .ok_or_else(|| self.bad(format!("attribute '{name}' holds no tensor")))?;
                let raw = self
                    .imp
                    .src
                    .read(t, &format!("{}: attribute '{name}'", self.label))?;
                Ok(Some(raw.to_tensor()))
            }
        }
    }

    fn dtype_attr(&self, name: &str) -> Result<DType> {
        let code = self
            .attr(name)
            .ok_or_else(|| self.bad(format!("attribute '{name}' is missing")))?;
        self.check_type(code, at::INT)?;
        tensor::dtype_of(code.i.unwrap_or(0) as i32)
            .map_err(|m| self.unsupported(format!("attribute '{name}': {m}")))
    }

    /// Reduction axes: the `axes` operand (which must be constant) or attribute.
    fn axes(&self, operand: usize) -> Result<Option<Vec<i64>>> {
        if let Some(a) = self.ints_input(operand, "axes")? {
            return Ok(Some(a));
        }
        self.ints("axes")
    }

    // ---- the ops ----

    fn map(&mut self) -> Result<Vec<ValueId>> {
        use BinaryOp as B;
        use UnaryOp as U;
        let unary = |name: &str| -> Option<UnaryOp> {
            Some(match name {
                "Abs" => U::Abs,
                "Neg" => U::Neg,
                "Exp" => U::Exp,
                "Log" => U::Log,
                "Sqrt" => U::Sqrt,
                "Reciprocal" => U::Reciprocal,
                "Tanh" => U::Tanh,
                "Sigmoid" => U::Sigmoid,
                "Relu" => U::Relu,
                "Erf" => U::Erf,
                "Sin" => U::Sin,
                "Cos" => U::Cos,
                "Floor" => U::Floor,
                "Ceil" => U::Ceil,
                "Round" => U::Round,
                "Sign" => U::Sign,
                "Softplus" => U::Softplus,
                "Not" => U::Not,
                _ => return None,
            })
        };
        let binary = |name: &str| -> Option<BinaryOp> {
            Some(match name {
                "Add" => B::Add,
                "Sub" => B::Sub,
                "Mul" => B::Mul,
                "Div" => B::Div,
                "Equal" => B::Equal,
                "Less" => B::Less,
                "LessOrEqual" => B::LessEqual,
                "Greater" => B::Greater,
                "GreaterOrEqual" => B::GreaterEqual,
                "And" => B::And,
                "Or" => B::Or,
                "Xor" => B::Xor,
                _ => return None,
            })
        };
        let op = self.op;
        if let Some(u) = unary(op) {
            self.only(&[])?;
            let x = self.req(0)?;
            return Ok(vec![self.un(u, x)?]);
        }
        if let Some(b) = binary(op) {
            self.only(&[])?;
            let (x, y) = (self.req(0)?, self.req(1)?);
            return Ok(vec![self.bin(b, x, y)?]);
        }
        let one = |v: ValueId| Ok(vec![v]);
        match op {
            "Identity" => {
                self.only(&[])?;
                one(self.req(0)?)
            }
            "Pow" => {
                self.only(&[])?;
                let (x, mut y) = (self.req(0)?, self.req(1)?);
                if self.dtype(y) != self.dtype(x) {
                    let to = self.dtype(x);
                    y = self.add1(Op::Cast { to }, &[y])?;
                }
                one(self.bin(B::Pow, x, y)?)
            }
            "Mod" => {
                self.only(&["fmod"])?;
                let fmod = self.int("fmod", 0)? != 0;
                let (x, y) = (self.req(0)?, self.req(1)?);
                let float = self.dtype(x).is_float();
                if float && !fmod {
                    return Err(self.bad("floating-point Mod needs fmod = 1"));
                }
                if !float && fmod {
                    // the remainder with the dividend's sign: a - trunc(a / b)·b
                    let q = self.bin(B::Div, x, y)?;
                    let qb = self.bin(B::Mul, q, y)?;
                    return one(self.bin(B::Sub, x, qb)?);
                }
                one(self.bin(B::Mod, x, y)?)
            }
            "Max" | "Min" | "Sum" | "Mean" => {
                self.only(&[])?;
                let xs = self.variadic()?;
                let b = match op {
                    "Max" => B::Max,
                    "Min" => B::Min,
                    _ => B::Add,
                };
                let mut acc = xs[0];
                for &x in &xs[1..] {
                    acc = self.bin(b, acc, x)?;
                }
                if op == "Mean" && xs.len() > 1 {
                    let n = self.scalar_like(xs.len() as f64, acc);
                    acc = self.bin(B::Div, acc, n)?;
                }
                one(acc)
            }
            "Where" => {
                self.only(&[])?;
                let (c, x, y) = (self.req(0)?, self.req(1)?, self.req(2)?);
                one(self.add1(Op::Where, &[c, x, y])?)
            }
            "Cast" | "CastLike" => {
                self.only(&["to", "saturate", "round_mode"])?;
                let x = self.req(0)?;
                let to = if op == "Cast" {
                    self.dtype_attr("to")?
                } else {
                    self.dtype(self.req(1)?)
                };
                one(self.add1(Op::Cast { to }, &[x])?)
            }
            "Clip" => {
                self.only(&[])?;
                let x = self.req(0)?;
                let bound = |t: Option<Tensor>| -> Result<Option<f32>> {
                    match t {
                        None => Ok(None),
                        Some(t) if t.numel() == 1 => Ok(Some(t.to_f32_vec()[0])),
                        Some(t) => Err(self.bad(format!(
                            "clip bounds must be scalars, got shape {:?}",
                            t.shape
                        ))),
                    }
                };
                let min = bound(self.const_input(1, "lower bound")?)?;
                let max = bound(self.const_input(2, "upper bound")?)?;
                one(self.add1(Op::Clip { min, max }, &[x])?)
            }
            "MatMul" => {
                self.only(&[])?;
                let (a, b) = (self.req(0)?, self.req(1)?);
                one(self.add1(Op::MatMul, &[a, b])?)
            }
            "Gemm" => {
                self.only(&["alpha", "beta", "transA", "transB"])?;
                let (mut a, mut b) = (self.req(0)?, self.req(1)?);
                let c = self.input(2)?;
                if self.rank(a) != 2 || self.rank(b) != 2 {
                    return Err(self.bad(format!(
                        "A and B must be 2-D, got {} and {}",
                        self.imp.g.ty(a),
                        self.imp.g.ty(b)
                    )));
                }
                let (alpha, beta) = (self.float("alpha", 1.0)?, self.float("beta", 1.0)?);
                if self.int("transA", 0)? != 0 {
                    a = self.add1(Op::Transpose { perm: vec![1, 0] }, &[a])?;
                }
                if self.int("transB", 0)? != 0 {
                    b = self.add1(Op::Transpose { perm: vec![1, 0] }, &[b])?;
                }
                let mut y = self.add1(Op::MatMul, &[a, b])?;
                if alpha != 1.0 {
                    let s = self.scalar_like(alpha as f64, y);
                    y = self.bin(B::Mul, y, s)?;
                }
                if let Some(mut c) = c {
                    if beta != 1.0 {
                        let s = self.scalar_like(beta as f64, c);
                        c = self.bin(B::Mul, c, s)?;
                    }
                    y = self.bin(B::Add, y, c)?;
                }
                one(y)
            }
            "Softmax" | "LogSoftmax" => {
                self.only(&["axis"])?;
                let axis = self.int("axis", -1)?;
                let x = self.req(0)?;
                let o = if op == "Softmax" {
                    Op::Softmax { axis }
                } else {
                    Op::LogSoftmax { axis }
                };
                one(self.add1(o, &[x])?)
            }
            "LayerNormalization" => self.layer_norm(),
            "Gelu" => {
                self.only(&["approximate"])?;
                let x = self.req(0)?;
                let u = match self.string("approximate")?.as_deref() {
                    None | Some("none") => U::Gelu,
                    Some("tanh") => U::GeluTanh,
                    Some(other) => {
                        return Err(self.bad(format!(
                            "approximate must be \"none\" or \"tanh\", not {other:?}"
                        )))
                    }
                };
                one(self.un(u, x)?)
            }
            "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL2"
            | "ReduceL1" | "ReduceSumSquare" | "ReduceLogSum" | "ReduceLogSumExp" => self.reduce(),
            "ArgMax" | "ArgMin" => {
                self.only(&["axis", "keepdims", "select_last_index"])?;
                let last = self.int("select_last_index", 0)? != 0;
                let mut x = self.req(0)?;
                let (axis, keepdims) = (self.int("axis", 0)?, self.int("keepdims", 1)? != 0);
                if op == "ArgMin" {
                    if !self.dtype(x).is_float() {
                        return Err(self.unsupported("ArgMin of integers (llmc finds it as the ArgMax of the negation, exact for floats only)"));
                    }
                    x = self.un(U::Neg, x)?;
                }
                if !last {
                    return one(self.add1(Op::ArgMax { axis, keepdims }, &[x])?);
                }
                // the last of equal values: the first in the reversed axis, counted from the end
                let a = norm_axis(axis, self.rank(x)).map_err(|m| self.bad(m))?;
                let Dim::Fixed(n) = self.imp.g.ty(x).shape.0[a] else {
                    return Err(self.unsupported(
                        "select_last_index = 1 over an axis whose length is known only at run time",
                    ));
                };
                let spec = SliceSpec {
                    starts: vec![-1],
                    ends: vec![i64::MIN],
                    axes: vec![a as i64],
                    steps: vec![-1],
                };
                let rev = self.add1(Op::Slice { spec: Some(spec) }, &[x])?;
                let i = self.add1(Op::ArgMax { axis, keepdims }, &[rev])?;
                let top = self.imp.constant(Tensor::scalar_i64(n as i64 - 1));
                one(self.bin(B::Sub, top, i)?)
            }
            "Gather" => {
                self.only(&["axis"])?;
                let axis = self.int("axis", 0)?;
                let (d, i) = (self.req(0)?, self.req(1)?);
                one(self.add1(Op::Gather { axis }, &[d, i])?)
            }
            "Reshape" => {
                self.only(&["allowzero"])?;
                let x = self.req(0)?;
                let s = self.req(1)?;
                let allowzero = self.int("allowzero", 0)? != 0;
                match self.imp.known(s) {
                    Some(t) => {
                        let shape = t.to_i64_vec();
                        if allowzero && shape.contains(&0) {
                            return Err(self.unsupported("allowzero = 1 with a 0 in the shape (an empty dimension); llmc's reshape reads 0 as 'copy this dimension'"));
                        }
                        one(self.add1(Op::Reshape { shape: Some(shape) }, &[x])?)
                    }
                    None if allowzero => {
                        Err(self.unsupported("allowzero = 1 with a shape computed at run time"))
                    }
                    None => one(self.add1(Op::Reshape { shape: None }, &[x, s])?),
                }
            }
            "Transpose" => {
                self.only(&["perm"])?;
                let x = self.req(0)?;
                let perm = self.ints("perm")?.unwrap_or_default();
                one(self.add1(Op::Transpose { perm }, &[x])?)
            }
            "Concat" => {
                self.only(&["axis"])?;
                let axis = self
                    .attr("axis")
                    .ok_or_else(|| self.bad("attribute 'axis' is missing"))?;
                self.check_type(axis, at::INT)?;
                let axis = axis.i.unwrap_or(0);
                let xs = self.variadic()?;
                one(self.add1(Op::Concat { axis }, &xs)?)
            }
            "Split" => self.split(),
            "Slice" => {
                self.only(&[])?;
                let x = self.req(0)?;
                let (starts, ends) = (self.req(1)?, self.req(2)?);
                let (axes, steps) = (self.input(3)?, self.input(4)?);
                let k = |v: Option<ValueId>, cx: &Self| {
                    v.map(|v| cx.imp.known(v).map(|t| t.to_i64_vec()))
                };
                let (ks, ke) = (
                    self.imp.known(starts).map(|t| t.to_i64_vec()),
                    self.imp.known(ends).map(|t| t.to_i64_vec()),
                );
                let (ka, kp) = (k(axes, self), k(steps, self));
                if let (Some(s), Some(e)) = (&ks, &ke) {
                    let n = s.len();
                    let a = match &ka {
                        None => Some((0..n as i64).collect()),
                        Some(a) => a.clone(),
                    };
                    let p = match &kp {
                        None => Some(vec![1; n]),
                        Some(p) => p.clone(),
                    };
                    if let (Some(a), Some(p)) = (a, p) {
                        let spec = SliceSpec {
                            starts: s.clone(),
                            ends: e.clone(),
                            axes: a,
                            steps: p,
                        };
                        return one(self.add1(Op::Slice { spec: Some(spec) }, &[x])?);
                    }
                }
                let mut args = vec![x, starts, ends];
                match (axes, steps) {
                    (Some(a), Some(p)) => args.extend([a, p]),
                    (Some(a), None) => args.push(a),
                    (None, Some(p)) => {
                        let n = match self.imp.g.ty(starts).shape.0.first() {
                            Some(Dim::Fixed(n)) => *n as i64,
                            _ => {
                                return Err(self.unsupported(
                                    "steps without axes when the number of starts is not known",
                                ))
                            }
                        };
                        let a = self
                            .imp
                            .constant(Tensor::i64(vec![n as usize], (0..n).collect()));
                        args.extend([a, p]);
                    }
                    (None, None) => {}
                }
                one(self.add1(Op::Slice { spec: None }, &args)?)
            }
            "Squeeze" => {
                self.only(&[])?;
                let x = self.req(0)?;
                let axes = self.ints_input(1, "axes")?.unwrap_or_default();
                one(self.add1(Op::Squeeze { axes }, &[x])?)
            }
            "Unsqueeze" => {
                self.only(&[])?;
                let x = self.req(0)?;
                let axes = self
                    .ints_input(1, "axes")?
                    .ok_or_else(|| self.bad("operand 1 (axes) is missing"))?;
                one(self.add1(Op::Unsqueeze { axes }, &[x])?)
            }
            "Expand" | "Tile" => {
                self.only(&[])?;
                let (x, s) = (self.req(0)?, self.req(1)?);
                let known = self.imp.known(s).map(|t| t.to_i64_vec());
                let (o, args) = match (op, known) {
                    ("Expand", Some(k)) => (Op::Expand { shape: Some(k) }, vec![x]),
                    ("Expand", None) => (Op::Expand { shape: None }, vec![x, s]),
                    (_, Some(k)) => (Op::Tile { repeats: Some(k) }, vec![x]),
                    (_, None) => (Op::Tile { repeats: None }, vec![x, s]),
                };
                one(self.add1(o, &args)?)
            }
            "Flatten" => {
                self.only(&["axis"])?;
                let axis = self.int("axis", 1)?;
                let x = self.req(0)?;
                one(self.add1(Op::Flatten { axis }, &[x])?)
            }
            "Shape" => {
                self.only(&["start", "end"])?;
                let x = self.req(0)?;
                let start = self.int("start", 0)?;
                let end = match self.attr("end") {
                    Some(_) => Some(self.int("end", 0)?),
                    None => None,
                };
                one(self.add1(Op::Shape { start, end }, &[x])?)
            }
            "Size" => {
                self.only(&[])?;
                let x = self.req(0)?;
                if let Some(n) = self.imp.g.ty(x).shape.numel() {
                    return one(self.imp.constant(Tensor::scalar_i64(n as i64)));
                }
                let s = self.add1(
                    Op::Shape {
                        start: 0,
                        end: None,
                    },
                    &[x],
                )?;
                one(self.add1(
                    Op::Reduce {
                        kind: ReduceKind::Prod,
                        axes: vec![],
                        keepdims: false,
                    },
                    &[s],
                )?)
            }
            "ConstantOfShape" => {
                self.only(&["value"])?;
                let s = self.req(0)?;
                let value = self
                    .tensor_attr("value")?
                    .unwrap_or_else(|| Tensor::f32(vec![1], vec![0.0]));
                if value.numel() != 1 {
                    return Err(self.bad(format!(
                        "attribute 'value' must hold one element, holds {}",
                        value.numel()
                    )));
                }
                one(self.add1(Op::ConstantOfShape { value }, &[s])?)
            }
            "Range" => {
                self.only(&[])?;
                let (s, l, d) = (self.req(0)?, self.req(1)?, self.req(2)?);
                one(self.add1(Op::Range, &[s, l, d])?)
            }
            "Constant" => self.constant(),
            "Dropout" => {
                self.only(&["seed"])?;
                let x = self.req(0)?;
                if let Some(t) = self.const_input(2, "training mode")? {
                    if t.to_i64_vec().iter().any(|&b| b != 0) {
                        return Err(self.unsupported(
                            "training-mode dropout (random); llmc compiles inference graphs",
                        ));
                    }
                }
                let mut outs = vec![x];
                if self.n.output.get(1).is_some_and(|m| !m.is_empty()) {
                    let s = self.add1(
                        Op::Shape {
                            start: 0,
                            end: None,
                        },
                        &[x],
                    )?;
                    let m = self.add1(
                        Op::ConstantOfShape {
                            value: Tensor::new(vec![1], Data::Bool(vec![true])),
                        },
                        &[s],
                    )?;
                    outs.push(m);
                }
                Ok(outs)
            }
            _ => self.composite(),
        }
    }

    /// Activations and math written as small compositions of IR ops.
    fn composite(&mut self) -> Result<Vec<ValueId>> {
        use BinaryOp as B;
        use UnaryOp as U;
        let op = self.op;
        let x = self.req(0)?;
        if !self.dtype(x).is_float() && !matches!(op, "PRelu") {
            return Err(self.unsupported(format!(
                "{op} of {} (llmc computes it on floats)",
                self.dtype(x)
            )));
        }
        let c = |cx: &mut Self, v: f64| cx.scalar_like(v, x);
        let y = match op {
            "LeakyRelu" | "Elu" | "Selu" | "Celu" | "ThresholdedRelu" | "HardSigmoid"
            | "HardSwish" | "Softsign" | "Mish" | "Swish" | "Tan" | "Sinh" | "Cosh" | "IsNaN"
            | "IsInf" | "PRelu" => {
                let known: &[&str] = match op {
                    "LeakyRelu" | "Celu" | "ThresholdedRelu" | "Swish" | "Elu" => &["alpha"],
                    "Selu" => &["alpha", "gamma"],
                    "HardSigmoid" => &["alpha", "beta"],
                    "IsInf" => &["detect_negative", "detect_positive"],
                    _ => &[],
                };
                self.only(known)?;
                match op {
                    "LeakyRelu" | "PRelu" => {
                        // x < 0 ? x·α : x
                        let slope = if op == "PRelu" {
                            self.req(1)?
                        } else {
                            let a = self.float("alpha", 0.01)?;
                            c(self, a as f64)
                        };
                        let zero = c(self, 0.0);
                        let neg = self.bin(B::Less, x, zero)?;
                        let scaled = self.bin(B::Mul, x, slope)?;
                        self.add1(Op::Where, &[neg, scaled, x])?
                    }
                    "Elu" | "Selu" => {
                        // x ≤ 0 ? α(eˣ − 1) : x, times γ for selu
                        let (da, dg) = if op == "Elu" {
                            (1.0, 1.0)
                        } else {
                            (1.673_263_192_176_818_8, 1.050_701_022_148_132_3)
                        };
                        let alpha = self.float("alpha", da as f32)? as f64;
                        let zero = c(self, 0.0);
                        let le =
                            self.bin(if op == "Elu" { B::Less } else { B::LessEqual }, x, zero)?;
                        let e = self.un(U::Exp, x)?;
                        let one = c(self, 1.0);
                        let em1 = self.bin(B::Sub, e, one)?;
                        let a = c(self, alpha);
                        let neg = self.bin(B::Mul, em1, a)?;
                        let y = self.add1(Op::Where, &[le, neg, x])?;
                        if op == "Selu" {
                            let gamma = self.float("gamma", dg as f32)? as f64;
                            let g = c(self, gamma);
                            self.bin(B::Mul, y, g)?
                        } else {
                            y
                        }
                    }
                    "Celu" => {
                        // max(0, x) + min(0, α(e^(x/α) − 1))
                        let alpha = self.float("alpha", 1.0)? as f64;
                        let a = c(self, alpha);
                        let zero = c(self, 0.0);
                        let one = c(self, 1.0);
                        let xa = self.bin(B::Div, x, a)?;
                        let e = self.un(U::Exp, xa)?;
                        let em1 = self.bin(B::Sub, e, one)?;
                        let neg = self.bin(B::Mul, em1, a)?;
                        let lo = self.bin(B::Min, neg, zero)?;
                        let hi = self.bin(B::Max, x, zero)?;
                        self.bin(B::Add, hi, lo)?
                    }
                    "ThresholdedRelu" => {
                        // x > α ? x : 0
                        let alpha = self.float("alpha", 1.0)? as f64;
                        let a = c(self, alpha);
                        let zero = c(self, 0.0);
                        let gt = self.bin(B::Greater, x, a)?;
                        self.add1(Op::Where, &[gt, x, zero])?
                    }
                    "HardSigmoid" | "HardSwish" => {
                        // clip(αx + β, 0, 1), times x for hard swish
                        let (alpha, beta) = if op == "HardSigmoid" {
                            (self.float("alpha", 0.2)?, self.float("beta", 0.5)?)
                        } else {
                            (1.0 / 6.0, 0.5)
                        };
                        let a = c(self, alpha as f64);
                        let b = c(self, beta as f64);
                        let ax = self.bin(B::Mul, x, a)?;
                        let axb = self.bin(B::Add, ax, b)?;
                        let h = self.add1(
                            Op::Clip {
                                min: Some(0.0),
                                max: Some(1.0),
                            },
                            &[axb],
                        )?;
                        if op == "HardSwish" {
                            self.bin(B::Mul, x, h)?
                        } else {
                            h
                        }
                    }
                    "Softsign" => {
                        // x / (1 + |x|)
                        let one = c(self, 1.0);
                        let a = self.un(U::Abs, x)?;
                        let d = self.bin(B::Add, one, a)?;
                        self.bin(B::Div, x, d)?
                    }
                    "Mish" => {
                        // x · tanh(softplus(x))
                        let s = self.un(U::Softplus, x)?;
                        let t = self.un(U::Tanh, s)?;
                        self.bin(B::Mul, x, t)?
                    }
                    "Swish" => {
                        // x · σ(αx)
                        let alpha = self.float("alpha", 1.0)? as f64;
                        let a = c(self, alpha);
                        let ax = self.bin(B::Mul, x, a)?;
                        let s = self.un(U::Sigmoid, ax)?;
                        self.bin(B::Mul, x, s)?
                    }
                    "Tan" => {
                        let s = self.un(U::Sin, x)?;
                        let k = self.un(U::Cos, x)?;
                        self.bin(B::Div, s, k)?
                    }
                    "Sinh" | "Cosh" => {
                        // (eˣ ∓ e⁻ˣ) / 2
                        let e = self.un(U::Exp, x)?;
                        let nx = self.un(U::Neg, x)?;
                        let en = self.un(U::Exp, nx)?;
                        let s = self.bin(if op == "Sinh" { B::Sub } else { B::Add }, e, en)?;
                        let half = c(self, 0.5);
                        self.bin(B::Mul, s, half)?
                    }
                    "IsNaN" => {
                        let eq = self.bin(B::Equal, x, x)?;
                        self.un(U::Not, eq)?
                    }
                    _ => {
                        // IsInf
                        let (neg, pos) = (
                            self.int("detect_negative", 1)? != 0,
                            self.int("detect_positive", 1)? != 0,
                        );
                        let pinf = c(self, f64::INFINITY);
                        let ninf = c(self, f64::NEG_INFINITY);
                        let p = self.bin(B::Equal, x, pinf)?;
                        let n = self.bin(B::Equal, x, ninf)?;
                        match (neg, pos) {
                            (true, true) => self.bin(B::Or, p, n)?,
                            (false, true) => p,
                            (true, false) => n,
                            (false, false) => self.bin(B::And, p, n)?,
                        }
                    }
                }
            }
            _ => return Err(self.unsupported(format!("operator '{op}' is not supported"))),
        };
        Ok(vec![y])
    }

    fn layer_norm(&mut self) -> Result<Vec<ValueId>> {
        use BinaryOp as B;
        self.only(&["axis", "epsilon", "stash_type"])?;
        let x = self.req(0)?;
        let scale = self.req(1)?;
        let bias = self.input(2)?;
        let axis = self.int("axis", -1)?;
        let eps = self.float("epsilon", 1e-5)?;
        let r = self.rank(x);
        let a = norm_axis(axis, r).map_err(|m| self.bad(m))?;
        let mut args = vec![x, scale];
        args.extend(bias);
        let y = self.add1(Op::LayerNorm { axis, eps }, &args)?;
        let wants = |i: usize| self.n.output.get(i).is_some_and(|s| !s.is_empty());
        if !wants(1) && !wants(2) {
            return Ok(vec![y]);
        }
        // Mean and 1/σ over the normalized axes, with kept dimensions.
        let axes: Vec<i64> = (a..r).map(|i| i as i64).collect();
        let mean = self.add1(
            Op::Reduce {
                kind: ReduceKind::Mean,
                axes: axes.clone(),
                keepdims: true,
            },
            &[x],
        )?;
        let d = self.bin(B::Sub, x, mean)?;
        let sq = self.bin(B::Mul, d, d)?;
        let var = self.add1(
            Op::Reduce {
                kind: ReduceKind::Mean,
                axes,
                keepdims: true,
            },
            &[sq],
        )?;
        let e = self.scalar_like(eps as f64, var);
        let ve = self.bin(B::Add, var, e)?;
        let sd = self.un(UnaryOp::Sqrt, ve)?;
        let inv = self.un(UnaryOp::Reciprocal, sd)?;
        Ok(vec![y, mean, inv])
    }

    fn reduce(&mut self) -> Result<Vec<ValueId>> {
        use BinaryOp as B;
        use UnaryOp as U;
        self.only(&["axes", "keepdims", "noop_with_empty_axes"])?;
        let op = self.op;
        let mut x = self.req(0)?;
        let axes = self.axes(1)?.unwrap_or_default();
        let keepdims = self.int("keepdims", 1)? != 0;
        if axes.is_empty() && self.int("noop_with_empty_axes", 0)? != 0 {
            return Ok(vec![x]);
        }
        let kind = match op {
            "ReduceMean" => ReduceKind::Mean,
            "ReduceMax" => ReduceKind::Max,
            "ReduceMin" => ReduceKind::Min,
            "ReduceProd" => ReduceKind::Prod,
            "ReduceL2" => ReduceKind::L2,
            _ => ReduceKind::Sum,
        };
        match op {
            "ReduceL1" => x = self.un(U::Abs, x)?,
            "ReduceSumSquare" => x = self.bin(B::Mul, x, x)?,
            "ReduceLogSumExp" => x = self.un(U::Exp, x)?,
            _ => {}
        }
        let mut y = self.add1(
            Op::Reduce {
                kind,
                axes,
                keepdims,
            },
            &[x],
        )?;
        if matches!(op, "ReduceLogSum" | "ReduceLogSumExp") {
            y = self.un(U::Log, y)?;
        }
        Ok(vec![y])
    }

    fn split(&mut self) -> Result<Vec<ValueId>> {
        self.only(&["axis", "num_outputs"])?;
        let x = self.req(0)?;
        let axis = self.int("axis", 0)?;
        let outputs = self.n.output.len();
        let a = norm_axis(axis, self.rank(x)).map_err(|m| self.bad(m))?;
        let sizes = match self.ints_input(1, "split sizes")? {
            Some(s) => {
                if s.len() != outputs {
                    return Err(self.bad(format!("{} split sizes for {outputs} outputs", s.len())));
                }
                s
            }
            None => {
                let Dim::Fixed(d) = self.imp.g.ty(x).shape.0[a] else {
                    return Err(self.unsupported(
                        "an even split of a dimension whose size is known only at run time",
                    ));
                };
                let d = d as i64;
                let k = match self.attr("num_outputs") {
                    Some(_) => self.int("num_outputs", 0)?,
                    None => outputs as i64,
                };
                if k <= 0 || k as usize != outputs {
                    return Err(self.bad(format!(
                        "num_outputs {k} does not match the {outputs} outputs"
                    )));
                }
                if self.attr("num_outputs").is_some() {
                    let chunk = (d + k - 1) / k;
                    let last = d - chunk * (k - 1);
                    if last < 0 {
                        return Err(
                            self.bad(format!("cannot split {d} into {k} chunks of {chunk}"))
                        );
                    }
                    let mut s = vec![chunk; k as usize - 1];
                    s.push(last);
                    s
                } else {
                    if d % k != 0 {
                        return Err(self.bad(format!(
                            "dimension {d} does not split evenly into {k} outputs"
                        )));
                    }
                    vec![d / k; k as usize]
                }
            }
        };
        self.add(Op::Split { axis, sizes }, &[x])
    }

    fn constant(&mut self) -> Result<Vec<ValueId>> {
        let a = self
            .n
            .attribute
            .first()
            .ok_or_else(|| self.bad("holds no value attribute"))?;
        if self.n.attribute.len() != 1 {
            return Err(self.bad("must have exactly one value attribute"));
        }
        let name = a.name.as_deref().unwrap_or("");
        let out = self.n.output.first().cloned().unwrap_or_default();
        let t = match name {
            "value" => {
                self.check_type(a, at::TENSOR)?;
                let t =
                    a.t.as_ref()
                        .ok_or_else(|| self.bad("attribute 'value' holds no tensor"))?;
                let what = format!("{} value", self.label);
                let raw = self.imp.src.read(t, &what)?;
                let label = self.label.clone();
                return Ok(vec![self.imp.tensor_value_as(&out, raw, &label, true)?]);
            }
            "value_float" => Tensor::scalar_f32(self.float(name, 0.0)?),
            "value_floats" => {
                self.check_type(a, at::FLOATS)?;
                Tensor::f32(vec![a.floats.len()], a.floats.clone())
            }
            "value_int" => Tensor::scalar_i64(self.int(name, 0)?),
            "value_ints" => {
                let v = self.ints(name)?.unwrap_or_default();
                Tensor::i64(vec![v.len()], v)
            }
            other => {
                return Err(self.unsupported(format!(
                "a constant given as '{other}' (llmc reads value, value_float(s) and value_int(s))"
            )))
            }
        };
        Ok(vec![self.imp.tensor_value_from(&out, t, "constant")?])
    }
}
