//! Every ISA primitive and every linear kernel agrees with its generic twin on random inputs
//! (proptest), per ISA variant: the x86-64 ones natively where this CPU has the features, the
//! AArch64 ones under `qemu-aarch64 -cpu max`; tests whose CPU feature or qemu is missing are
//! reported as ignored (see `tests/build.rs`). Also: kernel symbols are readable in `nm`.
//!
//! Primitives compare bit for bit (floats: NaN with NaN, −0 with +0); kernels within f32
//! rounding, since fused and unfused multiply-adds differ in their last bits.

use inkwell::values::{FloatValue, PointerValue};
use llmc_backends::cpu::isa::{isa_of, Codes, Isa, VectorIsa};
use llmc_backends::cpu::kb::Kb;
use llmc_backends::cpu::kernels::linear::{ActQuant, Kept, LinearKernel, WeightLayout};
use llmc_backends::cpu::kernels::{Kernel, Kernels};
use llmc_backends::cpu::pack::{self, QLayout};
use llmc_ir::{DType, Encoding, Group, PaletteSpec, QuantSpec, Zero};
use llmc_tests::cpu::{cases, Rng, Target};
use llmc_tests::probes::{io, load, serve, store, Arg, Elem, Probe};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::sync::Mutex;

/// Random inputs per test: `PROPTEST_CASES` overrides.
const CASES: u32 = 64;

/// A runner with `cases` cases (unless `PROPTEST_CASES` says otherwise), a fixed seed so that
/// every run checks the same inputs, and no regression files.
fn runner(cases: u32) -> TestRunner {
    let mut c = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = cases;
    }
    c.failure_persistence = None;
    TestRunner::new_with_rng(c, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
}

// ---- primitives ----

/// How two primitive outputs must agree.
#[derive(Clone, Copy, Debug)]
enum Same {
    /// Byte for byte.
    Bits,
    /// As f32 lanes: equal bits, or both NaN, or both zero.
    F32,
}

/// Writes a primitive's probe: reads its operands from the input buffer, applies the
/// primitive of `vx`, writes the result to the output buffer.
type PrimBody =
    for<'a, 'ctx> fn(&Kb<'a, 'ctx>, &dyn VectorIsa, PointerValue<'ctx>, PointerValue<'ctx>);

/// One primitive under test: its probe, its operand bytes and how results compare.
struct Prim {
    body: PrimBody,
    input: BoxedStrategy<Vec<u8>>,
    out_bytes: usize,
    same: Same,
}

