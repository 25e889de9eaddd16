//! The pattern-rewrite driver: patterns look at the graph read-only and return a patch; the
//! driver applies patches, removes what became dead, and sweeps to a fixpoint.

use crate::PassError;
use llmc_ir::infer::{dims_may_equal, infer, InferError};
use llmc_ir::{Graph, IrError, Node, Op, Tensor, TensorType, ValueDef, ValueId, WeightData};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Deref;

/// Constants up to this many elements stay `const` nodes; larger tensors become weights.
pub const MAX_CONST_ELEMS: usize = 4096;

/// A rewrite rule. `match_and_rewrite` must not change anything: it looks at the graph and, when
/// its pattern matches node `node` exactly, returns the patch that rewrites it.
pub trait RewritePattern {
    /// The kebab-case name errors, statistics and pipelines use (`fuse-layer-norm`).
    fn name(&self) -> &'static str;
    /// The patch for node `node`, or `None` when the pattern does not apply there.
    fn match_and_rewrite(&self, g: &View<'_>, node: usize) -> Result<Option<Patch>, PassError>;
}

/// The graph as a pattern sees it: read-only, with use-def maps kept current by the driver.
/// Dereferences to the [`Graph`].
pub struct View<'g> {
    g: &'g Graph,
    producers: &'g [Option<usize>],
    users: &'g [Vec<usize>],
    is_output: &'g [bool],
}

impl<'g> Deref for View<'g> {
    type Target = Graph;
    fn deref(&self) -> &Graph {
        self.g
    }
}

impl<'g> View<'g> {
    /// The graph itself.
    pub fn graph(&self) -> &'g Graph {
        self.g
    }

    /// The index of the node producing `v` (`None` for inputs and weights).
    pub fn producer(&self, v: ValueId) -> Option<usize> {
        self.producers.get(v.0 as usize).copied().flatten()
    }

    /// The node producing `v`.
    pub fn node_of(&self, v: ValueId) -> Option<&'g Node> {
        self.producer(v).map(|i| &self.g.nodes[i])
    }

    /// The op producing `v`.
    pub fn op_of(&self, v: ValueId) -> Option<&'g Op> {
        self.node_of(v).map(|n| &n.op)
    }

    /// The live nodes reading `v`, once per use.
    pub fn uses(&self, v: ValueId) -> &'g [usize] {
        self.users
            .get(v.0 as usize)
            .map(|u| u.as_slice())
            .unwrap_or(&[])
    }

    /// Whether `v` is a graph output.
    pub fn is_output(&self, v: ValueId) -> bool {
        self.is_output.get(v.0 as usize).copied().unwrap_or(false)
    }

    /// Whether exactly one node reads `v` (once) and it is not a graph output: a value a fusion
    /// may swallow.
    pub fn single_use(&self, v: ValueId) -> bool {
        self.uses(v).len() == 1 && !self.is_output(v)
    }

    /// The only node reading `v`, when `v` is used once and is not an output.
    pub fn sole_user(&self, v: ValueId) -> Option<usize> {
        if self.single_use(v) {
            Some(self.uses(v)[0])
        } else {
            None
        }
    }

    /// The value of `v` when it is known at build time: a `const` node, or a dense weight with
    /// data of at most [`MAX_CONST_ELEMS`] elements.
    pub fn const_value(&self, v: ValueId) -> Option<Cow<'g, Tensor>> {
        if let Some(Op::Constant { value }) = self.op_of(v) {
            return Some(Cow::Borrowed(value));
        }
        let w = self.g.weight_of(v)?;
        if !w.ty.enc.is_dense() || w.ty.shape.numel()? > MAX_CONST_ELEMS as u64 {
            return None;
        }
        w.data.as_ref()?.decode_dense(&w.ty).ok().map(Cow::Owned)
    }

    /// The value of a one-element constant, as f64.
    pub fn scalar(&self, v: ValueId) -> Option<f64> {
        let t = self.const_value(v)?;
        (t.numel() == 1).then(|| t.data.to_f64()[0])
    }

    /// Whether `v` is a weight or known at build time (not computed from graph inputs).
    pub fn is_param(&self, v: ValueId) -> bool {
        matches!(self.g.def(v), ValueDef::Weight(_))
            || matches!(self.op_of(v), Some(Op::Constant { .. }))
    }

    /// `v`'s name as the text form prints it, with the op producing it: `%42 (add)`.
    pub fn describe(&self, v: ValueId) -> String {
        let names = self.g.value_names();
        let op = self
            .op_of(v)
            .map(|o| format!(" ({})", o.name()))
            .unwrap_or_default();
        format!(
            "{}{op}",
            names.get(v.0 as usize).map(|s| s.as_str()).unwrap_or("?")
        )
    }
}

