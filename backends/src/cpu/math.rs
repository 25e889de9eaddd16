//! Vectorizable math of our own (no libm): exp, log, tanh, erf, sigmoid, sin/cos, floor, and
//! f16 conversions, as `alwaysinline` scalar functions that LLVM inlines into kernel loops and
//! vectorizes with them.

use super::kb::Kb;
use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::values::{FloatValue, FunctionValue, IntValue};
use inkwell::{FloatPredicate, IntPredicate};

/// A math function of the module, created on first use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MathFn {
    Exp,
    Log,
    Tanh,
    Erf,
    Sigmoid,
    Sin,
    Cos,
    Floor,
    Ceil,
    Trunc,
    RoundEven,
    /// f16 bits (in the low 16 of an i32) to f32.
    HalfToF32,
    /// f32 to f16 bits, round to nearest even.
    F32ToHalf,
}

impl MathFn {
    fn name(self) -> &'static str {
        match self {
            MathFn::Exp => "llmc.expf",
            MathFn::Log => "llmc.logf",
            MathFn::Tanh => "llmc.tanhf",
            MathFn::Erf => "llmc.erff",
            MathFn::Sigmoid => "llmc.sigmoidf",
            MathFn::Sin => "llmc.sinf",
            MathFn::Cos => "llmc.cosf",
            MathFn::Floor => "llmc.floorf",
            MathFn::Ceil => "llmc.ceilf",
            MathFn::Trunc => "llmc.truncf",
            MathFn::RoundEven => "llmc.roundevenf",
            MathFn::HalfToF32 => "llmc.h2f",
            MathFn::F32ToHalf => "llmc.f2h",
        }
    }
}

/// Returns the module's function for `which`, defining it on first use.
pub fn get<'ctx>(cx: &'ctx Context, m: &Module<'ctx>, which: MathFn) -> FunctionValue<'ctx> {
    if let Some(f) = m.get_function(which.name()) {
        return f;
    }
    let f32t = cx.f32_type();
    let i32t = cx.i32_type();
    let ty = match which {
        MathFn::HalfToF32 => f32t.fn_type(&[i32t.into()], false),
        MathFn::F32ToHalf => i32t.fn_type(&[f32t.into()], false),
        _ => f32t.fn_type(&[f32t.into()], false),
    };
    let k = Kb::new_fn(cx, m, which.name(), ty, Linkage::Internal);
    k.f.add_attribute(
        AttributeLoc::Function,
        cx.create_enum_attribute(Attribute::get_named_enum_kind_id("alwaysinline"), 0),
    );
    match which {
        MathFn::HalfToF32 => {
            let h = k.param_int(0);
            let r = half_to_f32(&k, h);
            k.b.build_return(Some(&r)).expect("ret");
        }
        MathFn::F32ToHalf => {
            let x = k.f.get_nth_param(0).expect("param").into_float_value();
            let r = f32_to_half(&k, x);
            k.b.build_return(Some(&r)).expect("ret");
        }
        _ => {
            let x = k.f.get_nth_param(0).expect("param").into_float_value();
            let r = match which {
                MathFn::Exp => exp(&k, x),
                MathFn::Log => log(&k, x),
                MathFn::Tanh => tanh(&k, cx, m, x),
                MathFn::Erf => erf(&k, cx, m, x),
                MathFn::Sigmoid => {
                    let e = k
                        .call(get(cx, m, MathFn::Exp), &[k.fneg(x).into()])
                        .expect("v")
                        .into_float_value();
                    k.fdiv(k.f32c(1.0), k.fadd(k.f32c(1.0), e))
                }
                MathFn::Sin => sincos(&k, cx, m, x, false),
                MathFn::Cos => sincos(&k, cx, m, x, true),
                MathFn::Floor => rounding(&k, x, Rounding::Floor),
                MathFn::Ceil => rounding(&k, x, Rounding::Ceil),
                MathFn::Trunc => rounding(&k, x, Rounding::Trunc),
                MathFn::RoundEven => rounding(&k, x, Rounding::Even),
                MathFn::HalfToF32 | MathFn::F32ToHalf => unreachable!(),
            };
            k.b.build_return(Some(&r)).expect("ret");
        }
    }
    k.f
}

