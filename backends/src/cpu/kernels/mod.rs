//! Kernels: what each one computes, the layout of its `args`, and how many work items it
//! splits into. Each variant's emitter lives in a submodule; `get` builds a kernel once per
//! module and returns it from a cache afterwards.

pub mod attention;
pub mod elementwise;
pub mod linear;
pub mod memory;
pub mod rows;
pub mod symbol;

use super::isa::{Isa, VectorIsa};
use super::kb::Kb;
use super::math::{self, MathFn};
use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::types::BasicTypeEnum;
use inkwell::values::{FloatValue, FunctionValue, IntValue, PointerValue};
use llmc_ir::{BinaryOp, DType, ReduceKind, RopeMode, UnaryOp};
use std::collections::HashMap;

pub use linear::{ActQuant, LinearKernel, WeightLayout};

/// Elements per work item of flat elementwise kernels.
pub const CHUNK: i64 = 4096;
/// Rank of the strided kernels; shapes are padded with leading 1s.
pub const COPY_RANK: usize = 6;
pub const BCAST_RANK: usize = 6;

/// A kernel and its static parameters. Args are listed per variant as `[a, b, ...]`;
/// pointers and sizes are i64, floats are f32 bits in the low half.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Strided copy of `bytes`-sized elements:
    /// `[dst, src, d0..d5, src strides 0..5, dst strides 0..5]`; work items: `d0·…·d4`.
    Copy { bytes: u8 },
    /// `[out, value, n]`: fill with a value's bits; work items: ⌈n / CHUNK⌉.
    Fill { bytes: u8 },
    /// `[out, start, delta, n]`, start and delta as f64 bits for float ranges; work items: 1.
    Range { dtype: DType },
    /// `[out, in, n]`, contiguous; work items: ⌈n / CHUNK⌉.
    Unary { op: UnaryOp, dtype: DType },
    /// `[out, in, n, lo, hi]`, contiguous; work items: ⌈n / CHUNK⌉.
    Clip { dtype: DType },
    /// `[out, in, n]`, contiguous; work items: ⌈n / CHUNK⌉.
    Cast { from: DType, to: DType },
    /// Broadcast binary op, rank 6, contiguous output:
    /// `[out, a, b, d0..d5, a strides 0..5, b strides 0..5]`; work items: `d0·…·d4`.
    Binary { op: BinaryOp, dtype: DType },
    /// `[out, cond, a, b, d0..d5, cond strides, a strides, b strides]`; work items: `d0·…·d4`.
    Where { dtype: DType },
    /// Row normalization: `[out, x, scale, bias, rows, cols, eps]` (bias 0 when absent);
    /// scale and bias have `cols` elements; work items: rows.
    Norm { rms: bool, bias: bool, dtype: DType },
    /// `[out, x, rows, cols]`; work items: rows.
    Softmax { log: bool, dtype: DType },
    /// `[out, x, rows, cols]`: one result per row; work items: rows.
    Reduce { kind: ReduceKind, dtype: DType },
    /// `[out (i64), x, rows, cols]`; work items: rows.
    ArgMax { dtype: DType },
    /// Rows of a table picked by index: `[out, table, idx, n_idx, row_len, n_rows, status,
    /// outer]`; out-of-range indices write 1 to `*status` and a zero row; work items:
    /// outer·n_idx.
    Gather {
        table: linear::RowFormat,
        idx: DType,
        out: DType,
    },
    /// `y = x·wᵀ + b`: see [`LinearKernel`].
    Linear(LinearKernel),
    /// int8 activations per row: see [`linear::quantize_rows`]; `group` 0 is the whole row.
    QuantizeRows { group: u32, fake: bool },
    /// Batched f32 matmul: `[out, a, b, batch, m, n, k, a batch stride, b batch stride]`;
    /// work items: batch·m.
    MatMul,
    /// `[out, x, pos, rows (=B·S), heads, head_dim, pos_len]`, positions indexed by
    /// `row % pos_len`; rotates the first `dims` elements of each head; work items: rows.
    Rope {
        mode: RopeMode,
        base_bits: u32,
        dims: u32,
    },
    /// See [`attention::emit`] for the args; work items: B·Hkv·S.
    Attention { causal: bool, mask: bool },
}

