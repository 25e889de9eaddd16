//! The `llmc` command line: argument definitions and the commands behind them.

use crate::eval::{evaluate, join_texts, Protocol};
use crate::frontend::{self, Model, ModelKind};
use crate::npy;
use crate::tokenizer::StreamDecoder;
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
    /// Worker threads (default: one per core).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Describe a model: architecture, parameters, ops, weight bytes by encoding.
    Inspect(InspectArgs),
    /// Measure a language model on text: perplexity, and KL / top-1 against a reference.
    Eval(EvalArgs),
    /// Run a model: generate text from a prompt, embed sentences, or run on .npy inputs.
    Run(RunArgs),
    /// Compile a model into a bundle: static library, C header, weights, manifest.
    Build(BuildArgs),
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
    /// Weight/activation scheme: none, f16, w8a16, w8a8, w4a16, w4a8.
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
    /// Extra outputs: so, llvm-ir, asm (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    pub emit: Vec<String>,
    /// Replace an existing bundle in the output directory.
    #[arg(long)]
    pub force: bool,
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
    pub model: PathBuf,
    /// Text files, joined in the order given (each stripped, separated by a blank line).
    #[arg(long, num_args = 1.., required = true)]
    pub text: Vec<PathBuf>,
    /// A reference model for KL divergence and top-1 agreement (same tokenizer).
    #[arg(long)]
    pub reference: Option<PathBuf>,
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
    pub model: PathBuf,
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
    if let Some(t) = cli.threads {
        if t == 0 {
            return Err(miette!("--threads must be at least 1"));
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .map_err(|e| miette!("--threads: {e}"))?;
    }
    match cli.command {
        Command::Inspect(a) => inspect(a),
        Command::Eval(a) => eval(a),
        Command::Run(a) => run(a),
        Command::Build(a) => build(a),
    }
}

fn load(path: &Path) -> Result<Model> {
    if !path.exists() {
        return Err(miette!(
            help = "pass the path of a .gguf, .onnx or .safetensors model",
            "{}: no such file",
            path.display()
        ));
    }
    frontend::load(path).map_err(|e| miette!("{e}"))
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
            "kind": format!("{:?}", m.kind),
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

fn eval(a: EvalArgs) -> Result<()> {
    let m = load(&a.model)?;
    let r = a.reference.as_ref().map(|p| load(p)).transpose()?;
    let tok = m
        .tokenizer
        .as_ref()
        .ok_or_else(|| miette!("{}: the model carries no tokenizer", m.path.display()))?;
    let text = join_texts(&a.text).map_err(|e| miette!("{e}"))?;
    let ids = tok.encode(&text, false).map_err(|e| miette!("{e}"))?;
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
    let res = evaluate(&m, r.as_ref(), &ids, p, |w| bar.set_position(w as u64))
        .map_err(|e| miette!("{e}"))?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&res).expect("json"));
        return Ok(());
    }
    println!("model        {}", m.path.display());
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

fn run(a: RunArgs) -> Result<()> {
    let m = load(&a.model)?;
    match m.kind {
        ModelKind::CausalLm { .. } if a.input.is_empty() => generate(&m, &a),
        ModelKind::Encoder { .. } if a.input.is_empty() => embed(&m, &a),
        _ => run_npy(&m, &a),
    }
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
    let [prompt] = a.prompt.as_slice() else {
        return Err(miette!(
            help = "llmc run MODEL --prompt \"The capital of France is\" -n 16",
            "give one --prompt to continue"
        ));
    };
    let mut ids = tok.encode(prompt, false).map_err(|e| miette!("{e}"))?;
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
            help = "generate fewer tokens with -n, or shorten the prompt",
            "the prompt ({} tokens) plus {} new tokens exceed the context of {max_context}",
            ids.len(),
            a.tokens
        ));
    }
    let mut session = Session::new(&m.graph).map_err(|e| miette!("{e}"))?;
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
    let mut step: Vec<u32> = ids.clone();
    let mut pos = 0usize;
    for _ in 0..a.tokens {
        let n = step.len();
        let tokens = Tensor::i64(vec![1, n], step.iter().map(|&t| t as i64).collect());
        let positions = Tensor::i64(vec![1, n], (pos as i64..(pos + n) as i64).collect());
        let res = session
            .run(&[("tokens", tokens), ("positions", positions)])
            .map_err(|e| miette!("{e}"))?;
        pos += n;
        let logits = &res
            .iter()
            .find(|(k, _)| k == "logits")
            .ok_or_else(|| miette!("the graph has no 'logits' output"))?
            .1;
        let all = logits.to_f32_vec();
        let next = sampler.sample(&all[(n - 1) * vocab..n * vocab]);
        if Some(next) == eos {
            break;
        }
        let piece = stream.push(tok, next).map_err(|e| miette!("{e}"))?;
        let _ = write!(out, "{piece}");
        let _ = out.flush();
        step = vec![next];
    }
    let _ = writeln!(out);
    Ok(())
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
        npy::write(&p, t).map_err(|e| miette!("{e}"))?;
        println!("{name}: {} {:?} -> {}", t.dtype(), t.shape, p.display());
    }
    Ok(())
}

