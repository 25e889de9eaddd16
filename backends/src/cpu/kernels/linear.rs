//! Linear layers and matrix products. Weights come in the layouts of `pack.rs`; the panel
//! kernels compute `MR` tokens × 16 output rows at a time, as f32 FMAs (f32 activations) or
//! integer dot products of 4 bytes (int8 activations): AVX-512 VNNI `vpdpbusd`, AVX2
//! `vpmaddubsw`, NEON `sdot`, i8mm `smmla`, or the generic widening twin every target has.

use super::load_f32;
use crate::cpu::isa::{Codes, VectorIsa};
use crate::cpu::kb::{vec_of, Kb, Var};
use crate::cpu::pack::{QLayout, NR};
use inkwell::types::{BasicTypeEnum, VectorType};
use inkwell::values::{
    BasicValue, BasicValueEnum, FloatValue, IntValue, PointerValue, VectorValue,
};
use inkwell::IntPredicate;
use llmc_ir::{DType, Group, PaletteSpec, QuantSpec, Zero};

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
        (WeightLayout::Rows(f), _) => generic_rows(kb, f, l.bias),
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
        ) => mmla(kb, l, vx, *q, *offset),
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
                let sh = VectorType::const_vector(&vec![self.kb.i32c(16); NR]);
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
    let mr = vx.tile_rows(matches!(body, Body::Dot4(..)));
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
    let (x, w, k) = (kb.arg_ptr(arg::X), kb.arg_ptr(arg::W), kb.arg(arg::K));
    let nr = NR as u32;
    let v0 = V { kb };
    let acc: Vec<Var<'ctx>> = (0..rows).map(|_| kb.var(v0.zero_f(nr))).collect();
    match *body {
        Body::Dense(dt) => {
            let esz = dt.size() as i64;
            // panel bytes: K·NR elements rounded up to 64 (pack::dense_panel_bytes)
            let pb = kb.add(kb.mul(k, kb.i64c(NR as i64 * esz)), kb.i64c(63));
            let pb = kb.mul(kb.sdiv(pb, kb.i64c(64)), kb.i64c(64));
            let wbase = kb.mul(p, pb);
            let zero = kb.i64c(0);
            kb.for_range(zero, k, 1, |kb, kk| {
                let v = V { kb };
                let off = kb.add(wbase, kb.mul(kk, kb.i64c(NR as i64 * esz)));
                let wv = match dt {
                    DType::F32 => v.load_vec(kb.f32t().into(), nr, w, off),
                    other => v.load_floats(other, w, off, vx),
                };
                for (r, a) in acc.iter().enumerate() {
                    let xi = kb.add(kb.mul(kb.add(m0, kb.i64c(r as i64)), k), kk);
                    let xv = V { kb }.splat(kb.load_f32(x, xi).into(), nr);
                    let cur = kb.get(*a).into_vector_value();
                    let nv = V { kb }.fma(xv, wv, cur);
                    kb.set(*a, nv);
                }
            });
        }
        Body::QuantF32(q) => quant_f32_tile(kb, &q, vx, p, m0, &acc),
        Body::Dot4(q, offset) => dot4_tile(kb, &q, offset, vx, p, m0, &acc),
        Body::Palette => palette_tile(kb, vx, p, m0, &acc),
        Body::Sparse24(kept, k16) => sparse24_tile(kb, kept, k16, vx, p, m0, &acc),
    }
    acc.iter().map(|a| kb.get(*a).into_vector_value()).collect()
}

/// Byte offsets of quantized panel `p`'s parts in `w`: (panel start, scales, zeros), and the
/// group length. Every kernel that reads the panel calls this as it starts, so it also asks
/// for the next panel's scales and zeros (see [`prefetch_next_groups`]).
fn enter_quant_panel<'ctx>(
    kb: &Kb<'_, 'ctx>,
    q: &QuantSpec,
    w: PointerValue<'ctx>,
    p: IntValue<'ctx>,
    k: IntValue<'ctx>,
) -> (
    IntValue<'ctx>,
    IntValue<'ctx>,
    IntValue<'ctx>,
    IntValue<'ctx>,
) {
    let sz = quant_panel_sizes(kb, q, k);
    let start = kb.mul(p, sz.panel);
    let soff = kb.add(start, sz.codes);
    let zoff = kb.add(soff, sz.scales);
    prefetch_next_groups(kb, q, w, (soff, zoff), sz.panel);
    (start, soff, zoff, sz.group)
}

/// Byte sizes of a quantized panel over `k` (`pack::quant_panel_bytes`, at run time): its
/// codes, its scales, the whole panel; and the group length.
#[derive(Clone, Copy)]
struct QuantPanelSizes<'ctx> {
    codes: IntValue<'ctx>,
    scales: IntValue<'ctx>,
    panel: IntValue<'ctx>,
    group: IntValue<'ctx>,
}

fn quant_panel_sizes<'ctx>(
    kb: &Kb<'_, 'ctx>,
    q: &QuantSpec,
    k: IntValue<'ctx>,
) -> QuantPanelSizes<'ctx> {
    let g = match q.group {
        Group::Size(g) => kb.i64c(g as i64),
        _ => k,
    };
    let groups = kb.sdiv(k, g);
    let nr = kb.i64c(NR as i64);
    let codes = kb.sdiv(kb.mul(kb.mul(k, nr), kb.i64c(q.bits as i64)), kb.i64c(8));
    let ssz = kb.i64c(q.scale.size() as i64);
    let scales = kb.mul(kb.mul(groups, nr), ssz);
    let zeros = match q.zero {
        Zero::Symmetric => kb.i64c(0),
        Zero::Int => kb.mul(groups, nr),
        Zero::Float => kb.mul(kb.mul(groups, nr), ssz),
    };
    let total = kb.add(kb.add(codes, scales), zeros);
    let panel = kb.mul(
        kb.sdiv(kb.add(total, kb.i64c(63)), kb.i64c(64)),
        kb.i64c(64),
    );
    QuantPanelSizes {
        codes,
        scales,
        panel,
        group: g,
    }
}

/// The zero term of group `gi`: `(zz, m)` so that a weight is `s·(u − zz)` (`sym`, `asym`) or
/// `s·u + m` (`min`), 16 lanes as f32.
fn zeros_of<'ctx>(
    v: &V<'_, '_, 'ctx>,
    q: &QuantSpec,
    w: PointerValue<'ctx>,
    zoff: IntValue<'ctx>,
    gi: IntValue<'ctx>,
    vx: &dyn VectorIsa,
) -> (Option<VectorValue<'ctx>>, Option<VectorValue<'ctx>>) {
    let kb = v.kb;
    let nr = NR as u32;
    match q.zero {
        Zero::Symmetric => (
            Some(VectorType::const_vector(&vec![
                kb.f32c(
                    (1u32 << (q.bits - 1)) as f32
                );
                NR
            ])),
            None,
        ),
        Zero::Int => {
            let z = v.load_vec(
                kb.i8t().into(),
                nr,
                w,
                kb.add(zoff, kb.mul(gi, kb.i64c(NR as i64))),
            );
            (Some(v.uitofp(z, nr)), None)
        }
        Zero::Float => {
            let off = kb.add(zoff, kb.mul(gi, kb.i64c((NR * q.scale.size()) as i64)));
            (None, Some(v.load_floats(q.scale, w, off, vx)))
        }
    }
}

