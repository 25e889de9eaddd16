//! The Llama decoder graph (RMSNorm, RoPE, grouped-query attention with a KV cache, SwiGLU),
//! built from a configuration and a source of weights; shared by the GGUF and safetensors frontends.

use super::{FrontendError, Result};
use llmc_ir::{
    BinaryOp, DType, Dim, Graph, Op, RopeMode, Shape, TensorType, UnaryOp, ValueId, WeightData,
};
use std::path::Path;

/// Hyper-parameters of a Llama-architecture decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Number of decoder blocks.
    pub layers: usize,
    /// Model width (embedding length).
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (`heads` is a multiple of it).
    pub kv_heads: usize,
    /// Size of one attention head.
    pub head_dim: usize,
    /// Width of the feed-forward block.
    pub ffn: usize,
    /// Vocabulary size (rows of the embedding and of the head).
    pub vocab: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// RoPE frequency base.
    pub rope_base: f32,
    /// Which elements RoPE rotates together: GGUF stores q/k for adjacent pairs, Hugging Face
    /// checkpoints for halves.
    pub rope_mode: RopeMode,
    /// The head reuses the token embedding (no separate output weight).
    pub tied_embeddings: bool,
    /// Longest context the model was trained for.
    pub max_context: usize,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

/// A model configuration whose sizes do not fit together (Llama or BERT); names the field at
/// fault. The frontend adds the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("{field} must be positive")]
    Zero { field: &'static str },
    #[error("{field} = {value} is beyond what llmc accepts ({max})")]
    TooLarge {
        field: &'static str,
        value: usize,
        max: usize,
    },
    #[error("{field} = {value} is outside 1..={max}")]
    OutOfRange {
        field: &'static str,
        value: usize,
        max: usize,
    },
    #[error("{heads} query heads are not a multiple of {kv_heads} key/value heads")]
    KvHeads { heads: usize, kv_heads: usize },
    #[error("hidden_size {hidden} is not a multiple of {heads} heads")]
    HiddenHeads { hidden: usize, heads: usize },
    #[error("head size {head_dim} must be even for RoPE")]
    OddHeadDim { head_dim: usize },
    /// A float field out of its domain (`expected`: a non-negative number, ...).
    #[error("{field} = {value} must be {expected}")]
    Number {
        field: &'static str,
        value: f32,
        expected: &'static str,
    },
}

impl LlamaConfig {
    /// Checks that the sizes fit together; the error names the field at fault.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        let nonzero = [
            ("layers", self.layers),
            ("hidden", self.hidden),
            ("heads", self.heads),
            ("kv_heads", self.kv_heads),
            ("head_dim", self.head_dim),
            ("ffn", self.ffn),
            ("vocab", self.vocab),
        ];
        if let Some(&(field, _)) = nonzero.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Zero { field });
        }
        // Limits far above any real model keep sizes derived from a corrupt file from overflowing.
        let limits = [
            ("layers", self.layers, 4096),
            ("hidden", self.hidden, 1 << 17),
            ("heads", self.heads, 4096),
            ("ffn", self.ffn, 1 << 20),
            ("vocab", self.vocab, 1 << 24),
            ("head_dim", self.head_dim, 4096),
        ];
        if let Some(&(field, value, max)) = limits.iter().find(|(_, v, max)| v > max) {
            return Err(ConfigError::TooLarge { field, value, max });
        }
        if self.heads % self.kv_heads != 0 {
            return Err(ConfigError::KvHeads {
                heads: self.heads,
                kv_heads: self.kv_heads,
            });
        }
        if self.head_dim % 2 != 0 {
            return Err(ConfigError::OddHeadDim {
                head_dim: self.head_dim,
            });
        }
        if !(self.rms_eps.is_finite() && self.rms_eps >= 0.0) {
            return Err(ConfigError::Number {
                field: "rms_eps",
                value: self.rms_eps,
                expected: "a non-negative number",
            });
        }
        if !(self.rope_base.is_finite() && self.rope_base > 0.0) {
            return Err(ConfigError::Number {
                field: "rope_base",
                value: self.rope_base,
                expected: "a positive number",
            });
        }
        Ok(())
    }

    /// Facts for `Graph::meta`, under GGUF's key names.
    pub fn meta(&self) -> Vec<(String, String)> {
        let mut m = vec![
            ("general.architecture", "llama".to_string()),
            ("llama.block_count", self.layers.to_string()),
            ("llama.embedding_length", self.hidden.to_string()),
            ("llama.attention.head_count", self.heads.to_string()),
            ("llama.attention.head_count_kv", self.kv_heads.to_string()),
            ("llama.attention.key_length", self.head_dim.to_string()),
            ("llama.feed_forward_length", self.ffn.to_string()),
            ("llama.vocab_size", self.vocab.to_string()),
            (
                "llama.attention.layer_norm_rms_epsilon",
                format!("{:?}", self.rms_eps),
            ),
            ("llama.rope.freq_base", format!("{:?}", self.rope_base)),
            (
                "llama.rope.mode",
                match self.rope_mode {
                    RopeMode::Interleaved => "interleaved",
                    RopeMode::Half => "half",
                }
                .to_string(),
            ),
            ("llama.tied_embeddings", self.tied_embeddings.to_string()),
            ("llama.context_length", self.max_context.to_string()),
        ];
        if let Some(b) = self.bos {
            m.push(("tokenizer.ggml.bos_token_id", b.to_string()));
        }
        if let Some(e) = self.eos {
            m.push(("tokenizer.ggml.eos_token_id", e.to_string()));
        }
        m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

/// One tensor of a Llama model, independent of how a file format names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LlamaTensor {
    TokenEmbedding,
    AttnNorm(usize),
    Query(usize),
    Key(usize),
    Value(usize),
    QueryBias(usize),
    KeyBias(usize),
    ValueBias(usize),
    AttnOutput(usize),
    FfnNorm(usize),
    Gate(usize),
    Up(usize),
    Down(usize),
    OutputNorm,
    Output,
}

