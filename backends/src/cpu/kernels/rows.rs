//! Row kernels: layer and RMS normalization, softmax, reductions, argmax, and the rotary
//! embedding. One work item is one row.

use super::{load_f32, load_i64, store_f32, store_i64};
use crate::cpu::kb::Kb;
use crate::cpu::math::{self, MathFn};
use inkwell::module::Linkage;
use inkwell::{FloatPredicate, IntPredicate};
use llmc_ir::{DType, ReduceKind, RopeMode};

/// `[out, x, scale, bias, rows, cols, eps]`; scale and bias are f32 of `cols` elements.
pub fn norm(kb: &mut Kb<'_, '_>, rms: bool, bias: bool, dtype: DType) {
    let (out, x, scale, biasp) = (kb.arg_ptr(0), kb.arg_ptr(1), kb.arg_ptr(2), kb.arg_ptr(3));
    let (cols, eps) = (kb.arg(5), kb.arg_f32(6));
    let (b, e) = (kb.begin(), kb.end());
    kb.for_range(b, e, 1, |kb, row| {
        let base = kb.mul(row, cols);
        let zero = kb.i64c(0);
        let n = kb.si_to_f32(cols);
        let mean = if rms {
            kb.f32c(0.0)
        } else {
            let s = kb.var(kb.f32c(0.0));
            kb.for_range(zero, cols, 1, |kb, j| {
                let v = load_f32(kb, dtype, x, kb.add(base, j));
                let a = kb.getf(s);
                kb.set(s, kb.fadd(a, v));
            });
            kb.fdiv(kb.getf(s), n)
        };
        let ss = kb.var(kb.f32c(0.0));
        kb.for_range(zero, cols, 1, |kb, j| {
            let v = kb.fsub(load_f32(kb, dtype, x, kb.add(base, j)), mean);
            let a = kb.getf(ss);
            kb.set(ss, kb.fma(v, v, a));
        });
        let inv = kb.fdiv(kb.f32c(1.0), kb.sqrt(kb.fadd(kb.fdiv(kb.getf(ss), n), eps)));
        kb.for_range(zero, cols, 1, |kb, j| {
            let v = kb.fsub(load_f32(kb, dtype, x, kb.add(base, j)), mean);
            let mut y = kb.fmul(kb.fmul(v, inv), kb.load_f32(scale, j));
            if bias {
                y = kb.fadd(y, kb.load_f32(biasp, j));
            }
            store_f32(kb, dtype, out, kb.add(base, j), y);
        });
    });
}

/// `[out, x, rows, cols]`: softmax or log-softmax of each row.
pub fn softmax(kb: &mut Kb<'_, '_>, log: bool, dtype: DType) {
    let (out, x, cols) = (kb.arg_ptr(0), kb.arg_ptr(1), kb.arg(3));
    let (b, e) = (kb.begin(), kb.end());
    kb.for_range(b, e, 1, |kb, row| {
        let base = kb.mul(row, cols);
        let zero = kb.i64c(0);
        let mx = kb.var(kb.f32c(f32::NEG_INFINITY));
        kb.for_range(zero, cols, 1, |kb, j| {
            let v = load_f32(kb, dtype, x, kb.add(base, j));
            let m = kb.getf(mx);
            kb.set(mx, kb.fmax(m, v));
        });
        let m = kb.getf(mx);
        let sum = kb.var(kb.f32c(0.0));
        kb.for_range(zero, cols, 1, |kb, j| {
            let v = load_f32(kb, dtype, x, kb.add(base, j));
            let ex = math::call(kb, MathFn::Exp, kb.fsub(v, m));
            if !log && dtype == DType::F32 {
                kb.store(out, kb.add(base, j), ex);
            }
            let s = kb.getf(sum);
            kb.set(sum, kb.fadd(s, ex));
        });
        let s = kb.getf(sum);
        if log {
            let lse = kb.fadd(m, math::call(kb, MathFn::Log, s));
            kb.for_range(zero, cols, 1, |kb, j| {
                let v = load_f32(kb, dtype, x, kb.add(base, j));
                store_f32(kb, dtype, out, kb.add(base, j), kb.fsub(v, lse));
            });
        } else {
            let inv = kb.fdiv(kb.f32c(1.0), s);
            kb.for_range(zero, cols, 1, |kb, j| {
                let v = if dtype == DType::F32 {
                    kb.load_f32(out, kb.add(base, j))
                } else {
                    let v = load_f32(kb, dtype, x, kb.add(base, j));
                    math::call(kb, MathFn::Exp, kb.fsub(v, m))
                };
                store_f32(kb, dtype, out, kb.add(base, j), kb.fmul(v, inv));
            });
        }
    });
}