/// A group's contribution to the f32 accumulator from its integer dot products `dint`
/// (codes stored minus `offset`): `s·(D − zz·Σxq)` with the subtraction done exactly in i32
/// (`sym`, `asym`), or `s·D + m·Σxq` (`min`).
#[allow(clippy::too_many_arguments)]
fn group_epilogue<'ctx>(
    v: &V<'_, '_, 'ctx>,
    q: &QuantSpec,
    w: PointerValue<'ctx>,
    zoff: IntValue<'ctx>,
    gi: IntValue<'ctx>,
    vx: &dyn VectorIsa,
    s: VectorValue<'ctx>,
    dint: VectorValue<'ctx>,
    xs: IntValue<'ctx>,
    offset: u8,
    cur: VectorValue<'ctx>,
) -> VectorValue<'ctx> {
    let kb = v.kb;
    let nr = NR as u32;
    let splat_i = |x: IntValue<'ctx>| v.splat(x.into(), nr);
    let with_offset = |d: VectorValue<'ctx>| {
        if offset == 0 {
            d
        } else {
            kb.b.build_int_add(
                d,
                splat_i(
                    kb.b.build_int_mul(xs, kb.i32c(offset as i32), "")
                        .expect("mul"),
                ),
                "",
            )
            .expect("add")
        }
    };
    match q.zero {
        Zero::Symmetric => {
            let c = (offset as i32) - (1i32 << (q.bits - 1));
            let di =
                kb.b.build_int_add(
                    dint,
                    splat_i(kb.b.build_int_mul(xs, kb.i32c(c), "").expect("mul")),
                    "",
                )
                .expect("add");
            v.fma(s, v.sitofp(di, nr), cur)
        }
        Zero::Int => {
            let z = v.load_vec(
                kb.i8t().into(),
                nr,
                w,
                kb.add(zoff, kb.mul(gi, kb.i64c(NR as i64))),
            );
            let z = kb.b.build_int_z_extend(z, v.i32v(nr), "").expect("zext");
            let di =
                kb.b.build_int_sub(
                    with_offset(dint),
                    kb.b.build_int_mul(z, splat_i(xs), "").expect("mul"),
                    "",
                )
                .expect("sub");
            v.fma(s, v.sitofp(di, nr), cur)
        }
        Zero::Float => {
            let off = kb.add(zoff, kb.mul(gi, kb.i64c((NR * q.scale.size()) as i64)));
            let m = v.load_floats(q.scale, w, off, vx);
            let xsf = v.splat(
                kb.b.build_signed_int_to_float(xs, kb.f32t(), "")
                    .expect("sitofp")
                    .into(),
                nr,
            );
            v.fma(m, xsf, v.fma(s, v.sitofp(with_offset(dint), nr), cur))
        }
    }
}

/// What a group's integer dot product starts from so that it ends as `D_u − zz·Σxq` (`sym`,
/// `asym`) or `D_u` (`min`), for codes stored as `u − offset`.
fn correction<'ctx>(
    v: &V<'_, '_, 'ctx>,
    q: &QuantSpec,
    w: PointerValue<'ctx>,
    zoff: IntValue<'ctx>,
    gi: IntValue<'ctx>,
    xs: IntValue<'ctx>,
    offset: u8,
) -> VectorValue<'ctx> {
    let kb = v.kb;
    let nr = NR as u32;
    let splat_i = |x: IntValue<'ctx>| v.splat(x.into(), nr);
    let mul = |a: IntValue<'ctx>, c: i32| kb.b.build_int_mul(a, kb.i32c(c), "").expect("mul");
    match q.zero {
        Zero::Symmetric => splat_i(mul(xs, offset as i32 - (1i32 << (q.bits - 1)))),
        Zero::Int => {
            let z = v.load_vec(
                kb.i8t().into(),
                nr,
                w,
                kb.add(zoff, kb.mul(gi, kb.i64c(NR as i64))),
            );
            let z = kb.b.build_int_z_extend(z, v.i32v(nr), "").expect("zext");
            let zx = kb.b.build_int_mul(z, splat_i(xs), "").expect("mul");
            kb.b.build_int_sub(splat_i(mul(xs, offset as i32)), zx, "")
                .expect("sub")
        }
        Zero::Float => splat_i(mul(xs, offset as i32)),
    }
}

/// f32 activations against quantized Dot4 panels: each code is dequantized in registers.
fn quant_f32_tile<'ctx>(
    kb: &mut Kb<'_, 'ctx>,
    q: &QuantSpec,
    vx: &dyn VectorIsa,
    p: IntValue<'ctx>,
    m0: IntValue<'ctx>,
    acc: &[Var<'ctx>],
) {
    let (x, w, k) = (kb.arg_ptr(arg::X), kb.arg_ptr(arg::W), kb.arg(arg::K));
    let (start, soff, zoff, g) = enter_quant_panel(kb, q, w, p, k);
    dequant_panel(
        kb,
        q,
        vx,
        w,
        (start, soff, zoff, g),
        k,
        &mut |kb, k0, off, wf| {
            let kk = kb.add(k0, kb.i64c(off as i64));
            axpy_rows(kb, acc, x, m0, k, kk, wf)
        },
    );
}

