//! Tells the tests what this machine can run, as cfgs: the x86-64 CPU features of the ISA
//! variants (`has_f16c`, `has_avx2`, `has_avx512`, `has_avx512vnni`, `has_avx512bf16`) and
//! whether AArch64 code can be linked and run under qemu (`has_qemu_aarch64`). Tests that
//! need something missing carry `#[cfg_attr(not(has_…), ignore = "…")]`, so the harness
//! reports them as ignored instead of passing them.
//!
//! The build script runs on the machine that builds the tests, which is the machine that runs
//! them (no cross-compiled test runs). Set `LLMC_TEST_RECHECK` to anything new to look again
//! when a build folder moves to another machine.

use std::path::Path;

const CFGS: &[&str] = &[
    "has_f16c",
    "has_avx2",
    "has_avx512",
    "has_avx512vnni",
    "has_avx512bf16",
    "has_qemu_aarch64",
];

fn main() {
    for c in CFGS {
        println!("cargo::rustc-check-cfg=cfg({c})");
    }
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-env-changed=LLMC_TEST_RECHECK");
    let target_arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    for c in x86_features(&target_arch) {
        println!("cargo::rustc-cfg={c}");
    }
    if on_path("qemu-aarch64") && on_path("aarch64-linux-gnu-gcc") {
        println!("cargo::rustc-cfg=has_qemu_aarch64");
    }
}

/// The x86-64 cfgs this machine earns (none unless both it and the tests are x86-64).
#[cfg(target_arch = "x86_64")]
fn x86_features(target_arch: &str) -> Vec<&'static str> {
    use std::arch::is_x86_feature_detected as has;
    if target_arch != "x86_64" {
        return vec![];
    }
    let mut out = vec![];
    if has!("f16c") {
        out.push("has_f16c");
    }
    // the AVX2 variant is Haswell's: AVX2, FMA and F16C
    let avx2 = has!("avx2") && has!("fma") && has!("f16c");
    if avx2 {
        out.push("has_avx2");
    }
    let avx512 =
        avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl");
    if avx512 {
        out.push("has_avx512");
        if has!("avx512vnni") {
            out.push("has_avx512vnni");
            if has!("avx512bf16") {
                out.push("has_avx512bf16");
            }
        }
    }
    out
}

#[cfg(not(target_arch = "x86_64"))]
fn x86_features(_target_arch: &str) -> Vec<&'static str> {
    vec![]
}

/// Whether `name` is an executable file in a folder of `PATH`.
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(name).is_file()))
}
