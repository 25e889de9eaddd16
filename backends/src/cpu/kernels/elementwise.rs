//! Elementwise kernels: unary math, casts, clip, broadcast binary ops and where. Written as
//! scalar loops over elements; LLVM vectorizes them for the target.

use super::memory::chunk_range;
use super::{load_f32, load_i64, store_f32, store_i64, BCAST_RANK};
use crate::cpu::kb::Kb;
use crate::cpu::math::{self, MathFn};
use inkwell::values::{FloatValue, IntValue, PointerValue};
use inkwell::{FloatPredicate, IntPredicate};
use llmc_ir::{BinaryOp, DType, UnaryOp};

pub fn unary_f32<'ctx>(kb: &Kb<'_, 'ctx>, op: UnaryOp, x: FloatValue<'ctx>) -> FloatValue<'ctx> {
    let m = |f| math::call(kb, f, x);
    match op {
        UnaryOp::Neg => kb.fneg(x),
        UnaryOp::Abs => kb.fabs(x),
        UnaryOp::Exp => m(MathFn::Exp),
        UnaryOp::Log => m(MathFn::Log),
        UnaryOp::Sqrt => kb.sqrt(x),
        // correctly rounded divisions: fast-math would allow rsqrt/rcp estimates
        UnaryOp::Rsqrt => {
            let r = kb.call_intrinsic("llvm.sqrt", &[kb.f32t().into()], &[x.into()]);
            kb.b.build_float_div(kb.f32c(1.0), r.into_float_value(), "")
                .expect("div")
        }
        UnaryOp::Reciprocal => kb.b.build_float_div(kb.f32c(1.0), x, "").expect("div"),
        UnaryOp::Tanh => m(MathFn::Tanh),
        UnaryOp::Sigmoid => m(MathFn::Sigmoid),
        // max(x, 0) with NaN giving 0, as the interpreter's f32::max
        UnaryOp::Relu => {
            let c = kb.fcmp(FloatPredicate::OGT, x, kb.f32c(0.0));
            kb.select(c, x, kb.f32c(0.0)).into_float_value()
        }
        UnaryOp::Silu => kb.fmul(x, m(MathFn::Sigmoid)),
        UnaryOp::Gelu => {
            let e = math::call(
                kb,
                MathFn::Erf,
                kb.fmul(x, kb.f32c(std::f32::consts::FRAC_1_SQRT_2)),
            );
            kb.fmul(kb.fmul(kb.f32c(0.5), x), kb.fadd(kb.f32c(1.0), e))
        }
        UnaryOp::GeluTanh => {
            let c = (2.0f32 / std::f32::consts::PI).sqrt();
            let x3 = kb.fmul(kb.fmul(x, x), x);
            let inner = kb.fmul(kb.f32c(c), kb.fma(kb.f32c(0.044715), x3, x));
            let t = math::call(kb, MathFn::Tanh, inner);
            kb.fmul(kb.fmul(kb.f32c(0.5), x), kb.fadd(kb.f32c(1.0), t))
        }
        UnaryOp::Erf => m(MathFn::Erf),
        UnaryOp::Sin => m(MathFn::Sin),
        UnaryOp::Cos => m(MathFn::Cos),
        UnaryOp::Floor => m(MathFn::Floor),
        UnaryOp::Ceil => m(MathFn::Ceil),
        UnaryOp::Round => m(MathFn::RoundEven),
        UnaryOp::Sign => {
            let pos = kb.fcmp(FloatPredicate::OGT, x, kb.f32c(0.0));
            let neg = kb.fcmp(FloatPredicate::OLT, x, kb.f32c(0.0));
            let v = kb.select(pos, kb.f32c(1.0), x).into_float_value();
            kb.select(neg, kb.f32c(-1.0), v).into_float_value()
        }
        UnaryOp::Softplus => {
            // log(1 + e^x), = x for large x
            let e = m(MathFn::Exp);
            let l = math::log1p(kb, e);
            let big = kb.fcmp(FloatPredicate::OGT, x, kb.f32c(20.0));
            kb.select(big, x, l).into_float_value()
        }
        UnaryOp::Not => unreachable!("bool op"),
    }
}