/// Dequantizes the 16 rows of a Dot4 panel over `cols` columns in registers, calling `f`
/// with each column as a block start (a multiple of 8 for 4-bit codes, of 4 for 8-bit) and an
/// offset known when generating, and its 16 weights as f32.
fn dequant_panel<'ctx>(
    kb: &mut Kb<'_, 'ctx>,
    q: &QuantSpec,
    vx: &dyn VectorIsa,
    w: PointerValue<'ctx>,
    (start, soff, zoff, g): (
        IntValue<'ctx>,
        IntValue<'ctx>,
        IntValue<'ctx>,
        IntValue<'ctx>,
    ),
    cols: IntValue<'ctx>,
    f: &mut dyn FnMut(&mut Kb<'_, 'ctx>, IntValue<'ctx>, u32, VectorValue<'ctx>),
) {
    let nr = NR as u32;
    let groups = kb.sdiv(cols, g);
    let step: i64 = if q.bits == 4 { 8 } else { 4 };
    let zero = kb.i64c(0);
    let q = *q;
    kb.for_range(zero, groups, 1, |kb, gi| {
        let v = V { kb };
        let s = v.load_floats(
            q.scale,
            w,
            kb.add(soff, kb.mul(gi, kb.i64c((NR * q.scale.size()) as i64))),
            vx,
        );
        let (zz, mn) = zeros_of(&v, &q, w, zoff, gi, vx);
        let kg0 = kb.mul(gi, g);
        let kg1 = kb.add(kg0, g);
        kb.for_range(kg0, kg1, step, |kb, k0| {
            let v = V { kb };
            // the block's bytes: 64 per step
            let boff = kb.add(start, kb.mul(kb.sdiv(k0, kb.i64c(step)), kb.i64c(64)));
            let bytes = v.load_vec(kb.i8t().into(), 64, w, boff);
            let parts: Vec<(VectorValue, i64)> = if q.bits == 4 {
                let lo = v.and(bytes, v.const_i8(0x0f, 64));
                let hi = v.lshr(bytes, v.const_i8(4, 64));
                vec![(lo, 0), (hi, 4)]
            } else {
                vec![(bytes, 0)]
            };
            for (codes, kofs) in parts {
                for t in 0..4u32 {
                    let v = V { kb };
                    let idx: Vec<u32> = (0..nr).map(|j| 4 * j + t).collect();
                    let u = v.uitofp(v.shuffle(codes, &idx), nr);
                    let wf = match (zz, mn) {
                        (Some(zz), _) => v.fmul(v.fsub(u, zz), s),
                        (None, Some(m)) => v.fma(u, s, m),
                        _ => unreachable!(),
                    };
                    f(kb, k0, kofs as u32 + t, wf);
                }
            }
        });
    });
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

/// f32 activations against palette panels: the panel's codebook stays in a register and
/// every index is looked up in it.
fn palette_tile<'ctx>(
    kb: &mut Kb<'_, 'ctx>,
    vx: &dyn VectorIsa,
    p: IntValue<'ctx>,
    m0: IntValue<'ctx>,
    acc: &[Var<'ctx>],
) {
    let (x, w, k) = (kb.arg_ptr(arg::X), kb.arg_ptr(arg::W), kb.arg(arg::K));
    let nr = NR as u32;
    // as pack::palette_panel_bytes
    let pb = kb.add(kb.i64c(64), kb.mul(k, kb.i64c(NR as i64 / 2)));
    let start = kb.mul(p, pb);
    let table_at = kb.gep(kb.i8t().into(), w, start);
    let table = V { kb }.load_vec(kb.f32t().into(), nr, w, start);
    let codes_at = kb.add(start, kb.i64c(64));
    let zero = kb.i64c(0);
    kb.for_range(zero, k, 8, |kb, k0| {
        let v = V { kb };
        let bytes = v.load_vec(
            kb.i8t().into(),
            64,
            w,
            kb.add(codes_at, kb.mul(k0, kb.i64c(8))),
        );
        let lo = v.and(bytes, v.const_i8(0x0f, 64));
        let hi = v.lshr(bytes, v.const_i8(4, 64));
        for (codes, kofs) in [(lo, 0), (hi, 4)] {
            for t in 0..4u32 {
                let v = V { kb };
                let sel: Vec<u32> = (0..nr).map(|j| 4 * j + t).collect();
                let idx =
                    kb.b.build_int_z_extend(v.shuffle(codes, &sel), v.i32v(nr), "")
                        .expect("zext");
                let wf = vx.lookup16_mem(kb, table, table_at, idx);
                let kk = kb.add(k0, kb.i64c(kofs + t as i64));
                axpy_rows(kb, acc, x, m0, k, kk, wf);
            }
        }
    });
}

/// How far ahead (bytes) the 2:4 kernel asks for the dense values and the positions it
/// streams. A panel keeps its parts apart (codes, then scales and zeros; 2:4 values, then
/// positions): streams the hardware prefetcher picks up again only some lines into every
/// panel, so decode, which reads each byte once, would wait on memory at every panel's start.
const PREFETCH_VALUES: i64 = 1024;
const PREFETCH_POS: i64 = 512;

/// Asks for the first lines of the next panel's scales and zeros, `stride` bytes on: a
/// panel reads its zeros as it starts and its scales as its first group ends, before the
/// hardware prefetcher has found either stream.
fn prefetch_next_groups<'ctx>(
    kb: &Kb<'_, 'ctx>,
    q: &QuantSpec,
    w: PointerValue<'ctx>,
    (soff, zoff): (IntValue<'ctx>, IntValue<'ctx>),
    stride: IntValue<'ctx>,
) {
    for line in 0..4 {
        kb.prefetch(w, kb.add(kb.add(soff, stride), kb.i64c(line * 64)));
    }
    if q.zero != Zero::Symmetric {
        for line in 0..2 {
            kb.prefetch(w, kb.add(kb.add(zoff, stride), kb.i64c(line * 64)));
        }
    }
}

