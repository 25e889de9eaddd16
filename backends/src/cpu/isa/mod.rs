//! What a target offers the kernels, and the one door through which kernels use it: the typed
//! instruction set of a target ([`Isa`], from the features of well-known CPUs refined by the
//! explicit feature switches) and its vector primitives ([`VectorIsa`]), written per
//! architecture in [`x86_64`] and [`aarch64`] beside the portable twins of [`generic`] that
//! each of them is tested against. A feature neither the CPU table nor the switches grant is
//! never used, and an operation a target lacks falls back to its generic twin.

pub mod aarch64;
pub mod generic;
pub mod x86_64;

use super::kb::Kb;
use super::pack::QLayout;
use crate::target::{Arch, TargetSpec};
use inkwell::values::{FloatValue, PointerValue, VectorValue};

/// x86-64 vector tiers the kernels tell apart (the psABI levels, as far as kernels care).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum X86Level {
    /// SSE2: every x86-64 CPU; the kernels use the generic twins.
    Sse2,
    /// AVX2 (256-bit integer and float vectors).
    Avx2,
    /// AVX-512 F, BW, DQ and VL (and AVX2 under them).
    Avx512,
}

/// The x86-64 features that change the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct X86Features {
    pub level: X86Level,
    pub fma: bool,
    /// Hardware f16 conversion (`vcvtph2ps`); AVX-512 has it too.
    pub f16c: bool,
    /// AVX-512 VNNI (`vpdpbusd`); only with [`X86Level::Avx512`].
    pub vnni: bool,
    /// AVX-512 BF16; only with [`X86Level::Avx512`].
    pub bf16: bool,
}

/// The AArch64 features that change the kernels. NEON (Advanced SIMD) is part of every
/// AArch64 target the kernels compile for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArmFeatures {
    /// `sdot`/`udot` (Armv8.2 dot product).
    pub dotprod: bool,
    /// `smmla` (Armv8.6 int8 matrix multiply).
    pub i8mm: bool,
}

/// What the target offers the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable LLVM vector IR only: the twin of every other variant (and what targets
    /// without CPU kernels of their own get).
    Generic,
    X86_64(X86Features),
    Aarch64(ArmFeatures),
}

impl Isa {
    /// The x86-64 ISA of a feature level with the features that level implies.
    pub fn x86_64(level: X86Level) -> Isa {
        Isa::X86_64(X86Features {
            level,
            fma: level >= X86Level::Avx2,
            f16c: level >= X86Level::Avx2,
            vnni: false,
            bf16: false,
        })
    }

    /// f32 lanes of the widest vector the kernels use.
    pub fn lanes(&self) -> u32 {
        match self {
            Isa::Generic => 4,
            Isa::X86_64(f) => match f.level {
                X86Level::Sse2 => 4,
                X86Level::Avx2 => 8,
                X86Level::Avx512 => 16,
            },
            Isa::Aarch64(_) => 4,
        }
    }

    /// Whether the target has AVX-512 VNNI.
    pub fn has_vnni(&self) -> bool {
        matches!(self, Isa::X86_64(f) if f.vnni)
    }

    /// How int8 activations meet quantized weights: the panel layout the weights are packed
    /// in, and whether 8-bit codes are stored signed (minus 128) for signed-by-signed dot
    /// products (`sdot`, `smmla`).
    pub fn int8_weights(&self) -> (QLayout, bool) {
        match self {
            Isa::Aarch64(f) if f.i8mm => (QLayout::Mmla, true),
            Isa::Aarch64(f) => (QLayout::Dot4, f.dotprod),
            _ => (QLayout::Dot4, false),
        }
    }

    /// The vector primitives of this ISA.
    pub fn primitives(&self) -> Box<dyn VectorIsa> {
        match *self {
            Isa::Generic => Box::new(generic::Generic),
            Isa::X86_64(f) => Box::new(x86_64::X86_64(f)),
            Isa::Aarch64(f) => Box::new(aarch64::Aarch64(f)),
        }
    }
}

/// What a weight code operand of [`VectorIsa::dot4`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codes {
    /// Unsigned bytes, 0..=255.
    U8,
    /// Unsigned 4-bit codes, 0..=15, one per byte.
    U4,
    /// Signed bytes (8-bit codes stored minus 128).
    S8,
}

/// The vector operations the kernels need, emitted as LLVM IR at the builder's position.
/// Every implementation computes exactly what the [`generic`] twin computes, on the inputs
/// each method's contract allows (floats: NaNs may differ in their payload); the tests in
/// `tests/tests/cpu_isa.rs` check it per primitive on random inputs.
pub trait VectorIsa {
    /// The instruction set's tag in kernel symbols (`avx512vnni`, `dotprod`, `generic`).
    fn name(&self) -> &'static str;

