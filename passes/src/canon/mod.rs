//! Canonicalization and fusion: local rewrites by the rewrite driver's patterns. Constants and
//! shape arithmetic fold, identities drop, dead nodes go, and exporter decompositions become
//! the IR's compound ops again (layer norm, gelu, attention, linear).
//!
//! Contract: the graph computes the same function (folds are exact; fusions fire only on an
//! exact match), and never gets bigger.

mod canonicalize;
mod fold;
mod fuse;

pub use canonicalize::{canonical_patterns, canonicalize};
pub use fold::eval_op;
pub use fuse::{fuse, fusion_patterns};

use crate::core::pass::{Pass, PassContext, PassInfo};
use crate::core::report::{PassRow, RewriteRow};
use crate::core::rewrite::RewritePattern;
use crate::PassError;
use llmc_ir::Graph;

/// Every pattern by name: the canonicalization rules and the fusions.
pub fn all_patterns() -> Vec<Box<dyn RewritePattern>> {
    let mut v = canonical_patterns();
    v.extend(fusion_patterns());
    v
}

/// The patterns named in a comma-separated list (`fuse-attention, merge-transposes`); the
/// names `canonicalize` and `fuse` stand for those whole sets.
pub fn patterns_by_name(list: &str) -> Result<Vec<Box<dyn RewritePattern>>, PassError> {
    let mut out: Vec<Box<dyn RewritePattern>> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match name {
            "canonicalize" => out.extend(canonical_patterns()),
            "fuse" => out.extend(all_patterns()),
            _ => {
                let p = all_patterns()
                    .into_iter()
                    .find(|p| p.name() == name)
                    .ok_or_else(|| PassError::UnknownPattern {
                        name: name.to_string(),
                        known: all_patterns().iter().map(|p| p.name()).collect(),
                    })?;
                out.push(p);
            }
        }
    }
    Ok(out)
}

pub static CANONICALIZE_INFO: PassInfo = PassInfo {
    name: "canonicalize",
    summary: "fold constants and shape arithmetic, drop identities, remove dead nodes",
    options: &[],
    create: |_| Ok(Box::new(Rewrite { fusions: false })),
};

pub static FUSE_INFO: PassInfo = PassInfo {
    name: "fuse",
    summary: "canonicalize, then fuse layer norm, gelu, attention and linear layers",
    options: &[],
    create: |_| Ok(Box::new(Rewrite { fusions: true })),
};

/// The `canonicalize` and `fuse` passes.
struct Rewrite {
    fusions: bool,
}

impl Pass for Rewrite {
    fn info(&self) -> &'static PassInfo {
        if self.fusions {
            &FUSE_INFO
        } else {
            &CANONICALIZE_INFO
        }
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<(), PassError> {
        // rewrites renumber values: statistics gathered before no longer apply
        cx.stats = None;
        let stats = if self.fusions {
            fuse(g)?
        } else {
            canonicalize(g)?
        };
        cx.report.push(PassRow::Rewrite(RewriteRow {
            pass: self.info().name,
            fired: stats.fired,
            sweeps: stats.sweeps,
            nodes_before: stats.nodes_before,
            nodes_after: stats.nodes_after,
        }));
        Ok(())
    }
}
