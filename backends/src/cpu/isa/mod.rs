//! What a target offers the kernels: the features of well-known CPUs (LLVM's C API cannot
//! tell what a CPU name implies), refined by the explicit feature switches. A feature neither
//! the CPU table nor the switches grant is never used.

use super::kernels::Isa;
use crate::target::{Arch, TargetSpec};

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

/// The kernel features of a target.
pub fn isa_of(spec: &TargetSpec) -> Isa {
    let table: &[&str] = match spec.arch() {
        Arch::X86_64 => x86_features(spec.cpu()),
        Arch::Aarch64 => arm_features(spec.cpu()),
        Arch::Nvptx64 => &[],
    };
    let has = |f: &str| spec.feature(f).unwrap_or_else(|| table.contains(&f));
    let mut isa = Isa {
        x86: spec.arch() == Arch::X86_64,
        aarch64: spec.arch() == Arch::Aarch64,
        ..Isa::default()
    };
    if isa.x86 {
        isa.avx2 = has("avx2");
        isa.fma = has("fma");
        isa.f16c = has("f16c");
        isa.avx512 = has("avx512f") && has("avx512bw") && has("avx512dq") && has("avx512vl");
        isa.avx512vnni = isa.avx512 && has("avx512vnni");
        isa.avx512bf16 = isa.avx512 && has("avx512bf16");
        isa.lanes = if isa.avx512 {
            16
        } else if isa.avx2 {
            8
        } else {
            4
        };
    } else if isa.aarch64 {
        isa.neon = has("neon") || spec.feature("neon").is_none();
        isa.dotprod = has("dotprod");
        isa.i8mm = has("i8mm");
        isa.lanes = 4;
    }
    isa
}

/// A short description of the kernels a target selects, for `llmc targets` and manifests.
pub fn describe(isa: &Isa) -> String {
    let mut parts = vec![];
    if isa.x86 {
        parts.push(if isa.avx512 {
            "f32 AVX-512 (16 lanes)"
        } else if isa.avx2 {
            "f32 AVX2 (8 lanes)"
        } else {
            "f32 SSE2 (4 lanes)"
        });
        parts.push(if isa.avx512vnni {
            "int8 dot: AVX-512 VNNI (vpdpbusd)"
        } else if isa.avx2 {
            "int8 dot: AVX2 (vpmaddubsw)"
        } else {
            "int8 dot: generic"
        });
        parts.push(if isa.f16c || isa.avx512 {
            "f16: F16C"
        } else {
            "f16: integer conversion"
        });
    } else if isa.aarch64 {
        parts.push("f32 NEON (4 lanes)");
        parts.push(if isa.i8mm {
            "int8: smmla (i8mm) + sdot"
        } else if isa.dotprod {
            "int8 dot: sdot (dotprod)"
        } else {
            "int8 dot: NEON widening"
        });
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_tables_and_switches() {
        let s = TargetSpec::parse("x86_64", Some("znver4"), None).unwrap();
        let i = isa_of(&s);
        assert!(i.avx512vnni && i.avx512bf16 && i.lanes == 16);
        let s = TargetSpec::parse("x86_64", Some("znver4"), Some("-avx512f")).unwrap();
        let i = isa_of(&s);
        assert!(!i.avx512 && !i.avx512vnni && i.avx2 && i.lanes == 8);
        let s = TargetSpec::parse("x86_64", None, None).unwrap();
        let i = isa_of(&s);
        assert!(!i.avx2 && i.lanes == 4);
        let s = TargetSpec::parse("aarch64", Some("neoverse-n1"), Some("+i8mm")).unwrap();
        let i = isa_of(&s);
        assert!(i.dotprod && i.i8mm);
        let s = TargetSpec::parse("aarch64", None, None).unwrap();
        assert!(!isa_of(&s).dotprod);
    }
}
