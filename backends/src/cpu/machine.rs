//! The machine's limits that kernels are measured against: sustained memory read bandwidth,
//! and the int8 dot-product peak of AVX-512 VNNI (`vpdpbusd`) on the host.

use super::kb::Kb;
use crate::target::TargetSpec;
use inkwell::context::Context;
use inkwell::module::Linkage;
use inkwell::OptimizationLevel;
use std::time::Instant;

/// A host function compiled from a module built by `build`, with every IR optimization run
/// (the JIT alone would keep loop variables in memory) and code for the host CPU.
fn jit_host<T: Copy + inkwell::execution_engine::UnsafeFunctionPointer>(
    name: &str,
    build: impl for<'c> Fn(&'c Context, &inkwell::module::Module<'c>, &TargetSpec),
) -> Option<(T, Box<dyn std::any::Any>)> {
    let spec = TargetSpec::host().ok()?;
    crate::llvm::initialize_targets();
    inkwell::targets::Target::initialize_native(&inkwell::targets::InitializationConfig::default())
        .ok()?;
    // the context must outlive the engine: leak both into the returned keep-alive box
    let cx: &'static Context = Box::leak(Box::new(Context::create()));
    let m = cx.create_module(name);
    build(cx, &m, &spec);
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
    // SAFETY: the caller names a function `build` defined with signature T.
    let f = unsafe { ee.get_function::<T>(name).ok()?.into_raw() };
    Some((f, Box::new(ee)))
}

/// Marks a function for the host CPU (the JIT compiles for a generic one otherwise).
fn for_host<'c>(cx: &'c Context, f: inkwell::values::FunctionValue<'c>, spec: &TargetSpec) {
    f.add_attribute(
        inkwell::attributes::AttributeLoc::Function,
        cx.create_string_attribute("target-cpu", spec.cpu()),
    );
    f.add_attribute(
        inkwell::attributes::AttributeLoc::Function,
        cx.create_string_attribute("target-features", &spec.llvm_features()),
    );
}

/// Read bandwidth in GB/s: `threads` threads each summing a disjoint part of a `bytes` buffer
/// as f32 vectors of the host's width (four accumulators, as a GEMV streams its weights),
/// best of `runs`.
pub fn read_bandwidth(bytes: usize, threads: usize, runs: usize) -> f64 {
    type SumFn = unsafe extern "C" fn(*const f32, i64) -> f32;
    let Some((f, _keep)) = jit_host::<SumFn>("read_sum", |cx, m, spec| {
        let ty = cx.f32_type().fn_type(
            &[
                cx.ptr_type(inkwell::AddressSpace::default()).into(),
                cx.i64_type().into(),
            ],
            false,
        );
        let mut kb = Kb::new_fn(cx, m, "read_sum", ty, Linkage::External);
        for_host(cx, kb.f, spec);
        let (p, n) = (kb.param_ptr(0), kb.param_int(1));
        let accs: Vec<_> = (0..4)
            .map(|_| kb.var(cx.f32_type().vec_type(16).const_zero()))
            .collect();
        let zero = kb.i64c(0);
        kb.for_range(zero, n, 64, |kb, i| {
            for (j, a) in accs.iter().enumerate() {
                let v = kb.vload(kb.f32t().into(), 16, p, kb.add(i, kb.i64c(16 * j as i64)));
                let cur = kb.get(*a).into_vector_value();
                kb.set(*a, kb.b.build_float_add(cur, v, "").expect("fadd"));
            }
        });
        let mut sum = kb.get(accs[0]).into_vector_value();
        for a in &accs[1..] {
            sum =
                kb.b.build_float_add(sum, kb.get(*a).into_vector_value(), "")
                    .expect("fadd");
        }
        let x =
            kb.b.build_extract_element(sum, kb.i32c(0), "")
                .expect("extract");
        kb.b.build_return(Some(&x)).expect("ret");
    }) else {
        return 0.0;
    };
    let floats = bytes / 4 / 64 * 64;
    let buf: Vec<f32> = (0..floats).map(|i| (i % 7) as f32).collect();
    let threads = threads.max(1);
    let chunk = floats / threads / 64 * 64;
    let mut best = 0f64;
    for _ in 0..runs.max(1) {
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for part in buf.chunks(chunk.max(64)) {
                let n = part.len() / 64 * 64;
                let ptr = part.as_ptr() as usize;
                s.spawn(move || std::hint::black_box(unsafe { f(ptr as *const f32, n as i64) }));
            }
        });
        best = best.max((floats * 4) as f64 / t0.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// Peak int8 multiply-accumulates of `vpdpbusd` on 512-bit vectors, in GOPS (2 per
/// multiply-add), with `threads` threads; `None` when the host lacks AVX-512 VNNI.
pub fn vnni_peak(threads: usize) -> Option<f64> {
    let spec = TargetSpec::host().ok()?;
    if !super::isa::isa_of(&spec).has_vnni() {
        return None;
    }
    // independent accumulator chains hide the instruction's latency
    const CHAINS: usize = 16;
    type LoopFn = unsafe extern "C" fn(i64) -> i32;
    let (f, _keep) = jit_host::<LoopFn>("vnni_loop", |cx, m, spec| {
        let ty = cx.i32_type().fn_type(&[cx.i64_type().into()], false);
        let mut kb = Kb::new_fn(cx, m, "vnni_loop", ty, Linkage::External);
        for_host(cx, kb.f, spec);
        let iters = kb.param_int(0);
        let a =
            inkwell::types::VectorType::const_vector(&vec![cx.i8_type().const_int(3, false); 64]);
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
        let mut sum = cx.i32_type().vec_type(16).const_zero();
        for acc in &accs {
            sum =
                kb.b.build_int_add(sum, kb.get(*acc).into_vector_value(), "")
                    .expect("add");
        }
        let lane =
            kb.b.build_extract_element(sum, kb.i32c(0), "")
                .expect("extract");
        kb.b.build_return(Some(&lane)).expect("ret");
    })?;
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