/// Calls a math function on a scalar.
pub fn call<'ctx>(k: &Kb<'_, 'ctx>, which: MathFn, x: FloatValue<'ctx>) -> FloatValue<'ctx> {
    let f = get(k.cx, k.m, which);
    k.call(f, &[x.into()]).expect("value").into_float_value()
}

/// `exp(x)`: x = n·ln2 + r with |r| ≤ ln2/2, a degree-6 polynomial for e^r, 2^n by exponent bits.
fn exp<'ctx>(k: &Kb<'_, 'ctx>, x: FloatValue<'ctx>) -> FloatValue<'ctx> {
    let hi = k.f32c(88.72283);
    let lo = k.f32c(-103.97208);
    let xc = k.fmin(k.fmax(x, lo), hi);
    let n = rounding(
        k,
        k.fmul(xc, k.f32c(std::f32::consts::LOG2_E)),
        Rounding::Even,
    );
    // r = x - n·ln2 in two parts for accuracy, without fast-math (which could refold them)
    let r = exact_sub(k, xc, exact_mul(k, n, k.f32c(0.693_145_75)));
    let r = exact_sub(k, r, exact_mul(k, n, k.f32c(1.428_606_8e-6)));
    let c = [
        1.0f32,
        1.0,
        0.5,
        0.166_666_67,
        0.041_666_668,
        0.008_333_334,
        0.001_388_889,
    ];
    let mut p = k.f32c(c[6]);
    for &ci in c[..6].iter().rev() {
        p = k.fma(p, r, k.f32c(ci));
    }
    // 2^n in two steps so that n down to -149 stays exact (subnormals)
    let ni = k.f32_to_si(n, k.i32t());
    let half = k.b.build_int_signed_div(ni, k.i32c(2), "").expect("div");
    let rest = k.sub(ni, half);
    let pow2 = |e: IntValue<'ctx>| {
        k.bits_f32(
            k.b.build_left_shift(k.add(e, k.i32c(127)), k.i32c(23), "")
                .expect("shl"),
        )
    };
    let y = k.fmul(k.fmul(p, pow2(half)), pow2(rest));
    // exp(-inf) = 0, exp(NaN) = NaN, exp(large) = inf
    let over = k.fcmp(FloatPredicate::OGT, x, hi);
    let y = k.select(over, k.f32c(f32::INFINITY), y).into_float_value();
    let under = k.fcmp(FloatPredicate::OLT, x, lo);
    let y = k.select(under, k.f32c(0.0), y).into_float_value();
    let nan = k.fcmp(FloatPredicate::UNO, x, x);
    k.select(nan, x, y).into_float_value()
}

/// `log(x)`: x = m·2^e with m in [√½, √2), log(m) from an odd series in (m−1)/(m+1).
fn log<'ctx>(k: &Kb<'_, 'ctx>, x: FloatValue<'ctx>) -> FloatValue<'ctx> {
    // scale subnormals up first
    let small = k.fcmp(FloatPredicate::OLT, x, k.f32c(f32::MIN_POSITIVE));
    let xs = k
        .select(small, k.fmul(x, k.f32c(8_388_608.0)), x)
        .into_float_value();
    let bias = k.select(small, k.i32c(23), k.i32c(0)).into_int_value();
    let bits = k.f32_bits(xs);
    // shift the mantissa range to [√½, √2)
    let adj = k.add(bits, k.i32c(0x3f80_0000 - 0x3f35_04f3));
    let e = k.sub(
        k.b.build_right_shift(adj, k.i32c(23), true, "")
            .expect("shr"),
        k.i32c(127),
    );
    let mbits = k.add(
        k.b.build_and(adj, k.i32c(0x007f_ffff), "").expect("and"),
        k.i32c(0x3f35_04f3),
    );
    let m = k.bits_f32(mbits);
    let ef = k.si_to_f32(k.sub(e, bias));
    let s = k.fdiv(k.fsub(m, k.f32c(1.0)), k.fadd(m, k.f32c(1.0)));
    let s2 = k.fmul(s, s);
    let c = [
        2.0f32,
        0.666_666_7,
        0.4,
        0.285_714_3,
        0.222_222_22,
        0.181_818_18,
    ];
    let mut p = k.f32c(c[5]);
    for &ci in c[..5].iter().rev() {
        p = k.fma(p, s2, k.f32c(ci));
    }
    let y = k.fma(ef, k.f32c(std::f32::consts::LN_2), k.fmul(p, s));
    // log(0) = -inf, log(<0) = NaN, log(inf) = inf, log(NaN) = NaN
    let zero = k.fcmp(FloatPredicate::OEQ, x, k.f32c(0.0));
    let y = k
        .select(zero, k.f32c(f32::NEG_INFINITY), y)
        .into_float_value();
    let neg = k.fcmp(FloatPredicate::OLT, x, k.f32c(0.0));
    let y = k.select(neg, k.f32c(f32::NAN), y).into_float_value();
    let inf = k.fcmp(FloatPredicate::OEQ, x, k.f32c(f32::INFINITY));
    let y = k.select(inf, x, y).into_float_value();
    let nan = k.fcmp(FloatPredicate::UNO, x, x);
    k.select(nan, x, y).into_float_value()
}

