//! int8 activations against Dot4 quantized panels: 4-byte integer dot products per group
//! ([`VectorIsa::dot4`]), then the group's scale and zero.

use super::quant::enter_quant_panel;
use super::{arg, V};
use crate::cpu::isa::{Codes, VectorIsa};
use crate::cpu::kb::{Kb, Var};
use crate::cpu::pack::NR;
use inkwell::values::{BasicValue, IntValue, PointerValue, VectorValue};
use llmc_ir::{Group, QuantSpec, Zero};

/// What a group's integer dot product starts from so that it ends as `D_u − zz·Σxq` (`sym`,
/// `asym`) or `D_u` (`min`), for codes stored as `u − offset`.
pub(super) fn correction<'ctx>(
    v: &V<'_, '_, 'ctx>,
    q: &QuantSpec,
    w: PointerValue<'ctx>,
    zoff: IntValue<'ctx>,
    gi: IntValue<'ctx>,
    xs: IntValue<'ctx>,
    offset: u8,
) -> VectorValue<'ctx> {
    let kb = v.kb;
    let nr = NR as u32;
    let splat_i = |x: IntValue<'ctx>| v.splat(x.into(), nr);
    let mul = |a: IntValue<'ctx>, c: i32| kb.b.build_int_mul(a, kb.i32c(c), "").expect("mul");
    match q.zero {
        Zero::Symmetric => splat_i(mul(xs, offset as i32 - (1i32 << (q.bits - 1)))),
        Zero::Int => {
            let z = v.load_vec(
                kb.i8t().into(),
                nr,
                w,
                kb.add(zoff, kb.mul(gi, kb.i64c(NR as i64))),
            );
            let z = kb.b.build_int_z_extend(z, v.i32v(nr), "").expect("zext");
            let zx = kb.b.build_int_mul(z, splat_i(xs), "").expect("mul");
            kb.b.build_int_sub(splat_i(mul(xs, offset as i32)), zx, "")
                .expect("sub")
        }
        Zero::Float => splat_i(mul(xs, offset as i32)),
    }
}

