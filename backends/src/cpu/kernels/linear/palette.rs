//! f32 activations against 4-bit palette panels: each panel's 16-entry codebook stays in a
//! register and every index is looked up in it ([`VectorIsa::lookup16_mem`]).

use super::{arg, axpy_rows, V};
use crate::cpu::isa::VectorIsa;
use crate::cpu::kb::{Kb, Var};
use crate::cpu::pack::NR;
use inkwell::values::IntValue;

/// f32 activations against palette panels: the panel's codebook stays in a register and
/// every index is looked up in it.
pub(super) fn palette_tile<'ctx>(
    kb: &mut Kb<'_, 'ctx>,
    vx: &dyn VectorIsa,
    p: IntValue<'ctx>,
    m0: IntValue<'ctx>,
    acc: &[Var<'ctx>],
) {
    let (x, w, k) = (kb.arg_ptr(arg::X), kb.arg_ptr(arg::W), kb.arg(arg::K));
    let nr = NR as u32;
    // as pack::palette_panel_bytes
    let pb = kb.add(kb.i64c(64), kb.mul(k, kb.i64c(NR as i64 / 2)));
    let start = kb.mul(p, pb);
    let table_at = kb.gep(kb.i8t().into(), w, start);
    let table = V { kb }.load_vec(kb.f32t().into(), nr, w, start);
    let codes_at = kb.add(start, kb.i64c(64));
    let zero = kb.i64c(0);
    kb.for_range(zero, k, 8, |kb, k0| {
        let v = V { kb };
        let bytes = v.load_vec(
            kb.i8t().into(),
            64,
            w,
            kb.add(codes_at, kb.mul(k0, kb.i64c(8))),
        );
        let lo = v.and(bytes, v.const_i8(0x0f, 64));
        let hi = v.lshr(bytes, v.const_i8(4, 64));
        for (codes, kofs) in [(lo, 0), (hi, 4)] {
            for t in 0..4u32 {
                let v = V { kb };
                let sel: Vec<u32> = (0..nr).map(|j| 4 * j + t).collect();
                let idx =
                    kb.b.build_int_z_extend(v.shuffle(codes, &sel), v.i32v(nr), "")
                        .expect("zext");
                let wf = vx.lookup16_mem(kb, table, table_at, idx);
                let kk = kb.add(k0, kb.i64c(kofs + t as i64));
                axpy_rows(kb, acc, x, m0, k, kk, wf);
            }
        }
    });
}