/// `tanh(x)`: a rational minimax fit `x·P(x²)/Q(x²)` on `x` clamped to ±7.905, `x` itself below
/// 4e-4 (Eigen's float tanh; a few ulp everywhere), ±1 from 9 on.
fn tanh<'ctx>(
    k: &Kb<'_, 'ctx>,
    _cx: &'ctx Context,
    _m: &Module<'ctx>,
    x: FloatValue<'ctx>,
) -> FloatValue<'ctx> {
    let c = k.f32c(7.905_311);
    let xc = k.fmax(k.fmin(x, c), k.fneg(c));
    let x2 = k.fmul(xc, xc);
    let alpha = [
        4.893_524_6e-3f32,
        6.372_619_3e-4,
        1.485_722_4e-5,
        5.122_297e-8,
        -8.604_672e-11,
        2.000_188e-13,
        -2.760_768_5e-16,
    ];
    let beta = [
        4.893_525e-3f32,
        2.268_434_6e-3,
        1.185_347_1e-4,
        1.198_258_4e-6,
    ];
    let mut p = k.f32c(alpha[6]);
    for &a in alpha[..6].iter().rev() {
        p = k.fma(x2, p, k.f32c(a));
    }
    let p = k.fmul(xc, p);
    let mut q = k.f32c(beta[3]);
    for &b in beta[..3].iter().rev() {
        q = k.fma(x2, q, k.f32c(b));
    }
    let t = k.fdiv(p, q);
    let tiny = k.fcmp(FloatPredicate::OLT, k.fabs(x), k.f32c(4e-4));
    let t = k.select(tiny, x, t).into_float_value();
    // from 9 on tanh rounds to ±1 exactly (so 1 + tanh(−inf) is 0, as libm gives)
    let big = k.fcmp(FloatPredicate::OGE, k.fabs(x), k.f32c(9.0));
    let neg = k.fcmp(FloatPredicate::OLT, x, k.f32c(0.0));
    let one = k.select(neg, k.f32c(-1.0), k.f32c(1.0)).into_float_value();
    let t = k.select(big, one, t).into_float_value();
    let nan = k.fcmp(FloatPredicate::UNO, x, x);
    k.select(nan, x, t).into_float_value()
}