/// Floats whose bits survive every move (no NaNs): normal, subnormal, zero, infinite.
fn floats(n: usize) -> impl Strategy<Value = Vec<u8>> {
    use proptest::num::f32 as f;
    vec(f::NORMAL | f::SUBNORMAL | f::ZERO | f::INFINITE, n)
        .prop_map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

fn i32s(n: usize, lo: i32, hi: i32) -> impl Strategy<Value = Vec<u8>> {
    vec(lo..hi, n).prop_map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

fn bytes(n: usize, lo: u8, hi: u8) -> impl Strategy<Value = Vec<u8>> {
    vec(lo..=hi, n)
}

fn cat(parts: (Vec<u8>, Vec<u8>)) -> Vec<u8> {
    let (mut a, b) = parts;
    a.extend(b);
    a
}

fn cat3(parts: (Vec<u8>, Vec<u8>, Vec<u8>)) -> Vec<u8> {
    let (mut a, b, c) = parts;
    a.extend(b);
    a.extend(c);
    a
}

/// [`VectorIsa::lookup`] in a 16-entry table: 16 floats, then 16 i32 indices in 0..16.
fn lookup16() -> Prim {
    Prim {
        body: |kb, vx, i, o| {
            let t = load(kb, i, 0, Elem::F32, 16);
            let idx = load(kb, i, 64, Elem::I32, 16);
            store(kb, o, 0, vx.lookup(kb, t, idx))
        },
        input: (floats(16), i32s(16, 0, 16)).prop_map(cat).boxed(),
        out_bytes: 64,
        same: Same::Bits,
    }
}

/// [`VectorIsa::lookup`] in an 8-entry table (the 2:4 kernel's input windows).
fn lookup8() -> Prim {
    Prim {
        body: |kb, vx, i, o| {
            let t = load(kb, i, 0, Elem::F32, 8);
            let idx = load(kb, i, 32, Elem::I32, 16);
            store(kb, o, 0, vx.lookup(kb, t, idx))
        },
        input: (floats(8), i32s(16, 0, 8)).prop_map(cat).boxed(),
        out_bytes: 64,
        same: Same::Bits,
    }
}

/// [`VectorIsa::lookup16_mem`]: the same table in a register and in the input buffer.
fn lookup16_mem() -> Prim {
    Prim {
        body: |kb, vx, i, o| {
            let t = load(kb, i, 0, Elem::F32, 16);
            let idx = load(kb, i, 64, Elem::I32, 16);
            store(kb, o, 0, vx.lookup16_mem(kb, t, i, idx))
        },
        input: (floats(16), i32s(16, 0, 16)).prop_map(cat).boxed(),
        out_bytes: 64,
        same: Same::Bits,
    }
}

/// [`VectorIsa::dot4`]: 16 i32 accumulators, 64 codes, 64 signed activations. The
/// accumulators stay far from the i32 limits, as the contract asks.
fn dot4(codes: Codes, second_chain: bool) -> Prim {
    let (lo, hi) = match codes {
        Codes::U8 | Codes::S8 => (0, 255),
        Codes::U4 => (0, 15),
    };
    let body: PrimBody = match (codes, second_chain) {
        (Codes::U8, false) => |kb, vx, i, o| dot4_probe(kb, vx, i, o, Codes::U8, false),
        (Codes::U8, true) => |kb, vx, i, o| dot4_probe(kb, vx, i, o, Codes::U8, true),
        (Codes::U4, false) => |kb, vx, i, o| dot4_probe(kb, vx, i, o, Codes::U4, false),
        (Codes::U4, true) => |kb, vx, i, o| dot4_probe(kb, vx, i, o, Codes::U4, true),
        (Codes::S8, false) => |kb, vx, i, o| dot4_probe(kb, vx, i, o, Codes::S8, false),
        (Codes::S8, true) => |kb, vx, i, o| dot4_probe(kb, vx, i, o, Codes::S8, true),
    };
    Prim {
        body,
        input: (
            i32s(16, -(1 << 24), 1 << 24),
            bytes(64, lo, hi),
            bytes(64, 0, 255),
        )
            .prop_map(cat3)
            .boxed(),
        out_bytes: 64,
        same: Same::Bits,
    }
}

fn dot4_probe<'ctx>(
    kb: &Kb<'_, 'ctx>,
    vx: &dyn VectorIsa,
    i: PointerValue<'ctx>,
    o: PointerValue<'ctx>,
    codes: Codes,
    second_chain: bool,
) {
    let acc = load(kb, i, 0, Elem::I32, 16);
    let a = load(kb, i, 64, Elem::I8, 64);
    let b = load(kb, i, 128, Elem::I8, 64);
    store(kb, o, 0, vx.dot4(kb, acc, a, b, codes, second_chain))
}

/// [`VectorIsa::smmla`]: 4 i32 accumulators, two 2×8 matrices of signed bytes.
fn smmla() -> Prim {
    Prim {
        body: |kb, vx, i, o| {
            let acc = load(kb, i, 0, Elem::I32, 4);
            let a = load(kb, i, 16, Elem::I8, 16);
            let b = load(kb, i, 32, Elem::I8, 16);
            store(kb, o, 0, vx.smmla(kb, acc, a, b))
        },
        input: (
            i32s(4, -(1 << 24), 1 << 24),
            bytes(16, 0, 255),
            bytes(16, 0, 255),
        )
            .prop_map(cat3)
            .boxed(),
        out_bytes: 16,
        same: Same::Bits,
    }
}

/// [`VectorIsa::half_to_f32`]: any 16 f16 bit patterns (NaNs included).
fn half_to_f32() -> Prim {
    Prim {
        body: |kb, vx, i, o| {
            let h = load(kb, i, 0, Elem::I16, 16);
            store(kb, o, 0, vx.half_to_f32(kb, h))
        },
        input: bytes(32, 0, 255).boxed(),
        out_bytes: 64,
        same: Same::F32,
    }
}

/// [`VectorIsa::round_even`] on 16 floats: halves, values near and past 2^23, zeros of both
/// signs, infinities and NaN among ordinary ones.
fn round_even() -> Prim {
    let special = prop_oneof![
        (-2000i32..2000).prop_map(|h| h as f32 / 2.0),
        (-1e9f32..1e9f32),
        (-4.0f32..4.0),
        Just(-0.0f32),
        Just(8_388_609.5f32),
        Just(f32::INFINITY),
        Just(f32::NEG_INFINITY),
        Just(f32::NAN),
        any::<f32>(),
    ];
    Prim {
        body: |kb, vx, i, o| {
            for lane in 0..16i64 {
                let x: FloatValue = kb.load_f32(i, kb.i64c(lane));
                let r = vx.round_even(kb, x);
                kb.store(o, kb.i64c(lane), r);
            }
        },
        input: vec(special, 16)
            .prop_map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .boxed(),
        out_bytes: 64,
        same: Same::F32,
    }
}

/// Whether two outputs agree as `same` says.
fn agree(a: &[u8], b: &[u8], same: Same) -> bool {
    match same {
        Same::Bits => a == b,
        Same::F32 => a.chunks_exact(4).zip(b.chunks_exact(4)).all(|(x, y)| {
            let x = f32::from_le_bytes(x.try_into().unwrap());
            let y = f32::from_le_bytes(y.try_into().unwrap());
            x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()) || x == y
        }),
    }
}