/// f32 activations against 2:4 panels: each kept value (decoded in registers) multiplies
/// the input its 2-bit position picks out of its group of four: a `vpermps` of a window of
/// the token's inputs on AVX-512 (16 wide) and AVX2 (8 wide), selects elsewhere.
#[allow(clippy::too_many_arguments)]
fn sparse24_tile<'ctx>(
    kb: &mut Kb<'_, 'ctx>,
    kept: Kept,
    k16: bool,
    vx: &dyn VectorIsa,
    p: IntValue<'ctx>,
    m0: IntValue<'ctx>,
    acc: &[Var<'ctx>],
) {
    let (x, w, k) = (kb.arg_ptr(arg::X), kb.arg_ptr(arg::W), kb.arg(arg::K));
    let nr = NR as u32;
    let half = kb.sdiv(k, kb.i64c(2));
    let round64 = |kb: &Kb<'_, 'ctx>, b: IntValue<'ctx>| {
        kb.mul(kb.sdiv(kb.add(b, kb.i64c(63)), kb.i64c(64)), kb.i64c(64))
    };
    // as pack::sparse24_panel_bytes
    let (vb, qsz) = match kept {
        Kept::Dense(dt) => (
            round64(kb, kb.mul(half, kb.i64c((NR * dt.size()) as i64))),
            None,
        ),
        Kept::Quant(q) => {
            let sz = quant_panel_sizes(kb, &q, half);
            (sz.panel, Some(sz))
        }
    };
    let pb = kb.add(vb, round64(kb, kb.mul(k, kb.i64c(2))));
    let start = kb.mul(p, pb);
    let pos_at = kb.add(start, vb);
    // inputs picked from a window of `win` floats by an index per lane
    let win: Option<u32> = vx.sparse_window(k16);
    // odd kept values add into a second set of accumulators: two FMA chains per token
    let zv = V { kb }.zero_f(nr);
    let odd: Vec<Var<'ctx>> = acc.iter().map(|_| kb.var(zv)).collect();
    // kept value `kk` (≡ t mod 4) multiplies x[row, 4·(kk/2) + position]
    // kept value `base + off` (base a multiple of `mult`, 4 or 8) multiplies
    // x[row, 4·(kk/2) + position]; the static part of every offset is folded in here
    let step = |kb: &mut Kb<'_, 'ctx>,
                base: IntValue<'ctx>,
                off: u32,
                mult: u32,
                wv: VectorValue<'ctx>| {
        let v = V { kb };
        let t = off % 4;
        // the positions of kept values of this group of four: one load and widening that
        // the four share (the same expression, so LLVM keeps one)
        let quad = kb.add(
            kb.b.build_right_shift(base, kb.i64c(2), false, "")
                .expect("shr"),
            kb.i64c((off / 4) as i64),
        );
        let posb = v.load_vec(
            kb.i8t().into(),
            nr,
            w,
            kb.add(pos_at, kb.mul(quad, kb.i64c(NR as i64))),
        );
        let pos32 = kb.b.build_int_z_extend(posb, v.i32v(nr), "").expect("zext");
        let c32 = |x: i32| VectorType::const_vector(&vec![kb.i32c(x); NR]);
        let pos32 = v.and(v.lshr(pos32, c32(2 * t as i32)), c32(3));
        let pos =
            kb.b.build_int_truncate(pos32, kb.i8t().vec_type(nr), "")
                .expect("trunc");
        let col0 = kb.add(kb.mul(base, kb.i64c(2)), kb.i64c(((off / 2) * 4) as i64));
        // the window of inputs and the group's place in it
        let window = |kb: &Kb<'_, 'ctx>, wn: u32| -> (IntValue<'ctx>, IntValue<'ctx>) {
            if mult * 2 % wn == 0 {
                let within = (off / 2) * 4 % wn;
                let w0 = kb.add(
                    kb.mul(base, kb.i64c(2)),
                    kb.i64c(((off / 2) * 4 - within) as i64),
                );
                (w0, kb.i32c(within as i32))
            } else {
                let at =
                    kb.b.build_and(col0, kb.i64c(wn as i64 - 1), "")
                        .expect("and");
                (
                    kb.sub(col0, at),
                    kb.b.build_int_truncate(at, kb.i32t(), "").expect("trunc"),
                )
            }
        };
        let acc = if t % 2 == 1 { &odd[..] } else { acc };
        match win {
            Some(wn) => {
                let (w0, at) = window(kb, wn);
                let idx =
                    kb.b.build_or(pos32, v.splat(at.into(), nr), "")
                        .expect("or");
                for (r, a) in acc.iter().enumerate() {
                    let v = V { kb };
                    let xi = kb.add(kb.mul(kb.add(m0, kb.i64c(r as i64)), k), w0);
                    let xw = kb.vload(kb.f32t().into(), wn, x, xi);
                    let xv = vx.lookup(kb, xw, idx);
                    let cur = kb.get(*a).into_vector_value();
                    let nv = v.fma(xv, wv, cur);
                    kb.set(*a, nv);
                }
            }
            None => {
                let is = |c: u8| {
                    kb.b.build_int_compare(IntPredicate::EQ, pos, v.const_i8(c, nr), "")
                        .expect("cmp")
                };
                let (p0, p1, p2) = (is(0), is(1), is(2));
                for (r, a) in acc.iter().enumerate() {
                    let v = V { kb };
                    let xi = kb.add(kb.mul(kb.add(m0, kb.i64c(r as i64)), k), col0);
                    let xs: Vec<VectorValue<'ctx>> = (0..4)
                        .map(|c| v.splat(kb.load_f32(x, kb.add(xi, kb.i64c(c))).into(), nr))
                        .collect();
                    let pick = |m, a: VectorValue<'ctx>, b: VectorValue<'ctx>| {
                        kb.b.build_select(m, a, b, "")
                            .expect("select")
                            .into_vector_value()
                    };
                    let xv = pick(p0, xs[0], pick(p1, xs[1], pick(p2, xs[2], xs[3])));
                    let cur = kb.get(*a).into_vector_value();
                    let nv = v.fma(xv, wv, cur);
                    kb.set(*a, nv);
                }
            }
        }
    };
    // the panel's positions follow its values: ask for the first lines of the next panel's
    // now, and (dense values) for the rest as they come
    for line in 0..PREFETCH_POS / 64 {
        kb.prefetch(w, kb.add(kb.add(pos_at, pb), kb.i64c(line * 64)));
    }
    match kept {
        Kept::Dense(dt) => {
            let esz = dt.size() as i64;
            let zero = kb.i64c(0);
            // half is a multiple of 4 (K of 8), of 8 with K of 16
            let mult: u32 = if k16 { 8 } else { 4 };
            kb.for_range(zero, half, mult as i64, |kb, kk0| {
                let quad_bytes = kb.mul(
                    kb.b.build_right_shift(kk0, kb.i64c(2), false, "")
                        .expect("shr"),
                    kb.i64c(NR as i64),
                );
                kb.prefetch(w, kb.add(kb.add(pos_at, quad_bytes), kb.i64c(PREFETCH_POS)));
                for t in 0..mult {
                    let v = V { kb };
                    let kk = kb.add(kk0, kb.i64c(t as i64));
                    let off = kb.add(start, kb.mul(kk, kb.i64c(NR as i64 * esz)));
                    if (t as i64 * NR as i64 * esz) % 64 == 0 {
                        kb.prefetch(w, kb.add(off, kb.i64c(PREFETCH_VALUES)));
                    }
                    let wv = match dt {
                        DType::F32 => v.load_vec(kb.f32t().into(), nr, w, off),
                        other => v.load_floats(other, w, off, vx),
                    };
                    step(kb, kk0, t, mult, wv);
                }
            });
        }
        Kept::Quant(q) => {
            let sz = qsz.expect("sizes of quantized kept values");
            let soff = kb.add(start, sz.codes);
            let (zoff, g) = (kb.add(soff, sz.scales), sz.group);
            prefetch_next_groups(kb, &q, w, (soff, zoff), pb);
            dequant_panel(
                kb,
                &q,
                vx,
                w,
                (start, soff, zoff, g),
                half,
                &mut |kb, k0, off, wv| step(kb, k0, off, if q.bits == 4 { 8 } else { 4 }, wv),
            );
        }
    }
    for (a, o) in acc.iter().zip(&odd) {
        let v = V { kb };
        let sum = v.fadd(
            kb.get(*a).into_vector_value(),
            kb.get(*o).into_vector_value(),
        );
        kb.set(*a, sum);
    }
}

