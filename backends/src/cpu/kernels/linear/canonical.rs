//! The generic linear kernel over the canonical layouts of every encoding (one output
//! column at a time), and the row decoder that gathers share with it.

use super::quant::quant_panel_sizes;
use super::{RowFormat, COLS};
use crate::cpu::kb::Kb;
use crate::cpu::kernels::load_f32;
use crate::cpu::pack::{QLayout, NR};
use inkwell::values::{FloatValue, IntValue, PointerValue};
use inkwell::IntPredicate;
use llmc_ir::{Group, QuantSpec, Zero};

/// The generic kernel: one output column at a time, every token against the same weight row
/// while it is in cache.
pub(super) fn generic_rows(kb: &mut Kb<'_, '_>, f: &RowFormat, bias: bool) {
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
                other => {
                    decode_row(kb, other, w, col, k, n, |kb, j, wv| {
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

/// The value of code `u` of group `g`: its scale and zero (a zero point, a float offset, or
/// the code range's centre) at index `g` of `scales` and `zeros`.
pub(super) fn dequant<'ctx>(
    kb: &Kb<'_, 'ctx>,
    q: &QuantSpec,
    u: FloatValue<'ctx>,
    scales: PointerValue<'ctx>,
    zeros: PointerValue<'ctx>,
    g: IntValue<'ctx>,
) -> FloatValue<'ctx> {
    let s = load_f32(kb, q.scale, scales, g);
    match q.zero {
        Zero::Symmetric => kb.fmul(s, kb.fsub(u, kb.f32c((1u32 << (q.bits - 1)) as f32))),
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
    }
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
        RowFormat::PalettePanels => {
            // row r is lane r % NR of panel r / NR: its index for column c is nibble
            // (c % 8 ≥ 4) of byte 64 + (c / 8)·64 + 4·lane + c % 4, after the 16 f32 entries
            let nr = kb.i64c(NR as i64);
            let pb = kb.add(kb.i64c(64), kb.mul(cols, kb.i64c(NR as i64 / 2)));
            let start = kb.mul(kb.sdiv(row, nr), pb);
            let lane4 = kb.mul(kb.srem(row, nr), kb.i64c(4));
            kb.for_range(zero, cols, 1, |kb, c| {
                let blk = kb.mul(kb.sdiv(c, kb.i64c(8)), kb.i64c(64));
                let at = kb.add(
                    kb.add(kb.add(start, kb.i64c(64)), blk),
                    kb.add(lane4, kb.srem(c, kb.i64c(4))),
                );
                let byte = kb.zext(
                    kb.load(kb.i8t().into(), base, at).into_int_value(),
                    kb.i64t(),
                );
                let high = kb.icmp(IntPredicate::SGE, kb.srem(c, kb.i64c(8)), kb.i64c(4));
                let shift = kb.select(high, kb.i64c(4), kb.i64c(0)).into_int_value();
                let idx =
                    kb.b.build_and(
                        kb.b.build_right_shift(byte, shift, false, "").expect("shr"),
                        kb.i64c(15),
                        "",
                    )
                    .expect("and");
                let entry = kb.add(kb.sdiv(start, kb.i64c(4)), idx);
                let v = kb.load_f32(base, entry);
                each(kb, c, v)
            });
        }
        RowFormat::Panels(dt) => {
            // row r is lane r % NR of panel r / NR, its elements NR apart; a panel holds
            // cols·NR elements rounded up to 64 bytes
            let dt = *dt;
            let esz = dt.size() as i64;
            let nr = kb.i64c(NR as i64);
            let line = kb.i64c(64 / esz);
            let per_panel = kb.mul(
                kb.sdiv(kb.add(kb.mul(cols, nr), kb.i64c(64 / esz - 1)), line),
                line,
            );
            let start = kb.add(kb.mul(kb.sdiv(row, nr), per_panel), kb.srem(row, nr));
            kb.for_range(zero, cols, 1, |kb, c| {
                let v = load_f32(kb, dt, base, kb.add(start, kb.mul(c, nr)));
                each(kb, c, v)
            });
        }
        RowFormat::QuantPanels { q, layout, offset } => {
            // row r is lane j = r % NR of panel r / NR. Codes come in blocks of NR rows ×
            // `step` k: Dot4 puts lane j's 4 bytes at 4j, Mmla its 8 bytes at 16·(j/2) + 8·(j%2);
            // a 4-bit byte holds k t (low nibble) and t + step/2 (high). Then the scales and
            // zeros, [groups][NR] each.
            let (q, layout, offset) = (*q, *layout, *offset);
            let bits = q.bits as i64;
            let step: i64 = match (layout, q.bits) {
                (QLayout::Dot4, 4) => 8,
                (QLayout::Dot4, _) => 4,
                (QLayout::Mmla, 4) => 16,
                (QLayout::Mmla, _) => 8,
            };
            let nr = kb.i64c(NR as i64);
            let sz = quant_panel_sizes(kb, &q, cols);
            let gsize = sz.group;
            let (codes, pb) = (sz.codes, sz.panel);
            let zeros_at = kb.add(codes, sz.scales);
            let panel = kb.gep(kb.i8t().into(), base, kb.mul(kb.sdiv(row, nr), pb));
            let lane = kb.srem(row, nr);
            let lane_at = match layout {
                QLayout::Dot4 => kb.mul(lane, kb.i64c(4)),
                QLayout::Mmla => kb.add(
                    kb.mul(kb.sdiv(lane, kb.i64c(2)), kb.i64c(16)),
                    kb.mul(kb.srem(lane, kb.i64c(2)), kb.i64c(8)),
                ),
            };
            let block = kb.i64c(NR as i64 * step * bits / 8);
            let per_byte = if q.bits == 4 { step / 2 } else { step };
            let scales = kb.gep(kb.i8t().into(), panel, codes);
            let zeros = kb.gep(kb.i8t().into(), panel, zeros_at);
            kb.for_range(zero, cols, 1, |kb, c| {
                let t = kb.srem(c, kb.i64c(step));
                let at = kb.add(
                    kb.add(kb.mul(kb.sdiv(c, kb.i64c(step)), block), lane_at),
                    kb.srem(t, kb.i64c(per_byte)),
                );
                let byte = kb.zext(
                    kb.load(kb.i8t().into(), panel, at).into_int_value(),
                    kb.i64t(),
                );
                let code = if q.bits == 4 {
                    let high = kb.icmp(IntPredicate::SGE, t, kb.i64c(per_byte));
                    let shift = kb.select(high, kb.i64c(4), kb.i64c(0)).into_int_value();
                    kb.b.build_and(
                        kb.b.build_right_shift(byte, shift, false, "").expect("shr"),
                        kb.i64c(15),
                        "",
                    )
                    .expect("and")
                } else {
                    kb.b.build_and(kb.add(byte, kb.i64c(offset as i64)), kb.i64c(255), "")
                        .expect("and")
                };
                let u = kb.si_to_f32(code);
                let g = kb.add(kb.mul(kb.sdiv(c, gsize), nr), lane);
                let v = dequant(kb, &q, u, scales, zeros, g);
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
                    // Encoding::check_shape keeps row groups to palettes
                    Group::Rows(_) => unreachable!("quantization by row groups"),
                };
                let v = dequant(kb, &q, u, scales, zeros, g);
                each(kb, c, v)
            });
        }
    }
}