/// How a file format names the tensors of a Llama model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameScheme {
    /// llama.cpp's names: `token_embd.weight`, `blk.N.attn_q.weight`, ...
    Gguf,
    /// Hugging Face transformers' names: `model.embed_tokens.weight`,
    /// `model.layers.N.self_attn.q_proj.weight`, ...
    HuggingFace,
}

impl NameScheme {
    /// The name of a tensor under this scheme.
    pub fn name(self, t: LlamaTensor) -> String {
        use LlamaTensor as T;
        match self {
            NameScheme::Gguf => match t {
                T::TokenEmbedding => "token_embd.weight".into(),
                T::AttnNorm(l) => format!("blk.{l}.attn_norm.weight"),
                T::Query(l) => format!("blk.{l}.attn_q.weight"),
                T::Key(l) => format!("blk.{l}.attn_k.weight"),
                T::Value(l) => format!("blk.{l}.attn_v.weight"),
                T::QueryBias(l) => format!("blk.{l}.attn_q.bias"),
                T::KeyBias(l) => format!("blk.{l}.attn_k.bias"),
                T::ValueBias(l) => format!("blk.{l}.attn_v.bias"),
                T::AttnOutput(l) => format!("blk.{l}.attn_output.weight"),
                T::FfnNorm(l) => format!("blk.{l}.ffn_norm.weight"),
                T::Gate(l) => format!("blk.{l}.ffn_gate.weight"),
                T::Up(l) => format!("blk.{l}.ffn_up.weight"),
                T::Down(l) => format!("blk.{l}.ffn_down.weight"),
                T::OutputNorm => "output_norm.weight".into(),
                T::Output => "output.weight".into(),
            },
            NameScheme::HuggingFace => match t {
                T::TokenEmbedding => "model.embed_tokens.weight".into(),
                T::AttnNorm(l) => format!("model.layers.{l}.input_layernorm.weight"),
                T::Query(l) => format!("model.layers.{l}.self_attn.q_proj.weight"),
                T::Key(l) => format!("model.layers.{l}.self_attn.k_proj.weight"),
                T::Value(l) => format!("model.layers.{l}.self_attn.v_proj.weight"),
                T::QueryBias(l) => format!("model.layers.{l}.self_attn.q_proj.bias"),
                T::KeyBias(l) => format!("model.layers.{l}.self_attn.k_proj.bias"),
                T::ValueBias(l) => format!("model.layers.{l}.self_attn.v_proj.bias"),
                T::AttnOutput(l) => format!("model.layers.{l}.self_attn.o_proj.weight"),
                T::FfnNorm(l) => format!("model.layers.{l}.post_attention_layernorm.weight"),
                T::Gate(l) => format!("model.layers.{l}.mlp.gate_proj.weight"),
                T::Up(l) => format!("model.layers.{l}.mlp.up_proj.weight"),
                T::Down(l) => format!("model.layers.{l}.mlp.down_proj.weight"),
                T::OutputNorm => "model.norm.weight".into(),
                T::Output => "lm_head.weight".into(),
            },
        }
    }
}

/// A source of weights by name: the tensor's IR type and its (lazy) data, or `None` when the
/// file has no tensor of that name.
pub type WeightSource<'a> = dyn FnMut(&str) -> Result<Option<(TensorType, WeightData)>> + 'a;

