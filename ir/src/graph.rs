//! The graph: values, nodes in program order, weights, decoder state, and the builder and
//! editing API frontends and passes use.

use crate::error::IrError;
use crate::infer::{infer, InferError};
use crate::ops::Op;
use crate::tensor::Tensor;
use crate::types::TensorType;
use crate::weights::WeightData;
use std::collections::{BTreeMap, HashMap};

/// A value: a graph input, a weight, or a result of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

/// Where a value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueDef {
    /// The i-th graph input.
    Input(u32),
    /// The i-th weight.
    Weight(u32),
    /// A result of a node (which node is found through [`Graph::producers`]).
    Result,
}

#[derive(Clone, Debug)]
pub struct ValueInfo {
    pub ty: TensorType,
    pub def: ValueDef,
}

/// One operation applied to values.
#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    /// Where the node came from, for errors: `line 12`, `node 'Add_3' (Add)`.
    pub loc: Option<String>,
}

/// A named weight with its type; its data is absent for graphs parsed from text.
#[derive(Clone, Debug)]
pub struct Weight {
    pub name: String,
    pub ty: TensorType,
    pub value: ValueId,
    pub data: Option<WeightData>,
    /// The content hash the text form shows (of `data` when present).
    pub hash: u64,
}

/// Decoder state that persists between runs (the KV cache): a tensor that `cache_concat`
/// appends to along one axis.
#[derive(Clone, Debug, PartialEq)]
pub struct StateDecl {
    pub name: String,
    /// Type of the whole state; the appended axis is usually symbolic (`{ctx}`).
    pub ty: TensorType,
}

/// What a graph is to the tools that compile and run it. Set by the frontend, kept by every
/// pass, checked by the verifier; the text form writes `kind decoder` for a decoder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ModelKind {
    /// Named inputs and outputs, run as given.
    #[default]
    Graph,
    /// A decoder language model: inputs `tokens` and `positions` (`[batch, seq]` i64),
    /// output `logits` (`[batch, seq, vocab]`); the KV cache is the graph's state, which
    /// `cache_concat` appends to. Bundles get `prefill`/`decode` for it.
    Decoder,
}

impl ModelKind {
    /// The word the text form uses.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Graph => "graph",
            ModelKind::Decoder => "decoder",
        }
    }
}

/// A graph in program order: every node comes after the producers of its inputs.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    pub kind: ModelKind,
    pub values: Vec<ValueInfo>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<(String, ValueId)>,
    pub outputs: Vec<(String, ValueId)>,
    pub weights: Vec<Weight>,
    pub states: Vec<StateDecl>,
    /// Facts about the model as its source file states them (architecture, vocabulary size,
    /// ...), sorted. Passes leave them as they were: after pruning, the graph is the truth.
    pub meta: BTreeMap<String, String>,
}

impl Graph {
    pub fn new(name: &str) -> Graph {
        Graph {
            name: name.to_string(),
            ..Graph::default()
        }
    }

    fn new_value(&mut self, ty: TensorType, def: ValueDef) -> ValueId {
        self.values.push(ValueInfo { ty, def });
        ValueId(self.values.len() as u32 - 1)
    }

    pub fn add_input(&mut self, name: &str, ty: TensorType) -> ValueId {
        let v = self.new_value(ty, ValueDef::Input(self.inputs.len() as u32));
        self.inputs.push((name.to_string(), v));
        v
    }

    /// Declares a weight; with data, the data is checked against the type.
    pub fn add_weight(
        &mut self,
        name: &str,
        ty: TensorType,
        data: Option<WeightData>,
    ) -> Result<ValueId, IrError> {
        if self.weights.iter().any(|w| w.name == name) {
            return Err(IrError::Invalid(format!(
                "weight @{name} is declared twice"
            )));
        }
        let hash = match &data {
            Some(d) => {
                d.check(&ty)?;
                d.hash()
            }
            None => 0,
        };
        let v = self.new_value(ty.clone(), ValueDef::Weight(self.weights.len() as u32));
        self.weights.push(Weight {
            name: name.to_string(),
            ty,
            value: v,
            data,
            hash,
        });
        Ok(v)
    }

