//! int8 activations against Mmla quantized panels: 2×2 tiles of 8-byte products
//! ([`VectorIsa::smmla`]), two tokens at a time.

use super::quant::enter_quant_panel;
use super::{arg, store_row, LinearKernel, V};
use crate::cpu::isa::VectorIsa;
use crate::cpu::kb::{Kb, Var};
use crate::cpu::pack::NR;
use inkwell::values::{BasicValue, IntValue, PointerValue, VectorValue};
use inkwell::IntPredicate;
use llmc_ir::{QuantSpec, Zero};

/// A group's contribution to the f32 accumulator from its integer dot products `dint`
/// (codes stored minus `offset`): `s·(D − zz·Σxq)` with the subtraction done exactly in i32
/// (`sym`, `asym`), or `s·D + m·Σxq` (`min`).
#[allow(clippy::too_many_arguments)]
pub(super) fn group_epilogue<'ctx>(
    v: &V<'_, '_, 'ctx>,
    q: &QuantSpec,
    w: PointerValue<'ctx>,
    zoff: IntValue<'ctx>,
    gi: IntValue<'ctx>,
    vx: &dyn VectorIsa,
    s: VectorValue<'ctx>,
    dint: VectorValue<'ctx>,
    xs: IntValue<'ctx>,
    offset: u8,
    cur: VectorValue<'ctx>,
) -> VectorValue<'ctx> {
    let kb = v.kb;
    let nr = NR as u32;
    let splat_i = |x: IntValue<'ctx>| v.splat(x.into(), nr);
    let with_offset = |d: VectorValue<'ctx>| {
        if offset == 0 {
            d
        } else {
            kb.b.build_int_add(
                d,
                splat_i(
                    kb.b.build_int_mul(xs, kb.i32c(offset as i32), "")
                        .expect("mul"),
                ),
                "",
            )
            .expect("add")
        }
    };
    match q.zero {
        Zero::Symmetric => {
            let c = (offset as i32) - (1i32 << (q.bits - 1));
            let di =
                kb.b.build_int_add(
                    dint,
                    splat_i(kb.b.build_int_mul(xs, kb.i32c(c), "").expect("mul")),
                    "",
                )
                .expect("add");
            v.fma(s, v.sitofp(di, nr), cur)
        }
        Zero::Int => {
            let z = v.load_vec(
                kb.i8t().into(),
                nr,
                w,
                kb.add(zoff, kb.mul(gi, kb.i64c(NR as i64))),
            );
            let z = kb.b.build_int_z_extend(z, v.i32v(nr), "").expect("zext");
            let di =
                kb.b.build_int_sub(
                    with_offset(dint),
                    kb.b.build_int_mul(z, splat_i(xs), "").expect("mul"),
                    "",
                )
                .expect("sub");
            v.fma(s, v.sitofp(di, nr), cur)
        }
        Zero::Float => {
            let off = kb.add(zoff, kb.mul(gi, kb.i64c((NR * q.scale.size()) as i64)));
            let m = v.load_floats(q.scale, w, off, vx);
            let xsf = v.splat(
                kb.b.build_signed_int_to_float(xs, kb.f32t(), "")
                    .expect("sitofp")
                    .into(),
                nr,
            );
            v.fma(m, xsf, v.fma(s, v.sitofp(with_offset(dint), nr), cur))
        }
    }
}

