//! llmc compiler library: frontends, tokenizers, the evaluation protocol and the CLI commands.

pub mod bench;
pub mod bundle;
pub mod cli;
pub mod compress;
pub mod driver;
pub mod eval;
pub mod frontend;
pub mod npy;
pub mod report;
pub mod tokenizer;
