//! Element types, shapes with symbolic dimensions, and weight encodings.

use std::fmt;

/// Element type of an activation tensor, or of a dense weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F16,
    BF16,
    I64,
    I32,
    I8,
    U8,
    Bool,
}

impl DType {
    pub const ALL: [DType; 8] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I64,
        DType::I32,
        DType::I8,
        DType::U8,
        DType::Bool,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::Bool => "bool",
        }
    }

    pub fn from_name(s: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == s)
    }

    /// Bytes one element takes in memory (bool is one byte).
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I64 => 8,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    pub fn is_int(self) -> bool {
        matches!(self, DType::I64 | DType::I32 | DType::I8 | DType::U8)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One dimension of a shape: a fixed size, a named symbol bound at run time
/// (`batch`, `seq`), or unknown.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Fixed(u64),
    Sym(String),
    Any,
}

impl Dim {
    pub fn sym(name: &str) -> Dim {
        Dim::Sym(name.to_string())
    }

    pub fn fixed(self: &Dim) -> Option<u64> {
        match self {
            Dim::Fixed(n) => Some(*n),
            _ => None,
        }
    }
}

impl From<u64> for Dim {
    fn from(n: u64) -> Dim {
        Dim::Fixed(n)
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::Fixed(n as u64)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) => write!(f, "{{{s}}}"),
            Dim::Any => f.write_str("?"),
        }
    }
}

/// A shape: a list of dimensions, outermost first.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    pub fn fixed(dims: &[usize]) -> Shape {
        Shape(dims.iter().map(|&d| Dim::Fixed(d as u64)).collect())
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// The sizes, when every dimension is fixed.
    pub fn as_fixed(&self) -> Option<Vec<usize>> {
        self.0
            .iter()
            .map(|d| d.fixed().map(|n| n as usize))
            .collect()
    }

    /// Number of elements, when every dimension is fixed.
    pub fn numel(&self) -> Option<u64> {
        self.0
            .iter()
            .try_fold(1u64, |acc, d| acc.checked_mul(d.fixed()?))
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("x")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Which elements share one scale (quantization) or one codebook (palette).
/// Groups always run along the last, contiguous dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Group {
    /// One for the whole tensor (`pt`).
    Tensor,
    /// One per row, i.e. per output channel of a `[out, in]` weight (`pc`).
    Channel,
    /// One per run of this many consecutive elements of a row (`g128`).
    Size(u32),
    /// One per run of this many consecutive rows (`r128`): output channels share it, as
    /// palettes grouped by channel do. Palettes only.
    Rows(u32),
}

impl Group {
    /// Number of groups in one row of `cols` elements (for `Tensor`, 1 per tensor).
    pub fn per_row(self, cols: u64) -> u64 {
        match self {
            Group::Tensor | Group::Channel | Group::Rows(_) => 1,
            Group::Size(g) => cols.div_ceil(g as u64),
        }
    }

    /// Number of groups in a tensor of `rows` rows of `cols` elements.
    pub fn count(self, rows: u64, cols: u64) -> u64 {
        match self {
            Group::Tensor => 1,
            Group::Channel => rows,
            Group::Size(_) => rows * self.per_row(cols),
            Group::Rows(g) => rows.div_ceil(g as u64),
        }
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Group::Tensor => f.write_str("pt"),
            Group::Channel => f.write_str("pc"),
            Group::Size(g) => write!(f, "g{g}"),
            Group::Rows(g) => write!(f, "r{g}"),
        }
    }
}

/// How a quantized code maps back to a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Zero {
    /// `x = s · (q − 2^(bits−1))`: codes centred on zero, no stored zero point (`sym`).
    Symmetric,
    /// `x = s · (q − z)` with an integer zero point `z` per group, one byte each (`asym`).
    Int,
    /// `x = s · q + m` with a float offset `m` per group in the scale type (`min`), as GGUF Q4_1.
    Float,
}

impl fmt::Display for Zero {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Zero::Symmetric => "sym",
            Zero::Int => "asym",
            Zero::Float => "min",
        })
    }
}

/// Block quantization: `bits`-bit unsigned codes, a scale (and maybe a zero) per group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QuantSpec {
    pub bits: u8,
    pub group: Group,
    pub scale: DType,
    pub zero: Zero,
}

/// Palettization: `bits`-bit indices into a codebook of `2^bits` entries per group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PaletteSpec {
    pub bits: u8,
    pub group: Group,
    pub entry: DType,
}

/// How a weight's elements are stored. Part of the weight's type.
///
/// Canonical byte layouts (rows = product of all but the last dimension, `K` = last dimension;
/// codes and indices packed little-endian, least significant bits first, each row starting on a
/// byte boundary):
/// - `Dense(t)`: row-major elements of `t`.
/// - `Quant`: codes `[rows, ceil(K·bits/8)]`, then scales `[groups]` in the scale type, then for
///   `asym` zero points `[groups]` as `u8`, for `min` offsets `[groups]` in the scale type.
/// - `Palette`: indices `[rows, ceil(K·bits/8)]`, then codebooks `[groups, 2^bits]` of `entry`.
/// - `Sparse24`: the kept values, a `[.., K/2]` tensor in the inner encoding, then for every
///   kept value its 2-bit position inside its group of four, packed like codes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    Dense(DType),
    Quant(QuantSpec),
    Palette(PaletteSpec),
    Sparse24(Box<Encoding>),
}