/// `[out, x, rows, cols]`: reduce each row to one element.
pub fn reduce(kb: &mut Kb<'_, '_>, kind: ReduceKind, dtype: DType) {
    let (out, x, cols) = (kb.arg_ptr(0), kb.arg_ptr(1), kb.arg(3));
    let (b, e) = (kb.begin(), kb.end());
    kb.for_range(b, e, 1, |kb, row| {
        let base = kb.mul(row, cols);
        let zero = kb.i64c(0);
        if dtype.is_float() {
            let init = match kind {
                ReduceKind::Max => f32::NEG_INFINITY,
                ReduceKind::Min => f32::INFINITY,
                ReduceKind::Prod => 1.0,
                _ => 0.0,
            };
            let acc = kb.var(kb.f32c(init));
            kb.for_range(zero, cols, 1, |kb, j| {
                let v = load_f32(kb, dtype, x, kb.add(base, j));
                let a = kb.getf(acc);
                let r = match kind {
                    ReduceKind::Sum | ReduceKind::Mean => kb.fadd(a, v),
                    ReduceKind::Max => kb.fmax_nan(a, v),
                    ReduceKind::Min => kb.fmin_nan(a, v),
                    ReduceKind::Prod => kb.fmul(a, v),
                    ReduceKind::L2 => kb.fma(v, v, a),
                };
                kb.set(acc, r);
            });
            let a = kb.getf(acc);
            let r = match kind {
                ReduceKind::Mean => kb.fdiv(a, kb.si_to_f32(cols)),
                ReduceKind::L2 => kb.sqrt(a),
                _ => a,
            };
            store_f32(kb, dtype, out, row, r);
        } else {
            let init = match kind {
                ReduceKind::Max => i64::MIN,
                ReduceKind::Min => i64::MAX,
                ReduceKind::Prod => 1,
                _ => 0,
            };
            let acc = kb.var(kb.i64c(init));
            kb.for_range(zero, cols, 1, |kb, j| {
                let v = load_i64(kb, dtype, x, kb.add(base, j));
                let a = kb.geti(acc);
                let r = match kind {
                    ReduceKind::Sum | ReduceKind::Mean => kb.add(a, v),
                    ReduceKind::Max => kb.imax(a, v),
                    ReduceKind::Min => kb.imin(a, v),
                    ReduceKind::Prod => kb.mul(a, v),
                    ReduceKind::L2 => kb.add(a, kb.mul(v, v)),
                };
                kb.set(acc, r);
            });
            let a = kb.geti(acc);
            let r = match kind {
                ReduceKind::Mean => {
                    let c = kb.imax(cols, kb.i64c(1));
                    kb.sdiv(a, c)
                }
                ReduceKind::L2 => kb.f32_to_si(kb.sqrt(kb.si_to_f32(a)), kb.i64t()),
                _ => a,
            };
            store_i64(kb, dtype, out, row, r);
        }
    });
}

/// `[out (i64), x, rows, cols]`: index of each row's largest element (the first on ties).
pub fn argmax(kb: &mut Kb<'_, '_>, dtype: DType) {
    let (out, x, cols) = (kb.arg_ptr(0), kb.arg_ptr(1), kb.arg(3));
    let (b, e) = (kb.begin(), kb.end());
    kb.for_range(b, e, 1, |kb, row| {
        let base = kb.mul(row, cols);
        let best = kb.var(kb.i64c(0));
        let one = kb.i64c(1);
        kb.for_range(one, cols, 1, |kb, j| {
            let bi = kb.geti(best);
            let better = if dtype.is_float() {
                let v = load_f32(kb, dtype, x, kb.add(base, j));
                let w = load_f32(kb, dtype, x, kb.add(base, bi));
                kb.fcmp(FloatPredicate::OGT, v, w)
            } else {
                let v = load_i64(kb, dtype, x, kb.add(base, j));
                let w = load_i64(kb, dtype, x, kb.add(base, bi));
                kb.icmp(IntPredicate::SGT, v, w)
            };
            let nb = kb.select(better, j, bi);
            kb.set(best, nb);
        });
        let bi = kb.geti(best);
        kb.store(out, row, bi);
    });
}