/// `[out, in, n]`.
pub fn unary(kb: &mut Kb<'_, '_>, op: UnaryOp, dtype: DType) {
    let (out, x, n) = (kb.arg_ptr(0), kb.arg_ptr(1), kb.arg(2));
    let (lo, hi) = chunk_range(kb, n);
    kb.for_range(lo, hi, 1, |kb, i| {
        if dtype.is_float() {
            let v = unary_f32(kb, op, load_f32(kb, dtype, x, i));
            store_f32(kb, dtype, out, i, v);
        } else {
            let v = load_i64(kb, dtype, x, i);
            let zero = kb.i64c(0);
            let r = match op {
                UnaryOp::Not => kb.zext(kb.icmp(IntPredicate::EQ, v, zero), kb.i64t()),
                UnaryOp::Neg => kb.sub(zero, v),
                UnaryOp::Abs => {
                    let neg = kb.icmp(IntPredicate::SLT, v, zero);
                    kb.select(neg, kb.sub(zero, v), v).into_int_value()
                }
                UnaryOp::Relu => kb.imax(v, zero),
                UnaryOp::Sign => {
                    let p = kb.zext(kb.icmp(IntPredicate::SGT, v, zero), kb.i64t());
                    let m = kb.zext(kb.icmp(IntPredicate::SLT, v, zero), kb.i64t());
                    kb.sub(p, m)
                }
                other => unreachable!("{other:?} takes floats"),
            };
            store_i64(kb, dtype, out, i, r);
        }
    });
}

/// `[out, in, n, lo, hi]` with f32 bounds.
pub fn clip(kb: &mut Kb<'_, '_>, dtype: DType) {
    let (out, x, n) = (kb.arg_ptr(0), kb.arg_ptr(1), kb.arg(2));
    let (lo_b, hi_b) = (kb.arg_f32(3), kb.arg_f32(4));
    let (lo, hi) = chunk_range(kb, n);
    kb.for_range(lo, hi, 1, |kb, i| {
        if dtype.is_float() {
            let v = load_f32(kb, dtype, x, i);
            // NaN passes through: compare-and-select keeps it
            let below = kb.fcmp(FloatPredicate::OLT, v, lo_b);
            let v = kb.select(below, lo_b, v).into_float_value();
            let above = kb.fcmp(FloatPredicate::OGT, v, hi_b);
            let v = kb.select(above, hi_b, v).into_float_value();
            store_f32(kb, dtype, out, i, v);
        } else {
            let v = load_i64(kb, dtype, x, i);
            let l = sat_i64(kb, lo_b);
            // min above max clamps to min, as the interpreter does
            let h = kb.imax(sat_i64(kb, hi_b), l);
            let v = kb.imin(kb.imax(v, l), h);
            store_i64(kb, dtype, out, i, v);
        }
    });
}

fn sat_i64<'ctx>(kb: &Kb<'_, 'ctx>, v: FloatValue<'ctx>) -> IntValue<'ctx> {
    kb.call_intrinsic(
        "llvm.fptosi.sat",
        &[kb.i64t().into(), kb.f32t().into()],
        &[v.into()],
    )
    .into_int_value()
}

