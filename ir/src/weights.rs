//! The weight store: weight bytes memory-mapped from the model file (or held in memory),
//! the formats they may be stored in, decoding to f32 and to the canonical layout of an
//! encoding, and content hashes for the text form.

pub mod ggml;

use crate::tensor::Tensor;
use crate::types::{rows_cols, DType, Encoding, Group, PaletteSpec, QuantSpec, TensorType, Zero};
use half::{bf16, f16};
use memmap2::Mmap;
use std::fmt;
use std::sync::{Arc, OnceLock};

pub use ggml::GgmlType;

/// Bytes of one weight: a range of a shared memory map, or an owned buffer.
#[derive(Clone)]
pub enum Bytes {
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
    Owned(Arc<Vec<u8>>),
}

impl Bytes {
    pub fn owned(v: Vec<u8>) -> Bytes {
        Bytes::Owned(Arc::new(v))
    }

    /// A range of a map; `None` when the range lies outside it.
    pub fn mapped(map: &Arc<Mmap>, offset: usize, len: usize) -> Option<Bytes> {
        let end = offset.checked_add(len)?;
        (end <= map.len()).then(|| Bytes::Mapped {
            map: map.clone(),
            offset,
            len,
        })
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped { map, offset, len } => &map[*offset..*offset + *len],
            Bytes::Owned(v) => v,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Bytes::Mapped { len, .. } => *len,
            Bytes::Owned(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bytes::Mapped { offset, len, .. } => write!(f, "Mapped({offset}+{len})"),
            Bytes::Owned(v) => write!(f, "Owned({})", v.len()),
        }
    }
}

/// How a weight's bytes are laid out in its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The canonical layout of the weight's encoding (see [`Encoding`]).
    Canonical,
    /// GGML blocks of this type, row-major; the encoding is the equivalent block quantization
    /// (or dense for F32/F16/BF16).
    Ggml(GgmlType),
    /// A dense 2-D tensor stored transposed (`[cols, rows]`), as an ONNX MatMul's `[K, N]` weight
    /// used as a `[N, K]` linear weight.
    Transposed,
}

/// The data of one weight.
#[derive(Clone)]
pub struct WeightData {
    pub bytes: Bytes,
    pub format: Format,
    /// Where it came from, for error messages (`model.gguf: tensor 'blk.0.attn_q.weight'`).
    pub origin: String,
    hash: Arc<OnceLock<u64>>,
}

impl fmt::Debug for WeightData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "WeightData({:?}, {:?}, {})",
            self.bytes, self.format, self.origin
        )
    }
}

/// Why a weight could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{origin}: {msg}")]
pub struct WeightError {
    pub origin: String,
    pub msg: String,
}

impl WeightData {
    pub fn new(bytes: Bytes, format: Format, origin: impl Into<String>) -> WeightData {
        WeightData {
            bytes,
            format,
            origin: origin.into(),
            hash: Arc::new(OnceLock::new()),
        }
    }

    /// Canonical data from a tensor in memory.
    pub fn from_tensor(t: &Tensor, origin: impl Into<String>) -> WeightData {
        WeightData::new(
            Bytes::owned(t.data.to_le_bytes()),
            Format::Canonical,
            origin,
        )
    }

    /// A 64-bit content hash of the stored bytes and their format (xxh3).
    pub fn hash(&self) -> u64 {
        *self.hash.get_or_init(|| {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(format!("{:?}", self.format).as_bytes());
            h.update(self.bytes.as_slice());
            h.digest()
        })
    }

    fn err(&self, msg: impl Into<String>) -> WeightError {
        WeightError {
            origin: self.origin.clone(),
            msg: msg.into(),
        }
    }

