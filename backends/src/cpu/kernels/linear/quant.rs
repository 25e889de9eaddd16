//! Quantized panels (`pack::pack_quant`): their sizes, the per-group scales and zeros, and
//! f32 activations against codes dequantized in registers.

use super::{arg, axpy_rows, V};
use crate::cpu::isa::VectorIsa;
use crate::cpu::kb::{Kb, Var};
use crate::cpu::pack::NR;
use inkwell::types::VectorType;
use inkwell::values::{IntValue, PointerValue, VectorValue};
use llmc_ir::{Group, QuantSpec, Zero};

/// Byte offsets of quantized panel `p`'s parts in `w`: (panel start, scales, zeros), and the
/// group length. Every kernel that reads the panel calls this as it starts, so it also asks
/// for the next panel's scales and zeros (see [`prefetch_next_groups`]).
pub(super) fn enter_quant_panel<'ctx>(
    kb: &Kb<'_, 'ctx>,
    q: &QuantSpec,
    w: PointerValue<'ctx>,
    p: IntValue<'ctx>,
    k: IntValue<'ctx>,
) -> (
    IntValue<'ctx>,
    IntValue<'ctx>,
    IntValue<'ctx>,
    IntValue<'ctx>,
) {
    let sz = quant_panel_sizes(kb, q, k);
    let start = kb.mul(p, sz.panel);
    let soff = kb.add(start, sz.codes);
    let zoff = kb.add(soff, sz.scales);
    prefetch_next_groups(kb, q, w, (soff, zoff), sz.panel);
    (start, soff, zoff, sz.group)
}

/// Byte sizes of a quantized panel over `k` (`pack::quant_panel_bytes`, at run time): its
/// codes, its scales, the whole panel; and the group length.
#[derive(Clone, Copy)]
pub(super) struct QuantPanelSizes<'ctx> {
    pub(super) codes: IntValue<'ctx>,
    pub(super) scales: IntValue<'ctx>,
    pub(super) panel: IntValue<'ctx>,
    pub(super) group: IntValue<'ctx>,
}

pub(super) fn quant_panel_sizes<'ctx>(
    kb: &Kb<'_, 'ctx>,
    q: &QuantSpec,
    k: IntValue<'ctx>,
) -> QuantPanelSizes<'ctx> {
    let g = match q.group {
        Group::Size(g) => kb.i64c(g as i64),
        _ => k,
    };
    let groups = kb.sdiv(k, g);
    let nr = kb.i64c(NR as i64);
    let codes = kb.sdiv(kb.mul(kb.mul(k, nr), kb.i64c(q.bits as i64)), kb.i64c(8));
    let ssz = kb.i64c(q.scale.size() as i64);
    let scales = kb.mul(kb.mul(groups, nr), ssz);
    let zeros = match q.zero {
        Zero::Symmetric => kb.i64c(0),
        Zero::Int => kb.mul(groups, nr),
        Zero::Float => kb.mul(kb.mul(groups, nr), ssz),
    };
    let total = kb.add(kb.add(codes, scales), zeros);
    let panel = kb.mul(
        kb.sdiv(kb.add(total, kb.i64c(63)), kb.i64c(64)),
        kb.i64c(64),
    );
    QuantPanelSizes {
        codes,
        scales,
        panel,
        group: g,
    }
}

/// The zero term of group `gi`: `(zz, m)` so that a weight is `s·(u − zz)` (`sym`, `asym`) or
/// `s·u + m` (`min`), 16 lanes as f32.
pub(super) fn zeros_of<'ctx>(
    v: &V<'_, '_, 'ctx>,
    q: &QuantSpec,
    w: PointerValue<'ctx>,
    zoff: IntValue<'ctx>,
    gi: IntValue<'ctx>,
    vx: &dyn VectorIsa,
) -> (Option<VectorValue<'ctx>>, Option<VectorValue<'ctx>>) {
    let kb = v.kb;
    let nr = NR as u32;
    match q.zero {
        Zero::Symmetric => (
            Some(VectorType::const_vector(
                &[kb.f32c((1u32 << (q.bits - 1)) as f32); NR],
            )),
            None,
        ),
        Zero::Int => {
            let z = v.load_vec(
                kb.i8t().into(),
                nr,
                w,
                kb.add(zoff, kb.mul(gi, kb.i64c(NR as i64))),
            );
            (Some(v.uitofp(z, nr)), None)
        }
        Zero::Float => {
            let off = kb.add(zoff, kb.mul(gi, kb.i64c((NR * q.scale.size()) as i64)));
            (None, Some(v.load_floats(q.scale, w, off, vx)))
        }
    }
}

