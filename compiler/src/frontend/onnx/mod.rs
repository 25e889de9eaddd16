//! ONNX frontend: reads a `.onnx` file (memory-mapped, weights referenced in place) into the
//! graph IR node by node, then canonicalizes and fuses exporter patterns back into IR ops.

mod locate;
mod ops;
mod proto;
mod tensor;

pub use ops::supported_ops;

use super::{FrontendError, Model, ModelKind, Result};
use crate::tokenizer::Tokenizer;
use llmc_ir::{DType, Dim, Graph, IrError, Op, Shape, Tensor, TensorType, ValueId, WeightData};
use memmap2::Mmap;
use prost::Message;
use proto::{type_proto, ModelProto, NodeProto};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tensor::Source;

/// Constants up to this many elements become `const` nodes; larger ones weights.
const MAX_CONST_ELEMS: usize = 4096;

/// Choices for one import.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Graph inputs to replace by these values (build-time specialization): what the model takes
    /// as an input but llmc needs known, such as a reshape target or clip bounds.
    pub pinned: HashMap<String, Tensor>,
    /// Run canonicalization and the fusions after import (on by default).
    pub optimize: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            pinned: HashMap::new(),
            optimize: true,
        }
    }
}

/// Reads an ONNX model with the default options.
pub fn load(path: &Path) -> Result<Model> {
    load_with(path, &ImportOptions::default())
}

/// Reads an ONNX model: checks the opset, imports inputs, initializers and every node, then
/// canonicalizes and fuses. Errors name the file and the node or initializer at fault.
pub fn load_with(path: &Path, opts: &ImportOptions) -> Result<Model> {
    let file = ModelFile::open(path)?;
    let graph = import(&file, opts)?;
    let kind = model_kind(&graph);
    let mut graph = graph;
    if let ModelKind::Encoder { .. } = kind {
        alias_hidden_state(&mut graph);
    }
    let tok_path = path
        .parent()
        .unwrap_or(Path::new("."))
        .join("tokenizer.json");
    let tokenizer = if tok_path.is_file() {
        Some(
            Tokenizer::from_file(&tok_path)
                .map_err(|e| FrontendError::bad(&tok_path, e.to_string()))?,
        )
    } else {
        None
    };
    Ok(Model {
        graph,
        kind,
        tokenizer,
        architecture: "onnx".into(),
        path: path.to_path_buf(),
    })
}

/// Names of the graph inputs (not initializers) that feed operands llmc must know at build time
/// (shape, axes, bounds, sizes): the inputs to pin with [`ImportOptions::pinned`] for the model to
/// import.
pub fn parameter_inputs(path: &Path) -> Result<Vec<String>> {
    let file = ModelFile::open(path)?;
    let g = file.graph()?;
    let inits: HashSet<&str> = g
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    let inputs: HashSet<&str> = g
        .input
        .iter()
        .filter_map(|i| i.name.as_deref())
        .filter(|n| !inits.contains(n))
        .collect();
    let mut out = Vec::new();
    for n in &g.node {
        let op = n.op_type.as_deref().unwrap_or("");
        for &i in ops::parameter_operands(op) {
            if let Some(name) = n.input.get(i) {
                if inputs.contains(name.as_str()) && !out.contains(name) {
                    out.push(name.clone());
                }
            }
        }
    }
    Ok(out)
}

/// The model's graph input names (initializers excluded) and output names, in order.
pub fn model_io_names(path: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let file = ModelFile::open(path)?;
    let g = file.graph()?;
    let inits: HashSet<&str> = g
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    let ins = g
        .input
        .iter()
        .filter_map(|i| i.name.clone())
        .filter(|n| !inits.contains(n.as_str()))
        .collect();
    let outs = g.output.iter().filter_map(|o| o.name.clone()).collect();
    Ok((ins, outs))
}

/// The operator types the model's graph uses, in node order, without repeats.
pub fn model_op_types(path: &Path) -> Result<Vec<String>> {
    let file = ModelFile::open(path)?;
    let mut out: Vec<String> = Vec::new();
    for n in &file.graph()?.node {
        let op = n.op_type.clone().unwrap_or_default();
        if !out.contains(&op) {
            out.push(op);
        }
    }
    Ok(out)
}

