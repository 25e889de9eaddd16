//! Weight layouts the linear kernels read, packed at build time so nothing is repacked at
//! load. Every layout cuts the `[N, K]` weight into panels of [`NR`] output rows (the last
//! one padded with zero rows); a panel starts on a 64-byte boundary.
//!
//! - Dense panels: `[K][NR]` elements of the weight's type.
//! - Dot4 panels (4- and 8-bit codes, for VNNI `vpdpbusd`, NEON `sdot` and the generic
//!   integer kernels): codes in 64-byte blocks of `NR` rows × 4 consecutive k (byte `4j + t`
//!   is row `j`, k `t`); 4-bit codes put two such blocks in one (low nibbles: k..k+4, high
//!   nibbles: k+4..k+8). Then the scales `[groups][NR]`, then the zeros `[groups][NR]` (`asym`:
//!   u8, `min`: the scale type). With `offset` 128, 8-bit codes are stored as `u − 128` (s8)
//!   for signed-by-signed dot products.
//! - Mmla panels (AArch64 i8mm `smmla`): codes in blocks of `NR/2` row pairs × 8 consecutive
//!   k, each pair 16 bytes (row a's 8 k, then row b's); 4-bit codes pair k..k+8 (low nibbles)
//!   with k+8..k+16 (high nibbles) in one block. Scales and zeros as Dot4.
//! - Palette panels (4-bit palettes whose codebook every row of a panel shares: per tensor,
//!   or rows grouped by a multiple of [`NR`]): the panel's 16 codebook entries as f32 (64
//!   bytes), then the indices arranged as 4-bit Dot4 codes.
//! - 2:4 panels: the kept values, `[N, K/2]`, as the inner encoding's panel (dense panels, or
//!   Dot4 panels of the block quantization over K/2), then the positions: for every 4 kept
//!   values (8 columns of the weight) 16 bytes, byte `j` holding row `j`'s four 2-bit
//!   positions, least significant first.

use llmc_ir::weights::{quant_parts, unpack_code};
use llmc_ir::{DType, Data, Encoding, Group, PaletteSpec, QuantSpec, Zero};

/// Output rows per panel.
pub const NR: usize = 16;

/// How quantized codes are arranged in a panel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QLayout {
    Dot4,
    Mmla,
}

/// Group size in k of a spec over rows of `k`.
pub fn group_len(q: &QuantSpec, k: usize) -> usize {
    match q.group {
        Group::Size(g) => g as usize,
        _ => k,
    }
}

/// Bytes of one panel of a Dot4/Mmla layout.
pub fn quant_panel_bytes(q: &QuantSpec, k: usize) -> usize {
    let groups = k / group_len(q, k);
    let codes = k * NR * q.bits as usize / 8;
    let ssz = q.scale.size();
    let zeros = match q.zero {
        Zero::Symmetric => 0,
        Zero::Int => groups * NR,
        Zero::Float => groups * NR * ssz,
    };
    (codes + groups * NR * ssz + zeros).div_ceil(64) * 64
}

/// Whether the panel kernels take this spec (otherwise the generic row kernel runs).
pub fn quant_packable(q: &QuantSpec, k: usize, layout: QLayout) -> bool {
    let g = group_len(q, k);
    let step = match (layout, q.bits) {
        (QLayout::Dot4, 8) => 4,
        (QLayout::Dot4, 4) => 8,
        (QLayout::Mmla, 8) => 8,
        (QLayout::Mmla, 4) => 16,
        _ => return false,
    };
    !matches!(q.group, Group::Tensor) && k % g == 0 && g % step == 0
}

fn write_float(out: &mut Vec<u8>, dt: DType, x: f32) {
    match dt {
        DType::F16 => out.extend(half::f16::from_f32(x).to_le_bytes()),
        DType::BF16 => out.extend(half::bf16::from_f32(x).to_le_bytes()),
        _ => out.extend(x.to_le_bytes()),
    }
}