/// int8 activations against Mmla panels with `smmla`: two tokens × two rows × 8 k per
/// instruction; an odd last token pairs with itself.
pub(super) fn mmla(
    kb: &mut Kb<'_, '_>,
    l: &LinearKernel,
    vx: &dyn VectorIsa,
    q: QuantSpec,
    offset: u8,
) {
    let (out, bias) = (kb.arg_ptr(arg::OUT), kb.arg_ptr(arg::BIAS));
    let (x, w, m, n, k) = (
        kb.arg_ptr(arg::X),
        kb.arg_ptr(arg::W),
        kb.arg(arg::M),
        kb.arg(arg::N),
        kb.arg(arg::K),
    );
    let (sx, xqsum) = (kb.arg_ptr(arg::SX), kb.arg_ptr(arg::XQSUM));
    let (beg, end) = (kb.begin(), kb.end());
    let has_bias = l.bias;
    let step: i64 = if q.bits == 4 { 16 } else { 8 };
    kb.for_range(beg, end, 1, |kb, p| {
        let (start, soff, zoff, g) = enter_quant_panel(kb, &q, w, p, k);
        let groups = kb.sdiv(k, g);
        let col0 = kb.mul(p, kb.i64c(NR as i64));
        let zero = kb.i64c(0);
        kb.for_range(zero, m, 2, |kb, m0| {
            let v = V { kb };
            // the pair's second token: the next one, or the same one again at the end
            let m1 = kb.imin(kb.add(m0, kb.i64c(1)), kb.sub(m, kb.i64c(1)));
            let accf: Vec<Var> = (0..2).map(|_| kb.var(v.zero_f(NR as u32))).collect();
            let acc4: Vec<Var> = (0..NR / 2)
                .map(|_| kb.var(kb.i32t().vec_type(4).const_zero()))
                .collect();
            let gz = kb.i64c(0);
            kb.for_range(gz, groups, 1, |kb, gi| {
                for a in &acc4 {
                    kb.set(*a, kb.i32t().vec_type(4).const_zero());
                }
                let kg0 = kb.mul(gi, g);
                let kg1 = kb.add(kg0, g);
                kb.for_range(kg0, kg1, step, |kb, k0| {
                    let v = V { kb };
                    let halves: Vec<i64> = if q.bits == 4 { vec![0, 8] } else { vec![0] };
                    // block bytes: NR/2 pairs × 16
                    let boff = kb.add(
                        start,
                        kb.mul(kb.sdiv(k0, kb.i64c(step)), kb.i64c((NR * 8) as i64)),
                    );
                    let blk = v.load_vec(kb.i8t().into(), (NR * 8) as u32, w, boff);
                    for (hi, &kofs) in halves.iter().enumerate() {
                        let codes = if q.bits == 4 {
                            if hi == 0 {
                                v.and(blk, v.const_i8(0x0f, (NR * 8) as u32))
                            } else {
                                v.lshr(blk, v.const_i8(4, (NR * 8) as u32))
                            }
                        } else {
                            blk
                        };
                        // A: 8 bytes of each token
                        let a =
                            kb.concat(load8(kb, x, m0, k, k0, kofs), load8(kb, x, m1, k, k0, kofs));
                        for (pi, acc) in acc4.iter().enumerate() {
                            let v = V { kb };
                            let b = v.shuffle(
                                codes,
                                &((pi * 16) as u32..(pi * 16 + 16) as u32).collect::<Vec<_>>(),
                            );
                            let cur = kb.get(*acc).into_vector_value();
                            let r = vx.smmla(kb, cur, a, b);
                            kb.set(*acc, r);
                        }
                    }
                });
                // acc4[pi] = [t0·r(2pi), t0·r(2pi+1), t1·r(2pi), t1·r(2pi+1)]: gather the two tokens' 16 lanes
                let v = V { kb };
                let parts: Vec<VectorValue> = acc4
                    .iter()
                    .map(|a| kb.get(*a).into_vector_value())
                    .collect();
                let all = kb.concat_all(parts);
                let t0: Vec<u32> = (0..NR as u32 / 2)
                    .flat_map(|pi| [4 * pi, 4 * pi + 1])
                    .collect();
                let t1: Vec<u32> = (0..NR as u32 / 2)
                    .flat_map(|pi| [4 * pi + 2, 4 * pi + 3])
                    .collect();
                let d = [v.shuffle(all, &t0), v.shuffle(all, &t1)];
                let s = v.load_floats(
                    q.scale,
                    w,
                    kb.add(soff, kb.mul(gi, kb.i64c((NR * q.scale.size()) as i64))),
                    vx,
                );
                for (ti, row) in [m0, m1].into_iter().enumerate() {
                    let v = V { kb };
                    let xs = kb
                        .load(kb.i32t().into(), xqsum, kb.add(kb.mul(row, groups), gi))
                        .into_int_value();
                    let cur = kb.get(accf[ti]).into_vector_value();
                    let nv = group_epilogue(&v, &q, w, zoff, gi, vx, s, d[ti], xs, offset, cur);
                    kb.set(accf[ti], nv);
                }
            });
            let left = kb.sub(n, col0);
            let full = kb.icmp(IntPredicate::SGE, left, kb.i64c(NR as i64));
            // the second token is stored only when it is a real one
            let two = kb.icmp(IntPredicate::NE, m1, m0);
            for (ti, row) in [m0, m1].into_iter().enumerate() {
                let v = V { kb };
                let sxv = v.splat(kb.load_f32(sx, row).into(), NR as u32);
                let mut r = v.fmul(kb.get(accf[ti]).into_vector_value(), sxv);
                if has_bias {
                    r = v.fadd(
                        r,
                        v.load_vec(kb.f32t().into(), NR as u32, bias, kb.mul(col0, kb.i64c(4))),
                    );
                }
                let rv = kb.var(r);
                let base = kb.add(kb.mul(row, n), col0);
                if ti == 0 {
                    store_row(kb, out, base, left, full, rv);
                } else {
                    kb.if_then(two, |kb| store_row(kb, out, base, left, full, rv));
                }
            }
        });
    });
}

/// 8 activation bytes of token `row` at k `k0 + kofs`.
pub(super) fn load8<'ctx>(
    kb: &Kb<'_, 'ctx>,
    x: PointerValue<'ctx>,
    row: IntValue<'ctx>,
    k: IntValue<'ctx>,
    k0: IntValue<'ctx>,
    kofs: i64,
) -> VectorValue<'ctx> {
    let off = kb.add(kb.add(kb.mul(row, k), k0), kb.i64c(kofs));
    let p = kb.gep(kb.i8t().into(), x, off);
    let l = kb.b.build_load(kb.i8t().vec_type(8), p, "").expect("load");
    let _ = l.as_instruction_value().map(|i| i.set_alignment(1));
    l.into_vector_value()
}