/// Reads a serialized `TensorProto` (`input_0.pb` of the ONNX test data): its name and value.
pub fn read_tensor_file(path: &Path) -> Result<(String, Tensor)> {
    let data = std::fs::read(path).map_err(|e| FrontendError::io(path, e))?;
    let t = proto::TensorProto::decode(bytes::Bytes::from(data))
        .map_err(|e| FrontendError::bad(path, format!("not a serialized ONNX TensorProto: {e}")))?;
    let src = Source::new(path, None);
    let raw = src.read(&t, "tensor")?;
    Ok((t.name.clone().unwrap_or_default(), raw.to_tensor()))
}

/// The memory map as the owner of prost's zero-copy buffer.
struct MapOwner(Arc<Mmap>);

impl AsRef<[u8]> for MapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A decoded model file and the map its raw tensor data points into.
struct ModelFile {
    path: PathBuf,
    map: Arc<Mmap>,
    model: ModelProto,
}

impl ModelFile {
    fn open(path: &Path) -> Result<ModelFile> {
        let f = std::fs::File::open(path).map_err(|e| FrontendError::io(path, e))?;
        let len = f.metadata().map_err(|e| FrontendError::io(path, e))?.len();
        if len == 0 {
            return Err(FrontendError::bad(path, "the file is empty"));
        }
        // SAFETY: the map is read-only; llmc does not write the file, and a file changed by
        // another process while mapped is outside what llmc guards against.
        let map = Arc::new(unsafe { Mmap::map(&f) }.map_err(|e| FrontendError::io(path, e))?);
        let buf = bytes::Bytes::from_owner(MapOwner(map.clone()));
        let model = ModelProto::decode(buf).map_err(|e| {
            FrontendError::bad(
                path,
                format!("not a valid ONNX protobuf: {}", locate::explain(&map, &e)),
            )
        })?;
        Ok(ModelFile {
            path: path.to_path_buf(),
            map,
            model,
        })
    }

    fn graph(&self) -> Result<&proto::GraphProto> {
        self.model.graph.as_ref().ok_or_else(|| {
            FrontendError::bad(
                &self.path,
                "the model holds no graph (is this an ONNX model file?)",
            )
        })
    }
}

/// The importer's state while it walks the graph.
pub(crate) struct Importer<'a> {
    pub path: &'a Path,
    pub g: Graph,
    /// ONNX value name to IR value.
    pub env: HashMap<String, ValueId>,
    /// For every IR value, the node producing it.
    pub producers: Vec<Option<usize>>,
    /// The default-domain opset.
    pub opset: i64,
    pub src: Source<'a>,
    /// Weight names taken so far.
    weight_names: HashSet<String>,
}

/// How errors name a node: `node 'Add_3' (Add)`, or its position when it has no name.
pub(crate) fn node_label(n: &NodeProto, index: usize) -> String {
    let op = n.op_type.as_deref().unwrap_or("?");
    match n.name.as_deref() {
        Some(name) if !name.is_empty() => format!("node '{name}' ({op})"),
        _ => format!("node #{index} ({op})"),
    }
}

/// A dimension name the IR text form can print: identifier characters only.
fn dim_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        out.insert(0, '_');
    }
    out
}

