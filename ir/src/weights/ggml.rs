//! GGML block formats (as stored in GGUF files): their equivalent encodings, decoding to f32,
//! and conversion to the canonical layout of those encodings.

use crate::types::{rows_cols, DType, Encoding, Group, QuantSpec, Zero};
use half::{bf16, f16};

/// The GGML tensor types llmc reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl GgmlType {
    /// From the type id of a GGUF tensor info; `None` for types llmc does not read.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// Name of a GGML type id, for errors about types llmc does not read.
    pub fn id_name(id: u32) -> &'static str {
        match id {
            0 => "F32",
            1 => "F16",
            2 => "Q4_0",
            3 => "Q4_1",
            6 => "Q5_0",
            7 => "Q5_1",
            8 => "Q8_0",
            9 => "Q8_1",
            10 => "Q2_K",
            11 => "Q3_K",
            12 => "Q4_K",
            13 => "Q5_K",
            14 => "Q6_K",
            15 => "Q8_K",
            16..=23 => "IQ*",
            24 => "I8",
            25 => "I16",
            26 => "I32",
            27 => "I64",
            28 => "F64",
            29 => "IQ1_M",
            30 => "BF16",
            _ => "unknown",
        }
    }

    /// Elements per block.
    pub fn block_len(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
                32
            }
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
        }
    }

    /// The encoding that holds this type without loss. K-quants' two-level scales become
    /// one f32 scale (and offset) per sub-block.
    pub fn encoding(self) -> Encoding {
        let q = |bits, g, scale, zero| {
            Encoding::Quant(QuantSpec {
                bits,
                group: Group::Size(g),
                scale,
                zero,
            })
        };
        match self {
            GgmlType::F32 => Encoding::Dense(DType::F32),
            GgmlType::F16 => Encoding::Dense(DType::F16),
            GgmlType::BF16 => Encoding::Dense(DType::BF16),
            GgmlType::Q4_0 => q(4, 32, DType::F16, Zero::Symmetric),
            GgmlType::Q4_1 => q(4, 32, DType::F16, Zero::Float),
            GgmlType::Q5_0 => q(5, 32, DType::F16, Zero::Symmetric),
            GgmlType::Q5_1 => q(5, 32, DType::F16, Zero::Float),
            GgmlType::Q8_0 => q(8, 32, DType::F16, Zero::Symmetric),
            GgmlType::Q4K => q(4, 32, DType::F32, Zero::Float),
            GgmlType::Q5K => q(5, 32, DType::F32, Zero::Float),
            GgmlType::Q6K => q(6, 16, DType::F32, Zero::Symmetric),
        }
    }
}

