//! ONNX tensors (initializers, constants, test data) read into IR tensors and weight bytes:
//! element types, sizes checked before anything is allocated, raw data referenced in the memory
//! map instead of copied, external data files mapped and range-checked.

use super::proto::{data_type as dt, TensorProto};
use crate::frontend::FrontendError;
use llmc_ir::{Bytes, DType, Data, Tensor};
use memmap2::Mmap;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// An ONNX element type llmc does not compute with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("element type {} (code {code}) is not one llmc computes with (f32, f16, bf16, i64, i32, i8, u8, bool)", dt::name(*code))]
pub struct UnsupportedElemType {
    pub code: i32,
}

/// The IR element type of an ONNX data type code; the error names what llmc lacks.
pub fn dtype_of(code: i32) -> Result<DType, UnsupportedElemType> {
    Ok(match code {
        dt::FLOAT => DType::F32,
        dt::FLOAT16 => DType::F16,
        dt::BFLOAT16 => DType::BF16,
        dt::INT64 => DType::I64,
        dt::INT32 => DType::I32,
        dt::INT8 => DType::I8,
        dt::UINT8 => DType::U8,
        dt::BOOL => DType::Bool,
        code => return Err(UnsupportedElemType { code }),
    })
}

/// Where tensor bytes may live: the model's memory map (raw data is referenced there), the
/// model's directory (external data files, mapped once each).
pub struct Source<'a> {
    pub path: &'a Path,
    pub map: Option<&'a Arc<Mmap>>,
    ext: RefCell<HashMap<PathBuf, Arc<Mmap>>>,
}

/// A tensor's element type, shape and bytes (little-endian, row-major).
pub struct Raw {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: Bytes,
}

impl Raw {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The elements in memory.
    pub fn to_tensor(&self) -> Tensor {
        let data = Data::from_le_bytes(self.dtype, self.bytes.as_slice())
            .unwrap_or_else(|| Data::zeros(self.dtype, 0));
        Tensor::new(self.shape.clone(), data)
    }
}

