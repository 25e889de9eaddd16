//! f32 activations against dense panels (f32, f16 or bf16 weights).

use super::{axpy_rows, V};
use crate::cpu::isa::VectorIsa;
use crate::cpu::kb::{Kb, Var};
use crate::cpu::pack::NR;
use inkwell::values::{IntValue, PointerValue};
use llmc_ir::DType;

/// f32 activations against dense panels of `dt` at `w` (inputs `x` with rows of `k`): one
/// FMA per token and k, the panel's 16 weights widened to f32 as they load.
pub(super) fn dense_tile<'ctx>(
    kb: &mut Kb<'_, 'ctx>,
    dt: DType,
    vx: &dyn VectorIsa,
    (x, w, k): (PointerValue<'ctx>, PointerValue<'ctx>, IntValue<'ctx>),
    p: IntValue<'ctx>,
    m0: IntValue<'ctx>,
    acc: &[Var<'ctx>],
) {
    let nr = NR as u32;
    let esz = dt.size() as i64;
    // panel bytes: K·NR elements rounded up to 64 (pack::dense_panel_bytes)
    let pb = kb.add(kb.mul(k, kb.i64c(NR as i64 * esz)), kb.i64c(63));
    let pb = kb.mul(kb.sdiv(pb, kb.i64c(64)), kb.i64c(64));
    let wbase = kb.mul(p, pb);
    let zero = kb.i64c(0);
    kb.for_range(zero, k, 1, |kb, kk| {
        let v = V { kb };
        let off = kb.add(wbase, kb.mul(kk, kb.i64c(NR as i64 * esz)));
        let wv = match dt {
            DType::F32 => v.load_vec(kb.f32t().into(), nr, w, off),
            other => v.load_floats(other, w, off, vx),
        };
        axpy_rows(kb, acc, x, m0, k, kk, wv);
    });
}
