//! The build driver: what `llmc build` does, from a model file to a bundle on disk. The CLI
//! turns flags into a [`BuildRequest`]; [`build`] loads the model, runs the compression
//! pipeline (calibrating where a pass needs it), measures it against the uncompressed model
//! when asked, generates code for the target and writes the bundle with its report.

use crate::bundle::{Outputs, WriteError};
use crate::compress::{self, CompressError};
use crate::eval::{EvalResult, Protocol};
use crate::frontend::{self, Model};
use crate::report::{BuildReport, EvalRecord, Footprint, PassRecord, Totals};
use llmc_backends::cpu::{BuildOptions, EmitRequest};
use llmc_backends::TargetSpec;
use llmc_passes::core::manager::{PassManager, PassTiming};
use llmc_passes::core::pass::{Pass, PassContext, Progress};
use llmc_passes::quant::Scheme;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What went wrong in a build. Nothing is written when a build fails before its bundle.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum BuildError {
    /// The model file or directory is not there, or is not a model.
    #[error("{path}: {msg}")]
    #[diagnostic(code(llmc::model::path))]
    Model {
        path: PathBuf,
        msg: String,
        #[help]
        help: Option<String>,
    },
    /// The model file is malformed or uses what llmc does not support.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Frontend(#[from] crate::frontend::FrontendError),
    /// A flag's value, two flags together, or the data a pass needs.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Compress(#[from] CompressError),
    /// A file of the bundle is there already.
    #[error("{0}: exists")]
    #[diagnostic(
        code(llmc::build::exists),
        help("pass --force to replace the bundle, or choose another -o")
    )]
    Exists(PathBuf),
    /// A pass failed on the model.
    #[error("{model}: {source}")]
    #[diagnostic(code(llmc::build::pass))]
    Pass {
        model: PathBuf,
        #[source]
        source: llmc_passes::PassError,
    },
    /// The compressed model lost more than `--max-ppl-increase` allows.
    #[error("{model}: the compressed model's perplexity rose {rise:.2}% ({reference:.3} -> {perplexity:.3}), over the budget of --max-ppl-increase {budget}%; no bundle was written")]
    #[diagnostic(
        code(llmc::build::budget),
        help("choose a gentler scheme (--quant w8a16), a calibrated method (--quant-method gptq or awq), a smaller --group, or a larger budget")
    )]
    OverBudget {
        model: PathBuf,
        rise: f64,
        reference: f64,
        perplexity: f64,
        budget: f64,
    },
    /// Code generation failed.
    #[error("{model}: {source}")]
    #[diagnostic(code(llmc::build::codegen))]
    Codegen {
        model: PathBuf,
        #[source]
        source: llmc_backends::cpu::BackendError,
    },
    /// The bundle could not be written.
    #[error(transparent)]
    #[diagnostic(code(llmc::build::write))]
    Write(#[from] WriteError),
}

/// How the compression pipeline is given.
#[derive(Clone, Debug)]
pub enum Compression {
    /// A pipeline string: `prune{method=wanda},quantize{bits=4,group=128,method=gptq}`.
    Pipeline(String),
    /// The short flags.
    Flags(CompressFlags),
}

/// The short compression flags of `llmc build`.
#[derive(Clone, Debug)]
pub struct CompressFlags {
    pub quant: Scheme,
    pub group: Option<u32>,
    pub method: String,
    pub bpw: Option<f64>,
    pub prune: Option<String>,
    pub lowrank: Option<String>,
    pub palettize: Option<String>,
    pub distill: Option<String>,
}

impl CompressFlags {
    /// Whether a flag chooses how linear weights are quantized.
    fn quantizes(&self) -> bool {
        self.quant != Scheme::None
            || self.group.is_some()
            || self.method != "rtn"
            || self.bpw.is_some()
    }

    /// Whether any flag asks for more than the defaults (`--quant none`, round to nearest).
    fn any(&self) -> bool {
        self.quantizes()
            || self.prune.is_some()
            || self.lowrank.is_some()
            || self.palettize.is_some()
            || self.distill.is_some()
    }
}

/// Where calibration text comes from.
#[derive(Clone, Debug)]
pub enum CalibSource {
    /// Text files (empty: the SOTU addresses 1950–1999 that setup fetches), cut into `count`
    /// windows of `len` tokens.
    Files {
        files: Vec<PathBuf>,
        count: usize,
        len: usize,
    },
    /// Text the model writes itself.
    SelfWritten { count: usize, len: usize, seed: u64 },
}

/// The evaluation after compression and the accuracy budget.
#[derive(Clone, Debug)]
pub struct EvalRequest {
    /// Text files (empty: the SOTU addresses 2016–2021).
    pub files: Vec<PathBuf>,
    pub protocol: Protocol,
    /// Fail the build when perplexity rises more than this many percent.
    pub budget: Option<f64>,
}

