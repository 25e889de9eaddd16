//! llmc passes: graph rewrites over the IR, by family.
//!
//! | module | what | may import |
//! |---|---|---|
//! | [`core`] | `Pass`, typed options, pass manager, rewrite driver, weight-edit API, linear algebra, quantization grids, the next-token loss check | calib |
//! | [`calib`] | calibration data and the statistics the interpreter collects from it | — |
//! | [`canon`] | canonicalize (folds, identities, dead code) and fusions | core |
//! | [`quant`] | `quantize` (RTN, GPTQ, AWQ, mixed precision) and `smooth` (SmoothQuant) | core, calib |
//! | [`prune`] | `prune` (magnitude, Wanda, SparseGPT, n:m), `prune-ffn`, `prune-heads`, `drop-layers` | core, calib |
//! | [`lowrank`] | `lowrank` (SVD, SVD-LLM) and `caldera` (Q + L·R) | core, calib |
//! | [`share`] | `palettize` (k-means codebooks) | core, calib |
//! | [`distill`] | `distill` (bias and low-rank corrections) | core, calib |
//! | [`registry`] | every pass by name, for pipelines and `llmc passes` | every family |
//!
//! A family never imports another family's module: what two families need lives in `core`.

pub mod calib;
pub mod canon;
pub mod core;
pub mod distill;
pub mod lowrank;
pub mod prune;
pub mod quant;
pub mod registry;
pub mod share;

pub use registry::{infos, pipeline};
pub use crate::core::rewrite::{
    apply_patterns, PValue, Patch, RewriteConfig, RewritePattern, RewriteStats, View,
};
pub use canon::{canonicalize, fuse, patterns_by_name};

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
    /// A weight could not be read or replaced (`what`: read, replace, add bias).
    #[error("{what} @{weight}: {msg}")]
    Edit {
        what: &'static str,
        weight: String,
        msg: String,
    },
    /// A node's result types could not be inferred after weights changed shape.
    #[error("re-inferring node {node} after a weight changed shape: {msg}")]
    Reinfer { node: usize, msg: String },
    /// A pass was given an option it does not take, or a value of the wrong kind.
    #[error("pass {pass}: {msg}")]
    Options { pass: String, msg: String },
    /// A pipeline string that does not parse, or names an unknown pass.
    #[error("pipeline '{pipeline}': {msg}")]
    Pipeline { pipeline: String, msg: String },
    /// A pattern list names a pattern that does not exist.
    #[error("unknown pattern '{name}' (known: canonicalize, fuse, {})", known.join(", "))]
    UnknownPattern {
        name: String,
        known: Vec<&'static str>,
    },
    /// Calibration could not run, or a pass that needs it has none.
    #[error("calibration: {0}")]
    Calibration(String),
    /// The next-token loss check could not run the model.
    #[error("next-token loss check: {0}")]
    Check(String),
    /// The patterns kept firing past the sweep bound (two rules undo each other).
    #[error("rewriting did not reach a fixpoint after {sweeps} sweeps; still firing: {patterns}")]
    NoFixpoint { sweeps: usize, patterns: String },
}
