//! The `llmc` command line: argument definitions and the commands behind them.

use crate::bundle::{BundleDir, BundleKind};
use crate::eval::{
    evaluate_with, interpreter_logits, join_texts, BundleScorer, Protocol, Scorer, WindowScorer,
};
use crate::frontend::{Model, ModelKind};
use crate::npy;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use clap::{Args, Parser, Subcommand};
use llmc_ir::{Session, Tensor};
use llmc_runtime::{Sampler, SamplerConfig};
use miette::{miette, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(
    name = "llmc",
    version,
    about = "Ahead-of-time compiler for compressed transformer models"
)]
pub struct Cli {
    /// Worker threads (default: one per core; for bench 1); bench takes a list to compare (1,2).
    #[arg(long, global = true, value_delimiter = ',', value_name = "N")]
    pub threads: Vec<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Describe a model: architecture, parameters, ops, weight bytes by encoding.
    Inspect(InspectArgs),
    /// Measure a language model (a bundle, or a model file in the interpreter) on text:
    /// perplexity, and KL / top-1 against a reference.
    Eval(EvalArgs),
    /// Run a bundle's compiled code, or a model file in the interpreter: generate text from a
    /// prompt, embed sentences, or run on .npy inputs.
    Run(RunArgs),
    /// Compile a model into a bundle: static library, C header, weights, manifest.
    Build(BuildArgs),
    /// List the passes a pipeline (--passes) can name, with their options.
    Passes(PassesArgs),
    /// Time a decoder bundle: prefill and decode tokens/s, and the decode's weight bandwidth.
    Bench(BenchArgs),
    /// List the targets llmc compiles for and the kernels each CPU's features select.
    Targets(TargetsArgs),
    /// Print the token ids of a text (with a bundle's or a model's tokenizer).
    Tokenize(TokenizeArgs),
    /// Print the text of token ids (with a bundle's or a model's tokenizer).
    Detokenize(DetokenizeArgs),
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Bundle directory (a decoder built for this machine).
    pub bundle: PathBuf,
    /// Tokens of the timed prefill, from an empty cache.
    #[arg(long, default_value_t = 128)]
    pub prefill: usize,
    /// Tokens in the cache when decode steps are timed.
    #[arg(long, default_value_t = 128)]
    pub context: usize,
    /// Decode steps timed per run.
    #[arg(long, default_value_t = 16)]
    pub decode: usize,
    /// Timed runs per measurement (after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Also measure the machine's read bandwidth and int8 peak, and compare against them.
    #[arg(long)]
    pub machine: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct TargetsArgs {
    /// Print the list as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// A bundle directory, a model file, or a tokenizer.json.
    pub tokenizer: PathBuf,
    /// The text to tokenize.
    pub text: String,
    /// Add the special tokens the tokenizer's post-processor adds ([CLS]/[SEP]).
    #[arg(long)]
    pub special: bool,
}

#[derive(Args, Debug)]
pub struct DetokenizeArgs {
    /// A bundle directory, a model file, or a tokenizer.json.
    pub tokenizer: PathBuf,
    /// Token ids (separated by spaces or commas).
    #[arg(required = true, value_delimiter = ',')]
    pub ids: Vec<String>,
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    pub model: PathBuf,
    /// Output directory.
    #[arg(short = 'o', long = "output", default_value = "out")]
    pub output: PathBuf,
    /// Bundle name: prefix of the C symbols and files (default: from the model's file name).
    #[arg(long)]
    pub name: Option<String>,
    /// Target triple or short name: host, x86_64, aarch64.
    #[arg(long, default_value = "host")]
    pub target: String,
    /// CPU to tune for and whose features to use (znver4, skylake-avx512, cortex-a76, ...).
    #[arg(long)]
    pub cpu: Option<String>,
    /// Feature switches, as clang takes them: +avx512vnni,-avx512f,+dotprod.
    #[arg(long)]
    pub features: Option<String>,
    /// Weight/activation scheme: none, f16, w8a16, w8a8, w4a16, w4a8, w3a16.
    #[arg(long, default_value = "none")]
    pub quant: String,
    /// Group size of 4-bit weights (32, 64, 128); 8-bit weights default to per channel.
    #[arg(long)]
    pub group: Option<u32>,
    /// Tokens the KV cache holds.
    #[arg(long, default_value_t = 2048)]
    pub max_context: i64,
    /// Tokens one prefill call may take.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: i64,
    /// Largest value of a named input dimension of a non-decoder graph: NAME=MAX (repeatable).
    #[arg(long = "dim", value_name = "NAME=MAX")]
    pub dims: Vec<String>,
    /// Extra outputs: llvm-ir, asm (comma-separated or repeated); so is always linked for a
    /// target this machine runs.
    #[arg(long, value_delimiter = ',')]
    pub emit: Vec<String>,
    /// Put the weights into the object (`<name>_weights`) instead of a `<name>.weights` file.
    #[arg(long)]
    pub embed_weights: bool,
    /// Entropy-code the weights file (lossless rANS, per 1 MiB chunk): smaller on disk; the
    /// bundle's `<name>_decode_weights` decodes it into a buffer of the plain size before init
    /// (what `llmc run`, `eval`, `bench` and the runtime's loader do).
    #[arg(long, conflicts_with = "embed_weights")]
    pub entropy: bool,
    /// Replace an existing bundle in the output directory.
    #[arg(long)]
    pub force: bool,
    /// The pass pipeline, instead of --quant: canonicalize,quantize{bits=4,group=128,act=i8}
    /// (see llmc passes).
    #[arg(long)]
    pub passes: Option<String>,
    /// Print the IR to stderr after this pass (repeatable; "all" for every pass).
    #[arg(long = "dump-ir-after", value_name = "PASS")]
    pub dump_ir_after: Vec<String>,
    /// How integer weights are chosen: rtn, gptq, awq, smoothquant (all but rtn calibrate).
    #[arg(long, default_value = "rtn")]
    pub quant_method: String,
    /// Prune linear weights before quantizing: wanda:0.5, magnitude:0.5, sparsegpt:0.5, 2:4,
    /// sparsegpt:2:4 (wanda and sparsegpt calibrate); or remove FFN channels: ffn:0.25
    /// (scored on calibration), ffn-prunenet:0.25 (spectral, no data); attention heads:
    /// heads:0.25 (query heads from every KV group), heads-kv:0.34 (whole KV groups); whole
    /// decoder layers: layers:4 (ShortGPT block influence); all structured ones but
    /// ffn-prunenet calibrate.
    #[arg(long, value_name = "SPEC")]
    pub prune: Option<String>,
    /// Factor linear weights W ≈ L·R after pruning: svd:0.7 or svd-llm:0.7 (calibrated) keep
    /// that fraction of each layer's values.
    #[arg(long, value_name = "SPEC")]
    pub lowrank: Option<String>,
    /// Weight sharing after low-rank, instead of --quant: ENTRIES per codebook, one codebook
    /// per linear weight (16) or per run of output rows (16:128); the k-means weighs each
    /// weight by its input's calibration energy (--calib).
    #[arg(long, value_name = "SPEC")]
    pub palettize: Option<String>,
    /// Local distillation, last: fit a bias correction per changed linear layer on calibration
    /// (--distill), plus a low-rank correction branch (--distill rank:8). With structured
    /// --prune it also compensates what left: removed channels and heads by their mean output,
    /// removed layers by a rank-64 map of the stream fitted on calibration.
    #[arg(long, value_name = "SPEC", num_args = 0..=1, default_missing_value = "bias")]
    pub distill: Option<String>,
    /// Mixed precision: average bits per quantized weight; the layers most sensitive on
    /// calibration move to int8 per channel until the target is met (e.g. --bpw 5.5).
    #[arg(long)]
    pub bpw: Option<f64>,
    /// Leave the output head (and an embedding tied to it) as they are.
    #[arg(long)]
    pub keep_head: bool,
    /// Calibration text files (default: the State of the Union addresses 1950–1999 that
    /// scripts/setup.sh fetches).
    #[arg(long, num_args = 1..)]
    pub calib: Vec<PathBuf>,
    /// Calibrate without data, on text the model writes itself: each window starts from a
    /// random token and continues by sampling the model (seeded by --calib-seed).
    #[arg(long, conflicts_with = "calib")]
    pub calib_self: bool,
    /// The seed of --calib-self's sampling.
    #[arg(long, default_value_t = 0x5eed, requires = "calib_self")]
    pub calib_seed: u64,
    /// Calibration windows, evenly spaced over the text (default 64; 16 with --calib-self).
    #[arg(long)]
    pub calib_windows: Option<usize>,
    /// Tokens per calibration window (default 512; 128 with --calib-self).
    #[arg(long)]
    pub calib_window: Option<usize>,
    /// Measure the compressed model against the uncompressed one on these text files
    /// (default with no files: the addresses 2016–2021, the evaluation protocol's text).
    #[arg(long, num_args = 0..)]
    pub eval: Option<Vec<PathBuf>>,
    /// Evaluation windows.
    #[arg(long, default_value_t = 16)]
    pub eval_windows: usize,
    /// Tokens per evaluation window.
    #[arg(long, default_value_t = 512)]
    pub eval_window: usize,
    /// Fail the build when perplexity rises more than this over the uncompressed model
    /// (e.g. 5%); evaluates as --eval does.
    #[arg(long, value_name = "PERCENT")]
    pub max_ppl_increase: Option<String>,
}

#[derive(Args, Debug)]
pub struct PassesArgs {
    /// Print the list as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Model file (.gguf, .onnx, .safetensors or a directory with model.safetensors).
    pub model: PathBuf,
    /// Print the graph's IR text.
    #[arg(long)]
    pub ir: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A decoder bundle directory (compiled code), or a model file (interpreter).
    pub model: PathBuf,
    /// Text files, joined in the order given (each stripped, separated by a blank line).
    #[arg(long, num_args = 1.., required = true)]
    pub text: Vec<PathBuf>,
    /// A reference model or bundle for KL divergence and top-1 agreement (same tokenizer).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Run model files in the reference interpreter (what a model file always does; bundle
    /// directories run their compiled code).
    #[arg(long)]
    pub interp: bool,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    pub window: usize,
    /// Number of windows, taken from the start of the text.
    #[arg(long, default_value_t = 16)]
    pub windows: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// A bundle directory (compiled code), or a model file (interpreter).
    pub model: PathBuf,
    /// Run a model file in the reference interpreter (what a model file always does; bundle
    /// directories run their compiled code).
    #[arg(long)]
    pub interp: bool,
    /// Text to continue (language models) or to embed (encoders; repeat for a batch).
    #[arg(long)]
    pub prompt: Vec<String>,
    /// Tokens to generate.
    #[arg(short = 'n', long = "tokens", default_value_t = 32)]
    pub tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample among the most likely tokens that together reach this probability.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0x5eed)]
    pub seed: u64,
    /// A named input from a .npy file: NAME=FILE.npy (repeatable).
    #[arg(long, value_name = "NAME=FILE")]
    pub input: Vec<String>,
    /// Where to write every output as NAME.npy.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Replace existing .npy files in the output directory.
    #[arg(long)]
    pub force: bool,
}

