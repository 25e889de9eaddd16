//! Concrete tensors: the values the interpreter computes and constants carry.

use crate::types::DType;
use half::{bf16, f16};

/// Elements of a tensor, one vector per element type.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
}

/// A dense, row-major tensor with a fixed shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Data,
}

macro_rules! each_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            Data::F32($v) => $body,
            Data::F16($v) => $body,
            Data::BF16($v) => $body,
            Data::I64($v) => $body,
            Data::I32($v) => $body,
            Data::I8($v) => $body,
            Data::U8($v) => $body,
            Data::Bool($v) => $body,
        }
    };
}
pub(crate) use each_data;

/// Maps one `Data` to another of the same variant, element by element over an index list.
macro_rules! map_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            Data::F32($v) => Data::F32($body),
            Data::F16($v) => Data::F16($body),
            Data::BF16($v) => Data::BF16($body),
            Data::I64($v) => Data::I64($body),
            Data::I32($v) => Data::I32($body),
            Data::I8($v) => Data::I8($body),
            Data::U8($v) => Data::U8($body),
            Data::Bool($v) => Data::Bool($body),
        }
    };
}

impl Data {
    pub fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::F16(_) => DType::F16,
            Data::BF16(_) => DType::BF16,
            Data::I64(_) => DType::I64,
            Data::I32(_) => DType::I32,
            Data::I8(_) => DType::I8,
            Data::U8(_) => DType::U8,
            Data::Bool(_) => DType::Bool,
        }
    }

    pub fn len(&self) -> usize {
        each_data!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Zero-filled data of a type.
    pub fn zeros(dtype: DType, n: usize) -> Data {
        match dtype {
            DType::F32 => Data::F32(vec![0.0; n]),
            DType::F16 => Data::F16(vec![f16::ZERO; n]),
            DType::BF16 => Data::BF16(vec![bf16::ZERO; n]),
            DType::I64 => Data::I64(vec![0; n]),
            DType::I32 => Data::I32(vec![0; n]),
            DType::I8 => Data::I8(vec![0; n]),
            DType::U8 => Data::U8(vec![0; n]),
            DType::Bool => Data::Bool(vec![false; n]),
        }
    }

    /// Picks elements by index, keeping the type.
    pub fn gather(&self, idx: &[usize]) -> Data {
        map_data!(self, v => idx.iter().map(|&i| v[i]).collect())
    }

    /// Decodes little-endian bytes of a type.
    pub fn from_le_bytes(dtype: DType, bytes: &[u8]) -> Option<Data> {
        if bytes.len() % dtype.size() != 0 {
            return None;
        }
        Some(match dtype {
            DType::F32 => Data::F32(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            DType::F16 => Data::F16(
                bytes
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ),
            DType::BF16 => Data::BF16(
                bytes
                    .chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ),
            DType::I64 => Data::I64(
                bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            DType::I32 => Data::I32(
                bytes
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            DType::I8 => Data::I8(bytes.iter().map(|&b| b as i8).collect()),
            DType::U8 => Data::U8(bytes.to_vec()),
            DType::Bool => Data::Bool(bytes.iter().map(|&b| b != 0).collect()),
        })
    }

    /// Little-endian bytes of the elements.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::BF16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I8(v) => v.iter().map(|&x| x as u8).collect(),
            Data::U8(v) => v.clone(),
            Data::Bool(v) => v.iter().map(|&x| x as u8).collect(),
        }
    }

    /// Every element as f64 (exact for every type but i64 beyond 2^53).
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            Data::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            Data::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
            Data::I64(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I8(v) => v.iter().map(|&x| x as f64).collect(),
            Data::U8(v) => v.iter().map(|&x| x as f64).collect(),
            Data::Bool(v) => v.iter().map(|&x| x as u8 as f64).collect(),
        }
    }

    /// Every element as f32.
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Data::F32(v) => v.clone(),
            Data::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Data::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            _ => self.to_f64().into_iter().map(|x| x as f32).collect(),
        }
    }

    /// Every element as i64 (floats truncate toward zero, as a cast does).
    pub fn to_i64(&self) -> Vec<i64> {
        match self {
            Data::I64(v) => v.clone(),
            Data::I32(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I8(v) => v.iter().map(|&x| x as i64).collect(),
            Data::U8(v) => v.iter().map(|&x| x as i64).collect(),
            Data::Bool(v) => v.iter().map(|&x| x as i64).collect(),
            _ => self.to_f64().into_iter().map(|x| x as i64).collect(),
        }
    }

    /// Converts to another element type with the usual cast semantics
    /// (float to int truncates and saturates, anything to bool is `!= 0`).
    pub fn cast(&self, to: DType) -> Data {
        if self.dtype() == to {
            return self.clone();
        }
        match to {
            DType::F32 => Data::F32(self.to_f32()),
            DType::F16 => Data::F16(match self {
                Data::F32(v) => v.iter().map(|&x| f16::from_f32(x)).collect(),
                _ => self.to_f64().into_iter().map(f16::from_f64).collect(),
            }),
            DType::BF16 => Data::BF16(match self {
                Data::F32(v) => v.iter().map(|&x| bf16::from_f32(x)).collect(),
                _ => self.to_f64().into_iter().map(bf16::from_f64).collect(),
            }),
            DType::I64 => Data::I64(self.to_i64()),
            DType::I32 => Data::I32(self.to_f64_or_int().into_iter().map(|x| x as i32).collect()),
            DType::I8 => Data::I8(self.to_f64_or_int().into_iter().map(|x| x as i8).collect()),
            DType::U8 => Data::U8(self.to_f64_or_int().into_iter().map(|x| x as u8).collect()),
            DType::Bool => Data::Bool(self.to_f64().into_iter().map(|x| x != 0.0).collect()),
        }
    }

    /// Integers keep their value; floats truncate toward zero (saturating casts follow).
    fn to_f64_or_int(&self) -> Vec<f64> {
        self.to_f64().into_iter().map(|x| x.trunc()).collect()
    }
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Data) -> Tensor {
        debug_assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "shape {shape:?}"
        );
        Tensor { shape, data }
    }

    pub fn f32(shape: Vec<usize>, v: Vec<f32>) -> Tensor {
        Tensor::new(shape, Data::F32(v))
    }

    pub fn i64(shape: Vec<usize>, v: Vec<i64>) -> Tensor {
        Tensor::new(shape, Data::I64(v))
    }

    pub fn scalar_f32(x: f32) -> Tensor {
        Tensor::f32(vec![], vec![x])
    }

    pub fn scalar_i64(x: i64) -> Tensor {
        Tensor::i64(vec![], vec![x])
    }

    pub fn zeros(shape: Vec<usize>, dtype: DType) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(shape, Data::zeros(dtype, n))
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The f32 elements, if the tensor is f32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The i64 elements, if the tensor is i64.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            Data::I64(v) => Some(v),
            _ => None,
        }
    }

    pub fn to_f32_vec(&self) -> Vec<f32> {
        self.data.to_f32()
    }

    pub fn to_i64_vec(&self) -> Vec<i64> {
        self.data.to_i64()
    }

    pub fn cast(&self, to: DType) -> Tensor {
        Tensor::new(self.shape.clone(), self.data.cast(to))
    }

    pub fn reshape(mut self, shape: Vec<usize>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), self.numel());
        self.shape = shape;
        self
    }
}

/// Row-major strides of a shape, in elements.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn casts_follow_onnx() {
        let d = Data::F32(vec![-1.7, 0.0, 2.9, 300.0]);
        assert_eq!(d.cast(DType::I64), Data::I64(vec![-1, 0, 2, 300]));
        assert_eq!(
            d.cast(DType::Bool),
            Data::Bool(vec![true, false, true, true])
        );
        assert_eq!(d.cast(DType::U8), Data::U8(vec![0, 0, 2, 255]));
        let b = Data::from_le_bytes(DType::I32, &[1, 0, 0, 0, 255, 255, 255, 255]).unwrap();
        assert_eq!(b, Data::I32(vec![1, -1]));
        assert_eq!(b.to_le_bytes(), vec![1, 0, 0, 0, 255, 255, 255, 255]);
    }

    #[test]
    fn strides_are_row_major() {
        assert_eq!(strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(strides(&[]), Vec::<usize>::new());
    }
}