/// int8 activations against Dot4 panels: integer dot products per group, then
/// `acc += s·(D − zz·Σxq)` (or `s·D + m·Σxq`), scaled by the row's activation scale.
fn dot4_tile<'ctx>(
    kb: &mut Kb<'_, 'ctx>,
    q: &QuantSpec,
    offset: u8,
    vx: &dyn VectorIsa,
    p: IntValue<'ctx>,
    m0: IntValue<'ctx>,
    acc: &[Var<'ctx>],
) {
    let (x, w, k) = (kb.arg_ptr(arg::X), kb.arg_ptr(arg::W), kb.arg(arg::K));
    let (sx, xqsum) = (kb.arg_ptr(arg::SX), kb.arg_ptr(arg::XQSUM));
    let (start, soff, zoff, g) = enter_quant_panel(kb, q, w, p, k);
    let nr = NR as u32;
    let groups = kb.sdiv(k, g);
    let step: i64 = if q.bits == 4 { 8 } else { 4 };
    let zero = kb.i64c(0);
    let q = *q;
    let kind = if offset != 0 {
        Codes::S8
    } else if q.bits == 4 {
        Codes::U4
    } else {
        Codes::U8
    };
    let v0 = V { kb };
    // one token per tile (decode) would wait on a single accumulator's latency: give it two
    // chains, the nibble halves (4-bit) or alternate blocks (8-bit)
    let chains = if acc.len() == 1 { 2 } else { 1 };
    let unroll: i64 = if chains == 2 && q.bits == 8 { 2 } else { 1 };
    let acci: Vec<Vec<Var<'ctx>>> = acc
        .iter()
        .map(|_| (0..chains).map(|_| kb.var(v0.zero_i(nr))).collect())
        .collect();
    kb.for_range(zero, groups, 1, |kb, gi| {
        let v = V { kb };
        // each row's first chain starts at the group's zero-point correction
        for (r, a) in acci.iter().enumerate() {
            let row = kb.add(m0, kb.i64c(r as i64));
            let xs = kb
                .load(kb.i32t().into(), xqsum, kb.add(kb.mul(row, groups), gi))
                .into_int_value();
            let corr = correction(&v, &q, w, zoff, gi, xs, offset);
            kb.set(a[0], corr);
            for c in &a[1..] {
                kb.set(*c, v.zero_i(nr));
            }
        }
        let kg0 = kb.mul(gi, g);
        let kg1 = kb.add(kg0, g);
        let gl = match q.group {
            Group::Size(gs) => gs as i64,
            _ => 0,
        };
        // 8-bit blocks alternate chains two at a time when the group allows it
        let unroll = if unroll == 2 && (gl == 0 || gl % (2 * step) == 0) {
            2
        } else {
            1
        };
        kb.for_range(kg0, kg1, step * unroll, |kb, kb0| {
            for u in 0..unroll {
                let v = V { kb };
                let k0 = kb.add(kb0, kb.i64c(u * step));
                let boff = kb.add(start, kb.mul(kb.sdiv(k0, kb.i64c(step)), kb.i64c(64)));
                let bytes = v.load_vec(kb.i8t().into(), 64, w, boff);
                let parts: Vec<(VectorValue, i64)> = if q.bits == 4 {
                    let lo = v.and(bytes, v.const_i8(0x0f, 64));
                    let hi = v.lshr(bytes, v.const_i8(4, 64));
                    vec![(lo, 0), (hi, 4)]
                } else {
                    vec![(bytes, 0)]
                };
                for (h, (codes, kofs)) in parts.into_iter().enumerate() {
                    let chain = (u as usize + h) % chains;
                    for (r, a) in acci.iter().enumerate() {
                        let v = V { kb };
                        // 4 activation bytes of this token, broadcast to every lane
                        let xi = kb.add(
                            kb.add(kb.mul(kb.add(m0, kb.i64c(r as i64)), k), k0),
                            kb.i64c(kofs),
                        );
                        let xp = kb.gep(kb.i8t().into(), x, xi);
                        let x4 = kb.b.build_load(kb.i32t(), xp, "").expect("load");
                        let _ = x4.as_instruction_value().map(|i| i.set_alignment(1));
                        let xb = v.bitcast(v.splat(x4, nr), kb.i8t().vec_type(64));
                        let cur = kb.get(a[chain]).into_vector_value();
                        let nv = vx.dot4(kb, cur, codes, xb, kind, chain == 1);
                        kb.set(a[chain], nv);
                    }
                }
            }
        });
        let v = V { kb };
        let s = v.load_floats(
            q.scale,
            w,
            kb.add(soff, kb.mul(gi, kb.i64c((NR * q.scale.size()) as i64))),
            vx,
        );
        let m = match q.zero {
            Zero::Float => Some(v.load_floats(
                q.scale,
                w,
                kb.add(zoff, kb.mul(gi, kb.i64c((NR * q.scale.size()) as i64))),
                vx,
            )),
            _ => None,
        };
        for (r, (a, ai)) in acc.iter().zip(&acci).enumerate() {
            let v = V { kb };
            let mut d = kb.get(ai[0]).into_vector_value();
            for c in &ai[1..] {
                d =
                    kb.b.build_int_add(d, kb.get(*c).into_vector_value(), "")
                        .expect("add");
            }
            let cur = kb.get(*a).into_vector_value();
            let mut nv = v.fma(s, v.sitofp(d, nr), cur);
            if let Some(m) = m {
                let row = kb.add(m0, kb.i64c(r as i64));
                let xs = kb
                    .load(kb.i32t().into(), xqsum, kb.add(kb.mul(row, groups), gi))
                    .into_int_value();
                let xsf = v.splat(
                    kb.b.build_signed_int_to_float(xs, kb.f32t(), "")
                        .expect("sitofp")
                        .into(),
                    nr,
                );
                nv = v.fma(m, xsf, nv);
            }
            kb.set(*a, nv);
        }
    });
    for (r, a) in acc.iter().enumerate() {
        let v = V { kb };
        let row = kb.add(m0, kb.i64c(r as i64));
        let sxv = v.splat(kb.load_f32(sx, row).into(), nr);
        let cur = kb.get(*a).into_vector_value();
        kb.set(*a, v.fmul(cur, sxv));
    }
}