/// Builds the decoder graph.
///
/// Inputs `tokens` and `positions` (`{batch}x{seq}` i64); output `logits`
/// (`{batch}x{seq}x{vocab}` f32). Layer `N` keeps its keys and values in the states `k.N` and
/// `v.N` (`{batch}x{kv_heads}x{ctx}x{head_dim}` f32), appended along axis 2 by `cache_concat`;
/// a run with `S` tokens after `T` cached ones sees keys `0..T+S` causally. Weight names are the
/// file's names under `names`; every tensor's shape is checked against `cfg` and a missing or
/// misshapen tensor is a [`FrontendError::BadInput`] naming it. `path` is the model file, for errors.
pub fn build_llama(
    cfg: &LlamaConfig,
    names: NameScheme,
    path: &Path,
    source: &mut WeightSource<'_>,
) -> Result<Graph> {
    cfg.validate()
        .map_err(|e| FrontendError::bad(path, format!("Llama configuration: {e}")))?;
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    let mut b = Builder {
        g: Graph::new(name),
        path,
        source,
    };
    b.g.kind = llmc_ir::ModelKind::Decoder;
    let n = |t: LlamaTensor| names.name(t);
    for (k, v) in cfg.meta() {
        b.g.meta.insert(k, v);
    }
    let (d, hd, nh, nkv) = (cfg.hidden, cfg.head_dim, cfg.heads, cfg.kv_heads);
    let seq = Shape(vec![Dim::sym("batch"), Dim::sym("seq")]);
    let tokens =
        b.g.add_input("tokens", TensorType::new(seq.clone(), DType::I64));
    let positions = b.g.add_input("positions", TensorType::new(seq, DType::I64));

    let embed = b.weight(&n(LlamaTensor::TokenEmbedding), &[cfg.vocab, d])?;
    // f16/bf16 checkpoints: activations and the KV cache are f32
    let mut x = b.embed(embed, tokens)?;
    let norm = |eps: f32| Op::RmsNorm { axis: -1, eps };
    let rope = Op::Rope {
        base: cfg.rope_base,
        mode: cfg.rope_mode,
        dims: None,
    };
    let to_heads = Op::Transpose {
        perm: vec![0, 2, 1, 3],
    };
    let scale = 1.0 / (hd as f32).sqrt();
    for l in 0..cfg.layers {
        let state_ty = TensorType::new(
            Shape(vec![
                Dim::sym("batch"),
                Dim::Fixed(nkv as u64),
                Dim::sym("ctx"),
                Dim::Fixed(hd as u64),
            ]),
            DType::F32,
        );
        let k_state = b.g.add_state(&format!("k.{l}"), state_ty.clone());
        let v_state = b.g.add_state(&format!("v.{l}"), state_ty);

        let w = b.weight(&n(LlamaTensor::AttnNorm(l)), &[d])?;
        let h = b.op(norm(cfg.rms_eps), &[x, w])?;
        let q = b.linear(
            h,
            &n(LlamaTensor::Query(l)),
            &n(LlamaTensor::QueryBias(l)),
            nh * hd,
            d,
        )?;
        let k = b.linear(
            h,
            &n(LlamaTensor::Key(l)),
            &n(LlamaTensor::KeyBias(l)),
            nkv * hd,
            d,
        )?;
        let v = b.linear(
            h,
            &n(LlamaTensor::Value(l)),
            &n(LlamaTensor::ValueBias(l)),
            nkv * hd,
            d,
        )?;
        let q = b.op(
            Op::Reshape {
                shape: Some(vec![0, 0, nh as i64, hd as i64]),
            },
            &[q],
        )?;
        let k = b.op(
            Op::Reshape {
                shape: Some(vec![0, 0, nkv as i64, hd as i64]),
            },
            &[k],
        )?;
        let v = b.op(
            Op::Reshape {
                shape: Some(vec![0, 0, nkv as i64, hd as i64]),
            },
            &[v],
        )?;
        let q = b.op(rope.clone(), &[q, positions])?;
        let k = b.op(rope.clone(), &[k, positions])?;
        let q = b.op(to_heads.clone(), &[q])?;
        let k = b.op(to_heads.clone(), &[k])?;
        let v = b.op(to_heads.clone(), &[v])?;
        let k = b.op(
            Op::CacheConcat {
                state: k_state,
                axis: 2,
            },
            &[k],
        )?;
        let v = b.op(
            Op::CacheConcat {
                state: v_state,
                axis: 2,
            },
            &[v],
        )?;
        let a = b.op(
            Op::Attention {
                causal: true,
                scale,
            },
            &[q, k, v],
        )?;
        let a = b.op(to_heads.clone(), &[a])?;
        let a = b.op(
            Op::Reshape {
                shape: Some(vec![0, 0, (nh * hd) as i64]),
            },
            &[a],
        )?;
        let wo = b.weight(&n(LlamaTensor::AttnOutput(l)), &[d, nh * hd])?;
        let a = b.op(Op::LINEAR, &[a, wo])?;
        x = b.op(Op::Binary(BinaryOp::Add), &[x, a])?;

        let w = b.weight(&n(LlamaTensor::FfnNorm(l)), &[d])?;
        let h = b.op(norm(cfg.rms_eps), &[x, w])?;
        let wg = b.weight(&n(LlamaTensor::Gate(l)), &[cfg.ffn, d])?;
        let wu = b.weight(&n(LlamaTensor::Up(l)), &[cfg.ffn, d])?;
        let wd = b.weight(&n(LlamaTensor::Down(l)), &[d, cfg.ffn])?;
        let gate = b.op(Op::LINEAR, &[h, wg])?;
        let up = b.op(Op::LINEAR, &[h, wu])?;
        let gate = b.op(Op::Unary(UnaryOp::Silu), &[gate])?;
        let f = b.op(Op::Binary(BinaryOp::Mul), &[gate, up])?;
        let f = b.op(Op::LINEAR, &[f, wd])?;
        x = b.op(Op::Binary(BinaryOp::Add), &[x, f])?;
    }
    let w = b.weight(&n(LlamaTensor::OutputNorm), &[d])?;
    x = b.op(norm(cfg.rms_eps), &[x, w])?;
    let head = if cfg.tied_embeddings {
        embed
    } else {
        b.weight(&n(LlamaTensor::Output), &[cfg.vocab, d])?
    };
    let logits = b.op(Op::LINEAR, &[x, head])?;
    b.g.set_output("logits", logits);
    llmc_ir::verify(&b.g).map_err(|e| FrontendError::internal(path, e))?;
    Ok(b.g)
}