/// Everything a build needs, checked by the CLI.
pub struct BuildRequest {
    pub model: PathBuf,
    pub output: PathBuf,
    pub name: String,
    pub target: TargetSpec,
    pub outputs: Outputs,
    pub compression: Compression,
    /// Leave the output head (and an embedding tied to it) as the model has it.
    pub keep_head: bool,
    pub calib: CalibSource,
    pub eval: Option<EvalRequest>,
    /// Pass names after which to print the IR (`all`: every pass).
    pub dump_after: Vec<String>,
    pub max_context: i64,
    pub max_tokens: i64,
    /// Maxima of named input dimensions of a graph (not a decoder).
    pub dims: BTreeMap<String, i64>,
    /// Replace the files of a bundle already in `output`.
    pub force: bool,
}

/// What a build made.
pub struct Built {
    pub name: String,
    pub report: BuildReport,
    pub timings: Vec<PassTiming>,
    pub evaluation: Option<EvalResult>,
    /// Seconds spent collecting calibration statistics (and writing calibration text).
    pub calib_seconds: f64,
    pub state_bytes: u64,
    pub weights_bytes: usize,
    /// Seconds the build took, evaluation left out.
    pub seconds: f64,
    pub files: Vec<PathBuf>,
}

/// Reads a model file or directory, with an error that says what to pass instead.
pub fn load_model(path: &Path) -> Result<Model, BuildError> {
    let bad = |msg: String, help: &str| BuildError::Model {
        path: path.to_path_buf(),
        msg,
        help: Some(help.to_string()),
    };
    if !path.exists() {
        return Err(bad(
            "no such file".into(),
            "pass the path of a .gguf, .onnx or .safetensors model",
        ));
    }
    if path.is_dir() && !path.join("model.safetensors").is_file() {
        return Err(bad(
            "neither a bundle (no manifest.json) nor a model directory (no model.safetensors)"
                .into(),
            "pass a bundle directory written by llmc build, or a model file",
        ));
    }
    Ok(frontend::load(path)?)
}

/// The passes the request's compression names.
pub fn pipeline(c: &Compression, keep_head: bool) -> Result<Vec<Box<dyn Pass>>, BuildError> {
    let conflict = |msg: &str, help: &str| {
        BuildError::Compress(CompressError::Conflict {
            msg: msg.to_string(),
            help: Some(help.to_string()),
        })
    };
    let f = match c {
        Compression::Pipeline(p) => {
            return llmc_passes::pipeline(p).map_err(|e| {
                BuildError::Compress(CompressError::Flag {
                    flag: "--passes",
                    value: p.clone(),
                    msg: e.to_string(),
                    help: Some("llmc passes lists the passes and their options".into()),
                })
            })
        }
        Compression::Flags(f) => f,
    };
    let mut p = Vec::new();
    if let Some(spec) = &f.prune {
        p.push(compress::prune_pass(spec, f.distill.is_some())?);
    }
    if let Some(spec) = &f.lowrank {
        p.push(compress::lowrank_pass(spec)?);
    }
    if let Some(spec) = &f.palettize {
        if f.quantizes() {
            return Err(conflict(
                "--palettize and --quant/--group/--quant-method/--bpw both choose how linear weights are stored; give one or the other",
                "palettize alone (--palettize 16:128), or quantize alone (--quant w4a16)",
            ));
        }
        p.push(compress::palettize_pass(spec, keep_head)?);
    }
    p.extend(compress::preset_pipeline(
        f.quant, f.group, &f.method, keep_head, f.bpw,
    )?);
    if let Some(spec) = &f.distill {
        p.push(compress::distill_pass(spec)?);
    }
    Ok(p)
}

/// The compression given both as `--passes` and as short flags: an error that says which.
pub fn check_one_pipeline(passes: Option<&str>, flags: &CompressFlags) -> Result<(), BuildError> {
    if passes.is_some() && flags.any() {
        return Err(BuildError::Compress(CompressError::Conflict {
            msg: "--passes replaces --quant, --group, --quant-method, --bpw, --prune, --lowrank, --palettize and --distill; give one or the other".into(),
            help: Some(
                "put the quantization in the pipeline: quantize{bits=4,group=64,act=i8,method=gptq}"
                    .into(),
            ),
        }));
    }
    Ok(())
}

