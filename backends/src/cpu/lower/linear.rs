//! Ops that read weight matrices: linear layers (the panel layout and kernel picked per
//! encoding and ISA), matrix products and table gathers.

use super::views::bcast_strides;
use super::{Arg, Lowerer, Pack, StepKind, Tasks, STATUS_OFFSET};
use crate::cpu::kernels::linear::RowFormat;
use crate::cpu::kernels::{ActQuant, Kernel, LinearKernel, WeightLayout};
use crate::cpu::pack::{quant_packable, QLayout};
use crate::cpu::plan::{Base, Place, View};
use crate::cpu::size::Size;
use crate::cpu::BackendError;
use llmc_ir::ops::norm_axis;
use llmc_ir::{DType, Encoding, Op, ValueDef};

/// The panel layout a linear kernel reads a quantized `[N, k]` weight in, and the offset its
/// 8-bit codes are stored minus (signed-by-signed dot products on AArch64); `None` where the
/// generic row kernel reads the canonical layout. A tied table is gathered from the same panels.
fn quant_panels(
    isa: crate::cpu::isa::Isa,
    q: &llmc_ir::QuantSpec,
    k: usize,
    int8: bool,
) -> Option<(QLayout, u8)> {
    let (layout, signed) = if int8 {
        isa.int8_weights()
    } else {
        (QLayout::Dot4, false)
    };
    let offset = if q.bits == 8 && signed { 128 } else { 0 };
    quant_packable(q, k, layout).then_some((layout, offset))
}

impl<'g> Lowerer<'g> {
    pub(super) fn gather(&mut self, i: usize, axis: i64) -> Result<(), BackendError> {
        let g = self.g;
        let n = &g.nodes[i];
        let out = n.outputs[0];
        let idx = self.view(n.inputs[1])?;
        let idx = self.contiguous(&idx)?;
        let od = self.out_dims(out);
        let odt = g.ty(out).dtype();
        let (table, fmt, dims) = if let ValueDef::Weight(w) = g.def(n.inputs[0]) {
            let wt = &g.weights[w as usize];
            // a table that a linear layer also reads (a tied embedding) is read from the
            // linear kernel's panels, so the weights file holds it once
            let reader = g.nodes.iter().find_map(|u| match u.op {
                Op::Linear { act } if u.inputs.get(1) == Some(&n.inputs[0]) => Some(act),
                _ => None,
            });
            let tied = wt.ty.shape.rank() == 2 && axis == 0 && reader.is_some();
            let cols = wt.ty.shape.0[1].fixed().unwrap_or(0) as usize;
            let fmt = match &wt.ty.enc {
                Encoding::Quant(q) if tied => {
                    let int8 = reader == Some(llmc_ir::ActQuant::I8PerToken);
                    match quant_panels(self.isa, q, cols, int8) {
                        Some((layout, offset)) => RowFormat::QuantPanels {
                            q: *q,
                            layout,
                            offset,
                        },
                        None => RowFormat::Quant(*q),
                    }
                }
                Encoding::Dense(d @ (DType::F32 | DType::F16 | DType::BF16)) if tied => {
                    RowFormat::Panels(*d)
                }
                Encoding::Palette(p)
                    if tied
                        && crate::cpu::pack::palette_packable(
                            p,
                            wt.ty.shape.0[1].fixed().unwrap_or(0) as usize,
                        ) =>
                {
                    RowFormat::PalettePanels
                }
                Encoding::Dense(d) => RowFormat::Dense(*d),
                Encoding::Quant(q) => RowFormat::Quant(*q),
                _ => RowFormat::Dense(DType::F32),
            };
            let place = match fmt {
                RowFormat::Panels(_) => self.pack(w as usize, Pack::DensePanels)?,
                RowFormat::PalettePanels => self.pack(w as usize, Pack::PalettePanels)?,
                RowFormat::QuantPanels { layout, offset, .. } => {
                    self.pack(w as usize, Pack::QuantPanels { layout, offset })?
                }
                RowFormat::Dense(DType::F32) if !wt.ty.enc.is_dense() => {
                    self.pack(w as usize, Pack::F32 { len: 0 })?
                }
                _ => self.pack(w as usize, Pack::Canonical)?,
            };
            (place, fmt, self.sh[n.inputs[0].0 as usize].dims.clone())
        } else {
            let d = self.view(n.inputs[0])?;
            let d = self.contiguous(&d)?;
            (d.place.clone(), RowFormat::Dense(d.dtype), d.dims.clone())
        };
        let ax = norm_axis(axis, dims.len()).map_err(|m| self.err(m.to_string()))?;
        if ax != 0 && !matches!(fmt, RowFormat::Dense(_) | RowFormat::Panels(_)) {
            return Err(self.err("quantized tables are gathered by row"));
        }
        let outer = Size::product(&dims[..ax]);
        let row_len = Size::product(&dims[ax + 1..]);
        let n_rows = dims[ax].clone();
        let o = self.fresh(Some(out), od, odt);
        let n_idx = idx.numel();
        let args = vec![
            Arg::Ptr(o.place.clone()),
            Arg::Ptr(table),
            Arg::Ptr(idx.place.clone()),
            Arg::Size(n_idx.clone()),
            Arg::Size(row_len),
            Arg::Size(n_rows),
            Arg::Ptr(Place {
                base: Base::State,
                offset: Size::c(STATUS_OFFSET as i64),
            }),
            Arg::Size(outer.clone()),
        ];
        self.push(StepKind::Kernel {
            kernel: Kernel::Gather {
                table: fmt,
                idx: idx.dtype,
                out: odt,
            },
            args,
            tasks: Tasks {
                n: outer.mul(&n_idx),
                per: 1,
            },
            status: true,
        });
        self.set(out, o);
        Ok(())
    }