    /// Checks that the bytes fit the type: their length, and that the format can hold the encoding.
    pub fn check(&self, ty: &TensorType) -> Result<(), WeightError> {
        let shape = fixed_shape(ty)
            .ok_or_else(|| self.err(format!("weight type {ty} must have a fixed shape")))?;
        ty.enc
            .check_shape(&shape)
            .map_err(|e| self.err(e.to_string()))?;
        let want = match self.format {
            Format::Canonical => ty.enc.byte_size(&shape),
            Format::Ggml(t) => {
                if t.encoding() != ty.enc {
                    return Err(
                        self.err(format!("GGML {t:?} data cannot hold a {} weight", ty.enc))
                    );
                }
                let (rows, cols) = rows_cols(&shape);
                if cols % t.block_len() as u64 != 0 {
                    return Err(self.err(format!(
                        "row length {cols} is not a multiple of the {t:?} block of {}",
                        t.block_len()
                    )));
                }
                Some(rows * cols / t.block_len() as u64 * t.block_bytes() as u64)
            }
            Format::Transposed => {
                if shape.len() != 2 || !ty.enc.is_dense() {
                    return Err(self.err("transposed data must be a dense 2-D tensor"));
                }
                ty.enc.byte_size(&shape)
            }
        };
        let want =
            want.ok_or_else(|| self.err(format!("{} does not fit shape {shape:?}", ty.enc)))?;
        if want != self.bytes.len() as u64 {
            return Err(self.err(format!(
                "holds {} bytes but a {ty} needs {want}",
                self.bytes.len()
            )));
        }
        Ok(())
    }

    /// Decodes to f32 with the weight's shape.
    pub fn decode_f32(&self, ty: &TensorType) -> Result<Tensor, WeightError> {
        self.check(ty)?;
        let shape = fixed_shape(ty).expect("checked");
        let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        let raw = self.bytes.as_slice();
        let v = match self.format {
            Format::Ggml(t) => ggml::decode(t, raw),
            Format::Transposed => {
                let d = crate::tensor::Data::from_le_bytes(ty.dtype(), raw)
                    .expect("checked")
                    .to_f32();
                let (r, c) = (dims[0], dims[1]);
                let mut out = vec![0f32; r * c];
                for (j, src) in d.chunks_exact(r.max(1)).enumerate() {
                    for (i, &x) in src.iter().enumerate() {
                        out[i * c + j] = x;
                    }
                }
                out
            }
            Format::Canonical => decode_canonical(&ty.enc, &shape, raw),
        };
        Ok(Tensor::f32(dims, v))
    }

    /// Reads a dense weight with its own element type (no conversion to f32).
    pub fn decode_dense(&self, ty: &TensorType) -> Result<Tensor, WeightError> {
        let Encoding::Dense(dt) = ty.enc else {
            return Err(self.err(format!("{} is not a dense type", ty.enc)));
        };
        if self.format != Format::Canonical {
            return self.decode_f32(ty).map(|t| t.cast(dt));
        }
        self.check(ty)?;
        let shape = fixed_shape(ty).expect("checked");
        let data = crate::tensor::Data::from_le_bytes(dt, self.bytes.as_slice()).expect("checked");
        Ok(Tensor::new(
            shape.iter().map(|&d| d as usize).collect(),
            data,
        ))
    }

    /// The bytes in the canonical layout of the weight's encoding.
    pub fn canonical_bytes(&self, ty: &TensorType) -> Result<Vec<u8>, WeightError> {
        self.check(ty)?;
        let shape = fixed_shape(ty).expect("checked");
        match self.format {
            Format::Canonical => Ok(self.bytes.as_slice().to_vec()),
            Format::Transposed => {
                let t = self.decode_f32(ty)?;
                Ok(t.data.cast(ty.dtype()).to_le_bytes())
            }
            Format::Ggml(t) => Ok(ggml::to_canonical(t, self.bytes.as_slice(), &shape)),
        }
    }
}

fn fixed_shape(ty: &TensorType) -> Option<Vec<u64>> {
    ty.shape.0.iter().map(|d| d.fixed()).collect()
}

/// Reads `bits`-bit code `i` of a packed row.
#[inline]
pub fn unpack_code(row: &[u8], bits: u32, i: usize) -> u32 {
    let bit = i * bits as usize;
    let byte = bit / 8;
    let shift = bit % 8;
    let mut w = row[byte] as u32;
    if shift + bits as usize > 8 {
        w |= (row[byte + 1] as u32) << 8;
    }
    (w >> shift) & ((1u32 << bits) - 1)
}