/// int8 activations against Dot4 panels: integer dot products per group, then
/// `acc += s·(D − zz·Σxq)` (or `s·D + m·Σxq`), scaled by the row's activation scale.
pub(super) fn dot4_tile<'ctx>(
    kb: &mut Kb<'_, 'ctx>,
    q: &QuantSpec,
    offset: u8,
    vx: &dyn VectorIsa,
    p: IntValue<'ctx>,
    m0: IntValue<'ctx>,
    acc: &[Var<'ctx>],
) {
    let (x, w, k) = (kb.arg_ptr(arg::X), kb.arg_ptr(arg::W), kb.arg(arg::K));
    let (sx, xqsum) = (kb.arg_ptr(arg::SX), kb.arg_ptr(arg::XQSUM));
    let (start, soff, zoff, g) = enter_quant_panel(kb, q, w, p, k);
    let nr = NR as u32;
    let groups = kb.sdiv(k, g);
    let step: i64 = if q.bits == 4 { 8 } else { 4 };
    let zero = kb.i64c(0);
    let q = *q;
    let kind = if offset != 0 {
        Codes::S8
    } else if q.bits == 4 {
        Codes::U4
    } else {
        Codes::U8
    };
    let v0 = V { kb };
    // one token per tile (decode) would wait on a single accumulator's latency: give it two
    // chains, the nibble halves (4-bit) or alternate blocks (8-bit)
    let chains = if acc.len() == 1 { 2 } else { 1 };
    let unroll: i64 = if chains == 2 && q.bits == 8 { 2 } else { 1 };
    let acci: Vec<Vec<Var<'ctx>>> = acc
        .iter()
        .map(|_| (0..chains).map(|_| kb.var(v0.zero_i(nr))).collect())
        .collect();
    kb.for_range(zero, groups, 1, |kb, gi| {
        let v = V { kb };
        // each row's first chain starts at the group's zero-point correction
        for (r, a) in acci.iter().enumerate() {
            let row = kb.add(m0, kb.i64c(r as i64));
            let xs = kb
                .load(kb.i32t().into(), xqsum, kb.add(kb.mul(row, groups), gi))
                .into_int_value();
            let corr = correction(&v, &q, w, zoff, gi, xs, offset);
            kb.set(a[0], corr);
            for c in &a[1..] {
                kb.set(*c, v.zero_i(nr));
            }
        }
        let kg0 = kb.mul(gi, g);
        let kg1 = kb.add(kg0, g);
        let gl = match q.group {
            Group::Size(gs) => gs as i64,
            _ => 0,
        };
        // 8-bit blocks alternate chains two at a time when the group allows it
        let unroll = if unroll == 2 && (gl == 0 || gl % (2 * step) == 0) {
            2
        } else {
            1
        };
        kb.for_range(kg0, kg1, step * unroll, |kb, kb0| {
            for u in 0..unroll {
                let v = V { kb };
                let k0 = kb.add(kb0, kb.i64c(u * step));
                let boff = kb.add(start, kb.mul(kb.sdiv(k0, kb.i64c(step)), kb.i64c(64)));
                let bytes = v.load_vec(kb.i8t().into(), 64, w, boff);
                let parts: Vec<(VectorValue, i64)> = if q.bits == 4 {
                    let lo = v.and(bytes, v.const_i8(0x0f, 64));
                    let hi = v.lshr(bytes, v.const_i8(4, 64));
                    vec![(lo, 0), (hi, 4)]
                } else {
                    vec![(bytes, 0)]
                };
                for (h, (codes, kofs)) in parts.into_iter().enumerate() {
                    let chain = (u as usize + h) % chains;
                    for (r, a) in acci.iter().enumerate() {
                        let v = V { kb };
                        // 4 activation bytes of this token, broadcast to every lane
                        let xi = kb.add(
                            kb.add(kb.mul(kb.add(m0, kb.i64c(r as i64)), k), k0),
                            kb.i64c(kofs),
                        );
                        let xp = kb.gep(kb.i8t().into(), x, xi);
                        let x4 = kb.b.build_load(kb.i32t(), xp, "").expect("load");
                        let _ = x4.as_instruction_value().map(|i| i.set_alignment(1));
                        let xb = v.bitcast(v.splat(x4, nr), kb.i8t().vec_type(64));
                        let cur = kb.get(a[chain]).into_vector_value();
                        let nv = vx.dot4(kb, cur, codes, xb, kind, chain == 1);
                        kb.set(a[chain], nv);
                    }
                }
            }
        });
        let v = V { kb };
        let s = v.load_floats(
            q.scale,
            w,
            kb.add(soff, kb.mul(gi, kb.i64c((NR * q.scale.size()) as i64))),
            vx,
        );
        let m = match q.zero {
            Zero::Float => Some(v.load_floats(
                q.scale,
                w,
                kb.add(zoff, kb.mul(gi, kb.i64c((NR * q.scale.size()) as i64))),
                vx,
            )),
            _ => None,
        };
        for (r, (a, ai)) in acc.iter().zip(&acci).enumerate() {
            let v = V { kb };
            let mut d = kb.get(ai[0]).into_vector_value();
            for c in &ai[1..] {
                d =
                    kb.b.build_int_add(d, kb.get(*c).into_vector_value(), "")
                        .expect("add");
            }
            let cur = kb.get(*a).into_vector_value();
            let mut nv = v.fma(s, v.sitofp(d, nr), cur);
            if let Some(m) = m {
                let row = kb.add(m0, kb.i64c(r as i64));
                let xs = kb
                    .load(kb.i32t().into(), xqsum, kb.add(kb.mul(row, groups), gi))
                    .into_int_value();
                let xsf = v.splat(
                    kb.b.build_signed_int_to_float(xs, kb.f32t(), "")
                        .expect("sitofp")
                        .into(),
                    nr,
                );
                nv = v.fma(m, xsf, nv);
            }
            kb.set(*a, nv);
        }
    });
    for (r, a) in acc.iter().enumerate() {
        let v = V { kb };
        let row = kb.add(m0, kb.i64c(r as i64));
        let sxv = v.splat(kb.load_f32(sx, row).into(), nr);
        let cur = kb.get(*a).into_vector_value();
        kb.set(*a, v.fmul(cur, sxv));
    }
}