    pub(super) fn linear(&mut self, i: usize) -> Result<(), BackendError> {
        use crate::cpu::kernels::linear::Kept;
        use crate::cpu::pack::{pack_dense, pack_quant, palette_packable, sparse24_packable, NR};
        let g = self.g;
        let n = &g.nodes[i];
        let out = n.outputs[0];
        let Op::Linear { act } = n.op else {
            unreachable!("a linear node")
        };
        let x = self.view(n.inputs[0])?;
        let x = self.contiguous(&x)?;
        let x = if x.dtype == DType::F32 {
            x
        } else {
            self.cast(&x, DType::F32)?
        };
        let ValueDef::Weight(w) = g.def(n.inputs[1]) else {
            return Err(
                self.err("linear layers with a computed weight are not compiled; use matmul")
            );
        };
        let wt = &g.weights[w as usize];
        let nn = wt.ty.shape.0[0].fixed().expect("weights are fixed") as i64;
        let k = wt.ty.shape.0[1].fixed().expect("weights are fixed") as i64;
        let isa = self.isa;
        let int8 = act == llmc_ir::ActQuant::I8PerToken;
        // the weight layout the kernel reads
        let (layout, pack) = match &wt.ty.enc {
            Encoding::Dense(d @ (DType::F32 | DType::F16 | DType::BF16)) => {
                (WeightLayout::DensePanels(*d), Pack::DensePanels)
            }
            Encoding::Quant(q) => match quant_panels(isa, q, k as usize, int8) {
                Some((ql, offset)) => (
                    WeightLayout::QuantPanels {
                        q: *q,
                        layout: ql,
                        offset,
                    },
                    Pack::QuantPanels { layout: ql, offset },
                ),
                None => (WeightLayout::Rows(RowFormat::Quant(*q)), Pack::Canonical),
            },
            Encoding::Palette(p) if palette_packable(p, k as usize) => {
                (WeightLayout::PalettePanels(*p), Pack::PalettePanels)
            }
            Encoding::Sparse24(inner) if sparse24_packable(inner, k as usize) => {
                let kept = match **inner {
                    Encoding::Quant(q) => Kept::Quant(q),
                    Encoding::Dense(d) => Kept::Dense(d),
                    _ => unreachable!("sparse24_packable"),
                };
                (
                    WeightLayout::Sparse24Panels {
                        kept,
                        k16: k % 16 == 0,
                    },
                    Pack::Sparse24Panels,
                )
            }
            // other palettes and 2:4 forms: decoded to f32 panels at build time
            _ => (WeightLayout::DensePanels(DType::F32), Pack::F32Panels),
        };
        let place = self.pack(w as usize, pack)?;
        let panels = (nn as usize).div_ceil(NR) as i64;
        let padded = panels * NR as i64;
        let bias = match n.inputs.get(2) {
            // panel kernels read the bias 16 at a time: pad it to whole panels
            Some(b) if matches!(g.def(*b), ValueDef::Weight(_)) => {
                Some(self.param_f32(*b, padded as u64)?)
            }
            Some(b) => {
                let p = self.param_f32(*b, nn as u64)?;
                let dst = self.fresh(None, vec![Size::c(padded)], DType::F32);
                self.copy(&View::contiguous(p, vec![Size::c(nn)], DType::F32), &dst)?;
                Some(dst.place)
            }
            None => None,
        };
        let _ = (pack_dense, pack_quant);
        let od = self.out_dims(out);
        let odt = g.ty(out).dtype();
        let o = self.fresh(Some(out), od.clone(), DType::F32);
        let m = x
            .numel()
            .div(&Size::c(k))
            .ok_or_else(|| self.err("cannot tell the number of rows"))?;
        let rows_of = |v: &View| v.place.clone();
        // int8 activations: codes, scales and group sums for the integer kernels; the other
        // kernels take the quantized values back as f32
        let (xarg, sx, xqsum, kact) = match (&layout, int8) {
            (WeightLayout::QuantPanels { q, .. }, true)
                if self.quantized.contains_key(&(
                    n.inputs[0],
                    match q.group {
                        llmc_ir::Group::Size(gs) => gs as i64,
                        _ => k,
                    },
                )) =>
            {
                // q, k and v (gate and up) read the same activations: quantize them once
                let gl = match q.group {
                    llmc_ir::Group::Size(gs) => gs as i64,
                    _ => k,
                };
                let (xq, sx, xs) = self.quantized[&(n.inputs[0], gl)].clone();
                (xq, Arg::Ptr(sx), Arg::Ptr(xs), ActQuant::I8)
            }
            (WeightLayout::QuantPanels { q, .. }, true) => {
                let gl = match q.group {
                    llmc_ir::Group::Size(gs) => gs as i64,
                    _ => k,
                };
                let xq = self.fresh(None, vec![m.clone(), Size::c(k)], DType::I8);
                let sx = self.fresh(None, vec![m.clone()], DType::F32);
                let xs = self.fresh(None, vec![m.clone(), Size::c(k / gl)], DType::I32);
                let args = vec![
                    Arg::Ptr(rows_of(&xq)),
                    Arg::Ptr(rows_of(&sx)),
                    Arg::Ptr(rows_of(&xs)),
                    Arg::Ptr(x.place.clone()),
                    Arg::Size(m.clone()),
                    Arg::I(k),
                ];
                self.kernel(
                    Kernel::QuantizeRows {
                        group: gl as u32,
                        fake: false,
                    },
                    args,
                    m.clone(),
                    1,
                );
                self.quantized.insert(
                    (n.inputs[0], gl),
                    (xq.place.clone(), sx.place.clone(), xs.place.clone()),
                );
                (
                    xq.place.clone(),
                    Arg::Ptr(sx.place.clone()),
                    Arg::Ptr(xs.place.clone()),
                    ActQuant::I8,
                )
            }
            (_, true) => {
                let xf = self.fresh(None, vec![m.clone(), Size::c(k)], DType::F32);
                let args = vec![
                    Arg::Ptr(xf.place.clone()),
                    Arg::I(0),
                    Arg::I(0),
                    Arg::Ptr(x.place.clone()),
                    Arg::Size(m.clone()),
                    Arg::I(k),
                ];
                self.kernel(
                    Kernel::QuantizeRows {
                        group: 0,
                        fake: true,
                    },
                    args,
                    m.clone(),
                    1,
                );
                (xf.place.clone(), Arg::I(0), Arg::I(0), ActQuant::F32)
            }
            _ => (x.place.clone(), Arg::I(0), Arg::I(0), ActQuant::F32),
        };
        let lk = LinearKernel {
            w: layout,
            act: kact,
            bias: bias.is_some(),
        };
        let args = vec![
            Arg::Ptr(o.place.clone()),
            Arg::Ptr(xarg),
            Arg::Ptr(place),
            bias.map_or(Arg::I(0), Arg::Ptr),
            Arg::Size(m),
            Arg::I(nn),
            Arg::I(k),
            sx,
            xqsum,
        ];
        self.kernel(
            Kernel::Linear(lk),
            args,
            Size::c(nn),
            crate::cpu::kernels::linear::COLS,
        );
        let o = if odt == DType::F32 {
            o
        } else {
            self.cast(&o, odt)?
        };
        self.set(out, o);
        Ok(())
    }

