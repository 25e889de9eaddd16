//! Linear layers and matrix products. Weights come in the layouts of `pack.rs`, one file here
//! per layout; the panel kernels compute `MR` tokens × 16 output rows at a time, as f32 FMAs
//! (f32 activations) or integer dot products (int8 activations) through the target's
//! [`VectorIsa`]: AVX-512 VNNI `vpdpbusd`, AVX2 `vpmaddubsw`, NEON `sdot`, i8mm `smmla`, or
//! the generic widening twin every target has.

mod canonical;
mod dense;
mod dot4;
mod matmul;
mod mmla;
mod palette;
mod quant;
mod quantize;
mod sparse24;

pub use canonical::decode_row;
pub use matmul::matmul;
pub use quantize::quantize_rows;

use crate::cpu::isa::VectorIsa;
use crate::cpu::kb::{vec_of, Kb, Var};
use crate::cpu::pack::{QLayout, NR};
use inkwell::types::{BasicTypeEnum, VectorType};
use inkwell::values::{BasicValue, BasicValueEnum, IntValue, PointerValue, VectorValue};
use inkwell::IntPredicate;
use llmc_ir::{DType, PaletteSpec, QuantSpec};

/// How the rows of a `[rows, cols]` table are stored: the IR's canonical layouts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RowFormat {
    Dense(DType),
    Quant(QuantSpec),
    /// Dense panels (`pack::pack_dense`): a table that a linear layer also reads (a tied
    /// embedding) is stored once, in the linear kernel's layout.
    Panels(DType),
    /// Palette panels (`pack::pack_palette`), likewise for a palettized tied table.
    PalettePanels,
    /// Quantized panels (`pack::pack_quant`), likewise for a quantized tied table; 8-bit codes
    /// stored minus `offset`.
    QuantPanels {
        q: QuantSpec,
        layout: QLayout,
        offset: u8,
    },
}

/// How a linear kernel's weight is laid out in the weights file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum WeightLayout {
    /// `[N, K]` rows in the canonical layout of the format (the generic kernel).
    Rows(RowFormat),
    /// Dense panels of this element type.
    DensePanels(DType),
    /// Quantized panels; 8-bit codes stored minus `offset`.
    QuantPanels {
        q: QuantSpec,
        layout: QLayout,
        offset: u8,
    },
    /// 4-bit palette panels with one codebook per panel (`pack::pack_palette`).
    PalettePanels(PaletteSpec),
    /// 2:4 panels: kept values and their positions (`pack::pack_sparse24`); `k16` when K is
    /// a multiple of 16 (the AVX-512 kernel then picks inputs from 16-wide windows).
    Sparse24Panels { kept: Kept, k16: bool },
}

/// How the kept values of a 2:4 weight are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kept {
    Dense(DType),
    Quant(QuantSpec),
}

/// What the kernel reads as activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActQuant {
    /// f32 activations.
    F32,
    /// int8 activations from [`quantize_rows`]: `x` points to the codes, plus row scales
    /// and per-group code sums.
    I8,
}

/// `y [M, N] = x [M, K] · wᵀ + bias`: `[out, x, w, bias, m, n, k, sx, xqsum]` (bias 0 when
/// absent; sx and xqsum only for int8 activations); work items: ⌈N / 16⌉ panels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LinearKernel {
    pub w: WeightLayout,
    pub act: ActQuant,
    pub bias: bool,
}

impl LinearKernel {
    /// Token rows of the kernel's micro-tile with these primitives (each tile computes that
    /// many tokens × [`COLS`] outputs); `None` for the generic row kernel, which computes one
    /// output at a time.
    pub fn tile_rows(&self, vx: &dyn VectorIsa) -> Option<usize> {
        match (&self.w, self.act) {
            (WeightLayout::Rows(_), _) => None,
            (
                WeightLayout::QuantPanels {
                    layout: QLayout::Mmla,
                    ..
                },
                ActQuant::I8,
            ) => Some(2),
            (
                WeightLayout::QuantPanels {
                    layout: QLayout::Dot4,
                    ..
                },
                ActQuant::I8,
            ) => Some(vx.tile_rows(true)),
            _ => Some(vx.tile_rows(false)),
        }
    }
}

