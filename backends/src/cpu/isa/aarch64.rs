//! The AArch64 primitives: NEON `tbl` lookups, `fcvtl` conversions and `frintn` rounding,
//! `sdot` (dotprod) and `smmla` (i8mm); the generic twins where a feature is missing.

use super::generic;
use super::{ArmFeatures, Codes, VectorIsa};
use crate::cpu::kb::Kb;
use inkwell::values::{BasicValueEnum, FloatValue, VectorValue};

/// The primitives of an AArch64 target with these features.
#[derive(Clone, Copy, Debug)]
pub struct Aarch64(pub ArmFeatures);

impl VectorIsa for Aarch64 {
    fn name(&self) -> &'static str {
        if self.0.i8mm {
            "i8mm"
        } else if self.0.dotprod {
            "dotprod"
        } else {
            "neon"
        }
    }

    fn tile_rows(&self, _int8: bool) -> usize {
        2
    }

    fn sparse_window(&self, _k16: bool) -> Option<u32> {
        None
    }

    /// `tbl` over the table's bytes (four registers for 16 entries, two for 8): lane i takes
    /// bytes `4·idx[i] .. 4·idx[i] + 3`.
    fn lookup<'ctx>(
        &self,
        kb: &Kb<'_, 'ctx>,
        table: VectorValue<'ctx>,
        idx: VectorValue<'ctx>,
    ) -> VectorValue<'ctx> {
        let entries = table.get_type().get_size();
        let n = idx.get_type().get_size();
        let regs = entries / 4;
        let (name, i8x16) = match regs {
            4 => ("llvm.aarch64.neon.tbl4", kb.i8t().vec_type(16)),
            2 => ("llvm.aarch64.neon.tbl2", kb.i8t().vec_type(16)),
            other => panic!("no AArch64 lookup in a table of {} entries", 4 * other),
        };
        let bidx =
            kb.b.build_int_add(
                kb.b.build_int_mul(idx, kb.i32s(0x0404_0404, n), "")
                    .expect("mul"),
                kb.i32s(0x0302_0100, n),
                "",
            )
            .expect("add");
        let bidx = kb.vbitcast(bidx, kb.i8t().vec_type(4 * n));
        let tb = kb.vbitcast(table, kb.i8t().vec_type(4 * entries));
        let t: Vec<BasicValueEnum<'ctx>> =
            (0..regs).map(|q| kb.lanes(tb, 16 * q, 16).into()).collect();
        let parts: Vec<VectorValue<'ctx>> = (0..n / 4)
            .map(|q| {
                let mut args = t.clone();
                args.push(kb.lanes(bidx, 16 * q, 16).into());
                kb.call_intrinsic(name, &[i8x16.into()], &args)
                    .into_vector_value()
            })
            .collect();
        let all = kb.concat_all(parts);
        kb.vbitcast(all, kb.f32t().vec_type(n))
    }

    /// Four 128-bit `sdot`s, for signed codes and for 4-bit ones (which are signed bytes too).
    fn dot4<'ctx>(
        &self,
        kb: &Kb<'_, 'ctx>,
        acc: VectorValue<'ctx>,
        a: VectorValue<'ctx>,
        b: VectorValue<'ctx>,
        codes: Codes,
        _second_chain: bool,
    ) -> VectorValue<'ctx> {
        if !(self.0.dotprod && matches!(codes, Codes::S8 | Codes::U4)) {
            return generic::dot4(kb, acc, a, b, codes);
        }
        let mut outs = vec![];
        for part in 0..4u32 {
            let ai = kb.lanes(a, part * 16, 16);
            let bi = kb.lanes(b, part * 16, 16);
            let ci = kb.lanes(acc, part * 4, 4);
            let r = kb.call_intrinsic(
                "llvm.aarch64.neon.sdot",
                &[kb.i32t().vec_type(4).into(), kb.i8t().vec_type(16).into()],
                &[ci.into(), ai.into(), bi.into()],
            );
            outs.push(r.into_vector_value());
        }
        let ab = kb.concat(outs[0], outs[1]);
        let cd = kb.concat(outs[2], outs[3]);
        kb.concat(ab, cd)
    }

    fn smmla<'ctx>(
        &self,
        kb: &Kb<'_, 'ctx>,
        acc: VectorValue<'ctx>,
        a: VectorValue<'ctx>,
        b: VectorValue<'ctx>,
    ) -> VectorValue<'ctx> {
        if !self.0.i8mm {
            return generic::smmla(kb, acc, a, b);
        }
        kb.call_intrinsic(
            "llvm.aarch64.neon.smmla",
            &[kb.i32t().vec_type(4).into(), kb.i8t().vec_type(16).into()],
            &[acc.into(), a.into(), b.into()],
        )
        .into_vector_value()
    }

    /// `fcvtl` through `fpext`.
    fn half_to_f32<'ctx>(&self, kb: &Kb<'_, 'ctx>, h: VectorValue<'ctx>) -> VectorValue<'ctx> {
        let n = h.get_type().get_size();
        let hv = kb.vbitcast(h, kb.cx.f16_type().vec_type(n));
        kb.b.build_float_ext(hv, kb.f32t().vec_type(n), "")
            .expect("fpext")
    }

    /// `frintn`.
    fn round_even<'ctx>(&self, kb: &Kb<'_, 'ctx>, x: FloatValue<'ctx>) -> FloatValue<'ctx> {
        kb.call_f32_intrinsic("llvm.roundeven", &[x])
    }
}
