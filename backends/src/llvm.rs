//! LLVM code generation through inkwell: a target machine for a `TargetSpec`, and assembly or object emission.

use std::sync::Once;

use inkwell::module::Module;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};
use inkwell::OptimizationLevel;
use thiserror::Error;

use crate::target::TargetSpec;

/// A failure inside LLVM while preparing or running code generation.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LlvmError {
    /// LLVM in this build has no backend for the triple.
    #[error("LLVM has no backend for `{triple}` in this build: {message}")]
    TargetNotCompiledIn {
        /// The triple that was looked up.
        triple: String,
        /// LLVM's reason.
        message: String,
    },
    /// LLVM refused to create a target machine for the combination.
    #[error("LLVM could not create a target machine for {target}")]
    TargetMachine {
        /// The target, as `TargetSpec` prints it.
        target: String,
    },
    /// The module does not pass the LLVM verifier (a bug in whoever built it).
    #[error("internal error: LLVM module `{module}` does not verify: {message}")]
    InvalidModule {
        /// The module's name.
        module: String,
        /// The verifier's report.
        message: String,
    },
    /// Code generation itself failed.
    #[error("LLVM code generation for {target} failed: {message}")]
    Emit {
        /// The target, as `TargetSpec` prints it.
        target: String,
        /// LLVM's reason.
        message: String,
    },
    /// Assembly output was not UTF-8.
    #[error("LLVM assembly output for {target} is not UTF-8")]
    NonUtf8Assembly {
        /// The target, as `TargetSpec` prints it.
        target: String,
    },
}

/// What `Codegen::emit` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// Textual assembly (PTX for `nvptx64`).
    Assembly,
    /// A relocatable object file (ELF on Linux triples).
    Object,
}

/// Code-generation settings that are not part of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodegenOptions {
    /// LLVM's back-end optimization level.
    pub opt_level: OptimizationLevel,
    /// Relocation model; position-independent by default so objects link into
    /// PIE executables and shared libraries.
    pub reloc_mode: RelocMode,
    /// Code model.
    pub code_model: CodeModel,
}

impl Default for CodegenOptions {
    fn default() -> Self {
        CodegenOptions {
            opt_level: OptimizationLevel::Aggressive,
            reloc_mode: RelocMode::PIC,
            code_model: CodeModel::Default,
        }
    }
}

/// Registers the X86, AArch64 and NVPTX LLVM backends (only those) once per process.
pub fn initialize_targets() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let config = InitializationConfig::default();
        Target::initialize_x86(&config);
        Target::initialize_aarch64(&config);
        Target::initialize_nvptx(&config);
    });
}

/// An LLVM target machine for one `TargetSpec`, ready to emit modules.
#[derive(Debug)]
pub struct Codegen {
    spec: TargetSpec,
    machine: TargetMachine,
}

impl Codegen {
    /// Creates the LLVM target machine for `spec`.
    pub fn new(spec: &TargetSpec, options: CodegenOptions) -> Result<Codegen, LlvmError> {
        initialize_targets();
        let triple = TargetTriple::create(&spec.llvm_triple());
        let target =
            Target::from_triple(&triple).map_err(|message| LlvmError::TargetNotCompiledIn {
                triple: spec.llvm_triple(),
                message: message.to_string(),
            })?;
        let machine = target
            .create_target_machine(
                &triple,
                spec.cpu(),
                &spec.llvm_features(),
                options.opt_level,
                options.reloc_mode,
                options.code_model,
            )
            .ok_or_else(|| LlvmError::TargetMachine {
                target: spec.to_string(),
            })?;
        Ok(Codegen {
            spec: spec.clone(),
            machine,
        })
    }

    /// The target this machine generates code for.
    pub fn spec(&self) -> &TargetSpec {
        &self.spec
    }

    /// The underlying LLVM target machine.
    pub fn target_machine(&self) -> &TargetMachine {
        &self.machine
    }

    /// Sets `module`'s triple and data layout to this target's. Do this before
    /// running IR optimizations, which read the data layout.
    pub fn configure_module(&self, module: &Module<'_>) {
        module.set_triple(&self.machine.get_triple());
        module.set_data_layout(&self.machine.get_target_data().get_data_layout());
    }

    /// Verifies `module` and compiles it to assembly or an object, in memory.
    ///
    /// Code generation rewrites the IR it runs on, so this compiles a copy whose
    /// triple and data layout are set to this target; `module` itself is left as it
    /// was and can be emitted again for another target.
    pub fn emit(&self, module: &Module<'_>, kind: OutputKind) -> Result<Vec<u8>, LlvmError> {
        module
            .verify()
            .map_err(|message| LlvmError::InvalidModule {
                module: module.get_name().to_string_lossy().into_owned(),
                message: message.to_string(),
            })?;
        let copy = module.clone();
        self.configure_module(&copy);
        let file_type = match kind {
            OutputKind::Assembly => FileType::Assembly,
            OutputKind::Object => FileType::Object,
        };
        let buffer = self
            .machine
            .write_to_memory_buffer(&copy, file_type)
            .map_err(|message| LlvmError::Emit {
                target: self.spec.to_string(),
                message: message.to_string(),
            })?;
        Ok(buffer.as_slice().to_vec())
    }

    /// Compiles `module` to assembly text (PTX for `nvptx64`); see [`Codegen::emit`].
    pub fn emit_assembly(&self, module: &Module<'_>) -> Result<String, LlvmError> {
        let bytes = self.emit(module, OutputKind::Assembly)?;
        String::from_utf8(bytes).map_err(|_| LlvmError::NonUtf8Assembly {
            target: self.spec.to_string(),
        })
    }

    /// Compiles `module` to a relocatable object file; see [`Codegen::emit`].
    pub fn emit_object(&self, module: &Module<'_>) -> Result<Vec<u8>, LlvmError> {
        self.emit(module, OutputKind::Object)
    }
}

/// Compiles `module` for `spec` with default options; a shorthand for
/// [`Codegen::new`] followed by [`Codegen::emit`].
pub fn emit(
    spec: &TargetSpec,
    module: &Module<'_>,
    kind: OutputKind,
) -> Result<Vec<u8>, LlvmError> {
    Codegen::new(spec, CodegenOptions::default())?.emit(module, kind)
}