/// Packs codes of `bits` bits, least significant first.
pub fn pack_codes(codes: &[u8], bits: u32) -> Vec<u8> {
    let mut out = vec![0u8; (codes.len() * bits as usize).div_ceil(8)];
    for (i, &c) in codes.iter().enumerate() {
        let bit = i * bits as usize;
        let (byte, shift) = (bit / 8, bit % 8);
        let w = (c as u32) << shift;
        out[byte] |= w as u8;
        if shift + bits as usize > 8 {
            out[byte + 1] |= (w >> 8) as u8;
        }
    }
    out
}

fn read_floats(dt: DType, raw: &[u8]) -> Vec<f32> {
    match dt {
        DType::F32 => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::F16 => raw
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => raw
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => unreachable!("checked float type"),
    }
}

/// Index of the group holding element `col` of row `row`.
fn group_index(group: Group, row: u64, col: u64, cols: u64) -> usize {
    (match group {
        Group::Tensor => 0,
        Group::Channel => row,
        Group::Size(g) => row * group.per_row(cols) + col / g as u64,
        Group::Rows(g) => row / g as u64,
    }) as usize
}

fn decode_canonical(enc: &Encoding, shape: &[u64], raw: &[u8]) -> Vec<f32> {
    let (rows, cols) = rows_cols(shape);
    match enc {
        Encoding::Dense(dt) => crate::tensor::Data::from_le_bytes(*dt, raw)
            .expect("checked")
            .to_f32(),
        Encoding::Quant(q) => decode_quant(q, rows, cols, raw),
        Encoding::Palette(p) => decode_palette(p, rows, cols, raw),
        Encoding::Sparse24(inner) => {
            let kept_shape = [rows, cols / 2];
            let vbytes = inner.byte_size(&kept_shape).expect("checked") as usize;
            let values = decode_canonical(inner, &kept_shape, &raw[..vbytes]);
            let pos = &raw[vbytes..];
            let row_bytes = (cols / 2 * 2).div_ceil(8) as usize;
            let mut out = vec![0f32; (rows * cols) as usize];
            let half = (cols / 2) as usize;
            for r in 0..rows as usize {
                let prow = &pos[r * row_bytes..(r + 1) * row_bytes];
                for k in 0..half {
                    let p = unpack_code(prow, 2, k) as usize;
                    out[r * cols as usize + (k / 2) * 4 + p] = values[r * half + k];
                }
            }
            out
        }
    }
}

fn decode_quant(q: &QuantSpec, rows: u64, cols: u64, raw: &[u8]) -> Vec<f32> {
    let row_bytes = (cols * q.bits as u64).div_ceil(8) as usize;
    let groups = q.group.count(rows, cols) as usize;
    let codes_len = rows as usize * row_bytes;
    let ssz = q.scale.size();
    let scales = read_floats(q.scale, &raw[codes_len..codes_len + groups * ssz]);
    let zoff = codes_len + groups * ssz;
    let offsets: Vec<f32> = match q.zero {
        Zero::Symmetric => vec![],
        Zero::Int => raw[zoff..zoff + groups].iter().map(|&z| z as f32).collect(),
        Zero::Float => read_floats(q.scale, &raw[zoff..zoff + groups * ssz]),
    };
    let center = (1u32 << (q.bits - 1)) as f32;
    let mut out = vec![0f32; (rows * cols) as usize];
    for r in 0..rows {
        let row = &raw[r as usize * row_bytes..(r as usize + 1) * row_bytes];
        for c in 0..cols {
            let u = unpack_code(row, q.bits as u32, c as usize) as f32;
            let g = group_index(q.group, r, c, cols);
            let s = scales[g];
            out[(r * cols + c) as usize] = match q.zero {
                Zero::Symmetric => s * (u - center),
                Zero::Int => s * (u - offsets[g]),
                Zero::Float => s * u + offsets[g],
            };
        }
    }
    out
}