/// `erf(x)`: a series for |x| < 0.5, else 1 − e^{−x²}·R(|x|) with a rational fit
/// (absolute error below 2e-7).
fn erf<'ctx>(
    k: &Kb<'_, 'ctx>,
    cx: &'ctx Context,
    m: &Module<'ctx>,
    x: FloatValue<'ctx>,
) -> FloatValue<'ctx> {
    let a = k.fabs(x);
    // |x| < 0.5: x·(2/√π)(1 − x²/3 + x⁴/10 − x⁶/42 + x⁸/216 − x¹⁰/1320 + x¹²/9360)
    let x2 = k.fmul(a, a);
    let c = [
        std::f32::consts::FRAC_2_SQRT_PI,
        -0.376_126_4,
        0.112_837_92,
        -0.026_866_17,
        0.005_223_977,
        -8.548_325e-4,
        1.205_529_3e-4,
    ];
    let mut p = k.f32c(c[6]);
    for &ci in c[..6].iter().rev() {
        p = k.fma(p, x2, k.f32c(ci));
    }
    let small = k.fmul(a, p);
    // |x| ≥ 0.5: Abramowitz–Stegun 7.1.26 refined: t = 1/(1 + p·a)
    let t = k.fdiv(k.f32c(1.0), k.fma(k.f32c(0.327_591_1), a, k.f32c(1.0)));
    let b = [
        0.254_829_6f32,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    let mut q = k.f32c(b[4]);
    for &bi in b[..4].iter().rev() {
        q = k.fma(q, t, k.f32c(bi));
    }
    let q = k.fmul(q, t);
    let e = k
        .call(get(cx, m, MathFn::Exp), &[k.fneg(x2).into()])
        .expect("v")
        .into_float_value();
    let large = k.fsub(k.f32c(1.0), k.fmul(q, e));
    let is_small = k.fcmp(FloatPredicate::OLT, a, k.f32c(0.5));
    let y = k.select(is_small, small, large).into_float_value();
    let big = k.fcmp(FloatPredicate::OGT, a, k.f32c(10.0));
    let y = k.select(big, k.f32c(1.0), y).into_float_value();
    let neg = k.fcmp(FloatPredicate::OLT, x, k.f32c(0.0));
    let y = k.select(neg, k.fneg(y), y).into_float_value();
    let nan = k.fcmp(FloatPredicate::UNO, x, x);
    k.select(nan, x, y).into_float_value()
}

/// sin or cos as musl's `sinf`/`cosf`: `x` reduced by multiples of π/2 in f64 (a 25-bit and a
/// 53-bit part of π/2, exact for |x| < 2^28), then f64 polynomials on [-π/4, π/4] (0.5 ulp).
/// Beyond 2^28 the reduction would need all of 2/π's bits: the result is NaN.
fn sincos<'ctx>(
    k: &Kb<'_, 'ctx>,
    cx: &'ctx Context,
    _m: &Module<'ctx>,
    x: FloatValue<'ctx>,
    cos: bool,
) -> FloatValue<'ctx> {
    let f64t = cx.f64_type();
    let d = |v: f64| f64t.const_float(v);
    let b = &k.b;
    let mul = |a, c| b.build_float_mul(a, c, "").expect("mul");
    let add = |a, c| b.build_float_add(a, c, "").expect("add");
    let sub = |a, c| b.build_float_sub(a, c, "").expect("sub");
    let xd = b.build_float_ext(x, f64t, "").expect("fpext");
    // q = round(x·2/π): adding and subtracting 1.5·2^52 rounds to an integer
    let toint = d(1.5 / f64::EPSILON);
    let q = sub(add(mul(xd, d(std::f64::consts::FRAC_2_PI)), toint), toint);
    // π/2 = 0x1.921fb5p+0 (25 bits: q times it is exact) + 0x1.110b4611a6263p-26
    let r = sub(
        sub(xd, mul(q, d(1.570_796_310_901_641_8))),
        mul(q, d(1.589_325_477_352_819_6e-8)),
    );
    let qi = b
        .build_float_to_signed_int(q, k.i32t(), "")
        .expect("fptosi");
    let qi = if cos { k.add(qi, k.i32c(1)) } else { qi };
    let z = mul(r, r);
    let w = mul(z, z);
    let s = {
        let rr = add(
            d(-1.983_933_483_609_663_2e-4),
            mul(z, d(2.718_311_493_989_822e-6)),
        );
        let sz = mul(z, r);
        add(
            add(
                r,
                mul(
                    sz,
                    add(
                        d(-1.666_666_664_162_652_4e-1),
                        mul(z, d(8.333_329_385_889_463e-3)),
                    ),
                ),
            ),
            mul(mul(sz, w), rr),
        )
    };
    let c = {
        let rr = add(
            d(-1.388_676_377_460_993e-3),
            mul(z, d(2.439_044_879_627_741e-5)),
        );
        add(
            add(
                add(d(1.0), mul(z, d(-4.999_999_972_510_31e-1))),
                mul(w, d(4.166_662_332_373_906e-2)),
            ),
            mul(mul(w, z), rr),
        )
    };
    let odd = k.icmp(
        IntPredicate::NE,
        b.build_and(qi, k.i32c(1), "").expect("and"),
        k.i32c(0),
    );
    let v = k.select(odd, c, s).into_float_value();
    let flip = k.icmp(
        IntPredicate::NE,
        b.build_and(qi, k.i32c(2), "").expect("and"),
        k.i32c(0),
    );
    let v = k
        .select(flip, b.build_float_neg(v, "").expect("neg"), v)
        .into_float_value();
    let v = b.build_float_trunc(v, k.f32t(), "").expect("fptrunc");
    // NaN and infinities give NaN, as does |x| ≥ 2^28
    let ok = k.fcmp(FloatPredicate::OLT, k.fabs(x), k.f32c(268_435_456.0));
    k.select(ok, v, k.f32c(f32::NAN)).into_float_value()
}