/// A value a patch refers to: one of the graph, a result of a node the patch adds, or a weight
/// the patch adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PValue {
    Old(ValueId),
    New { node: usize, result: usize },
    Weight(usize),
}

impl From<ValueId> for PValue {
    fn from(v: ValueId) -> PValue {
        PValue::Old(v)
    }
}

struct NewNode {
    op: Op,
    inputs: Vec<PValue>,
}

struct NewWeight {
    name: String,
    ty: TensorType,
    data: Option<WeightData>,
    hash: u64,
}

/// What a pattern wants changed: nodes to append, weights to declare, and values whose uses
/// move to new values. The driver applies it; dead nodes disappear afterwards.
#[derive(Default)]
pub struct Patch {
    nodes: Vec<NewNode>,
    weights: Vec<NewWeight>,
    replace: Vec<(ValueId, PValue)>,
}

impl Patch {
    pub fn new() -> Patch {
        Patch::default()
    }

    /// Appends a node; returns its first result.
    pub fn add(&mut self, op: Op, inputs: &[PValue]) -> PValue {
        self.nodes.push(NewNode {
            op,
            inputs: inputs.to_vec(),
        });
        PValue::New {
            node: self.nodes.len() - 1,
            result: 0,
        }
    }

    /// Appends a node with several results.
    pub fn add_multi(&mut self, op: Op, inputs: &[PValue]) -> Vec<PValue> {
        let n = op.num_results();
        self.nodes.push(NewNode {
            op,
            inputs: inputs.to_vec(),
        });
        let node = self.nodes.len() - 1;
        (0..n).map(|result| PValue::New { node, result }).collect()
    }

    /// A `const` node holding `t`.
    pub fn constant(&mut self, t: Tensor) -> PValue {
        self.add(Op::Constant { value: t }, &[])
    }

    /// `t` as a `const` when small, else as an in-memory weight named after `name`.
    pub fn tensor(&mut self, name: &str, t: Tensor) -> PValue {
        if t.numel() <= MAX_CONST_ELEMS {
            self.constant(t)
        } else {
            let ty = TensorType::fixed(&t.shape, t.dtype());
            let data = WeightData::from_tensor(&t, format!("folded constant {name}"));
            self.weight(name, ty, Some(data), 0)
        }
    }

    /// Declares a weight. The driver keeps `name` when it is free, else adds a suffix (and takes
    /// `name` back at the end if the weight holding it became unused). `hash` is used when
    /// there is no data.
    pub fn weight(
        &mut self,
        name: &str,
        ty: TensorType,
        data: Option<WeightData>,
        hash: u64,
    ) -> PValue {
        self.weights.push(NewWeight {
            name: name.to_string(),
            ty,
            data,
            hash,
        });
        PValue::Weight(self.weights.len() - 1)
    }

    /// Makes every use of `old` a use of `new`.
    pub fn replace(&mut self, old: ValueId, new: impl Into<PValue>) {
        self.replace.push((old, new.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.replace.is_empty()
    }
}

/// Limits of one run of the driver.
#[derive(Clone, Debug)]
pub struct RewriteConfig {
    /// Sweeps over the whole graph before giving up with [`PassError::NoFixpoint`].
    pub max_sweeps: usize,
}

impl Default for RewriteConfig {
    fn default() -> Self {
        RewriteConfig { max_sweeps: 64 }
    }
}

/// What a run of the driver did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RewriteStats {
    /// How often each pattern fired.
    pub fired: BTreeMap<&'static str, usize>,
    pub sweeps: usize,
    pub nodes_before: usize,
    pub nodes_after: usize,
}

impl RewriteStats {
    pub fn total(&self) -> usize {
        self.fired.values().sum()
    }
}

/// Use-def state the driver keeps current while it applies patches.
struct State {
    producers: Vec<Option<usize>>,
    users: Vec<Vec<usize>>,
    is_output: Vec<bool>,
    alive: Vec<bool>,
}

impl State {
    fn new(g: &Graph) -> State {
        let n = g.values.len();
        let mut users = vec![Vec::new(); n];
        let mut producers = vec![None; n];
        for (i, node) in g.nodes.iter().enumerate() {
            for v in &node.inputs {
                users[v.0 as usize].push(i);
            }
            for o in &node.outputs {
                producers[o.0 as usize] = Some(i);
            }
        }
        let mut is_output = vec![false; n];
        for (_, v) in &g.outputs {
            is_output[v.0 as usize] = true;
        }
        State {
            producers,
            users,
            is_output,
            alive: vec![true; g.nodes.len()],
        }
    }