fn import(file: &ModelFile, opts: &ImportOptions) -> Result<Graph> {
    let path = file.path.as_path();
    let bad = |m: String| FrontendError::bad(path, m);
    let unsupported = |m: String| FrontendError::unsupported(path, m);
    let m = &file.model;
    let gp = file.graph()?;
    let opset = m
        .opset_import
        .iter()
        .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .map(|o| o.version.unwrap_or(0))
        .ok_or_else(|| bad("the model imports no version of the default ONNX opset (opset_import lacks domain \"\")".into()))?;
    if opset < 1 {
        return Err(bad(format!("default opset version {opset} is not valid")));
    }
    if let Some(s) = gp.sparse_initializer.first() {
        let name = s
            .values
            .as_ref()
            .and_then(|v| v.name.clone())
            .unwrap_or_default();
        return Err(unsupported(format!("sparse initializer '{name}': llmc reads dense initializers only (densify it with onnx.numpy_helper)")));
    }
    let mut imp = Importer {
        path,
        g: Graph::new(
            gp.name
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or("onnx"),
        ),
        env: HashMap::new(),
        producers: Vec::new(),
        opset,
        src: Source::new(path, Some(&file.map)),
        weight_names: HashSet::new(),
    };
    imp.g.meta.insert("architecture".into(), "onnx".into());
    imp.g.meta.insert("onnx.opset".into(), opset.to_string());
    if let Some(p) = m.producer_name.as_deref().filter(|p| !p.is_empty()) {
        let v = m.producer_version.as_deref().unwrap_or("");
        imp.g.meta.insert(
            "onnx.producer".into(),
            format!("{p} {v}").trim().to_string(),
        );
    }
    // Initializers first: graphs of IR version < 4 list them among the inputs too.
    let mut init_names = HashSet::new();
    for (i, t) in gp.initializer.iter().enumerate() {
        let name = t.name.clone().unwrap_or_default();
        if name.is_empty() {
            return Err(bad(format!("initializer #{i} has no name")));
        }
        if !init_names.insert(name.clone()) {
            return Err(bad(format!("initializer '{name}' is defined twice")));
        }
        let what = format!("initializer '{name}'");
        let raw = imp.src.read(t, &what)?;
        let v = imp.tensor_value(&name, raw, &what)?;
        imp.env.insert(name, v);
    }
    for vi in &gp.input {
        let name = vi.name.clone().unwrap_or_default();
        if init_names.contains(&name) {
            continue;
        }
        if name.is_empty() {
            return Err(bad("a graph input has no name".into()));
        }
        let ty = input_type(vi).map_err(|e| {
            let msg = format!("graph input '{name}': {e}");
            if e.is_unsupported() {
                unsupported(msg)
            } else {
                bad(msg)
            }
        })?;
        let v = match opts.pinned.get(&name) {
            Some(t) => {
                if t.dtype() != ty.dtype() || t.rank() != ty.rank() {
                    return Err(bad(format!("graph input '{name}' is {ty}, but the value pinned for it is {} of shape {:?}", t.dtype(), t.shape)));
                }
                let what = format!("pinned input '{name}'");
                imp.tensor_value_from(&name, t.clone(), &what)?
            }
            None => imp.g.add_input(&name, ty),
        };
        imp.sync();
        imp.env.insert(name, v);
    }
    for (i, n) in gp.node.iter().enumerate() {
        ops::import_node(&mut imp, n, i)?;
    }
    let mut seen = HashSet::new();
    for o in &gp.output {
        let name = o.name.clone().unwrap_or_default();
        let v = *imp.env.get(&name).ok_or_else(|| {
            bad(format!(
                "graph output '{name}' is not computed by any node, input or initializer"
            ))
        })?;
        if !seen.insert(name.clone()) {
            return Err(bad(format!("graph output '{name}' is listed twice")));
        }
        imp.g.set_output(&name, v);
    }
    if imp.g.outputs.is_empty() {
        return Err(bad("the graph has no outputs".into()));
    }
    let mut g = imp.g;
    g.remove_dead();
    let internal = |e: IrError| FrontendError::internal(path, e);
    llmc_ir::verify(&g).map_err(internal)?;
    if opts.optimize {
        let pass = |e: llmc_passes::PassError| {
            FrontendError::internal(path, IrError::Invalid(e.to_string()))
        };
        llmc_passes::canonicalize(&mut g).map_err(pass)?;
        llmc_passes::fuse(&mut g).map_err(pass)?;
        llmc_ir::verify(&g).map_err(internal)?;
    }
    Ok(g)
}

/// Why a graph input has no IR type (the importer adds the input's name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum InputTypeError {
    #[error("is not a tensor (sequence, map, optional and sparse inputs are not supported)")]
    NotTensor,
    #[error("has no type")]
    NoType,
    #[error(transparent)]
    ElemType(#[from] tensor::UnsupportedElemType),
    #[error("has no shape, so its rank is unknown; llmc needs at least the rank (re-export with input shapes)")]
    NoShape,
    #[error("has a negative dimension {dim}")]
    NegativeDim { dim: i64 },
}

impl InputTypeError {
    /// Whether the input is valid ONNX that llmc does not take (else the file is malformed).
    fn is_unsupported(&self) -> bool {
        !matches!(
            self,
            InputTypeError::NoType | InputTypeError::NegativeDim { .. }
        )
    }
}