    pub(super) fn matmul(&mut self, i: usize) -> Result<(), BackendError> {
        let g = self.g;
        let n = &g.nodes[i];
        let out = n.outputs[0];
        let mut a = self.view(n.inputs[0])?;
        let mut b = self.view(n.inputs[1])?;
        if a.dtype != DType::F32 {
            a = self.cast(&a, DType::F32)?;
        }
        if b.dtype != DType::F32 {
            b = self.cast(&b, DType::F32)?;
        }
        let (a1, b1) = (a.dims.len() == 1, b.dims.len() == 1);
        if a1 {
            a = a.clone();
            a.dims.insert(0, Size::c(1));
            a.strides.insert(0, Size::c(0));
        }
        if b1 {
            b.dims.push(Size::c(1));
            b.strides.push(Size::c(1));
        }
        let (ra, rb) = (a.dims.len(), b.dims.len());
        let (m, k) = (a.dims[ra - 2].clone(), a.dims[ra - 1].clone());
        let nn = b.dims[rb - 1].clone();
        let batch = crate::cpu::shapes::broadcast(&a.dims[..ra - 2], &b.dims[..rb - 2])
            .ok_or_else(|| self.err("batch dimensions do not broadcast"))?;
        // expand both operands to the full batch and make them contiguous
        let mut ad = batch.clone();
        ad.extend([m.clone(), k.clone()]);
        let mut bd = batch.clone();
        bd.extend([k.clone(), nn.clone()]);
        let av = View {
            place: a.place.clone(),
            strides: bcast_strides(&a, &ad),
            dims: ad,
            dtype: DType::F32,
        };
        let bv = View {
            place: b.place.clone(),
            strides: bcast_strides(&b, &bd),
            dims: bd,
            dtype: DType::F32,
        };
        let av = self.contiguous(&av)?;
        let bv = self.contiguous(&bv)?;
        let nb = Size::product(&batch);
        let od = self.out_dims(out);
        let o = self.fresh(Some(out), od, DType::F32);
        let args = vec![
            Arg::Ptr(o.place.clone()),
            Arg::Ptr(av.place.clone()),
            Arg::Ptr(bv.place.clone()),
            Arg::Size(nb.clone()),
            Arg::Size(m.clone()),
            Arg::Size(nn.clone()),
            Arg::Size(k.clone()),
            Arg::Size(m.mul(&k)),
            Arg::Size(k.mul(&nn)),
        ];
        self.kernel(Kernel::MatMul, args, nb.mul(&m), 1);
        let odt = g.ty(out).dtype();
        let o = if odt == DType::F32 {
            o
        } else {
            self.cast(&o, odt)?
        };
        self.set(out, o);
        Ok(())
    }
}