/// `log(1 + u)` accurate for small u: `log(w)·u/(w − 1)` with `w = 1 + u` rounded (Goldberg).
pub fn log1p<'ctx>(k: &Kb<'_, 'ctx>, u: FloatValue<'ctx>) -> FloatValue<'ctx> {
    let one = k.f32c(1.0);
    let w = k.b.build_float_add(one, u, "").expect("add");
    let wm1 = exact_sub(k, w, one);
    let l = call(k, MathFn::Log, w);
    let r =
        k.b.build_float_div(exact_mul(k, l, u), wm1, "")
            .expect("div");
    let tiny = k.fcmp(FloatPredicate::OEQ, wm1, k.f32c(0.0));
    let r = k.select(tiny, u, r).into_float_value();
    // large u: w − 1 = u and the quotient is log(w) (also for u = inf)
    let big = k.fcmp(FloatPredicate::OGT, u, k.f32c(1e30));
    k.select(big, l, r).into_float_value()
}

/// `a − b` rounded once, with no fast-math flags (no refolding with neighbouring operations).
fn exact_sub<'ctx>(k: &Kb<'_, 'ctx>, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> FloatValue<'ctx> {
    k.b.build_float_sub(a, b, "").expect("sub")
}

fn exact_mul<'ctx>(k: &Kb<'_, 'ctx>, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> FloatValue<'ctx> {
    k.b.build_float_mul(a, b, "").expect("mul")
}

#[derive(Clone, Copy, PartialEq)]
enum Rounding {
    Floor,
    Ceil,
    Trunc,
    Even,
}

/// Rounding without libm: through a 32-bit integer for |x| < 2^23 (larger floats are integers).
fn rounding<'ctx>(k: &Kb<'_, 'ctx>, x: FloatValue<'ctx>, mode: Rounding) -> FloatValue<'ctx> {
    let big = k.fcmp(FloatPredicate::UGE, k.fabs(x), k.f32c(8_388_608.0));
    let y = match mode {
        Rounding::Even => {
            // add and subtract 2^23 with the sign of x: the FPU rounds to nearest even
            let magic = k
                .select(
                    k.fcmp(FloatPredicate::OLT, x, k.f32c(0.0)),
                    k.f32c(-8_388_608.0),
                    k.f32c(8_388_608.0),
                )
                .into_float_value();
            let s = k.b.build_float_add(x, magic, "").expect("add");
            k.b.build_float_sub(s, magic, "").expect("sub")
        }
        _ => {
            let t = k.si_to_f32(k.f32_to_si(x, k.i32t()));
            match mode {
                Rounding::Trunc => t,
                Rounding::Floor => {
                    let gt = k.fcmp(FloatPredicate::OGT, t, x);
                    k.select(gt, k.fsub(t, k.f32c(1.0)), t).into_float_value()
                }
                _ => {
                    let lt = k.fcmp(FloatPredicate::OLT, t, x);
                    k.select(lt, k.fadd(t, k.f32c(1.0)), t).into_float_value()
                }
            }
        }
    };
    // results have the sign of x (ceil(-0.3) = -0); or-ing the sign bit changes only zeros
    let y = k.b.build_bit_cast(
        k.b.build_or(
            k.f32_bits(y),
            k.b.build_and(k.f32_bits(x), k.i32c(i32::MIN), "")
                .expect("and"),
            "",
        )
        .expect("or"),
        k.f32t(),
        "",
    );
    let y = y.expect("bitcast").into_float_value();
    k.select(big, x, y).into_float_value()
}

