//! MLIR through melior: a context with every dialect, parsing and verifying modules, pass pipelines, and GPU binaries.

use std::sync::{Arc, Mutex, PoisonError};

use melior::diagnostic::{Diagnostic, DiagnosticSeverity};
use melior::dialect::DialectRegistry;
use melior::ir::attribute::{ArrayAttribute, AttributeLike, StringAttribute};
use melior::ir::operation::{OperationLike, WalkOrder, WalkResult};
use melior::ir::{Module, OperationRef};
use melior::pass::PassManager;
use melior::utility::{
    parse_pass_pipeline, register_all_dialects, register_all_llvm_translations, register_all_passes,
};
use melior::Context;
use thiserror::Error;

/// A failure while parsing, verifying or transforming MLIR, with MLIR's own diagnostics.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MlirError {
    /// The text is not a valid MLIR module.
    #[error("MLIR module does not parse:\n{}", lines(.diagnostics))]
    Parse {
        /// MLIR's diagnostics, one per entry, with locations.
        diagnostics: Vec<String>,
    },
    /// The module parsed but fails the verifier.
    #[error("MLIR module does not verify:\n{}", lines(.diagnostics))]
    Verify {
        /// MLIR's diagnostics, one per entry, with locations.
        diagnostics: Vec<String>,
    },
    /// The pass pipeline string does not parse (unknown pass, bad option).
    #[error("bad MLIR pass pipeline `{pipeline}`: {message}")]
    Pipeline {
        /// The pipeline as given.
        pipeline: String,
        /// The pipeline parser's message.
        message: String,
    },
    /// A pass failed on the module.
    #[error("MLIR pass pipeline `{pipeline}` failed:\n{}", lines(.diagnostics))]
    PassFailed {
        /// The pipeline that was run.
        pipeline: String,
        /// MLIR's diagnostics, one per entry, with locations.
        diagnostics: Vec<String>,
    },
}

fn lines(diagnostics: &[String]) -> String {
    if diagnostics.is_empty() {
        return "  (MLIR reported no diagnostic)".to_string();
    }
    let indented: Vec<String> = diagnostics.iter().map(|d| format!("  {d}")).collect();
    indented.join("\n")
}

/// Creates an MLIR context with every upstream dialect and extension registered,
/// the translations to LLVM IR, and every upstream pass (for pipeline strings).
pub fn create_context() -> Context {
    let registry = DialectRegistry::new();
    register_all_dialects(&registry);
    register_all_passes();
    let context = Context::new();
    context.append_dialect_registry(&registry);
    register_all_llvm_translations(&context);
    context
}

/// Runs `f` while collecting the diagnostics `context` emits (instead of printing them).
fn with_diagnostics<T>(context: &Context, f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let collected = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&collected);
    let id = context.attach_diagnostic_handler(move |diagnostic| {
        let mut sink = sink.lock().unwrap_or_else(PoisonError::into_inner);
        sink.push(render(&diagnostic));
        true
    });
    let result = f();
    context.detach_diagnostic_handler(id);
    let diagnostics =
        std::mem::take(&mut *collected.lock().unwrap_or_else(PoisonError::into_inner));
    (result, diagnostics)
}

/// `loc: severity: message`, followed by the diagnostic's notes on their own lines.
fn render(diagnostic: &Diagnostic<'_>) -> String {
    let severity = match diagnostic.severity() {
        DiagnosticSeverity::Error => "error",
        DiagnosticSeverity::Warning => "warning",
        DiagnosticSeverity::Note => "note",
        DiagnosticSeverity::Remark => "remark",
    };
    let mut text = format!("{}: {severity}: {diagnostic}", diagnostic.location());
    for index in 0..diagnostic.note_count() {
        if let Ok(note) = diagnostic.note(index) {
            text.push_str(&format!("\n    {}: note: {note}", note.location()));
        }
    }
    text
}

/// Parses `source` as a module and verifies it (MLIR's parser runs the verifier).
pub fn parse_module<'c>(context: &'c Context, source: &str) -> Result<Module<'c>, MlirError> {
    let (module, diagnostics) = with_diagnostics(context, || Module::parse(context, source));
    module.ok_or(MlirError::Parse { diagnostics })
}

/// Runs the MLIR verifier on `module`.
pub fn verify_module(context: &Context, module: &Module<'_>) -> Result<(), MlirError> {
    let (ok, diagnostics) = with_diagnostics(context, || module.as_operation().verify());
    if ok {
        Ok(())
    } else {
        Err(MlirError::Verify { diagnostics })
    }
}

