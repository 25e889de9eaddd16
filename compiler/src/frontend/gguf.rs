//! GGUF frontend: parses GGUF v2/v3 files from a memory map (header, metadata, tensor infos,
//! data section) with every length and offset checked, and builds the Llama graph with lazy weights.

use super::gguf_tokenizer::tokenizer_from_gguf;
use super::llama::{build_llama, LlamaConfig, NameScheme};
use super::{FrontendError, Model, ModelKind, Result};
use llmc_ir::{Bytes, Format, GgmlType, RopeMode, Shape, TensorType, WeightData};
use memmap2::Mmap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// GGML's largest tensor rank.
const MAX_DIMS: u32 = 4;
/// Arrays nested deeper than this are rejected (GGUF files use one level).
const MAX_ARRAY_DEPTH: u32 = 3;
/// Data alignment when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    /// The GGUF name of the value's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "uint8",
            MetaValue::I8(_) => "int8",
            MetaValue::U16(_) => "uint16",
            MetaValue::I16(_) => "int16",
            MetaValue::U32(_) => "uint32",
            MetaValue::I32(_) => "int32",
            MetaValue::F32(_) => "float32",
            MetaValue::Bool(_) => "bool",
            MetaValue::Str(_) => "string",
            MetaValue::Array(_) => "array",
            MetaValue::U64(_) => "uint64",
            MetaValue::I64(_) => "int64",
            MetaValue::F64(_) => "float64",
        }
    }

    /// The value as a non-negative integer, whatever its integer type.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a number (floats and integers).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            MetaValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The elements of an array value.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor of a GGUF file, its extent checked against the file.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in GGML order: `dims[0]` is the row length (the innermost dimension).
    pub dims: Vec<u64>,
    pub ggml: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Bytes of data.
    pub size: u64,
}

impl TensorInfo {
    /// The IR shape: GGML's dimensions reversed (outermost first).
    pub fn shape(&self) -> Shape {
        Shape(self.dims.iter().rev().map(|&d| d.into()).collect())
    }

    /// The IR type: the shape and the encoding equivalent to the GGML type.
    pub fn ir_type(&self) -> TensorType {
        TensorType {
            shape: self.shape(),
            enc: self.ggml.encoding(),
        }
    }
}

/// A parsed GGUF file: metadata and tensor infos over a shared memory map of the file.
pub struct GgufFile {
    /// The file, for errors.
    pub path: PathBuf,
    /// The GGUF version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, MetaValue)>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// Alignment of tensor data (`general.alignment`, 32 by default).
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    map: Arc<Mmap>,
    meta_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

impl GgufFile {
    /// Maps and parses a file. Nothing is decoded: weights stay in the map.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = std::fs::File::open(path).map_err(|e| FrontendError::io(path, e))?;
        // SAFETY: the map is read-only; llmc does not modify model files while they are mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| FrontendError::io(path, e))?;
        GgufFile::parse(path, Arc::new(map))
    }