/// `[out, x, pos, rows, heads, head_dim, pos_len]` for `x [rows, heads, head_dim]` and
/// positions indexed by `row % pos_len`. Angles are formed and reduced in f64.
pub fn rope(kb: &mut Kb<'_, '_>, mode: RopeMode, base: f32, dims: u32) {
    let (out, x, pos) = (kb.arg_ptr(0), kb.arg_ptr(1), kb.arg_ptr(2));
    let (heads, hd, pos_len) = (kb.arg(4), kb.arg(5), kb.arg(6));
    let half = dims / 2;
    // inverse frequencies, computed here at build time
    let inv: Vec<f64> = (0..half)
        .map(|i| (base as f64).powf(-((2 * i) as f64) / dims as f64))
        .collect();
    let f64t = kb.cx.f64_type();
    let arr = f64t.const_array(&inv.iter().map(|&v| f64t.const_float(v)).collect::<Vec<_>>());
    let g = kb.m.add_global(
        arr.get_type(),
        None,
        &format!("llmc.rope.inv.{}", kb.f.get_name().to_string_lossy()),
    );
    g.set_initializer(&arr);
    g.set_constant(true);
    g.set_linkage(Linkage::Private);
    let invp = g.as_pointer_value();
    let (b, e) = (kb.begin(), kb.end());
    let two_pi = std::f64::consts::TAU;
    kb.for_range(b, e, 1, |kb, row| {
        let p = kb.load_i64(pos, kb.srem(row, pos_len));
        let pf = kb.b.build_signed_int_to_float(p, f64t, "").expect("sitofp");
        let zero = kb.i64c(0);
        let hn = kb.i64c(half as i64);
        kb.for_range(zero, hn, 1, |kb, i| {
            let f = kb.load(f64t.into(), invp, i).into_float_value();
            let th = kb.b.build_float_mul(pf, f, "").expect("mul");
            // reduce by whole turns in f64, then sin/cos in f32
            let turns =
                kb.b.build_float_div(th, f64t.const_float(two_pi), "")
                    .expect("div");
            let k =
                kb.b.build_float_to_signed_int(turns, kb.i64t(), "")
                    .expect("fptosi");
            let kf = kb.b.build_signed_int_to_float(k, f64t, "").expect("sitofp");
            let r =
                kb.b.build_float_sub(
                    th,
                    kb.b.build_float_mul(kf, f64t.const_float(two_pi), "")
                        .expect("mul"),
                    "",
                )
                .expect("sub");
            let r32 = kb.b.build_float_trunc(r, kb.f32t(), "").expect("trunc");
            let (c, s) = (
                math::call(kb, MathFn::Cos, r32),
                math::call(kb, MathFn::Sin, r32),
            );
            let (i0, i1) = match mode {
                RopeMode::Interleaved => (
                    kb.mul(i, kb.i64c(2)),
                    kb.add(kb.mul(i, kb.i64c(2)), kb.i64c(1)),
                ),
                RopeMode::Half => (i, kb.add(i, hn)),
            };
            kb.for_range(zero, heads, 1, |kb, h| {
                let base_i = kb.mul(kb.add(kb.mul(row, heads), h), hd);
                let (a, bb) = (kb.add(base_i, i0), kb.add(base_i, i1));
                let x0 = kb.load_f32(x, a);
                let x1 = kb.load_f32(x, bb);
                kb.store(out, a, kb.fsub(kb.fmul(x0, c), kb.fmul(x1, s)));
                kb.store(out, bb, kb.fadd(kb.fmul(x0, s), kb.fmul(x1, c)));
            });
        });
        // dimensions past the rotated ones are copied
        let rot = kb.i64c(dims as i64);
        kb.for_range(zero, heads, 1, |kb, h| {
            let base_i = kb.mul(kb.add(kb.mul(row, heads), h), hd);
            kb.for_range(rot, hd, 1, |kb, j| {
                let v = kb.load_f32(x, kb.add(base_i, j));
                kb.store(out, kb.add(base_i, j), v);
            });
        });
    });
}