fn decode_palette(p: &PaletteSpec, rows: u64, cols: u64, raw: &[u8]) -> Vec<f32> {
    let row_bytes = (cols * p.bits as u64).div_ceil(8) as usize;
    let entries = 1usize << p.bits;
    let idx_len = rows as usize * row_bytes;
    let books = read_floats(p.entry, &raw[idx_len..]);
    let mut out = vec![0f32; (rows * cols) as usize];
    for r in 0..rows {
        let row = &raw[r as usize * row_bytes..(r as usize + 1) * row_bytes];
        for c in 0..cols {
            let i = unpack_code(row, p.bits as u32, c as usize) as usize;
            let g = group_index(p.group, r, c, cols);
            out[(r * cols + c) as usize] = books[g * entries + i];
        }
    }
    out
}

/// The parts of a canonical block quantization: codes `[rows·cols]` (one per byte), and per
/// group the scale and the zero (`asym`: the integer zero point, `min`: the offset, `sym`: 0).
pub fn quant_parts(
    q: &QuantSpec,
    rows: u64,
    cols: u64,
    raw: &[u8],
) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
    let row_bytes = (cols * q.bits as u64).div_ceil(8) as usize;
    let groups = q.group.count(rows, cols) as usize;
    let codes_len = rows as usize * row_bytes;
    let ssz = q.scale.size();
    let mut codes = Vec::with_capacity((rows * cols) as usize);
    for r in 0..rows as usize {
        let row = &raw[r * row_bytes..(r + 1) * row_bytes];
        codes.extend((0..cols as usize).map(|c| unpack_code(row, q.bits as u32, c) as u8));
    }
    let scales = read_floats(q.scale, &raw[codes_len..codes_len + groups * ssz]);
    let zoff = codes_len + groups * ssz;
    let zeros = match q.zero {
        Zero::Symmetric => vec![0.0; groups],
        Zero::Int => raw[zoff..zoff + groups].iter().map(|&z| z as f32).collect(),
        Zero::Float => read_floats(q.scale, &raw[zoff..zoff + groups * ssz]),
    };
    (codes, scales, zeros)
}

/// Encodes codes, scales and zeros of a block quantization into the canonical layout.
/// `codes` is row-major `[rows, cols]`, `scales`/`zeros` one per group (zeros ignored for `sym`).
pub fn encode_quant(
    q: &QuantSpec,
    rows: u64,
    cols: u64,
    codes: &[u8],
    scales: &[f32],
    zeros: &[f32],
) -> Vec<u8> {
    let mut out = Vec::new();
    for r in 0..rows as usize {
        out.extend(pack_codes(
            &codes[r * cols as usize..(r + 1) * cols as usize],
            q.bits as u32,
        ));
    }
    write_floats(&mut out, q.scale, scales);
    match q.zero {
        Zero::Symmetric => {}
        Zero::Int => out.extend(zeros.iter().map(|&z| z as u8)),
        Zero::Float => write_floats(&mut out, q.scale, zeros),
    }
    out
}

