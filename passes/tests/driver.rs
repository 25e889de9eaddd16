//! The rewrite driver's contract: errors name the pattern and the node, rules that undo each
//! other stop at the sweep bound, dead nodes and unused weights go.

use llmc_ir::{parse, print, verify, Op, Tensor, UnaryOp};
use llmc_passes::{apply_patterns, PassError, Patch, RewriteConfig, RewritePattern, View};

/// Replaces every `exp` by a constant of the wrong type.
struct WrongType;

impl RewritePattern for WrongType {
    fn name(&self) -> &'static str {
        "wrong-type"
    }
    fn match_and_rewrite(&self, g: &View<'_>, node: usize) -> Result<Option<Patch>, PassError> {
        let n = &g.nodes[node];
        if n.op != Op::Unary(UnaryOp::Exp) {
            return Ok(None);
        }
        let mut p = Patch::new();
        let c = p.constant(Tensor::scalar_i64(1));
        p.replace(n.outputs[0], c);
        Ok(Some(p))
    }
}

/// Rewrites `from(x)` to `to(x)`.
struct Swap(&'static str, UnaryOp, UnaryOp);

impl RewritePattern for Swap {
    fn name(&self) -> &'static str {
        self.0
    }
    fn match_and_rewrite(&self, g: &View<'_>, node: usize) -> Result<Option<Patch>, PassError> {
        let n = &g.nodes[node];
        if n.op != Op::Unary(self.1) {
            return Ok(None);
        }
        let mut p = Patch::new();
        let v = p.add(Op::Unary(self.2), &[n.inputs[0].into()]);
        p.replace(n.outputs[0], v);
        Ok(Some(p))
    }
}

const SRC: &str = "graph @g(%x: tensor<4xf32>) {\n  weight @unused : tensor<4xf32> #0\n  %0 = exp(%x) : tensor<4xf32>\n  %1 = neg(%0) : tensor<4xf32>\n  return %1 as \"y\"\n}\n";

#[test]
fn errors_name_pattern_and_node() {
    let mut g = parse("t.llmc", SRC).unwrap();
    let pats: Vec<Box<dyn RewritePattern>> = vec![Box::new(WrongType)];
    let e = apply_patterns(&mut g, &pats, &RewriteConfig::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "pattern wrong-type on %0 (exp) at line 3: replaces a tensor<4xf32> with a tensor<i64>"
    );
}

#[test]
fn rules_that_undo_each_other_stop_at_the_bound() {
    let mut g = parse("t.llmc", SRC).unwrap();
    let pats: Vec<Box<dyn RewritePattern>> = vec![
        Box::new(Swap("exp-to-tanh", UnaryOp::Exp, UnaryOp::Tanh)),
        Box::new(Swap("tanh-to-exp", UnaryOp::Tanh, UnaryOp::Exp)),
    ];
    let e = apply_patterns(&mut g, &pats, &RewriteConfig { max_sweeps: 4 }).unwrap_err();
    assert!(matches!(e, PassError::NoFixpoint { sweeps: 4, .. }), "{e}");
    assert!(e.to_string().contains("still firing: tanh-to-exp"), "{e}");
}

#[test]
fn rewrites_drop_dead_nodes_and_unused_weights() {
    let mut g = parse("t.llmc", SRC).unwrap();
    let pats: Vec<Box<dyn RewritePattern>> =
        vec![Box::new(Swap("exp-to-tanh", UnaryOp::Exp, UnaryOp::Tanh))];
    let stats = apply_patterns(&mut g, &pats, &RewriteConfig::default()).unwrap();
    verify(&g).unwrap();
    assert_eq!(stats.fired.get("exp-to-tanh"), Some(&1));
    assert_eq!(stats.sweeps, 2);
    assert_eq!(
        print(&g),
        "graph @g(%x: tensor<4xf32>) {\n  %0 = tanh(%x) : tensor<4xf32>\n  %1 = neg(%0) : tensor<4xf32>\n  return %1 as \"y\"\n}\n"
    );
}