pub fn main_with(cli: Cli) -> Result<()> {
    if cli.threads.contains(&0) {
        return Err(miette!("--threads must be at least 1"));
    }
    let threads = match (&cli.command, cli.threads.as_slice()) {
        (Command::Bench(_), _) | (_, []) => None,
        (_, [t]) => Some(*t),
        (_, _) => {
            return Err(miette!(
                help = "only llmc bench compares thread counts",
                "--threads takes one number here"
            ))
        }
    };
    if let Some(t) = threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .map_err(|e| miette!("--threads: {e}"))?;
    }
    match cli.command {
        Command::Inspect(a) => inspect(a),
        Command::Eval(a) => eval(a, threads),
        Command::Run(a) => run(a, threads),
        Command::Build(a) => build(a),
        Command::Passes(a) => passes(a),
        Command::Bench(a) => bench(a, cli.threads),
        Command::Targets(a) => targets(a),
        Command::Tokenize(a) => tokenize(a),
        Command::Detokenize(a) => detokenize(a),
    }
}

fn load(path: &Path) -> Result<Model> {
    Ok(crate::driver::load_model(path)?)
}

/// An error of the interpreter or of compiled code, as a diagnostic.
fn run_error(e: impl Into<crate::eval::EvalError>) -> miette::Report {
    miette::Report::new(e.into())
}

