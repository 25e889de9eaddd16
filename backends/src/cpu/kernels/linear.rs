//! Linear layers and matrix products: weight formats as stored in the weights file, the
//! generic kernels every target has, and the dispatch to ISA-specific ones.

use super::{load_f32, store_f32};
use crate::cpu::kb::Kb;
use inkwell::values::{FloatValue, IntValue, PointerValue};
use llmc_ir::{DType, Group, QuantSpec, Zero};

/// How the rows of a `[rows, cols]` table are stored: the IR's canonical layouts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RowFormat {
    Dense(DType),
    Quant(QuantSpec),
}

/// How a linear kernel's weight is laid out in the weights file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum WeightLayout {
    /// `[N, K]` rows in the canonical layout of the format.
    Rows(RowFormat),
}

/// What the kernel does to activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActQuant {
    /// f32 activations (w8a16, w4a16, f32, f16 weights).
    F32,
}

/// `y [M, N] = x [M, K] · wᵀ + bias`: `[out, x, w, bias, m, n, k]` (bias 0 when absent);
/// x and y are f32; work items: ⌈N / COLS⌉ blocks of output columns.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LinearKernel {
    pub w: WeightLayout,
    pub act: ActQuant,
    pub bias: bool,
}

/// Output columns per work item.
pub const COLS: i64 = 16;

pub fn emit(kb: &mut Kb<'_, '_>, l: &LinearKernel, _isa: &super::Isa) {
    match &l.w {
        WeightLayout::Rows(f) => generic_rows(kb, f, l.bias),
    }
}

/// The generic kernel: one output column at a time, every token against the same weight row
/// while it is in cache.
fn generic_rows(kb: &mut Kb<'_, '_>, f: &RowFormat, bias: bool) {
    let (out, x, w, bp) = (kb.arg_ptr(0), kb.arg_ptr(1), kb.arg_ptr(2), kb.arg_ptr(3));
    let (m, n, k) = (kb.arg(4), kb.arg(5), kb.arg(6));
    let cols = kb.i64c(COLS);
    let lo = kb.mul(kb.begin(), cols);
    let hi = kb.imin(kb.mul(kb.end(), cols), n);
    let f = f.clone();
    kb.for_range(lo, hi, 1, |kb, col| {
        let zero = kb.i64c(0);
        let bv = if bias {
            kb.load_f32(bp, col)
        } else {
            kb.f32c(0.0)
        };
        let f = f.clone();
        kb.for_range(zero, m, 1, |kb, row| {
            let xrow = kb.mul(row, k);
            let acc = kb.var(kb.f32c(0.0));
            match &f {
                RowFormat::Dense(dt) => {
                    let wrow = kb.mul(col, k);
                    let z = kb.i64c(0);
                    kb.for_range(z, k, 1, |kb, j| {
                        let xv = kb.load_f32(x, kb.add(xrow, j));
                        let wv = load_f32(kb, *dt, w, kb.add(wrow, j));
                        let a = kb.getf(acc);
                        kb.set(acc, kb.fma(xv, wv, a));
                    });
                }
                RowFormat::Quant(q) => {
                    decode_row(kb, &RowFormat::Quant(*q), w, col, k, n, |kb, j, wv| {
                        let xv = kb.load_f32(x, kb.add(xrow, j));
                        let a = kb.getf(acc);
                        kb.set(acc, kb.fma(xv, wv, a));
                    });
                }
            }
            let v = kb.fadd(kb.getf(acc), bv);
            kb.store(out, kb.add(kb.mul(row, n), col), v);
        });
    });
}

