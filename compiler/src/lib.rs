//! llmc compiler library: frontends, tokenizers, the evaluation protocol and the CLI commands.

pub mod frontend;
pub mod tokenizer;