    fn grow(&mut self, g: &Graph) {
        let n = g.values.len();
        self.producers.resize(n, None);
        self.users.resize(n, Vec::new());
        self.is_output.resize(n, false);
    }

    fn view<'a>(&'a self, g: &'a Graph) -> View<'a> {
        View {
            g,
            producers: &self.producers,
            users: &self.users,
            is_output: &self.is_output,
        }
    }

    /// Marks `start` dead when nothing reads its results, and whatever that leaves unused.
    fn kill_unused(&mut self, g: &Graph, start: usize) {
        let mut stack = vec![start];
        while let Some(p) = stack.pop() {
            if !self.alive[p] || matches!(g.nodes[p].op, Op::CacheConcat { .. }) {
                continue;
            }
            let unused = g.nodes[p]
                .outputs
                .iter()
                .all(|o| self.users[o.0 as usize].is_empty() && !self.is_output[o.0 as usize]);
            if !unused {
                continue;
            }
            self.alive[p] = false;
            for v in &g.nodes[p].inputs {
                let u = &mut self.users[v.0 as usize];
                u.retain(|&x| x != p);
                if u.is_empty() && !self.is_output[v.0 as usize] {
                    if let Some(q) = self.producers[v.0 as usize] {
                        stack.push(q);
                    }
                }
            }
        }
    }
}

/// Runs `patterns` over `g` to a fixpoint: every sweep offers every live node to every pattern
/// in order and applies the patches they return; then dead nodes go, the nodes are put back in
/// program order and result types are inferred again. Unused weights are dropped at the end.
pub fn apply_patterns(
    g: &mut Graph,
    patterns: &[Box<dyn RewritePattern>],
    cfg: &RewriteConfig,
) -> Result<RewriteStats, PassError> {
    let mut stats = RewriteStats {
        nodes_before: g.nodes.len(),
        ..Default::default()
    };
    let mut renames: Vec<(String, String)> = Vec::new();
    let mut changed_any = false;
    for sweep in 0..cfg.max_sweeps {
        stats.sweeps = sweep + 1;
        let mut st = State::new(g);
        let mut fired: HashSet<&'static str> = HashSet::new();
        // Nodes a patch appends wait for the next sweep.
        let end = g.nodes.len();
        let mut i = 0;
        while i < end {
            for p in patterns {
                if !st.alive[i] {
                    break;
                }
                let patch = {
                    let view = st.view(g);
                    p.match_and_rewrite(&view, i).map_err(|e| match e {
                        PassError::Pattern { .. } => e,
                        other => PassError::Pattern {
                            pattern: p.name(),
                            at: describe_node(g, i),
                            msg: other.to_string(),
                        },
                    })?
                };
                let Some(patch) = patch else { continue };
                if patch.is_empty() {
                    continue;
                }
                apply(g, &mut st, patch, i, &mut renames).map_err(|e| PassError::Patch {
                    pattern: p.name(),
                    at: describe_node(g, i),
                    source: Box::new(e),
                })?;
                fired.insert(p.name());
                *stats.fired.entry(p.name()).or_insert(0) += 1;
            }
            i += 1;
        }
        if fired.is_empty() {
            if changed_any {
                compact(g, &renames);
            }
            stats.nodes_after = g.nodes.len();
            return Ok(stats);
        }
        changed_any = true;
        // Removing dead nodes walks backwards through program order, so sort first.
        g.sort().map_err(|e| PassError::Ir {
            pass: "rewrite".into(),
            source: e,
        })?;
        g.remove_dead();
        refresh_types(g)?;
        if sweep + 1 == cfg.max_sweeps {
            let mut names: Vec<&str> = fired.into_iter().collect();
            names.sort();
            return Err(PassError::NoFixpoint {
                sweeps: cfg.max_sweeps,
                patterns: names.join(", "),
            });
        }
    }
    Err(PassError::NoFixpoint {
        sweeps: cfg.max_sweeps,
        patterns: String::new(),
    })
}

/// `%42 (add)` with the node's source location when it has one.
pub fn describe_node(g: &Graph, i: usize) -> String {
    let names = g.value_names();
    let n = &g.nodes[i];
    let outs: Vec<&str> = n
        .outputs
        .iter()
        .map(|o| names[o.0 as usize].as_str())
        .collect();
    let mut s = format!("{} ({})", outs.join(", "), n.op.name());
    if let Some(l) = &n.loc {
        s.push_str(&format!(" at {l}"));
    }
    s
}

/// Why a pattern's patch could not be applied: a bug in the pattern.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PatchError {
    #[error("the patch refers to result {result} of its node {node}, which it has not added yet")]
    UnknownResult { node: usize, result: usize },
    #[error("the patch refers to its weight {weight}, which it does not declare")]
    UnknownWeight { weight: usize },
    #[error("weight @{name}: {source}")]
    Weight { name: String, source: IrError },
    #[error("new {op} node: {source}")]
    Infer {
        op: &'static str,
        source: Box<InferError>,
    },
    #[error("replaces a {old} with a {new}")]
    Retype { old: TensorType, new: TensorType },
}

