//! Toolchain checks: targets parse, one LLVM module compiles for x86-64, AArch64 and NVPTX, and MLIR parses, verifies and lowers a GPU kernel to PTX.

use inkwell::context::Context as LlvmContext;
use inkwell::module::Module as LlvmModule;
use inkwell::FloatPredicate;
use llmc_backends::llvm::{Codegen, CodegenOptions, OutputKind};
use llmc_backends::mlir::{self, GpuObjectFormat, MlirError};
use llmc_backends::{Arch, TargetError, TargetSpec};

// ---------------------------------------------------------------- LLVM

/// Builds, in one module:
///
/// ```text
/// void  add8(float *a, float *b, float *out)  // out[0..8] = a[0..8] + b[0..8] as one <8 x float>
/// float dot8(float *a, float *b, i64 n)       // sum of a[i]*b[i], n a multiple of 8, <8 x float> loop
/// ```
fn vector_module(context: &LlvmContext) -> LlvmModule<'_> {
    let module = context.create_module("toolchain");
    let builder = context.create_builder();
    let f32t = context.f32_type();
    let i64t = context.i64_type();
    let v8 = f32t.vec_type(8);
    let ptr = context.ptr_type(inkwell::AddressSpace::default());

    // add8
    let add8 = module.add_function(
        "add8",
        context
            .void_type()
            .fn_type(&[ptr.into(), ptr.into(), ptr.into()], false),
        None,
    );
    builder.position_at_end(context.append_basic_block(add8, "entry"));
    let [a, b, out] = [0, 1, 2].map(|i| add8.get_nth_param(i).unwrap().into_pointer_value());
    let x = builder.build_load(v8, a, "x").unwrap().into_vector_value();
    let y = builder.build_load(v8, b, "y").unwrap().into_vector_value();
    let sum = builder.build_float_add(x, y, "sum").unwrap();
    builder.build_store(out, sum).unwrap();
    builder.build_return(None).unwrap();

    // dot8
    let dot8 = module.add_function(
        "dot8",
        f32t.fn_type(&[ptr.into(), ptr.into(), i64t.into()], false),
        None,
    );
    let entry = context.append_basic_block(dot8, "entry");
    let body = context.append_basic_block(dot8, "loop");
    let exit = context.append_basic_block(dot8, "exit");
    let a = dot8.get_nth_param(0).unwrap().into_pointer_value();
    let b = dot8.get_nth_param(1).unwrap().into_pointer_value();
    let n = dot8.get_nth_param(2).unwrap().into_int_value();

    builder.position_at_end(entry);
    let zero = v8.const_zero();
    let empty = builder
        .build_int_compare(inkwell::IntPredicate::EQ, n, i64t.const_zero(), "empty")
        .unwrap();
    builder.build_conditional_branch(empty, exit, body).unwrap();

    builder.position_at_end(body);
    let i = builder.build_phi(i64t, "i").unwrap();
    let acc = builder.build_phi(v8, "acc").unwrap();
    let iv = i.as_basic_value().into_int_value();
    // SAFETY (of the IR): callers pass n elements in each array.
    let pa = unsafe { builder.build_gep(f32t, a, &[iv], "pa").unwrap() };
    let pb = unsafe { builder.build_gep(f32t, b, &[iv], "pb").unwrap() };
    let va = builder
        .build_load(v8, pa, "va")
        .unwrap()
        .into_vector_value();
    let vb = builder
        .build_load(v8, pb, "vb")
        .unwrap()
        .into_vector_value();
    let prod = builder.build_float_mul(va, vb, "prod").unwrap();
    let next_acc = builder
        .build_float_add(acc.as_basic_value().into_vector_value(), prod, "acc.next")
        .unwrap();
    let next_i = builder
        .build_int_add(iv, i64t.const_int(8, false), "i.next")
        .unwrap();
    let done = builder
        .build_int_compare(inkwell::IntPredicate::UGE, next_i, n, "done")
        .unwrap();
    builder.build_conditional_branch(done, exit, body).unwrap();
    i.add_incoming(&[(&i64t.const_zero(), entry), (&next_i, body)]);
    acc.add_incoming(&[(&zero, entry), (&next_acc, body)]);

    builder.position_at_end(exit);
    let total = builder.build_phi(v8, "total").unwrap();
    total.add_incoming(&[(&zero, entry), (&next_acc, body)]);
    let mut lanes = f32t.const_zero();
    for lane in 0..8 {
        let index = i64t.const_int(lane, false);
        let value = builder
            .build_extract_element(total.as_basic_value().into_vector_value(), index, "lane")
            .unwrap()
            .into_float_value();
        lanes = builder.build_float_add(lanes, value, "sum").unwrap();
    }
    // Keep a comparison in the IR so every backend lowers a predicate too.
    let finite = builder
        .build_float_compare(FloatPredicate::ORD, lanes, lanes, "finite")
        .unwrap();
    let result = builder
        .build_select(finite, lanes, f32t.const_zero(), "result")
        .unwrap();
    builder.build_return(Some(&result)).unwrap();

    module.verify().expect("test module verifies");
    module
}