/// Output columns per work item.
pub const COLS: i64 = NR as i64;

mod arg {
    pub const OUT: u32 = 0;
    pub const X: u32 = 1;
    pub const W: u32 = 2;
    pub const BIAS: u32 = 3;
    pub const M: u32 = 4;
    pub const N: u32 = 5;
    pub const K: u32 = 6;
    pub const SX: u32 = 7;
    pub const XQSUM: u32 = 8;
}

pub fn emit(kb: &mut Kb<'_, '_>, l: &LinearKernel, vx: &dyn VectorIsa) {
    match (&l.w, l.act) {
        (WeightLayout::Rows(f), _) => canonical::generic_rows(kb, f, l.bias),
        (WeightLayout::DensePanels(dt), _) => panels(kb, l, vx, Body::Dense(*dt)),
        (WeightLayout::PalettePanels(_), _) => panels(kb, l, vx, Body::Palette),
        (WeightLayout::Sparse24Panels { kept, k16 }, _) => {
            panels(kb, l, vx, Body::Sparse24(*kept, *k16))
        }
        (WeightLayout::QuantPanels { q, .. }, ActQuant::F32) => {
            panels(kb, l, vx, Body::QuantF32(*q))
        }
        (
            WeightLayout::QuantPanels {
                q,
                layout: QLayout::Dot4,
                offset,
            },
            ActQuant::I8,
        ) => panels(kb, l, vx, Body::Dot4(*q, *offset)),
        (
            WeightLayout::QuantPanels {
                q,
                layout: QLayout::Mmla,
                offset,
            },
            ActQuant::I8,
        ) => mmla::mmla(kb, l, vx, *q, *offset),
    }
}

#[derive(Clone, Copy)]
enum Body {
    Dense(DType),
    QuantF32(QuantSpec),
    Dot4(QuantSpec, u8),
    Palette,
    Sparse24(Kept, bool),
}

/// Vector helpers over inkwell.
struct V<'a, 'b, 'ctx> {
    kb: &'a Kb<'b, 'ctx>,
}