fn resolve(
    new_nodes: &[Vec<ValueId>],
    new_weights: &[ValueId],
    v: PValue,
) -> Result<ValueId, PatchError> {
    match v {
        PValue::Old(v) => Ok(v),
        PValue::New { node, result } => new_nodes
            .get(node)
            .and_then(|r| r.get(result))
            .copied()
            .ok_or(PatchError::UnknownResult { node, result }),
        PValue::Weight(w) => new_weights
            .get(w)
            .copied()
            .ok_or(PatchError::UnknownWeight { weight: w }),
    }
}

fn apply(
    g: &mut Graph,
    st: &mut State,
    patch: Patch,
    anchor: usize,
    renames: &mut Vec<(String, String)>,
) -> Result<(), PatchError> {
    let loc = g.nodes[anchor].loc.clone();
    let mut weights = Vec::with_capacity(patch.weights.len());
    for w in patch.weights {
        let mut name = w.name.clone();
        let mut k = 1;
        while g.weight_by_name(&name).is_some() {
            name = format!("{}.{k}", w.name);
            k += 1;
        }
        if name != w.name {
            renames.push((name.clone(), w.name.clone()));
        }
        let v = match w.data {
            Some(d) => g.add_weight(&name, w.ty, Some(d)),
            None => g.add_weight_hash(&name, w.ty, w.hash),
        }
        .map_err(|source| PatchError::Weight {
            name: name.clone(),
            source,
        })?;
        weights.push(v);
    }
    st.grow(g);
    let mut nodes: Vec<Vec<ValueId>> = Vec::with_capacity(patch.nodes.len());
    for n in patch.nodes {
        let inputs: Vec<ValueId> = n
            .inputs
            .iter()
            .map(|&p| resolve(&nodes, &weights, p))
            .collect::<Result<_, _>>()?;
        let tys: Vec<&TensorType> = inputs.iter().map(|v| g.ty(*v)).collect();
        let consts: Vec<Option<&Tensor>> = inputs
            .iter()
            .map(
                |v| match st.producers[v.0 as usize].map(|p| &g.nodes[p].op) {
                    Some(Op::Constant { value }) => Some(value),
                    _ => None,
                },
            )
            .collect();
        let types = infer(&n.op, &tys, &consts).map_err(|e| PatchError::Infer {
            op: n.op.name(),
            source: Box::new(e),
        })?;
        let idx = g.nodes.len();
        let outs = g.push_node(n.op, &inputs, types, loc.clone());
        st.grow(g);
        st.alive.push(true);
        for v in &inputs {
            st.users[v.0 as usize].push(idx);
        }
        for o in &outs {
            st.producers[o.0 as usize] = Some(idx);
        }
        nodes.push(outs);
    }
    let mut old_values = Vec::new();
    for (old, new) in patch.replace {
        let new = resolve(&nodes, &weights, new)?;
        if old == new {
            continue;
        }
        let (to, tn) = (g.ty(old), g.ty(new));
        let fits = to.dtype() == tn.dtype()
            && to.rank() == tn.rank()
            && to
                .shape
                .0
                .iter()
                .zip(&tn.shape.0)
                .all(|(a, b)| dims_may_equal(a, b));
        if !fits {
            return Err(PatchError::Retype {
                old: to.clone(),
                new: tn.clone(),
            });
        }
        let uses = std::mem::take(&mut st.users[old.0 as usize]);
        for &u in &uses {
            for x in g.nodes[u].inputs.iter_mut() {
                if *x == old {
                    *x = new;
                }
            }
        }
        let mut seen = HashSet::new();
        for u in uses {
            if seen.insert(u) {
                let count = g.nodes[u].inputs.iter().filter(|&&x| x == new).count();
                let have = st.users[new.0 as usize].iter().filter(|&&x| x == u).count();
                for _ in have..count {
                    st.users[new.0 as usize].push(u);
                }
            }
        }
        if st.is_output[old.0 as usize] {
            for (_, v) in g.outputs.iter_mut() {
                if *v == old {
                    *v = new;
                }
            }
            st.is_output[old.0 as usize] = false;
            st.is_output[new.0 as usize] = true;
        }
        old_values.push(old);
    }
    for old in old_values {
        if let Some(p) = st.producers[old.0 as usize] {
            st.kill_unused(g, p);
        }
    }
    // Nodes the patch added but did not use go too.
    let first_new = g.nodes.len() - nodes.len();
    for i in (first_new..g.nodes.len()).rev() {
        st.kill_unused(g, i);
    }
    Ok(())
}