fn codegen(target: &str, cpu: Option<&str>) -> Codegen {
    let spec = TargetSpec::parse(target, cpu, None).expect("target parses");
    Codegen::new(&spec, CodegenOptions::default()).expect("target machine")
}

#[test]
fn one_module_emits_x86_64_aarch64_and_ptx_assembly() {
    let context = LlvmContext::create();
    let module = vector_module(&context);

    let x86 = codegen("x86_64", Some("haswell"))
        .emit_assembly(&module)
        .unwrap();
    assert!(x86.contains("vaddps"), "x86-64 (haswell) assembly:\n{x86}");
    assert!(
        x86.contains("vmulps") || x86.contains("vfmadd"),
        "x86-64 assembly:\n{x86}"
    );
    assert!(
        x86.contains("%ymm"),
        "x86-64 assembly uses 256-bit registers:\n{x86}"
    );

    let arm = codegen("aarch64", None).emit_assembly(&module).unwrap();
    assert!(arm.contains("fadd"), "AArch64 assembly:\n{arm}");
    assert!(
        arm.contains("v0.4s") || arm.contains(".4s"),
        "AArch64 assembly:\n{arm}"
    );

    let ptx = codegen("nvptx64", Some("sm_80"))
        .emit_assembly(&module)
        .unwrap();
    assert!(ptx.contains(".version"), "PTX:\n{ptx}");
    assert!(ptx.contains(".target sm_80"), "PTX:\n{ptx}");
    assert!(
        ptx.contains("add.rn.f32") || ptx.contains("add.f32"),
        "PTX:\n{ptx}"
    );
    assert!(ptx.contains(".visible .func add8"), "PTX:\n{ptx}");

    // The source module is untouched by code generation.
    assert_eq!(module.get_triple().as_str().to_bytes(), b"");
}

#[test]
fn objects_are_elf_for_the_right_machine() {
    let context = LlvmContext::create();
    let module = vector_module(&context);

    let x86 = codegen("x86_64-unknown-linux-gnu", Some("haswell"))
        .emit(&module, OutputKind::Object)
        .unwrap();
    assert_eq!(&x86[..4], b"\x7fELF");
    assert_eq!(
        u16::from_le_bytes([x86[18], x86[19]]),
        62,
        "e_machine EM_X86_64"
    );

    let arm = codegen("aarch64-unknown-linux-gnu", None)
        .emit_object(&module)
        .unwrap();
    assert_eq!(&arm[..4], b"\x7fELF");
    assert_eq!(
        u16::from_le_bytes([arm[18], arm[19]]),
        183,
        "e_machine EM_AARCH64"
    );
}