/// A target llmc cannot build for, as a diagnostic.
fn target_error(e: llmc_backends::TargetError) -> miette::Report {
    miette!(
        code = "llmc::target",
        help = "llmc targets lists the targets, CPUs and features",
        "{e}"
    )
}

/// Reads a bundle directory's manifest.
fn open_bundle(path: &Path) -> Result<BundleDir> {
    Ok(BundleDir::open(path)?)
}

/// Threads for compiled code: `--threads`, else one per core.
fn bundle_threads(threads: Option<usize>) -> usize {
    threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// Refuses `--interp` on a bundle directory.
fn no_interp_on_bundle(path: &Path, interp: bool) -> Result<()> {
    if interp {
        return Err(miette!(
            help = "pass the model file to run it in the interpreter, or drop --interp",
            "{}: --interp runs a model file in the interpreter, and this is a compiled bundle",
            path.display()
        ));
    }
    Ok(())
}

fn inspect(a: InspectArgs) -> Result<()> {
    let m = load(&a.model)?;
    let g = &m.graph;
    if a.ir {
        print!("{}", llmc_ir::print(g));
        return Ok(());
    }
    let mut by_enc: BTreeMap<String, (usize, u64, u64)> = BTreeMap::new();
    for w in &g.weights {
        let dims: Vec<u64> = w.ty.shape.0.iter().filter_map(|d| d.fixed()).collect();
        let e = by_enc.entry(w.ty.enc.to_string()).or_default();
        e.0 += 1;
        e.1 += w.ty.shape.numel().unwrap_or(0);
        e.2 += w.ty.enc.byte_size(&dims).unwrap_or(0);
    }
    let ops = g.op_histogram();
    if a.json {
        let j = serde_json::json!({
            "path": m.path.display().to_string(),
            "architecture": m.architecture,
            "kind": m.kind,
            "parameters": g.param_count(),
            "inputs": g.inputs.iter().map(|(n, v)| (n.clone(), g.ty(*v).to_string())).collect::<BTreeMap<_, _>>(),
            "outputs": g.outputs.iter().map(|(n, v)| (n.clone(), g.ty(*v).to_string())).collect::<BTreeMap<_, _>>(),
            "ops": ops,
            "weights": by_enc.iter().map(|(k, v)| (k.clone(), serde_json::json!({"tensors": v.0, "elements": v.1, "bytes": v.2}))).collect::<BTreeMap<_, _>>(),
            "meta": g.meta,
        });
        println!("{}", serde_json::to_string_pretty(&j).expect("json"));
        return Ok(());
    }
    println!("model         {}", m.path.display());
    println!("architecture  {}", m.architecture);
    match &m.kind {
        ModelKind::CausalLm {
            vocab, max_context, ..
        } => {
            println!(
                "kind          causal language model (vocabulary {vocab}, context {max_context})"
            )
        }
        ModelKind::Encoder { hidden } => println!("kind          encoder (hidden size {hidden})"),
        ModelKind::Generic => println!("kind          graph"),
    }
    println!(
        "parameters    {} ({:.1} M)",
        g.param_count(),
        g.param_count() as f64 / 1e6
    );
    for (n, v) in &g.inputs {
        println!("input         {n}: {}", g.ty(*v));
    }
    for (n, v) in &g.outputs {
        println!("output        {n}: {}", g.ty(*v));
    }
    if !g.states.is_empty() {
        println!("state         {} tensors (KV cache)", g.states.len());
    }
    println!("\nweights by encoding");
    println!(
        "  {:<28} {:>7} {:>14} {:>14}",
        "encoding", "tensors", "elements", "bytes"
    );
    let total: u64 = by_enc.values().map(|v| v.2).sum();
    for (k, (n, el, by)) in &by_enc {
        println!("  {k:<28} {n:>7} {el:>14} {by:>14}");
    }
    println!(
        "  {:<28} {:>7} {:>14} {:>14}",
        "total",
        g.weights.len(),
        g.param_count(),
        total
    );
    println!("\nops ({} nodes)", g.nodes.len());
    for (k, n) in &ops {
        println!("  {k:<20} {n:>6}");
    }
    Ok(())
}

/// A language model to score text with: a model file in the interpreter, or a bundle.
enum Lm {
    Model(Box<Model>),
    Bundle(Box<BundleDir>, Box<llmc_runtime::Bundle>),
}

impl Lm {
    fn open(path: &Path, interp: bool, threads: Option<usize>) -> Result<Lm> {
        if BundleDir::is_bundle(path) {
            no_interp_on_bundle(path, interp)?;
            let bd = open_bundle(path)?;
            bd.expect_kind(BundleKind::Decoder, "eval")?;
            let rt = bd.load(bundle_threads(threads))?;
            return Ok(Lm::Bundle(Box::new(bd), Box::new(rt)));
        }
        Ok(Lm::Model(Box::new(load(path)?)))
    }

    fn scorer(&mut self) -> Result<Box<dyn WindowScorer + '_>> {
        match self {
            Lm::Model(m) => Ok(Box::new(Scorer::new(m)?)),
            Lm::Bundle(bd, rt) => {
                let vocab = bd.vocab.ok_or_else(|| {
                    miette!(
                        "{}: the manifest gives no vocabulary size",
                        bd.dir.display()
                    )
                })?;
                Ok(Box::new(BundleScorer::new(
                    rt,
                    vocab,
                    bd.max_tokens,
                    bd.max_context,
                    bd.dir.display().to_string(),
                )))
            }
        }
    }
}

