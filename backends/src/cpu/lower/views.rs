//! Views of values: making one contiguous, strided copies between views, slices, and the
//! broadcast strides and dimension merging the strided kernels take.

use super::{Arg, Lowerer};
use crate::cpu::kernels::{Kernel, COPY_RANK};
use crate::cpu::plan::View;
use crate::cpu::size::Size;
use crate::cpu::BackendError;
use llmc_ir::ops::norm_axis;
use llmc_ir::Op;

impl<'g> Lowerer<'g> {
    /// A contiguous copy of a view (the view itself when already contiguous).
    pub(super) fn contiguous(&mut self, v: &View) -> Result<View, BackendError> {
        if v.is_contiguous() {
            return Ok(v.clone());
        }
        let dst = self.fresh(None, v.dims.clone(), v.dtype);
        self.copy(v, &dst)?;
        Ok(dst)
    }

    /// Copies `src` into `dst` (same dimensions, any strides). Copies of more dimensions than
    /// the kernel takes after merging become one kernel call per index of the smallest fixed
    /// outer dimension.
    pub(super) fn copy(&mut self, src: &View, dst: &View) -> Result<(), BackendError> {
        let Some((dims, strides)) = collapse(
            std::slice::from_ref(&src.dims),
            &[src.strides.clone(), dst.strides.clone()],
            &src.dims,
            COPY_RANK,
        ) else {
            let r = src.dims.len();
            let split = (0..r.saturating_sub(1))
                .filter_map(|k| src.dims[k].as_const().filter(|&n| n > 1).map(|n| (n, k)))
                .min()
                .ok_or_else(|| {
                    self.err(format!(
                        "a copy of rank {r} with run-time dimensions does not fit the {COPY_RANK}-d copy kernel"
                    ))
                })?;
            let (n, k) = split;
            let esz = Size::c(src.dtype.size() as i64);
            for i in 0..n {
                let part = |v: &View| {
                    let mut p = v.clone();
                    p.place = v.place.plus(&v.strides[k].mul(&Size::c(i)).mul(&esz));
                    p.dims.remove(k);
                    p.strides.remove(k);
                    p
                };
                let (s, d) = (part(src), part(dst));
                self.copy(&s, &d)?;
            }
            return Ok(());
        };
        let mut args = vec![Arg::Ptr(dst.place.clone()), Arg::Ptr(src.place.clone())];
        args.extend(dims.iter().cloned().map(Arg::Size));
        args.extend(strides[0].iter().cloned().map(Arg::Size));
        args.extend(strides[1].iter().cloned().map(Arg::Size));
        let rows = Size::product(&dims[..COPY_RANK - 1]);
        self.kernel(
            Kernel::Copy {
                bytes: src.dtype.size() as u8,
            },
            args,
            rows,
            1,
        );
        Ok(())
    }

    pub(super) fn slice_view(&mut self, i: usize, x: &View) -> Result<View, BackendError> {
        let g = self.g;
        let n = &g.nodes[i];
        let r = x.dims.len();
        let (starts, axes, steps): (Vec<Size>, Vec<i64>, Vec<i64>) = match &n.op {
            Op::Slice { spec: Some(s) } => (
                s.starts.iter().map(|&v| Size::c(v)).collect(),
                s.axes.clone(),
                s.steps.clone(),
            ),
            Op::Slice { spec: None } => {
                let val = |k: usize| {
                    n.inputs
                        .get(k)
                        .and_then(|v| self.sh[v.0 as usize].value.clone())
                };
                let starts =
                    val(1).ok_or_else(|| self.err("slice starts must be known at build time"))?;
                let axes = match val(3) {
                    Some(a) => a
                        .iter()
                        .map(|s| s.as_const())
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| self.err("slice axes must be known"))?,
                    None => (0..starts.len() as i64).collect(),
                };
                let steps = match val(4) {
                    Some(a) => a
                        .iter()
                        .map(|s| s.as_const())
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| self.err("slice steps must be known"))?,
                    None => vec![1; starts.len()],
                };
                (starts, axes, steps)
            }
            _ => unreachable!(),
        };
        let od = self.out_dims(n.outputs[0]);
        let mut view = x.clone();
        view.dims = od.clone();
        let esz = Size::c(x.dtype.size() as i64);
        for k in 0..starts.len() {
            let ax = norm_axis(axes[k], r).map_err(|m| self.err(m.to_string()))?;
            // the first element taken along this axis
            let first = match (starts[k].as_const(), x.dims[ax].as_const()) {
                (Some(s), Some(d)) => Size::c(
                    llmc_ir::infer::slice_range(
                        d,
                        s,
                        if steps[k] > 0 { i64::MAX } else { i64::MIN },
                        steps[k],
                    )
                    .0,
                ),
                (Some(s), None) if s >= 0 && steps[k] > 0 => Size::c(s),
                (Some(s), None) if s < 0 && steps[k] > 0 => x.dims[ax].add(&Size::c(s)),
                (None, _) if steps[k] > 0 => starts[k].clone(),
                _ => return Err(self.err("cannot tell where the slice starts at build time")),
            };
            view.place = view.place.plus(&first.mul(&x.strides[ax]).mul(&esz));
            view.strides[ax] = x.strides[ax].mul(&Size::c(steps[k]));
        }
        Ok(view)
    }
}

/// Strides of `v` read as a tensor of dimensions `od` under numpy broadcasting.
pub(super) fn bcast_strides(v: &View, od: &[Size]) -> Vec<Size> {
    let r = od.len();
    let off = r - v.dims.len().min(r);
    (0..r)
        .map(|k| {
            if k < off {
                return Size::c(0);
            }
            let j = k - off;
            if v.dims[j].as_const() == Some(1) && od[k].as_const() != Some(1) {
                Size::c(0)
            } else {
                v.strides[j].clone()
            }
        })
        .collect()
}

/// Merges adjacent dimensions that every operand walks contiguously, then pads to `rank`
/// with leading 1s. `extra_dims` are unused (kept for symmetry); returns dims and per-operand
/// strides, or `None` when more than `rank` dimensions remain.
pub(super) fn collapse(
    _extra_dims: &[Vec<Size>],
    strides: &[Vec<Size>],
    dims: &[Size],
    rank: usize,
) -> Option<(Vec<Size>, Vec<Vec<Size>>)> {
    let mut d: Vec<Size> = dims.to_vec();
    let mut s: Vec<Vec<Size>> = strides.to_vec();
    // drop size-1 dimensions
    let mut k = 0;
    while k < d.len() {
        if d[k].as_const() == Some(1) && d.len() > 1 {
            d.remove(k);
            for st in &mut s {
                st.remove(k);
            }
        } else {
            k += 1;
        }
    }
    let mut k = 0;
    while k + 1 < d.len() {
        let mergeable = s.iter().all(|st| st[k] == st[k + 1].mul(&d[k + 1]));
        if mergeable {
            d[k] = d[k].mul(&d[k + 1]);
            d.remove(k + 1);
            for st in &mut s {
                st[k] = st[k + 1].clone();
                st.remove(k + 1);
            }
        } else {
            k += 1;
        }
    }
    if d.len() > rank {
        return None;
    }
    let d = pad_front(&d, rank, Size::c(1));
    let s = s.iter().map(|st| pad_front(st, rank, Size::c(0))).collect();
    Some((d, s))
}

pub(super) fn pad_front(v: &[Size], rank: usize, fill: Size) -> Vec<Size> {
    let mut out = vec![fill; rank.saturating_sub(v.len())];
    out.extend(v.iter().cloned());
    out
}