/// int8 activations against Mmla panels with `smmla`: two tokens × two rows × 8 k per
/// instruction; an odd last token pairs with itself.
fn mmla(kb: &mut Kb<'_, '_>, l: &LinearKernel, vx: &dyn VectorIsa, q: QuantSpec, offset: u8) {
    let (out, bias) = (kb.arg_ptr(arg::OUT), kb.arg_ptr(arg::BIAS));
    let (x, w, m, n, k) = (
        kb.arg_ptr(arg::X),
        kb.arg_ptr(arg::W),
        kb.arg(arg::M),
        kb.arg(arg::N),
        kb.arg(arg::K),
    );
    let (sx, xqsum) = (kb.arg_ptr(arg::SX), kb.arg_ptr(arg::XQSUM));
    let (beg, end) = (kb.begin(), kb.end());
    let has_bias = l.bias;
    let step: i64 = if q.bits == 4 { 16 } else { 8 };
    kb.for_range(beg, end, 1, |kb, p| {
        let (start, soff, zoff, g) = enter_quant_panel(kb, &q, w, p, k);
        let groups = kb.sdiv(k, g);
        let col0 = kb.mul(p, kb.i64c(NR as i64));
        let zero = kb.i64c(0);
        kb.for_range(zero, m, 2, |kb, m0| {
            let v = V { kb };
            // the pair's second token: the next one, or the same one again at the end
            let m1 = kb.imin(kb.add(m0, kb.i64c(1)), kb.sub(m, kb.i64c(1)));
            let accf: Vec<Var> = (0..2).map(|_| kb.var(v.zero_f(NR as u32))).collect();
            let acc4: Vec<Var> = (0..NR / 2)
                .map(|_| kb.var(kb.i32t().vec_type(4).const_zero()))
                .collect();
            let gz = kb.i64c(0);
            kb.for_range(gz, groups, 1, |kb, gi| {
                for a in &acc4 {
                    kb.set(*a, kb.i32t().vec_type(4).const_zero());
                }
                let kg0 = kb.mul(gi, g);
                let kg1 = kb.add(kg0, g);
                kb.for_range(kg0, kg1, step, |kb, k0| {
                    let v = V { kb };
                    let halves: Vec<i64> = if q.bits == 4 { vec![0, 8] } else { vec![0] };
                    // block bytes: NR/2 pairs × 16
                    let boff = kb.add(
                        start,
                        kb.mul(kb.sdiv(k0, kb.i64c(step)), kb.i64c((NR * 8) as i64)),
                    );
                    let blk = v.load_vec(kb.i8t().into(), (NR * 8) as u32, w, boff);
                    for (hi, &kofs) in halves.iter().enumerate() {
                        let codes = if q.bits == 4 {
                            if hi == 0 {
                                v.and(blk, v.const_i8(0x0f, (NR * 8) as u32))
                            } else {
                                v.lshr(blk, v.const_i8(4, (NR * 8) as u32))
                            }
                        } else {
                            blk
                        };
                        // A: 8 bytes of each token
                        let a =
                            kb.concat(load8(kb, x, m0, k, k0, kofs), load8(kb, x, m1, k, k0, kofs));
                        for (pi, acc) in acc4.iter().enumerate() {
                            let v = V { kb };
                            let b = v.shuffle(
                                codes,
                                &((pi * 16) as u32..(pi * 16 + 16) as u32).collect::<Vec<_>>(),
                            );
                            let cur = kb.get(*acc).into_vector_value();
                            let r = vx.smmla(kb, cur, a, b);
                            kb.set(*acc, r);
                        }
                    }
                });
                // acc4[pi] = [t0·r(2pi), t0·r(2pi+1), t1·r(2pi), t1·r(2pi+1)]: gather the two tokens' 16 lanes
                let v = V { kb };
                let parts: Vec<VectorValue> = acc4
                    .iter()
                    .map(|a| kb.get(*a).into_vector_value())
                    .collect();
                let all = kb.concat_all(parts);
                let t0: Vec<u32> = (0..NR as u32 / 2)
                    .flat_map(|pi| [4 * pi, 4 * pi + 1])
                    .collect();
                let t1: Vec<u32> = (0..NR as u32 / 2)
                    .flat_map(|pi| [4 * pi + 2, 4 * pi + 3])
                    .collect();
                let d = [v.shuffle(all, &t0), v.shuffle(all, &t1)];
                let s = v.load_floats(
                    q.scale,
                    w,
                    kb.add(soff, kb.mul(gi, kb.i64c((NR * q.scale.size()) as i64))),
                    vx,
                );
                for (ti, row) in [m0, m1].into_iter().enumerate() {
                    let v = V { kb };
                    let xs = kb
                        .load(kb.i32t().into(), xqsum, kb.add(kb.mul(row, groups), gi))
                        .into_int_value();
                    let cur = kb.get(accf[ti]).into_vector_value();
                    let nv = group_epilogue(&v, &q, w, zoff, gi, vx, s, d[ti], xs, offset, cur);
                    kb.set(accf[ti], nv);
                }
            });
            let left = kb.sub(n, col0);
            let full = kb.icmp(IntPredicate::SGE, left, kb.i64c(NR as i64));
            // the second token is stored only when it is a real one
            let two = kb.icmp(IntPredicate::NE, m1, m0);
            for (ti, row) in [m0, m1].into_iter().enumerate() {
                let v = V { kb };
                let sxv = v.splat(kb.load_f32(sx, row).into(), NR as u32);
                let mut r = v.fmul(kb.get(accf[ti]).into_vector_value(), sxv);
                if has_bias {
                    r = v.fadd(
                        r,
                        v.load_vec(kb.f32t().into(), NR as u32, bias, kb.mul(col0, kb.i64c(4))),
                    );
                }
                let rv = kb.var(r);
                let base = kb.add(kb.mul(row, n), col0);
                if ti == 0 {
                    store_row(kb, out, base, left, full, rv);
                } else {
                    kb.if_then(two, |kb| store_row(kb, out, base, left, full, rv));
                }
            }
        });
    });
}

/// `[xq (i8 [M, K]), sx (f32 [M]), xqsum (i32 [M, K/g]), x (f32 [M, K]), m, k]`, or with
/// `fake`, `[out (f32 [M, K]), _, _, x, m, k]`: int8 quantization of each row as
/// `act = i8_per_token` defines it; work items: rows.
pub fn quantize_rows(kb: &mut Kb<'_, '_>, group: u32, fake: bool, vx: &dyn VectorIsa) {
    let (xq, sx, xqsum, x) = (kb.arg_ptr(0), kb.arg_ptr(1), kb.arg_ptr(2), kb.arg_ptr(3));
    let k = kb.arg(5);
    let (b, e) = (kb.begin(), kb.end());
    kb.for_range(b, e, 1, |kb, row| {
        let base = kb.mul(row, k);
        let zero = kb.i64c(0);
        let amax = kb.var(kb.f32c(0.0));
        kb.for_range(zero, k, 1, |kb, j| {
            let a = kb.fabs(kb.load_f32(x, kb.add(base, j)));
            let c = kb.getf(amax);
            // maxnum reductions vectorize (compare-and-select ones do not)
            kb.set(amax, kb.call_f32_intrinsic("llvm.maxnum", &[c, a]));
        });
        let am = kb.getf(amax);
        let is0 = kb.fcmp(inkwell::FloatPredicate::OEQ, am, kb.f32c(0.0));
        let inv = kb
            .select(
                is0,
                kb.f32c(0.0),
                kb.b.build_float_div(kb.f32c(127.0), am, "").expect("div"),
            )
            .into_float_value();
        let scale = kb.b.build_float_div(am, kb.f32c(127.0), "").expect("div");
        if fake {
            kb.for_range(zero, k, 1, |kb, j| {
                let q = vx.round_even(
                    kb,
                    kb.b.build_float_mul(kb.load_f32(x, kb.add(base, j)), inv, "")
                        .expect("mul"),
                );
                let v = kb.b.build_float_mul(q, scale, "").expect("mul");
                kb.store(xq, kb.add(base, j), v);
            });
        } else {
            kb.store(sx, row, scale);
            let g = if group == 0 { k } else { kb.i64c(group as i64) };
            let groups = kb.sdiv(k, g);
            kb.for_range(zero, groups, 1, |kb, gi| {
                let sum = kb.var(kb.i32c(0));
                let g0 = kb.mul(gi, g);
                let g1 = kb.add(g0, g);
                kb.for_range(g0, g1, 1, |kb, j| {
                    let q = vx.round_even(
                        kb,
                        kb.b.build_float_mul(kb.load_f32(x, kb.add(base, j)), inv, "")
                            .expect("mul"),
                    );
                    let qi = kb.f32_to_si(q, kb.i32t());
                    kb.store(xq, kb.add(base, j), kb.trunc(qi, kb.i8t()));
                    let s = kb.geti(sum);
                    kb.set(sum, kb.add(s, qi));
                });
                let s = kb.geti(sum);
                kb.store(xqsum, kb.add(kb.mul(row, groups), gi), s);
            });
        }
    });
}