fn eval(a: EvalArgs, threads: Option<usize>) -> Result<()> {
    let mut m = Lm::open(&a.model, a.interp, threads)?;
    let mut r = a
        .reference
        .as_ref()
        .map(|p| Lm::open(p, a.interp, threads))
        .transpose()?;
    let text = join_texts(&a.text)?;
    let ids = match &m {
        Lm::Model(m) => m
            .tokenizer
            .as_ref()
            .ok_or_else(|| miette!("{}: the model carries no tokenizer", m.path.display()))?
            .encode(&text, false),
        Lm::Bundle(bd, _) => bd.tokenizer()?.encode(&text, false),
    }?;
    let p = Protocol {
        window: a.window,
        windows: a.windows,
    };
    let bar = indicatif::ProgressBar::new(p.windows as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} windows, {elapsed} (eta {eta})",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    bar.set_message("evaluating");
    let mut scorer = m.scorer()?;
    let mut ref_scorer = match r.as_mut() {
        Some(r) => Some(r.scorer()?),
        None => None,
    };
    let res = evaluate_with(
        scorer.as_mut(),
        ref_scorer
            .as_deref_mut()
            .map(|s| s as &mut dyn WindowScorer),
        &ids,
        p,
        |w| bar.set_position(w as u64),
    )?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&res).expect("json"));
        return Ok(());
    }
    println!("model        {}", a.model.display());
    println!(
        "text         {} files, {} bytes, {} tokens",
        a.text.len(),
        text.len(),
        res.tokens
    );
    println!(
        "windows      {} x {} tokens, {} predicted",
        res.windows, res.window, res.predicted
    );
    println!("perplexity   {:.3}", res.perplexity);
    if let (Some(kl), Some(t1), Some(rp)) = (res.kl, res.top1, &a.reference) {
        println!("reference    {}", rp.display());
        println!("KL           {kl:.5} nats/token");
        println!("top-1        {:.2}%", t1 * 100.0);
    }
    println!("time         {:.1} s", res.seconds);
    Ok(())
}

fn run(a: RunArgs, threads: Option<usize>) -> Result<()> {
    if BundleDir::is_bundle(&a.model) {
        no_interp_on_bundle(&a.model, a.interp)?;
        return run_bundle(&a, threads);
    }
    let m = load(&a.model)?;
    match m.kind {
        ModelKind::CausalLm { .. } if a.input.is_empty() => generate(&m, &a),
        ModelKind::Encoder { .. } if a.input.is_empty() => embed(&m, &a),
        _ => run_npy(&m, &a),
    }
}

/// The prompt's token ids, checked against the context: BOS alone for an empty prompt.
fn prompt_ids(
    tok: &Tokenizer,
    a: &RunArgs,
    bos: Option<u32>,
    max_context: usize,
    whose: &str,
    fix: &str,
) -> Result<(String, Vec<u32>)> {
    let [prompt] = a.prompt.as_slice() else {
        return Err(miette!(
            help = "llmc run MODEL --prompt \"The capital of France is\" -n 16",
            "give one --prompt to continue"
        ));
    };
    let mut ids = tok.encode(prompt, false)?;
    if ids.is_empty() {
        ids.extend(bos);
    }
    if ids.is_empty() {
        return Err(miette!(
            "the prompt is empty and the model has no BOS token to start from"
        ));
    }
    if ids.len() + a.tokens > max_context {
        return Err(miette!(
            help = format!("generate fewer tokens with -n, or shorten the prompt{fix}"),
            "the prompt ({} tokens) plus {} new tokens exceed the context of {max_context} {whose}",
            ids.len(),
            a.tokens
        ));
    }
    Ok((prompt.clone(), ids))
}

/// Prints the prompt, then samples and prints tokens as they come; `step` takes the tokens
/// new to the cache and returns the last position's logits.
fn stream_generate(
    tok: &Tokenizer,
    prompt: &str,
    ids: Vec<u32>,
    eos: Option<u32>,
    a: &RunArgs,
    mut step: impl FnMut(&[u32]) -> Result<Vec<f32>>,
) -> Result<()> {
    let mut sampler = Sampler::new(SamplerConfig {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
    });
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{prompt}");
    let _ = out.flush();
    let mut stream = StreamDecoder::new();
    let mut next_in: Vec<u32> = ids;
    for _ in 0..a.tokens {
        let logits = step(&next_in)?;
        let next = sampler.sample(&logits);
        if Some(next) == eos {
            break;
        }
        let piece = stream.push(tok, next)?;
        let _ = write!(out, "{piece}");
        let _ = out.flush();
        next_in = vec![next];
    }
    let _ = writeln!(out);
    Ok(())
}