/// Compiles the model the request names into a bundle in `req.output`. `progress` hears how
/// long steps are getting on; `dump` receives the IR after the passes `dump_after` names.
pub fn build(
    req: &BuildRequest,
    progress: Progress,
    mut dump: impl FnMut(&str, &str),
) -> Result<Built, BuildError> {
    let start = Instant::now();
    let mut m = load_model(&req.model)?;
    if !req.force {
        let names = crate::bundle::file_names(
            &req.name,
            &Outputs {
                tokenizer: m.tokenizer.is_some(),
                ..req.outputs
            },
        );
        if let Some(p) = names
            .iter()
            .map(|n| req.output.join(n))
            .find(|p| p.exists())
        {
            return Err(BuildError::Exists(p));
        }
    }
    let mut pm = PassManager::new(pipeline(&req.compression, req.keep_head)?);
    pm.dump_after = req.dump_after.clone();
    if let Some(bad) = pm
        .dump_after
        .iter()
        .find(|d| *d != "all" && !pm.names().contains(&d.as_str()))
    {
        return Err(BuildError::Compress(CompressError::Flag {
            flag: "--dump-ir-after",
            value: bad.clone(),
            msg: "names no pass of the pipeline".into(),
            help: Some(format!("the pipeline runs: {}", pm.names().join(", "))),
        }));
    }
    let mut cx = PassContext {
        progress: Some(progress.clone()),
        ..Default::default()
    };
    cx.calib = calibration(&req.calib, &pm, &m, &progress, &mut cx.calib_seconds)?;
    let before = Footprint::of(&m.graph, !req.keep_head);
    let timings = pm
        .run(&mut m.graph, &mut cx, &mut dump)
        .map_err(|source| BuildError::Pass {
            model: req.model.clone(),
            source,
        })?;
    let evaluation = match &req.eval {
        Some(e) => Some(evaluate(req, e, &m, &progress)?),
        None => None,
    };
    let totals = Totals::new(before, Footprint::of(&m.graph, !req.keep_head));
    let opts = BuildOptions {
        name: req.name.clone(),
        max_context: req.max_context,
        max_tokens: req.max_tokens,
        dims: req.dims.clone(),
    };
    let bundle = llmc_backends::cpu::compile(
        &m.graph,
        &req.target,
        &opts,
        EmitRequest {
            llvm_ir: req.outputs.llvm_ir,
            asm: req.outputs.asm,
            embed_weights: req.outputs.embed_weights,
        },
    )
    .map_err(|source| BuildError::Codegen {
        model: req.model.clone(),
        source,
    })?;
    let report = BuildReport {
        passes: timings.iter().map(PassRecord::from).collect(),
        rows: std::mem::take(&mut cx.report),
        calibration: cx.calib.as_ref().map(|c| c.label.clone()),
        eval: evaluation.as_ref().map(EvalRecord::from),
        totals,
    };
    let files = crate::bundle::write_model_bundle(
        &bundle,
        &m,
        Some(&report),
        &req.output,
        &req.outputs,
        req.force,
    )?;
    Ok(Built {
        name: bundle.name.clone(),
        report,
        timings,
        calib_seconds: cx.calib_seconds,
        state_bytes: bundle.state_bytes,
        weights_bytes: bundle.weights.len(),
        seconds: start.elapsed().as_secs_f64() - evaluation.as_ref().map_or(0.0, |e| e.seconds),
        evaluation,
        files,
    })
}

/// The calibration data the pipeline needs (none when no pass calibrates and no text was
/// given).
fn calibration(
    source: &CalibSource,
    pm: &PassManager,
    m: &Model,
    progress: &Progress,
    seconds: &mut f64,
) -> Result<Option<llmc_passes::calib::Calibration>, BuildError> {
    match source {
        CalibSource::SelfWritten { .. } if !pm.needs_calibration() => {
            eprintln!("--calib-self: no pass of this pipeline calibrates, so the model writes no calibration text");
            Ok(None)
        }
        CalibSource::SelfWritten { count, len, seed } => {
            let t0 = Instant::now();
            let c = compress::self_calibration(m, *count, *len, *seed, Some(progress))?;
            *seconds += t0.elapsed().as_secs_f64();
            Ok(Some(c))
        }
        CalibSource::Files { files, count, len } => {
            if !pm.needs_calibration() && files.is_empty() {
                return Ok(None);
            }
            let files = if files.is_empty() {
                compress::sotu_files(1950, 1999, "--calib")?
            } else {
                files.clone()
            };
            Ok(Some(compress::calibration(m, &files, *count, *len)?))
        }
    }
}

/// The compressed model against the uncompressed one; an error when it lost more than the
/// budget allows.
fn evaluate(
    req: &BuildRequest,
    e: &EvalRequest,
    m: &Model,
    progress: &Progress,
) -> Result<EvalResult, BuildError> {
    let files = if e.files.is_empty() {
        compress::sotu_files(2016, 2021, "--eval")?
    } else {
        e.files.clone()
    };
    let res = compress::eval_against(m, &req.model, &files, e.protocol, Some(progress))?;
    if let Some(budget) = e.budget {
        let reference = res.reference_perplexity.unwrap_or(f64::NAN);
        let rise = (res.perplexity / reference - 1.0) * 100.0;
        if !(rise <= budget) {
            return Err(BuildError::OverBudget {
                model: req.model.clone(),
                rise,
                reference,
                perplexity: res.perplexity,
                budget,
            });
        }
    }
    Ok(res)
}
