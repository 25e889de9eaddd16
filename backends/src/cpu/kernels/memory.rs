//! Kernels that move data: strided copies, fills, ranges, and row gathers from (possibly
//! quantized) tables.

use super::linear::{decode_row, RowFormat};
use super::{load_i64, store_f32, COPY_RANK};
use crate::cpu::kb::Kb;
use inkwell::types::BasicTypeEnum;
use inkwell::IntPredicate;
use llmc_ir::DType;

/// `[dst, src, d0..d5, src strides, dst strides]`; work items: d0·…·d4.
pub fn copy(kb: &mut Kb<'_, '_>, bytes: u8) {
    let ty: BasicTypeEnum = int_bytes(kb, bytes).into();
    let (dst, src) = (kb.arg_ptr(0), kb.arg_ptr(1));
    let r = COPY_RANK as u32;
    let d: Vec<_> = (0..r).map(|i| kb.arg(2 + i)).collect();
    let ss: Vec<_> = (0..r).map(|i| kb.arg(2 + r + i)).collect();
    let ds: Vec<_> = (0..r).map(|i| kb.arg(2 + 2 * r + i)).collect();
    let (b, e) = (kb.begin(), kb.end());
    kb.for_range(b, e, 1, |kb, row| {
        // split the row index into the outer coordinates
        let mut rem = row;
        let mut so = kb.i64c(0);
        let mut dofs = kb.i64c(0);
        for k in (0..r as usize - 1).rev() {
            let c = kb.srem(rem, d[k]);
            rem = kb.sdiv(rem, d[k]);
            so = kb.add(so, kb.mul(c, ss[k]));
            dofs = kb.add(dofs, kb.mul(c, ds[k]));
        }
        let inner = d[r as usize - 1];
        let (s5, d5) = (ss[r as usize - 1], ds[r as usize - 1]);
        let zero = kb.i64c(0);
        kb.for_range(zero, inner, 1, |kb, j| {
            let v = kb.load(ty, src, kb.add(so, kb.mul(j, s5)));
            kb.store(dst, kb.add(dofs, kb.mul(j, d5)), v);
        });
    });
}

/// `[out, value, n]`; work items: ⌈n / CHUNK⌉.
pub fn fill(kb: &mut Kb<'_, '_>, bytes: u8) {
    let ty = int_bytes(kb, bytes);
    let (out, n) = (kb.arg_ptr(0), kb.arg(2));
    let v = kb.trunc_or_same(kb.arg(1), ty);
    let (lo, hi) = chunk_range(kb, n);
    kb.for_range(lo, hi, 1, |kb, i| kb.store(out, i, v));
}

/// `[out, start, delta, n]`: integers, or for float ranges the f64 bits of start and delta
/// (element `i` is `start + i·delta` rounded once to f32, as the interpreter computes it).
pub fn range(kb: &mut Kb<'_, '_>, dtype: DType) {
    let (out, n) = (kb.arg_ptr(0), kb.arg(3));
    let zero = kb.i64c(0);
    if dtype.is_float() {
        let f64t = kb.cx.f64_type();
        let s = kb.b.build_bit_cast(kb.arg(1), f64t, "").expect("bitcast");
        let d = kb.b.build_bit_cast(kb.arg(2), f64t, "").expect("bitcast");
        let (s, d) = (s.into_float_value(), d.into_float_value());
        kb.for_range(zero, n, 1, |kb, i| {
            let fi = kb.b.build_signed_int_to_float(i, f64t, "").expect("sitofp");
            let v = kb.b.build_float_mul(fi, d, "").expect("mul");
            let v = kb.b.build_float_add(s, v, "").expect("add");
            let v = kb.b.build_float_trunc(v, kb.f32t(), "").expect("fptrunc");
            store_f32(kb, dtype, out, i, v);
        });
    } else {
        let (s, d) = (kb.arg(1), kb.arg(2));
        kb.for_range(zero, n, 1, |kb, i| {
            let v = kb.add(s, kb.mul(i, d));
            super::store_i64(kb, dtype, out, i, v);
        });
    }
}

