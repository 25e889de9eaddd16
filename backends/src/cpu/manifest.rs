//! The backend's part of `manifest.json`: what was compiled for which target, the sizes a
//! host needs (state, arena, weights), the run-time dimensions and the entry points' inputs
//! and outputs. Typed both ways: written by [`super::compile`], read back by the tools that
//! open a bundle.

use super::size::Size;
use serde::{Deserialize, Serialize};

/// The manifest format this llmc writes and reads. 2: inputs' and outputs' dimensions are
/// numbers or dimension names (format 1 wrote them as one string).
pub const MANIFEST_FORMAT: u32 = 2;

/// The backend's manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The bundle's name: the prefix of its symbols and files.
    pub name: String,
    pub format: u32,
    pub target: TargetInfo,
    pub kind: EntryKind,
    /// Hex of the hash `init` checks the weights file against.
    pub model_hash: String,
    /// Bytes of the state buffer the host allocates (arena and KV cache).
    pub state_bytes: u64,
    pub arena_bytes: u64,
    /// Bytes of the weights file, header included.
    pub weights_bytes: u64,
    /// Bytes saved by storing identical tensors once.
    pub weights_deduplicated_bytes: u64,
    pub weights_embedded: bool,
    /// Tokens the KV cache holds (decoders).
    pub max_context: i64,
    /// Tokens one prefill call may take (decoders).
    pub max_tokens: i64,
    /// Logits per token (decoders).
    pub vocab: Option<i64>,
    /// The run-time dimensions and their maxima, in the order `run` takes them.
    pub dims: Vec<DimMax>,
    /// The entry points' buffers as the generated code lays them out.
    pub inputs: Vec<Buffer>,
    pub outputs: Vec<Buffer>,
    /// Kernel calls of one forward pass.
    pub kernel_calls: usize,
    /// Weights of the graph.
    pub weights: usize,
}

/// The target the code was generated for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetInfo {
    pub triple: String,
    pub cpu: String,
    /// LLVM's feature string.
    pub features: String,
    /// What the kernels use on this target, in words.
    pub kernels: String,
}

/// Which entry points the bundle has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// `prefill`, `decode`, `reset`, `context`.
    Decoder,
    /// `run`.
    Graph,
}

/// A run-time dimension and the largest value the bundle was built for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DimMax {
    pub name: String,
    pub max: i64,
}

/// One input or output buffer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Buffer {
    pub name: String,
    pub dtype: String,
    pub dims: Vec<BufferDim>,
}

/// A buffer dimension: a number, or a run-time dimension by name (an expression in them,
/// `1 + tokens + past`, where the size depends on several; shown for people, never parsed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BufferDim {
    Fixed(i64),
    Named(String),
}

impl BufferDim {
    /// A size over the symbols `names`.
    pub fn of(s: &Size, names: &[String]) -> BufferDim {
        if let Some(c) = s.as_const() {
            return BufferDim::Fixed(c);
        }
        let name = |k: &u8| names.get(*k as usize).cloned().unwrap_or(format!("s{k}"));
        let terms: Vec<String> = s
            .terms()
            .map(|(syms, c)| {
                let product: Vec<String> = syms.iter().map(name).collect();
                match (syms.is_empty(), *c) {
                    (true, c) => c.to_string(),
                    (false, 1) => product.join("*"),
                    (false, c) => format!("{c}*{}", product.join("*")),
                }
            })
            .collect();
        BufferDim::Named(terms.join(" + "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_dims_name_their_symbols() {
        let names = vec!["tokens".to_string(), "past".to_string()];
        assert_eq!(BufferDim::of(&Size::c(576), &names), BufferDim::Fixed(576));
        assert_eq!(
            BufferDim::of(&Size::sym(0), &names),
            BufferDim::Named("tokens".into())
        );
        let ctx = Size::sym(0).add(&Size::sym(1)).add(&Size::c(1));
        assert_eq!(
            BufferDim::of(&ctx, &names),
            BufferDim::Named("1 + tokens + past".into())
        );
        let json =
            serde_json::to_string(&vec![BufferDim::Fixed(1), BufferDim::Named("seq".into())])
                .unwrap();
        assert_eq!(json, r#"[1,"seq"]"#);
        let back: Vec<BufferDim> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, [BufferDim::Fixed(1), BufferDim::Named("seq".into())]);
    }
}
