//! Attention over the KV cache (or the current tokens): one fused kernel call.

use super::views::bcast_strides;
use super::{Arg, Lowerer};
use crate::cpu::kernels::{attention::arg as att, Kernel};
use crate::cpu::plan::View;
use crate::cpu::BackendError;
use llmc_ir::{DType, ValueId};

impl<'g> Lowerer<'g> {
    pub(super) fn attention(
        &mut self,
        i: usize,
        causal: bool,
        scale: f32,
    ) -> Result<(), BackendError> {
        let g = self.g;
        let n = &g.nodes[i];
        let out = n.outputs[0];
        let inner = |l: &mut Self, v: ValueId| -> Result<View, BackendError> {
            let x = l.view(v)?;
            let x = if x.dtype == DType::F32 {
                x
            } else {
                l.cast(&x, DType::F32)?
            };
            // rows must be contiguous along the head dimension
            if x.strides[3].as_const() == Some(1) {
                Ok(x)
            } else {
                l.contiguous(&x)
            }
        };
        let q = inner(self, n.inputs[0])?;
        let k = inner(self, n.inputs[1])?;
        let v = inner(self, n.inputs[2])?;
        let mask = match n.inputs.get(3) {
            Some(m) => {
                let mv = self.view(*m)?;
                let mv = if mv.dtype == DType::F32 {
                    mv
                } else {
                    self.cast(&mv, DType::F32)?
                };
                let full = vec![
                    q.dims[0].clone(),
                    q.dims[1].clone(),
                    q.dims[2].clone(),
                    k.dims[2].clone(),
                ];
                let st = bcast_strides(&mv, &full);
                Some(View {
                    place: mv.place.clone(),
                    dims: full,
                    strides: st,
                    dtype: DType::F32,
                })
            }
            None => None,
        };
        let od = self.out_dims(out);
        let o = self.fresh(Some(out), od, DType::F32);
        let mut args = vec![Arg::I(0); att::COUNT];
        args[att::OUT as usize] = Arg::Ptr(o.place.clone());
        args[att::Q as usize] = Arg::Ptr(q.place.clone());
        args[att::K as usize] = Arg::Ptr(k.place.clone());
        args[att::V as usize] = Arg::Ptr(v.place.clone());
        if let Some(m) = &mask {
            args[att::MASK as usize] = Arg::Ptr(m.place.clone());
            for j in 0..4 {
                args[(att::MASK_STRIDES + j) as usize] = Arg::Size(m.strides[j as usize].clone());
            }
        }
        args[att::B as usize] = Arg::Size(q.dims[0].clone());
        args[att::H as usize] = Arg::Size(q.dims[1].clone());
        args[att::HK as usize] = Arg::Size(k.dims[1].clone());
        args[att::S as usize] = Arg::Size(q.dims[2].clone());
        args[att::T as usize] = Arg::Size(k.dims[2].clone());
        args[att::D as usize] = Arg::Size(q.dims[3].clone());
        args[att::DV as usize] = Arg::Size(v.dims[3].clone());
        args[att::SCALE as usize] = Arg::F32(scale);
        for (base, view) in [
            (att::Q_STRIDES, &q),
            (att::K_STRIDES, &k),
            (att::V_STRIDES, &v),
            (att::OUT_STRIDES, &o),
        ] {
            for j in 0..3 {
                args[(base + j) as usize] = Arg::Size(view.strides[j as usize].clone());
            }
        }
        // one work item per (batch, KV head, query position)
        let items = q.dims[0].mul(&k.dims[1]).mul(&q.dims[2]);
        self.kernel(
            Kernel::Attention {
                causal,
                mask: mask.is_some(),
            },
            args,
            items,
            1,
        );
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