fn generate(m: &Model, a: &RunArgs) -> Result<()> {
    let ModelKind::CausalLm {
        vocab,
        max_context,
        bos,
        eos,
    } = m.kind
    else {
        unreachable!()
    };
    let tok = m
        .tokenizer
        .as_ref()
        .ok_or_else(|| miette!("{}: the model carries no tokenizer", m.path.display()))?;
    let (prompt, ids) = prompt_ids(tok, a, bos, max_context, "of the model", "")?;
    let mut session = Session::new(&m.graph).map_err(run_error)?;
    let mut pos = 0usize;
    stream_generate(tok, &prompt, ids, eos, a, |step| {
        let all = interpreter_logits(&mut session, step, pos, vocab)?;
        pos += step.len();
        Ok(all[all.len() - vocab..].to_vec())
    })
}

fn run_bundle(a: &RunArgs, threads: Option<usize>) -> Result<()> {
    let bd = open_bundle(&a.model)?;
    match bd.kind {
        BundleKind::Decoder => {
            if !a.input.is_empty() {
                return Err(miette!(
                    help = "llmc run BUNDLE --prompt \"The capital of France is\" -n 16",
                    "{}: a decoder bundle continues a --prompt; --input is for graph bundles",
                    bd.dir.display()
                ));
            }
            generate_bundle(&bd, a, threads)
        }
        BundleKind::Graph if !a.input.is_empty() => {
            let inputs = read_npy_inputs(a)?;
            let mut rt = bd.load(bundle_threads(threads))?;
            let outs = bd.run_graph(&mut rt, &inputs)?;
            write_outputs(a, &outs)
        }
        BundleKind::Graph if bd.model_kind == "encoder" => embed_bundle(&bd, a, threads),
        BundleKind::Graph => {
            let names: Vec<String> = bd
                .inputs()?
                .into_iter()
                .map(|i| format!("--input {}=FILE.npy", i.name))
                .collect();
            Err(miette!(
                help = format!("llmc run {} {}", bd.dir.display(), names.join(" ")),
                "{}: give the graph's inputs as .npy files",
                bd.dir.display()
            ))
        }
    }
}

fn generate_bundle(bd: &BundleDir, a: &RunArgs, threads: Option<usize>) -> Result<()> {
    let tok = bd.tokenizer()?;
    let vocab = bd.vocab.ok_or_else(|| {
        miette!(
            "{}: the manifest gives no vocabulary size",
            bd.dir.display()
        )
    })?;
    let fix = ", or rebuild the bundle with a larger --max-context";
    let (prompt, ids) = prompt_ids(
        &tok,
        a,
        bd.bos,
        bd.max_context,
        "the bundle was built for",
        fix,
    )?;
    let mut rt = bd.load(bundle_threads(threads))?;
    let chunk = bd.max_tokens.max(1);
    let mut logits = vec![0f32; vocab];
    stream_generate(&tok, &prompt, ids, bd.eos, a, |step| {
        let toks: Vec<i32> = step.iter().map(|&t| t as i32).collect();
        for c in toks.chunks(chunk) {
            rt.prefill_last_into(c, &mut logits).map_err(run_error)?;
        }
        Ok(logits.clone())
    })
}

/// Creates the output directory; refuses to replace files unless `force`.
fn output_path(a: &RunArgs, name: &str) -> Result<PathBuf> {
    let dir = a.output_dir.as_ref().ok_or_else(|| {
        miette!(
            help = "add --output-dir DIR",
            "where should the outputs go?"
        )
    })?;
    std::fs::create_dir_all(dir).map_err(|e| miette!("{}: {e}", dir.display()))?;
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let p = dir.join(format!("{safe}.npy"));
    if p.exists() && !a.force {
        return Err(miette!(
            help = "pass --force to replace it, or choose another --output-dir",
            "{} exists",
            p.display()
        ));
    }
    Ok(p)
}

fn write_outputs(a: &RunArgs, outs: &[(String, Tensor)]) -> Result<()> {
    let paths: Vec<PathBuf> = outs
        .iter()
        .map(|(n, _)| output_path(a, n))
        .collect::<Result<_>>()?;
    for ((name, t), p) in outs.iter().zip(paths) {
        npy::write(&p, t)?;
        println!("{name}: {} {:?} -> {}", t.dtype(), t.shape, p.display());
    }
    Ok(())
}

/// The encoder inputs of a batch of sentences, padded to the longest: `input_ids`,
/// `attention_mask` and, when the graph takes it, zero `token_type_ids`.
fn encode_sentences(
    tok: &Tokenizer,
    prompts: &[String],
    token_types: bool,
) -> Result<Vec<(String, Tensor)>> {
    if prompts.is_empty() {
        return Err(miette!(
            help =
                "llmc run MODEL --prompt \"first sentence\" --prompt \"second\" --output-dir out/",
            "give the sentences to embed with --prompt"
        ));
    }
    let enc: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| tok.encode(p, true))
        .collect::<Result<_, _>>()?;
    let b = enc.len();
    let s = enc.iter().map(|e| e.len()).max().unwrap_or(0);
    let pad = tok.token_to_id("[PAD]").unwrap_or(0) as i64;
    let mut ids = vec![pad; b * s];
    let mut mask = vec![0i64; b * s];
    for (i, e) in enc.iter().enumerate() {
        for (j, &t) in e.iter().enumerate() {
            ids[i * s + j] = t as i64;
            mask[i * s + j] = 1;
        }
    }
    let mut inputs = vec![
        ("input_ids".to_string(), Tensor::i64(vec![b, s], ids)),
        ("attention_mask".to_string(), Tensor::i64(vec![b, s], mask)),
    ];
    if token_types {
        inputs.push((
            "token_type_ids".to_string(),
            Tensor::i64(vec![b, s], vec![0; b * s]),
        ));
    }
    Ok(inputs)
}

