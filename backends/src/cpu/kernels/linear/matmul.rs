//! Batched f32 matrix products of two activations.

use crate::cpu::kb::Kb;

/// Batched f32 matmul: `[out, a, b, batch, m, n, k, a batch stride, b batch stride]`;
/// work items: batch·m rows of the output.
pub fn matmul(kb: &mut Kb<'_, '_>) {
    let (out, a, b) = (kb.arg_ptr(0), kb.arg_ptr(1), kb.arg_ptr(2));
    let (m, n, k, abs, bbs) = (kb.arg(4), kb.arg(5), kb.arg(6), kb.arg(7), kb.arg(8));
    let (beg, end) = (kb.begin(), kb.end());
    kb.for_range(beg, end, 1, |kb, r| {
        let bi = kb.sdiv(r, m);
        let i = kb.srem(r, m);
        let arow = kb.add(kb.mul(bi, abs), kb.mul(i, k));
        let bbase = kb.mul(bi, bbs);
        let orow = kb.mul(r, n);
        let zero = kb.i64c(0);
        kb.for_range(zero, n, 1, |kb, j| {
            kb.store(out, kb.add(orow, j), kb.f32c(0.0))
        });
        kb.for_range(zero, k, 1, |kb, kk| {
            let av = kb.load_f32(a, kb.add(arow, kk));
            let brow = kb.add(bbase, kb.mul(kk, n));
            kb.for_range(zero, n, 1, |kb, j| {
                let o = kb.add(orow, j);
                let cur = kb.load_f32(out, o);
                let bv = kb.load_f32(b, kb.add(brow, j));
                kb.store(out, o, kb.fma(av, bv, cur));
            });
        });
    });
}