/// The generic kernel: one output column at a time, every token against the same weight row
/// while it is in cache.
fn generic_rows(kb: &mut Kb<'_, '_>, f: &RowFormat, bias: bool) {
    let (out, x, w, bp) = (kb.arg_ptr(0), kb.arg_ptr(1), kb.arg_ptr(2), kb.arg_ptr(3));
    let (m, n, k) = (kb.arg(4), kb.arg(5), kb.arg(6));
    let cols = kb.i64c(COLS);
    let lo = kb.mul(kb.begin(), cols);
    let hi = kb.imin(kb.mul(kb.end(), cols), n);
    let f = f.clone();
    kb.for_range(lo, hi, 1, |kb, col| {
        let zero = kb.i64c(0);
        let bv = if bias {
            kb.load_f32(bp, col)
        } else {
            kb.f32c(0.0)
        };
        let f = f.clone();
        kb.for_range(zero, m, 1, |kb, row| {
            let xrow = kb.mul(row, k);
            let acc = kb.var(kb.f32c(0.0));
            match &f {
                RowFormat::Dense(dt) => {
                    let wrow = kb.mul(col, k);
                    let z = kb.i64c(0);
                    kb.for_range(z, k, 1, |kb, j| {
                        let xv = kb.load_f32(x, kb.add(xrow, j));
                        let wv = load_f32(kb, *dt, w, kb.add(wrow, j));
                        let a = kb.getf(acc);
                        kb.set(acc, kb.fma(xv, wv, a));
                    });
                }
                other => {
                    decode_row(kb, other, w, col, k, n, |kb, j, wv| {
                        let xv = kb.load_f32(x, kb.add(xrow, j));
                        let a = kb.getf(acc);
                        kb.set(acc, kb.fma(xv, wv, a));
                    });
                }
            }
            let v = kb.fadd(kb.getf(acc), bv);
            kb.store(out, kb.add(kb.mul(row, n), col), v);
        });
    });
}

/// The value of code `u` of group `g`: its scale and zero (a zero point, a float offset, or
/// the code range's centre) at index `g` of `scales` and `zeros`.
fn dequant<'ctx>(
    kb: &Kb<'_, 'ctx>,
    q: &QuantSpec,
    u: FloatValue<'ctx>,
    scales: PointerValue<'ctx>,
    zeros: PointerValue<'ctx>,
    g: IntValue<'ctx>,
) -> FloatValue<'ctx> {
    let s = load_f32(kb, q.scale, scales, g);
    match q.zero {
        Zero::Symmetric => kb.fmul(s, kb.fsub(u, kb.f32c((1u32 << (q.bits - 1)) as f32))),
        Zero::Int => {
            let z = kb.si_to_f32(kb.zext(
                kb.load(kb.i8t().into(), zeros, g).into_int_value(),
                kb.i64t(),
            ));
            kb.fmul(s, kb.fsub(u, z))
        }
        Zero::Float => {
            let mn = load_f32(kb, q.scale, zeros, g);
            kb.fma(s, u, mn)
        }
    }
}

