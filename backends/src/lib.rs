//! llmc backends: targets, LLVM code generation (inkwell) and MLIR handling (melior).

pub mod cpu;
pub mod llvm;
pub mod mlir;
pub mod target;

pub use target::{Arch, Feature, TargetError, TargetSpec};