    /// Token rows of a linear micro-tile that the register file holds: `int8` for integer
    /// dot-product tiles, else f32 FMA tiles.
    fn tile_rows(&self, int8: bool) -> usize;

    /// The window of inputs (8 or 16 floats) from which the 2:4 kernel picks each kept
    /// value's input with [`VectorIsa::lookup`]; `None`: it selects among four broadcasts.
    /// `k16`: K is a multiple of 16.
    fn sparse_window(&self, k16: bool) -> Option<u32>;

    /// `out[i] = table[idx[i]]` for 16 lanes: `table` holds 8 or 16 f32 in a register,
    /// `idx` is `<16 x i32>` with every lane in `0..table lanes`.
    fn lookup<'ctx>(
        &self,
        kb: &Kb<'_, 'ctx>,
        table: VectorValue<'ctx>,
        idx: VectorValue<'ctx>,
    ) -> VectorValue<'ctx>;

    /// [`VectorIsa::lookup`] of a 16-entry table that is also in memory at `table_at` (the
    /// generic twin loads each lane from there).
    fn lookup16_mem<'ctx>(
        &self,
        kb: &Kb<'_, 'ctx>,
        table: VectorValue<'ctx>,
        table_at: PointerValue<'ctx>,
        idx: VectorValue<'ctx>,
    ) -> VectorValue<'ctx> {
        let _ = table_at;
        self.lookup(kb, table, idx)
    }

    /// `acc[j] + Σ_t a[4j+t]·b[4j+t]` for the 16 i32 lanes j of `acc`: `a` holds 64 weight
    /// codes as `codes` says, `b` 64 signed activation bytes. No lane may leave the i32 range
    /// (the AVX-512 VNNI `second_chain` saturates). `second_chain` marks a second, independent
    /// accumulator chain, which some targets emit differently so that LLVM keeps the two apart.
    #[allow(clippy::too_many_arguments)]
    fn dot4<'ctx>(
        &self,
        kb: &Kb<'_, 'ctx>,
        acc: VectorValue<'ctx>,
        a: VectorValue<'ctx>,
        b: VectorValue<'ctx>,
        codes: Codes,
        second_chain: bool,
    ) -> VectorValue<'ctx>;

    /// The 2×2 int8 matrix product-accumulate of `smmla`: `acc` is `<4 x i32>` (row-major
    /// 2×2), `a` and `b` are `<16 x i8>` holding two rows of 8 signed bytes each;
    /// `acc[2i+j] + Σ_t a[8i+t]·b[8j+t]`.
    fn smmla<'ctx>(
        &self,
        kb: &Kb<'_, 'ctx>,
        acc: VectorValue<'ctx>,
        a: VectorValue<'ctx>,
        b: VectorValue<'ctx>,
    ) -> VectorValue<'ctx>;

    /// 16 lanes of f16 bits (`<16 x i16>`) as `<16 x f32>`, exactly (NaNs stay NaN).
    fn half_to_f32<'ctx>(&self, kb: &Kb<'_, 'ctx>, h: VectorValue<'ctx>) -> VectorValue<'ctx>;

    /// `x` rounded to the nearest integer, ties to even (never a libm call).
    fn round_even<'ctx>(&self, kb: &Kb<'_, 'ctx>, x: FloatValue<'ctx>) -> FloatValue<'ctx>;
}

/// x86-64 features by CPU name, cumulative by microarchitecture level.
fn x86_features(cpu: &str) -> &'static [&'static str] {
    const V3: &[&str] = &["avx", "avx2", "fma", "f16c"];
    const V4: &[&str] = &[
        "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl",
    ];
    const VNNI: &[&str] = &[
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512dq",
        "avx512vl",
        "avx512vnni",
    ];
    const BF16: &[&str] = &[
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512dq",
        "avx512vl",
        "avx512vnni",
        "avx512bf16",
    ];
    match cpu {
        "x86-64-v3" | "haswell" | "broadwell" | "skylake" | "alderlake" | "raptorlake"
        | "znver1" | "znver2" | "znver3" => V3,
        "x86-64-v4" | "skylake-avx512" => V4,
        "cascadelake" | "icelake-client" | "icelake-server" | "tigerlake" | "rocketlake" => VNNI,
        "cooperlake" | "sapphirerapids" | "emeraldrapids" | "graniterapids" | "znver4"
        | "znver5" => BF16,
        _ => &[],
    }
}

/// AArch64 features by CPU name.
fn arm_features(cpu: &str) -> &'static [&'static str] {
    const DOT: &[&str] = &["neon", "dotprod"];
    const I8MM: &[&str] = &["neon", "dotprod", "i8mm"];
    match cpu {
        "cortex-a55" | "cortex-a65" | "cortex-a75" | "cortex-a76" | "cortex-a77" | "cortex-a78"
        | "neoverse-n1" | "neoverse-e1" | "apple-m1" | "apple-a14" => DOT,
        "neoverse-v1" | "neoverse-n2" | "neoverse-v2" | "cortex-a510" | "cortex-a710"
        | "cortex-x2" | "cortex-a715" | "cortex-x3" | "apple-m2" | "apple-m3" | "apple-m4" => I8MM,
        _ => &["neon"],
    }
}