/// Calls `each(kb, col, value)` for every element of row `row` of a `[rows, cols]` table.
pub fn decode_row<'ctx>(
    kb: &mut Kb<'_, 'ctx>,
    f: &RowFormat,
    base: PointerValue<'ctx>,
    row: IntValue<'ctx>,
    cols: IntValue<'ctx>,
    rows: IntValue<'ctx>,
    mut each: impl FnMut(&mut Kb<'_, 'ctx>, IntValue<'ctx>, FloatValue<'ctx>),
) {
    let zero = kb.i64c(0);
    match f {
        RowFormat::Dense(dt) => {
            let start = kb.mul(row, cols);
            let dt = *dt;
            kb.for_range(zero, cols, 1, |kb, c| {
                let v = load_f32(kb, dt, base, kb.add(start, c));
                each(kb, c, v)
            });
        }
        RowFormat::Quant(q) => {
            let q = *q;
            let bits = q.bits as i64;
            // bytes of one row of codes, of all codes, and the group count per row
            let row_bytes = kb.sdiv(kb.add(kb.mul(cols, kb.i64c(bits)), kb.i64c(7)), kb.i64c(8));
            let codes_len = kb.mul(rows, row_bytes);
            let (gpr, gsize) = match q.group {
                Group::Size(g) => (
                    kb.sdiv(kb.add(cols, kb.i64c(g as i64 - 1)), kb.i64c(g as i64)),
                    kb.i64c(g as i64),
                ),
                _ => (kb.i64c(1), cols),
            };
            let ngroups = match q.group {
                Group::Tensor => kb.i64c(1),
                _ => kb.mul(rows, gpr),
            };
            let ssz = q.scale.size() as i64;
            let scales = kb.gep(kb.i8t().into(), base, codes_len);
            let zeros = kb.gep(kb.i8t().into(), scales, kb.mul(ngroups, kb.i64c(ssz)));
            let row_codes = kb.mul(row, row_bytes);
            let center = kb.f32c((1u32 << (q.bits - 1)) as f32);
            kb.for_range(zero, cols, 1, |kb, c| {
                let bit = kb.mul(c, kb.i64c(bits));
                let byte = kb.add(
                    row_codes,
                    kb.b.build_right_shift(bit, kb.i64c(3), false, "")
                        .expect("shr"),
                );
                let shift = kb.b.build_and(bit, kb.i64c(7), "").expect("and");
                let lo = kb.zext(
                    kb.load(kb.i8t().into(), base, byte).into_int_value(),
                    kb.i64t(),
                );
                let word = if 8 % bits == 0 {
                    lo
                } else {
                    // codes that straddle a byte boundary read the next byte too
                    let hi = kb.zext(
                        kb.load(kb.i8t().into(), base, kb.add(byte, kb.i64c(1)))
                            .into_int_value(),
                        kb.i64t(),
                    );
                    kb.b.build_or(
                        lo,
                        kb.b.build_left_shift(hi, kb.i64c(8), "").expect("shl"),
                        "",
                    )
                    .expect("or")
                };
                let code =
                    kb.b.build_and(
                        kb.b.build_right_shift(word, shift, false, "").expect("shr"),
                        kb.i64c((1 << bits) - 1),
                        "",
                    )
                    .expect("and");
                let u = kb.si_to_f32(code);
                let g = match q.group {
                    Group::Tensor => kb.i64c(0),
                    Group::Channel => row,
                    Group::Size(_) => kb.add(kb.mul(row, gpr), kb.sdiv(c, gsize)),
                };
                let s = load_f32(kb, q.scale, scales, g);
                let v = match q.zero {
                    Zero::Symmetric => kb.fmul(s, kb.fsub(u, center)),
                    Zero::Int => {
                        let z = kb.si_to_f32(kb.zext(
                            kb.load(kb.i8t().into(), zeros, g).into_int_value(),
                            kb.i64t(),
                        ));
                        kb.fmul(s, kb.fsub(u, z))
                    }
                    Zero::Float => {
                        let mn = load_f32(kb, q.scale, zeros, g);
                        kb.fma(s, u, mn)
                    }
                };
                each(kb, c, v)
            });
        }
    }
}

/// Batched f32 matmul: `[out, a, b, batch, m, n, k, a batch stride, b batch stride]`;
/// work items: batch·m rows of the output.
pub fn matmul(kb: &mut Kb<'_, '_>) {
    let (out, a, b) = (kb.arg_ptr(0), kb.arg_ptr(1), kb.arg_ptr(2));
    let (m, n, k, abs, bbs) = (kb.arg(4), kb.arg(5), kb.arg(6), kb.arg(7), kb.arg(8));
    let (beg, end) = (kb.begin(), kb.end());
    kb.for_range(beg, end, 1, |kb, r| {
        let bi = kb.sdiv(r, m);
        let i = kb.srem(r, m);
        let arow = kb.add(kb.mul(bi, abs), kb.mul(i, k));
        let bbase = kb.mul(bi, bbs);
        let orow = kb.mul(r, n);
        let zero = kb.i64c(0);
        kb.for_range(zero, n, 1, |kb, j| {
            kb.store(out, kb.add(orow, j), kb.f32c(0.0))
        });
        kb.for_range(zero, k, 1, |kb, kk| {
            let av = kb.load_f32(a, kb.add(arow, kk));
            let brow = kb.add(bbase, kb.mul(kk, n));
            kb.for_range(zero, n, 1, |kb, j| {
                let o = kb.add(orow, j);
                let cur = kb.load_f32(out, o);
                let bv = kb.load_f32(b, kb.add(brow, j));
                kb.store(out, o, kb.fma(av, bv, cur));
            });
        });
    });
    let _ = store_f32;
}
