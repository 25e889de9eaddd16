//! The BERT encoder graph (embeddings, post-norm self-attention blocks with biases, GELU
//! feed-forward), built from a configuration and a source of weights named as Hugging Face does.

use super::llama::{Builder, ConfigError, WeightSource};
use super::{FrontendError, Result};
use llmc_ir::{BinaryOp, DType, Dim, Graph, Op, Shape, Tensor, TensorType, UnaryOp, ValueId};
use std::path::Path;

/// What padded key positions get added to their attention scores (BERT's original choice;
/// representable in f16).
pub const MASKED_SCORE: f32 = -10000.0;

/// Hyper-parameters of a BERT encoder.
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    /// Width of the feed-forward block.
    pub intermediate: usize,
    pub vocab: usize,
    /// Rows of the position embedding: the longest input.
    pub max_positions: usize,
    /// Rows of the token type (segment) embedding.
    pub type_vocab: usize,
    pub layer_norm_eps: f32,
    /// The feed-forward activation: `Gelu` (exact), `GeluTanh`, `Relu` or `Silu`.
    pub activation: UnaryOp,
}

impl BertConfig {
    /// Checks that the sizes fit together; the error names the field at fault.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        let fields = [
            ("num_hidden_layers", self.layers, 4096),
            ("hidden_size", self.hidden, 1 << 17),
            ("num_attention_heads", self.heads, 4096),
            ("intermediate_size", self.intermediate, 1 << 20),
            ("vocab_size", self.vocab, 1 << 24),
            ("max_position_embeddings", self.max_positions, 1 << 24),
            ("type_vocab_size", self.type_vocab, 1 << 16),
        ];
        for (field, value, max) in fields {
            if value == 0 || value > max {
                return Err(ConfigError::OutOfRange { field, value, max });
            }
        }
        if self.hidden % self.heads != 0 {
            return Err(ConfigError::HiddenHeads {
                hidden: self.hidden,
                heads: self.heads,
            });
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps >= 0.0) {
            return Err(ConfigError::Number {
                field: "layer_norm_eps",
                value: self.layer_norm_eps,
                expected: "a non-negative number",
            });
        }
        Ok(())
    }
}