#[test]
fn invalid_llvm_module_is_an_error() {
    let context = LlvmContext::create();
    let module = context.create_module("broken");
    let function = module.add_function("f", context.void_type().fn_type(&[], false), None);
    // A block with no terminator does not verify.
    context.append_basic_block(function, "entry");
    let error = codegen("x86_64", None).emit_assembly(&module).unwrap_err();
    assert!(error.to_string().contains("broken"), "{error}");
}

#[test]
fn host_target_machine_compiles() {
    let spec = TargetSpec::parse("host", None, None).unwrap();
    let codegen = Codegen::new(&spec, CodegenOptions::default()).unwrap();
    let context = LlvmContext::create();
    let object = codegen.emit_object(&vector_module(&context)).unwrap();
    assert_eq!(&object[..4], b"\x7fELF");
}

// ---------------------------------------------------------------- MLIR

const ADD_F32: &str = r#"
func.func @add(%a: f32, %b: f32) -> f32 {
  %sum = arith.addf %a, %b : f32
  return %sum : f32
}
"#;

#[test]
fn mlir_parses_and_verifies() {
    let context = mlir::create_context();
    let mut module = mlir::parse_module(&context, ADD_F32).unwrap();
    mlir::verify_module(&context, &module).unwrap();
    let text = module.as_operation().to_string();
    assert!(text.contains("arith.addf"), "{text}");

    mlir::run_pass_pipeline(&context, &mut module, "canonicalize,cse").unwrap();
    mlir::run_pass_pipeline(&context, &mut module, "builtin.module(convert-to-llvm)").unwrap();
    let lowered = module.as_operation().to_string();
    assert!(lowered.contains("llvm.fadd"), "{lowered}");
}

#[test]
fn malformed_mlir_is_an_error_with_diagnostics() {
    let context = mlir::create_context();

    // Syntax error.
    let error = mlir::parse_module(&context, "func.func @f( {").unwrap_err();
    let MlirError::Parse { diagnostics } = &error else {
        panic!("expected a parse error, got {error}");
    };
    assert!(!diagnostics.is_empty());
    assert!(diagnostics[0].contains("error"), "{error}");

    // Well-formed syntax that the verifier rejects: the result type is wrong.
    let mistyped = ADD_F32.replace("-> f32", "-> i32");
    let error = mlir::parse_module(&context, &mistyped).unwrap_err();
    assert!(error.to_string().contains("return"), "{error}");

    // An unknown pass.
    let mut module = mlir::parse_module(&context, ADD_F32).unwrap();
    let error = mlir::run_pass_pipeline(&context, &mut module, "no-such-pass").unwrap_err();
    assert!(matches!(error, MlirError::Pipeline { .. }), "{error}");
    assert!(error.to_string().contains("no-such-pass"), "{error}");
}

const GPU_ADD: &str = r#"
module attributes {gpu.container_module} {
  gpu.module @kernels {
    gpu.func @vadd(%a: memref<1024xf32>, %b: memref<1024xf32>, %c: memref<1024xf32>) kernel {
      %block = gpu.block_id x
      %thread = gpu.thread_id x
      %width = gpu.block_dim x
      %base = arith.muli %block, %width : index
      %i = arith.addi %base, %thread : index
      %x = memref.load %a[%i] : memref<1024xf32>
      %y = memref.load %b[%i] : memref<1024xf32>
      %s = arith.addf %x, %y : f32
      memref.store %s, %c[%i] : memref<1024xf32>
      gpu.return
    }
  }
}
"#;