    /// Parses a mapped file; `path` names it in errors.
    pub fn parse(path: &Path, map: Arc<Mmap>) -> Result<GgufFile> {
        let mut r = Reader {
            buf: &map[..],
            pos: 0,
            path,
        };
        let magic = r.take(4, || "the magic bytes".into())?;
        if magic != b"GGUF" {
            return Err(FrontendError::bad(
                path,
                format!("bad magic {magic:02x?}: a GGUF file starts with \"GGUF\""),
            ));
        }
        let version = r.u32(|| "the version".into())?;
        if !(2..=3).contains(&version) {
            let hint = if version.swap_bytes() <= 3 {
                " (a big-endian file?)"
            } else {
                ""
            };
            return Err(FrontendError::unsupported(
                path,
                format!("GGUF version {version}{hint}: llmc reads versions 2 and 3"),
            ));
        }
        let n_tensors = r.u64(|| "the tensor count".into())?;
        let n_kv = r.u64(|| "the metadata count".into())?;
        // Every entry takes some bytes: counts beyond what the file can hold are corrupt.
        r.check_count(n_kv, 8 + 4 + 1, "metadata entries")?;
        r.check_count(n_tensors, 8 + 4 + 8 + 4 + 8, "tensor infos")?;

        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut meta_index = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let key = r.string(|| format!("the key of metadata entry {i}"))?;
            let ty = r.u32(|| format!("the type of metadata '{key}'"))?;
            let value = r.value(ty, &key, 0)?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(FrontendError::bad(
                    path,
                    format!("metadata key '{key}' appears twice"),
                ));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(FrontendError::bad(
                        path,
                        format!("metadata 'general.alignment' must be a power of two, got {v:?}"),
                    ));
                }
            },
        };

        struct RawInfo {
            name: String,
            dims: Vec<u64>,
            type_id: u32,
            offset: u64,
        }
        let mut raw = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = r.string(|| format!("the name of tensor {i}"))?;
            let n_dims = r.u32(|| format!("the rank of tensor '{name}'"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(FrontendError::bad(
                    path,
                    format!("tensor '{name}' has {n_dims} dimensions; GGML tensors have 1 to {MAX_DIMS}"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                dims.push(r.u64(|| format!("dimension {d} of tensor '{name}'"))?);
            }
            let type_id = r.u32(|| format!("the type of tensor '{name}'"))?;
            let offset = r.u64(|| format!("the data offset of tensor '{name}'"))?;
            raw.push(RawInfo {
                name,
                dims,
                type_id,
                offset,
            });
        }

        let file_len = map.len() as u64;
        let data_offset = align_up(r.pos as u64, alignment)
            .ok_or_else(|| FrontendError::bad(path, "the data section's offset overflows"))?;
        let data_len = file_len.checked_sub(data_offset);
        let mut tensors = Vec::with_capacity(raw.len());
        let mut tensor_index = HashMap::with_capacity(raw.len());
        for t in raw {
            let name = &t.name;
            let Some(ggml) = GgmlType::from_id(t.type_id) else {
                return Err(FrontendError::unsupported(
                    path,
                    format!(
                        "tensor '{name}' has GGML type {} (id {}); llmc reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K",
                        GgmlType::id_name(t.type_id),
                        t.type_id
                    ),
                ));
            };
            let shape: Vec<String> = t.dims.iter().map(|d| d.to_string()).collect();
            let shape = shape.join("x");
            let numel = t
                .dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| {
                    FrontendError::bad(
                        path,
                        format!("tensor '{name}' has dimensions {shape} whose product overflows"),
                    )
                })?;
            let block = ggml.block_len() as u64;
            if t.dims[0] % block != 0 {
                return Err(FrontendError::bad(
                    path,
                    format!(
                        "tensor '{name}' ({ggml:?}) has rows of {} elements, not a multiple of its block of {block}",
                        t.dims[0]
                    ),
                ));
            }
            let size = (numel / block)
                .checked_mul(ggml.block_bytes() as u64)
                .ok_or_else(|| {
                    FrontendError::bad(path, format!("tensor '{name}' is too large ({shape})"))
                })?;
            if t.offset % alignment != 0 {
                return Err(FrontendError::bad(
                    path,
                    format!("tensor '{name}' has data offset {} that is not a multiple of the alignment {alignment}", t.offset),
                ));
            }
            let end = t.offset.checked_add(size);
            match (data_len, end) {
                (Some(avail), Some(end)) if end <= avail => {}
                _ => {
                    return Err(FrontendError::bad(
                        path,
                        format!(
                            "tensor '{name}' ({ggml:?}, {shape}) needs {size} bytes at data offset {} but the data section holds {} bytes (is the file truncated?)",
                            t.offset,
                            data_len.unwrap_or(0)
                        ),
                    ));
                }
            }
            if tensor_index.insert(t.name.clone(), tensors.len()).is_some() {
                return Err(FrontendError::bad(
                    path,
                    format!("tensor '{name}' appears twice"),
                ));
            }
            // data_offset + offset + size <= file_len was checked above
            tensors.push(TensorInfo {
                name: t.name,
                dims: t.dims,
                ggml,
                offset: data_offset + t.offset,
                size,
            });
        }
        let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
        by_offset.sort_by_key(|t| t.offset);
        for w in by_offset.windows(2) {
            if w[0].offset + w[0].size > w[1].offset && w[0].size > 0 && w[1].size > 0 {
                return Err(FrontendError::bad(
                    path,
                    format!(
                        "tensor '{}' overlaps tensor '{}' in the data section",
                        w[1].name, w[0].name
                    ),
                ));
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            map,
            meta_index,
            tensor_index,
        })
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.meta_index
            .get(key)
            .and_then(|&i| self.metadata.get(i))
            .map(|(_, v)| v)
    }

    /// A tensor info by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index
            .get(name)
            .and_then(|&i| self.tensors.get(i))
    }

    /// A tensor's IR type and lazy data (a range of the map in GGML layout).
    pub fn weight(&self, t: &TensorInfo) -> Result<(TensorType, WeightData)> {
        let range = usize::try_from(t.offset)
            .ok()
            .zip(usize::try_from(t.size).ok());
        let bytes = range
            .and_then(|(off, len)| Bytes::mapped(&self.map, off, len))
            .ok_or_else(|| {
                FrontendError::bad(
                    &self.path,
                    format!("tensor '{}' lies outside the file", t.name),
                )
            })?;
        let origin = format!("{}: tensor '{}'", self.path.display(), t.name);
        Ok((
            t.ir_type(),
            WeightData::new(bytes, Format::Ggml(t.ggml), origin),
        ))
    }

    /// A required non-negative integer.
    pub fn req_u64(&self, key: &str) -> Result<u64> {
        self.opt_u64(key)?
            .ok_or_else(|| FrontendError::bad(&self.path, format!("metadata '{key}' is missing")))
    }

    /// An optional non-negative integer; present with another type is an error.
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                FrontendError::bad(
                    &self.path,
                    format!(
                        "metadata '{key}' must be a non-negative integer, got {}",
                        describe(v)
                    ),
                )
            }),
        }
    }

    /// An optional number.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                FrontendError::bad(
                    &self.path,
                    format!("metadata '{key}' must be a number, got {}", describe(v)),
                )
            }),
        }
    }

    /// An optional string.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| {
                FrontendError::bad(
                    &self.path,
                    format!("metadata '{key}' must be a string, got {}", describe(v)),
                )
            }),
        }
    }

    /// The Llama hyper-parameters under the `llama.` keys.
    pub fn llama_config(&self) -> Result<LlamaConfig> {
        let path = &self.path;
        let arch = "llama";
        let key = |k: &str| format!("{arch}.{k}");
        let size = |k: &str, v: u64| -> Result<usize> {
            usize::try_from(v).map_err(|_| {
                FrontendError::bad(path, format!("metadata '{}' = {v} is too large", key(k)))
            })
        };
        let layers = size("block_count", self.req_u64(&key("block_count"))?)?;
        let hidden = size("embedding_length", self.req_u64(&key("embedding_length"))?)?;
        let ffn = size(
            "feed_forward_length",
            self.req_u64(&key("feed_forward_length"))?,
        )?;
        let heads = size(
            "attention.head_count",
            self.req_u64(&key("attention.head_count"))?,
        )?;
        let kv_heads = match self.opt_u64(&key("attention.head_count_kv"))? {
            Some(v) => size("attention.head_count_kv", v)?,
            None => heads,
        };
        if heads == 0 {
            return Err(FrontendError::bad(
                path,
                format!(
                    "metadata '{}' must be positive",
                    key("attention.head_count")
                ),
            ));
        }
        let head_dim = match self.opt_u64(&key("attention.key_length"))? {
            Some(v) => size("attention.key_length", v)?,
            None => {
                if hidden % heads != 0 {
                    return Err(FrontendError::bad(
                        path,
                        format!("embedding length {hidden} is not a multiple of {heads} heads"),
                    ));
                }
                hidden / heads
            }
        };
        if let Some(v) = self.opt_u64(&key("attention.value_length"))? {
            if v as usize != head_dim {
                return Err(FrontendError::unsupported(
                    path,
                    format!("value heads of {v} differ from key heads of {head_dim}"),
                ));
            }
        }
        if let Some(rd) = self.opt_u64(&key("rope.dimension_count"))? {
            if rd as usize != head_dim {
                return Err(FrontendError::unsupported(
                    path,
                    format!(
                        "RoPE over {rd} of {head_dim} head dimensions ('{}')",
                        key("rope.dimension_count")
                    ),
                ));
            }
        }
        match self.opt_str(&key("rope.scaling.type"))? {
            None | Some("none") => {}
            Some(s) => {
                return Err(FrontendError::unsupported(
                    path,
                    format!("RoPE scaling '{s}' ('{}')", key("rope.scaling.type")),
                ))
            }
        }
        if self.tensor("rope_freqs.weight").is_some() {
            return Err(FrontendError::unsupported(
                path,
                "RoPE frequency factors (tensor 'rope_freqs.weight')",
            ));
        }
        let rms_eps = self
            .opt_f64(&key("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-5) as f32;
        let rope_base = self.opt_f64(&key("rope.freq_base"))?.unwrap_or(10000.0) as f32;
        let max_context = match self.opt_u64(&key("context_length"))? {
            Some(v) => size("context_length", v)?,
            None => 2048,
        };
        let vocab = match self.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
            Some(toks) => toks.len(),
            None => match self.opt_u64(&key("vocab_size"))? {
                Some(v) => size("vocab_size", v)?,
                None => match self.tensor("token_embd.weight") {
                    Some(t) if t.dims.len() == 2 => size("vocab_size", t.dims[1])?,
                    _ => {
                        return Err(FrontendError::bad(
                            path,
                            "cannot tell the vocabulary size: no token list, 'llama.vocab_size' or embedding",
                        ))
                    }
                },
            },
        };
        let token_id = |k: &str| -> Result<Option<u32>> {
            match self.opt_u64(k)? {
                None => Ok(None),
                Some(v) => u32::try_from(v)
                    .ok()
                    .filter(|&id| (id as usize) < vocab)
                    .map(Some)
                    .ok_or_else(|| {
                        FrontendError::bad(
                            path,
                            format!(
                                "metadata '{k}' = {v} is not a token id (vocabulary of {vocab})"
                            ),
                        )
                    }),
            }
        };
        Ok(LlamaConfig {
            layers,
            hidden,
            heads,
            kv_heads,
            head_dim,
            ffn,
            vocab,
            rms_eps,
            rope_base,
            // llama.cpp's converter permutes q and k so that adjacent pairs rotate together
            rope_mode: RopeMode::Interleaved,
            tied_embeddings: self.tensor("output.weight").is_none(),
            max_context,
            bos: token_id("tokenizer.ggml.bos_token_id")?,
            eos: token_id("tokenizer.ggml.eos_token_id")?,
        })
    }
}