impl<'a, 'b, 'ctx> V<'a, 'b, 'ctx> {
    fn f32v(&self, lanes: u32) -> VectorType<'ctx> {
        self.kb.f32t().vec_type(lanes)
    }
    fn i32v(&self, lanes: u32) -> VectorType<'ctx> {
        self.kb.i32t().vec_type(lanes)
    }
    fn splat(&self, x: BasicValueEnum<'ctx>, lanes: u32) -> VectorValue<'ctx> {
        self.kb.splat(x, lanes)
    }
    fn zero_f(&self, lanes: u32) -> VectorValue<'ctx> {
        self.f32v(lanes).const_zero()
    }
    fn zero_i(&self, lanes: u32) -> VectorValue<'ctx> {
        self.i32v(lanes).const_zero()
    }
    fn const_i8(&self, v: u8, lanes: u32) -> VectorValue<'ctx> {
        let c = self.kb.i8t().const_int(v as u64, false);
        VectorType::const_vector(&vec![c; lanes as usize])
    }
    fn shuffle(&self, a: VectorValue<'ctx>, idx: &[u32]) -> VectorValue<'ctx> {
        self.kb.shuffle(a, idx)
    }
    fn fma(
        &self,
        a: VectorValue<'ctx>,
        b: VectorValue<'ctx>,
        c: VectorValue<'ctx>,
    ) -> VectorValue<'ctx> {
        let f = inkwell::intrinsics::Intrinsic::find("llvm.fmuladd")
            .expect("fmuladd")
            .get_declaration(self.kb.m, &[a.get_type().into()])
            .expect("decl");
        self.kb
            .b
            .build_call(f, &[a.into(), b.into(), c.into()], "")
            .expect("call")
            .try_as_basic_value()
            .basic()
            .expect("v")
            .into_vector_value()
    }
    fn fmul(&self, a: VectorValue<'ctx>, b: VectorValue<'ctx>) -> VectorValue<'ctx> {
        self.kb.b.build_float_mul(a, b, "").expect("fmul")
    }
    fn fadd(&self, a: VectorValue<'ctx>, b: VectorValue<'ctx>) -> VectorValue<'ctx> {
        self.kb.b.build_float_add(a, b, "").expect("fadd")
    }
    fn fsub(&self, a: VectorValue<'ctx>, b: VectorValue<'ctx>) -> VectorValue<'ctx> {
        self.kb.b.build_float_sub(a, b, "").expect("fsub")
    }
    fn uitofp(&self, a: VectorValue<'ctx>, lanes: u32) -> VectorValue<'ctx> {
        self.kb
            .b
            .build_unsigned_int_to_float(a, self.f32v(lanes), "")
            .expect("uitofp")
    }
    fn sitofp(&self, a: VectorValue<'ctx>, lanes: u32) -> VectorValue<'ctx> {
        self.kb
            .b
            .build_signed_int_to_float(a, self.f32v(lanes), "")
            .expect("sitofp")
    }
    fn and(&self, a: VectorValue<'ctx>, b: VectorValue<'ctx>) -> VectorValue<'ctx> {
        self.kb.b.build_and(a, b, "").expect("and")
    }
    fn lshr(&self, a: VectorValue<'ctx>, b: VectorValue<'ctx>) -> VectorValue<'ctx> {
        self.kb.b.build_right_shift(a, b, false, "").expect("shr")
    }
    fn bitcast(
        &self,
        a: impl inkwell::values::BasicValue<'ctx>,
        ty: VectorType<'ctx>,
    ) -> VectorValue<'ctx> {
        self.kb
            .b
            .build_bit_cast(a, ty, "")
            .expect("bitcast")
            .into_vector_value()
    }
    fn load_vec(
        &self,
        elem: BasicTypeEnum<'ctx>,
        lanes: u32,
        p: PointerValue<'ctx>,
        byte_off: IntValue<'ctx>,
    ) -> VectorValue<'ctx> {
        let ptr = self.kb.gep(self.kb.i8t().into(), p, byte_off);
        let v = self
            .kb
            .b
            .build_load(vec_of(elem, lanes), ptr, "")
            .expect("load");
        let _ = v.as_instruction_value().map(|i| i.set_alignment(1));
        v.into_vector_value()
    }
    /// 16 scale-type floats at a byte offset, as f32.
    fn load_floats(
        &self,
        dt: DType,
        p: PointerValue<'ctx>,
        byte_off: IntValue<'ctx>,
        vx: &dyn VectorIsa,
    ) -> VectorValue<'ctx> {
        match dt {
            DType::F32 => self.load_vec(self.kb.f32t().into(), NR as u32, p, byte_off),
            DType::BF16 => {
                let h = self.load_vec(self.kb.cx.i16_type().into(), NR as u32, p, byte_off);
                let w = self
                    .kb
                    .b
                    .build_int_z_extend(h, self.i32v(NR as u32), "")
                    .expect("zext");
                let sh = VectorType::const_vector(&[self.kb.i32c(16); NR]);
                let w = self.kb.b.build_left_shift(w, sh, "").expect("shl");
                self.bitcast(w, self.f32v(NR as u32))
            }
            _ => {
                let h = self.load_vec(self.kb.cx.i16_type().into(), NR as u32, p, byte_off);
                vx.half_to_f32(self.kb, h)
            }
        }
    }
}

