//! safetensors frontend: `model.safetensors` (header checked tensor by tensor, weights left in a
//! shared memory map) with `config.json` beside it, into the Llama or BERT graph.

use super::bert::{build_bert, BertConfig};
use super::llama::{build_llama, LlamaConfig, NameScheme};
use super::{FrontendError, Model, ModelKind, Result};
use crate::tokenizer::Tokenizer;
use llmc_ir::{Bytes, DType, Format, RopeMode, Shape, TensorType, UnaryOp, WeightData};
use memmap2::Mmap;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Headers larger than this are refused (the `safetensors` crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// One tensor of a safetensors file, its extent checked against the file.
#[derive(Clone, Debug)]
pub struct StTensor {
    /// The dtype as the file spells it (`F32`, `BF16`, ...).
    pub dtype: String,
    pub shape: Vec<u64>,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    /// Bytes of data.
    pub size: usize,
}

/// A parsed safetensors file over a memory map of it.
pub struct SafetensorsFile {
    /// The file, for errors.
    pub path: PathBuf,
    /// Tensor entries of the header by name.
    pub tensors: BTreeMap<String, StTensor>,
    /// The header's `__metadata__` strings.
    pub metadata: BTreeMap<String, String>,
    map: Arc<Mmap>,
}

/// Bits per element of every dtype the safetensors format defines.
fn dtype_bits(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" => 64,
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        _ => return None,
    })
}

/// The IR element type of a dtype llmc reads.
fn ir_dtype(dtype: &str) -> Option<DType> {
    Some(match dtype {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "I64" => DType::I64,
        "I32" => DType::I32,
        "I8" => DType::I8,
        "U8" => DType::U8,
        "BOOL" => DType::Bool,
        _ => return None,
    })
}

impl SafetensorsFile {
    /// Maps and parses a file. Nothing is decoded: weights stay in the map.
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        let file = std::fs::File::open(path).map_err(|e| FrontendError::io(path, e))?;
        // SAFETY: the map is read-only; llmc does not modify model files while they are mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| FrontendError::io(path, e))?;
        SafetensorsFile::parse(path, Arc::new(map))
    }

    /// Parses a mapped file; `path` names it in errors.
    pub fn parse(path: &Path, map: Arc<Mmap>) -> Result<SafetensorsFile> {
        let bad = |m: String| FrontendError::bad(path, m);
        let len = map.len() as u64;
        let Some(head) = map.get(..8) else {
            return Err(bad(format!(
                "the file has {len} bytes; a safetensors file starts with an 8-byte header length"
            )));
        };
        let mut n = [0u8; 8];
        n.copy_from_slice(head);
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER || n > len - 8 {
            return Err(bad(format!(
                "the header length {n} exceeds the file's {} remaining bytes (truncated or not safetensors)",
                len - 8
            )));
        }
        let data_start = 8 + n as usize;
        let header = std::str::from_utf8(&map[8..data_start])
            .map_err(|e| bad(format!("the header is not UTF-8: {e}")))?;
        let header: Map<String, Value> = serde_json::from_str(header)
            .map_err(|e| bad(format!("the header is not a JSON object: {e}")))?;
        let data_len = len - n - 8;

        let mut tensors = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (name, info) in &header {
            if name == "__metadata__" {
                let Some(m) = info.as_object() else {
                    return Err(bad("the header's __metadata__ is not an object".into()));
                };
                for (k, v) in m {
                    let v = v
                        .as_str()
                        .ok_or_else(|| bad(format!("__metadata__ entry '{k}' is not a string")))?;
                    metadata.insert(k.clone(), v.to_string());
                }
                continue;
            }
            let t = parse_info(info, data_len).map_err(|e| bad(format!("tensor '{name}': {e}")))?;
            tensors.insert(
                name.clone(),
                StTensor {
                    offset: t.offset + data_start,
                    ..t
                },
            );
        }
        let mut by_offset: Vec<(&String, &StTensor)> =
            tensors.iter().filter(|(_, t)| t.size > 0).collect();
        by_offset.sort_by_key(|(_, t)| t.offset);
        for w in by_offset.windows(2) {
            let ((a, ta), (b, tb)) = (w[0], w[1]);
            if ta.offset + ta.size > tb.offset {
                return Err(bad(format!(
                    "tensor '{b}' overlaps tensor '{a}' in the data section"
                )));
            }
        }
        // The crate's own checks (contiguous data that covers the whole buffer) as the last word.
        if let Err(e) = safetensors::SafeTensors::read_metadata(&map[..]) {
            return Err(bad(format!("not a valid safetensors file: {e}")));
        }
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            tensors,
            metadata,
            map,
        })
    }

    /// Whether the file has a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// A tensor's IR type and lazy data, or `None` when the file has no such tensor.
    pub fn weight(&self, name: &str) -> Result<Option<(TensorType, WeightData)>> {
        let Some(t) = self.tensors.get(name) else {
            return Ok(None);
        };
        let dtype = ir_dtype(&t.dtype).ok_or_else(|| {
            FrontendError::unsupported(
                &self.path,
                format!(
                    "tensor '{name}' has dtype {}; llmc reads F32, F16 and BF16 weights",
                    t.dtype
                ),
            )
        })?;
        let bytes = Bytes::mapped(&self.map, t.offset, t.size).ok_or_else(|| {
            FrontendError::bad(&self.path, format!("tensor '{name}' lies outside the file"))
        })?;
        let ty = TensorType::new(Shape(t.shape.iter().map(|&d| d.into()).collect()), dtype);
        let origin = format!("{}: tensor '{name}'", self.path.display());
        Ok(Some((
            ty,
            WeightData::new(bytes, Format::Canonical, origin),
        )))
    }
}

