//! The verifier: every rule a graph must keep, with errors that name the value, op and line.

use crate::error::IrError;
use crate::graph::{Graph, ModelKind, ValueDef};
use crate::infer::{dims_may_equal, infer, refines};
use crate::ops::{norm_axis, Op};
use crate::tensor::Tensor;
use crate::types::{DType, TensorType};

/// Checks a graph: program order, operand and result types, weights, state, outputs, and the
/// contract of its kind (a decoder's inputs and outputs). Reports every error it finds, one
/// per line, each naming the value, op and line.
pub fn verify(g: &Graph) -> Result<(), IrError> {
    let mut errors = Vec::new();
    check(g, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(IrError::Verify(errors))
    }
}

fn check(g: &Graph, errors: &mut Vec<String>) {
    let names = g.value_names();
    let mut bad = |msg: String| errors.push(msg);
    let mut defined = vec![false; g.values.len()];
    for (i, (name, v)) in g.inputs.iter().enumerate() {
        if g.def(*v) != ValueDef::Input(i as u32) {
            bad(format!("input %{name} is not recorded as input {i}"));
        }
        if !g.ty(*v).enc.is_dense() {
            bad(format!(
                "input %{name} has an encoded type {}; inputs are dense",
                g.ty(*v)
            ));
        }
        defined[v.0 as usize] = true;
    }
    for (i, w) in g.weights.iter().enumerate() {
        if g.def(w.value) != ValueDef::Weight(i as u32) || g.ty(w.value) != &w.ty {
            bad(format!("weight @{} does not match its value", w.name));
        }
        if let Some(d) = &w.data {
            if let Err(e) = d.check(&w.ty) {
                bad(format!("weight @{}: {e}", w.name));
            }
        }
        defined[w.value.0 as usize] = true;
    }
    for s in &g.states {
        if !s.ty.enc.is_dense() {
            bad(format!("state ${} must be dense, got {}", s.name, s.ty));
        }
    }
    let producers = g.producers();
    for (i, n) in g.nodes.iter().enumerate() {
        let at = || g.describe_node(&names, i);
        let mut operands_ok = true;
        for (k, v) in n.inputs.iter().enumerate() {
            if v.0 as usize >= g.values.len() || !defined[v.0 as usize] {
                let what = names.get(v.0 as usize).map(|s| s.as_str()).unwrap_or("?");
                bad(format!(
                    "{}: operand {k} ({what}) is used before it is defined",
                    at()
                ));
                operands_ok = false;
            }
        }
        for o in &n.outputs {
            if let Some(d) = defined.get_mut(o.0 as usize) {
                if *d {
                    bad(format!(
                        "{}: result {} is defined twice",
                        at(),
                        names[o.0 as usize]
                    ));
                }
                *d = true;
            }
        }
        if n.outputs.len() != n.op.num_results() {
            bad(format!(
                "{}: has {} results, the op gives {}",
                at(),
                n.outputs.len(),
                n.op.num_results()
            ));
            continue;
        }
        if !operands_ok {
            continue;
        }
        let tys: Vec<&TensorType> = n.inputs.iter().map(|v| g.ty(*v)).collect();
        let consts: Vec<Option<&Tensor>> = n
            .inputs
            .iter()
            .map(|v| g.const_value_with(&producers, *v))
            .collect();
        match infer(&n.op, &tys, &consts) {
            Err(m) => bad(format!("{}: {m}", at())),
            Ok(inferred) => {
                for (k, (o, t)) in n.outputs.iter().zip(&inferred).enumerate() {
                    if !refines(g.ty(*o), t) {
                        bad(format!(
                            "{}: result {k} is declared {} but the op gives {t}",
                            at(),
                            g.ty(*o)
                        ));
                    }
                }
            }
        }
        if let Op::CacheConcat { state, axis } = &n.op {
            let Some(s) = g.states.get(*state as usize) else {
                bad(format!(
                    "{}: there is no state {state} (the graph declares {})",
                    at(),
                    g.states.len()
                ));
                continue;
            };
            let x = tys[0];
            let a = match norm_axis(*axis, x.rank()) {
                Ok(a) => a,
                Err(m) => {
                    bad(format!("{}: {m}", at()));
                    continue;
                }
            };
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
                bad(format!(
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
            bad(format!("output \"{name}\" names an undefined value"));
            continue;
        }
        if !seen.insert(name) {
            bad(format!("output \"{name}\" is returned twice"));
        }
        if !g.ty(*v).enc.is_dense() {
            bad(format!(
                "output \"{name}\" is an encoded weight; return a decoded value"
            ));
        }
    }
    if g.kind == ModelKind::Decoder {
        check_decoder(g, &mut bad);
    }
}

/// A decoder's contract: inputs `tokens` and `positions` (`[batch, seq]` i64) and an output
/// `logits` (`[batch, seq, vocab]` f32, the vocabulary fixed).
fn check_decoder(g: &Graph, bad: &mut impl FnMut(String)) {
    for name in ["tokens", "positions"] {
        match g.inputs.iter().find(|(n, _)| n == name) {
            None => bad(format!(
                "kind decoder: no input \"{name}\" (a decoder takes tokens and positions, [batch, seq] i64)"
            )),
            Some((_, v)) if g.ty(*v).dtype() != DType::I64 || g.ty(*v).rank() != 2 => bad(format!(
                "kind decoder: input \"{name}\" is {}, not [batch, seq] i64",
                g.ty(*v)
            )),
            Some(_) => {}
        }
    }
    match g.outputs.iter().find(|(n, _)| n == "logits") {
        None => bad(
            "kind decoder: no output \"logits\" (a decoder returns [batch, seq, vocab] logits)"
                .into(),
        ),
        Some((_, v)) => {
            let t = g.ty(*v);
            if t.rank() != 3 || t.shape.0.last().and_then(|d| d.fixed()).is_none() {
                bad(format!(
                    "kind decoder: output \"logits\" is {t}, not [batch, seq, vocab] with a fixed vocabulary"
                ));
            }
        }
    }
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
    fn every_error_is_reported() {
        let e = err("graph @g(%x: tensor<4xf32>) {\n  %0 = exp(%x) : tensor<5xf32>\n  %1 = exp(%x) : tensor<6xf32>\n  return %0 as \"y\", %1 as \"y\"\n}\n");
        assert!(e.starts_with("invalid graph: 3 errors"), "{e}");
        assert!(
            e.contains("%0 = exp (line 2): result 0 is declared tensor<5xf32>"),
            "{e}"
        );
        assert!(
            e.contains("%1 = exp (line 3): result 0 is declared tensor<6xf32>"),
            "{e}"
        );
        assert!(e.contains("output \"y\" is returned twice"), "{e}");
    }

    #[test]
    fn a_decoder_keeps_its_contract() {
        let e = err("graph @g(%tokens: tensor<1x{s}xi64>) {\n  kind decoder\n  %0 = cast(%tokens) {to = f32} : tensor<1x{s}xf32>\n  return %0 as \"y\"\n}\n");
        assert!(e.contains("kind decoder: no input \"positions\""), "{e}");
        assert!(e.contains("kind decoder: no output \"logits\""), "{e}");
    }

    #[test]
    fn state_and_outputs_are_checked() {
        let e = err("graph @g(%x: tensor<1x2x{s}x4xf32>) {\n  %0 = cache_concat(%x) {axis = 2, state = 0} : tensor<1x2x?x4xf32>\n  return %0 as \"y\"\n}\n");
        assert!(e.contains("there is no state 0"), "{e}");
        let e = err("graph @g(%x: tensor<4xf32>) {\n  weight @w : tensor<4x!q4<pc,f16,sym>> #0\n  return @w as \"y\"\n}\n");
        assert!(e.contains("output \"y\" is an encoded weight"), "{e}");
    }
}