/// A short description of a value for errors.
fn describe(v: &MetaValue) -> String {
    match v {
        MetaValue::Str(s) => format!("the string {s:?}"),
        MetaValue::Array(a) => format!("an array of {} elements", a.len()),
        other => format!("{other:?} ({})", other.type_name()),
    }
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    Some(x.checked_add(a - 1)? / a * a)
}

/// A bounds-checked little-endian cursor; errors say what was being read and where.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(FrontendError::bad(
                self.path,
                format!(
                    "truncated: {} needs {n} bytes at offset {} but the file ends at {}",
                    what(),
                    self.pos,
                    self.buf.len()
                ),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: impl FnOnce() -> String) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Rejects a count of entries of at least `min_size` bytes each that cannot fit in the rest of the file.
    fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<()> {
        if count
            .checked_mul(min_size)
            .is_none_or(|n| n > self.remaining())
        {
            return Err(FrontendError::bad(
                self.path,
                format!(
                    "the header claims {count} {what} but only {} bytes follow it",
                    self.remaining()
                ),
            ));
        }
        Ok(())
    }

    fn string(&mut self, what: impl Fn() -> String) -> Result<String> {
        let len = self.u64(|| format!("the length of {}", what()))?;
        let bytes = self.take(len, || format!("{} ({len} bytes)", what()))?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| FrontendError::bad(self.path, format!("{} is not UTF-8: {e}", what())))
    }

    /// A value of GGUF type `ty` for metadata `key`.
    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<MetaValue> {
        let what = || format!("the value of metadata '{key}'");
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(what)?[0]),
            1 => MetaValue::I8(self.array::<1>(what)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => MetaValue::U32(u32::from_le_bytes(self.array(what)?)),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => {
                    return Err(FrontendError::bad(
                        self.path,
                        format!("metadata '{key}' is a bool of value {b}, not 0 or 1"),
                    ))
                }
            },
            8 => MetaValue::Str(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(FrontendError::bad(
                        self.path,
                        format!("metadata '{key}' nests arrays deeper than {MAX_ARRAY_DEPTH}"),
                    ));
                }
                let elem = self.u32(|| format!("the element type of metadata '{key}'"))?;
                let count = self.u64(|| format!("the length of metadata '{key}'"))?;
                let min_size = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 => 8,
                    9 => 12,
                    10..=12 => 8,
                    t => {
                        return Err(FrontendError::bad(
                            self.path,
                            format!("metadata '{key}' is an array of unknown type {t}"),
                        ))
                    }
                };
                if count
                    .checked_mul(min_size)
                    .is_none_or(|n| n > self.remaining())
                {
                    return Err(FrontendError::bad(
                        self.path,
                        format!(
                            "metadata '{key}' claims {count} elements but only {} bytes remain in the file",
                            self.remaining()
                        ),
                    ));
                }
                let mut items = Vec::with_capacity(count as usize);
                for i in 0..count {
                    let v = match elem {
                        8 => MetaValue::Str(
                            self.string(|| format!("element {i} of metadata '{key}'"))?,
                        ),
                        _ => self.value(elem, key, depth + 1)?,
                    };
                    items.push(v);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(u64::from_le_bytes(self.array(what)?)),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            t => {
                return Err(FrontendError::bad(
                    self.path,
                    format!("metadata '{key}' has unknown value type {t}"),
                ))
            }
        })
    }
}