/// Packs a canonical block-quantized `[n, k]` weight into panels.
pub fn pack_quant(
    q: &QuantSpec,
    n: usize,
    k: usize,
    canonical: &[u8],
    layout: QLayout,
    offset: u8,
) -> Vec<u8> {
    let (codes, scales, zeros) = quant_parts(q, n as u64, k as u64, canonical);
    let g = group_len(q, k);
    let groups = k / g;
    let panels = n.div_ceil(NR);
    let pb = quant_panel_bytes(q, k);
    let mut out = Vec::with_capacity(panels * pb);
    let code = |r: usize, c: usize| -> u8 {
        if r < n {
            codes[r * k + c].wrapping_sub(offset)
        } else if q.zero == Zero::Symmetric {
            // padding rows decode to zero
            ((1u32 << (q.bits - 1)) as u8).wrapping_sub(offset)
        } else {
            0u8.wrapping_sub(offset)
        }
    };
    for p in 0..panels {
        let start = out.len();
        let rows = p * NR..p * NR + NR;
        match layout {
            QLayout::Dot4 => {
                let step = if q.bits == 4 { 8 } else { 4 };
                for k0 in (0..k).step_by(step) {
                    for j in rows.clone() {
                        for t in 0..4 {
                            let b = if q.bits == 4 {
                                code(j, k0 + t) | (code(j, k0 + 4 + t) << 4)
                            } else {
                                code(j, k0 + t)
                            };
                            out.push(b);
                        }
                    }
                }
            }
            QLayout::Mmla => {
                let step = if q.bits == 4 { 16 } else { 8 };
                for k0 in (0..k).step_by(step) {
                    for pair in (p * NR..p * NR + NR).step_by(2) {
                        for j in [pair, pair + 1] {
                            for t in 0..8 {
                                let b = if q.bits == 4 {
                                    code(j, k0 + t) | (code(j, k0 + 8 + t) << 4)
                                } else {
                                    code(j, k0 + t)
                                };
                                out.push(b);
                            }
                        }
                    }
                }
            }
        }
        let gidx = |r: usize, gi: usize| match q.group {
            Group::Channel => r,
            _ => r * groups + gi,
        };
        for gi in 0..groups {
            for r in rows.clone() {
                write_float(
                    &mut out,
                    q.scale,
                    if r < n { scales[gidx(r, gi)] } else { 0.0 },
                );
            }
        }
        match q.zero {
            Zero::Symmetric => {}
            Zero::Int => {
                for gi in 0..groups {
                    for r in rows.clone() {
                        out.push(if r < n { zeros[gidx(r, gi)] as u8 } else { 0 });
                    }
                }
            }
            Zero::Float => {
                for gi in 0..groups {
                    for r in rows.clone() {
                        write_float(
                            &mut out,
                            q.scale,
                            if r < n { zeros[gidx(r, gi)] } else { 0.0 },
                        );
                    }
                }
            }
        }
        out.resize(start + pb, 0);
    }
    let _ = groups;
    out
}

/// Packs a dense `[n, k]` weight (little-endian elements of `esz` bytes) into panels.
pub fn pack_dense(raw: &[u8], n: usize, k: usize, esz: usize) -> Vec<u8> {
    let panels = n.div_ceil(NR);
    let pb = (k * NR * esz).div_ceil(64) * 64;
    let mut out = vec![0u8; panels * pb];
    for r in 0..n {
        let (p, j) = (r / NR, r % NR);
        for c in 0..k {
            let src = (r * k + c) * esz;
            let dst = p * pb + (c * NR + j) * esz;
            out[dst..dst + esz].copy_from_slice(&raw[src..src + esz]);
        }
    }
    out
}

/// Bytes of one dense panel.
pub fn dense_panel_bytes(k: usize, esz: usize) -> usize {
    (k * NR * esz).div_ceil(64) * 64
}

/// Whether a palette is read by the palette panel kernel: 4-bit indices, one codebook for
/// every row of a panel, K a multiple of 8.
pub fn palette_packable(p: &PaletteSpec, k: usize) -> bool {
    let shared = match p.group {
        Group::Tensor => true,
        Group::Rows(g) => g as usize % NR == 0,
        _ => false,
    };
    p.bits == 4 && shared && k % 8 == 0
}

/// Bytes of one palette panel.
pub fn palette_panel_bytes(k: usize) -> usize {
    64 + k * NR / 2
}

/// Packs a canonical palette-encoded `[n, k]` weight (see [`palette_packable`]) into panels.
pub fn pack_palette(p: &PaletteSpec, n: usize, k: usize, canonical: &[u8]) -> Vec<u8> {
    let row_bytes = k / 2;
    let books = Data::from_le_bytes(p.entry, &canonical[n * row_bytes..])
        .expect("checked by the weight's type")
        .to_f32();
    let rows_per_book = match p.group {
        Group::Rows(g) => g as usize,
        _ => n.max(1),
    };
    let code = |r: usize, c: usize| -> u8 {
        if r < n {
            unpack_code(&canonical[r * row_bytes..(r + 1) * row_bytes], 4, c) as u8
        } else {
            0
        }
    };
    let panels = n.div_ceil(NR);
    let mut out = Vec::with_capacity(panels * palette_panel_bytes(k));
    for pi in 0..panels {
        let book = (pi * NR / rows_per_book) * 16;
        for e in 0..16 {
            out.extend(books[book + e].to_le_bytes());
        }
        for k0 in (0..k).step_by(8) {
            for j in pi * NR..pi * NR + NR {
                for t in 0..4 {
                    out.push(code(j, k0 + t) | (code(j, k0 + 4 + t) << 4));
                }
            }
        }
    }
    out
}