/// `[out, in, n]`: converts element types (floats to integers truncate and saturate).
pub fn cast(kb: &mut Kb<'_, '_>, from: DType, to: DType) {
    let (out, x, n) = (kb.arg_ptr(0), kb.arg_ptr(1), kb.arg(2));
    let (lo, hi) = chunk_range(kb, n);
    kb.for_range(lo, hi, 1, |kb, i| match (from.is_float(), to.is_float()) {
        (true, true) => {
            let v = load_f32(kb, from, x, i);
            store_f32(kb, to, out, i, v);
        }
        (false, true) => {
            let v = load_i64(kb, from, x, i);
            let f = kb.si_to_f32(v);
            store_f32(kb, to, out, i, f);
        }
        (true, false) => {
            let v = load_f32(kb, from, x, i);
            let r = if to == DType::Bool {
                let nz = kb.fcmp(FloatPredicate::UNE, v, kb.f32c(0.0));
                kb.zext(nz, kb.i64t())
            } else {
                let ty = super::storage_type(kb, to).into_int_type();
                let s = if to == DType::U8 {
                    kb.call_intrinsic(
                        "llvm.fptoui.sat",
                        &[ty.into(), kb.f32t().into()],
                        &[v.into()],
                    )
                    .into_int_value()
                } else {
                    kb.call_intrinsic(
                        "llvm.fptosi.sat",
                        &[ty.into(), kb.f32t().into()],
                        &[v.into()],
                    )
                    .into_int_value()
                };
                if to == DType::U8 {
                    kb.zext(s, kb.i64t())
                } else if to == DType::I64 {
                    s
                } else {
                    kb.sext(s, kb.i64t())
                }
            };
            store_i64(kb, to, out, i, r);
        }
        (false, false) => {
            let v = load_i64(kb, from, x, i);
            store_i64(kb, to, out, i, v);
        }
    });
}

/// Offsets of one row of a rank-4 broadcast: (outer index) → element offset per operand.
fn row_offset<'ctx>(
    kb: &Kb<'_, 'ctx>,
    row: IntValue<'ctx>,
    d: &[IntValue<'ctx>],
    s: &[IntValue<'ctx>],
) -> IntValue<'ctx> {
    let mut rem = row;
    let mut off = kb.i64c(0);
    for k in (0..BCAST_RANK - 1).rev() {
        let c = kb.srem(rem, d[k]);
        rem = kb.sdiv(rem, d[k]);
        off = kb.add(off, kb.mul(c, s[k]));
    }
    off
}

fn pow_f32<'ctx>(kb: &Kb<'_, 'ctx>, x: FloatValue<'ctx>, y: FloatValue<'ctx>) -> FloatValue<'ctx> {
    let a = kb.fabs(x);
    let r = math::call(kb, MathFn::Exp, kb.fmul(y, math::call(kb, MathFn::Log, a)));
    let yf = math::call(kb, MathFn::Floor, y);
    let y_int = kb.fcmp(FloatPredicate::OEQ, yf, y);
    let half = kb.fmul(y, kb.f32c(0.5));
    let odd =
        kb.b.build_and(
            y_int,
            kb.fcmp(
                FloatPredicate::UNE,
                math::call(kb, MathFn::Floor, half),
                half,
            ),
            "",
        )
        .expect("and");
    // an odd integer power keeps the sign of x (of -0 too: (-0)^-3 = -inf)
    let sign = kb.icmp(
        IntPredicate::SLT,
        kb.f32_bits(x),
        kb.cx.i32_type().const_zero(),
    );
    let flip = kb.b.build_and(odd, sign, "").expect("and");
    let r = kb.select(flip, kb.fneg(r), r).into_float_value();
    // a negative base with a fractional power has no real value
    let neg = kb.fcmp(FloatPredicate::OLT, x, kb.f32c(0.0));
    let frac = kb.b.build_not(y_int, "").expect("not");
    let nan = kb.b.build_and(neg, frac, "").expect("and");
    let r = kb.select(nan, kb.f32c(f32::NAN), r).into_float_value();
    // exact squares, and x^0 = 1 (even for 0 and NaN)
    let sq = kb.fcmp(FloatPredicate::OEQ, y, kb.f32c(2.0));
    let r = kb
        .select(sq, kb.b.build_float_mul(x, x, "").expect("mul"), r)
        .into_float_value();
    let y0 = kb.fcmp(FloatPredicate::OEQ, y, kb.f32c(0.0));
    kb.select(y0, kb.f32c(1.0), r).into_float_value()
}