/// What is wrong with one tensor's header entry (the loader adds the file and tensor name).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HeaderError {
    #[error("the header entry is not an object")]
    NotObject,
    #[error("'dtype' is missing or not a string")]
    NoDType,
    #[error("unknown dtype '{dtype}'")]
    UnknownDType { dtype: String },
    #[error("'shape' is missing")]
    NoShape,
    #[error("'shape' must be a list, got {shape}")]
    ShapeNotList { shape: Value },
    #[error("shape {shape} holds {dim}, not a dimension")]
    BadDim { shape: Value, dim: Value },
    #[error("'data_offsets' is missing or not a list")]
    NoOffsets,
    #[error("'data_offsets' must be [begin, end], got {offsets:?}")]
    OffsetCount { offsets: Vec<Value> },
    #[error("'data_offsets' must be two byte offsets, got {offsets:?}")]
    OffsetType { offsets: Vec<Value> },
    #[error("data offsets [{begin}, {end}] end before they begin")]
    Reversed { begin: u64, end: u64 },
    #[error("data offsets [{begin}, {end}] lie outside the data section of {data_len} bytes")]
    OutsideData { begin: u64, end: u64, data_len: u64 },
    #[error("shape {shape:?} is too large")]
    TooLarge { shape: Vec<u64> },
    #[error("holds {holds} bytes but a {dtype} tensor of shape {shape:?} needs {need}")]
    Size {
        holds: u64,
        dtype: String,
        shape: Vec<u64>,
        need: u64,
    },
}

/// Checks one header entry: dtype, shape and data offsets against the data section's length.
/// The offset returned is relative to the data section.
fn parse_info(info: &Value, data_len: u64) -> std::result::Result<StTensor, HeaderError> {
    let obj = info.as_object().ok_or(HeaderError::NotObject)?;
    let dtype = obj
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or(HeaderError::NoDType)?;
    let bits = dtype_bits(dtype).ok_or_else(|| HeaderError::UnknownDType {
        dtype: dtype.into(),
    })?;
    let shape_v = obj.get("shape").ok_or(HeaderError::NoShape)?;
    let shape: Vec<u64> = shape_v
        .as_array()
        .ok_or_else(|| HeaderError::ShapeNotList {
            shape: shape_v.clone(),
        })?
        .iter()
        .map(|d| {
            d.as_u64().ok_or_else(|| HeaderError::BadDim {
                shape: shape_v.clone(),
                dim: d.clone(),
            })
        })
        .collect::<std::result::Result<_, _>>()?;
    let offs = obj
        .get("data_offsets")
        .and_then(Value::as_array)
        .ok_or(HeaderError::NoOffsets)?;
    let [s, e] = offs.as_slice() else {
        return Err(HeaderError::OffsetCount {
            offsets: offs.clone(),
        });
    };
    let (Some(s), Some(e)) = (s.as_u64(), e.as_u64()) else {
        return Err(HeaderError::OffsetType {
            offsets: offs.clone(),
        });
    };
    if s > e {
        return Err(HeaderError::Reversed { begin: s, end: e });
    }
    if e > data_len {
        return Err(HeaderError::OutsideData {
            begin: s,
            end: e,
            data_len,
        });
    }
    let need = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_mul(bits))
        .map(|b| b.div_ceil(8))
        .ok_or_else(|| HeaderError::TooLarge {
            shape: shape.clone(),
        })?;
    if e - s != need {
        return Err(HeaderError::Size {
            holds: e - s,
            dtype: dtype.into(),
            shape,
            need,
        });
    }
    // both fit in the file, hence in usize
    Ok(StTensor {
        dtype: dtype.to_string(),
        shape,
        offset: s as usize,
        size: (e - s) as usize,
    })
}