    /// Declares a weight whose content hash is known but whose data is not (parsed text).
    pub fn add_weight_hash(
        &mut self,
        name: &str,
        ty: TensorType,
        hash: u64,
    ) -> Result<ValueId, IrError> {
        let v = self.add_weight(name, ty, None)?;
        self.weights.last_mut().expect("just added").hash = hash;
        Ok(v)
    }

    /// Declares a piece of decoder state; returns its index for `cache_concat`.
    pub fn add_state(&mut self, name: &str, ty: TensorType) -> u32 {
        self.states.push(StateDecl {
            name: name.to_string(),
            ty,
        });
        self.states.len() as u32 - 1
    }

    pub fn set_output(&mut self, name: &str, v: ValueId) {
        self.outputs.push((name.to_string(), v));
    }

    /// Appends a node, inferring its result types.
    pub fn add(&mut self, op: Op, inputs: &[ValueId]) -> Result<Vec<ValueId>, IrError> {
        self.add_at(op, inputs, None)
    }

    /// Appends a node with a location for errors, inferring its result types.
    pub fn add_at(
        &mut self,
        op: Op,
        inputs: &[ValueId],
        loc: Option<String>,
    ) -> Result<Vec<ValueId>, IrError> {
        let types = match self.infer_node(&op, inputs) {
            Ok(types) => types,
            Err(source) => {
                return Err(IrError::Infer {
                    op: op.name(),
                    loc,
                    source: Box::new(source),
                })
            }
        };
        Ok(self.push_node(op, inputs, types, loc))
    }

    /// Appends a node with one result.
    pub fn add1(&mut self, op: Op, inputs: &[ValueId]) -> Result<ValueId, IrError> {
        Ok(self.add(op, inputs)?[0])
    }

    /// Appends a node with given result types (the parser's way; the verifier checks them).
    pub fn push_node(
        &mut self,
        op: Op,
        inputs: &[ValueId],
        types: Vec<TensorType>,
        loc: Option<String>,
    ) -> Vec<ValueId> {
        let outputs: Vec<ValueId> = types
            .into_iter()
            .map(|t| self.new_value(t, ValueDef::Result))
            .collect();
        self.nodes.push(Node {
            op,
            inputs: inputs.to_vec(),
            outputs: outputs.clone(),
            loc,
        });
        outputs
    }

    /// Gives result `k` of node `node` a fresh value of type `ty` (the old value is left
    /// without a producer); returns the new value.
    pub fn retype_output(&mut self, node: usize, k: usize, ty: TensorType) -> ValueId {
        let v = self.new_value(ty, ValueDef::Result);
        self.nodes[node].outputs[k] = v;
        v
    }

    /// A constant node holding `t`.
    pub fn constant(&mut self, t: Tensor) -> ValueId {
        let ty = TensorType::fixed(&t.shape, t.dtype());
        self.push_node(Op::Constant { value: t }, &[], vec![ty], None)[0]
    }

    /// Result types an op would give on these operands.
    pub fn infer_node(&self, op: &Op, inputs: &[ValueId]) -> Result<Vec<TensorType>, InferError> {
        let tys: Vec<&TensorType> = inputs
            .iter()
            .map(|v| &self.values[v.0 as usize].ty)
            .collect();
        // Only ops whose parameters may arrive as operands look for constant operands.
        let consts: Vec<Option<&Tensor>> = if crate::infer::reads_const_operands(op) {
            let producers = self.producers();
            inputs
                .iter()
                .map(|v| self.const_value_with(&producers, *v))
                .collect()
        } else {
            vec![None; inputs.len()]
        };
        infer(op, &tys, &consts)
    }

    pub fn ty(&self, v: ValueId) -> &TensorType {
        &self.values[v.0 as usize].ty
    }

    pub fn def(&self, v: ValueId) -> ValueDef {
        self.values[v.0 as usize].def
    }

    /// The weight a value names, if it is one.
    pub fn weight_of(&self, v: ValueId) -> Option<&Weight> {
        match self.def(v) {
            ValueDef::Weight(i) => self.weights.get(i as usize),
            _ => None,
        }
    }

    pub fn weight_by_name(&self, name: &str) -> Option<&Weight> {
        self.weights.iter().find(|w| w.name == name)
    }