/// C fmod: `x − trunc(x / y)·y` with the product fused so each step is exact; two steps cover
/// quotients beyond 2^24, then the remainder moves by one `y` where a rounded quotient
/// overshot (the result has the sign of x and magnitude below |y|).
fn fmod_f32<'ctx>(kb: &Kb<'_, 'ctx>, x: FloatValue<'ctx>, y: FloatValue<'ctx>) -> FloatValue<'ctx> {
    let step = |r: FloatValue<'ctx>| {
        let q = math::call(
            kb,
            MathFn::Trunc,
            kb.b.build_float_div(r, y, "").expect("div"),
        );
        kb.call_intrinsic(
            "llvm.fma",
            &[kb.f32t().into()],
            &[kb.fneg(q).into(), y.into(), r.into()],
        )
        .into_float_value()
    };
    let r = step(step(x));
    let ay = kb.fabs(y);
    // copysign(|y|, x)
    let sx =
        kb.b.build_and(kb.f32_bits(x), kb.i32c(i32::MIN), "")
            .expect("and");
    let sy = kb.bits_f32(kb.b.build_or(kb.f32_bits(ay), sx, "").expect("or"));
    let zero = kb.f32c(0.0);
    let x_neg = kb.fcmp(FloatPredicate::OLT, x, zero);
    let r_neg = kb.fcmp(FloatPredicate::OLT, r, zero);
    let r_pos = kb.fcmp(FloatPredicate::OGT, r, zero);
    // a quotient rounded past the true one leaves the remainder with the wrong sign
    let wrong = kb.select(x_neg, r_pos, r_neg).into_int_value();
    let fixed = kb.b.build_float_add(r, sy, "").expect("add");
    let r = kb.select(wrong, fixed, r).into_float_value();
    // one that fell short leaves |r| at |y|
    let over = kb.fcmp(FloatPredicate::OGE, kb.fabs(r), ay);
    let less = kb.b.build_float_sub(r, sy, "").expect("sub");
    let r = kb.select(over, less, r).into_float_value();
    // fmod(finite x, ±inf) = x
    let y_inf = kb.fcmp(FloatPredicate::OEQ, ay, kb.f32c(f32::INFINITY));
    let x_fin = kb.fcmp(FloatPredicate::ONE, kb.fabs(x), kb.f32c(f32::INFINITY));
    let keep = kb.b.build_and(y_inf, x_fin, "").expect("and");
    kb.select(keep, x, r).into_float_value()
}

fn binary_f32<'ctx>(
    kb: &Kb<'_, 'ctx>,
    op: BinaryOp,
    x: FloatValue<'ctx>,
    y: FloatValue<'ctx>,
) -> FloatValue<'ctx> {
    match op {
        BinaryOp::Add => kb.fadd(x, y),
        BinaryOp::Sub => kb.fsub(x, y),
        BinaryOp::Mul => kb.fmul(x, y),
        BinaryOp::Div => kb.b.build_float_div(x, y, "").expect("div"),
        BinaryOp::Pow => pow_f32(kb, x, y),
        BinaryOp::Max => kb.fmax_nan(x, y),
        BinaryOp::Min => kb.fmin_nan(x, y),
        BinaryOp::Mod => fmod_f32(kb, x, y),
        _ => unreachable!("comparisons and logic are handled apart"),
    }
}

