//! The generic twins: every vector primitive in portable LLVM IR (widening integer
//! arithmetic, shuffles, per-lane loads), which any target compiles and which define what the
//! x86-64 and AArch64 versions must compute. They are also those versions' fallback for the
//! operations a target lacks.

use super::{Codes, VectorIsa};
use crate::cpu::kb::Kb;
use crate::cpu::math::{self, MathFn};
use inkwell::values::{FloatValue, PointerValue, VectorValue};
use inkwell::IntPredicate;

/// The primitives of a target without kernels of its own.
#[derive(Clone, Copy, Debug, Default)]
pub struct Generic;

impl VectorIsa for Generic {
    fn name(&self) -> &'static str {
        "generic"
    }

    fn tile_rows(&self, _int8: bool) -> usize {
        2
    }

    fn sparse_window(&self, _k16: bool) -> Option<u32> {
        None
    }

    fn lookup<'ctx>(
        &self,
        kb: &Kb<'_, 'ctx>,
        table: VectorValue<'ctx>,
        idx: VectorValue<'ctx>,
    ) -> VectorValue<'ctx> {
        lookup(kb, table, idx)
    }

    fn lookup16_mem<'ctx>(
        &self,
        kb: &Kb<'_, 'ctx>,
        _table: VectorValue<'ctx>,
        table_at: PointerValue<'ctx>,
        idx: VectorValue<'ctx>,
    ) -> VectorValue<'ctx> {
        lookup16_mem(kb, table_at, idx)
    }

    fn dot4<'ctx>(
        &self,
        kb: &Kb<'_, 'ctx>,
        acc: VectorValue<'ctx>,
        a: VectorValue<'ctx>,
        b: VectorValue<'ctx>,
        codes: Codes,
        _second_chain: bool,
    ) -> VectorValue<'ctx> {
        dot4(kb, acc, a, b, codes)
    }

    fn smmla<'ctx>(
        &self,
        kb: &Kb<'_, 'ctx>,
        acc: VectorValue<'ctx>,
        a: VectorValue<'ctx>,
        b: VectorValue<'ctx>,
    ) -> VectorValue<'ctx> {
        smmla(kb, acc, a, b)
    }

    fn half_to_f32<'ctx>(&self, kb: &Kb<'_, 'ctx>, h: VectorValue<'ctx>) -> VectorValue<'ctx> {
        half_to_f32(kb, h)
    }

    fn round_even<'ctx>(&self, kb: &Kb<'_, 'ctx>, x: FloatValue<'ctx>) -> FloatValue<'ctx> {
        round_even(kb, x)
    }
}

/// [`VectorIsa::lookup`]: one extract per lane from the table register.
pub fn lookup<'ctx>(
    kb: &Kb<'_, 'ctx>,
    table: VectorValue<'ctx>,
    idx: VectorValue<'ctx>,
) -> VectorValue<'ctx> {
    let n = idx.get_type().get_size();
    let mut out = kb.f32t().vec_type(n).const_zero();
    for lane in 0..n {
        let i =
            kb.b.build_extract_element(idx, kb.i32c(lane as i32), "")
                .expect("extract")
                .into_int_value();
        let e = kb.b.build_extract_element(table, i, "").expect("extract");
        out =
            kb.b.build_insert_element(out, e, kb.i32c(lane as i32), "")
                .expect("insert");
    }
    out
}

/// [`VectorIsa::lookup16_mem`]: one load per lane from the table in memory.
pub fn lookup16_mem<'ctx>(
    kb: &Kb<'_, 'ctx>,
    table_at: PointerValue<'ctx>,
    idx: VectorValue<'ctx>,
) -> VectorValue<'ctx> {
    let n = idx.get_type().get_size();
    let mut out = kb.f32t().vec_type(n).const_zero();
    for lane in 0..n {
        let i =
            kb.b.build_extract_element(idx, kb.i32c(lane as i32), "")
                .expect("extract")
                .into_int_value();
        let i = kb.zext(i, kb.i64t());
        let e = kb.load_f32(table_at, i);
        out =
            kb.b.build_insert_element(out, e, kb.i32c(lane as i32), "")
                .expect("insert");
    }
    out
}