/// The IR type of a graph input.
fn input_type(vi: &proto::ValueInfoProto) -> std::result::Result<TensorType, InputTypeError> {
    let tt = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t,
        Some(_) => return Err(InputTypeError::NotTensor),
        None => return Err(InputTypeError::NoType),
    };
    let dtype = tensor::dtype_of(tt.elem_type.unwrap_or(0))?;
    let shape = tt.shape.as_ref().ok_or(InputTypeError::NoShape)?;
    let mut dims = Vec::with_capacity(shape.dim.len());
    for d in &shape.dim {
        dims.push(match &d.value {
            Some(proto::tensor_shape_proto::dimension::Value::DimValue(v)) if *v >= 0 => {
                Dim::Fixed(*v as u64)
            }
            Some(proto::tensor_shape_proto::dimension::Value::DimValue(v)) => {
                return Err(InputTypeError::NegativeDim { dim: *v })
            }
            Some(proto::tensor_shape_proto::dimension::Value::DimParam(p)) if !p.is_empty() => {
                Dim::Sym(dim_name(p))
            }
            _ => Dim::Any,
        });
    }
    Ok(TensorType::new(Shape(dims), dtype))
}

impl<'a> Importer<'a> {
    /// Keeps the producer map as long as the value list.
    pub fn sync(&mut self) {
        self.producers.resize(self.g.values.len(), None);
    }

    /// A weight name not taken yet, from `base`.
    fn weight_name(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while self.weight_names.contains(&name) {
            name = format!("{base}.{k}");
            k += 1;
        }
        self.weight_names.insert(name.clone());
        name
    }

    /// An initializer as a value: integer and bool tensors up to 4096 elements and float
    /// scalars become `const` nodes, everything else a weight whose bytes stay where they are.
    pub fn tensor_value(&mut self, name: &str, raw: tensor::Raw, what: &str) -> Result<ValueId> {
        self.tensor_value_as(name, raw, what, false)
    }

    /// As [`Importer::tensor_value`]; with `literal` (a `Constant` node's value) every tensor up
    /// to 4096 elements becomes a `const`.
    pub fn tensor_value_as(
        &mut self,
        name: &str,
        raw: tensor::Raw,
        what: &str,
        literal: bool,
    ) -> Result<ValueId> {
        let n = raw.numel();
        let small_param =
            (literal || raw.dtype.is_int() || raw.dtype == DType::Bool) && n <= MAX_CONST_ELEMS;
        if small_param || n <= 1 {
            return Ok(self.constant(raw.to_tensor()));
        }
        let ty = TensorType::fixed(&raw.shape, raw.dtype);
        let data = WeightData::new(
            raw.bytes,
            llmc_ir::Format::Canonical,
            format!("{}: {what}", self.path.display()),
        );
        let wname = self.weight_name(name);
        let v = self
            .g
            .add_weight(&wname, ty, Some(data))
            .map_err(|e| FrontendError::bad(self.path, format!("{what}: {e}")))?;
        self.sync();
        Ok(v)
    }

    /// A tensor in memory as a value (a `const` when small, else an in-memory weight).
    pub fn tensor_value_from(&mut self, name: &str, t: Tensor, what: &str) -> Result<ValueId> {
        if t.numel() <= MAX_CONST_ELEMS {
            return Ok(self.constant(t));
        }
        let ty = TensorType::fixed(&t.shape, t.dtype());
        let data = WeightData::from_tensor(&t, format!("{}: {what}", self.path.display()));
        let wname = self.weight_name(name);
        let v = self
            .g
            .add_weight(&wname, ty, Some(data))
            .map_err(|e| FrontendError::bad(self.path, format!("{what}: {e}")))?;
        self.sync();
        Ok(v)
    }

    /// A `const` node.
    pub fn constant(&mut self, t: Tensor) -> ValueId {
        let idx = self.g.nodes.len();
        let v = self.g.constant(t);
        self.sync();
        self.producers[v.0 as usize] = Some(idx);
        v
    }

    /// The value of `v` when a `const` node produces it.
    pub fn const_of(&self, v: ValueId) -> Option<&Tensor> {
        let p = self.producers.get(v.0 as usize).copied().flatten()?;
        match &self.g.nodes[p].op {
            Op::Constant { value } => Some(value),
            _ => None,
        }
    }