fn embed(m: &Model, a: &RunArgs) -> Result<()> {
    let tok = m
        .tokenizer
        .as_ref()
        .ok_or_else(|| miette!("{}: the model carries no tokenizer", m.path.display()))?;
    if a.prompt.is_empty() {
        return Err(miette!(
            help =
                "llmc run MODEL --prompt \"first sentence\" --prompt \"second\" --output-dir out/",
            "give the sentences to embed with --prompt"
        ));
    }
    let enc: Vec<Vec<u32>> = a
        .prompt
        .iter()
        .map(|p| tok.encode(p, true))
        .collect::<Result<_, _>>()
        .map_err(|e| miette!("{e}"))?;
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
        ("input_ids", Tensor::i64(vec![b, s], ids)),
        ("attention_mask", Tensor::i64(vec![b, s], mask.clone())),
    ];
    if m.graph.inputs.iter().any(|(n, _)| n == "token_type_ids") {
        inputs.push(("token_type_ids", Tensor::i64(vec![b, s], vec![0; b * s])));
    }
    let outs = Session::new(&m.graph)
        .and_then(|mut s| s.run(&inputs))
        .map_err(|e| miette!("{e}"))?;
    let mut all = outs;
    all.push(("attention_mask".to_string(), Tensor::i64(vec![b, s], mask)));
    write_outputs(a, &all)
}

fn run_npy(m: &Model, a: &RunArgs) -> Result<()> {
    let mut inputs: Vec<(String, Tensor)> = Vec::new();
    for spec in &a.input {
        let (name, file) = spec.split_once('=').ok_or_else(|| {
            miette!(
                help = "write --input input_ids=ids.npy",
                "--input '{spec}' must be NAME=FILE.npy"
            )
        })?;
        let t = npy::read(Path::new(file)).map_err(|e| miette!("{e}"))?;
        inputs.push((name.to_string(), t));
    }
    let refs: Vec<(&str, Tensor)> = inputs
        .iter()
        .map(|(n, t)| (n.as_str(), t.clone()))
        .collect();
    let outs = Session::new(&m.graph)
        .and_then(|mut s| s.run(&refs))
        .map_err(|e| miette!("{e}"))?;
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
    use llmc_backends::cpu::{BuildOptions, EmitRequest};
    use llmc_passes::quant::{QuantOptions, Scheme};
    let scheme = Scheme::parse(&a.quant).ok_or_else(|| {
        miette!(
            help = format!("choose one of {}", Scheme::NAMES.join(", ")),
            "--quant '{}' is not a scheme llmc knows",
            a.quant
        )
    })?;
    let mut out = crate::bundle::Outputs::default();
    for e in &a.emit {
        match e.as_str() {
            "so" => out.so = true,
            "llvm-ir" => out.llvm_ir = true,
            "asm" => out.asm = true,
            "obj" => {}
            other => {
                return Err(miette!(
                    help = "--emit takes so, llvm-ir, asm, obj",
                    "--emit '{other}' is not an output llmc writes"
                ))
            }
        }
    }
    let mut dims = std::collections::BTreeMap::new();
    for d in &a.dims {
        let (n, v) = d
            .split_once('=')
            .ok_or_else(|| miette!(help = "write --dim seq=128", "--dim '{d}' must be NAME=MAX"))?;
        let v: i64 = v
            .parse()
            .map_err(|_| miette!("--dim '{d}': '{v}' is not a number"))?;
        if v < 1 {
            return Err(miette!("--dim '{d}': the maximum must be at least 1"));
        }
        dims.insert(n.to_string(), v);
    }
    let spec = llmc_backends::TargetSpec::parse(&a.target, a.cpu.as_deref(), a.features.as_deref())
        .map_err(|e| miette!("{e}"))?;
    let start = std::time::Instant::now();
    let mut m = load(&a.model)?;
    let qopts = QuantOptions::preset(scheme, a.group);
    let report = llmc_passes::quant::quantize(&mut m.graph, &qopts).map_err(|e| miette!("{e}"))?;
    let name = a.name.clone().unwrap_or_else(|| default_name(&a.model));
    let opts = BuildOptions {
        name,
        max_context: a.max_context,
        max_tokens: a.max_tokens,
        dims,
    };
    let bundle = llmc_backends::cpu::compile(
        &m.graph,
        &spec,
        &opts,
        EmitRequest {
            llvm_ir: out.llvm_ir,
            asm: out.asm,
        },
    )
    .map_err(|e| miette!("{}: {e}", a.model.display()))?;
    let files = crate::bundle::write_bundle(&bundle, &a.output, &out, a.force)
        .map_err(|e| miette!("{e}"))?;
    let (before, after): (u64, u64) = report
        .iter()
        .fold((0, 0), |(x, y), r| (x + r.bytes_before, y + r.bytes_after));
    println!(
        "built {} for {spec} in {:.1} s",
        bundle.name,
        start.elapsed().as_secs_f64()
    );
    if !report.is_empty() {
        let worst = report.iter().map(|r| r.rel_error).fold(0.0, f64::max);
        println!("quantized {} linear weights to {}: {before} -> {after} bytes, worst relative error {worst:.4}", report.len(), report[0].to);
    }
    println!(
        "state {} bytes, weights {} bytes",
        bundle.state_bytes,
        bundle.weights.len()
    );
    for f in files {
        println!("  {}", f.display());
    }
    Ok(())
}
