//! Lowering: the graph becomes a schedule of kernel calls over planned memory. Values are
//! views (transposes, slices, broadcasts and reshapes cost nothing until a kernel needs its
//! operand contiguous), weights are packed into the weights file in the layout their
//! consumer reads, and the KV cache is a region of the state.

use super::kernels::linear::RowFormat;
use super::kernels::{
    attention::arg as att, ActQuant, Kernel, LinearKernel, WeightLayout, BCAST_RANK, CHUNK,
    COPY_RANK,
};
use super::pack::{quant_packable, QLayout};
use super::plan::{contiguous_strides, Base, BufInfo, Place, View};
use super::shapes::{Symbols, VShape};
use super::size::{Size, Sym};
use super::BackendError;
use llmc_ir::ops::norm_axis;
use llmc_ir::{DType, Encoding, Graph, Op, Tensor, ValueDef, ValueId};
use std::collections::HashMap;

/// A kernel argument.
#[derive(Clone, Debug)]
pub enum Arg {
    Ptr(Place),
    Size(Size),
    I(i64),
    F32(f32),
}

/// Work items: `⌈n / per⌉`.
#[derive(Clone, Debug)]
pub struct Tasks {
    pub n: Size,
    pub per: i64,
}

#[derive(Clone, Debug)]
pub enum StepKind {
    Kernel {
        kernel: Kernel,
        args: Vec<Arg>,
        tasks: Tasks,
        status: bool,
    },
    /// Integers known at build time up to the symbols, written to memory.
    Store {
        place: Place,
        values: Vec<Size>,
        dtype: DType,
    },
}

#[derive(Clone, Debug)]
pub struct Step {
    pub kind: StepKind,
    /// The IR node this step computes, for errors and profiles.
    pub node: Option<usize>,
}

/// A KV cache region of the state.
#[derive(Clone, Debug)]
pub struct StateSlot {
    pub offset: u64,
    pub bytes: u64,
    /// Dimensions with the appended axis at capacity, and its strides.
    pub dims: Vec<i64>,
    pub axis: usize,
    pub dtype: DType,
}

/// How a packed weight was laid out.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Pack {
    /// The canonical layout of the weight's encoding.
    Canonical,
    /// Decoded to f32, optionally broadcast to `len` elements (zero-padded past a 1-D
    /// weight's own length when `len` is a multiple of it... see `pack`).
    F32 { len: u64 },
    /// Dense panels of the weight's own element type (`pack::pack_dense`).
    DensePanels,
    /// Dense panels of the weight decoded to f32.
    F32Panels,
    /// Quantized panels (`pack::pack_quant`).
    QuantPanels {
        layout: super::pack::QLayout,
        offset: u8,
    },
    /// Palette panels (`pack::pack_palette`).
    PalettePanels,
    /// 2:4 panels (`pack::pack_sparse24`).
    Sparse24Panels,
}

/// The result of lowering.
pub struct Lowered {
    pub steps: Vec<Step>,
    pub bufs: Vec<BufInfo>,
    /// The weights file and module constants, shared by every graph of a bundle.
    pub data: Packed,
    pub states: Vec<StateSlot>,
    /// First free byte of the state after the header and the KV regions.
    pub state_end: u64,
    pub syms: Symbols,
    /// Input and output views in declaration order (dims for the header and checks).
    pub inputs: Vec<(String, View)>,
    pub outputs: Vec<(String, View)>,
}

/// What the graphs of one bundle share: weights packed into the weights file (each weight
/// once per layout) and the module's constants.
#[derive(Clone, Debug)]
pub struct Packed {
    /// `(offset, bytes)` of each packed weight in the weights file.
    pub packed: Vec<(u64, Vec<u8>)>,
    cache: HashMap<(usize, Pack), u64>,
    /// Packed blobs by content hash (indices into `packed`): identical tensors are stored once.
    by_hash: HashMap<u64, Vec<usize>>,
    /// Bytes not written because an identical blob was already there.
    pub deduplicated: u64,
    /// End of the last packed weight: the weights file's size before padding.
    pub weights_size: u64,
    pub globals: Vec<Vec<u8>>,
}

impl Default for Packed {
    fn default() -> Self {
        Packed {
            packed: Vec::new(),
            cache: HashMap::new(),
            by_hash: HashMap::new(),
            deduplicated: 0,
            weights_size: llmc_runtime::weights::HEADER_SIZE as u64,
            globals: Vec::new(),
        }
    }
}

