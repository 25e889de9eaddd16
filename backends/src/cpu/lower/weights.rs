//! Weights packed into the weights file in the layout their consumer reads (each weight
//! once per layout, identical blobs once), and small parameters as f32.

use super::views::bcast_strides;
use super::{Lowerer, Pack};
use crate::cpu::plan::{Base, Place, View};
use crate::cpu::size::Size;
use crate::cpu::BackendError;
use llmc_ir::{DType, Encoding, ValueDef, ValueId};

impl<'g> Lowerer<'g> {
    /// The weight's bytes in the weights file in a given layout (packed once per layout).
    pub(super) fn pack(&mut self, w: usize, how: Pack) -> Result<Place, BackendError> {
        if let Some(off) = self.data.cache.get(&(w, how.clone())) {
            return Ok(Place {
                base: Base::Weights,
                offset: Size::c(*off as i64),
            });
        }
        let wt = &self.g.weights[w];
        let data = wt
            .data
            .as_ref()
            .ok_or_else(|| self.err(format!("weight @{} has no data", wt.name)))?;
        let bytes = match &how {
            Pack::Canonical => data
                .canonical_bytes(&wt.ty)
                .map_err(|e| BackendError::BadInput(e.to_string()))?,
            Pack::F32 { len } => {
                let t = data
                    .decode_f32(&wt.ty)
                    .map_err(|e| BackendError::BadInput(e.to_string()))?;
                let mut v = t.to_f32_vec();
                if *len as usize > v.len() && !v.is_empty() {
                    let n = v.len();
                    v = (0..*len as usize).map(|i| v[i % n]).collect();
                }
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            }
            Pack::DensePanels
            | Pack::F32Panels
            | Pack::QuantPanels { .. }
            | Pack::PalettePanels
            | Pack::Sparse24Panels => {
                let (n, k) = (
                    wt.ty.shape.0[0].fixed().expect("fixed") as usize,
                    wt.ty.shape.0[1].fixed().expect("fixed") as usize,
                );
                match (&how, &wt.ty.enc) {
                    (Pack::QuantPanels { layout, offset }, Encoding::Quant(q)) => {
                        let raw = data
                            .canonical_bytes(&wt.ty)
                            .map_err(|e| BackendError::BadInput(e.to_string()))?;
                        crate::cpu::pack::pack_quant(q, n, k, &raw, *layout, *offset)
                    }
                    (Pack::PalettePanels, Encoding::Palette(p)) => {
                        let raw = data
                            .canonical_bytes(&wt.ty)
                            .map_err(|e| BackendError::BadInput(e.to_string()))?;
                        crate::cpu::pack::pack_palette(p, n, k, &raw)
                    }
                    (Pack::Sparse24Panels, Encoding::Sparse24(inner)) => {
                        let raw = data
                            .canonical_bytes(&wt.ty)
                            .map_err(|e| BackendError::BadInput(e.to_string()))?;
                        crate::cpu::pack::pack_sparse24(inner, n, k, &raw)
                    }
                    (Pack::DensePanels, Encoding::Dense(d)) => {
                        let raw = data
                            .canonical_bytes(&wt.ty)
                            .map_err(|e| BackendError::BadInput(e.to_string()))?;
                        crate::cpu::pack::pack_dense(&raw, n, k, d.size())
                    }
                    _ => {
                        let t = data
                            .decode_f32(&wt.ty)
                            .map_err(|e| BackendError::BadInput(e.to_string()))?;
                        let raw: Vec<u8> = t
                            .to_f32_vec()
                            .iter()
                            .flat_map(|x| x.to_le_bytes())
                            .collect();
                        crate::cpu::pack::pack_dense(&raw, n, k, 4)
                    }
                }
            }
        };
        let hash = xxhash_rust::xxh3::xxh3_64(&bytes);
        let same = self.data.by_hash.get(&hash).and_then(|blobs| {
            blobs
                .iter()
                .find(|&&b| self.data.packed[b].1 == bytes)
                .map(|&b| self.data.packed[b].0)
        });
        let off = match same {
            Some(off) => {
                self.data.deduplicated += bytes.len() as u64;
                off
            }
            None => {
                let off = self.data.weights_size;
                self.data.weights_size =
                    llmc_runtime::weights::align((off as usize) + bytes.len()) as u64;
                self.data
                    .by_hash
                    .entry(hash)
                    .or_default()
                    .push(self.data.packed.len());
                self.data.packed.push((off, bytes));
                off
            }
        };
        self.data.cache.insert((w, how), off);
        Ok(Place {
            base: Base::Weights,
            offset: Size::c(off as i64),
        })
    }

    /// A linear layer's bias as `cols` contiguous f32 (a weight repeats to fill them).
    pub(super) fn param_f32(&mut self, v: ValueId, cols: u64) -> Result<Place, BackendError> {
        if let ValueDef::Weight(w) = self.g.def(v) {
            return self.pack(w as usize, Pack::F32 { len: cols });
        }
        self.param_f32_over(v, &[Size::c(cols as i64)])
    }

    /// A norm's scale or bias broadcast to the normalized dimensions `dims`, as contiguous f32.
    pub(super) fn param_f32_over(
        &mut self,
        v: ValueId,
        dims: &[Size],
    ) -> Result<Place, BackendError> {
        let total = Size::product(dims);
        if let ValueDef::Weight(w) = self.g.def(v) {
            let shape = &self.sh[v.0 as usize].dims;
            let lead = shape.iter().take_while(|d| d.as_const() == Some(1)).count();
            let inner = &shape[lead..];
            // a weight of the trailing dimensions repeats as it is laid out
            if inner.len() <= dims.len() && dims[dims.len() - inner.len()..] == *inner {
                let len = total
                    .as_const()
                    .ok_or_else(|| self.err("the normalized dimensions must be fixed"))?;
                return self.pack(w as usize, Pack::F32 { len: len as u64 });
            }
        }
        let x = self.view(v)?;
        let st = bcast_strides(&x, dims);
        let src = View {
            place: x.place.clone(),
            dims: dims.to_vec(),
            strides: st,
            dtype: x.dtype,
        };
        let src = if x.dtype == DType::F32 {
            src
        } else {
            self.cast(&src, DType::F32)?
        };
        Ok(self.contiguous(&src)?.place)
    }
}