impl Encoding {
    /// The element type the encoding decodes to.
    pub fn dtype(&self) -> DType {
        match self {
            Encoding::Dense(d) => *d,
            Encoding::Quant(_) | Encoding::Palette(_) => DType::F32,
            Encoding::Sparse24(inner) => inner.dtype(),
        }
    }

    pub fn is_dense(&self) -> bool {
        matches!(self, Encoding::Dense(_))
    }

    /// Bytes the canonical layout takes for a tensor of this shape (see the type's docs).
    /// `None` when the shape is not fixed or the encoding does not fit it.
    pub fn byte_size(&self, shape: &[u64]) -> Option<u64> {
        let (rows, cols) = rows_cols(shape);
        match self {
            Encoding::Dense(d) => Some(rows * cols * d.size() as u64),
            Encoding::Quant(q) => {
                let groups = q.group.count(rows, cols);
                let codes = rows * (cols * q.bits as u64).div_ceil(8);
                let scales = groups * q.scale.size() as u64;
                let zeros = match q.zero {
                    Zero::Symmetric => 0,
                    Zero::Int => groups,
                    Zero::Float => groups * q.scale.size() as u64,
                };
                Some(codes + scales + zeros)
            }
            Encoding::Palette(p) => {
                let groups = p.group.count(rows, cols);
                let idx = rows * (cols * p.bits as u64).div_ceil(8);
                Some(idx + groups * (1u64 << p.bits) * p.entry.size() as u64)
            }
            Encoding::Sparse24(inner) => {
                if cols % 4 != 0 {
                    return None;
                }
                let mut kept: Vec<u64> = shape.to_vec();
                *kept.last_mut()? = cols / 2;
                let values = inner.byte_size(&kept)?;
                Some(values + rows * (cols / 2 * 2).div_ceil(8))
            }
        }
    }

    /// Whether this encoding may be applied to a tensor of this shape.
    pub fn check_shape(&self, shape: &[u64]) -> Result<(), EncodingError> {
        match self {
            Encoding::Dense(_) => Ok(()),
            Encoding::Quant(q) => {
                if !(2..=8).contains(&q.bits) {
                    return Err(EncodingError::QuantBits { bits: q.bits });
                }
                if !q.scale.is_float() {
                    return Err(EncodingError::QuantScale { scale: q.scale });
                }
                if let Group::Rows(rows) = q.group {
                    return Err(EncodingError::QuantRowGroup { rows });
                }
                check_group(q.group, shape)
            }
            Encoding::Palette(p) => {
                if !(1..=8).contains(&p.bits) {
                    return Err(EncodingError::PaletteBits { bits: p.bits });
                }
                if !p.entry.is_float() {
                    return Err(EncodingError::PaletteEntry { entry: p.entry });
                }
                check_group(p.group, shape)
            }
            Encoding::Sparse24(inner) => {
                let cols = shape.last().copied().unwrap_or(1);
                if cols % 4 != 0 {
                    return Err(EncodingError::Sparse24Cols { cols });
                }
                if matches!(**inner, Encoding::Sparse24(_) | Encoding::Palette(_)) {
                    return Err(EncodingError::Sparse24Values {
                        inner: (**inner).clone(),
                    });
                }
                let mut kept = shape.to_vec();
                if let Some(l) = kept.last_mut() {
                    *l = cols / 2;
                }
                inner.check_shape(&kept)
            }
        }
    }
}

/// Why an encoding cannot apply to a tensor of some shape, or is not a valid encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodingError {
    #[error("quantization takes 2 to 8 bits, not {bits}")]
    QuantBits { bits: u8 },
    #[error("quantization scales must be float, not {scale}")]
    QuantScale { scale: DType },
    #[error("row groups (r{rows}) are for palettes; quantize per tensor, channel or g<N>")]
    QuantRowGroup { rows: u32 },
    #[error("palette indices take 1 to 8 bits, not {bits}")]
    PaletteBits { bits: u8 },
    #[error("palette entries must be float, not {entry}")]
    PaletteEntry { entry: DType },
    #[error("2:4 sparsity needs the last dimension divisible by 4, not {cols}")]
    Sparse24Cols { cols: u64 },
    #[error("2:4 sparse values must be dense or quantized, not {inner}")]
    Sparse24Values { inner: Encoding },
    #[error("row group size must be positive")]
    ZeroRowGroup,
    #[error("group size must be positive")]
    ZeroGroupSize,
    #[error("last dimension {cols} is not a multiple of the group size {group}")]
    GroupCols { cols: u64, group: u32 },
}