fn embed(m: &Model, a: &RunArgs) -> Result<()> {
    let tok = m
        .tokenizer
        .as_ref()
        .ok_or_else(|| miette!("{}: the model carries no tokenizer", m.path.display()))?;
    let token_types = m.graph.inputs.iter().any(|(n, _)| n == "token_type_ids");
    let inputs = encode_sentences(tok, &a.prompt, token_types)?;
    let refs: Vec<(&str, Tensor)> = inputs
        .iter()
        .map(|(n, t)| (n.as_str(), t.clone()))
        .collect();
    let mut all = Session::new(&m.graph)
        .and_then(|mut s| s.run(&refs))
        .map_err(run_error)?;
    all.push(inputs[1].clone());
    write_outputs(a, &all)
}

fn embed_bundle(bd: &BundleDir, a: &RunArgs, threads: Option<usize>) -> Result<()> {
    let tok = bd.tokenizer()?;
    let wanted = bd.inputs()?;
    let token_types = wanted.iter().any(|i| i.name == "token_type_ids");
    let mut inputs = encode_sentences(&tok, &a.prompt, token_types)?;
    inputs.retain(|(n, _)| wanted.iter().any(|w| &w.name == n));
    let mask = inputs.iter().find(|(n, _)| n == "attention_mask").cloned();
    let mut rt = bd.load(bundle_threads(threads))?;
    let mut all = bd.run_graph(&mut rt, &inputs)?;
    all.extend(mask);
    write_outputs(a, &all)
}

/// The `--input NAME=FILE.npy` tensors.
fn read_npy_inputs(a: &RunArgs) -> Result<Vec<(String, Tensor)>> {
    let mut inputs: Vec<(String, Tensor)> = Vec::new();
    for spec in &a.input {
        let (name, file) = spec.split_once('=').ok_or_else(|| {
            miette!(
                help = "write --input input_ids=ids.npy",
                "--input '{spec}' must be NAME=FILE.npy"
            )
        })?;
        let t = npy::read(Path::new(file))?;
        inputs.push((name.to_string(), t));
    }
    Ok(inputs)
}

fn run_npy(m: &Model, a: &RunArgs) -> Result<()> {
    let inputs = read_npy_inputs(a)?;
    let refs: Vec<(&str, Tensor)> = inputs
        .iter()
        .map(|(n, t)| (n.as_str(), t.clone()))
        .collect();
    let outs = Session::new(&m.graph)
        .and_then(|mut s| s.run(&refs))
        .map_err(run_error)?;
    write_outputs(a, &outs)
}

/// A C identifier from a model's file name.
fn default_name(model: &Path) -> String {
    let stem = model
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model");
    let stem = if model.is_dir() {
        model
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("model")
    } else {
        stem
    };
    let mut s: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_alphabetic()) {
        s.insert_str(0, "m_");
    }
    s
}