/// Bytes of the state header (see `emit`).
pub const STATE_HEADER: u64 = 64;
/// Where kernels report an out-of-range index.
pub const STATUS_OFFSET: u64 = 40;

struct Lowerer<'g> {
    g: &'g Graph,
    sh: Vec<VShape>,
    syms: Symbols,
    names: Vec<String>,
    views: Vec<Option<View>>,
    steps: Vec<Step>,
    bufs: Vec<BufInfo>,
    data: Packed,
    states: Vec<StateSlot>,
    state_end: u64,
    out_index: HashMap<ValueId, u32>,
    node: Option<usize>,
    max_context: i64,
    isa: super::isa::Isa,
    /// int8 activations already computed: (input value, group) → codes, scales, group sums.
    quantized: HashMap<(ValueId, i64), (Place, Place, Place)>,
}

pub struct LowerOptions {
    /// Capacity of the KV cache along its appended axis.
    pub max_context: i64,
    /// What the target offers: picks weight layouts.
    pub isa: super::isa::Isa,
}

pub fn lower(
    g: &Graph,
    sh: Vec<VShape>,
    syms: Symbols,
    opts: &LowerOptions,
    data: Packed,
) -> Result<Lowered, BackendError> {
    let mut l = Lowerer {
        g,
        sh,
        syms,
        names: g.value_names(),
        views: vec![None; g.values.len()],
        steps: Vec::new(),
        bufs: Vec::new(),
        data,
        states: Vec::new(),
        state_end: STATE_HEADER,
        out_index: HashMap::new(),
        node: None,
        max_context: opts.max_context,
        isa: opts.isa,
        quantized: HashMap::new(),
    };
    for (k, (_, v)) in g.outputs.iter().enumerate() {
        l.out_index.entry(*v).or_insert(k as u32);
    }
    for (k, (_, v)) in g.inputs.iter().enumerate() {
        let dims = l.sh[v.0 as usize].dims.clone();
        l.views[v.0 as usize] = Some(View::contiguous(
            Place::at(Base::Input(k as u32)),
            dims,
            g.ty(*v).dtype(),
        ));
    }
    for s in &g.states {
        let dims: Vec<i64> =
            s.ty.shape
                .0
                .iter()
                .map(|d| match d {
                    llmc_ir::Dim::Fixed(n) => *n as i64,
                    llmc_ir::Dim::Sym(name) if name == "batch" => 1,
                    _ => opts.max_context,
                })
                .collect();
        let bytes = dims.iter().product::<i64>() as u64 * s.ty.dtype().size() as u64;
        let offset = l.state_end;
        l.state_end = (offset + bytes).div_ceil(64) * 64;
        l.states.push(StateSlot {
            offset,
            bytes,
            axis: 0,
            dims,
            dtype: s.ty.dtype(),
        });
    }
    for i in 0..g.nodes.len() {
        l.node = Some(i);
        l.lower_node(i)?;
    }
    l.node = None;
    let mut outputs = Vec::new();
    for (k, (name, v)) in g.outputs.iter().enumerate() {
        let view = l.view(*v)?;
        let want = Place::at(Base::Output(k as u32));
        let view = if view.place == want && view.is_contiguous() {
            view
        } else {
            let dst = View::contiguous(want, view.dims.clone(), view.dtype);
            l.copy(&view, &dst)?;
            dst
        };
        outputs.push((name.clone(), view));
    }
    let inputs = g
        .inputs
        .iter()
        .map(|(n, v)| {
            (
                n.clone(),
                l.views[v.0 as usize].clone().expect("input view"),
            )
        })
        .collect();
    Ok(Lowered {
        steps: l.steps,
        bufs: l.bufs,
        data: l.data,
        states: l.states,
        state_end: l.state_end,
        syms: l.syms,
        inputs,
        outputs,
    })
}