/// Reads a GGUF model: a Llama decoder with its tokenizer.
pub fn load(path: &Path) -> Result<Model> {
    let file = GgufFile::open(path)?;
    let arch = file
        .opt_str("general.architecture")?
        .ok_or_else(|| FrontendError::bad(path, "metadata 'general.architecture' is missing"))?
        .to_string();
    if arch != "llama" {
        return Err(FrontendError::unsupported(
            path,
            format!("architecture '{arch}' (general.architecture); llmc reads GGUF llama models"),
        ));
    }
    let cfg = file.llama_config()?;
    let mut source = |name: &str| -> Result<Option<(TensorType, WeightData)>> {
        match file.tensor(name) {
            None => Ok(None),
            Some(t) => file.weight(t).map(Some),
        }
    };
    let mut graph = build_llama(&cfg, NameScheme::Gguf, path, &mut source)?;
    graph
        .meta
        .insert("general.source".into(), format!("gguf v{}", file.version));
    for key in [
        "general.name",
        "general.quantization_version",
        "general.file_type",
    ] {
        if let Some(v) = file.get(key) {
            let s = match v {
                MetaValue::Str(s) => s.clone(),
                other => other.as_f64().map(|f| f.to_string()).unwrap_or_default(),
            };
            graph.meta.insert(key.into(), s);
        }
    }
    let tokenizer = tokenizer_from_gguf(&file)?;
    if let Some(t) = &tokenizer {
        if t.vocab_size() > cfg.vocab {
            return Err(FrontendError::bad(
                path,
                format!(
                    "the tokenizer has {} tokens but the model's vocabulary has {}",
                    t.vocab_size(),
                    cfg.vocab
                ),
            ));
        }
    }
    Ok(Model {
        graph,
        kind: ModelKind::CausalLm {
            vocab: cfg.vocab,
            max_context: cfg.max_context,
            bos: cfg.bos,
            eos: cfg.eos,
        },
        tokenizer,
        architecture: arch,
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little GGUF writer: metadata entries and tensors, laid out as llama.cpp does.
    #[derive(Default)]
    struct Writer {
        kv: Vec<u8>,
        n_kv: u64,
        infos: Vec<u8>,
        data: Vec<u8>,
        n_tensors: u64,
    }

    fn gguf_str(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    impl Writer {
        fn kv(&mut self, key: &str, ty: u32, value: &[u8]) -> &mut Self {
            gguf_str(&mut self.kv, key);
            self.kv.extend(ty.to_le_bytes());
            self.kv.extend(value);
            self.n_kv += 1;
            self
        }

        fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, bytes: &[u8]) -> &mut Self {
            while self.data.len() % 32 != 0 {
                self.data.push(0);
            }
            gguf_str(&mut self.infos, name);
            self.infos.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| self.infos.extend(d.to_le_bytes()));
            self.infos.extend(ty.to_le_bytes());
            self.infos.extend((self.data.len() as u64).to_le_bytes());
            self.data.extend(bytes);
            self.n_tensors += 1;
            self
        }

        fn write(&self, name: &str, version: u32) -> PathBuf {
            let mut b = b"GGUF".to_vec();
            b.extend(version.to_le_bytes());
            b.extend(self.n_tensors.to_le_bytes());
            b.extend(self.n_kv.to_le_bytes());
            b.extend(&self.kv);
            b.extend(&self.infos);
            while b.len() % 32 != 0 {
                b.push(0);
            }
            b.extend(&self.data);
            let p = std::env::temp_dir()
                .join(format!("llmc-gguf-unit-{}-{name}.gguf", std::process::id()));
            std::fs::write(&p, b).expect("write a test GGUF");
            p
        }
    }

    #[test]
    fn every_value_type_and_tensor_reads_back() {
        let mut arr = 5u32.to_le_bytes().to_vec(); // array of int32
        arr.extend(3u64.to_le_bytes());
        [-1i32, 0, 7]
            .iter()
            .for_each(|v| arr.extend(v.to_le_bytes()));
        let mut strs = 8u32.to_le_bytes().to_vec(); // array of strings
        strs.extend(2u64.to_le_bytes());
        gguf_str(&mut strs, "a b");
        gguf_str(&mut strs, "ü");
        let mut nested = 9u32.to_le_bytes().to_vec(); // array of arrays of uint8
        nested.extend(1u64.to_le_bytes());
        nested.extend(0u32.to_le_bytes());
        nested.extend(2u64.to_le_bytes());
        nested.extend([4u8, 5]);
        let mut s = vec![];
        gguf_str(&mut s, "llama");
        let q8: Vec<u8> = half::f16::from_f32(0.5)
            .to_le_bytes()
            .into_iter()
            .chain((0..32).map(|i| (i as i8 - 16) as u8))
            .collect();
        let f32s: Vec<u8> = (0..64).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let path = Writer::default()
            .kv("u8", 0, &[200])
            .kv("i8", 1, &[0xff])
            .kv("u16", 2, &60000u16.to_le_bytes())
            .kv("i16", 3, &(-3i16).to_le_bytes())
            .kv("u32", 4, &7u32.to_le_bytes())
            .kv("i32", 5, &(-7i32).to_le_bytes())
            .kv("f32", 6, &1.5f32.to_le_bytes())
            .kv("bool", 7, &[1])
            .kv("general.architecture", 8, &s)
            .kv("ints", 9, &arr)
            .kv("u64", 10, &(1u64 << 40).to_le_bytes())
            .kv("i64", 11, &(-5i64).to_le_bytes())
            .kv("f64", 12, &2.25f64.to_le_bytes())
            .kv("strings", 9, &strs)
            .kv("nested", 9, &nested)
            .tensor("w", &[32, 2], 0, &f32s)
            .tensor("q", &[32], 8, &q8)
            .write("all-types", 2);
        let f = GgufFile::open(&path).expect("parses");
        let _ = std::fs::remove_file(&path);
        assert_eq!(f.version, 2);
        assert_eq!(f.get("u8"), Some(&MetaValue::U8(200)));
        assert_eq!(f.get("i8"), Some(&MetaValue::I8(-1)));
        assert_eq!(f.get("u16").and_then(MetaValue::as_u64), Some(60000));
        assert_eq!(f.get("i16"), Some(&MetaValue::I16(-3)));
        assert_eq!(f.get("i16").and_then(MetaValue::as_u64), None);
        assert_eq!(f.req_u64("u32").unwrap(), 7);
        assert_eq!(f.get("i32").and_then(MetaValue::as_f64), Some(-7.0));
        assert_eq!(f.opt_f64("f32").unwrap(), Some(1.5));
        assert_eq!(f.get("bool").and_then(MetaValue::as_bool), Some(true));
        assert_eq!(f.opt_str("general.architecture").unwrap(), Some("llama"));
        assert_eq!(
            f.get("ints"),
            Some(&MetaValue::Array(vec![
                MetaValue::I32(-1),
                MetaValue::I32(0),
                MetaValue::I32(7)
            ]))
        );
        assert_eq!(f.opt_u64("u64").unwrap(), Some(1 << 40));
        assert_eq!(f.get("i64"), Some(&MetaValue::I64(-5)));
        assert_eq!(f.get("f64").and_then(MetaValue::as_f64), Some(2.25));
        let strings = f.get("strings").and_then(MetaValue::as_array).unwrap();
        assert_eq!(
            strings
                .iter()
                .filter_map(MetaValue::as_str)
                .collect::<Vec<_>>(),
            ["a b", "ü"]
        );
        assert_eq!(
            f.get("nested"),
            Some(&MetaValue::Array(vec![MetaValue::Array(vec![
                MetaValue::U8(4),
                MetaValue::U8(5)
            ])]))
        );
        let err = f.req_u64("f64").unwrap_err().to_string();
        assert!(
            err.contains("metadata 'f64' must be a non-negative integer"),
            "{err}"
        );

        let w = f.tensor("w").unwrap();
        assert_eq!(w.shape(), Shape::fixed(&[2, 32]));
        let (ty, data) = f.weight(w).unwrap();
        let t = data.decode_f32(&ty).unwrap();
        assert_eq!(t.shape, vec![2, 32]);
        assert_eq!(t.as_f32().unwrap()[33], 33.0);
        let (ty, data) = f.weight(f.tensor("q").unwrap()).unwrap();
        assert_eq!(ty.to_string(), "tensor<32x!q8<g32,f16,sym>>");
        assert_eq!(
            data.decode_f32(&ty).unwrap().as_f32().unwrap()[..3],
            [-8.0, -7.5, -7.0]
        );
    }

    #[test]
    fn bad_alignment_and_duplicates_are_named() {
        let path = Writer::default()
            .kv("general.alignment", 4, &3u32.to_le_bytes())
            .write("align", 3);
        let err = GgufFile::open(&path).err().expect("an error").to_string();
        let _ = std::fs::remove_file(&path);
        assert!(
            err.contains("general.alignment") && err.contains("power of two"),
            "{err}"
        );

        let path = Writer::default()
            .kv("k", 0, &[1])
            .kv("k", 0, &[2])
            .write("dup-key", 3);
        let err = GgufFile::open(&path).err().expect("an error").to_string();
        let _ = std::fs::remove_file(&path);
        assert!(err.contains("metadata key 'k' appears twice"), "{err}");

        let f32s: Vec<u8> = (0..32).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let path = Writer::default()
            .tensor("t", &[32], 0, &f32s)
            .tensor("t", &[32], 0, &f32s)
            .write("dup-tensor", 3);
        let err = GgufFile::open(&path).err().expect("an error").to_string();
        let _ = std::fs::remove_file(&path);
        assert!(err.contains("tensor 't' appears twice"), "{err}");

        let path = Writer::default().kv("b", 7, &[2]).write("bool", 3);
        let err = GgufFile::open(&path).err().expect("an error").to_string();
        let _ = std::fs::remove_file(&path);
        assert!(err.contains("metadata 'b' is a bool of value 2"), "{err}");

        let q4: Vec<u8> = vec![0; 20];
        let path = Writer::default()
            .tensor("odd", &[16, 2], 3, &q4)
            .write("block", 3);
        let err = GgufFile::open(&path).err().expect("an error").to_string();
        let _ = std::fs::remove_file(&path);
        assert!(
            err.contains("tensor 'odd'") && err.contains("block of 32"),
            "{err}"
        );
    }
}