/// f32 activations against quantized Dot4 panels: each code is dequantized in registers.
pub(super) fn quant_f32_tile<'ctx>(
    kb: &mut Kb<'_, 'ctx>,
    q: &QuantSpec,
    vx: &dyn VectorIsa,
    p: IntValue<'ctx>,
    m0: IntValue<'ctx>,
    acc: &[Var<'ctx>],
) {
    let (x, w, k) = (kb.arg_ptr(arg::X), kb.arg_ptr(arg::W), kb.arg(arg::K));
    let (start, soff, zoff, g) = enter_quant_panel(kb, q, w, p, k);
    dequant_panel(
        kb,
        q,
        vx,
        w,
        (start, soff, zoff, g),
        k,
        &mut |kb, k0, off, wf| {
            let kk = kb.add(k0, kb.i64c(off as i64));
            axpy_rows(kb, acc, x, m0, k, kk, wf)
        },
    );
}

/// Dequantizes the 16 rows of a Dot4 panel over `cols` columns in registers, calling `f`
/// with each column as a block start (a multiple of 8 for 4-bit codes, of 4 for 8-bit) and an
/// offset known when generating, and its 16 weights as f32.
pub(super) fn dequant_panel<'ctx>(
    kb: &mut Kb<'_, 'ctx>,
    q: &QuantSpec,
    vx: &dyn VectorIsa,
    w: PointerValue<'ctx>,
    (start, soff, zoff, g): (
        IntValue<'ctx>,
        IntValue<'ctx>,
        IntValue<'ctx>,
        IntValue<'ctx>,
    ),
    cols: IntValue<'ctx>,
    f: &mut dyn FnMut(&mut Kb<'_, 'ctx>, IntValue<'ctx>, u32, VectorValue<'ctx>),
) {
    let nr = NR as u32;
    let groups = kb.sdiv(cols, g);
    let step: i64 = if q.bits == 4 { 8 } else { 4 };
    let zero = kb.i64c(0);
    let q = *q;
    kb.for_range(zero, groups, 1, |kb, gi| {
        let v = V { kb };
        let s = v.load_floats(
            q.scale,
            w,
            kb.add(soff, kb.mul(gi, kb.i64c((NR * q.scale.size()) as i64))),
            vx,
        );
        let (zz, mn) = zeros_of(&v, &q, w, zoff, gi, vx);
        let kg0 = kb.mul(gi, g);
        let kg1 = kb.add(kg0, g);
        kb.for_range(kg0, kg1, step, |kb, k0| {
            let v = V { kb };
            // the block's bytes: 64 per step
            let boff = kb.add(start, kb.mul(kb.sdiv(k0, kb.i64c(step)), kb.i64c(64)));
            let bytes = v.load_vec(kb.i8t().into(), 64, w, boff);
            let parts: Vec<(VectorValue, i64)> = if q.bits == 4 {
                let lo = v.and(bytes, v.const_i8(0x0f, 64));
                let hi = v.lshr(bytes, v.const_i8(4, 64));
                vec![(lo, 0), (hi, 4)]
            } else {
                vec![(bytes, 0)]
            };
            for (codes, kofs) in parts {
                for t in 0..4u32 {
                    let v = V { kb };
                    let idx: Vec<u32> = (0..nr).map(|j| 4 * j + t).collect();
                    let u = v.uitofp(v.shuffle(codes, &idx), nr);
                    let wf = match (zz, mn) {
                        (Some(zz), _) => v.fmul(v.fsub(u, zz), s),
                        (None, Some(m)) => v.fma(u, s, m),
                        _ => unreachable!(),
                    };
                    f(kb, k0, kofs as u32 + t, wf);
                }
            }
        });
    });
}

/// Asks for the first lines of the next panel's scales and zeros, `stride` bytes on: a
/// panel reads its zeros as it starts and its scales as its first group ends, before the
/// hardware prefetcher has found either stream.
pub(super) fn prefetch_next_groups<'ctx>(
    kb: &Kb<'_, 'ctx>,
    q: &QuantSpec,
    w: PointerValue<'ctx>,
    (soff, zoff): (IntValue<'ctx>, IntValue<'ctx>),
    stride: IntValue<'ctx>,
) {
    for line in 0..4 {
        kb.prefetch(w, kb.add(kb.add(soff, stride), kb.i64c(line * 64)));
    }
    if q.zero != Zero::Symmetric {
        for line in 0..2 {
            kb.prefetch(w, kb.add(kb.add(zoff, stride), kb.i64c(line * 64)));
        }
    }
}