fn binary_i64<'ctx>(
    kb: &mut Kb<'_, 'ctx>,
    op: BinaryOp,
    x: IntValue<'ctx>,
    y: IntValue<'ctx>,
) -> IntValue<'ctx> {
    let zero = kb.i64c(0);
    // division by zero gives 0 instead of undefined behaviour
    let y_is0 = kb.icmp(IntPredicate::EQ, y, zero);
    let safe_y = kb.select(y_is0, kb.i64c(1), y).into_int_value();
    match op {
        BinaryOp::Add => kb.add(x, y),
        BinaryOp::Sub => kb.sub(x, y),
        BinaryOp::Mul => kb.mul(x, y),
        BinaryOp::Div => kb.select(y_is0, zero, kb.sdiv(x, safe_y)).into_int_value(),
        BinaryOp::Mod => {
            // remainder with the divisor's sign
            let r = kb.srem(x, safe_y);
            let fix = kb.b.build_and(
                kb.icmp(IntPredicate::NE, r, zero),
                kb.icmp(
                    IntPredicate::NE,
                    kb.icmp(IntPredicate::SLT, r, zero),
                    kb.icmp(IntPredicate::SLT, y, zero),
                ),
                "",
            );
            let r = kb
                .select(fix.expect("and"), kb.add(r, y), r)
                .into_int_value();
            kb.select(y_is0, zero, r).into_int_value()
        }
        BinaryOp::Max => kb.imax(x, y),
        BinaryOp::Min => kb.imin(x, y),
        BinaryOp::Pow => {
            // repeated squaring over the exponent's bits (negative exponents give 0)
            let base = kb.var(x);
            let acc = kb.var(kb.i64c(1));
            let e = kb.var(y);
            let zero = kb.i64c(0);
            let k64 = kb.i64c(64);
            kb.for_range(zero, k64, 1, |k, _| {
                let ev = k.geti(e);
                let bit = k.icmp(
                    IntPredicate::NE,
                    k.b.build_and(ev, k.i64c(1), "").expect("and"),
                    k.i64c(0),
                );
                let bv = k.geti(base);
                let av = k.geti(acc);
                let m = k.select(bit, k.mul(av, bv), av);
                k.set(acc, m);
                k.set(base, k.mul(bv, bv));
                k.set(
                    e,
                    k.b.build_right_shift(ev, k.i64c(1), false, "")
                        .expect("shr"),
                );
            });
            let r = kb.geti(acc);
            kb.select(kb.icmp(IntPredicate::SLT, y, zero), zero, r)
                .into_int_value()
        }
        _ => unreachable!(),
    }
}

fn compare<'ctx>(
    kb: &Kb<'_, 'ctx>,
    op: BinaryOp,
    float: bool,
    x: inkwell::values::BasicValueEnum<'ctx>,
    y: inkwell::values::BasicValueEnum<'ctx>,
) -> IntValue<'ctx> {
    if float {
        let p = match op {
            BinaryOp::Equal => FloatPredicate::OEQ,
            BinaryOp::Less => FloatPredicate::OLT,
            BinaryOp::LessEqual => FloatPredicate::OLE,
            BinaryOp::Greater => FloatPredicate::OGT,
            _ => FloatPredicate::OGE,
        };
        kb.fcmp(p, x.into_float_value(), y.into_float_value())
    } else {
        let p = match op {
            BinaryOp::Equal => IntPredicate::EQ,
            BinaryOp::Less => IntPredicate::SLT,
            BinaryOp::LessEqual => IntPredicate::SLE,
            BinaryOp::Greater => IntPredicate::SGT,
            _ => IntPredicate::SGE,
        };
        kb.icmp(p, x.into_int_value(), y.into_int_value())
    }
}

/// `[out, a, b, d0..d3, a strides, b strides]`; out is contiguous; work items d0·d1·d2.
pub fn binary(kb: &mut Kb<'_, '_>, op: BinaryOp, dtype: DType) {
    let (out, a, b) = (kb.arg_ptr(0), kb.arg_ptr(1), kb.arg_ptr(2));
    let r = BCAST_RANK as u32;
    let d: Vec<_> = (0..r).map(|i| kb.arg(3 + i)).collect();
    let sa: Vec<_> = (0..r).map(|i| kb.arg(3 + r + i)).collect();
    let sb: Vec<_> = (0..r).map(|i| kb.arg(3 + 2 * r + i)).collect();
    let inner = d[BCAST_RANK - 1];
    let (ia, ib) = (sa[BCAST_RANK - 1], sb[BCAST_RANK - 1]);
    let out_t = if op.is_comparison() || op.is_logical() {
        DType::Bool
    } else {
        dtype
    };
    let (beg, end) = (kb.begin(), kb.end());
    kb.for_range(beg, end, 1, |kb, row| {
        let oa = row_offset(kb, row, &d, &sa);
        let ob = row_offset(kb, row, &d, &sb);
        let oo = kb.mul(row, inner);
        let zero = kb.i64c(0);
        kb.for_range(zero, inner, 1, |kb, j| {
            let pa = kb.add(oa, kb.mul(j, ia));
            let pb = kb.add(ob, kb.mul(j, ib));
            let po = kb.add(oo, j);
            binary_element(kb, op, dtype, out_t, (out, po), (a, pa), (b, pb));
        });
    });
}