#[test]
fn gpu_module_lowers_to_ptx_in_process() {
    let context = mlir::create_context();
    let mut module = mlir::parse_module(&context, GPU_ADD).unwrap();
    mlir::run_pass_pipeline(
        &context,
        &mut module,
        "nvvm-attach-target{chip=sm_80},\
         gpu.module(convert-gpu-to-nvvm),\
         reconcile-unrealized-casts,\
         gpu-module-to-binary{format=isa}",
    )
    .unwrap();

    let objects = mlir::gpu_objects(&module);
    assert_eq!(objects.len(), 1, "{}", module.as_operation());
    let object = &objects[0];
    assert_eq!(object.binary, "kernels");
    assert_eq!(object.format, GpuObjectFormat::Assembly);
    assert!(object.target.contains("sm_80"), "{}", object.target);
    let ptx = String::from_utf8(object.bytes.clone()).unwrap();
    assert!(ptx.contains(".target sm_80"), "{ptx}");
    assert!(ptx.contains(".entry vadd"), "{ptx}");
    assert!(
        ptx.contains("add.rn.f32") || ptx.contains("add.f32"),
        "{ptx}"
    );
}

// ---------------------------------------------------------------- targets

#[test]
fn full_triples_parse() {
    let spec = TargetSpec::parse("x86_64-unknown-linux-gnu", None, None).unwrap();
    assert_eq!(spec.arch(), Arch::X86_64);
    assert_eq!(spec.llvm_triple(), "x86_64-unknown-linux-gnu");
    assert_eq!(spec.cpu(), "x86-64");
    assert!(spec.features().is_empty());

    let spec = TargetSpec::parse("aarch64-unknown-linux-gnu", Some("neoverse-n1"), None).unwrap();
    assert_eq!(spec.arch(), Arch::Aarch64);
    assert_eq!(spec.cpu(), "neoverse-n1");

    let spec = TargetSpec::parse("aarch64-unknown-none", None, None).unwrap();
    assert_eq!(spec.arch(), Arch::Aarch64);

    let spec = TargetSpec::parse("nvptx64-nvidia-cuda", Some("sm_90"), None).unwrap();
    assert_eq!(spec.arch(), Arch::Nvptx64);
    assert_eq!(spec.cpu(), "sm_90");
}

#[test]
fn short_names_expand() {
    for (name, triple, arch, cpu) in [
        ("x86_64", "x86_64-unknown-linux-gnu", Arch::X86_64, "x86-64"),
        (
            "aarch64",
            "aarch64-unknown-linux-gnu",
            Arch::Aarch64,
            "generic",
        ),
        ("nvptx64", "nvptx64-nvidia-cuda", Arch::Nvptx64, "sm_80"),
    ] {
        let spec = TargetSpec::parse(name, None, None).unwrap();
        assert_eq!(spec.llvm_triple(), triple, "{name}");
        assert_eq!(spec.arch(), arch, "{name}");
        assert_eq!(spec.cpu(), cpu, "{name}");
    }
}

#[test]
fn host_is_detected() {
    let host = TargetSpec::parse("host", None, None).unwrap();
    assert!(!host.cpu().is_empty());
    assert!(!host.features().is_empty(), "LLVM reports host features");
    if cfg!(target_arch = "x86_64") {
        assert_eq!(host.arch(), Arch::X86_64);
        assert_eq!(host.feature("sse2"), Some(true));
    }
    if cfg!(target_arch = "aarch64") {
        assert_eq!(host.arch(), Arch::Aarch64);
    }

    // Given features apply after the detected ones.
    let host = TargetSpec::parse("host", None, Some("-avx512f")).unwrap();
    if cfg!(target_arch = "x86_64") {
        assert_eq!(host.feature("avx512f"), Some(false));
        assert!(host.llvm_features().ends_with(",-avx512f"));
    }

    // An explicit CPU replaces detection.
    if cfg!(target_arch = "x86_64") {
        let host = TargetSpec::parse("host", Some("skylake-avx512"), None).unwrap();
        assert_eq!(host.cpu(), "skylake-avx512");
        assert!(host.features().is_empty());
    }
}

