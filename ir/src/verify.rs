//! The verifier: every rule a graph must keep, with errors that name the value, op and line.

use crate::error::IrError;
use crate::graph::{Graph, ValueDef};
use crate::infer::{dims_may_equal, infer, refines};
use crate::ops::{norm_axis, Op};
use crate::tensor::Tensor;
use crate::types::TensorType;

/// Checks a graph: program order, operand and result types, weights, state and outputs.
pub fn verify(g: &Graph) -> Result<(), IrError> {
    let names = g.value_names();
    let bad = |msg: String| Err(IrError::Invalid(msg));
    let mut defined = vec![false; g.values.len()];
    for (i, (name, v)) in g.inputs.iter().enumerate() {
        if g.def(*v) != ValueDef::Input(i as u32) {
            return bad(format!("input %{name} is not recorded as input {i}"));
        }
        if !g.ty(*v).enc.is_dense() {
            return bad(format!(
                "input %{name} has an encoded type {}; inputs are dense",
                g.ty(*v)
            ));
        }
        defined[v.0 as usize] = true;
    }
    for (i, w) in g.weights.iter().enumerate() {
        if g.def(w.value) != ValueDef::Weight(i as u32) || g.ty(w.value) != &w.ty {
            return bad(format!("weight @{} does not match its value", w.name));
        }
        if let Some(d) = &w.data {
            d.check(&w.ty)
                .map_err(|e| IrError::Invalid(format!("weight @{}: {e}", w.name)))?;
        }
        defined[w.value.0 as usize] = true;
    }
    for s in &g.states {
        if !s.ty.enc.is_dense() {
            return bad(format!("state ${} must be dense, got {}", s.name, s.ty));
        }
    }
    let producers = g.producers();
    for (i, n) in g.nodes.iter().enumerate() {
        let at = || g.describe_node(&names, i);
        for (k, v) in n.inputs.iter().enumerate() {
            if v.0 as usize >= g.values.len() || !defined[v.0 as usize] {
                let what = names.get(v.0 as usize).map(|s| s.as_str()).unwrap_or("?");
                return bad(format!(
                    "{}: operand {k} ({what}) is used before it is defined",
                    at()
                ));
            }
        }
        if n.outputs.len() != n.op.num_results() {
            return bad(format!(
                "{}: has {} results, the op gives {}",
                at(),
                n.outputs.len(),
                n.op.num_results()
            ));
        }
        let tys: Vec<&TensorType> = n.inputs.iter().map(|v| g.ty(*v)).collect();
        let consts: Vec<Option<&Tensor>> = n
            .inputs
            .iter()
            .map(|v| g.const_value_with(&producers, *v))
            .collect();
        let inferred =
            infer(&n.op, &tys, &consts).map_err(|m| IrError::Invalid(format!("{}: {m}", at())))?;
        for (k, (o, t)) in n.outputs.iter().zip(&inferred).enumerate() {
            if defined[o.0 as usize] {
                return bad(format!(
                    "{}: result {} is defined twice",
                    at(),
                    names[o.0 as usize]
                ));
            }
            defined[o.0 as usize] = true;
            if !refines(g.ty(*o), t) {
                return bad(format!(
                    "{}: result {k} is declared {} but the op gives {t}",
                    at(),
                    g.ty(*o)
                ));
            }
        }
        if let Op::CacheConcat { state, axis } = &n.op {
            let Some(s) = g.states.get(*state as usize) else {
                return bad(format!(
                    "{}: there is no state {state} (the graph declares {})",
                    at(),
                    g.states.len()
                ));
            };
            let x = tys[0];
            let a = norm_axis(*axis, x.rank())
                .map_err(|m| IrError::Invalid(format!("{}: {m}", at())))?;
            let fits = s.ty.rank() == x.rank()
                && s.ty.dtype() == x.dtype()
                && s.ty
                    .shape
                    .0
                    .iter()
                    .zip(&x.shape.0)
                    .enumerate()
                    .all(|(k, (sd, xd))| k == a || dims_may_equal(sd, xd));
            if !fits {
                return bad(format!(
                    "{}: appends {x} to state ${} of type {}",
                    at(),
                    s.name,
                    s.ty
                ));
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (name, v) in &g.outputs {
        if v.0 as usize >= g.values.len() || !defined[v.0 as usize] {
            return bad(format!("output \"{name}\" names an undefined value"));
        }
        if !seen.insert(name) {
            return bad(format!("output \"{name}\" is returned twice"));
        }
        if !g.ty(*v).enc.is_dense() {
            return bad(format!(
                "output \"{name}\" is an encoded weight; return a decoded value"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse;

    fn err(src: &str) -> String {
        let g = parse("t.llmc", src).unwrap();
        verify(&g).unwrap_err().to_string()
    }

    #[test]
    fn type_mismatch_names_value_op_and_line() {
        let e = err("graph @g(%x: tensor<4x8xf32>) {\n  weight @w : tensor<16x4xf32> #0\n  %0 = linear(%x, @w) : tensor<4x16xf32>\n  return %0 as \"y\"\n}\n");
        assert_eq!(e, "invalid graph: %0 = linear (line 3): input has 8 features but the weight tensor<16x4xf32> takes 4");
        let e = err("graph @g(%x: tensor<4xf32>) {\n  %0 = exp(%x) : tensor<5xf32>\n  return %0 as \"y\"\n}\n");
        assert!(e.contains("%0 = exp (line 2): result 0 is declared tensor<5xf32> but the op gives tensor<4xf32>"), "{e}");
    }

    #[test]
    fn state_and_outputs_are_checked() {
        let e = err("graph @g(%x: tensor<1x2x{s}x4xf32>) {\n  %0 = cache_concat(%x) {axis = 2, state = 0} : tensor<1x2x?x4xf32>\n  return %0 as \"y\"\n}\n");
        assert!(e.contains("there is no state 0"), "{e}");
        let e = err("graph @g(%x: tensor<4xf32>) {\n  weight @w : tensor<4x!q4<pc,f16,sym>> #0\n  return @w as \"y\"\n}\n");
        assert!(e.contains("output \"y\" is an encoded weight"), "{e}");
    }
}