    /// For every value, the index of the node producing it (`None` for inputs and weights).
    pub fn producers(&self) -> Vec<Option<usize>> {
        let mut p = vec![None; self.values.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for o in &n.outputs {
                p[o.0 as usize] = Some(i);
            }
        }
        p
    }

    /// For every value, the nodes using it (a node appears once per use).
    pub fn users(&self) -> Vec<Vec<usize>> {
        let mut u = vec![Vec::new(); self.values.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for v in &n.inputs {
                u[v.0 as usize].push(i);
            }
        }
        u
    }

    /// The literal value of `v` if a constant node produces it.
    pub fn const_value(&self, v: ValueId) -> Option<&Tensor> {
        self.const_value_with(&self.producers(), v)
    }

    /// As [`Graph::const_value`], with a producer map computed once by the caller.
    pub fn const_value_with(&self, producers: &[Option<usize>], v: ValueId) -> Option<&Tensor> {
        let n = producers.get(v.0 as usize).copied().flatten()?;
        match &self.nodes[n].op {
            Op::Constant { value } => Some(value),
            _ => None,
        }
    }

    /// Gives weight `i` new data under a new type (another encoding or shape), checked against
    /// it; the weight's value takes the type, so readers of a new shape must be re-inferred.
    pub fn replace_weight(
        &mut self,
        i: usize,
        ty: TensorType,
        data: WeightData,
    ) -> Result<(), IrError> {
        data.check(&ty)?;
        let w = &mut self.weights[i];
        w.hash = data.hash();
        w.ty = ty.clone();
        w.data = Some(data);
        let v = w.value;
        self.values[v.0 as usize].ty = ty;
        Ok(())
    }