#[test]
fn features_parse_in_order() {
    let spec = TargetSpec::parse(
        "x86_64",
        Some("znver4"),
        Some("+avx512vnni, -avx512f,+avx512f"),
    )
    .unwrap();
    assert_eq!(spec.llvm_features(), "+avx512vnni,-avx512f,+avx512f");
    assert_eq!(spec.feature("avx512vnni"), Some(true));
    assert_eq!(spec.feature("avx512f"), Some(true), "last switch wins");
    assert_eq!(spec.feature("amx-tile"), None);
    assert_eq!(
        spec.to_string(),
        "x86_64-unknown-linux-gnu cpu=znver4 features=+avx512vnni,-avx512f,+avx512f"
    );

    let spec =
        TargetSpec::parse("aarch64", Some("neoverse-v1"), Some("+dotprod,+i8mm,-sve")).unwrap();
    assert_eq!(spec.feature("i8mm"), Some(true));
    assert_eq!(spec.feature("sve"), Some(false));

    let spec = TargetSpec::parse("nvptx64", None, Some("+ptx80")).unwrap();
    assert_eq!(spec.feature("ptx80"), Some(true));

    // Empty entries are ignored.
    let spec = TargetSpec::parse("x86_64", None, Some("")).unwrap();
    assert!(spec.features().is_empty());
}

#[test]
fn bad_targets_are_named_with_the_supported_ones() {
    let error = TargetSpec::parse("riscv64gc-unknown-linux-gnu", None, None).unwrap_err();
    assert!(
        matches!(error, TargetError::UnsupportedArchitecture { .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains("riscv64gc"), "{message}");
    assert!(message.contains("x86_64, aarch64, nvptx64"), "{message}");

    for bad in [
        "x86",
        "foo",
        "armv7-unknown-linux-gnueabihf",
        "x86_64-bogus-thing-here-more",
    ] {
        let error = TargetSpec::parse(bad, None, None).unwrap_err();
        let message = error.to_string();
        assert!(message.contains(&format!("`{bad}`")), "{message}");
        assert!(
            message.contains("nvptx64"),
            "lists supported targets: {message}"
        );
    }
    let message = TargetSpec::parse("foo", None, None)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("host, x86_64, aarch64, nvptx64"),
        "{message}"
    );
}

#[test]
fn bad_cpus_and_features_are_named() {
    let error = TargetSpec::parse("x86_64", Some("haswel"), None).unwrap_err();
    assert_eq!(
        error,
        TargetError::UnknownCpu {
            cpu: "haswel".into(),
            arch: Arch::X86_64,
            suggestions: vec!["haswell".into()],
        }
    );
    assert!(
        error.to_string().contains("did you mean `haswell`"),
        "{error}"
    );

    // A CPU of another architecture.
    let error = TargetSpec::parse("nvptx64", Some("haswell"), None).unwrap_err();
    assert!(
        matches!(
            error,
            TargetError::UnknownCpu {
                arch: Arch::Nvptx64,
                ..
            }
        ),
        "{error}"
    );

    let error = TargetSpec::parse("x86_64", None, Some("+avx512vnn")).unwrap_err();
    let TargetError::UnknownFeature {
        feature,
        arch,
        suggestions,
    } = &error
    else {
        panic!("expected an unknown feature, got {error}");
    };
    assert_eq!(feature, "avx512vnn");
    assert_eq!(*arch, Arch::X86_64);
    assert_eq!(suggestions.first().map(String::as_str), Some("avx512vnni"));
    let message = error.to_string();
    assert!(
        message.contains("`avx512vnn`") && message.contains("`avx512vnni`"),
        "{message}"
    );

    // An x86 feature on AArch64.
    let error = TargetSpec::parse("aarch64", None, Some("+dotprod,+avx2")).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("unknown feature `avx2` for aarch64"),
        "{error}"
    );

    // Missing sign, empty name, non-ASCII.
    for bad in ["avx2", "+", "+avx2,é", "+a b"] {
        let error = TargetSpec::parse("x86_64", None, Some(bad)).unwrap_err();
        assert!(
            matches!(error, TargetError::MalformedFeature { .. }),
            "{bad}: {error}"
        );
    }
}