fn binary_element<'ctx>(
    kb: &mut Kb<'_, 'ctx>,
    op: BinaryOp,
    dtype: DType,
    out_t: DType,
    (out, po): (PointerValue<'ctx>, IntValue<'ctx>),
    (a, pa): (PointerValue<'ctx>, IntValue<'ctx>),
    (b, pb): (PointerValue<'ctx>, IntValue<'ctx>),
) {
    if op.is_logical() {
        let x = kb.icmp(IntPredicate::NE, load_i64(kb, dtype, a, pa), kb.i64c(0));
        let y = kb.icmp(IntPredicate::NE, load_i64(kb, dtype, b, pb), kb.i64c(0));
        let v = match op {
            BinaryOp::And => kb.b.build_and(x, y, ""),
            BinaryOp::Or => kb.b.build_or(x, y, ""),
            _ => kb.b.build_xor(x, y, ""),
        }
        .expect("logic");
        store_i64(kb, out_t, out, po, kb.zext(v, kb.i64t()));
    } else if op.is_comparison() {
        let c = if dtype.is_float() {
            compare(
                kb,
                op,
                true,
                load_f32(kb, dtype, a, pa).into(),
                load_f32(kb, dtype, b, pb).into(),
            )
        } else {
            compare(
                kb,
                op,
                false,
                load_i64(kb, dtype, a, pa).into(),
                load_i64(kb, dtype, b, pb).into(),
            )
        };
        store_i64(kb, out_t, out, po, kb.zext(c, kb.i64t()));
    } else if dtype.is_float() {
        let v = binary_f32(
            kb,
            op,
            load_f32(kb, dtype, a, pa),
            load_f32(kb, dtype, b, pb),
        );
        store_f32(kb, out_t, out, po, v);
    } else {
        let v = binary_i64(
            kb,
            op,
            load_i64(kb, dtype, a, pa),
            load_i64(kb, dtype, b, pb),
        );
        store_i64(kb, out_t, out, po, v);
    }
}

/// `[out, cond, a, b, d0..d3, cond strides, a strides, b strides]`.
pub fn where_(kb: &mut Kb<'_, '_>, dtype: DType) {
    let (out, c, a, b) = (kb.arg_ptr(0), kb.arg_ptr(1), kb.arg_ptr(2), kb.arg_ptr(3));
    let r = BCAST_RANK as u32;
    let d: Vec<_> = (0..r).map(|i| kb.arg(4 + i)).collect();
    let sc: Vec<_> = (0..r).map(|i| kb.arg(4 + r + i)).collect();
    let sa: Vec<_> = (0..r).map(|i| kb.arg(4 + 2 * r + i)).collect();
    let sb: Vec<_> = (0..r).map(|i| kb.arg(4 + 3 * r + i)).collect();
    let inner = d[BCAST_RANK - 1];
    let ty = super::storage_type(kb, dtype);
    let (beg, end) = (kb.begin(), kb.end());
    kb.for_range(beg, end, 1, |kb, row| {
        let oc = row_offset(kb, row, &d, &sc);
        let oa = row_offset(kb, row, &d, &sa);
        let ob = row_offset(kb, row, &d, &sb);
        let oo = kb.mul(row, inner);
        let zero = kb.i64c(0);
        kb.for_range(zero, inner, 1, |kb, j| {
            let cv = load_i64(
                kb,
                DType::Bool,
                c,
                kb.add(oc, kb.mul(j, sc[BCAST_RANK - 1])),
            );
            let x = kb.load(ty, a, kb.add(oa, kb.mul(j, sa[BCAST_RANK - 1])));
            let y = kb.load(ty, b, kb.add(ob, kb.mul(j, sb[BCAST_RANK - 1])));
            let v = kb.select(kb.icmp(IntPredicate::NE, cv, kb.i64c(0)), x, y);
            kb.store(out, kb.add(oo, j), v);
        });
    });
}