fn h(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// One decoded block: unsigned codes, and per sub-block scale and offset such that
/// `x = scale · code + offset` (symmetric types fold the centre into the offset).
struct Block {
    codes: [u8; 256],
    scales: [f32; 16],
    offsets: [f32; 16],
}

/// K-quant 6-bit scale and min `j` from the 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn decode_block(t: GgmlType, b: &[u8], out: &mut Block) {
    match t {
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let (d, m, qs) = if t == GgmlType::Q4_0 {
                (h(b, 0), -8.0 * h(b, 0), &b[2..18])
            } else {
                (h(b, 0), h(b, 2), &b[4..20])
            };
            for j in 0..16 {
                out.codes[j] = qs[j] & 0xF;
                out.codes[j + 16] = qs[j] >> 4;
            }
            out.scales[0] = d;
            out.offsets[0] = m;
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let (d, m, rest) = if t == GgmlType::Q5_0 {
                (h(b, 0), -16.0 * h(b, 0), &b[2..])
            } else {
                (h(b, 0), h(b, 2), &b[4..])
            };
            let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let qs = &rest[4..20];
            for j in 0..16 {
                let h0 = (((qh >> j) << 4) & 0x10) as u8;
                let h1 = ((qh >> (j + 12)) & 0x10) as u8;
                out.codes[j] = (qs[j] & 0xF) | h0;
                out.codes[j + 16] = (qs[j] >> 4) | h1;
            }
            out.scales[0] = d;
            out.offsets[0] = m;
        }
        GgmlType::Q8_0 => {
            let d = h(b, 0);
            for j in 0..32 {
                out.codes[j] = (b[2 + j] as i8 as i16 + 128) as u8;
            }
            out.scales[0] = d;
            out.offsets[0] = -128.0 * d;
        }
        GgmlType::Q4K | GgmlType::Q5K => {
            let (d, dmin) = (h(b, 0), h(b, 2));
            let sc = &b[4..16];
            let (qh, ql) = if t == GgmlType::Q5K {
                (Some(&b[16..48]), &b[48..176])
            } else {
                (None, &b[16..144])
            };
            for chunk in 0..4 {
                let q = &ql[chunk * 32..chunk * 32 + 32];
                for half in 0..2 {
                    let sub = chunk * 2 + half;
                    let (s, m) = scale_min_k4(sub, sc);
                    out.scales[sub] = d * s as f32;
                    out.offsets[sub] = -dmin * m as f32;
                    for l in 0..32 {
                        let lo = if half == 0 { q[l] & 0xF } else { q[l] >> 4 };
                        let hi = qh.map_or(0, |qh| ((qh[l] >> sub) & 1) << 4);
                        out.codes[sub * 32 + l] = lo | hi;
                    }
                }
            }
        }
        GgmlType::Q6K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = h(b, 208);
            for n in 0..2 {
                let (ql, qh, sc) = (&ql[n * 64..], &qh[n * 32..], &sc[n * 8..]);
                for l in 0..32 {
                    let base = n * 128;
                    out.codes[base + l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                    out.codes[base + l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                    out.codes[base + l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    out.codes[base + l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                }
                for (k, &s) in sc[..8].iter().enumerate() {
                    let scale = d * s as i8 as f32;
                    out.scales[n * 8 + k] = scale;
                    out.offsets[n * 8 + k] = -32.0 * scale;
                }
            }
        }
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            unreachable!("dense types have no blocks")
        }
    }
}

fn sub_len(t: GgmlType) -> usize {
    match t {
        GgmlType::Q6K => 16,
        _ => 32,
    }
}

/// Decodes a whole GGML tensor to f32 (the length was checked by the caller).
pub fn decode(t: GgmlType, raw: &[u8]) -> Vec<f32> {
    match t {
        GgmlType::F32 => {
            return raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
        GgmlType::F16 => {
            return raw
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect()
        }
        GgmlType::BF16 => {
            return raw
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect()
        }
        _ => {}
    }
    use rayon::prelude::*;
    let (bl, bb, sl) = (t.block_len(), t.block_bytes(), sub_len(t));
    let mut out = vec![0f32; raw.len() / bb * bl];
    out.par_chunks_mut(bl * 64)
        .zip(raw.par_chunks(bb * 64))
        .for_each(|(o, r)| {
            let mut blk = Block {
                codes: [0; 256],
                scales: [0.0; 16],
                offsets: [0.0; 16],
            };
            for (o, b) in o.chunks_exact_mut(bl).zip(r.chunks_exact(bb)) {
                decode_block(t, b, &mut blk);
                for (i, x) in o.iter_mut().enumerate() {
                    let s = i / sl;
                    *x = blk.scales[s] * blk.codes[i] as f32 + blk.offsets[s];
                }
            }
        });
    out
}

/// Converts a GGML tensor of `shape` to the canonical layout of `t.encoding()`.
pub fn to_canonical(t: GgmlType, raw: &[u8], shape: &[u64]) -> Vec<u8> {
    let Encoding::Quant(q) = t.encoding() else {
        return raw.to_vec();
    };
    let (rows, cols) = rows_cols(shape);
    let (bl, bb, sl) = (t.block_len(), t.block_bytes(), sub_len(t));
    let n = (rows * cols) as usize;
    let mut codes = vec![0u8; n];
    let mut scales = Vec::with_capacity(n / sl);
    let mut zeros = Vec::with_capacity(n / sl);
    let mut blk = Block {
        codes: [0; 256],
        scales: [0.0; 16],
        offsets: [0.0; 16],
    };
    let center = (1u32 << (q.bits - 1)) as f32;
    for (o, b) in codes.chunks_exact_mut(bl).zip(raw.chunks_exact(bb)) {
        decode_block(t, b, &mut blk);
        o.copy_from_slice(&blk.codes[..bl]);
        for s in 0..bl / sl {
            scales.push(blk.scales[s]);
            // symmetric types: offset = −centre·scale by construction, nothing to store
            if q.zero == Zero::Float {
                zeros.push(blk.offsets[s]);
            } else {
                debug_assert!(
                    (blk.offsets[s] + center * blk.scales[s]).abs()
                        <= 1e-6 * blk.scales[s].abs().max(1.0)
                );
            }
        }
    }
    super::encode_quant(&q, rows, cols, &codes, &scales, &zeros)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Shape, TensorType};
    use crate::weights::{Bytes, Format, WeightData};

    fn f16b(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q4_0_and_q8_0_blocks() {
        let mut b = vec![];
        b.extend(f16b(0.5));
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let v = decode(GgmlType::Q4_0, &b);
        assert_eq!(v[0], (0.0 - 8.0) * 0.5);
        assert_eq!(v[15], (15.0 - 8.0) * 0.5);
        assert_eq!(v[16], (15.0 - 8.0) * 0.5);
        let mut b = vec![];
        b.extend(f16b(0.25));
        b.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let v = decode(GgmlType::Q8_0, &b);
        assert_eq!(v[0], -4.0);
        assert_eq!(v[31], 15.0 * 0.25);
    }

    #[test]
    fn q5_1_high_bits() {
        let mut b = vec![];
        b.extend(f16b(1.0));
        b.extend(f16b(-3.0));
        b.extend(0x0001_0001u32.to_le_bytes()); // high bit of element 0 and of element 16
        b.extend([0u8; 16]);
        let v = decode(GgmlType::Q5_1, &b);
        assert_eq!(v[0], 16.0 - 3.0);
        assert_eq!(v[1], -3.0);
        assert_eq!(v[16], 16.0 - 3.0);
    }

    #[test]
    fn canonical_conversion_decodes_the_same() {
        // pseudo-random Q4_K, Q5_K, Q6_K and Q4_1 blocks: both paths must give the same numbers
        let mut seed = 12345u32;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as u8
        };
        for t in [
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q8_0,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
        ] {
            let rows = 2u64;
            let cols = 512u64;
            let nblocks = (rows * cols) as usize / t.block_len();
            let mut raw = vec![];
            for _ in 0..nblocks {
                let mut b: Vec<u8> = (0..t.block_bytes()).map(|_| rnd()).collect();
                // keep the f16 scales finite and modest
                let pos: &[usize] = match t {
                    GgmlType::Q6K => &[208],
                    GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q4_1 => &[0, 2],
                    _ => &[0],
                };
                for &p in pos {
                    b[p..p + 2].copy_from_slice(&f16b(0.01 * (1 + rnd() % 50) as f32));
                }
                raw.extend(b);
            }
            let direct = decode(t, &raw);
            let ty = TensorType {
                shape: Shape::fixed(&[rows as usize, cols as usize]),
                enc: t.encoding(),
            };
            let canon = to_canonical(t, &raw, &[rows, cols]);
            let via = WeightData::new(Bytes::owned(canon), Format::Canonical, "c")
                .decode_f32(&ty)
                .unwrap();
            for (i, (a, b)) in direct.iter().zip(via.as_f32().unwrap()).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                    "{t:?} element {i}: {a} vs {b}"
                );
            }
        }
    }
}