fn write_floats(out: &mut Vec<u8>, dt: DType, v: &[f32]) {
    for &x in v {
        match dt {
            DType::F32 => out.extend(x.to_le_bytes()),
            DType::F16 => out.extend(f16::from_f32(x).to_le_bytes()),
            DType::BF16 => out.extend(bf16::from_f32(x).to_le_bytes()),
            _ => unreachable!("scales are float"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Shape;

    #[test]
    fn codes_pack_and_unpack() {
        for bits in 2..=8u32 {
            let codes: Vec<u8> = (0..37).map(|i| (i * 7 % (1 << bits)) as u8).collect();
            let packed = pack_codes(&codes, bits);
            for (i, &c) in codes.iter().enumerate() {
                assert_eq!(unpack_code(&packed, bits, i), c as u32, "bits {bits} i {i}");
            }
        }
    }

    #[test]
    fn quant_canonical_round_trip() {
        let q = QuantSpec {
            bits: 3,
            group: Group::Size(4),
            scale: DType::F32,
            zero: Zero::Int,
        };
        let codes: Vec<u8> = vec![0, 1, 2, 7, 3, 3, 3, 3];
        let bytes = encode_quant(&q, 1, 8, &codes, &[0.5, 2.0], &[1.0, 3.0]);
        let ty = TensorType {
            shape: Shape::fixed(&[1, 8]),
            enc: Encoding::Quant(q),
        };
        let w = WeightData::new(Bytes::owned(bytes), Format::Canonical, "test");
        let t = w.decode_f32(&ty).unwrap();
        assert_eq!(
            t.as_f32().unwrap(),
            &[-0.5, 0.0, 0.5, 3.0, 0.0, 0.0, 0.0, 0.0]
        );
    }

    #[test]
    fn sparse_and_palette_decode() {
        // 2:4 over one row of 8: kept values 1,2 at positions 1,3 and 3,4 at 0,2.
        let enc = Encoding::Sparse24(Box::new(Encoding::Dense(DType::F32)));
        let mut bytes: Vec<u8> = [1f32, 2., 3., 4.]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        bytes.extend(pack_codes(&[1, 3, 0, 2], 2));
        let ty = TensorType {
            shape: Shape::fixed(&[1, 8]),
            enc,
        };
        let t = WeightData::new(Bytes::owned(bytes), Format::Canonical, "t")
            .decode_f32(&ty)
            .unwrap();
        assert_eq!(t.as_f32().unwrap(), &[0., 1., 0., 2., 3., 0., 4., 0.]);

        let p = PaletteSpec {
            bits: 1,
            group: Group::Channel,
            entry: DType::F32,
        };
        let mut bytes = pack_codes(&[0, 1, 1, 0], 1);
        bytes.extend(pack_codes(&[1, 1, 0, 0], 1));
        bytes.extend([-1f32, 1., 5., 6.].iter().flat_map(|x| x.to_le_bytes()));
        let ty = TensorType {
            shape: Shape::fixed(&[2, 4]),
            enc: Encoding::Palette(p),
        };
        let t = WeightData::new(Bytes::owned(bytes), Format::Canonical, "p")
            .decode_f32(&ty)
            .unwrap();
        assert_eq!(t.as_f32().unwrap(), &[-1., 1., 1., -1., 6., 6., 5., 5.]);

        // rows grouped by two share a codebook: rows 0-1 the first, row 2 the second
        let p = PaletteSpec {
            bits: 1,
            group: Group::Rows(2),
            entry: DType::F32,
        };
        let mut bytes = Vec::new();
        for row in [[0, 1], [1, 1], [1, 0]] {
            bytes.extend(pack_codes(&row, 1));
        }
        bytes.extend([-1f32, 1., 5., 6.].iter().flat_map(|x| x.to_le_bytes()));
        let ty = TensorType {
            shape: Shape::fixed(&[3, 2]),
            enc: Encoding::Palette(p),
        };
        assert_eq!(ty.enc.byte_size(&[3, 2]), Some(3 + 16));
        let t = WeightData::new(Bytes::owned(bytes), Format::Canonical, "r")
            .decode_f32(&ty)
            .unwrap();
        assert_eq!(t.as_f32().unwrap(), &[-1., 1., 1., 1., 6., 5.]);
    }

    #[test]
    fn wrong_length_is_an_error_naming_the_origin() {
        let ty = TensorType::fixed(&[2, 2], DType::F32);
        let w = WeightData::new(
            Bytes::owned(vec![0; 15]),
            Format::Canonical,
            "m.onnx: initializer 'w'",
        );
        let e = w.decode_f32(&ty).unwrap_err().to_string();
        assert!(
            e.contains("m.onnx: initializer 'w'") && e.contains("15 bytes"),
            "{e}"
        );
    }

    #[test]
    fn transposed_weights_read_as_their_transpose() {
        // stored [K=3, N=2], read as [N=2, K=3]
        let stored: Vec<u8> = [1f32, 2., 3., 4., 5., 6.]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let ty = TensorType::fixed(&[2, 3], DType::F32);
        let t = WeightData::new(Bytes::owned(stored), Format::Transposed, "t")
            .decode_f32(&ty)
            .unwrap();
        assert_eq!(t.as_f32().unwrap(), &[1., 3., 5., 2., 4., 6.]);
    }
}
