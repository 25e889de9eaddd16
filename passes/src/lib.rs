//! llmc passes: the rewrite driver, canonicalization and fusion patterns over the graph IR.

pub mod caldera;
pub mod calib;
pub mod canonicalize;
pub mod distill;
pub mod fold;
pub mod fuse;
pub mod gptq;
pub mod heads;
pub mod layers;
pub mod lowrank;
pub mod manager;
pub mod palettize;
pub mod prune;
pub mod quant;
pub mod registry;
pub mod rewrite;
pub mod smooth;
pub mod structured;
mod symbolic;

pub use canonicalize::{canonical_patterns, canonicalize};
pub use fuse::{fuse, fusion_patterns};
pub use rewrite::{
    apply_patterns, PValue, Patch, RewriteConfig, RewritePattern, RewriteStats, View,
};

use llmc_ir::IrError;

/// What went wrong in a pass. Pattern errors name the pattern and the node it was looking at;
/// IR errors mean a rewrite left a graph the IR rejects (a bug in the pass).
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// A pattern failed, or its patch could not be applied: `pattern fuse-layer-norm on %42 (add)`.
    #[error("pattern {pattern} on {at}: {msg}")]
    Pattern {
        pattern: &'static str,
        at: String,
        msg: String,
    },
    /// The graph broke an IR rule after a pass.
    #[error("{pass}: {source}")]
    Ir {
        pass: String,
        #[source]
        source: IrError,
    },
    /// A pass was given an option it does not take, or a value of the wrong kind.
    #[error("pass {pass}: {msg}")]
    Options { pass: String, msg: String },
    /// A pipeline string that does not parse, or names an unknown pass.
    #[error("pipeline '{pipeline}': {msg}")]
    Pipeline { pipeline: String, msg: String },
    /// Calibration could not run, or a pass that needs it has none.
    #[error("calibration: {0}")]
    Calibration(String),
    /// The patterns kept firing past the sweep bound (two rules undo each other).
    #[error("rewriting did not reach a fixpoint after {sweeps} sweeps; still firing: {patterns}")]
    NoFixpoint { sweeps: usize, patterns: String },
}

/// Every pattern by name: the canonicalization rules and the fusions.
pub fn all_patterns() -> Vec<Box<dyn RewritePattern>> {
    let mut v = canonical_patterns();
    v.extend(fusion_patterns());
    v
}

/// The patterns named in a comma-separated list (`fuse-attention, merge-transposes`); the
/// names `canonicalize` and `fuse` stand for those whole sets. `None` names the unknown entry.
pub fn patterns_by_name(list: &str) -> Result<Vec<Box<dyn RewritePattern>>, String> {
    let mut out: Vec<Box<dyn RewritePattern>> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match name {
            "canonicalize" => out.extend(canonical_patterns()),
            "fuse" => out.extend(all_patterns()),
            _ => {
                let p = all_patterns()
                    .into_iter()
                    .find(|p| p.name() == name)
                    .ok_or_else(|| {
                        let known: Vec<&str> = all_patterns().iter().map(|p| p.name()).collect();
                        format!(
                            "unknown pattern '{name}' (known: canonicalize, fuse, {})",
                            known.join(", ")
                        )
                    })?;
                out.push(p);
            }
        }
    }
    Ok(out)
}