/// [`VectorIsa::dot4`]: widen to i32, multiply, add the four products of each lane.
pub fn dot4<'ctx>(
    kb: &Kb<'_, 'ctx>,
    acc: VectorValue<'ctx>,
    a: VectorValue<'ctx>,
    b: VectorValue<'ctx>,
    codes: Codes,
) -> VectorValue<'ctx> {
    let ext = |x: VectorValue<'ctx>, signed: bool| {
        let t = kb.i32t().vec_type(64);
        if signed {
            kb.b.build_int_s_extend(x, t, "").expect("sext")
        } else {
            kb.b.build_int_z_extend(x, t, "").expect("zext")
        }
    };
    let prod =
        kb.b.build_int_mul(ext(a, codes == Codes::S8), ext(b, true), "")
            .expect("mul");
    let mut sum = acc;
    for t in 0..4u32 {
        let part = kb.shuffle(prod, &(0..16u32).map(|j| 4 * j + t).collect::<Vec<_>>());
        sum = kb.b.build_int_add(sum, part, "").expect("add");
    }
    sum
}

/// [`VectorIsa::smmla`]: the four 8-long dot products of sign-extended rows.
pub fn smmla<'ctx>(
    kb: &Kb<'_, 'ctx>,
    acc: VectorValue<'ctx>,
    a: VectorValue<'ctx>,
    b: VectorValue<'ctx>,
) -> VectorValue<'ctx> {
    let t16 = kb.i32t().vec_type(16);
    let a = kb.b.build_int_s_extend(a, t16, "").expect("sext");
    let b = kb.b.build_int_s_extend(b, t16, "").expect("sext");
    // lane 8l + t of the products: a[8i + t]·b[8j + t] for output l = 2i + j
    let pick = |rows_of: fn(u32) -> u32| -> Vec<u32> {
        (0..4u32)
            .flat_map(|l| (0..8u32).map(move |t| 8 * rows_of(l) + t))
            .collect()
    };
    let ai = kb.shuffle(a, &pick(|l| l / 2));
    let bj = kb.shuffle(b, &pick(|l| l % 2));
    let prod = kb.b.build_int_mul(ai, bj, "").expect("mul");
    let mut sum = acc;
    for t in 0..8u32 {
        let part = kb.shuffle(prod, &(0..4u32).map(|l| 8 * l + t).collect::<Vec<_>>());
        sum = kb.b.build_int_add(sum, part, "").expect("add");
    }
    sum
}

/// [`VectorIsa::half_to_f32`] with integer operations.
pub fn half_to_f32<'ctx>(kb: &Kb<'_, 'ctx>, h: VectorValue<'ctx>) -> VectorValue<'ctx> {
    let n = h.get_type().get_size();
    let (f32v, i32v) = (kb.f32t().vec_type(n), kb.i32t().vec_type(n));
    let c = |x: i32| kb.i32s(x, n);
    let w = kb.b.build_int_z_extend(h, i32v, "").expect("zext");
    let sign =
        kb.b.build_left_shift(kb.b.build_and(w, c(0x8000), "").expect("and"), c(16), "")
            .expect("shl");
    let em = kb.b.build_and(w, c(0x7fff), "").expect("and");
    // normal and subnormal: shift into place and rescale by 2^112 (exact); inf/NaN: force the exponent
    let shifted = kb.b.build_left_shift(em, c(13), "").expect("shl");
    let f =
        kb.b.build_float_mul(
            kb.vbitcast(shifted, f32v),
            inkwell::types::VectorType::const_vector(&vec![kb.f32c(5.192_297e33); n as usize]),
            "",
        )
        .expect("mul");
    let special =
        kb.b.build_int_compare(IntPredicate::UGE, em, c(0x7c00), "")
            .expect("cmp");
    let inf = kb.b.build_or(shifted, c(0x7f80_0000), "").expect("or");
    let bits =
        kb.b.build_select(special, inf, kb.vbitcast(f, i32v), "")
            .expect("select")
            .into_vector_value();
    kb.vbitcast(kb.b.build_or(bits, sign, "").expect("or"), f32v)
}

/// [`VectorIsa::round_even`] with the module's own integer-free function.
pub fn round_even<'ctx>(kb: &Kb<'_, 'ctx>, x: FloatValue<'ctx>) -> FloatValue<'ctx> {
    math::call(kb, MathFn::RoundEven, x)
}