/// Builds the encoder graph.
///
/// Inputs `input_ids`, `attention_mask` and `token_type_ids` (`{batch}x{seq}` i64, the mask 1 for
/// real tokens and 0 for padding); output `last_hidden_state` (`{batch}x{seq}x{hidden}` f32; the
/// sequence dimension prints as `?` because positions are computed with `range`). Tensor names
/// are Hugging Face's, each prefixed with `prefix` (`""` or `"bert."`). Every tensor's shape is
/// checked against `cfg`; a missing or misshapen one is a [`FrontendError::BadInput`] naming it.
pub fn build_bert(
    cfg: &BertConfig,
    prefix: &str,
    path: &Path,
    source: &mut WeightSource<'_>,
) -> Result<Graph> {
    cfg.validate()
        .map_err(|e| FrontendError::bad(path, format!("BERT configuration: {e}")))?;
    let name = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|s| s.to_str())
        .unwrap_or("encoder");
    let mut b = Builder {
        g: Graph::new(name),
        path,
        source,
    };
    let meta = [
        ("general.architecture", "bert".to_string()),
        ("bert.block_count", cfg.layers.to_string()),
        ("bert.embedding_length", cfg.hidden.to_string()),
        ("bert.attention.head_count", cfg.heads.to_string()),
        ("bert.feed_forward_length", cfg.intermediate.to_string()),
        ("bert.vocab_size", cfg.vocab.to_string()),
        ("bert.context_length", cfg.max_positions.to_string()),
        (
            "bert.attention.layer_norm_epsilon",
            format!("{:?}", cfg.layer_norm_eps),
        ),
        ("bert.activation", cfg.activation.name().to_string()),
    ];
    for (k, v) in meta {
        b.g.meta.insert(k.into(), v);
    }
    let (h, nh) = (cfg.hidden, cfg.heads);
    let hd = h / nh;
    let ids_ty = TensorType::new(Shape(vec![Dim::sym("batch"), Dim::sym("seq")]), DType::I64);
    let input_ids = b.g.add_input("input_ids", ids_ty.clone());
    let attention_mask = b.g.add_input("attention_mask", ids_ty.clone());
    let token_type_ids = b.g.add_input("token_type_ids", ids_ty);
    let p = |s: &str| format!("{prefix}{s}");

    // embeddings: word + position (0..seq) + token type, then layer norm
    let words = b.weight(&p("embeddings.word_embeddings.weight"), &[cfg.vocab, h])?;
    let positions = b.weight(
        &p("embeddings.position_embeddings.weight"),
        &[cfg.max_positions, h],
    )?;
    let types = b.weight(
        &p("embeddings.token_type_embeddings.weight"),
        &[cfg.type_vocab, h],
    )?;
    let x = b.embed(words, input_ids)?;
    let t = b.embed(types, token_type_ids)?;
    let x = b.op(Op::Binary(BinaryOp::Add), &[x, t])?;
    let seq_len = b.op(
        Op::Shape {
            start: 1,
            end: Some(2),
        },
        &[input_ids],
    )?;
    let seq_len = b.op(
        Op::Reshape {
            shape: Some(vec![]),
        },
        &[seq_len],
    )?;
    let zero = b.g.constant(Tensor::scalar_i64(0));
    let one = b.g.constant(Tensor::scalar_i64(1));
    let pos_ids = b.op(Op::Range, &[zero, seq_len, one])?;
    let pos = b.embed(positions, pos_ids)?;
    let x = b.op(Op::Binary(BinaryOp::Add), &[x, pos])?;
    let mut x = layer_norm(&mut b, x, &p("embeddings.LayerNorm"), h, cfg.layer_norm_eps)?;

    // additive mask [batch, 1, 1, seq]: 0 where attention_mask is 1, MASKED_SCORE where it is 0
    let m = b.op(Op::Cast { to: DType::F32 }, &[attention_mask])?;
    let one_f = b.g.constant(Tensor::scalar_f32(1.0));
    let m = b.op(Op::Binary(BinaryOp::Sub), &[one_f, m])?;
    let big = b.g.constant(Tensor::scalar_f32(MASKED_SCORE));
    let m = b.op(Op::Binary(BinaryOp::Mul), &[m, big])?;
    let mask = b.op(Op::Unsqueeze { axes: vec![1, 2] }, &[m])?;

    let heads = Op::Reshape {
        shape: Some(vec![0, 0, nh as i64, hd as i64]),
    };
    let to_heads = Op::Transpose {
        perm: vec![0, 2, 1, 3],
    };
    let scale = 1.0 / (hd as f32).sqrt();
    for l in 0..cfg.layers {
        let lp = |s: &str| p(&format!("encoder.layer.{l}.{s}"));
        let mut qkv = Vec::with_capacity(3);
        for which in ["query", "key", "value"] {
            let y = b.linear(
                x,
                &lp(&format!("attention.self.{which}.weight")),
                &lp(&format!("attention.self.{which}.bias")),
                h,
                h,
            )?;
            let y = b.op(heads.clone(), &[y])?;
            qkv.push(b.op(to_heads.clone(), &[y])?);
        }
        let (q, k, v) = (qkv[0], qkv[1], qkv[2]);
        let a = b.op(
            Op::Attention {
                causal: false,
                scale,
            },
            &[q, k, v, mask],
        )?;
        let a = b.op(to_heads.clone(), &[a])?;
        let a = b.op(
            Op::Reshape {
                shape: Some(vec![0, 0, h as i64]),
            },
            &[a],
        )?;
        let a = b.linear(
            a,
            &lp("attention.output.dense.weight"),
            &lp("attention.output.dense.bias"),
            h,
            h,
        )?;
        let a = b.op(Op::Binary(BinaryOp::Add), &[a, x])?;
        let a = layer_norm(
            &mut b,
            a,
            &lp("attention.output.LayerNorm"),
            h,
            cfg.layer_norm_eps,
        )?;

        let f = b.linear(
            a,
            &lp("intermediate.dense.weight"),
            &lp("intermediate.dense.bias"),
            cfg.intermediate,
            h,
        )?;
        let f = b.op(Op::Unary(cfg.activation), &[f])?;
        let f = b.linear(
            f,
            &lp("output.dense.weight"),
            &lp("output.dense.bias"),
            h,
            cfg.intermediate,
        )?;
        let f = b.op(Op::Binary(BinaryOp::Add), &[f, a])?;
        x = layer_norm(&mut b, f, &lp("output.LayerNorm"), h, cfg.layer_norm_eps)?;
    }
    b.g.set_output("last_hidden_state", x);
    llmc_ir::verify(&b.g).map_err(|e| FrontendError::internal(path, e))?;
    Ok(b.g)
}

/// Layer norm over the last dimension with the module's scale and bias (`weight`/`bias`, or
/// the older `gamma`/`beta`).
fn layer_norm(b: &mut Builder, x: ValueId, module: &str, h: usize, eps: f32) -> Result<ValueId> {
    let mut param = |new: &str, old: &str| -> Result<ValueId> {
        match b.optional_weight(&format!("{module}.{new}"), &[h])? {
            Some(w) => Ok(w),
            None => b
                .optional_weight(&format!("{module}.{old}"), &[h])?
                .ok_or_else(|| {
                    FrontendError::bad(b.path, format!("tensor '{module}.{new}' is missing"))
                }),
        }
    };
    let scale = param("weight", "gamma")?;
    let bias = param("bias", "beta")?;
    b.op(Op::LayerNorm { axis: -1, eps }, &[x, scale, bias])
}
