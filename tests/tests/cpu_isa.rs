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
use llmc_tests::cpu::Target;
use llmc_tests::probes::{io, load, serve, store, Elem, Probe};
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

/// The primitive tests of one ISA variant: a module per variant, a test per primitive, all
/// ignored with `why` when `cfg` does not hold.
macro_rules! primitives {
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
        }
    };
}

primitives!(
    x86_64_sse2,
    Target::new("x86_64", None, None),
    target_arch = "x86_64",
    "the host is not x86-64"
);
primitives!(
    x86_64_f16c,
    Target::new("x86_64", None, Some("+f16c")),
    has_f16c,
    "this CPU lacks F16C"
);
primitives!(
    x86_64_avx2,
    Target::new("x86_64", Some("haswell"), None),
    has_avx2,
    "this CPU lacks AVX2, FMA or F16C"
);
primitives!(
    x86_64_avx512,
    Target::new("x86_64", Some("skylake-avx512"), None),
    has_avx512,
    "this CPU lacks AVX-512 F, BW, DQ or VL"
);
primitives!(
    x86_64_avx512vnni,
    Target::new("x86_64", Some("cascadelake"), None),
    has_avx512vnni,
    "this CPU lacks AVX-512 VNNI"
);
primitives!(
    aarch64_neon,
    Target::aarch64(""),
    has_qemu_aarch64,
    "needs qemu-aarch64"
);
primitives!(
    aarch64_dotprod,
    Target::aarch64("+dotprod"),
    has_qemu_aarch64,
    "needs qemu-aarch64"
);
primitives!(
    aarch64_i8mm,
    Target::aarch64("+dotprod,+i8mm"),
    has_qemu_aarch64,
    "needs qemu-aarch64"
);
