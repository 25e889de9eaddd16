//! llmc's graph IR: types with symbolic shapes and weight encodings, ops, the graph and its
//! weight store, the text form (printer and parser), verifier, shape inference, and the
//! reference interpreter that defines what a graph means.

pub mod error;
pub mod graph;
pub mod infer;
pub mod interp;
pub mod ops;
pub mod parse;
pub mod print;
pub mod tensor;
pub mod types;
pub mod verify;
pub mod weights;

pub use error::IrError;
pub use graph::{Graph, ModelKind, Node, StateDecl, ValueDef, ValueId, Weight};
pub use interp::Session;
pub use ops::{ActQuant, Attr, BinaryOp, Op, ReduceKind, RopeMode, SliceSpec, UnaryOp};
pub use parse::{parse, parse_type};
pub use print::print;
pub use tensor::{Data, Tensor};
pub use types::{DType, Dim, Encoding, Group, PaletteSpec, QuantSpec, Shape, TensorType, Zero};
pub use verify::verify;
pub use weights::{Bytes, Format, GgmlType, WeightData, WeightError};