/// The panel layout a linear kernel reads a quantized `[N, k]` weight in, and the offset its
/// 8-bit codes are stored minus (signed-by-signed dot products on AArch64); `None` where the
/// generic row kernel reads the canonical layout. A tied table is gathered from the same panels.
fn quant_panels(
    isa: super::isa::Isa,
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

fn pad_front(v: &[Size], rank: usize, fill: Size) -> Vec<Size> {
    let mut out = vec![fill; rank.saturating_sub(v.len())];
    out.extend(v.iter().cloned());
    out
}

impl<'g> Lowerer<'g> {
    fn err(&self, msg: impl Into<String>) -> BackendError {
        match self.node {
            Some(i) => BackendError::Unsupported(format!(
                "{}: {}",
                self.g.describe_node(&self.names, i),
                msg.into()
            )),
            None => BackendError::Unsupported(msg.into()),
        }
    }

    fn max_bytes(&self, numel: &Size, dtype: DType) -> u64 {
        (numel.eval(&self.syms.max).max(0) as u64) * dtype.size() as u64
    }

    /// A fresh scratch buffer for a value of these dimensions, or the caller's output buffer
    /// when the value is a graph output of this element type (a result computed in another
    /// type and converted afterwards must not be written there: it may not fit).
    fn fresh(&mut self, v: Option<ValueId>, dims: Vec<Size>, dtype: DType) -> View {
        let out = v.filter(|v| self.g.ty(*v).dtype() == dtype);
        if let Some(k) = out.and_then(|v| self.out_index.get(&v)) {
            return View::contiguous(Place::at(Base::Output(*k)), dims, dtype);
        }
        let bytes = self.max_bytes(&Size::product(&dims), dtype).max(1);
        let id = self.bufs.len() as u32;
        self.bufs.push(BufInfo {
            bytes,
            first: self.steps.len(),
            last: self.steps.len(),
        });
        View::contiguous(Place::at(Base::Buf(id)), dims, dtype)
    }

    fn push(&mut self, kind: StepKind) {
        let idx = self.steps.len();
        let touch = |p: &Place, bufs: &mut Vec<BufInfo>| {
            if let Base::Buf(b) = p.base {
                let bi = &mut bufs[b as usize];
                bi.first = bi.first.min(idx);
                bi.last = bi.last.max(idx);
            }
        };
        match &kind {
            StepKind::Kernel { args, .. } => {
                for a in args {
                    if let Arg::Ptr(p) = a {
                        touch(p, &mut self.bufs);
                    }
                }
            }
            StepKind::Store { place, .. } => touch(place, &mut self.bufs),
        }
        self.steps.push(Step {
            kind,
            node: self.node,
        });
    }

    fn kernel(&mut self, kernel: Kernel, args: Vec<Arg>, n: Size, per: i64) {
        self.push(StepKind::Kernel {
            kernel,
            args,
            tasks: Tasks { n, per },
            status: false,
        });
    }

    /// The view of a value: planned, a weight (packed canonical), or integers known at build
    /// time written out on first use.
    fn view(&mut self, v: ValueId) -> Result<View, BackendError> {
        if let Some(view) = &self.views[v.0 as usize] {
            return Ok(view.clone());
        }
        let g = self.g;
        if let ValueDef::Weight(w) = g.def(v) {
            // dense weights keep their element type; encoded ones (read only by ops that
            // take them, as f32) decode to f32
            let (how, dtype) = match g.weights[w as usize].ty.enc {
                Encoding::Dense(d) => (Pack::Canonical, d),
                _ => (Pack::F32 { len: 0 }, DType::F32),
            };
            let place = self.pack(w as usize, how)?;
            let dims = self.sh[v.0 as usize].dims.clone();
            let view = View::contiguous(place, dims, dtype);
            self.views[v.0 as usize] = Some(view.clone());
            return Ok(view);
        }
        let s = &self.sh[v.0 as usize];
        if let Some(values) = s.value.clone() {
            let dtype = g.ty(v).dtype();
            let view = self.fresh(Some(v), s.dims.clone(), dtype);
            self.push(StepKind::Store {
                place: view.place.clone(),
                values,
                dtype,
            });
            self.views[v.0 as usize] = Some(view.clone());
            return Ok(view);
        }
        Err(self.err(format!(
            "{} has no planned location",
            self.names[v.0 as usize]
        )))
    }

    /// The weight's bytes in the weights file in a given layout (packed once per layout).
    fn pack(&mut self, w: usize, how: Pack) -> Result<Place, BackendError> {
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
                        super::pack::pack_quant(q, n, k, &raw, *layout, *offset)
                    }
                    (Pack::PalettePanels, Encoding::Palette(p)) => {
                        let raw = data
                            .canonical_bytes(&wt.ty)
                            .map_err(|e| BackendError::BadInput(e.to_string()))?;
                        super::pack::pack_palette(p, n, k, &raw)
                    }
                    (Pack::Sparse24Panels, Encoding::Sparse24(inner)) => {
                        let raw = data
                            .canonical_bytes(&wt.ty)
                            .map_err(|e| BackendError::BadInput(e.to_string()))?;
                        super::pack::pack_sparse24(inner, n, k, &raw)
                    }
                    (Pack::DensePanels, Encoding::Dense(d)) => {
                        let raw = data
                            .canonical_bytes(&wt.ty)
                            .map_err(|e| BackendError::BadInput(e.to_string()))?;
                        super::pack::pack_dense(&raw, n, k, d.size())
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
                        super::pack::pack_dense(&raw, n, k, 4)
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

    /// A contiguous copy of a view (the view itself when already contiguous).
    fn contiguous(&mut self, v: &View) -> Result<View, BackendError> {
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
    fn copy(&mut self, src: &View, dst: &View) -> Result<(), BackendError> {
        let Some((dims, strides)) = collapse(
            &[src.dims.clone()],
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

    fn set(&mut self, v: ValueId, view: View) {
        self.views[v.0 as usize] = Some(view);
    }

    fn out_dims(&self, v: ValueId) -> Vec<Size> {
        self.sh[v.0 as usize].dims.clone()
    }

    fn lower_node(&mut self, i: usize) -> Result<(), BackendError> {
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
                        .map_err(|m| self.err(m))?
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
                let ax = norm_axis(*axis, x.dims.len()).map_err(|m| self.err(m))?;
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
                let ax = norm_axis(*axis, dst.dims.len()).map_err(|m| self.err(m))?;
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
                let ax = norm_axis(*axis, x.dims.len()).map_err(|m| self.err(m))?;
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
                let ax = norm_axis(*axis, x.dims.len()).map_err(|m| self.err(m))?;
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
                        .map_err(|m| self.err(m))?
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
                let ax = norm_axis(*axis, x.dims.len()).map_err(|m| self.err(m))?;
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
                let ax = norm_axis(*axis, x.dims.len()).map_err(|m| self.err(m))?;
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
                let (start, _, delta) = super::shapes::float_range(g, &n.inputs)
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

    fn cast(&mut self, x: &View, to: DType) -> Result<View, BackendError> {
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

    /// A linear layer's bias as `cols` contiguous f32 (a weight repeats to fill them).
    fn param_f32(&mut self, v: ValueId, cols: u64) -> Result<Place, BackendError> {
        if let ValueDef::Weight(w) = self.g.def(v) {
            return self.pack(w as usize, Pack::F32 { len: cols });
        }
        self.param_f32_over(v, &[Size::c(cols as i64)])
    }

    /// A norm's scale or bias broadcast to the normalized dimensions `dims`, as contiguous f32.
    fn param_f32_over(&mut self, v: ValueId, dims: &[Size]) -> Result<Place, BackendError> {
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

    /// Strides and dims of operands broadcast to `od`, collapsed to the binary kernels' rank.
    fn bcast4(
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

    /// Runs a row kernel over `axes` of x: the axes go last (a copy if needed), the kernel
    /// maps each row to `cols` outputs (`reduce`: one), and the result is viewed back.
    fn rows_op(
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

    fn slice_view(&mut self, i: usize, x: &View) -> Result<View, BackendError> {
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
            let ax = norm_axis(axes[k], r).map_err(|m| self.err(m))?;
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

    fn gather(&mut self, i: usize, axis: i64) -> Result<(), BackendError> {
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
                        && super::pack::palette_packable(
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
        let ax = norm_axis(axis, dims.len()).map_err(|m| self.err(m))?;
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

    fn linear(&mut self, i: usize) -> Result<(), BackendError> {
        use super::kernels::linear::Kept;
        use super::pack::{pack_dense, pack_quant, palette_packable, sparse24_packable, NR};
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
            super::kernels::linear::COLS,
        );
        let o = if odt == DType::F32 {
            o
        } else {
            self.cast(&o, odt)?
        };
        self.set(out, o);
        Ok(())
    }

    fn matmul(&mut self, i: usize) -> Result<(), BackendError> {
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
        let batch = super::shapes::broadcast(&a.dims[..ra - 2], &b.dims[..rb - 2])
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

    fn attention(&mut self, i: usize, causal: bool, scale: f32) -> Result<(), BackendError> {
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

/// Strides of `v` read as a tensor of dimensions `od` under numpy broadcasting.
fn bcast_strides(v: &View, od: &[Size]) -> Vec<Size> {
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
fn collapse(
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

/// Values of a tensor for the module's constants.
pub fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    t.data.to_le_bytes()
}

/// The decoder's symbols: tokens in this call and tokens already cached.
pub fn decoder_symbols(max_tokens: i64, max_context: i64) -> (Symbols, Sym, Sym) {
    let mut s = Symbols::default();
    let t = s.add("tokens", max_tokens);
    let p = s.add("past", max_context);
    (s, t, p)
}