impl<'a> Source<'a> {
    pub fn new(path: &'a Path, map: Option<&'a Arc<Mmap>>) -> Source<'a> {
        Source {
            path,
            map,
            ext: RefCell::new(HashMap::new()),
        }
    }

    fn bad(&self, msg: String) -> FrontendError {
        FrontendError::bad(self.path, msg)
    }

    /// Bytes inside the model's map are referenced, others copied.
    fn bytes_of(&self, b: &bytes::Bytes) -> Bytes {
        if let Some(map) = self.map {
            let base = map.as_ptr() as usize;
            let p = b.as_ptr() as usize;
            if p >= base && p + b.len() <= base + map.len() {
                if let Some(m) = Bytes::mapped(map, p - base, b.len()) {
                    return m;
                }
            }
        }
        Bytes::owned(b.to_vec())
    }

    /// Reads a tensor. `what` names it in errors (`initializer 'w'`, `node 'c' (Constant)`).
    pub fn read(&self, t: &TensorProto, what: &str) -> Result<Raw, FrontendError> {
        let code = t.data_type.unwrap_or(0);
        let dtype = dtype_of(code)
            .map_err(|e| FrontendError::unsupported(self.path, format!("{what}: {e}")))?;
        if t.segment.is_some() {
            return Err(FrontendError::unsupported(self.path, format!("{what} is stored in segments; llmc reads whole tensors only (re-save the model without segments)")));
        }
        let mut shape = Vec::with_capacity(t.dims.len());
        let mut numel: u64 = 1;
        for &d in &t.dims {
            if d < 0 {
                return Err(self.bad(format!(
                    "{what} has a negative dimension {d} in its shape {:?}",
                    t.dims
                )));
            }
            numel = numel.checked_mul(d as u64).ok_or_else(|| {
                self.bad(format!(
                    "{what} has shape {:?}, too many elements to count",
                    t.dims
                ))
            })?;
            shape.push(d as usize);
        }
        let nbytes = numel
            .checked_mul(dtype.size() as u64)
            .filter(|&b| b <= isize::MAX as u64)
            .ok_or_else(|| {
                self.bad(format!(
                    "{what} has shape {:?}, more bytes than memory can hold",
                    t.dims
                ))
            })?;
        let nbytes = nbytes as usize;
        let numel = numel as usize;
        if t.data_location == Some(1) {
            let bytes = self.external(t, what, nbytes)?;
            return Ok(Raw {
                dtype,
                shape,
                bytes,
            });
        }
        if let Some(raw) = &t.raw_data {
            if raw.len() != nbytes {
                return Err(self.bad(format!(
                    "{what} holds {} bytes of raw data but its shape {:?} of {} needs {nbytes}",
                    raw.len(),
                    t.dims,
                    dt::name(code)
                )));
            }
            return Ok(Raw {
                dtype,
                shape,
                bytes: self.bytes_of(raw),
            });
        }
        let count_err = |have: usize, field: &str| {
            self.bad(format!(
                "{what} has {have} values in {field} but its shape {:?} needs {numel}",
                t.dims
            ))
        };
        let data = match dtype {
            DType::F32 => {
                if t.float_data.len() != numel {
                    return Err(count_err(t.float_data.len(), "float_data"));
                }
                Data::F32(t.float_data.clone())
            }
            DType::I64 => {
                if t.int64_data.len() != numel {
                    return Err(count_err(t.int64_data.len(), "int64_data"));
                }
                Data::I64(t.int64_data.clone())
            }
            _ => {
                if t.int32_data.len() != numel {
                    return Err(count_err(t.int32_data.len(), "int32_data"));
                }
                let v = &t.int32_data;
                match dtype {
                    DType::I32 => Data::I32(v.clone()),
                    DType::I8 => Data::I8(v.iter().map(|&x| x as i8).collect()),
                    DType::U8 => Data::U8(v.iter().map(|&x| x as u8).collect()),
                    DType::Bool => Data::Bool(v.iter().map(|&x| x != 0).collect()),
                    // 16-bit floats travel as their bit patterns
                    DType::F16 => {
                        Data::F16(v.iter().map(|&x| half::f16::from_bits(x as u16)).collect())
                    }
                    DType::BF16 => {
                        Data::BF16(v.iter().map(|&x| half::bf16::from_bits(x as u16)).collect())
                    }
                    _ => unreachable!("f32 and i64 handled above"),
                }
            }
        };
        Ok(Raw {
            dtype,
            shape,
            bytes: Bytes::owned(data.to_le_bytes()),
        })
    }

    /// The bytes of a tensor kept in an external file beside the model.
    fn external(&self, t: &TensorProto, what: &str, nbytes: usize) -> Result<Bytes, FrontendError> {
        let mut location = None;
        let mut offset: u64 = 0;
        let mut length: Option<u64> = None;
        for e in &t.external_data {
            let (k, v) = (
                e.key.as_deref().unwrap_or(""),
                e.value.as_deref().unwrap_or(""),
            );
            let num = |v: &str| {
                v.parse::<u64>().map_err(|_| {
                    self.bad(format!("{what}: external data {k} '{v}' is not a number"))
                })
            };
            match k {
                "location" => location = Some(v.to_string()),
                "offset" => offset = num(v)?,
                "length" => length = Some(num(v)?),
                _ => {}
            }
        }
        let location = location.ok_or_else(|| {
            self.bad(format!("{what} is stored externally but names no location"))
        })?;
        let rel = Path::new(&location);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(self.bad(format!(
                "{what}: external data location '{location}' must be a path inside the model's directory"
            )));
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let file = dir.join(rel);
        let map = {
            let mut ext = self.ext.borrow_mut();
            match ext.get(&file) {
                Some(m) => m.clone(),
                None => {
                    let f = std::fs::File::open(&file).map_err(|e| {
                        self.bad(format!("{what}: cannot open its external data file {}: {e} (keep the data file beside the model)", file.display()))
                    })?;
                    // SAFETY: the map is read-only; llmc does not write the file, and a file
                    // changed by another process while mapped is outside what llmc guards against.
                    let m = Arc::new(
                        unsafe { Mmap::map(&f) }.map_err(|e| FrontendError::io(&file, e))?,
                    );
                    ext.insert(file.clone(), m.clone());
                    m
                }
            }
        };
        let len = length.unwrap_or(nbytes as u64);
        if len != nbytes as u64 {
            return Err(self.bad(format!("{what}: external data length {len} does not match the {nbytes} bytes its shape needs")));
        }
        let end = offset.checked_add(len);
        match end {
            Some(end) if end <= map.len() as u64 => {}
            _ => {
                return Err(self.bad(format!(
                    "{what}: external data at offset {offset}, {len} bytes, runs past the end of {} ({} bytes)",
                    file.display(),
                    map.len()
                )))
            }
        }
        Bytes::mapped(&map, offset as usize, len as usize)
            .ok_or_else(|| self.bad(format!("{what}: external data range does not fit the file")))
    }
}