/// Calls `each(kb, col, value)` for every element of row `row` of a `[rows, cols]` table.
pub fn decode_row<'ctx>(
    kb: &mut Kb<'_, 'ctx>,
    f: &RowFormat,
    base: PointerValue<'ctx>,
    row: IntValue<'ctx>,
    cols: IntValue<'ctx>,
    rows: IntValue<'ctx>,
    mut each: impl FnMut(&mut Kb<'_, 'ctx>, IntValue<'ctx>, FloatValue<'ctx>),
) {
    let zero = kb.i64c(0);
    match f {
        RowFormat::Dense(dt) => {
            let start = kb.mul(row, cols);
            let dt = *dt;
            kb.for_range(zero, cols, 1, |kb, c| {
                let v = load_f32(kb, dt, base, kb.add(start, c));
                each(kb, c, v)
            });
        }
        RowFormat::PalettePanels => {
            // row r is lane r % NR of panel r / NR: its index for column c is nibble
            // (c % 8 ≥ 4) of byte 64 + (c / 8)·64 + 4·lane + c % 4, after the 16 f32 entries
            let nr = kb.i64c(NR as i64);
            let pb = kb.add(kb.i64c(64), kb.mul(cols, kb.i64c(NR as i64 / 2)));
            let start = kb.mul(kb.sdiv(row, nr), pb);
            let lane4 = kb.mul(kb.srem(row, nr), kb.i64c(4));
            kb.for_range(zero, cols, 1, |kb, c| {
                let blk = kb.mul(kb.sdiv(c, kb.i64c(8)), kb.i64c(64));
                let at = kb.add(
                    kb.add(kb.add(start, kb.i64c(64)), blk),
                    kb.add(lane4, kb.srem(c, kb.i64c(4))),
                );
                let byte = kb.zext(
                    kb.load(kb.i8t().into(), base, at).into_int_value(),
                    kb.i64t(),
                );
                let high = kb.icmp(IntPredicate::SGE, kb.srem(c, kb.i64c(8)), kb.i64c(4));
                let shift = kb.select(high, kb.i64c(4), kb.i64c(0)).into_int_value();
                let idx =
                    kb.b.build_and(
                        kb.b.build_right_shift(byte, shift, false, "").expect("shr"),
                        kb.i64c(15),
                        "",
                    )
                    .expect("and");
                let entry = kb.add(kb.sdiv(start, kb.i64c(4)), idx);
                let v = kb.load_f32(base, entry);
                each(kb, c, v)
            });
        }
        RowFormat::Panels(dt) => {
            // row r is lane r % NR of panel r / NR, its elements NR apart; a panel holds
            // cols·NR elements rounded up to 64 bytes
            let dt = *dt;
            let esz = dt.size() as i64;
            let nr = kb.i64c(NR as i64);
            let line = kb.i64c(64 / esz);
            let per_panel = kb.mul(
                kb.sdiv(kb.add(kb.mul(cols, nr), kb.i64c(64 / esz - 1)), line),
                line,
            );
            let start = kb.add(kb.mul(kb.sdiv(row, nr), per_panel), kb.srem(row, nr));
            kb.for_range(zero, cols, 1, |kb, c| {
                let v = load_f32(kb, dt, base, kb.add(start, kb.mul(c, nr)));
                each(kb, c, v)
            });
        }
        RowFormat::QuantPanels { q, layout, offset } => {
            // row r is lane j = r % NR of panel r / NR. Codes come in blocks of NR rows ×
            // `step` k: Dot4 puts lane j's 4 bytes at 4j, Mmla its 8 bytes at 16·(j/2) + 8·(j%2);
            // a 4-bit byte holds k t (low nibble) and t + step/2 (high). Then the scales and
            // zeros, [groups][NR] each.
            let (q, layout, offset) = (*q, *layout, *offset);
            let bits = q.bits as i64;
            let step: i64 = match (layout, q.bits) {
                (QLayout::Dot4, 4) => 8,
                (QLayout::Dot4, _) => 4,
                (QLayout::Mmla, 4) => 16,
                (QLayout::Mmla, _) => 8,
            };
            let nr = kb.i64c(NR as i64);
            let sz = quant_panel_sizes(kb, &q, cols);
            let gsize = sz.group;
            let (codes, pb) = (sz.codes, sz.panel);
            let zeros_at = kb.add(codes, sz.scales);
            let panel = kb.gep(kb.i8t().into(), base, kb.mul(kb.sdiv(row, nr), pb));
            let lane = kb.srem(row, nr);
            let lane_at = match layout {
                QLayout::Dot4 => kb.mul(lane, kb.i64c(4)),
                QLayout::Mmla => kb.add(
                    kb.mul(kb.sdiv(lane, kb.i64c(2)), kb.i64c(16)),
                    kb.mul(kb.srem(lane, kb.i64c(2)), kb.i64c(8)),
                ),
            };
            let block = kb.i64c(NR as i64 * step * bits / 8);
            let per_byte = if q.bits == 4 { step / 2 } else { step };
            let scales = kb.gep(kb.i8t().into(), panel, codes);
            let zeros = kb.gep(kb.i8t().into(), panel, zeros_at);
            kb.for_range(zero, cols, 1, |kb, c| {
                let t = kb.srem(c, kb.i64c(step));
                let at = kb.add(
                    kb.add(kb.mul(kb.sdiv(c, kb.i64c(step)), block), lane_at),
                    kb.srem(t, kb.i64c(per_byte)),
                );
                let byte = kb.zext(
                    kb.load(kb.i8t().into(), panel, at).into_int_value(),
                    kb.i64t(),
                );
                let code = if q.bits == 4 {
                    let high = kb.icmp(IntPredicate::SGE, t, kb.i64c(per_byte));
                    let shift = kb.select(high, kb.i64c(4), kb.i64c(0)).into_int_value();
                    kb.b.build_and(
                        kb.b.build_right_shift(byte, shift, false, "").expect("shr"),
                        kb.i64c(15),
                        "",
                    )
                    .expect("and")
                } else {
                    kb.b.build_and(kb.add(byte, kb.i64c(offset as i64)), kb.i64c(255), "")
                        .expect("and")
                };
                let u = kb.si_to_f32(code);
                let g = kb.add(kb.mul(kb.sdiv(c, gsize), nr), lane);
                let v = dequant(kb, &q, u, scales, zeros, g);
                each(kb, c, v)
            });
        }
        RowFormat::Quant(q) => {
            let q = *q;
            let bits = q.bits as i64;
            // bytes of one row of codes, of all codes, and the group count per row
            let row_bytes = kb.sdiv(kb.add(kb.mul(cols, kb.i64c(bits)), kb.i64c(7)), kb.i64c(8));
            let codes_len = kb.mul(rows, row_bytes);
            let (gpr, gsize) = match q.group {
                Group::Size(g) => (
                    kb.sdiv(kb.add(cols, kb.i64c(g as i64 - 1)), kb.i64c(g as i64)),
                    kb.i64c(g as i64),
                ),
                _ => (kb.i64c(1), cols),
            };
            let ngroups = match q.group {
                Group::Tensor => kb.i64c(1),
                _ => kb.mul(rows, gpr),
            };
            let ssz = q.scale.size() as i64;
            let scales = kb.gep(kb.i8t().into(), base, codes_len);
            let zeros = kb.gep(kb.i8t().into(), scales, kb.mul(ngroups, kb.i64c(ssz)));
            let row_codes = kb.mul(row, row_bytes);
            kb.for_range(zero, cols, 1, |kb, c| {
                let bit = kb.mul(c, kb.i64c(bits));
                let byte = kb.add(
                    row_codes,
                    kb.b.build_right_shift(bit, kb.i64c(3), false, "")
                        .expect("shr"),
                );
                let shift = kb.b.build_and(bit, kb.i64c(7), "").expect("and");
                let lo = kb.zext(
                    kb.load(kb.i8t().into(), base, byte).into_int_value(),
                    kb.i64t(),
                );
                let word = if 8 % bits == 0 {
                    lo
                } else {
                    // codes that straddle a byte boundary read the next byte too
                    let hi = kb.zext(
                        kb.load(kb.i8t().into(), base, kb.add(byte, kb.i64c(1)))
                            .into_int_value(),
                        kb.i64t(),
                    );
                    kb.b.build_or(
                        lo,
                        kb.b.build_left_shift(hi, kb.i64c(8), "").expect("shl"),
                        "",
                    )
                    .expect("or")
                };
                let code =
                    kb.b.build_and(
                        kb.b.build_right_shift(word, shift, false, "").expect("shr"),
                        kb.i64c((1 << bits) - 1),
                        "",
                    )
                    .expect("and");
                let u = kb.si_to_f32(code);
                let g = match q.group {
                    Group::Tensor => kb.i64c(0),
                    Group::Channel => row,
                    Group::Size(_) => kb.add(kb.mul(row, gpr), kb.sdiv(c, gsize)),
                    // Encoding::check_shape keeps row groups to palettes
                    Group::Rows(_) => unreachable!("quantization by row groups"),
                };
                let v = dequant(kb, &q, u, scales, zeros, g);
                each(kb, c, v)
            });
        }
    }
}

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

/// 8 activation bytes of token `row` at k `k0 + kofs`.
fn load8<'ctx>(
    kb: &Kb<'_, 'ctx>,
    x: PointerValue<'ctx>,
    row: IntValue<'ctx>,
    k: IntValue<'ctx>,
    k0: IntValue<'ctx>,
    kofs: i64,
) -> VectorValue<'ctx> {
    let off = kb.add(kb.add(kb.mul(row, k), k0), kb.i64c(kofs));
    let p = kb.gep(kb.i8t().into(), x, off);
    let l = kb.b.build_load(kb.i8t().vec_type(8), p, "").expect("load");
    let _ = l.as_instruction_value().map(|i| i.set_alignment(1));
    l.into_vector_value()
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
