//! Attention: grouped KV heads (a key/value row serves all its query heads at once), causal
//! masking with cached keys, an optional additive mask, and strided operands (keys and values
//! read straight from the KV cache).

use crate::cpu::kb::Kb;
use crate::cpu::math::{self, MathFn};
use inkwell::FloatPredicate;

/// Argument positions.
pub mod arg {
    pub const OUT: u32 = 0;
    pub const Q: u32 = 1;
    pub const K: u32 = 2;
    pub const V: u32 = 3;
    pub const MASK: u32 = 4;
    pub const B: u32 = 5;
    pub const H: u32 = 6;
    pub const HK: u32 = 7;
    pub const S: u32 = 8;
    pub const T: u32 = 9;
    pub const D: u32 = 10;
    pub const DV: u32 = 11;
    pub const SCALE: u32 = 12;
    /// Strides (in elements) of q, k, v and out over (batch, head, position): 3 each,
    /// then the mask's over (batch, head, query, key): 4.
    pub const Q_STRIDES: u32 = 13;
    pub const K_STRIDES: u32 = 16;
    pub const V_STRIDES: u32 = 19;
    pub const OUT_STRIDES: u32 = 22;
    pub const MASK_STRIDES: u32 = 25;
    pub const COUNT: usize = 29;
}

