//! Lowering of each op: views for the ops that only re-index, kernel calls for the rest
//! (elementwise, row-wise, shape computations, the KV cache).

use super::views::{bcast_strides, collapse};
use super::{Arg, Lowerer};
use crate::cpu::kernels::{Kernel, BCAST_RANK, CHUNK};
use crate::cpu::plan::{contiguous_strides, Base, Place, View};
use crate::cpu::size::Size;
use crate::cpu::BackendError;
use llmc_ir::ops::norm_axis;
use llmc_ir::{DType, Op, ValueId};

impl<'g> Lowerer<'g> {
    /// Lowers node `i`: sets the views of its outputs, adding the steps that compute them.
    pub(super) fn lower_node(&mut self, i: usize) -> Result<(), BackendError> {
        let g = self.g;
        let n = &g.nodes[i];
        let out = n.outputs[0];
        let odt = g.ty(out).dtype();
        // integers known at build time are written where a kernel first needs them
        if n.outputs.len() == 1
            && self.sh[out.0 as usize].value.is_some()
            && !matches!(n.op, Op::CacheConcat { .. })
        {
            return Ok(());
        }
        match &n.op {
            Op::Constant { value } => {
                let id = self.data.globals.len() as u32;
                self.data.globals.push(value.data.to_le_bytes());
                let dims = value.shape.iter().map(|&d| Size::c(d as i64)).collect();
                self.set(
                    out,
                    View::contiguous(Place::at(Base::Global(id)), dims, value.dtype()),
                );
            }
            Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } | Op::Flatten { .. } => {
                let x = self.view(n.inputs[0])?;
                let x = self.contiguous(&x)?;
                let view = x.reshaped(self.out_dims(out));
                self.set(out, view);
            }
            Op::Transpose { perm } => {
                let x = self.view(n.inputs[0])?;
                let r = x.dims.len();
                let p: Vec<usize> = if perm.is_empty() {
                    (0..r).rev().collect()
                } else {
                    perm.iter()
                        .map(|&a| norm_axis(a, r))
                        .collect::<Result<_, _>>()
                        .map_err(|m| self.err(m.to_string()))?
                };
                let view = View {
                    place: x.place.clone(),
                    dims: p.iter().map(|&k| x.dims[k].clone()).collect(),
                    strides: p.iter().map(|&k| x.strides[k].clone()).collect(),
                    dtype: x.dtype,
                };
                self.set(out, view);
            }
            Op::Expand { .. } => {
                let x = self.view(n.inputs[0])?;
                let od = self.out_dims(out);
                let st = bcast_strides(&x, &od);
                self.set(
                    out,
                    View {
                        place: x.place.clone(),
                        dims: od,
                        strides: st,
                        dtype: x.dtype,
                    },
                );
            }
            Op::Slice { .. } => {
                let x = self.view(n.inputs[0])?;
                let view = self.slice_view(i, &x)?;
                self.set(out, view);
            }
            Op::Split { axis, sizes } => {
                let x = self.view(n.inputs[0])?;
                let ax = norm_axis(*axis, x.dims.len()).map_err(|m| self.err(m.to_string()))?;
                let mut start = 0i64;
                for (o, &s) in n.outputs.iter().zip(sizes) {
                    let mut v = x.clone();
                    v.dims[ax] = Size::c(s);
                    v.place = x
                        .place
                        .plus(&x.strides[ax].mul(&Size::c(start * x.dtype.size() as i64)));
                    start += s;
                    self.set(*o, v);
                }
            }
            Op::Concat { axis } => {
                let od = self.out_dims(out);
                let dst = self.fresh(Some(out), od, odt);
                let ax = norm_axis(*axis, dst.dims.len()).map_err(|m| self.err(m.to_string()))?;
                let mut start = Size::c(0);
                for &p in &n.inputs {
                    let src = self.view(p)?;
                    let mut part = dst.clone();
                    part.dims = src.dims.clone();
                    part.place = dst
                        .place
                        .plus(&dst.strides[ax].mul(&start).mul(&Size::c(odt.size() as i64)));
                    start = start.add(&src.dims[ax]);
                    if src.numel().as_const() != Some(0) {
                        self.copy(&src, &part)?;
                    }
                }
                self.set(out, dst);
            }
            Op::Tile { .. } => {
                // tile(x, r) = reshape(expand(x viewed as [1, d0, 1, d1, ...]))
                let x = self.view(n.inputs[0])?;
                let od = self.out_dims(out);
                let mut dims = Vec::new();
                let mut strides = Vec::new();
                for (k, d) in x.dims.iter().enumerate() {
                    let rep = od[k]
                        .div(d)
                        .ok_or_else(|| self.err("cannot tell the repeat count"))?;
                    dims.push(rep);
                    strides.push(Size::c(0));
                    dims.push(d.clone());
                    strides.push(x.strides[k].clone());
                }
                let src = View {
                    place: x.place.clone(),
                    dims: dims.clone(),
                    strides,
                    dtype: x.dtype,
                };
                let dst = self.fresh(Some(out), od.clone(), odt);
                let dst_exp = View {
                    place: dst.place.clone(),
                    dims: dims.clone(),
                    strides: contiguous_strides(&dims),
                    dtype: odt,
                };
                self.copy(&src, &dst_exp)?;
                self.set(out, dst);
            }
            Op::Unary(u) => {
                let x = self.view(n.inputs[0])?;
                let x = self.contiguous(&x)?;
                let o = self.fresh(Some(out), x.dims.clone(), odt);
                let num = x.numel();
                self.kernel(
                    Kernel::Unary { op: *u, dtype: odt },
                    vec![
                        Arg::Ptr(o.place.clone()),
                        Arg::Ptr(x.place.clone()),
                        Arg::Size(num.clone()),
                    ],
                    num,
                    CHUNK,
                );
                self.set(out, o);
            }
            Op::Cast { to } => {
                let x = self.view(n.inputs[0])?;
                let x = self.contiguous(&x)?;
                let o = self.fresh(Some(out), x.dims.clone(), *to);
                let num = x.numel();
                self.kernel(
                    Kernel::Cast {
                        from: x.dtype,
                        to: *to,
                    },
                    vec![
                        Arg::Ptr(o.place.clone()),
                        Arg::Ptr(x.place.clone()),
                        Arg::Size(num.clone()),
                    ],
                    num,
                    CHUNK,
                );
                self.set(out, o);
            }
            Op::Clip { min, max } => {
                let x = self.view(n.inputs[0])?;
                let x = self.contiguous(&x)?;
                let o = self.fresh(Some(out), x.dims.clone(), odt);
                let num = x.numel();
                let args = vec![
                    Arg::Ptr(o.place.clone()),
                    Arg::Ptr(x.place.clone()),
                    Arg::Size(num.clone()),
                    Arg::F32(min.unwrap_or(f32::NEG_INFINITY)),
                    Arg::F32(max.unwrap_or(f32::INFINITY)),
                ];
                self.kernel(Kernel::Clip { dtype: odt }, args, num, CHUNK);
                self.set(out, o);
            }
            Op::Binary(b) => {
                let a = self.view(n.inputs[0])?;
                let c = self.view(n.inputs[1])?;
                let od = self.out_dims(out);
                let o = self.fresh(Some(out), od.clone(), odt);
                let (dims, st) = self.bcast4(&od, &[&a, &c])?;
                let mut args = vec![
                    Arg::Ptr(o.place.clone()),
                    Arg::Ptr(a.place.clone()),
                    Arg::Ptr(c.place.clone()),
                ];
                args.extend(dims.iter().cloned().map(Arg::Size));
                for s in &st {
                    args.extend(s.iter().cloned().map(Arg::Size));
                }
                self.kernel(
                    Kernel::Binary {
                        op: *b,
                        dtype: a.dtype,
                    },
                    args,
                    Size::product(&dims[..BCAST_RANK - 1]),
                    1,
                );
                self.set(out, o);
            }
            Op::Where => {
                let c = self.view(n.inputs[0])?;
                let a = self.view(n.inputs[1])?;
                let b = self.view(n.inputs[2])?;
                let od = self.out_dims(out);
                let o = self.fresh(Some(out), od.clone(), odt);
                let (dims, st) = self.bcast4(&od, &[&c, &a, &b])?;
                let mut args = vec![
                    Arg::Ptr(o.place.clone()),
                    Arg::Ptr(c.place.clone()),
                    Arg::Ptr(a.place.clone()),
                    Arg::Ptr(b.place.clone()),
                ];
                args.extend(dims.iter().cloned().map(Arg::Size));
                for s in &st {
                    args.extend(s.iter().cloned().map(Arg::Size));
                }
                self.kernel(
                    Kernel::Where { dtype: odt },
                    args,
                    Size::product(&dims[..BCAST_RANK - 1]),
                    1,
                );
                self.set(out, o);
            }
            Op::Linear { .. } => self.linear(i)?,
            Op::MatMul => self.matmul(i)?,
            Op::LayerNorm { axis, eps } | Op::RmsNorm { axis, eps } => {
                let rms = matches!(n.op, Op::RmsNorm { .. });
                let x = self.view(n.inputs[0])?;
                let x = self.contiguous(&x)?;
                let ax = norm_axis(*axis, x.dims.len()).map_err(|m| self.err(m.to_string()))?;
                let cols = Size::product(&x.dims[ax..]);
                let rows = Size::product(&x.dims[..ax]);
                cols.as_const()
                    .ok_or_else(|| self.err("the normalized dimensions must be fixed"))?;
                let nd = x.dims[ax..].to_vec();
                let scale = self.param_f32_over(n.inputs[1], &nd)?;
                let bias = match n.inputs.get(2) {
                    Some(b) => Some(self.param_f32_over(*b, &nd)?),
                    None => None,
                };
                let o = self.fresh(Some(out), x.dims.clone(), odt);
                let args = vec![
                    Arg::Ptr(o.place.clone()),
                    Arg::Ptr(x.place.clone()),
                    Arg::Ptr(scale),
                    bias.clone().map_or(Arg::I(0), Arg::Ptr),
                    Arg::Size(rows.clone()),
                    Arg::Size(cols),
                    Arg::F32(*eps),
                ];
                self.kernel(
                    Kernel::Norm {
                        rms,
                        bias: bias.is_some(),
                        dtype: odt,
                    },
                    args,
                    rows,
                    1,
                );
                self.set(out, o);
            }
            Op::Softmax { axis } | Op::LogSoftmax { axis } => {
                let log = matches!(n.op, Op::LogSoftmax { .. });
                let x = self.view(n.inputs[0])?;
                let ax = norm_axis(*axis, x.dims.len()).map_err(|m| self.err(m.to_string()))?;
                self.rows_op(out, &x, &[ax], false, |rows, cols, o, x| {
                    (
                        Kernel::Softmax { log, dtype: odt },
                        vec![Arg::Ptr(o), Arg::Ptr(x), Arg::Size(rows), Arg::Size(cols)],
                    )
                })?;
            }
            Op::Reduce {
                kind,
                axes,
                keepdims,
            } => {
                let x = self.view(n.inputs[0])?;
                let r = x.dims.len();
                let axes: Vec<usize> = if axes.is_empty() {
                    (0..r).collect()
                } else {
                    axes.iter()
                        .map(|&a| norm_axis(a, r))
                        .collect::<Result<_, _>>()
                        .map_err(|m| self.err(m.to_string()))?
                };
                let kind = *kind;
                let _ = keepdims;
                self.rows_op(out, &x, &axes, true, |rows, cols, o, x| {
                    (
                        Kernel::Reduce { kind, dtype: odt },
                        vec![Arg::Ptr(o), Arg::Ptr(x), Arg::Size(rows), Arg::Size(cols)],
                    )
                })?;
            }
            Op::ArgMax { axis, .. } => {
                let x = self.view(n.inputs[0])?;
                let ax = norm_axis(*axis, x.dims.len()).map_err(|m| self.err(m.to_string()))?;
                let xdt = x.dtype;
                self.rows_op(out, &x, &[ax], true, |rows, cols, o, x| {
                    (
                        Kernel::ArgMax { dtype: xdt },
                        vec![Arg::Ptr(o), Arg::Ptr(x), Arg::Size(rows), Arg::Size(cols)],
                    )
                })?;
            }
            Op::Gather { axis } => self.gather(i, *axis)?,
            Op::Rope { base, mode, dims } => {
                let x = self.view(n.inputs[0])?;
                let x = self.contiguous(&x)?;
                let p = self.view(n.inputs[1])?;
                let p = self.contiguous(&p)?;
                let p = if p.dtype == DType::I64 {
                    p
                } else {
                    self.cast(&p, DType::I64)?
                };
                // the kernel rotates f32; halves go through it and back
                let x = if x.dtype == DType::F32 {
                    x
                } else {
                    self.cast(&x, DType::F32)?
                };
                let hd = x.dims[3]
                    .as_const()
                    .ok_or_else(|| self.err("the head size must be fixed"))?;
                let rot = dims.unwrap_or(hd) as u32;
                let o = self.fresh(Some(out), x.dims.clone(), DType::F32);
                let rows = x.dims[0].mul(&x.dims[1]);
                let args = vec![
                    Arg::Ptr(o.place.clone()),
                    Arg::Ptr(x.place.clone()),
                    Arg::Ptr(p.place.clone()),
                    Arg::Size(rows.clone()),
                    Arg::Size(x.dims[2].clone()),
                    Arg::Size(x.dims[3].clone()),
                    Arg::Size(p.numel()),
                ];
                self.kernel(
                    Kernel::Rope {
                        mode: *mode,
                        base_bits: base.to_bits(),
                        dims: rot,
                    },
                    args,
                    rows,
                    1,
                );
                let o = if odt == DType::F32 {
                    o
                } else {
                    self.cast(&o, odt)?
                };
                self.set(out, o);
            }
            Op::Attention { causal, scale } => self.attention(i, *causal, *scale)?,
            Op::CacheConcat { state, axis } => {
                let x = self.view(n.inputs[0])?;
                let ax = norm_axis(*axis, x.dims.len()).map_err(|m| self.err(m.to_string()))?;
                let cache = self
                    .syms
                    .find("past")
                    .ok_or_else(|| self.err("KV caches need a decoder bundle"))?;
                let slot = &mut self.states[*state as usize];
                slot.axis = ax;
                let slot = slot.clone();
                let sdims: Vec<Size> = slot.dims.iter().map(|&d| Size::c(d)).collect();
                let sstr = contiguous_strides(&sdims);
                let base = Place {
                    base: Base::State,
                    offset: Size::c(slot.offset as i64),
                };
                // the new entries go after the cached ones
                let at = sstr[ax]
                    .mul(&Size::sym(cache))
                    .mul(&Size::c(slot.dtype.size() as i64));
                let dst = View {
                    place: base.plus(&at),
                    dims: x.dims.clone(),
                    strides: sstr.clone(),
                    dtype: slot.dtype,
                };
                self.copy(&x, &dst)?;
                let mut vd = x.dims.clone();
                vd[ax] = x.dims[ax].add(&Size::sym(cache));
                self.set(
                    out,
                    View {
                        place: base,
                        dims: vd,
                        strides: sstr,
                        dtype: slot.dtype,
                    },
                );
                let _ = self.max_context;
            }
            Op::Range if odt.is_float() => {
                let (start, _, delta) = crate::cpu::shapes::float_range(g, &n.inputs)
                    .ok_or_else(|| self.err("float range bounds must be constants"))?;
                let len = self.out_dims(out)[0].clone();
                let o = self.fresh(Some(out), vec![len.clone()], odt);
                let args = vec![
                    Arg::Ptr(o.place.clone()),
                    Arg::I(start.to_bits() as i64),
                    Arg::I(delta.to_bits() as i64),
                    Arg::Size(len),
                ];
                self.kernel(Kernel::Range { dtype: odt }, args, Size::c(1), 1);
                self.set(out, o);
            }
            Op::Range => {
                let s = &self.sh;
                let first = |k: usize| {
                    s[n.inputs[k].0 as usize]
                        .value
                        .as_ref()
                        .and_then(|v| v.first().cloned())
                };
                let (Some(start), Some(delta)) = (first(0), first(2)) else {
                    return Err(self.err("range start and delta must be known at build time"));
                };
                let len = self.out_dims(out)[0].clone();
                let o = self.fresh(Some(out), vec![len.clone()], odt);
                let args = vec![
                    Arg::Ptr(o.place.clone()),
                    Arg::Size(start),
                    Arg::Size(delta),
                    Arg::Size(len),
                ];
                self.kernel(Kernel::Range { dtype: odt }, args, Size::c(1), 1);
                self.set(out, o);
            }
            Op::ConstantOfShape { value } => {
                let od = self.out_dims(out);
                let o = self.fresh(Some(out), od.clone(), odt);
                let mut bytes = value.data.to_le_bytes();
                bytes.resize(8, 0);
                let bits = i64::from_le_bytes(bytes.try_into().expect("8"));
                let num = Size::product(&od);
                self.kernel(
                    Kernel::Fill {
                        bytes: odt.size() as u8,
                    },
                    vec![
                        Arg::Ptr(o.place.clone()),
                        Arg::I(bits),
                        Arg::Size(num.clone()),
                    ],
                    num,
                    CHUNK,
                );
                self.set(out, o);
            }
            Op::Shape { .. } => unreachable!("shape values are always known"),
        }
        Ok(())
    }

    pub(super) fn cast(&mut self, x: &View, to: DType) -> Result<View, BackendError> {
        let x = self.contiguous(x)?;
        let o = self.fresh(None, x.dims.clone(), to);
        let num = x.numel();
        self.kernel(
            Kernel::Cast { from: x.dtype, to },
            vec![
                Arg::Ptr(o.place.clone()),
                Arg::Ptr(x.place.clone()),
                Arg::Size(num.clone()),
            ],
            num,
            CHUNK,
        );
        Ok(o)
    }

    /// Runs a row kernel over `axes` of x: the axes go last (a copy if needed), the kernel
    /// maps each row to `cols` outputs (`reduce`: one), and the result is viewed back.
    pub(super) fn rows_op(
        &mut self,
        out: ValueId,
        x: &View,
        axes: &[usize],
        reduce: bool,
        make: impl FnOnce(Size, Size, Place, Place) -> (Kernel, Vec<Arg>),
    ) -> Result<(), BackendError> {
        let r = x.dims.len();
        let keep: Vec<usize> = (0..r).filter(|k| !axes.contains(k)).collect();
        let perm: Vec<usize> = keep.iter().chain(axes.iter()).copied().collect();
        let pv = View {
            place: x.place.clone(),
            dims: perm.iter().map(|&k| x.dims[k].clone()).collect(),
            strides: perm.iter().map(|&k| x.strides[k].clone()).collect(),
            dtype: x.dtype,
        };
        let xc = self.contiguous(&pv)?;
        let rows = Size::product(&xc.dims[..keep.len()]);
        let cols = Size::product(&xc.dims[keep.len()..]);
        let odt = self.g.ty(out).dtype();
        let od = self.out_dims(out);
        if reduce {
            let o = self.fresh(Some(out), od, odt);
            let (k, args) = make(rows.clone(), cols, o.place.clone(), xc.place.clone());
            self.kernel(k, args, rows, 1);
            self.set(out, o);
        } else {
            let identity = perm.iter().enumerate().all(|(a, &b)| a == b);
            let o = self.fresh(
                if identity { Some(out) } else { None },
                xc.dims.clone(),
                odt,
            );
            let (k, args) = make(rows.clone(), cols, o.place.clone(), xc.place.clone());
            self.kernel(k, args, rows, 1);
            // view the result in the original dimension order
            let mut inv = vec![0usize; r];
            for (a, &b) in perm.iter().enumerate() {
                inv[b] = a;
            }
            let view = View {
                place: o.place.clone(),
                dims: inv.iter().map(|&k| o.dims[k].clone()).collect(),
                strides: inv.iter().map(|&k| o.strides[k].clone()).collect(),
                dtype: odt,
            };
            self.set(out, view);
        }
        Ok(())
    }

    /// Strides and dims of operands broadcast to `od`, collapsed to the binary kernels' rank.
    pub(super) fn bcast4(
        &self,
        od: &[Size],
        ops: &[&View],
    ) -> Result<(Vec<Size>, Vec<Vec<Size>>), BackendError> {
        let strides: Vec<Vec<Size>> = ops.iter().map(|v| bcast_strides(v, od)).collect();
        let out_st = contiguous_strides(od);
        let mut all = strides.clone();
        all.push(out_st);
        let (dims, mut st) = collapse(&[], &all, od, BCAST_RANK).ok_or_else(|| {
            self.err(format!(
                "rank {} does not fit the elementwise kernels",
                od.len()
            ))
        })?;
        st.pop();
        Ok((dims, st))
    }
}