/// Builds (or finds) the kernel's function in the module.
pub struct Kernels<'ctx> {
    cache: HashMap<Kernel, FunctionValue<'ctx>>,
    pub isa: Isa,
    /// The vector primitives of `isa`.
    vx: Box<dyn VectorIsa>,
}

impl<'ctx> Kernels<'ctx> {
    pub fn new(isa: Isa) -> Kernels<'ctx> {
        Kernels {
            cache: HashMap::new(),
            isa,
            vx: isa.primitives(),
        }
    }

    pub fn get(&mut self, cx: &'ctx Context, m: &Module<'ctx>, k: &Kernel) -> FunctionValue<'ctx> {
        if let Some(f) = self.cache.get(k) {
            return *f;
        }
        let mut name = symbol::symbol(k, self.vx.as_ref());
        // kernels that only the cache key tells apart get numbered, in the order they are built
        let base = name.clone();
        let mut n = 2;
        while m.get_function(&name).is_some() {
            name = format!("{base}_{n}");
            n += 1;
        }
        let mut kb = Kb::kernel(cx, m, &name);
        match k {
            Kernel::Copy { bytes } => memory::copy(&mut kb, *bytes),
            Kernel::Fill { bytes } => memory::fill(&mut kb, *bytes),
            Kernel::Range { dtype } => memory::range(&mut kb, *dtype),
            Kernel::Unary { op, dtype } => elementwise::unary(&mut kb, *op, *dtype),
            Kernel::Clip { dtype } => elementwise::clip(&mut kb, *dtype),
            Kernel::Cast { from, to } => elementwise::cast(&mut kb, *from, *to),
            Kernel::Binary { op, dtype } => elementwise::binary(&mut kb, *op, *dtype),
            Kernel::Where { dtype } => elementwise::where_(&mut kb, *dtype),
            Kernel::Norm { rms, bias, dtype } => rows::norm(&mut kb, *rms, *bias, *dtype),
            Kernel::Softmax { log, dtype } => rows::softmax(&mut kb, *log, *dtype),
            Kernel::Reduce { kind, dtype } => rows::reduce(&mut kb, *kind, *dtype),
            Kernel::ArgMax { dtype } => rows::argmax(&mut kb, *dtype),
            Kernel::Gather { table, idx, out } => memory::gather(&mut kb, table, *idx, *out),
            Kernel::Linear(l) => linear::emit(&mut kb, l, self.vx.as_ref()),
            Kernel::QuantizeRows { group, fake } => {
                linear::quantize_rows(&mut kb, *group, *fake, self.vx.as_ref())
            }
            Kernel::MatMul => linear::matmul(&mut kb),
            Kernel::Rope {
                mode,
                base_bits,
                dims,
            } => rows::rope(&mut kb, *mode, f32::from_bits(*base_bits), *dims),
            Kernel::Attention { causal, mask } => attention::emit(&mut kb, *causal, *mask),
        }
        let f = kb.finish();
        self.cache.insert(k.clone(), f);
        f
    }
}

/// The LLVM type elements of `d` are stored as (halves as i16, bool as i8).
pub fn storage_type<'ctx>(kb: &Kb<'_, 'ctx>, d: DType) -> BasicTypeEnum<'ctx> {
    match d {
        DType::F32 => kb.f32t().into(),
        DType::F16 | DType::BF16 => kb.cx.i16_type().into(),
        DType::I64 => kb.i64t().into(),
        DType::I32 => kb.i32t().into(),
        DType::I8 | DType::U8 | DType::Bool => kb.i8t().into(),
    }
}

