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

pub use crate::core::rewrite::{
    apply_patterns, PValue, Patch, RewriteConfig, RewritePattern, RewriteStats, View,
};
pub use canon::{canonicalize, fuse, patterns_by_name};
pub use registry::{infos, pipeline};

use crate::core::linalg::LinalgError;
use crate::core::rewrite::PatchError;
use crate::share::palettize::GroupError;
use llmc_ir::infer::InferError;
use llmc_ir::types::{EncodingError, Group};
use llmc_ir::IrError;

/// What went wrong in a pass. Pattern errors name the pattern and the node it was looking at;
/// IR errors mean a rewrite left a graph the IR rejects (a bug in the pass).
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// A pattern failed: `pattern fuse-layer-norm on %42 (add)`.
    #[error("pattern {pattern} on {at}: {msg}")]
    Pattern {
        pattern: &'static str,
        at: String,
        msg: String,
    },
    /// A pattern's patch could not be applied (a bug in the pattern), naming the node it
    /// was anchored at.
    #[error("pattern {pattern} on {at}: {source}")]
    Patch {
        pattern: &'static str,
        at: String,
        source: Box<PatchError>,
    },
    /// A rewrite left a node whose result types cannot be inferred (a bug in the pass).
    #[error("rewrite: invalid graph: {node}: {source}")]
    Retype {
        node: String,
        source: Box<InferError>,
    },
    /// A pass could not compress one weight: the pass, the weight, and why.
    #[error("{pass} @{weight}: {source}")]
    Matrix {
        pass: &'static str,
        weight: String,
        source: MatrixError,
    },
    /// The bridge replacing dropped layers `first..=last` could not be fitted.
    #[error("calibration: layers {first}..={last}: {source}")]
    Bridge {
        first: usize,
        last: usize,
        source: LinalgError,
    },
    /// A `group=` option that is not a palette grouping.
    #[error("pass {pass}: {source}")]
    Group {
        pass: &'static str,
        source: GroupError,
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
    #[error("re-inferring node {node} after a weight changed shape: {source}")]
    Reinfer {
        node: usize,
        source: Box<InferError>,
    },
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

impl PassError {
    /// Pass `pass` could not compress weight `weight`.
    pub fn matrix(pass: &'static str, weight: &str, source: impl Into<MatrixError>) -> PassError {
        PassError::Matrix {
            pass,
            weight: weight.to_string(),
            source: source.into(),
        }
    }
}

/// Why a pass could not compress one weight matrix (the pass adds its name and the weight's).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MatrixError {
    #[error(transparent)]
    Linalg(#[from] LinalgError),
    /// The encoding the pass chose does not fit the weight's shape.
    #[error(transparent)]
    Encoding(#[from] EncodingError),
    #[error("{method} needs calibration statistics of the weight's input (the Gram matrix)")]
    NoStatistics { method: &'static str },
    #[error("{n}:{m} sparsity needs rows of a multiple of {m} inputs, not {cols}")]
    NmShape { n: usize, m: usize, cols: usize },
    #[error("GPTQ needs groups within rows: {cols} columns, groups of {group}")]
    GptqGroups { cols: usize, group: usize },
    #[error("palettes here group per tensor, channel or rows, not {group}")]
    PaletteGroup { group: Group },
    /// A head fraction that would remove every KV group of an attention block.
    #[error("fraction {fraction} removes {drop} of {groups} KV groups; at least one must stay")]
    DropsAllGroups {
        fraction: f64,
        drop: usize,
        groups: usize,
    },
    /// A head fraction that would remove every query head of a KV group.
    #[error("fraction {fraction} removes {drop} of the {per_group} query heads of every KV group; at least one must stay (or use unit=kv)")]
    DropsAllHeads {
        fraction: f64,
        drop: usize,
        per_group: usize,
    },
}
