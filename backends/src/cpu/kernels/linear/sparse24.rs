//! f32 activations against 2:4 sparse panels: kept values (dense or quantized) and the
//! 2-bit positions that pick their inputs.

use super::quant::{dequant_panel, prefetch_next_groups, quant_panel_sizes};
use super::{arg, Kept, V};
use crate::cpu::isa::VectorIsa;
use crate::cpu::kb::{Kb, Var};
use crate::cpu::pack::NR;
use inkwell::types::VectorType;
use inkwell::values::{IntValue, VectorValue};
use inkwell::IntPredicate;
use llmc_ir::DType;

/// How far ahead (bytes) the 2:4 kernel asks for the dense values and the positions it
/// streams. A panel keeps its parts apart (codes, then scales and zeros; 2:4 values, then
/// positions): streams the hardware prefetcher picks up again only some lines into every
/// panel, so decode, which reads each byte once, would wait on memory at every panel's start.
const PREFETCH_VALUES: i64 = 1024;
const PREFETCH_POS: i64 = 512;

/// f32 activations against 2:4 panels: each kept value (decoded in registers) multiplies
/// the input its 2-bit position picks out of its group of four: a [`VectorIsa::lookup`] in a
/// window of the token's inputs where the ISA has one ([`VectorIsa::sparse_window`]: `vpermps`
/// 16 wide on AVX-512, 8 on AVX2), selects among four broadcasts elsewhere.
#[allow(clippy::too_many_arguments)]
pub(super) fn sparse24_tile<'ctx>(
    kb: &mut Kb<'_, 'ctx>,
    kept: Kept,
    k16: bool,
    vx: &dyn VectorIsa,
    p: IntValue<'ctx>,
    m0: IntValue<'ctx>,
    acc: &[Var<'ctx>],
) {
    let (x, w, k) = (kb.arg_ptr(arg::X), kb.arg_ptr(arg::W), kb.arg(arg::K));
    let nr = NR as u32;
    let half = kb.sdiv(k, kb.i64c(2));
    let round64 = |kb: &Kb<'_, 'ctx>, b: IntValue<'ctx>| {
        kb.mul(kb.sdiv(kb.add(b, kb.i64c(63)), kb.i64c(64)), kb.i64c(64))
    };
    // as pack::sparse24_panel_bytes
    let (vb, qsz) = match kept {
        Kept::Dense(dt) => (
            round64(kb, kb.mul(half, kb.i64c((NR * dt.size()) as i64))),
            None,
        ),
        Kept::Quant(q) => {
            let sz = quant_panel_sizes(kb, &q, half);
            (sz.panel, Some(sz))
        }
    };
    let pb = kb.add(vb, round64(kb, kb.mul(k, kb.i64c(2))));
    let start = kb.mul(p, pb);
    let pos_at = kb.add(start, vb);
    // inputs picked from a window of `win` floats by an index per lane
    let win: Option<u32> = vx.sparse_window(k16);
    // odd kept values add into a second set of accumulators: two FMA chains per token
    let zv = V { kb }.zero_f(nr);
    let odd: Vec<Var<'ctx>> = acc.iter().map(|_| kb.var(zv)).collect();
    // kept value `kk` (≡ t mod 4) multiplies x[row, 4·(kk/2) + position]
    // kept value `base + off` (base a multiple of `mult`, 4 or 8) multiplies
    // x[row, 4·(kk/2) + position]; the static part of every offset is folded in here
    let step = |kb: &mut Kb<'_, 'ctx>,
                base: IntValue<'ctx>,
                off: u32,
                mult: u32,
                wv: VectorValue<'ctx>| {
        let v = V { kb };
        let t = off % 4;
        // the positions of kept values of this group of four: one load and widening that
        // the four share (the same expression, so LLVM keeps one)
        let quad = kb.add(
            kb.b.build_right_shift(base, kb.i64c(2), false, "")
                .expect("shr"),
            kb.i64c((off / 4) as i64),
        );
        let posb = v.load_vec(
            kb.i8t().into(),
            nr,
            w,
            kb.add(pos_at, kb.mul(quad, kb.i64c(NR as i64))),
        );
        let pos32 = kb.b.build_int_z_extend(posb, v.i32v(nr), "").expect("zext");
        let c32 = |x: i32| VectorType::const_vector(&[kb.i32c(x); NR]);
        let pos32 = v.and(v.lshr(pos32, c32(2 * t as i32)), c32(3));
        let pos =
            kb.b.build_int_truncate(pos32, kb.i8t().vec_type(nr), "")
                .expect("trunc");
        let col0 = kb.add(kb.mul(base, kb.i64c(2)), kb.i64c(((off / 2) * 4) as i64));
        // the window of inputs and the group's place in it
        let window = |kb: &Kb<'_, 'ctx>, wn: u32| -> (IntValue<'ctx>, IntValue<'ctx>) {
            if mult * 2 % wn == 0 {
                let within = (off / 2) * 4 % wn;
                let w0 = kb.add(
                    kb.mul(base, kb.i64c(2)),
                    kb.i64c(((off / 2) * 4 - within) as i64),
                );
                (w0, kb.i32c(within as i32))
            } else {
                let at =
                    kb.b.build_and(col0, kb.i64c(wn as i64 - 1), "")
                        .expect("and");
                (
                    kb.sub(col0, at),
                    kb.b.build_int_truncate(at, kb.i32t(), "").expect("trunc"),
                )
            }
        };
        let acc = if t % 2 == 1 { &odd[..] } else { acc };
        match win {
            Some(wn) => {
                let (w0, at) = window(kb, wn);
                let idx =
                    kb.b.build_or(pos32, v.splat(at.into(), nr), "")
                        .expect("or");
                for (r, a) in acc.iter().enumerate() {
                    let v = V { kb };
                    let xi = kb.add(kb.mul(kb.add(m0, kb.i64c(r as i64)), k), w0);
                    let xw = kb.vload(kb.f32t().into(), wn, x, xi);
                    let xv = vx.lookup(kb, xw, idx);
                    let cur = kb.get(*a).into_vector_value();
                    let nv = v.fma(xv, wv, cur);
                    kb.set(*a, nv);
                }
            }
            None => {
                let is = |c: u8| {
                    kb.b.build_int_compare(IntPredicate::EQ, pos, v.const_i8(c, nr), "")
                        .expect("cmp")
                };
                let (p0, p1, p2) = (is(0), is(1), is(2));
                for (r, a) in acc.iter().enumerate() {
                    let v = V { kb };
                    let xi = kb.add(kb.mul(kb.add(m0, kb.i64c(r as i64)), k), col0);
                    let xs: Vec<VectorValue<'ctx>> = (0..4)
                        .map(|c| v.splat(kb.load_f32(x, kb.add(xi, kb.i64c(c))).into(), nr))
                        .collect();
                    let pick = |m, a: VectorValue<'ctx>, b: VectorValue<'ctx>| {
                        kb.b.build_select(m, a, b, "")
                            .expect("select")
                            .into_vector_value()
                    };
                    let xv = pick(p0, xs[0], pick(p1, xs[1], pick(p2, xs[2], xs[3])));
                    let cur = kb.get(*a).into_vector_value();
                    let nv = v.fma(xv, wv, cur);
                    kb.set(*a, nv);
                }
            }
        }
    };
    // the panel's positions follow its values: ask for the first lines of the next panel's
    // now, and (dense values) for the rest as they come
    for line in 0..PREFETCH_POS / 64 {
        kb.prefetch(w, kb.add(kb.add(pos_at, pb), kb.i64c(line * 64)));
    }
    match kept {
        Kept::Dense(dt) => {
            let esz = dt.size() as i64;
            let zero = kb.i64c(0);
            // half is a multiple of 4 (K of 8), of 8 with K of 16
            let mult: u32 = if k16 { 8 } else { 4 };
            kb.for_range(zero, half, mult as i64, |kb, kk0| {
                let quad_bytes = kb.mul(
                    kb.b.build_right_shift(kk0, kb.i64c(2), false, "")
                        .expect("shr"),
                    kb.i64c(NR as i64),
                );
                kb.prefetch(w, kb.add(kb.add(pos_at, quad_bytes), kb.i64c(PREFETCH_POS)));
                for t in 0..mult {
                    let v = V { kb };
                    let kk = kb.add(kk0, kb.i64c(t as i64));
                    let off = kb.add(start, kb.mul(kk, kb.i64c(NR as i64 * esz)));
                    if (t as i64 * NR as i64 * esz) % 64 == 0 {
                        kb.prefetch(w, kb.add(off, kb.i64c(PREFETCH_VALUES)));
                    }
                    let wv = match dt {
                        DType::F32 => v.load_vec(kb.f32t().into(), nr, w, off),
                        other => v.load_floats(other, w, off, vx),
                    };
                    step(kb, kk0, t, mult, wv);
                }
            });
        }
        Kept::Quant(q) => {
            let sz = qsz.expect("sizes of quantized kept values");
            let soff = kb.add(start, sz.codes);
            let (zoff, g) = (kb.add(soff, sz.scales), sz.group);
            prefetch_next_groups(kb, &q, w, (soff, zoff), pb);
            dequant_panel(
                kb,
                &q,
                vx,
                w,
                (start, soff, zoff, g),
                half,
                &mut |kb, k0, off, wv| step(kb, k0, off, if q.bits == 4 { 8 } else { 4 }, wv),
            );
        }
    }
    for (a, o) in acc.iter().zip(&odd) {
        let v = V { kb };
        let sum = v.fadd(
            kb.get(*a).into_vector_value(),
            kb.get(*o).into_vector_value(),
        );
        kb.set(*a, sum);
    }
}