/// Runs a textual pass pipeline on `module`, verifying after each pass.
///
/// `pipeline` is either anchored on the module (`builtin.module(canonicalize,cse)`) or
/// a bare comma-separated list (`canonicalize,cse`), which is anchored for you. The
/// syntax is `mlir-opt`'s `--pass-pipeline`.
pub fn run_pass_pipeline(
    context: &Context,
    module: &mut Module<'_>,
    pipeline: &str,
) -> Result<(), MlirError> {
    let trimmed = pipeline.trim();
    let anchored = if trimmed.starts_with("builtin.module(") {
        trimmed.to_string()
    } else {
        format!("builtin.module({trimmed})")
    };
    let manager = PassManager::new(context);
    manager.enable_verifier(true);
    parse_pass_pipeline(manager.as_operation_pass_manager(), &anchored).map_err(|error| {
        MlirError::Pipeline {
            pipeline: pipeline.to_string(),
            message: error.to_string(),
        }
    })?;
    let (result, diagnostics) = with_diagnostics(context, || manager.run(module));
    result.map_err(|_| MlirError::PassFailed {
        pipeline: pipeline.to_string(),
        diagnostics,
    })
}

/// One compiled object inside a `gpu.binary` (what `gpu-module-to-binary` produces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuObject {
    /// The symbol of the `gpu.binary` op (the name of the `gpu.module` it came from).
    pub binary: String,
    /// The target attribute, printed (`#nvvm.target<chip = "sm_80">`).
    pub target: String,
    /// The format: `offload` (LLVM IR), `assembly` (PTX text), `binary` (cubin) or `fatbin`.
    pub format: GpuObjectFormat,
    /// The object's bytes: PTX text for `assembly`.
    pub bytes: Vec<u8>,
}

/// The format of a [`GpuObject`], as in `gpu-module-to-binary{format=...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuObjectFormat {
    /// Device LLVM IR or bitcode (`format=offload`).
    Offload,
    /// Target assembly, PTX for NVVM (`format=isa`).
    Assembly,
    /// A device binary, cubin for NVVM (`format=bin`).
    Binary,
    /// A fat binary (`format=fatbin`).
    Fatbin,
    /// A format this version of llmc does not know, with MLIR's number for it.
    Unknown(u32),
}

impl GpuObjectFormat {
    // The values of mlir::gpu::CompilationTarget.
    fn from_raw(raw: u32) -> GpuObjectFormat {
        match raw {
            1 => GpuObjectFormat::Offload,
            2 => GpuObjectFormat::Assembly,
            3 => GpuObjectFormat::Binary,
            4 => GpuObjectFormat::Fatbin,
            other => GpuObjectFormat::Unknown(other),
        }
    }
}

/// Collects every object of every `gpu.binary` op in `module`, in walk order.
pub fn gpu_objects(module: &Module<'_>) -> Vec<GpuObject> {
    let mut objects = Vec::new();
    module
        .as_operation()
        .walk(WalkOrder::PreOrder, |operation| {
            collect_binary_objects(&operation, &mut objects);
            WalkResult::Advance
        });
    objects
}

fn collect_binary_objects(operation: &OperationRef<'_, '_>, objects: &mut Vec<GpuObject>) {
    let is_binary = operation
        .name()
        .as_string_ref()
        .as_str()
        .is_ok_and(|name| name == "gpu.binary");
    if !is_binary {
        return;
    }
    let binary = operation
        .attribute("sym_name")
        .ok()
        .and_then(|a| StringAttribute::try_from(a).ok())
        .map(|a| a.value().to_string())
        .unwrap_or_default();
    let Some(array) = operation
        .attribute("objects")
        .ok()
        .and_then(|a| ArrayAttribute::try_from(a).ok())
    else {
        return;
    };
    for index in 0..array.len() {
        let Ok(element) = array.element(index) else {
            continue;
        };
        let raw = element.to_raw();
        // SAFETY: `raw` is a live attribute of this module's context; the GPU C API
        // only reads it, and the object string is copied before the walk moves on.
        unsafe {
            if !mlir_sys::mlirAttributeIsAGPUObjectAttr(raw) {
                continue;
            }
            let data = mlir_sys::mlirGPUObjectAttrGetObject(raw);
            let bytes = if data.data.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(data.data.cast::<u8>(), data.length).to_vec()
            };
            let target = melior::ir::Attribute::from_raw(mlir_sys::mlirGPUObjectAttrGetTarget(raw));
            objects.push(GpuObject {
                binary: binary.clone(),
                target: target.to_string(),
                format: GpuObjectFormat::from_raw(mlir_sys::mlirGPUObjectAttrGetFormat(raw)),
                bytes,
            });
        }
    }
}