/// f16 bits to f32 with integer operations (no F16C needed): normal, subnormal, inf/NaN.
fn half_to_f32<'ctx>(k: &Kb<'_, 'ctx>, h: IntValue<'ctx>) -> FloatValue<'ctx> {
    let and = |a, b| k.b.build_and(a, b, "").expect("and");
    let shl = |a, n: i32| k.b.build_left_shift(a, k.i32c(n), "").expect("shl");
    let shr = |a, n: i32| k.b.build_right_shift(a, k.i32c(n), false, "").expect("shr");
    let sign = shl(and(h, k.i32c(0x8000)), 16);
    let expo = and(shr(h, 10), k.i32c(0x1f));
    let mant = and(h, k.i32c(0x3ff));
    // normal: rebias the exponent
    let normal =
        k.b.build_or(shl(k.add(expo, k.i32c(112)), 23), shl(mant, 13), "")
            .expect("or");
    // inf/NaN
    let special =
        k.b.build_or(k.i32c(0x7f80_0000), shl(mant, 13), "")
            .expect("or");
    // subnormal: mant · 2^-24
    let sub = k.f32_bits(k.fmul(k.si_to_f32(mant), k.f32c(5.960_464_5e-8)));
    let is_zero_exp = k.icmp(IntPredicate::EQ, expo, k.i32c(0));
    let is_max_exp = k.icmp(IntPredicate::EQ, expo, k.i32c(31));
    let v = k.select(is_max_exp, special, normal).into_int_value();
    let v = k.select(is_zero_exp, sub, v).into_int_value();
    k.bits_f32(k.b.build_or(v, sign, "").expect("or"))
}

/// f32 to f16 bits, rounding to nearest even; overflow gives inf, NaN stays NaN.
fn f32_to_half<'ctx>(k: &Kb<'_, 'ctx>, x: FloatValue<'ctx>) -> IntValue<'ctx> {
    let and = |a, b| k.b.build_and(a, b, "").expect("and");
    let shr = |a, n: i32| k.b.build_right_shift(a, k.i32c(n), false, "").expect("shr");
    let bits = k.f32_bits(x);
    let sign = and(shr(bits, 16), k.i32c(0x8000));
    let abs = and(bits, k.i32c(0x7fff_ffff));
    let absf = k.bits_f32(abs);
    // normal range: round the mantissa to 10 bits (add 0xfff + lsb), rebias
    let lsb = and(shr(abs, 13), k.i32c(1));
    let rounded = k.add(k.add(abs, k.i32c(0xfff)), lsb);
    let normal = k.sub(shr(rounded, 13), k.i32c(112 << 10));
    // subnormal range (|x| < 2^-14): value / 2^-24 rounded to even, via the FPU
    let sub = k.f32_to_si(
        rounding(k, k.fmul(absf, k.f32c(16_777_216.0)), Rounding::Even),
        k.i32t(),
    );
    let is_sub = k.icmp(IntPredicate::ULT, abs, k.i32c(0x3880_0000));
    let v = k.select(is_sub, sub, normal).into_int_value();
    let over = k.icmp(IntPredicate::UGE, abs, k.i32c(0x477f_f000));
    let v = k.select(over, k.i32c(0x7c00), v).into_int_value();
    let nan = k.icmp(IntPredicate::UGT, abs, k.i32c(0x7f80_0000));
    let v = k.select(nan, k.i32c(0x7e00), v).into_int_value();
    k.b.build_or(v, sign, "").expect("or")
}
