//! Frontends: read ONNX, safetensors (+ config.json) and GGUF models into one graph IR.

pub mod bert;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod llama;
pub mod onnx;
pub mod safetensors;

use crate::tokenizer::Tokenizer;
use llmc_ir::{Graph, IrError};
use std::path::{Path, PathBuf};

/// What a frontend found wrong with a model file. Bad input and unsupported features are told
/// apart from internal faults; every message names the file and the tensor, node or field.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum FrontendError {
    /// The file is malformed, truncated or inconsistent.
    #[error("{}: {msg}", path.display())]
    #[diagnostic(code(llmc::model::bad_input))]
    BadInput { path: PathBuf, msg: String },
    /// The file is valid but uses something llmc does not support.
    #[error("{}: unsupported: {msg}", path.display())]
    #[diagnostic(
        code(llmc::model::unsupported),
        help("llmc reads Llama-family GGUF and safetensors decoders, BERT encoders, and ONNX graphs of the ops `llmc inspect` lists")
    )]
    Unsupported { path: PathBuf, msg: String },
    #[error("{}: cannot read: {source}", path.display())]
    #[diagnostic(code(llmc::model::io))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The frontend built a graph the IR rejects: a bug in llmc.
    #[error("{}: internal error while building the graph: {source}", path.display())]
    #[diagnostic(
        code(llmc::model::internal),
        help("this is a bug in llmc: please report it with the model file")
    )]
    Internal { path: PathBuf, source: IrError },
}

impl FrontendError {
    pub fn bad(path: &Path, msg: impl Into<String>) -> FrontendError {
        FrontendError::BadInput {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    pub fn unsupported(path: &Path, msg: impl Into<String>) -> FrontendError {
        FrontendError::Unsupported {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    pub fn io(path: &Path, source: std::io::Error) -> FrontendError {
        FrontendError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn internal(path: &Path, source: IrError) -> FrontendError {
        FrontendError::Internal {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = FrontendError> = std::result::Result<T, E>;

/// What kind of model a graph is, which tells the CLI how to drive it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ModelKind {
    /// A decoder language model. Inputs `tokens` and `positions` (`[batch, seq]` i64), output
    /// `logits` (`[batch, seq, vocab]` f32); the KV cache is the graph's state.
    CausalLm {
        vocab: usize,
        max_context: usize,
        bos: Option<u32>,
        eos: Option<u32>,
    },
    /// A text encoder. Inputs `input_ids`, `attention_mask` (and `token_type_ids` when the
    /// graph takes it), `[batch, seq]` i64; output `last_hidden_state` `[batch, seq, hidden]`.
    Encoder { hidden: usize },
    /// Any other graph: run with named `.npy` inputs.
    Generic,
}

impl ModelKind {
    /// What kind of model this is, for messages: `a language model`, `an encoder`, `a graph`.
    pub fn describe(&self) -> &'static str {
        match self {
            ModelKind::CausalLm { .. } => "a language model",
            ModelKind::Encoder { .. } => "an encoder",
            ModelKind::Generic => "a graph with named inputs and outputs",
        }
    }
}

/// A model read by a frontend.
pub struct Model {
    pub graph: Graph,
    pub kind: ModelKind,
    pub tokenizer: Option<Tokenizer>,
    /// Architecture name as the source calls it (`llama`, `BertModel`, `onnx`).
    pub architecture: String,
    pub path: PathBuf,
}

/// Reads a model, choosing the frontend by the file's magic bytes and name: `.gguf`,
/// `.onnx`, `.safetensors` (with `config.json` beside it), or a directory holding those.
pub fn load(path: &Path) -> Result<Model> {
    let file = if path.is_dir() {
        let st = path.join("model.safetensors");
        if st.is_file() {
            st
        } else {
            return Err(FrontendError::bad(
                path,
                "this directory holds no model.safetensors; pass the model file itself",
            ));
        }
    } else {
        path.to_path_buf()
    };
    let mut magic = [0u8; 8];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(&file).map_err(|e| FrontendError::io(&file, e))?;
        let n = f
            .read(&mut magic)
            .map_err(|e| FrontendError::io(&file, e))?;
        if n < 4 {
            return Err(FrontendError::bad(
                &file,
                format!("the file has only {n} bytes; no model format is that short"),
            ));
        }
    }
    let ext = file
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if &magic[..4] == b"GGUF" {
        return gguf::load(&file);
    }
    match ext.as_str() {
        "gguf" => Err(FrontendError::bad(&file, format!("bad magic {:02x?}: a GGUF file starts with \"GGUF\"", &magic[..4]))),
        "onnx" => onnx::load(&file),
        "safetensors" => safetensors::load(&file),
        _ => Err(FrontendError::unsupported(
            &file,
            "cannot tell the model format: use a .gguf, .onnx or .safetensors file (with config.json beside it)",
        )),
    }
}
