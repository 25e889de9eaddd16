//! The x86-64 primitives: AVX-512 `vpermps` and VNNI `vpdpbusd`, AVX2 `vpermps` pairs and
//! `vpmaddubsw`, F16C conversions and SSE4.1 rounding; the generic twins where the level or a
//! feature is missing (SSE2 alone takes them all).

use super::generic;
use super::{Codes, VectorIsa, X86Features, X86Level};
use crate::cpu::kb::Kb;
use inkwell::types::VectorType;
use inkwell::values::{FloatValue, PointerValue, VectorValue};
use inkwell::IntPredicate;

/// The primitives of an x86-64 target with these features.
#[derive(Clone, Copy, Debug)]
pub struct X86_64(pub X86Features);

impl X86_64 {
    fn at_least(&self, level: X86Level) -> bool {
        self.0.level >= level
    }
}

impl VectorIsa for X86_64 {
    fn name(&self) -> &'static str {
        match self.0.level {
            X86Level::Sse2 => "sse2",
            X86Level::Avx2 => "avx2",
            X86Level::Avx512 if self.0.vnni => "avx512vnni",
            X86Level::Avx512 => "avx512",
        }
    }

    fn tile_rows(&self, int8: bool) -> usize {
        match self.0.level {
            X86Level::Avx512 if int8 => 8,
            X86Level::Avx512 => 6,
            X86Level::Avx2 => 3,
            X86Level::Sse2 => 2,
        }
    }

    fn sparse_window(&self, k16: bool) -> Option<u32> {
        if self.at_least(X86Level::Avx512) && k16 {
            Some(16)
        } else if self.at_least(X86Level::Avx2) {
            Some(8)
        } else {
            None
        }
    }

    /// 16 entries: one `vpermps` of a zmm (AVX-512), or two of ymm halves and a blend (AVX2);
    /// 8 entries: one `vpermps` per half of the indices.
    fn lookup<'ctx>(
        &self,
        kb: &Kb<'_, 'ctx>,
        table: VectorValue<'ctx>,
        idx: VectorValue<'ctx>,
    ) -> VectorValue<'ctx> {
        let entries = table.get_type().get_size();
        if !self.at_least(X86Level::Avx2) {
            return generic::lookup(kb, table, idx);
        }
        let permps = |t: VectorValue<'ctx>, i: VectorValue<'ctx>| {
            kb.call_intrinsic("llvm.x86.avx2.permps", &[], &[t.into(), i.into()])
                .into_vector_value()
        };
        match entries {
            16 if self.at_least(X86Level::Avx512) => kb
                .call_intrinsic(
                    "llvm.x86.avx512.permvar.sf.512",
                    &[],
                    &[table.into(), idx.into()],
                )
                .into_vector_value(),
            16 => {
                let (lo, hi) = (kb.lanes(table, 0, 8), kb.lanes(table, 8, 8));
                let eight = kb.i32s(8, 8);
                let zero = kb.i32t().vec_type(8).const_zero();
                let outs: Vec<VectorValue<'ctx>> = (0..2)
                    .map(|h| {
                        let i = kb.lanes(idx, 8 * h, 8);
                        let upper =
                            kb.b.build_int_compare(
                                IntPredicate::NE,
                                kb.b.build_and(i, eight, "").expect("and"),
                                zero,
                                "",
                            )
                            .expect("cmp");
                        kb.b.build_select(upper, permps(hi, i), permps(lo, i), "")
                            .expect("select")
                            .into_vector_value()
                    })
                    .collect();
                kb.concat(outs[0], outs[1])
            }
            8 => kb.concat(
                permps(table, kb.lanes(idx, 0, 8)),
                permps(table, kb.lanes(idx, 8, 8)),
            ),
            other => panic!("no x86-64 lookup in a table of {other} entries"),
        }
    }

    fn lookup16_mem<'ctx>(
        &self,
        kb: &Kb<'_, 'ctx>,
        table: VectorValue<'ctx>,
        table_at: PointerValue<'ctx>,
        idx: VectorValue<'ctx>,
    ) -> VectorValue<'ctx> {
        if self.at_least(X86Level::Avx2) {
            self.lookup(kb, table, idx)
        } else {
            generic::lookup16_mem(kb, table_at, idx)
        }
    }

    /// VNNI: `vpdpbusd` (u8 codes by s8 activations; the second chain uses the saturating
    /// `vpdpbusds`, which LLVM does not fold into the first). AVX2 with 4-bit codes:
    /// `vpmaddubsw` (pairs to i16, which 4-bit codes cannot saturate) then `vpmaddwd` by ones.
    fn dot4<'ctx>(
        &self,
        kb: &Kb<'_, 'ctx>,
        acc: VectorValue<'ctx>,
        a: VectorValue<'ctx>,
        b: VectorValue<'ctx>,
        codes: Codes,
        second_chain: bool,
    ) -> VectorValue<'ctx> {
        if self.0.vnni && codes != Codes::S8 {
            let name = if second_chain {
                "llvm.x86.avx512.vpdpbusds.512"
            } else {
                "llvm.x86.avx512.vpdpbusd.512"
            };
            return kb
                .call_intrinsic(name, &[], &[acc.into(), a.into(), b.into()])
                .into_vector_value();
        }
        if self.at_least(X86Level::Avx2) && codes == Codes::U4 {
            let mut outs = vec![];
            for part in 0..2u32 {
                let ai = kb.lanes(a, part * 32, 32);
                let bi = kb.lanes(b, part * 32, 32);
                let p16 = kb
                    .call_intrinsic("llvm.x86.avx2.pmadd.ub.sw", &[], &[ai.into(), bi.into()])
                    .into_vector_value();
                let ones = VectorType::const_vector(&[kb.cx.i16_type().const_int(1, false); 16]);
                let p32 = kb
                    .call_intrinsic("llvm.x86.avx2.pmadd.wd", &[], &[p16.into(), ones.into()])
                    .into_vector_value();
                outs.push(p32);
            }
            let s = kb.concat(outs[0], outs[1]);
            return kb.b.build_int_add(acc, s, "").expect("add");
        }
        generic::dot4(kb, acc, a, b, codes)
    }

    fn smmla<'ctx>(
        &self,
        kb: &Kb<'_, 'ctx>,
        acc: VectorValue<'ctx>,
        a: VectorValue<'ctx>,
        b: VectorValue<'ctx>,
    ) -> VectorValue<'ctx> {
        generic::smmla(kb, acc, a, b)
    }

    /// `vcvtph2ps` (F16C, AVX-512) through `fpext`.
    fn half_to_f32<'ctx>(&self, kb: &Kb<'_, 'ctx>, h: VectorValue<'ctx>) -> VectorValue<'ctx> {
        if self.0.f16c || self.at_least(X86Level::Avx512) {
            let n = h.get_type().get_size();
            let hv = kb.vbitcast(h, kb.cx.f16_type().vec_type(n));
            return kb
                .b
                .build_float_ext(hv, kb.f32t().vec_type(n), "")
                .expect("fpext");
        }
        generic::half_to_f32(kb, h)
    }

    /// `roundss`/`roundps` (SSE4.1, which every AVX2 CPU has).
    fn round_even<'ctx>(&self, kb: &Kb<'_, 'ctx>, x: FloatValue<'ctx>) -> FloatValue<'ctx> {
        if self.at_least(X86Level::Avx2) {
            kb.call_f32_intrinsic("llvm.roundeven", &[x])
        } else {
            generic::round_even(kb, x)
        }
    }
}
