//! Reading and writing NumPy `.npy` files (version 1–3, little-endian, C order).

use llmc_ir::{DType, Data, Tensor};
use std::path::Path;

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum NpyError {
    #[error("{path}: {msg}")]
    #[diagnostic(code(llmc::npy::bad))]
    Bad { path: String, msg: String },
    #[error("{path}: {source}")]
    #[diagnostic(code(llmc::npy::io))]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn descr(dt: DType) -> &'static str {
    match dt {
        DType::F32 => "<f4",
        DType::F16 => "<f2",
        DType::BF16 => "<V2", // numpy has no bfloat16; raw 2-byte values
        DType::I64 => "<i8",
        DType::I32 => "<i4",
        DType::I8 => "|i1",
        DType::U8 => "|u1",
        DType::Bool => "|b1",
    }
}

fn dtype_of(descr: &str) -> Option<DType> {
    Some(match descr {
        "<f4" | "=f4" => DType::F32,
        "<f2" | "=f2" => DType::F16,
        "<i8" | "=i8" => DType::I64,
        "<i4" | "=i4" => DType::I32,
        "|i1" | "<i1" | "=i1" => DType::I8,
        "|u1" | "<u1" | "=u1" => DType::U8,
        "|b1" | "<b1" | "=b1" => DType::Bool,
        _ => return None,
    })
}

/// Serializes a tensor as a version-1 `.npy` file.
pub fn to_bytes(t: &Tensor) -> Vec<u8> {
    let shape = match t.shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", t.shape[0]),
        _ => format!(
            "({})",
            t.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        descr(t.dtype())
    );
    // magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64
    let pad = (64 - (10 + header.len() + 1) % 64) % 64;
    header.push_str(&" ".repeat(pad));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.numel() * t.dtype().size());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(t.data.to_le_bytes());
    out
}

pub fn write(path: &Path, t: &Tensor) -> Result<(), NpyError> {
    std::fs::write(path, to_bytes(t)).map_err(|source| NpyError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Parses a `.npy` file's bytes; `path` names it in errors.
pub fn from_bytes(path: &str, b: &[u8]) -> Result<Tensor, NpyError> {
    let bad = |msg: String| NpyError::Bad {
        path: path.to_string(),
        msg,
    };
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file (bad magic)".into()));
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 => {
            if b.len() < 12 {
                return Err(bad("truncated header".into()));
            }
            (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
        }
        v => return Err(bad(format!("unsupported .npy version {v}"))),
    };
    let end = (start as usize)
        .checked_add(hlen)
        .filter(|&e| e <= b.len())
        .ok_or_else(|| bad("truncated header".into()))?;
    let header =
        std::str::from_utf8(&b[start..end]).map_err(|_| bad("header is not text".into()))?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}'"))?;
        let rest = header[i + key.len() + 2..]
            .trim_start()
            .strip_prefix(':')?
            .trim_start();
        Some(rest)
    };
    let descr_s = field("descr")
        .and_then(|r| r.strip_prefix('\''))
        .and_then(|r| r.split('\'').next());
    let descr_s = descr_s.ok_or_else(|| bad("header has no descr".into()))?;
    let dtype = dtype_of(descr_s).ok_or_else(|| {
        bad(format!("unsupported element type '{descr_s}' (use float32, float16, int64, int32, int8, uint8 or bool)"))
    })?;
    if field("fortran_order").is_some_and(|r| r.starts_with("True")) {
        return Err(bad(
            "Fortran-ordered arrays are not supported; save with np.ascontiguousarray".into(),
        ));
    }
    let shape_s = field("shape")
        .and_then(|r| r.strip_prefix('('))
        .and_then(|r| r.split(')').next());
    let shape_s = shape_s.ok_or_else(|| bad("header has no shape".into()))?;
    let shape: Vec<usize> = shape_s
        .split(',')
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad(format!("bad dimension '{s}' in shape")))
        })
        .collect::<Result<_, _>>()?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad("shape too large".into()))?;
    let bytes = n
        .checked_mul(dtype.size())
        .ok_or_else(|| bad("shape too large".into()))?;
    let body = &b[end..];
    if body.len() < bytes {
        return Err(bad(format!(
            "holds {} data bytes but shape {shape:?} needs {bytes}",
            body.len()
        )));
    }
    let data =
        Data::from_le_bytes(dtype, &body[..bytes]).ok_or_else(|| bad("bad data length".into()))?;
    Ok(Tensor::new(shape, data))
}

pub fn read(path: &Path) -> Result<Tensor, NpyError> {
    let b = std::fs::read(path).map_err(|source| NpyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    from_bytes(&path.display().to_string(), &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for t in [
            Tensor::f32(vec![2, 3], vec![1., 2., 3., 4., 5., 6.5]),
            Tensor::i64(vec![4], vec![1, -2, 3, 4]),
            Tensor::new(vec![], Data::Bool(vec![true])),
        ] {
            let b = to_bytes(&t);
            assert_eq!((b.len() - t.numel() * t.dtype().size()) % 64, 0);
            assert_eq!(from_bytes("t.npy", &b).unwrap(), t);
        }
    }

    #[test]
    fn bad_files_are_named() {
        let e = from_bytes("x.npy", b"hello").unwrap_err().to_string();
        assert!(e.starts_with("x.npy: not a .npy file"), "{e}");
        let mut b = to_bytes(&Tensor::f32(vec![4], vec![0.; 4]));
        b.truncate(b.len() - 3);
        assert!(from_bytes("y.npy", &b)
            .unwrap_err()
            .to_string()
            .contains("needs 16"));
    }
}
