//! The machine's limits that kernels are measured against: sustained memory read bandwidth,
//! and the int8 dot-product peak of AVX-512 VNNI (`vpdpbusd`) on the host.

use super::kb::Kb;
use crate::target::TargetSpec;
use inkwell::context::Context;
use inkwell::module::Linkage;
use inkwell::OptimizationLevel;
use std::time::Instant;

/// Read bandwidth in GB/s: `threads` threads summing disjoint parts of a `bytes` buffer, best
/// of `runs`.
pub fn read_bandwidth(bytes: usize, threads: usize, runs: usize) -> f64 {
    let words = bytes / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let threads = threads.max(1);
    let mut best = 0f64;
    for _ in 0..runs.max(1) {
        let t0 = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let chunk = words.div_ceil(threads);
            let hs: Vec<_> = buf
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        let mut acc = [0u64; 8];
                        for c in part.chunks_exact(8) {
                            for i in 0..8 {
                                acc[i] = acc[i].wrapping_add(c[i]);
                            }
                        }
                        acc.iter().fold(0u64, |a, b| a.wrapping_add(*b))
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("reader"))
                .fold(0u64, |a, b| a.wrapping_add(b))
        });
        let dt = t0.elapsed().as_secs_f64();
        std::hint::black_box(total);
        best = best.max(bytes as f64 / dt / 1e9);
    }
    best
}

/// Peak int8 multiply-accumulates of `vpdpbusd` on 512-bit vectors, in GOPS (2 ops per
/// multiply-add), with `threads` threads; `None` when the host lacks AVX-512 VNNI.
pub fn vnni_peak(threads: usize) -> Option<f64> {
    let spec = TargetSpec::host().ok()?;
    let isa = super::isa::isa_of(&spec);
    if !isa.avx512vnni {
        return None;
    }
    crate::llvm::initialize_targets();
    inkwell::targets::Target::initialize_native(&inkwell::targets::InitializationConfig::default())
        .ok()?;
    let cx = Context::create();
    let m = cx.create_module("vnni_peak");
    let ty = cx.i32_type().fn_type(&[cx.i64_type().into()], false);
    let mut kb = Kb::new_fn(&cx, &m, "vnni_loop", ty, Linkage::External);
    // the JIT compiles for a generic CPU unless the function says otherwise
    kb.f.add_attribute(
        inkwell::attributes::AttributeLoc::Function,
        cx.create_string_attribute("target-cpu", spec.cpu()),
    );
    kb.f.add_attribute(
        inkwell::attributes::AttributeLoc::Function,
        cx.create_string_attribute("target-features", &spec.llvm_features()),
    );
    let iters = kb.param_int(0);
    // independent accumulator chains hide the instruction's latency
    const CHAINS: usize = 16;
    let v16 = cx.i32_type().vec_type(16);
    let a = inkwell::types::VectorType::const_vector(&vec![cx.i8_type().const_int(3, false); 64]);
    let accs: Vec<_> = (0..CHAINS)
        .map(|i| {
            kb.var(inkwell::types::VectorType::const_vector(&vec![
                cx.i32_type()
                    .const_int(
                        i as u64, false
                    );
                16
            ]))
        })
        .collect();
    // a varying operand keeps LLVM from folding the loop
    let bvar = kb.var(inkwell::types::VectorType::const_vector(&vec![
        cx.i8_type()
            .const_int(
                1, false
            );
        64
    ]));
    let zero = kb.i64c(0);
    kb.for_range(zero, iters, 1, |kb, _| {
        let b = kb.get(bvar).into_vector_value();
        for acc in &accs {
            let cur = kb.get(*acc).into_vector_value();
            let r = kb.call_intrinsic(
                "llvm.x86.avx512.vpdpbusd.512",
                &[],
                &[cur.into(), a.into(), b.into()],
            );
            kb.set(*acc, r);
        }
    });
    let mut sum = v16.const_zero();
    for acc in &accs {
        sum =
            kb.b.build_int_add(sum, kb.get(*acc).into_vector_value(), "")
                .expect("add");
    }
    let lane =
        kb.b.build_extract_element(sum, kb.i32c(0), "")
            .expect("extract");
    kb.b.build_return(Some(&lane)).expect("ret");
    // the IR passes promote the accumulators to registers (the JIT alone would not)
    let cg = crate::llvm::Codegen::new(&spec, crate::llvm::CodegenOptions::default()).ok()?;
    cg.configure_module(&m);
    m.run_passes(
        "default<O3>",
        cg.target_machine(),
        inkwell::passes::PassBuilderOptions::create(),
    )
    .ok()?;
    let ee = m
        .create_jit_execution_engine(OptimizationLevel::Aggressive)
        .ok()?;
    // SAFETY: the function just defined, with this signature.
    let f = unsafe {
        ee.get_function::<unsafe extern "C" fn(i64) -> i32>("vnni_loop")
            .ok()?
    };
    let f = unsafe { f.into_raw() };
    let iters: i64 = 20_000_000;
    // warm up, then time all threads together
    unsafe { f(1000) };
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(move || std::hint::black_box(unsafe { f(iters) }));
        }
    });
    let dt = t0.elapsed().as_secs_f64();
    let ops = iters as f64 * CHAINS as f64 * 64.0 * 2.0 * threads.max(1) as f64;
    Some(ops / dt / 1e9)
}
