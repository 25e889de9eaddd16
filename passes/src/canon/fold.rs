//! Constant folding: nodes whose operands are known at build time are evaluated with the
//! reference interpreter, and shape arithmetic whose result the types already tell is replaced
//! by its value.

use crate::core::rewrite::{Patch, RewritePattern, View, MAX_CONST_ELEMS};
use crate::core::symbolic::{known, sym_value};
use crate::PassError;
use llmc_ir::{DType, Graph, Op, Tensor};

/// Results above this many elements are left for run time (folding would bloat the weights).
pub const MAX_FOLD_ELEMS: u64 = 1 << 22;

/// Evaluates `op` on known operands with the reference interpreter. `None` when the op cannot
/// be evaluated on them (the interpreter's error is left for run time).
pub fn eval_op(op: &Op, args: &[Tensor]) -> Option<Vec<Tensor>> {
    if matches!(op, Op::CacheConcat { .. }) {
        return None;
    }
    let mut g = Graph::new("fold");
    let ins: Vec<_> = args.iter().map(|t| g.constant(t.clone())).collect();
    let outs = g.add(op.clone(), &ins).ok()?;
    for (i, o) in outs.iter().enumerate() {
        g.set_output(&format!("r{i}"), *o);
    }
    if outs
        .iter()
        .any(|o| g.ty(*o).shape.numel().is_none_or(|n| n > MAX_FOLD_ELEMS))
    {
        return None;
    }
    let res = llmc_ir::interp::run_once(&g, &[]).ok()?;
    Some(res.into_iter().map(|(_, t)| t).collect())
}

/// `op(c1, .., cn) == c`: a node whose operands are all known becomes its value
/// (a `const` when small, an in-memory weight otherwise). Never folds `cache_concat`.
pub struct FoldConstants;

impl RewritePattern for FoldConstants {
    fn name(&self) -> &'static str {
        "fold-constants"
    }

    fn match_and_rewrite(&self, g: &View<'_>, node: usize) -> Result<Option<Patch>, PassError> {
        let n = &g.nodes[node];
        if matches!(n.op, Op::Constant { .. } | Op::CacheConcat { .. }) || n.inputs.is_empty() {
            return Ok(None);
        }
        // A weight used as is stays a weight: only fold when something is computed from it.
        let Some(args) = n
            .inputs
            .iter()
            .map(|v| g.const_value(*v).map(|c| c.into_owned()))
            .collect::<Option<Vec<Tensor>>>()
        else {
            return Ok(None);
        };
        // Large results only come from small operands through expanding ops; keep those lazy
        // unless every result stays small.
        let big = n.outputs.iter().any(|o| {
            g.ty(*o)
                .shape
                .numel()
                .is_none_or(|k| k > MAX_CONST_ELEMS as u64)
        });
        let from_weight = n.inputs.iter().any(|v| g.weight_of(*v).is_some());
        if big && from_weight {
            return Ok(None);
        }
        let Some(vals) = eval_op(&n.op, &args) else {
            return Ok(None);
        };
        let mut p = Patch::new();
        for (o, t) in n.outputs.iter().zip(vals) {
            let name = format!("fold.{}", o.0);
            let v = p.tensor(&name, t);
            p.replace(*o, v);
        }
        Ok(Some(p))
    }
}

/// `shape(x)[i] == n` when the type of `x` fixes dimension `i`: integer shape arithmetic whose
/// every element is known from the types becomes a `const`.
pub struct FoldShapes;

impl RewritePattern for FoldShapes {
    fn name(&self) -> &'static str {
        "fold-shapes"
    }

    fn match_and_rewrite(&self, g: &View<'_>, node: usize) -> Result<Option<Patch>, PassError> {
        let n = &g.nodes[node];
        if matches!(n.op, Op::Constant { .. }) || n.outputs.len() != 1 {
            return Ok(None);
        }
        let out = n.outputs[0];
        let ty = g.ty(out);
        if ty.rank() > 1 || !(ty.dtype().is_int() || ty.dtype() == DType::Bool) {
            return Ok(None);
        }
        let Some(vals) = sym_value(g, out).and_then(|s| known(&s)) else {
            return Ok(None);
        };
        let shape: Vec<usize> = if ty.rank() == 0 {
            if vals.len() != 1 {
                return Ok(None);
            }
            vec![]
        } else {
            vec![vals.len()]
        };
        let t = Tensor::i64(shape, vals).cast(ty.dtype());
        let mut p = Patch::new();
        let c = p.constant(t);
        p.replace(out, c);
        Ok(Some(p))
    }
}