/// `config.json` with errors that name it and the field at fault.
struct Config {
    path: PathBuf,
    v: Map<String, Value>,
}

impl Config {
    fn read(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| FrontendError::io(path, e))?;
        let v: Map<String, Value> = serde_json::from_str(&text)
            .map_err(|e| FrontendError::bad(path, format!("not a JSON object: {e}")))?;
        Ok(Config {
            path: path.to_path_buf(),
            v,
        })
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.v.get(key).filter(|v| !v.is_null())
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    FrontendError::bad(
                        &self.path,
                        format!("field '{key}' must be a non-negative integer, got {v}"),
                    )
                }),
        }
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| FrontendError::bad(&self.path, format!("field '{key}' is missing")))
    }

    fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(|f| Some(f as f32)).ok_or_else(|| {
                FrontendError::bad(
                    &self.path,
                    format!("field '{key}' must be a number, got {v}"),
                )
            }),
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| {
                FrontendError::bad(
                    &self.path,
                    format!("field '{key}' must be a string, got {v}"),
                )
            }),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                FrontendError::bad(
                    &self.path,
                    format!("field '{key}' must be true or false, got {v}"),
                )
            }),
        }
    }

    /// A token id given as a number or as a list of numbers (the first is taken).
    fn token_id(&self, key: &str) -> Result<Option<u32>> {
        let v = match self.get(key) {
            None => return Ok(None),
            Some(Value::Array(a)) => match a.first() {
                None => return Ok(None),
                Some(v) => v,
            },
            Some(v) => v,
        };
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                FrontendError::bad(
                    &self.path,
                    format!("field '{key}' must be a token id, got {v}"),
                )
            })
    }

    /// The architecture: the first of `architectures`, else `model_type`.
    fn architecture(&self) -> Result<String> {
        if let Some(a) = self.get("architectures") {
            let first = a.as_array().and_then(|a| a.first()).and_then(Value::as_str);
            return first.map(str::to_string).ok_or_else(|| {
                FrontendError::bad(
                    &self.path,
                    format!("field 'architectures' must be a list of names, got {a}"),
                )
            });
        }
        self.opt_str("model_type")?
            .map(str::to_string)
            .ok_or_else(|| {
                FrontendError::bad(
                    &self.path,
                    "neither 'architectures' nor 'model_type' says what model this is",
                )
            })
    }
}

/// Reads `model.safetensors` with `config.json` (and `tokenizer.json`, when present) beside it.
pub fn load(path: &Path) -> Result<Model> {
    let file = SafetensorsFile::open(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(FrontendError::bad(
            path,
            format!(
                "no config.json beside it ({} is missing); llmc needs the model's configuration",
                config_path.display()
            ),
        ));
    }
    let config = Config::read(&config_path)?;
    let arch = config.architecture()?;
    enum Kind {
        Llama,
        Bert,
    }
    let kind = match arch.as_str() {
        "LlamaForCausalLM" | "llama" => Kind::Llama,
        "BertModel" | "bert" => Kind::Bert,
        other => {
            return Err(FrontendError::unsupported(
                &config_path,
                format!("architecture '{other}' (field 'architectures'); llmc reads LlamaForCausalLM and BertModel safetensors models"),
            ));
        }
    };
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = if tokenizer_path.is_file() {
        Some(
            Tokenizer::from_file(&tokenizer_path)
                .map_err(|e| FrontendError::bad(&tokenizer_path, e.to_string()))?,
        )
    } else {
        None
    };
    let mut source = |name: &str| file.weight(name);
    let (mut graph, kind) = match kind {
        Kind::Llama => {
            let cfg = llama_config(&config, &file)?;
            let graph = build_llama(&cfg, NameScheme::HuggingFace, path, &mut source)?;
            (
                graph,
                ModelKind::CausalLm {
                    vocab: cfg.vocab,
                    max_context: cfg.max_context,
                    bos: cfg.bos,
                    eos: cfg.eos,
                },
            )
        }
        Kind::Bert => {
            let cfg = bert_config(&config)?;
            let prefix = if file.contains("bert.embeddings.word_embeddings.weight") {
                "bert."
            } else {
                ""
            };
            (
                build_bert(&cfg, prefix, path, &mut source)?,
                ModelKind::Encoder { hidden: cfg.hidden },
            )
        }
    };
    graph
        .meta
        .insert("general.source".into(), "safetensors".into());
    Ok(Model {
        graph,
        kind,
        tokenizer,
        architecture: arch,
        path: path.to_path_buf(),
    })
}