/// Loads element `i` of a float tensor as f32.
pub fn load_f32<'ctx>(
    kb: &Kb<'_, 'ctx>,
    d: DType,
    p: PointerValue<'ctx>,
    i: IntValue<'ctx>,
) -> FloatValue<'ctx> {
    match d {
        DType::F32 => kb.load_f32(p, i),
        DType::BF16 => {
            let h = kb.load(kb.cx.i16_type().into(), p, i).into_int_value();
            let w =
                kb.b.build_left_shift(kb.zext(h, kb.i32t()), kb.i32c(16), "")
                    .expect("shl");
            kb.bits_f32(w)
        }
        DType::F16 => {
            let h = kb.load(kb.cx.i16_type().into(), p, i).into_int_value();
            let f = math::get(kb.cx, kb.m, MathFn::HalfToF32);
            kb.call(f, &[kb.zext(h, kb.i32t()).into()])
                .expect("v")
                .into_float_value()
        }
        _ => {
            let v = load_i64(kb, d, p, i);
            kb.si_to_f32(v)
        }
    }
}

/// Stores an f32 as element `i` of a float tensor.
pub fn store_f32<'ctx>(
    kb: &Kb<'_, 'ctx>,
    d: DType,
    p: PointerValue<'ctx>,
    i: IntValue<'ctx>,
    v: FloatValue<'ctx>,
) {
    match d {
        DType::F32 => kb.store(p, i, v),
        DType::BF16 => {
            // round to nearest even on the dropped 16 bits (NaN stays NaN: quiet bit set)
            let bits = kb.f32_bits(v);
            let lsb =
                kb.b.build_and(
                    kb.b.build_right_shift(bits, kb.i32c(16), false, "")
                        .expect("shr"),
                    kb.i32c(1),
                    "",
                )
                .expect("and");
            let r = kb.add(kb.add(bits, kb.i32c(0x7fff)), lsb);
            let nan = kb.fcmp(inkwell::FloatPredicate::UNO, v, v);
            let q = kb.b.build_or(bits, kb.i32c(0x0040_0000), "").expect("or");
            let r = kb.select(nan, q, r).into_int_value();
            let h = kb.trunc(
                kb.b.build_right_shift(r, kb.i32c(16), false, "")
                    .expect("shr"),
                kb.cx.i16_type(),
            );
            kb.store(p, i, h)
        }
        DType::F16 => {
            let f = math::get(kb.cx, kb.m, MathFn::F32ToHalf);
            let h = kb.call(f, &[v.into()]).expect("v").into_int_value();
            kb.store(p, i, kb.trunc(h, kb.cx.i16_type()))
        }
        _ => {
            let x = kb
                .call_intrinsic(
                    "llvm.fptosi.sat",
                    &[kb.i64t().into(), kb.f32t().into()],
                    &[v.into()],
                )
                .into_int_value();
            store_i64(kb, d, p, i, x)
        }
    }
}

/// Loads element `i` of an integer (or bool) tensor as i64.
pub fn load_i64<'ctx>(
    kb: &Kb<'_, 'ctx>,
    d: DType,
    p: PointerValue<'ctx>,
    i: IntValue<'ctx>,
) -> IntValue<'ctx> {
    let ty = storage_type(kb, d);
    let v = kb.load(ty, p, i).into_int_value();
    match d {
        DType::I64 => v,
        DType::U8 | DType::Bool => kb.zext(v, kb.i64t()),
        _ => kb.sext(v, kb.i64t()),
    }
}

/// Stores an i64 as element `i` of an integer (or bool: nonzero is true) tensor. Values out of
/// a narrower type's range saturate, as the interpreter's conversions do.
pub fn store_i64<'ctx>(
    kb: &Kb<'_, 'ctx>,
    d: DType,
    p: PointerValue<'ctx>,
    i: IntValue<'ctx>,
    v: IntValue<'ctx>,
) {
    let (lo, hi) = match d {
        DType::I64 => return kb.store(p, i, v),
        DType::Bool => {
            let nz = kb.icmp(inkwell::IntPredicate::NE, v, kb.i64c(0));
            return kb.store(p, i, kb.zext(nz, kb.i8t()));
        }
        DType::I32 => (i32::MIN as i64, i32::MAX as i64),
        DType::I8 => (i8::MIN as i64, i8::MAX as i64),
        DType::U8 => (0, u8::MAX as i64),
        _ => unreachable!("{d} is not an integer type"),
    };
    let ty = storage_type(kb, d).into_int_type();
    let v = kb.imin(kb.imax(v, kb.i64c(lo)), kb.i64c(hi));
    kb.store(p, i, kb.trunc(v, ty))
}
