//! Lowering: the graph becomes a schedule of kernel calls over planned memory. Values are
//! views (transposes, slices, broadcasts and reshapes cost nothing until a kernel needs its
//! operand contiguous), weights are packed into the weights file in the layout their
//! consumer reads, and the KV cache is a region of the state.

mod attention;
mod linear;
mod nodes;
mod views;
mod weights;

use super::kernels::Kernel;
use super::plan::{Base, BufInfo, Place, View};
use super::shapes::{Symbols, VShape};
use super::size::{Size, Sym};
use super::BackendError;
use llmc_ir::{DType, Encoding, Graph, Tensor, ValueDef, ValueId};
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

    fn set(&mut self, v: ValueId, view: View) {
        self.views[v.0 as usize] = Some(view);
    }

    fn out_dims(&self, v: ValueId) -> Vec<Size> {
        self.sh[v.0 as usize].dims.clone()
    }
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