/// One work item is one query position `(b, kv head, i)` of `B·Hkv·S`, for all the query heads
/// that share the KV head: each key and value row is read once for the group. Three passes
/// over the keys: scores (and their maximum), exponentials (vectorized across keys), then the
/// weighted sum of values.
pub fn emit(kb: &mut Kb<'_, '_>, causal: bool, has_mask: bool) {
    let (out, q, k, v, mask) = (
        kb.arg_ptr(arg::OUT),
        kb.arg_ptr(arg::Q),
        kb.arg_ptr(arg::K),
        kb.arg_ptr(arg::V),
        kb.arg_ptr(arg::MASK),
    );
    let (h, hk, s, t, d, dv) = (
        kb.arg(arg::H),
        kb.arg(arg::HK),
        kb.arg(arg::S),
        kb.arg(arg::T),
        kb.arg(arg::D),
        kb.arg(arg::DV),
    );
    let scale = kb.arg_f32(arg::SCALE);
    let (qs, ks, vs, os) = (
        strides3(kb, arg::Q_STRIDES),
        strides3(kb, arg::K_STRIDES),
        strides3(kb, arg::V_STRIDES),
        strides3(kb, arg::OUT_STRIDES),
    );
    let ms = [
        kb.arg(arg::MASK_STRIDES),
        kb.arg(arg::MASK_STRIDES + 1),
        kb.arg(arg::MASK_STRIDES + 2),
        kb.arg(arg::MASK_STRIDES + 3),
    ];
    let group = kb.sdiv(h, hk);
    // per work item: scores [group, T], accumulators [group, Dv], maxima and sums [group]
    let scores =
        kb.b.build_array_alloca(kb.f32t(), kb.mul(group, kb.imax(t, kb.i64c(1))), "scores")
            .expect("alloca");
    let acc =
        kb.b.build_array_alloca(kb.f32t(), kb.mul(group, dv), "acc")
            .expect("alloca");
    let maxes =
        kb.b.build_array_alloca(kb.f32t(), group, "max")
            .expect("alloca");
    let sums =
        kb.b.build_array_alloca(kb.f32t(), group, "sum")
            .expect("alloca");
    let (beg, end) = (kb.begin(), kb.end());
    kb.for_range(beg, end, 1, |kb, item| {
        let i = kb.srem(item, s);
        let bkh = kb.sdiv(item, s);
        let kh = kb.srem(bkh, hk);
        let bi = kb.sdiv(bkh, hk);
        let ko = kb.add(kb.mul(bi, ks[0]), kb.mul(kh, ks[1]));
        let vo = kb.add(kb.mul(bi, vs[0]), kb.mul(kh, vs[1]));
        // keys this query sees: all, or up to its own position counted after the cached ones
        let limit = if causal {
            kb.imin(kb.add(kb.add(i, kb.sub(t, s)), kb.i64c(1)), t)
        } else {
            t
        };
        let zero = kb.i64c(0);
        let head0 = kb.mul(kh, group);
        kb.for_range(zero, group, 1, |kb, g| {
            kb.store(maxes, g, kb.f32c(f32::NEG_INFINITY))
        });
        // pass 1: scores and their maximum per head
        kb.for_range(zero, limit, 1, |kb, j| {
            let krow = kb.add(ko, kb.mul(j, ks[2]));
            kb.for_range(zero, group, 1, |kb, g| {
                let hi = kb.add(head0, g);
                let qo = kb.add(
                    kb.add(kb.mul(bi, qs[0]), kb.mul(hi, qs[1])),
                    kb.mul(i, qs[2]),
                );
                let dot = kb.var(kb.f32c(0.0));
                kb.for_range(zero, d, 1, |kb, c| {
                    let a = kb.load_f32(q, kb.add(qo, c));
                    let bb = kb.load_f32(k, kb.add(krow, c));
                    let cur = kb.getf(dot);
                    kb.set(dot, kb.fma(a, bb, cur));
                });
                let mut sc = kb.fmul(kb.getf(dot), scale);
                if has_mask {
                    let mo = kb.add(
                        kb.add(kb.mul(bi, ms[0]), kb.mul(hi, ms[1])),
                        kb.mul(i, ms[2]),
                    );
                    sc = kb.fadd(sc, kb.load_f32(mask, kb.add(mo, kb.mul(j, ms[3]))));
                }
                kb.store(scores, kb.add(kb.mul(g, t), j), sc);
                let m = kb.load_f32(maxes, g);
                kb.store(maxes, g, kb.fmax(m, sc));
            });
        });
        // pass 2: exponentials and their sum (a head whose keys are all masked gets zeros)
        kb.for_range(zero, group, 1, |kb, g| {
            let m = kb.load_f32(maxes, g);
            let dead = kb.fcmp(FloatPredicate::OEQ, m, kb.f32c(f32::NEG_INFINITY));
            let m = kb.select(dead, kb.f32c(0.0), m).into_float_value();
            let row = kb.mul(g, t);
            let sum = kb.var(kb.f32c(0.0));
            kb.for_range(zero, limit, 1, |kb, j| {
                let at = kb.add(row, j);
                let e = math::call(kb, MathFn::Exp, kb.fsub(kb.load_f32(scores, at), m));
                kb.store(scores, at, e);
                let cur = kb.getf(sum);
                kb.set(sum, kb.fadd(cur, e));
            });
            kb.store(sums, g, kb.getf(sum));
            let arow = kb.mul(g, dv);
            kb.for_range(zero, dv, 1, |kb, c| {
                kb.store(acc, kb.add(arow, c), kb.f32c(0.0))
            });
        });
        // pass 3: Σ p·v, each value row read once for the group
        kb.for_range(zero, limit, 1, |kb, j| {
            let vrow = kb.add(vo, kb.mul(j, vs[2]));
            kb.for_range(zero, group, 1, |kb, g| {
                let p = kb.load_f32(scores, kb.add(kb.mul(g, t), j));
                let arow = kb.mul(g, dv);
                kb.for_range(zero, dv, 1, |kb, c| {
                    let at = kb.add(arow, c);
                    let cur = kb.load_f32(acc, at);
                    let vv = kb.load_f32(v, kb.add(vrow, c));
                    kb.store(acc, at, kb.fma(p, vv, cur));
                });
            });
        });
        kb.for_range(zero, group, 1, |kb, g| {
            let hi = kb.add(head0, g);
            let oo = kb.add(
                kb.add(kb.mul(bi, os[0]), kb.mul(hi, os[1])),
                kb.mul(i, os[2]),
            );
            let l = kb.load_f32(sums, g);
            let empty = kb.fcmp(FloatPredicate::OEQ, l, kb.f32c(0.0));
            let inv = kb
                .select(empty, kb.f32c(0.0), kb.fdiv(kb.f32c(1.0), l))
                .into_float_value();
            let arow = kb.mul(g, dv);
            kb.for_range(zero, dv, 1, |kb, c| {
                let a = kb.load_f32(acc, kb.add(arow, c));
                kb.store(out, kb.add(oo, c), kb.fmul(a, inv));
            });
        });
    });
}

fn strides3<'ctx>(kb: &Kb<'_, 'ctx>, base: u32) -> [inkwell::values::IntValue<'ctx>; 3] {
    [kb.arg(base), kb.arg(base + 1), kb.arg(base + 2)]
}