/// The panel loop shared by every panel kernel: for each panel of 16 output rows, tiles of
/// `mr` tokens (then the leftover tokens one at a time) run `body`, which returns the
/// 16-lane results per token; they get the bias and are stored (the last panel partially).
fn panels(kb: &mut Kb<'_, '_>, l: &LinearKernel, vx: &dyn VectorIsa, body: Body) {
    let mr = l.tile_rows(vx).expect("a panel kernel");
    let (out, bias) = (kb.arg_ptr(arg::OUT), kb.arg_ptr(arg::BIAS));
    let (m, n) = (kb.arg(arg::M), kb.arg(arg::N));
    let (beg, end) = (kb.begin(), kb.end());
    let has_bias = l.bias;
    kb.for_range(beg, end, 1, |kb, p| {
        let col0 = kb.mul(p, kb.i64c(NR as i64));
        let full_tiles = kb.mul(kb.sdiv(m, kb.i64c(mr as i64)), kb.i64c(mr as i64));
        let zero = kb.i64c(0);
        for (lo, hi, rows) in [(zero, full_tiles, mr), (full_tiles, m, 1)] {
            kb.for_range(lo, hi, rows as i64, |kb, m0| {
                let res = tile(kb, &body, vx, p, m0, rows);
                let v = V { kb };
                let bvec = if has_bias {
                    // the bias is padded to whole panels by the packer
                    Some(v.load_vec(kb.f32t().into(), NR as u32, bias, kb.mul(col0, kb.i64c(4))))
                } else {
                    None
                };
                let left = kb.sub(n, col0);
                let full = kb.icmp(IntPredicate::SGE, left, kb.i64c(NR as i64));
                for (r, acc) in res.into_iter().enumerate() {
                    let v = V { kb };
                    let acc = match bvec {
                        Some(b) => v.fadd(acc, b),
                        None => acc,
                    };
                    let row = kb.add(m0, kb.i64c(r as i64));
                    let base = kb.add(kb.mul(row, n), col0);
                    let accv = kb.var(acc);
                    store_row(kb, out, base, left, full, accv);
                }
            });
        }
    });
}

/// One micro-tile: `rows` tokens from `m0` against panel `p`; 16-lane f32 results per token.
fn tile<'ctx>(
    kb: &mut Kb<'_, 'ctx>,
    body: &Body,
    vx: &dyn VectorIsa,
    p: IntValue<'ctx>,
    m0: IntValue<'ctx>,
    rows: usize,
) -> Vec<VectorValue<'ctx>> {
    let xwk = (kb.arg_ptr(arg::X), kb.arg_ptr(arg::W), kb.arg(arg::K));
    let nr = NR as u32;
    let v0 = V { kb };
    let acc: Vec<Var<'ctx>> = (0..rows).map(|_| kb.var(v0.zero_f(nr))).collect();
    match *body {
        Body::Dense(dt) => dense::dense_tile(kb, dt, vx, xwk, p, m0, &acc),
        Body::QuantF32(q) => quant::quant_f32_tile(kb, &q, vx, p, m0, &acc),
        Body::Dot4(q, offset) => dot4::dot4_tile(kb, &q, offset, vx, p, m0, &acc),
        Body::Palette => palette::palette_tile(kb, vx, p, m0, &acc),
        Body::Sparse24(kept, k16) => sparse24::sparse24_tile(kb, kept, k16, vx, p, m0, &acc),
    }
    acc.iter().map(|a| kb.get(*a).into_vector_value()).collect()
}

/// `acc[r] += x[m0 + r, kk] · w` for every token row of the tile.
fn axpy_rows<'ctx>(
    kb: &mut Kb<'_, 'ctx>,
    acc: &[Var<'ctx>],
    x: PointerValue<'ctx>,
    m0: IntValue<'ctx>,
    k: IntValue<'ctx>,
    kk: IntValue<'ctx>,
    w: VectorValue<'ctx>,
) {
    for (r, a) in acc.iter().enumerate() {
        let xi = kb.add(kb.mul(kb.add(m0, kb.i64c(r as i64)), k), kk);
        let xv = V { kb }.splat(kb.load_f32(x, xi).into(), NR as u32);
        let cur = kb.get(*a).into_vector_value();
        let nv = V { kb }.fma(xv, w, cur);
        kb.set(*a, nv);
    }
}

/// Stores a 16-lane result at `out[base..]`: whole when the panel is full, else its first
/// `left` lanes.
fn store_row<'ctx>(
    kb: &mut Kb<'_, 'ctx>,
    out: PointerValue<'ctx>,
    base: IntValue<'ctx>,
    left: IntValue<'ctx>,
    full: IntValue<'ctx>,
    rv: Var<'ctx>,
) {
    kb.if_else(
        full,
        |kb| {
            let a = kb.get(rv).into_vector_value();
            kb.vstore(out, base, a)
        },
        |kb| {
            let z = kb.i64c(0);
            kb.for_range(z, left, 1, |kb, c| {
                let a = kb.get(rv).into_vector_value();
                let e = kb.b.build_extract_element(a, c, "").expect("extract");
                kb.store(out, kb.add(base, c), e);
            });
        },
    )
}
