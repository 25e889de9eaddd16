//! Errors of the IR crate, keeping bad input, unsupported features and internal faults apart.

use crate::infer::InferError;
use crate::interp::EvalError;
use crate::weights::WeightError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IrError {
    /// IR text that does not parse: where and why.
    #[error("{file}:{line}:{col}: {msg}")]
    Parse {
        file: String,
        line: usize,
        col: usize,
        msg: String,
    },
    /// A graph that breaks an IR rule (types, operands, order); names the value and op.
    #[error("invalid graph: {0}")]
    Invalid(String),
    /// Every rule the verifier found broken, each naming the value, op and line.
    #[error("invalid graph: {}", show_all(.0))]
    Verify(Vec<String>),
    /// A node the graph builder could not type: the op, where it came from, and why.
    #[error("invalid graph: {op}{}: {source}", loc.as_ref().map(|l| format!(" at {l}")).unwrap_or_default())]
    Infer {
        op: &'static str,
        loc: Option<String>,
        source: Box<InferError>,
    },
    /// A node that cannot run on the values it was given (`node` as `describe_node` names it).
    #[error("{node}: {source}")]
    Eval { node: String, source: EvalError },
    /// Weight data that does not fit its type or cannot be read.
    #[error("weight {0}")]
    Weight(#[from] WeightError),
    /// Something the IR or interpreter does not do (yet).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A run that cannot proceed on the inputs given (wrong shape, index out of range, ...).
    #[error("{0}")]
    Run(String),
}

pub type Result<T, E = IrError> = std::result::Result<T, E>;

fn show_all(errors: &[String]) -> String {
    match errors {
        [one] => one.clone(),
        all => format!("{} errors:\n  {}", all.len(), all.join("\n  ")),
    }
}