/// The items `[begin·CHUNK, min(end·CHUNK, n))` of a flat kernel.
pub fn chunk_range<'ctx>(
    kb: &Kb<'_, 'ctx>,
    n: inkwell::values::IntValue<'ctx>,
) -> (
    inkwell::values::IntValue<'ctx>,
    inkwell::values::IntValue<'ctx>,
) {
    let c = kb.i64c(super::CHUNK);
    let lo = kb.mul(kb.begin(), c);
    let hi = kb.imin(kb.mul(kb.end(), c), n);
    (lo, hi)
}

/// `[out, table, idx, n_idx, row_len, n_rows, status, outer]`: for each of `outer` blocks of
/// `n_rows` rows, the rows `idx` picks; work items: outer·n_idx.
pub fn gather(kb: &mut Kb<'_, '_>, table: &RowFormat, idx: DType, out_t: DType) {
    let (out, tab, ids) = (kb.arg_ptr(0), kb.arg_ptr(1), kb.arg_ptr(2));
    let (n_idx, row_len, n_rows, status) = (kb.arg(3), kb.arg(4), kb.arg(5), kb.arg_ptr(6));
    let (b, e) = (kb.begin(), kb.end());
    let table = table.clone();
    kb.for_range(b, e, 1, |kb, item| {
        let blk = kb.sdiv(item, n_idx);
        let i = kb.srem(item, n_idx);
        let j = load_i64(kb, idx, ids, i);
        let neg = kb.icmp(IntPredicate::SLT, j, kb.i64c(0));
        let j = kb.select(neg, kb.add(j, n_rows), j).into_int_value();
        let bad =
            kb.b.build_or(
                kb.icmp(IntPredicate::SLT, j, kb.i64c(0)),
                kb.icmp(IntPredicate::SGE, j, n_rows),
                "",
            )
            .expect("or");
        let dst = kb.mul(item, row_len);
        let row = kb.add(kb.mul(blk, n_rows), j);
        let table = table.clone();
        kb.if_else(
            bad,
            |kb| {
                kb.store(status, kb.i64c(0), kb.i64c(1));
                let z = kb.i64c(0);
                kb.for_range(z, row_len, 1, |kb, c| {
                    store_f32(kb, out_t, out, kb.add(dst, c), kb.f32c(0.0))
                });
            },
            |kb| {
                if let RowFormat::Dense(dt) = table {
                    if dt == out_t {
                        // same type: copy the row's elements as they are
                        let ty = super::storage_type(kb, dt);
                        let src = kb.mul(row, row_len);
                        let z = kb.i64c(0);
                        kb.for_range(z, row_len, 1, |kb, c| {
                            let v = kb.load(ty, tab, kb.add(src, c));
                            kb.store(out, kb.add(dst, c), v);
                        });
                        return;
                    }
                }
                decode_row(kb, &table, tab, row, row_len, n_rows, |kb, c, v| {
                    store_f32(kb, out_t, out, kb.add(dst, c), v)
                });
            },
        );
    });
}

impl<'a, 'ctx> Kb<'a, 'ctx> {
    /// Truncates an i64 to a narrower integer type (or keeps it).
    pub fn trunc_or_same(
        &self,
        v: inkwell::values::IntValue<'ctx>,
        ty: inkwell::types::IntType<'ctx>,
    ) -> inkwell::values::IntValue<'ctx> {
        if ty.get_bit_width() == 64 {
            v
        } else {
            self.trunc(v, ty)
        }
    }
}

/// The integer type of `bytes` bytes.
fn int_bytes<'ctx>(kb: &Kb<'_, 'ctx>, bytes: u8) -> inkwell::types::IntType<'ctx> {
    match bytes {
        1 => kb.cx.i8_type(),
        2 => kb.cx.i16_type(),
        4 => kb.cx.i32_type(),
        _ => kb.cx.i64_type(),
    }
}