fn build(a: BuildArgs) -> Result<()> {
    use crate::driver::{BuildRequest, CalibSource, CompressFlags, Compression, EvalRequest};
    use llmc_passes::quant::Scheme;
    let quant = Scheme::parse(&a.quant).ok_or_else(|| {
        miette!(
            code = "llmc::build::flag",
            help = format!("choose one of {}", Scheme::NAMES.join(", ")),
            "--quant '{}' is not a scheme llmc knows",
            a.quant
        )
    })?;
    let mut out = crate::bundle::Outputs {
        embed_weights: a.embed_weights,
        entropy: a.entropy,
        ..Default::default()
    };
    for e in &a.emit {
        match e.as_str() {
            "so" => out.so = true,
            "llvm-ir" => out.llvm_ir = true,
            "asm" => out.asm = true,
            "obj" => {}
            other => {
                return Err(miette!(
                    code = "llmc::build::flag",
                    help = "--emit takes so, llvm-ir, asm, obj",
                    "--emit '{other}' is not an output llmc writes"
                ))
            }
        }
    }
    let mut dims = BTreeMap::new();
    for d in &a.dims {
        let (n, v) = d.split_once('=').ok_or_else(|| {
            miette!(
                code = "llmc::build::flag",
                help = "write --dim seq=128",
                "--dim '{d}' must be NAME=MAX"
            )
        })?;
        let v: i64 = v.parse().map_err(|_| {
            miette!(
                code = "llmc::build::flag",
                "--dim '{d}': '{v}' is not a number"
            )
        })?;
        if v < 1 {
            return Err(miette!(
                code = "llmc::build::flag",
                "--dim '{d}': the maximum must be at least 1"
            ));
        }
        dims.insert(n.to_string(), v);
    }
    let target =
        llmc_backends::TargetSpec::parse(&a.target, a.cpu.as_deref(), a.features.as_deref())
            .map_err(target_error)?;
    if out.so && !target.runs_here() {
        return Err(miette!(
            code = "llmc::build::flag",
            help = "link lib<name>.a into your program with the target's toolchain instead",
            "--emit so links with this machine's C compiler, which cannot link code for {}",
            target.triple()
        ));
    }
    // a bundle for this machine always carries its shared library, so `llmc run`, `eval`
    // and `bench` take it as it is
    out.so |= target.runs_here();
    let flags = CompressFlags {
        quant,
        group: a.group,
        method: a.quant_method.clone(),
        bpw: a.bpw,
        prune: a.prune.clone(),
        lowrank: a.lowrank.clone(),
        palettize: a.palettize.clone(),
        distill: a.distill.clone(),
    };
    crate::driver::check_one_pipeline(a.passes.as_deref(), &flags)?;
    let calib = if a.calib_self {
        CalibSource::SelfWritten {
            count: a.calib_windows.unwrap_or(16),
            len: a.calib_window.unwrap_or(128),
            seed: a.calib_seed,
        }
    } else {
        CalibSource::Files {
            files: a.calib.clone(),
            count: a.calib_windows.unwrap_or(64),
            len: a.calib_window.unwrap_or(512),
        }
    };
    let budget = a
        .max_ppl_increase
        .as_deref()
        .map(crate::compress::parse_percent)
        .transpose()?;
    let eval = (a.eval.is_some() || budget.is_some()).then(|| EvalRequest {
        files: a.eval.clone().unwrap_or_default(),
        protocol: Protocol {
            window: a.eval_window,
            windows: a.eval_windows,
        },
        budget,
    });
    let req = BuildRequest {
        name: a.name.clone().unwrap_or_else(|| default_name(&a.model)),
        model: a.model.clone(),
        output: a.output.clone(),
        target,
        outputs: out,
        compression: match &a.passes {
            Some(p) => Compression::Pipeline(p.clone()),
            None => Compression::Flags(flags),
        },
        keep_head: a.keep_head,
        calib,
        eval,
        dump_after: a.dump_ir_after.clone(),
        max_context: a.max_context,
        max_tokens: a.max_tokens,
        dims,
        force: a.force,
    };
    let (progress, _bar) = crate::compress::progress_bar();
    let built = crate::driver::build(&req, progress, |pass, ir| {
        eprintln!("// IR after {pass}\n{ir}")
    })?;
    let report = &built.report;
    report.print_table();
    if let Some(c) = &report.calibration {
        println!("calibration: {c} in {:.1} s", built.calib_seconds);
    }
    if let Some(e) = &built.evaluation {
        let r = e.reference_perplexity.unwrap_or(f64::NAN);
        println!(
            "eval: {} windows x {} tokens ({} predicted): perplexity {:.3} (uncompressed {:.3}, {:+.2}%), KL {:.5}, top-1 {:.2}%",
            e.windows,
            e.window,
            e.predicted,
            e.perplexity,
            r,
            (e.perplexity / r - 1.0) * 100.0,
            e.kl.unwrap_or(0.0),
            e.top1.unwrap_or(0.0) * 100.0
        );
    }
    let eval_s = built.evaluation.as_ref().map_or(0.0, |e| e.seconds);
    println!(
        "built {} for {} cpu={} in {:.1} s{}",
        built.name,
        req.target.llvm_triple(),
        req.target.cpu(),
        built.seconds,
        if eval_s > 0.0 {
            format!(" (plus {eval_s:.1} s of evaluation)")
        } else {
            String::new()
        }
    );
    let quantized = report.weight_rows("quantize");
    if let Some(first) = quantized.first() {
        let worst = quantized.iter().map(|r| r.rel_error).fold(0.0, f64::max);
        println!(
            "quantized {} linear weights to {}: {} -> {} bytes, worst relative error {worst:.4}",
            quantized.len(),
            first.to,
            quantized.iter().map(|r| r.bytes_before).sum::<u64>(),
            quantized.iter().map(|r| r.bytes_after).sum::<u64>(),
        );
    }
    println!(
        "state {} bytes, weights {} bytes{}",
        built.state_bytes,
        built.weights_bytes,
        if req.outputs.embed_weights {
            " (embedded in the object)"
        } else {
            ""
        }
    );
    for t in &built.timings {
        println!("pass {:<14} {:>8.2} s", t.name, t.time.as_secs_f64());
    }
    for f in &built.files {
        println!("  {}", f.display());
    }
    Ok(())
}

fn bench(a: BenchArgs, threads: Vec<usize>) -> Result<()> {
    if !BundleDir::is_bundle(&a.bundle) {
        return Err(miette!(
            help = "llmc build MODEL -o DIR (for this machine), then llmc bench DIR",
            "{}: not a bundle directory (no manifest.json)",
            a.bundle.display()
        ));
    }
    let bd = open_bundle(&a.bundle)?;
    let threads = if threads.is_empty() { vec![1] } else { threads };
    let opts = crate::bench::BenchOptions {
        threads,
        prefill: a.prefill,
        context: a.context,
        decode: a.decode,
        runs: a.runs,
        machine: a.machine,
    };
    let report = crate::bench::bench(&bd, &opts, |msg| eprintln!("{msg}"))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("json"));
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// A representative target for `llmc targets`.
struct TargetRow {
    arch: &'static str,
    cpu: &'static str,
    features: Option<&'static str>,
    examples: &'static str,
}