/// The kernel ISA of a target.
pub fn isa_of(spec: &TargetSpec) -> Isa {
    let table: &[&str] = match spec.arch() {
        Arch::X86_64 => x86_features(spec.cpu()),
        Arch::Aarch64 => arm_features(spec.cpu()),
        Arch::Nvptx64 => &[],
    };
    let has = |f: &str| spec.feature(f).unwrap_or_else(|| table.contains(&f));
    match spec.arch() {
        Arch::X86_64 => {
            let avx2 = has("avx2");
            let avx512 =
                avx2 && has("avx512f") && has("avx512bw") && has("avx512dq") && has("avx512vl");
            let level = if avx512 {
                X86Level::Avx512
            } else if avx2 {
                X86Level::Avx2
            } else {
                X86Level::Sse2
            };
            Isa::X86_64(X86Features {
                level,
                fma: has("fma"),
                f16c: has("f16c"),
                vnni: avx512 && has("avx512vnni"),
                bf16: avx512 && has("avx512bf16"),
            })
        }
        Arch::Aarch64 => Isa::Aarch64(ArmFeatures {
            dotprod: has("dotprod"),
            i8mm: has("i8mm"),
        }),
        Arch::Nvptx64 => Isa::Generic,
    }
}

/// A short description of the kernels a target selects, for `llmc targets` and manifests.
pub fn describe(isa: &Isa) -> String {
    let parts: Vec<&str> = match isa {
        Isa::Generic => vec!["generic"],
        Isa::X86_64(f) => vec![
            match f.level {
                X86Level::Avx512 => "f32 AVX-512 (16 lanes)",
                X86Level::Avx2 => "f32 AVX2 (8 lanes)",
                X86Level::Sse2 => "f32 SSE2 (4 lanes)",
            },
            if f.vnni {
                "int8 dot: AVX-512 VNNI (vpdpbusd)"
            } else if f.level >= X86Level::Avx2 {
                "int8 dot: AVX2 (vpmaddubsw)"
            } else {
                "int8 dot: generic"
            },
            if f.f16c || f.level == X86Level::Avx512 {
                "f16: F16C"
            } else {
                "f16: integer conversion"
            },
        ],
        Isa::Aarch64(f) => vec![
            "f32 NEON (4 lanes)",
            if f.i8mm {
                "int8: smmla (i8mm) + sdot"
            } else if f.dotprod {
                "int8 dot: sdot (dotprod)"
            } else {
                "int8 dot: NEON widening"
            },
        ],
    };
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x86(isa: Isa) -> X86Features {
        match isa {
            Isa::X86_64(f) => f,
            other => panic!("not x86-64: {other:?}"),
        }
    }

    #[test]
    fn cpu_tables_and_switches() {
        let s = TargetSpec::parse("x86_64", Some("znver4"), None).unwrap();
        let i = isa_of(&s);
        let f = x86(i);
        assert!(f.vnni && f.bf16 && i.lanes() == 16);
        let s = TargetSpec::parse("x86_64", Some("znver4"), Some("-avx512f")).unwrap();
        let i = isa_of(&s);
        let f = x86(i);
        assert!(f.level == X86Level::Avx2 && !f.vnni && i.lanes() == 8);
        let s = TargetSpec::parse("x86_64", None, None).unwrap();
        let i = isa_of(&s);
        assert!(x86(i).level == X86Level::Sse2 && i.lanes() == 4);
        let s = TargetSpec::parse("aarch64", Some("neoverse-n1"), Some("+i8mm")).unwrap();
        assert_eq!(
            isa_of(&s),
            Isa::Aarch64(ArmFeatures {
                dotprod: true,
                i8mm: true
            })
        );
        let s = TargetSpec::parse("aarch64", None, None).unwrap();
        assert!(matches!(isa_of(&s), Isa::Aarch64(f) if !f.dotprod));
        assert_eq!(isa_of(&s).int8_weights(), (QLayout::Dot4, false));
    }

    #[test]
    fn primitive_names() {
        let names: Vec<&str> = [
            Isa::Generic,
            Isa::x86_64(X86Level::Sse2),
            Isa::x86_64(X86Level::Avx2),
            Isa::x86_64(X86Level::Avx512),
            Isa::Aarch64(ArmFeatures {
                dotprod: true,
                i8mm: false,
            }),
        ]
        .iter()
        .map(|i| i.primitives().name())
        .collect();
        assert_eq!(names, ["generic", "sse2", "avx2", "avx512", "dotprod"]);
    }
}