/// Compiles the primitive of `target`'s ISA and its generic twin into one probe server and
/// compares them on random operands.
fn check(target: &Target, prim: Prim) {
    let isa = isa_of(&target.spec());
    let body = prim.body;
    let probes = vec![
        Probe::new("isa", move |kb| {
            let (i, o) = io(kb);
            body(kb, isa.primitives().as_ref(), i, o)
        }),
        Probe::new("generic", move |kb| {
            let (i, o) = io(kb);
            body(kb, Isa::Generic.primitives().as_ref(), i, o)
        }),
    ];
    let server = Mutex::new(serve(target, probes));
    let n = prim.out_bytes;
    let same = prim.same;
    let result = runner(CASES).run(&prim.input, |input| {
        let mut s = server.lock().unwrap();
        let got = s.io(0, &input, n);
        let want = s.io(1, &input, n);
        prop_assert!(
            agree(&got, &want, same),
            "{isa:?} gives {got:02x?}\nthe generic twin gives {want:02x?}"
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{}: {e}", target.label());
    }
}

// ---- kernels ----

/// The weights of a linear kernel under test (lowering picks the panel layout from them, the
/// activations and the ISA, as [`layout`] does here).
#[derive(Clone, Copy, Debug)]
enum Weights {
    Dense(DType),
    Quant(QuantSpec),
    Palette(PaletteSpec),
    Sparse24Dense(DType),
    Sparse24Quant(QuantSpec),
}

/// A linear kernel under test: weights, activations, bias, and the K it may take.
#[derive(Clone, Copy, Debug)]
struct Linear {
    w: Weights,
    act: ActQuant,
    bias: bool,
    ks: &'static [usize],
}

fn q(bits: u8, group: Group, scale: DType, zero: Zero) -> QuantSpec {
    QuantSpec {
        bits,
        group,
        scale,
        zero,
    }
}

/// The kernel that lowering picks for `l` on `isa`: its weight layout (and the 8-bit code
/// offset the weights are packed with).
fn layout(l: &Linear, isa: Isa, k: usize) -> (WeightLayout, u8) {
    match l.w {
        Weights::Dense(dt) => (WeightLayout::DensePanels(dt), 0),
        Weights::Quant(q) => {
            let (layout, signed) = match l.act {
                ActQuant::I8 => isa.int8_weights(),
                ActQuant::F32 => (QLayout::Dot4, false),
            };
            let offset = if q.bits == 8 && signed { 128 } else { 0 };
            assert!(pack::quant_packable(&q, k, layout), "{q:?} over K = {k}");
            (WeightLayout::QuantPanels { q, layout, offset }, offset)
        }
        Weights::Palette(p) => {
            assert!(pack::palette_packable(&p, k));
            (WeightLayout::PalettePanels(p), 0)
        }
        Weights::Sparse24Dense(dt) => (
            WeightLayout::Sparse24Panels {
                kept: Kept::Dense(dt),
                k16: k % 16 == 0,
            },
            0,
        ),
        Weights::Sparse24Quant(q) => (
            WeightLayout::Sparse24Panels {
                kept: Kept::Quant(q),
                k16: k % 16 == 0,
            },
            0,
        ),
    }
}

/// An `[n, k]` weight with random values, packed in the layout the kernel reads.
fn packed_weights(
    l: &Linear,
    rng: &mut Rng,
    n: usize,
    k: usize,
    offset: u8,
    layout: &WeightLayout,
) -> Vec<u8> {
    match (l.w, layout) {
        (Weights::Dense(dt), _) => {
            let raw = rng.tensor(&[n, k], dt, -0.5, 0.5).data.to_le_bytes();
            pack::pack_dense(&raw, n, k, dt.size())
        }
        (Weights::Quant(q), WeightLayout::QuantPanels { layout, .. }) => {
            let raw = cases::quant_bytes(rng, n, k, &q);
            pack::pack_quant(&q, n, k, &raw, *layout, offset)
        }
        (Weights::Palette(p), _) => {
            let raw = cases::palette_bytes(rng, n, k, &p);
            pack::pack_palette(&p, n, k, &raw)
        }
        (Weights::Sparse24Dense(dt), _) => {
            let inner = Encoding::Dense(dt);
            let raw = cases::sparse_bytes(rng, n, k, &inner);
            pack::pack_sparse24(&inner, n, k, &raw)
        }
        (Weights::Sparse24Quant(q), _) => {
            let inner = Encoding::Quant(q);
            let raw = cases::sparse_bytes(rng, n, k, &inner);
            pack::pack_sparse24(&inner, n, k, &raw)
        }
        (w, other) => panic!("{w:?} packed as {other:?}"),
    }
}

/// The group length of the int8 activations' code sums: the weight's quantization group.
fn act_group(l: &Linear, k: usize) -> usize {
    match l.w {
        Weights::Quant(q) => pack::group_len(&q, k),
        _ => k,
    }
}

/// A kernel's input buffer: parts appended at 64-byte boundaries.
#[derive(Default)]
struct Blob(Vec<u8>);

impl Blob {
    /// Appends `bytes`; returns where they start.
    fn put(&mut self, bytes: &[u8]) -> u64 {
        let at = self.0.len().div_ceil(64) * 64;
        self.0.resize(at, 0);
        self.0.extend(bytes);
        at as u64
    }
}

fn le<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    v.iter().flat_map(|&x| f(x)).collect()
}

/// Compiles the linear kernel that `target`'s lowering picks for `l` and the same kernel with
/// the generic primitives, and compares their outputs on random shapes and weights (M up to
/// 9 tokens, N up to 40 outputs, K from `l.ks`).
fn check_linear(target: &Target, l: Linear) {
    let isa = isa_of(&target.spec());
    // the kernel is compiled once per K kind (only 2:4's k16 depends on K)
    let mut servers: Vec<(WeightLayout, u8, Mutex<llmc_tests::probes::Server>)> = vec![];
    for &k in l.ks {
        let (w, offset) = layout(&l, isa, k);
        if servers.iter().any(|(s, _, _)| *s == w) {
            continue;
        }
        let kernel = Kernel::Linear(LinearKernel {
            w: w.clone(),
            act: l.act,
            bias: l.bias,
        });
        let probes = [isa, Isa::Generic]
            .into_iter()
            .map(|i| {
                let kernel = kernel.clone();
                Probe::new(&format!("{i:?}"), move |kb| {
                    let f = Kernels::new(i).get(kb.cx, kb.m, &kernel);
                    let args = [kb.param_ptr(0).into(), kb.begin().into(), kb.end().into()];
                    kb.call(f, &args);
                })
            })
            .collect();
        servers.push((w, offset, Mutex::new(serve(target, probes))));
    }
    let input = (1usize..=9, 1usize..=40, 0..l.ks.len(), any::<u64>());
    let result = runner(24).run(&input, |(m, n, ki, seed)| {
        let k = l.ks[ki];
        let (w, offset) = layout(&l, isa, k);
        let (_, _, server) = servers.iter().find(|(s, _, _)| *s == w).expect("compiled");
        let mut rng = Rng::new(seed);
        let mut blob = Blob::default();
        let wb = packed_weights(&l, &mut rng, n, k, offset, &w);
        let w_at = blob.put(&wb);
        let bias = if l.bias {
            let b = rng.vec_f32(n.div_ceil(16) * 16, -1.0, 1.0);
            Arg::In(blob.put(&le(&b, f32::to_le_bytes)))
        } else {
            Arg::Int(0)
        };
        let (x, sx, xqsum) = match l.act {
            ActQuant::F32 => {
                let x = rng.vec_f32(m * k, -1.0, 1.0);
                (
                    Arg::In(blob.put(&le(&x, f32::to_le_bytes))),
                    Arg::Int(0),
                    Arg::Int(0),
                )
            }
            ActQuant::I8 => {
                let codes: Vec<i8> = (0..m * k).map(|_| rng.int(-127, 128) as i8).collect();
                let g = act_group(&l, k);
                let sums: Vec<i32> = codes
                    .chunks(g)
                    .map(|c| c.iter().map(|&v| v as i32).sum())
                    .collect();
                let scales = rng.vec_f32(m, 0.001, 0.02);
                (
                    Arg::In(blob.put(&le(&codes, |v: i8| v.to_le_bytes()))),
                    Arg::In(blob.put(&le(&scales, f32::to_le_bytes))),
                    Arg::In(blob.put(&le(&sums, i32::to_le_bytes))),
                )
            }
        };
        let args = [
            Arg::Out(0),
            x,
            Arg::In(w_at),
            bias,
            Arg::Int(m as i64),
            Arg::Int(n as i64),
            Arg::Int(k as i64),
            sx,
            xqsum,
        ];
        let range = (0, n.div_ceil(16) as i64);
        let mut s = server.lock().unwrap();
        let got = s.call(0, &args, &blob.0, m * n * 4, range);
        let want = s.call(1, &args, &blob.0, m * n * 4, range);
        let f = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let (got, want) = (f(&got), f(&want));
        prop_assert!(
            want.iter().any(|v| *v != 0.0),
            "M {m} N {n} K {k}: the generic twin wrote nothing"
        );
        let scale = want.iter().fold(1f32, |a, v| a.max(v.abs()));
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            prop_assert!(
                (a - b).abs() <= 1e-5 * scale * k as f32 / 16.0,
                "M {m} N {n} K {k}: output {i} is {a} with {isa:?}, {b} with the generic twin"
            );
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{} {l:?}: {e}", target.label());
    }
}

/// The linear kernels under test, by name.
fn linear_case(name: &str) -> Linear {
    use ActQuant::{F32, I8};
    const K32: &[usize] = &[32, 64, 96, 128];
    let (w, act, bias, ks): (Weights, ActQuant, bool, &'static [usize]) = match name {
        "dense_f32" => (Weights::Dense(DType::F32), F32, true, &[1, 7, 16, 33]),
        "dense_f16" => (Weights::Dense(DType::F16), F32, false, &[8, 16, 40]),
        "dense_bf16" => (Weights::Dense(DType::BF16), F32, true, &[8, 16, 40]),
        "q4_f32" => (
            Weights::Quant(q(4, Group::Size(32), DType::F16, Zero::Int)),
            F32,
            true,
            K32,
        ),
        "q4_i8" => (
            Weights::Quant(q(4, Group::Size(32), DType::F16, Zero::Float)),
            I8,
            true,
            K32,
        ),
        "q8_i8" => (
            Weights::Quant(q(8, Group::Channel, DType::F32, Zero::Int)),
            I8,
            false,
            K32,
        ),
        "q8_sym_i8" => (
            Weights::Quant(q(8, Group::Size(32), DType::BF16, Zero::Symmetric)),
            I8,
            true,
            K32,
        ),
        "palette" => (
            Weights::Palette(PaletteSpec {
                bits: 4,
                group: Group::Rows(16),
                entry: DType::F32,
            }),
            F32,
            true,
            &[8, 16, 24, 64],
        ),
        "sparse24_dense" => (
            Weights::Sparse24Dense(DType::F16),
            F32,
            true,
            &[8, 16, 24, 48, 64],
        ),
        "sparse24_q4" => (
            Weights::Sparse24Quant(q(4, Group::Size(16), DType::F16, Zero::Symmetric)),
            F32,
            false,
            &[32, 64, 96],
        ),
        other => panic!("no linear case {other}"),
    };
    Linear { w, act, bias, ks }
}

/// The tests of one ISA variant: a module per variant, a test per primitive and per linear
/// kernel, all ignored with `why` when `cfg` does not hold.
macro_rules! variant {
    ($variant:ident, $target:expr, $cfg:meta, $why:literal) => {
        mod $variant {
            use super::*;

            fn target() -> Target {
                $target
            }

            #[test]
            #[cfg_attr(not($cfg), ignore = $why)]
            fn lookup16() {
                check(&target(), super::lookup16());
            }

            #[test]
            #[cfg_attr(not($cfg), ignore = $why)]
            fn lookup8() {
                check(&target(), super::lookup8());
            }

            #[test]
            #[cfg_attr(not($cfg), ignore = $why)]
            fn lookup16_mem() {
                check(&target(), super::lookup16_mem());
            }

            #[test]
            #[cfg_attr(not($cfg), ignore = $why)]
            fn dot4_u8() {
                check(&target(), dot4(Codes::U8, false));
            }

            #[test]
            #[cfg_attr(not($cfg), ignore = $why)]
            fn dot4_u8_second_chain() {
                check(&target(), dot4(Codes::U8, true));
            }

            #[test]
            #[cfg_attr(not($cfg), ignore = $why)]
            fn dot4_u4() {
                check(&target(), dot4(Codes::U4, false));
            }

            #[test]
            #[cfg_attr(not($cfg), ignore = $why)]
            fn dot4_s8() {
                check(&target(), dot4(Codes::S8, false));
            }

            #[test]
            #[cfg_attr(not($cfg), ignore = $why)]
            fn smmla() {
                check(&target(), super::smmla());
            }

            #[test]
            #[cfg_attr(not($cfg), ignore = $why)]
            fn half_to_f32() {
                check(&target(), super::half_to_f32());
            }

            #[test]
            #[cfg_attr(not($cfg), ignore = $why)]
            fn round_even() {
                check(&target(), super::round_even());
            }

            #[test]
            #[cfg_attr(not($cfg), ignore = $why)]
            fn linear_dense_f32() {
                check_linear(&target(), linear_case("dense_f32"));
            }

            #[test]
            #[cfg_attr(not($cfg), ignore = $why)]
            fn linear_dense_f16() {
                check_linear(&target(), linear_case("dense_f16"));
            }

            #[test]
            #[cfg_attr(not($cfg), ignore = $why)]
            fn linear_dense_bf16() {
                check_linear(&target(), linear_case("dense_bf16"));
            }

            #[test]
            #[cfg_attr(not($cfg), ignore = $why)]
            fn linear_q4_f32() {
                check_linear(&target(), linear_case("q4_f32"));
            }

            #[test]
            #[cfg_attr(not($cfg), ignore = $why)]
            fn linear_q4_i8() {
                check_linear(&target(), linear_case("q4_i8"));
            }

            #[test]
            #[cfg_attr(not($cfg), ignore = $why)]
            fn linear_q8_i8() {
                check_linear(&target(), linear_case("q8_i8"));
            }

            #[test]
            #[cfg_attr(not($cfg), ignore = $why)]
            fn linear_q8_sym_i8() {
                check_linear(&target(), linear_case("q8_sym_i8"));
            }

            #[test]
            #[cfg_attr(not($cfg), ignore = $why)]
            fn linear_palette() {
                check_linear(&target(), linear_case("palette"));
            }

            #[test]
            #[cfg_attr(not($cfg), ignore = $why)]
            fn linear_sparse24_dense() {
                check_linear(&target(), linear_case("sparse24_dense"));
            }

            #[test]
            #[cfg_attr(not($cfg), ignore = $why)]
            fn linear_sparse24_q4() {
                check_linear(&target(), linear_case("sparse24_q4"));
            }
        }
    };
}

variant!(
    x86_64_sse2,
    Target::new("x86_64", None, None),
    target_arch = "x86_64",
    "the host is not x86-64"
);
variant!(
    x86_64_f16c,
    Target::new("x86_64", None, Some("+f16c")),
    has_f16c,
    "this CPU lacks F16C"
);
variant!(
    x86_64_avx2,
    Target::new("x86_64", Some("haswell"), None),
    has_avx2,
    "this CPU lacks AVX2, FMA or F16C"
);
variant!(
    x86_64_avx512,
    Target::new("x86_64", Some("skylake-avx512"), None),
    has_avx512,
    "this CPU lacks AVX-512 F, BW, DQ or VL"
);
variant!(
    x86_64_avx512vnni,
    Target::new("x86_64", Some("cascadelake"), None),
    has_avx512vnni,
    "this CPU lacks AVX-512 VNNI"
);
variant!(
    aarch64_neon,
    Target::aarch64(""),
    has_qemu_aarch64,
    "needs qemu-aarch64"
);
variant!(
    aarch64_dotprod,
    Target::aarch64("+dotprod"),
    has_qemu_aarch64,
    "needs qemu-aarch64"
);
variant!(
    aarch64_i8mm,
    Target::aarch64("+dotprod,+i8mm"),
    has_qemu_aarch64,
    "needs qemu-aarch64"
);

// ---- symbols ----

/// The symbols `nm` lists in `object` that start with `llmc_`.
fn llmc_symbols(object: &[u8]) -> Vec<String> {
    let dir = std::env::temp_dir().join(format!("llmc-nm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bundle.o");
    std::fs::write(&path, object).unwrap();
    let out = std::process::Command::new("nm")
        .arg(&path)
        .output()
        .expect("run nm (binutils)");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "nm failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|s| s.starts_with("llmc_"))
        .map(str::to_string)
        .collect()
}

/// A bundle's object lists its kernels under readable C names: `llmc_<isa>_<op>_…` with the
/// ISA of the primitives they use (`generic` for the rest), the encodings and the tile.
#[test]
fn kernel_symbols_readable_in_nm() {
    use llmc_backends::cpu::{compile, BuildOptions, EmitRequest};
    let case = cases::linear(llmc_ir::ActQuant::I8PerToken, false)
        .into_iter()
        .find(|c| c.name == "linear_q4_a8")
        .expect("the q4 case");
    let target = Target::new("x86_64", Some("cascadelake"), None);
    let opts = BuildOptions {
        name: "syms".into(),
        ..BuildOptions::default()
    };
    let b = compile(&case.graph, &target.spec(), &opts, EmitRequest::default()).unwrap();
    let syms = llmc_symbols(&b.object);
    let ident = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    assert!(syms.iter().all(|s| ident(s)), "{syms:?}");
    let has = |prefix: &str, suffix: &str| {
        syms.iter()
            .any(|s| s.starts_with(prefix) && s.ends_with(suffix))
    };
    assert!(
        has("llmc_avx512vnni_linear_q4", "_dot4_i8_8x16"),
        "no VNNI q4 linear kernel among {syms:?}"
    );
    assert!(
        has("llmc_avx512vnni_quantize_rows_", "_f32"),
        "no int8 activation kernel among {syms:?}"
    );
    let mut unique = syms.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), syms.len(), "a symbol twice: {syms:?}");
}