const TARGET_ROWS: &[TargetRow] = &[
    TargetRow {
        arch: "x86_64",
        cpu: "x86-64",
        features: None,
        examples: "any x86-64 (SSE2 baseline)",
    },
    TargetRow {
        arch: "x86_64",
        cpu: "x86-64-v3",
        features: None,
        examples: "haswell, skylake, znver2, znver3, alderlake",
    },
    TargetRow {
        arch: "x86_64",
        cpu: "skylake-avx512",
        features: None,
        examples: "skylake-avx512, x86-64-v4",
    },
    TargetRow {
        arch: "x86_64",
        cpu: "znver4",
        features: None,
        examples: "znver4, sapphirerapids, cascadelake, icelake-server (VNNI)",
    },
    TargetRow {
        arch: "aarch64",
        cpu: "generic",
        features: None,
        examples: "cortex-a53, cortex-a72, any AArch64 (NEON)",
    },
    TargetRow {
        arch: "aarch64",
        cpu: "cortex-a76",
        features: None,
        examples: "cortex-a76, neoverse-n1, apple-m1 (+dotprod)",
    },
    TargetRow {
        arch: "aarch64",
        cpu: "neoverse-n2",
        features: None,
        examples: "neoverse-n2, neoverse-v1, cortex-a710 (+i8mm)",
    },
];

fn targets(a: TargetsArgs) -> Result<()> {
    use llmc_backends::cpu::isa::{describe, isa_of};
    use llmc_backends::TargetSpec;
    let mut rows = Vec::new();
    for r in TARGET_ROWS {
        let spec = TargetSpec::parse(r.arch, Some(r.cpu), r.features).map_err(target_error)?;
        rows.push(serde_json::json!({
            "arch": r.arch,
            "triple": spec.llvm_triple(),
            "cpu": r.cpu,
            "features": r.features,
            "examples": r.examples,
            "status": "supported",
            "kernels": describe(&isa_of(&spec)),
        }));
    }
    let host = TargetSpec::host().ok().map(|h| {
        serde_json::json!({
            "triple": h.llvm_triple(),
            "cpu": h.cpu(),
            "kernels": describe(&isa_of(&h)),
        })
    });
    let ptx = serde_json::json!({
        "arch": "nvptx64",
        "triple": llmc_backends::Arch::Nvptx64.default_triple(),
        "cpu": llmc_backends::Arch::Nvptx64.default_cpu(),
        "features": null,
        "examples": "NVIDIA GPUs (sm_75 and newer)",
        "status": "not yet",
        "kernels": "not yet: CUDA code generation is planned",
    });
    rows.push(ptx);
    if a.json {
        let j = serde_json::json!({"targets": rows, "host": host});
        println!("{}", serde_json::to_string_pretty(&j).expect("json"));
        return Ok(());
    }
    println!("--target  --cpu            status     kernels");
    for r in &rows {
        println!(
            "{:<9} {:<16} {:<10} {}",
            r["arch"].as_str().unwrap_or(""),
            r["cpu"].as_str().unwrap_or(""),
            r["status"].as_str().unwrap_or(""),
            r["kernels"].as_str().unwrap_or("")
        );
        println!("{:<38}e.g. {}", "", r["examples"].as_str().unwrap_or(""));
    }
    if let Some(h) = host {
        println!(
            "\nhost: {} cpu={}: {}",
            h["triple"].as_str().unwrap_or(""),
            h["cpu"].as_str().unwrap_or(""),
            h["kernels"].as_str().unwrap_or("")
        );
    }
    println!("\n--target takes host, x86_64, aarch64 or a triple; --cpu and --features (+dotprod,-avx512f) refine it.");
    Ok(())
}

/// A tokenizer from a bundle directory, a `tokenizer.json`, or a model file.
fn tokenizer_at(path: &Path) -> Result<Tokenizer> {
    if BundleDir::is_bundle(path) {
        return open_bundle(path)?.tokenizer().map_err(Into::into);
    }
    if path.extension().is_some_and(|e| e == "json") && path.is_file() {
        return Tokenizer::from_file(path).map_err(Into::into);
    }
    let m = load(path)?;
    m.tokenizer
        .ok_or_else(|| miette!("{}: the model carries no tokenizer", path.display()))
}

fn tokenize(a: TokenizeArgs) -> Result<()> {
    let tok = tokenizer_at(&a.tokenizer)?;
    let ids = tok.encode(&a.text, a.special)?;
    let s: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    println!("{}", s.join(" "));
    Ok(())
}

fn detokenize(a: DetokenizeArgs) -> Result<()> {
    let tok = tokenizer_at(&a.tokenizer)?;
    let mut ids = Vec::new();
    for part in &a.ids {
        for w in part.split_whitespace() {
            let id: u32 = w.parse().map_err(|_| {
                miette!(
                    help = "llmc detokenize BUNDLE 504 3575 282",
                    "'{w}' is not a token id"
                )
            })?;
            if id as usize >= tok.vocab_size() {
                return Err(miette!(
                    "token id {id} is outside the vocabulary of {}",
                    tok.vocab_size()
                ));
            }
            ids.push(id);
        }
    }
    let text = tok.decode(&ids)?;
    println!("{text}");
    Ok(())
}

fn passes(a: PassesArgs) -> Result<()> {
    let infos = llmc_passes::registry::infos();
    if a.json {
        let j: Vec<serde_json::Value> = infos
            .iter()
            .map(|i| {
                serde_json::json!({
                    "name": i.name,
                    "summary": i.summary,
                    "options": i.options.iter().map(|o| serde_json::json!({"name": o.name, "kind": o.kind.to_string(), "default": o.default, "help": o.help})).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&j).expect("json"));
        return Ok(());
    }
    for i in infos {
        println!("{:<14} {}", i.name, i.summary);
        for o in i.options {
            println!(
                "    {:<10} {:<22} default {:<6} {}",
                o.name, o.kind, o.default, o.help
            );
        }
    }
    println!("\npipelines: --passes \"canonicalize,quantize{{bits=4,group=128,act=i8}}\"");
    Ok(())
}