    /// The value of `v` when it is known at build time: a `const`, or a small dense weight.
    pub fn known(&self, v: ValueId) -> Option<Tensor> {
        if let Some(t) = self.const_of(v) {
            return Some(t.clone());
        }
        let w = self.g.weight_of(v)?;
        if w.ty.shape.numel()? > MAX_CONST_ELEMS as u64 {
            return None;
        }
        w.data.as_ref()?.decode_dense(&w.ty).ok()
    }

    /// Appends a node (folding it right away when every operand is a constant), inferring its
    /// result types; `at` names the ONNX node for errors.
    pub fn add(&mut self, op: Op, inputs: &[ValueId], at: &str) -> Result<Vec<ValueId>> {
        let all_const: Option<Vec<Tensor>> =
            inputs.iter().map(|v| self.const_of(*v).cloned()).collect();
        if let Some(args) =
            all_const.filter(|_| !inputs.is_empty() && !matches!(op, Op::CacheConcat { .. }))
        {
            if let Some(vals) = llmc_passes::canon::eval_op(&op, &args) {
                if vals.iter().all(|t| t.numel() <= MAX_CONST_ELEMS) {
                    return Ok(vals.into_iter().map(|t| self.constant(t)).collect());
                }
            }
        }
        // The shape of a value whose dimensions are all fixed is known.
        if let Op::Shape { start, end } = &op {
            let dims = &self.g.ty(inputs[0]).shape.0;
            let r = dims.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let (s, e) = (clamp(*start), clamp(end.unwrap_or(r)));
            let picked: Option<Vec<i64>> = dims[s..e.max(s)]
                .iter()
                .map(|d| d.fixed().map(|k| k as i64))
                .collect();
            if let Some(p) = picked {
                return Ok(vec![self.constant(Tensor::i64(vec![p.len()], p))]);
            }
        }
        let consts: Vec<Option<&Tensor>> = inputs.iter().map(|v| self.const_of(*v)).collect();
        let tys: Vec<&TensorType> = inputs.iter().map(|v| self.g.ty(*v)).collect();
        let types = llmc_ir::infer::infer(&op, &tys, &consts)
            .map_err(|m| FrontendError::bad(self.path, format!("{at}: {m}")))?;
        let idx = self.g.nodes.len();
        let outs = self.g.push_node(op, inputs, types, Some(at.to_string()));
        self.sync();
        for o in &outs {
            self.producers[o.0 as usize] = Some(idx);
        }
        Ok(outs)
    }
}

/// Encoder when the inputs are `input_ids` and `attention_mask` (and maybe `token_type_ids`)
/// and an output is `[batch, seq, hidden]` floats; otherwise generic.
fn model_kind(g: &Graph) -> ModelKind {
    let names: Vec<&str> = g.inputs.iter().map(|(n, _)| n.as_str()).collect();
    let allowed = ["input_ids", "attention_mask", "token_type_ids"];
    let inputs_ok = names.contains(&"input_ids")
        && names.contains(&"attention_mask")
        && names.iter().all(|n| allowed.contains(n));
    if !inputs_ok {
        return ModelKind::Generic;
    }
    let hidden_of = |v: ValueId| {
        let t = g.ty(v);
        match (t.rank(), t.dtype().is_float(), t.shape.0.last()) {
            (3, true, Some(Dim::Fixed(h))) => Some(*h as usize),
            _ => None,
        }
    };
    let by_name = g
        .outputs
        .iter()
        .find(|(n, _)| n == "last_hidden_state")
        .and_then(|(_, v)| hidden_of(*v));
    let first = g.outputs.iter().find_map(|(_, v)| hidden_of(*v));
    match by_name.or(first) {
        Some(hidden) => ModelKind::Encoder { hidden },
        None => ModelKind::Generic,
    }
}

/// Gives an encoder's hidden states the output name [`ModelKind::Encoder`] promises,
/// `last_hidden_state`, beside the exporter's own name.
fn alias_hidden_state(g: &mut Graph) {
    if g.outputs.iter().any(|(n, _)| n == "last_hidden_state") {
        return;
    }
    let found = g.outputs.iter().map(|(_, v)| *v).find(|v| {
        let t = g.ty(*v);
        t.rank() == 3 && t.dtype().is_float() && matches!(t.shape.0.last(), Some(Dim::Fixed(_)))
    });
    if let Some(v) = found {
        g.set_output("last_hidden_state", v);
    }
}