    /// Makes every use of `old` (operands and graph outputs) a use of `new`, except the
    /// operands of node `keep` (the node that computes `new` from `old`).
    pub fn replace_uses_except(&mut self, old: ValueId, new: ValueId, keep: usize) {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if i == keep {
                continue;
            }
            for v in &mut n.inputs {
                if *v == old {
                    *v = new;
                }
            }
        }
        for (_, v) in &mut self.outputs {
            if *v == old {
                *v = new;
            }
        }
    }

    /// Makes every use of `old` (operands and graph outputs) a use of `new`.
    pub fn replace_uses(&mut self, old: ValueId, new: ValueId) {
        self.replace_uses_except(old, new, usize::MAX)
    }

    /// Removes nodes whose results nobody uses (cache appends are kept: they have effects).
    /// Returns how many were removed.
    pub fn remove_dead(&mut self) -> usize {
        let mut live = vec![false; self.values.len()];
        for (_, v) in &self.outputs {
            live[v.0 as usize] = true;
        }
        let mut keep = vec![false; self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate().rev() {
            if matches!(n.op, Op::CacheConcat { .. })
                || n.outputs.iter().any(|o| live[o.0 as usize])
            {
                keep[i] = true;
                for v in &n.inputs {
                    live[v.0 as usize] = true;
                }
            }
        }
        let before = self.nodes.len();
        let mut i = 0;
        self.nodes.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        before - self.nodes.len()
    }

    /// Puts nodes back in program order after an edit appended producers after their users.
    /// Keeps the existing order where it is already valid.
    pub fn sort(&mut self) -> Result<(), IrError> {
        use petgraph::graph::DiGraph;
        let producers = self.producers();
        let mut g = DiGraph::<(), ()>::with_capacity(self.nodes.len(), self.nodes.len() * 2);
        let ids: Vec<_> = (0..self.nodes.len()).map(|_| g.add_node(())).collect();
        for (i, n) in self.nodes.iter().enumerate() {
            for v in &n.inputs {
                if let Some(p) = producers[v.0 as usize] {
                    g.add_edge(ids[p], ids[i], ());
                }
            }
        }
        // Kahn's algorithm with a min-heap keeps the original order among ready nodes.
        let mut indeg: Vec<usize> = ids
            .iter()
            .map(|&n| g.neighbors_directed(n, petgraph::Incoming).count())
            .collect();
        let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> =
            (0..self.nodes.len())
                .filter(|&i| indeg[i] == 0)
                .map(std::cmp::Reverse)
                .collect();
        let mut order = Vec::with_capacity(self.nodes.len());
        while let Some(std::cmp::Reverse(i)) = ready.pop() {
            order.push(i);
            for s in g.neighbors_directed(ids[i], petgraph::Outgoing) {
                let s = s.index();
                indeg[s] -= 1;
                if indeg[s] == 0 {
                    ready.push(std::cmp::Reverse(s));
                }
            }
        }
        if order.len() != self.nodes.len() {
            return Err(IrError::Invalid("the graph has a cycle".into()));
        }
        let mut old: Vec<Option<Node>> = std::mem::take(&mut self.nodes)
            .into_iter()
            .map(Some)
            .collect();
        self.nodes = order
            .into_iter()
            .map(|i| old[i].take().expect("each once"))
            .collect();
        Ok(())
    }

    /// How values print: inputs by name, weights by symbol, results numbered in order.
    pub fn value_names(&self) -> Vec<String> {
        let mut names = vec![String::new(); self.values.len()];
        for (name, v) in &self.inputs {
            names[v.0 as usize] = format!("%{}", crate::print::quote_ident(name));
        }
        for w in &self.weights {
            names[w.value.0 as usize] = format!("@{}", crate::print::quote_ident(&w.name));
        }
        let mut k = 0;
        for n in &self.nodes {
            for o in &n.outputs {
                names[o.0 as usize] = format!("%{k}");
                k += 1;
            }
        }
        names
    }

    /// A short description of a node for errors: `%12 = linear (line 14)`.
    pub fn describe_node(&self, names: &[String], i: usize) -> String {
        let n = &self.nodes[i];
        let outs: Vec<&str> = n
            .outputs
            .iter()
            .map(|o| names[o.0 as usize].as_str())
            .collect();
        let mut s = format!("{} = {}", outs.join(", "), n.op.name());
        if let Some(l) = &n.loc {
            s.push_str(&format!(" ({l})"));
        }
        s
    }

    /// Number of parameters (elements of all weights).
    pub fn param_count(&self) -> u64 {
        self.weights.iter().filter_map(|w| w.ty.shape.numel()).sum()
    }

    /// Op name histogram, sorted by name.
    pub fn op_histogram(&self) -> BTreeMap<&'static str, usize> {
        let mut h = BTreeMap::new();
        for n in &self.nodes {
            *h.entry(n.op.name()).or_insert(0) += 1;
        }
        h
    }

    /// Maps input names to values.
    pub fn input_map(&self) -> HashMap<&str, ValueId> {
        self.inputs.iter().map(|(n, v)| (n.as_str(), *v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{BinaryOp, UnaryOp};
    use crate::types::{DType, Dim, Shape};

    #[test]
    fn builder_infers_and_dce_removes() {
        let mut g = Graph::new("t");
        let x = g.add_input(
            "x",
            TensorType::new(Shape(vec![Dim::sym("batch"), Dim::Fixed(4)]), DType::F32),
        );
        let y = g.add1(Op::Unary(UnaryOp::Exp), &[x]).unwrap();
        let _dead = g.add1(Op::Unary(UnaryOp::Tanh), &[x]).unwrap();
        let z = g.add1(Op::Binary(BinaryOp::Add), &[y, x]).unwrap();
        g.set_output("z", z);
        assert_eq!(g.ty(z).to_string(), "tensor<{batch}x4xf32>");
        assert_eq!(g.remove_dead(), 1);
        assert_eq!(g.nodes.len(), 2);
    }

    #[test]
    fn sort_restores_program_order() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", TensorType::fixed(&[2], DType::F32));
        let a = g.add1(Op::Unary(UnaryOp::Exp), &[x]).unwrap();
        let b = g.add1(Op::Unary(UnaryOp::Neg), &[a]).unwrap();
        g.set_output("b", b);
        // a rewrite appends a new producer and points the user at it
        let c = g.add1(Op::Unary(UnaryOp::Tanh), &[x]).unwrap();
        g.nodes[1].inputs[0] = c;
        g.sort().unwrap();
        let names: Vec<_> = g.nodes.iter().map(|n| n.op.name()).collect();
        assert_eq!(names, vec!["exp", "tanh", "neg"]);
    }
}