/// Infers every node's result types again, in program order (after a rewrite changed operands).
/// Dimensions that shape arithmetic tells (`expand(x, shape(y))`) refine what inference leaves
/// unknown.
pub fn refresh_types(g: &mut Graph) -> Result<(), PassError> {
    let st = State::new(g);
    for i in 0..g.nodes.len() {
        let types = {
            let view = st.view(g);
            let n = &g.nodes[i];
            let tys: Vec<&TensorType> = n.inputs.iter().map(|v| g.ty(*v)).collect();
            let consts: Vec<Option<&Tensor>> = n
                .inputs
                .iter()
                .map(
                    |v| match st.producers[v.0 as usize].map(|p| &g.nodes[p].op) {
                        Some(Op::Constant { value }) => Some(value),
                        _ => None,
                    },
                )
                .collect();
            let mut types = infer(&n.op, &tys, &consts).map_err(|e| PassError::Retype {
                node: describe_node(g, i),
                source: Box::new(e),
            })?;
            crate::core::symbolic::refine(&view, i, &mut types);
            types
        };
        let outs = g.nodes[i].outputs.clone();
        for (o, t) in outs.iter().zip(types) {
            g.values[o.0 as usize].ty = t;
        }
    }
    Ok(())
}

/// Rebuilds the graph with only the values still in use: drops unused weights and values
/// orphaned by rewrites, and gives renamed weights their wanted names when those came free.
pub fn compact(g: &mut Graph, renames: &[(String, String)]) {
    let mut used = vec![false; g.values.len()];
    for n in &g.nodes {
        for v in &n.inputs {
            used[v.0 as usize] = true;
        }
    }
    for (_, v) in &g.outputs {
        used[v.0 as usize] = true;
    }
    let old = std::mem::take(g);
    let mut ng = Graph::new(&old.name);
    ng.kind = old.kind;
    ng.meta = old.meta.clone();
    ng.states = old.states.clone();
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    for (name, v) in &old.inputs {
        map.insert(*v, ng.add_input(name, old.ty(*v).clone()));
    }
    let kept: Vec<&llmc_ir::Weight> = old
        .weights
        .iter()
        .filter(|w| used[w.value.0 as usize])
        .collect();
    let taken: HashSet<&str> = kept.iter().map(|w| w.name.as_str()).collect();
    let wanted: HashMap<&str, &str> = renames
        .iter()
        .map(|(have, want)| (have.as_str(), want.as_str()))
        .collect();
    let mut claimed: HashSet<String> = HashSet::new();
    for w in kept {
        let mut name = w.name.clone();
        if let Some(want) = wanted.get(w.name.as_str()) {
            if !taken.contains(want) && claimed.insert(want.to_string()) {
                name = want.to_string();
            }
        }
        let v = ng
            .add_weight_hash(&name, w.ty.clone(), w.hash)
            .expect("weight names stay unique");
        if let ValueDef::Weight(i) = ng.def(v) {
            ng.weights[i as usize].data = w.data.clone();
        }
        map.insert(w.value, v);
    }
    for n in &old.nodes {
        let inputs: Vec<ValueId> = n.inputs.iter().map(|v| map[v]).collect();
        let types: Vec<TensorType> = n.outputs.iter().map(|o| old.ty(*o).clone()).collect();
        let outs = ng.push_node(n.op.clone(), &inputs, types, n.loc.clone());
        for (o, no) in n.outputs.iter().zip(outs) {
            map.insert(*o, no);
        }
    }
    for (name, v) in &old.outputs {
        ng.set_output(name, map[v]);
    }
    *g = ng;
}