/// The inner encodings the 2:4 panel kernels read: dense floats, or block quantizations the
/// Dot4 panels take over K/2; K a multiple of 8.
pub fn sparse24_packable(inner: &Encoding, k: usize) -> bool {
    k % 8 == 0
        && match inner {
            Encoding::Dense(d) => matches!(d, DType::F32 | DType::F16 | DType::BF16),
            Encoding::Quant(q) => {
                matches!(q.bits, 4 | 8) && quant_packable(q, k / 2, QLayout::Dot4)
            }
            _ => false,
        }
}

/// Bytes of the kept values of one 2:4 panel, and of the whole panel.
pub fn sparse24_panel_bytes(inner: &Encoding, k: usize) -> (usize, usize) {
    let values = match inner {
        Encoding::Quant(q) => quant_panel_bytes(q, k / 2),
        Encoding::Dense(d) => dense_panel_bytes(k / 2, d.size()),
        _ => unreachable!("checked by sparse24_packable"),
    };
    (values, values + (2 * k).div_ceil(64) * 64)
}

/// Packs a canonical 2:4 `[n, k]` weight (see [`sparse24_packable`]) into panels.
pub fn pack_sparse24(inner: &Encoding, n: usize, k: usize, canonical: &[u8]) -> Vec<u8> {
    let half = k / 2;
    let vbytes = inner
        .byte_size(&[n as u64, half as u64])
        .expect("checked by the weight's type") as usize;
    let (values, pos) = canonical.split_at(vbytes);
    let values = match inner {
        Encoding::Quant(q) => pack_quant(q, n, half, values, QLayout::Dot4, 0),
        Encoding::Dense(d) => pack_dense(values, n, half, d.size()),
        _ => unreachable!("checked by sparse24_packable"),
    };
    let (vb, pb) = sparse24_panel_bytes(inner, k);
    let row_bytes = k / 8;
    let position = |r: usize, i: usize| -> u8 {
        if r < n {
            unpack_code(&pos[r * row_bytes..(r + 1) * row_bytes], 2, i) as u8
        } else {
            0
        }
    };
    let panels = n.div_ceil(NR);
    let mut out = vec![0u8; panels * pb];
    for p in 0..panels {
        let dst = &mut out[p * pb..(p + 1) * pb];
        dst[..vb].copy_from_slice(&values[p * vb..(p + 1) * vb]);
        for b in 0..half / 4 {
            for j in 0..NR {
                let r = p * NR + j;
                dst[vb + b * NR + j] =
                    (0..4).fold(0u8, |acc, t| acc | (position(r, 4 * b + t) << (2 * t)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmc_ir::weights::encode_quant;

    #[test]
    fn dot4_panels_place_codes_and_scales() {
        let q = QuantSpec {
            bits: 4,
            group: Group::Size(8),
            scale: DType::F16,
            zero: Zero::Symmetric,
        };
        let (n, k) = (3, 16);
        let codes: Vec<u8> = (0..n * k).map(|i| (i % 16) as u8).collect();
        let scales: Vec<f32> = (0..n * 2).map(|i| i as f32).collect();
        let raw = encode_quant(&q, n as u64, k as u64, &codes, &scales, &[]);
        let p = pack_quant(&q, n, k, &raw, QLayout::Dot4, 0);
        assert_eq!(p.len(), quant_panel_bytes(&q, k));
        // row 1, k 2 (low nibble) and k 6 (high nibble) of the first block
        assert_eq!(p[4 + 2], codes[16 + 2] | (codes[16 + 6] << 4));
        // padding rows hold the centre code (value 0)
        assert_eq!(p[4 * 5], 8 | (8 << 4));
        // scale of row 2, group 1
        let at = k * NR / 2 + (NR + 2) * 2;
        assert_eq!(
            half::f16::from_le_bytes([p[at], p[at + 1]]).to_f32(),
            scales[2 * 2 + 1]
        );
    }

    #[test]
    fn dense_panels_transpose_within_a_panel() {
        let raw: Vec<u8> = (0..2 * 3).map(|i| i as u8).collect();
        let p = pack_dense(&raw, 2, 3, 1);
        assert_eq!(&p[0..2], &[0, 3]);
        assert_eq!(&p[NR..NR + 2], &[1, 4]);
    }
}