/// The Llama hyper-parameters of a Hugging Face `config.json`.
fn llama_config(c: &Config, file: &SafetensorsFile) -> Result<LlamaConfig> {
    let bad = |m: String| FrontendError::bad(&c.path, m);
    if let Some(act) = c.opt_str("hidden_act")? {
        if act != "silu" {
            return Err(FrontendError::unsupported(
                &c.path,
                format!("hidden_act '{act}' in a Llama model; llmc builds SwiGLU (silu)"),
            ));
        }
    }
    if let Some(s) = c.get("rope_scaling") {
        return Err(FrontendError::unsupported(
            &c.path,
            format!("rope_scaling {s}"),
        ));
    }
    if c.opt_bool("mlp_bias")? == Some(true) {
        return Err(FrontendError::unsupported(&c.path, "mlp_bias = true"));
    }
    let hidden = c.usize("hidden_size")?;
    let heads = c.usize("num_attention_heads")?;
    if heads == 0 {
        return Err(bad("field 'num_attention_heads' must be positive".into()));
    }
    let head_dim = match c.opt_usize("head_dim")? {
        Some(d) => d,
        None if hidden % heads == 0 => hidden / heads,
        None => {
            return Err(bad(format!(
                "hidden_size {hidden} is not a multiple of {heads} heads"
            )))
        }
    };
    let tie = c.opt_bool("tie_word_embeddings")?;
    Ok(LlamaConfig {
        layers: c.usize("num_hidden_layers")?,
        hidden,
        heads,
        kv_heads: c.opt_usize("num_key_value_heads")?.unwrap_or(heads),
        head_dim,
        ffn: c.usize("intermediate_size")?,
        vocab: c.usize("vocab_size")?,
        rms_eps: c.opt_f32("rms_norm_eps")?.unwrap_or(1e-6),
        rope_base: c.opt_f32("rope_theta")?.unwrap_or(10000.0),
        // Hugging Face's rotate_half pairs element i with element i + head_dim/2
        rope_mode: RopeMode::Half,
        tied_embeddings: tie.unwrap_or(!file.contains("lm_head.weight")),
        max_context: c.opt_usize("max_position_embeddings")?.unwrap_or(2048),
        bos: c.token_id("bos_token_id")?,
        eos: c.token_id("eos_token_id")?,
    })
}

/// The BERT hyper-parameters of a Hugging Face `config.json`.
fn bert_config(c: &Config) -> Result<BertConfig> {
    if let Some(p) = c.opt_str("position_embedding_type")? {
        if p != "absolute" {
            return Err(FrontendError::unsupported(
                &c.path,
                format!("position_embedding_type '{p}'; llmc builds absolute positions"),
            ));
        }
    }
    let act = c.opt_str("hidden_act")?.unwrap_or("gelu");
    let activation = match act {
        "gelu" => UnaryOp::Gelu,
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => UnaryOp::GeluTanh,
        "relu" => UnaryOp::Relu,
        "silu" | "swish" => UnaryOp::Silu,
        other => {
            return Err(FrontendError::unsupported(
                &c.path,
                format!("hidden_act '{other}'"),
            ))
        }
    };
    Ok(BertConfig {
        layers: c.usize("num_hidden_layers")?,
        hidden: c.usize("hidden_size")?,
        heads: c.usize("num_attention_heads")?,
        intermediate: c.usize("intermediate_size")?,
        vocab: c.usize("vocab_size")?,
        max_positions: c.opt_usize("max_position_embeddings")?.unwrap_or(512),
        type_vocab: c.opt_usize("type_vocab_size")?.unwrap_or(2),
        layer_norm_eps: c.opt_f32("layer_norm_eps")?.unwrap_or(1e-12),
        activation,
    })
}
