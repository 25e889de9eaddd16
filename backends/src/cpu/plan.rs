//! The static memory plan: where every value lives (arena buffer, weights, KV state, the
//! caller's input and output buffers, constants), and the arena layout from buffer lifetimes.

use super::size::Size;
use llmc_ir::DType;

/// Where a buffer's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Base {
    /// A scratch buffer, placed in the arena once lifetimes are known.
    Buf(u32),
    /// The weights the caller passed to init.
    Weights,
    /// The state: KV cache regions.
    State,
    /// The caller's i-th input buffer.
    Input(u32),
    /// The caller's i-th output buffer.
    Output(u32),
    /// The i-th constant the module carries.
    Global(u32),
}

/// An address: a base and a byte offset from it (symbolic for slices at run-time positions).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Place {
    pub base: Base,
    pub offset: Size,
}

impl Place {
    pub fn at(base: Base) -> Place {
        Place {
            base,
            offset: Size::c(0),
        }
    }

    /// The place `bytes` further on.
    pub fn plus(&self, bytes: &Size) -> Place {
        Place {
            base: self.base,
            offset: self.offset.add(bytes),
        }
    }
}

/// A value as the schedule sees it: an address, dimensions and strides (in elements).
#[derive(Clone, Debug)]
pub struct View {
    pub place: Place,
    pub dims: Vec<Size>,
    pub strides: Vec<Size>,
    pub dtype: DType,
}

/// Row-major strides of symbolic dimensions.
pub fn contiguous_strides(dims: &[Size]) -> Vec<Size> {
    let mut s = vec![Size::c(1); dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1].mul(&dims[i + 1]);
    }
    s
}

impl View {
    pub fn contiguous(place: Place, dims: Vec<Size>, dtype: DType) -> View {
        let strides = contiguous_strides(&dims);
        View {
            place,
            dims,
            strides,
            dtype,
        }
    }

    pub fn is_contiguous(&self) -> bool {
        // size-1 dimensions may have any stride
        let c = contiguous_strides(&self.dims);
        self.strides
            .iter()
            .zip(&c)
            .zip(&self.dims)
            .all(|((s, c), d)| s == c || d.as_const() == Some(1))
    }

    pub fn numel(&self) -> Size {
        Size::product(&self.dims)
    }

    /// The same bytes with other dimensions (only for contiguous views).
    pub fn reshaped(&self, dims: Vec<Size>) -> View {
        View::contiguous(self.place.clone(), dims, self.dtype)
    }
}

/// A scratch buffer's size and lifetime in schedule steps.
#[derive(Clone, Debug)]
pub struct BufInfo {
    pub bytes: u64,
    pub first: usize,
    pub last: usize,
}

/// Lays buffers out in the arena: largest first, each at the lowest offset that does not
/// overlap a buffer alive at the same time. Returns offsets and the arena size.
pub fn allocate(bufs: &[BufInfo], align: u64) -> (Vec<u64>, u64) {
    let mut order: Vec<usize> = (0..bufs.len()).collect();
    order.sort_by(|&a, &b| bufs[b].bytes.cmp(&bufs[a].bytes).then(a.cmp(&b)));
    let mut placed: Vec<(u64, u64, usize)> = Vec::new(); // (offset, end, buffer)
    let mut offsets = vec![0u64; bufs.len()];
    let mut total = 0u64;
    for &i in &order {
        let b = &bufs[i];
        let size = b.bytes.div_ceil(align) * align;
        let mut busy: Vec<(u64, u64)> = placed
            .iter()
            .filter(|&&(_, _, j)| bufs[j].first <= b.last && b.first <= bufs[j].last)
            .map(|&(o, e, _)| (o, e))
            .collect();
        busy.sort_unstable();
        let mut off = 0u64;
        for (o, e) in busy {
            if off + size <= o {
                break;
            }
            off = off.max(e);
        }
        offsets[i] = off;
        placed.push((off, off + size, i));
        total = total.max(off + size);
    }
    (offsets, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_alive_together_do_not_overlap() {
        let bufs = vec![
            BufInfo {
                bytes: 100,
                first: 0,
                last: 2,
            },
            BufInfo {
                bytes: 50,
                first: 1,
                last: 3,
            },
            BufInfo {
                bytes: 100,
                first: 3,
                last: 4,
            },
            BufInfo {
                bytes: 10,
                first: 4,
                last: 5,
            },
        ];
        let (off, total) = allocate(&bufs, 64);
        for i in 0..bufs.len() {
            for j in 0..i {
                let live = bufs[i].first <= bufs[j].last && bufs[j].first <= bufs[i].last;
                let overlap = off[i] < off[j] + bufs[j].bytes && off[j] < off[i] + bufs[i].bytes;
                assert!(!(live && overlap), "{i} and {j} overlap: {off:?}");
            }
        }
        // the third buffer reuses the first one's bytes
        assert_eq!(off[2], off[0]);
        assert!(total <= 256);
    }

    #[test]
    fn contiguity_ignores_unit_dims() {
        let v = View {
            place: Place::at(Base::State),
            dims: vec![Size::c(1), Size::c(3), Size::c(4)],
            strides: vec![Size::c(99), Size::c(4), Size::c(1)],
            dtype: DType::F32,
        };
        assert!(v.is_contiguous());
    }
}
