//! int8 activations: each row (or group) quantized symmetrically with its scale and code
//! sums, as `act = i8_per_token` defines it.

use crate::cpu::isa::VectorIsa;
use crate::cpu::kb::Kb;

/// `[xq (i8 [M, K]), sx (f32 [M]), xqsum (i32 [M, K/g]), x (f32 [M, K]), m, k]`, or with
/// `fake`, `[out (f32 [M, K]), _, _, x, m, k]`: int8 quantization of each row as
/// `act = i8_per_token` defines it; work items: rows.
pub fn quantize_rows(kb: &mut Kb<'_, '_>, group: u32, fake: bool, vx: &dyn VectorIsa) {
    let (xq, sx, xqsum, x) = (kb.arg_ptr(0), kb.arg_ptr(1), kb.arg_ptr(2), kb.arg_ptr(3));
    let k = kb.arg(5);
    let (b, e) = (kb.begin(), kb.end());
    kb.for_range(b, e, 1, |kb, row| {
        let base = kb.mul(row, k);
        let zero = kb.i64c(0);
        let amax = kb.var(kb.f32c(0.0));
        kb.for_range(zero, k, 1, |kb, j| {
            let a = kb.fabs(kb.load_f32(x, kb.add(base, j)));
            let c = kb.getf(amax);
            // maxnum reductions vectorize (compare-and-select ones do not)
            kb.set(amax, kb.call_f32_intrinsic("llvm.maxnum", &[c, a]));
        });
        let am = kb.getf(amax);
        let is0 = kb.fcmp(inkwell::FloatPredicate::OEQ, am, kb.f32c(0.0));
        let inv = kb
            .select(
                is0,
                kb.f32c(0.0),
                kb.b.build_float_div(kb.f32c(127.0), am, "").expect("div"),
            )
            .into_float_value();
        let scale = kb.b.build_float_div(am, kb.f32c(127.0), "").expect("div");
        if fake {
            kb.for_range(zero, k, 1, |kb, j| {
                let q = vx.round_even(
                    kb,
                    kb.b.build_float_mul(kb.load_f32(x, kb.add(base, j)), inv, "")
                        .expect("mul"),
                );
                let v = kb.b.build_float_mul(q, scale, "").expect("mul");
                kb.store(xq, kb.add(base, j), v);
            });
        } else {
            kb.store(sx, row, scale);
            let g = if group == 0 { k } else { kb.i64c(group as i64) };
            let groups = kb.sdiv(k, g);
            kb.for_range(zero, groups, 1, |kb, gi| {
                let sum = kb.var(kb.i32c(0));
                let g0 = kb.mul(gi, g);
                let g1 = kb.add(g0, g);
                kb.for_range(g0, g1, 1, |kb, j| {
                    let q = vx.round_even(
                        kb,
                        kb.b.build_float_mul(kb.load_f32(x, kb.add(base, j)), inv, "")
                            .expect("mul"),
                    );
                    let qi = kb.f32_to_si(q, kb.i32t());
                    kb.store(xq, kb.add(base, j), kb.trunc(qi, kb.i8t()));
                    let s = kb.geti(sum);
                    kb.set(sum, kb.add(s, qi));
                });
                let s = kb.geti(sum);
                kb.store(xqsum, kb.add(kb.mul(row, groups), gi), s);
            });
        }
    });
}