fn check_group(group: Group, shape: &[u64]) -> Result<(), EncodingError> {
    if group == Group::Rows(0) {
        return Err(EncodingError::ZeroRowGroup);
    }
    if let Group::Size(g) = group {
        if g == 0 {
            return Err(EncodingError::ZeroGroupSize);
        }
        let cols = shape.last().copied().unwrap_or(1);
        if cols % g as u64 != 0 {
            return Err(EncodingError::GroupCols { cols, group: g });
        }
    }
    Ok(())
}

/// Rows and columns of a tensor seen as a matrix over its last dimension.
pub fn rows_cols(shape: &[u64]) -> (u64, u64) {
    match shape.split_last() {
        None => (1, 1),
        Some((&cols, lead)) => (lead.iter().product(), cols),
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Encoding::Dense(d) => write!(f, "{d}"),
            Encoding::Quant(q) => write!(f, "!q{}<{},{},{}>", q.bits, q.group, q.scale, q.zero),
            Encoding::Palette(p) => write!(f, "!pal{}<{},{}>", p.bits, p.group, p.entry),
            Encoding::Sparse24(inner) => write!(f, "!sp24<{inner}>"),
        }
    }
}

/// The type of a value: a shape and how its elements are stored.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub shape: Shape,
    pub enc: Encoding,
}

impl TensorType {
    pub fn new(shape: Shape, dtype: DType) -> TensorType {
        TensorType {
            shape,
            enc: Encoding::Dense(dtype),
        }
    }

    pub fn fixed(dims: &[usize], dtype: DType) -> TensorType {
        TensorType::new(Shape::fixed(dims), dtype)
    }

    pub fn scalar(dtype: DType) -> TensorType {
        TensorType::new(Shape(vec![]), dtype)
    }

    /// The element type values decode to.
    pub fn dtype(&self) -> DType {
        self.enc.dtype()
    }

    pub fn rank(&self) -> usize {
        self.shape.rank()
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tensor<")?;
        if self.shape.rank() > 0 {
            write!(f, "{}x", self.shape)?;
        }
        write!(f, "{}>", self.enc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_count_every_part() {
        // GGUF Q4_1 as an encoding: 4-bit codes, f16 scale and f16 min per 32.
        let q41 = Encoding::Quant(QuantSpec {
            bits: 4,
            group: Group::Size(32),
            scale: DType::F16,
            zero: Zero::Float,
        });
        // 576x576: codes 576*288, scales + mins 576*18*2*2.
        assert_eq!(q41.byte_size(&[576, 576]), Some(576 * 288 + 576 * 18 * 4));
        let pal = Encoding::Palette(PaletteSpec {
            bits: 4,
            group: Group::Tensor,
            entry: DType::F16,
        });
        assert_eq!(pal.byte_size(&[8, 16]), Some(8 * 8 + 16 * 2));
        let sp = Encoding::Sparse24(Box::new(Encoding::Dense(DType::F16)));
        // 4x8: values 4x4 f16 = 32 bytes, positions 4 rows * 4 kept * 2 bits = 4 bytes.
        assert_eq!(sp.byte_size(&[4, 8]), Some(32 + 4));
    }

    #[test]
    fn shape_checks_name_the_problem() {
        let q = Encoding::Quant(QuantSpec {
            bits: 4,
            group: Group::Size(128),
            scale: DType::F16,
            zero: Zero::Int,
        });
        assert!(q.check_shape(&[10, 256]).is_ok());
        let err = q.check_shape(&[10, 100]).unwrap_err();
        assert_eq!(
            err,
            EncodingError::GroupCols {
                cols: 100,
                group: 128
            }
        );
        assert!(err.to_string().contains("group size 128"), "{err}");
        let bad = Encoding::Quant(QuantSpec {
            bits: 9,
            group: Group::Channel,
            scale: DType::F16,
            zero: Zero::Int,
        });
        assert!(bad
            .check_shape(&[2, 2])
            .unwrap_err()
            .to_string()
            .contains("9"));
        let rows = Encoding::Quant(QuantSpec {
            bits: 4,
            group: Group::Rows(16),
            scale: DType::F16,
            zero: Zero::Int,
        });
        assert!(rows
            .check_shape(&[32, 32])
            .unwrap_err()
            .to_string()
            .contains("palettes"));
    }

    #[test]
    fn types_print_mlir_like() {
        let t = TensorType {
            shape: Shape(vec![Dim::sym("batch"), Dim::Any, Dim::Fixed(576)]),
            enc: Encoding::Dense(DType::F32),
        };
        assert_eq!(t.to_string(), "tensor<{batch}x?x576xf32>");
        let w = TensorType {
            shape: Shape::fixed(&[576, 1536]),
            enc: Encoding::Quant(QuantSpec {
                bits: 4,
                group: Group::Size(128),
                scale: DType::F16,
                zero: Zero::Int,
            }),
        };
        assert_eq!(w.to_string(), "tensor<576x1536x!q4<g128,f16,asym>>");
        assert_eq!(TensorType::scalar(DType::I64).to_string(), "tensor<i64>");
    }
}