/// Graph construction with errors that name the model file, over a source of weights.
pub(super) struct Builder<'a, 's> {
    pub g: Graph,
    pub path: &'a Path,
    pub source: &'a mut WeightSource<'s>,
}

impl Builder<'_, '_> {
    /// Appends a node; a type error here is a bug in the frontend.
    pub fn op(&mut self, op: Op, inputs: &[ValueId]) -> Result<ValueId> {
        self.g
            .add1(op, inputs)
            .map_err(|e| FrontendError::internal(self.path, e))
    }

    /// Declares a tensor the model may lack; its shape must be `shape`.
    pub fn optional_weight(&mut self, name: &str, shape: &[usize]) -> Result<Option<ValueId>> {
        let Some((ty, data)) = (self.source)(name)? else {
            return Ok(None);
        };
        if !ty.dtype().is_float() {
            return Err(FrontendError::bad(
                self.path,
                format!(
                    "tensor '{name}' holds {} values; weights are floats",
                    ty.dtype()
                ),
            ));
        }
        if ty.shape != Shape::fixed(shape) {
            return Err(FrontendError::bad(
                self.path,
                format!(
                    "tensor '{name}' has shape [{}] but this model's configuration needs [{}]",
                    ty.shape,
                    Shape::fixed(shape)
                ),
            ));
        }
        let v = self
            .g
            .add_weight(name, ty, Some(data))
            .map_err(|e| FrontendError::bad(self.path, format!("tensor '{name}': {e}")))?;
        Ok(Some(v))
    }

    /// Declares a tensor the model must have.
    pub fn weight(&mut self, name: &str, shape: &[usize]) -> Result<ValueId> {
        self.optional_weight(name, shape)?
            .ok_or_else(|| FrontendError::bad(self.path, format!("tensor '{name}' is missing")))
    }

    /// `x · wᵀ (+ bias)` for a `[n, k]` weight and a bias the model may lack.
    pub fn linear(
        &mut self,
        x: ValueId,
        w: &str,
        bias: &str,
        n: usize,
        k: usize,
    ) -> Result<ValueId> {
        let w = self.weight(w, &[n, k])?;
        match self.optional_weight(bias, &[n])? {
            Some(b) => self.op(Op::LINEAR, &[x, w, b]),
            None => self.op(Op::LINEAR, &[x, w]),
        }
    }

    /// A row lookup in an embedding table, converted to f32 when the table is f16 or bf16.
    pub fn embed(&mut self, table: ValueId, ids: ValueId) -> Result<ValueId> {
        let x = self.op(Op::Gather { axis: 0 }, &[table, ids])?;
        if self.g.ty(x).dtype() == DType::F32 {
            return Ok(x);
        }
        self.op(Op::Cast { to: DType::F32 }, &[x])
    }
}
