//! Bundles on disk: writing one (object, static library, shared library for host targets, header,
//! weights, tokenizer, manifest, and the intermediate forms `--emit` asks for), and opening a
//! bundle directory again to run its compiled code on the host.

use crate::frontend::{Model, ModelKind};
use crate::tokenizer::Tokenizer;
use llmc_backends::cpu::manifest::{Buffer, BufferDim, Manifest, MANIFEST_FORMAT};
use llmc_backends::cpu::Bundle;
use llmc_ir::{DType, Data, Dim, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What went wrong writing a bundle.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum WriteError {
    /// A file could not be written, or would replace one without `--force`.
    #[error("{path}: {msg}")]
    #[diagnostic(code(llmc::bundle::write))]
    Io { path: PathBuf, msg: String },
    /// The C compiler could not link the shared library.
    #[error("linking {path} failed: {msg}")]
    #[diagnostic(
        code(llmc::bundle::link),
        help("llmc links lib<name>.so with the system C compiler ($CC, else cc): install one (apt-get install gcc) or set CC")
    )]
    Link { path: PathBuf, msg: String },
}

/// What to write besides the object, static library, header, weights and manifest.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outputs {
    /// Link `lib<name>.so` (targets this machine runs) for `llmc run`, `eval` and `bench`.
    pub so: bool,
    pub llvm_ir: bool,
    pub asm: bool,
    /// Put the weights inside the object (a `<name>_weights` symbol) instead of a file.
    pub embed_weights: bool,
    /// Write the model's tokenizer as `tokenizer.json`.
    pub tokenizer: bool,
    /// Entropy-code the weights file (lossless; `<name>_decode_weights` decodes it before init).
    pub entropy: bool,
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    std::fs::write(path, bytes).map_err(|e| WriteError::Io {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// The global symbols an ELF64 little-endian object defines, in symbol-table order (empty
/// for anything else).
pub fn elf_defined_symbols(obj: &[u8]) -> Vec<String> {
    let u16_at = |o: usize| {
        obj.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        obj.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
    };
    let u64_at = |o: usize| {
        obj.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
    };
    // ELF magic, 64-bit class, little-endian
    if obj.len() < 64 || &obj[..4] != b"\x7fELF" || obj[4] != 2 || obj[5] != 1 {
        return Vec::new();
    }
    let (Some(shoff), Some(shentsize), Some(shnum)) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c))
    else {
        return Vec::new();
    };
    let section = |i: usize| shoff + i * shentsize;
    let mut out = Vec::new();
    for i in 0..shnum {
        let sh = section(i);
        if u32_at(sh + 4) != Some(2) {
            continue; // not SHT_SYMTAB
        }
        let (Some(off), Some(size), Some(link), Some(entsize)) = (
            u64_at(sh + 24),
            u64_at(sh + 32),
            u32_at(sh + 40),
            u64_at(sh + 56),
        ) else {
            continue;
        };
        let Some(stroff) = u64_at(section(link) + 24) else {
            continue;
        };
        for k in 1..size / entsize.max(1) {
            let sym = off + k * entsize;
            let (Some(name), Some(info), Some(shndx)) =
                (u32_at(sym), obj.get(sym + 4), u16_at(sym + 6))
            else {
                break;
            };
            let bind = info >> 4;
            if (bind == 1 || bind == 2) && shndx != 0 {
                let start = stroff + name;
                let Some(rest) = obj.get(start..) else {
                    continue;
                };
                let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                out.push(String::from_utf8_lossy(&rest[..end]).into_owned());
            }
        }
    }
    out
}

fn ar_header(name: &str, size: usize) -> Vec<u8> {
    let h = format!(
        "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
        name, 0, 0, 0, 644, size
    );
    debug_assert_eq!(h.len(), 60);
    h.into_bytes()
}

fn pad_even(v: &mut Vec<u8>) {
    if v.len() % 2 == 1 {
        v.push(b'\n');
    }
}

/// A GNU `!<arch>` archive holding one object, with the symbol index linkers need (what
/// `ar rcs` writes, with zero timestamps and ids so that it is reproducible). Member names
/// longer than 15 bytes go through the `//` name table.
pub fn ar_archive(member: &str, data: &[u8]) -> Vec<u8> {
    let symbols = elf_defined_symbols(data);
    let mut symtab = Vec::new();
    if !symbols.is_empty() {
        symtab.extend((symbols.len() as u32).to_be_bytes());
        symtab.extend(std::iter::repeat_n(0u8, 4 * symbols.len())); // offsets, set below
        for s in &symbols {
            symtab.extend(s.as_bytes());
            symtab.push(0);
        }
    }
    let long = member.len() + 1 > 16;
    let mut names = Vec::new();
    if long {
        names.extend(format!("{member}/\n").as_bytes());
    }
    let padded = |n: usize| n + n % 2;
    let mut member_at = 8;
    if !symtab.is_empty() {
        member_at += 60 + padded(symtab.len());
    }
    if long {
        member_at += 60 + padded(names.len());
    }
    for k in 0..symbols.len() {
        symtab[4 + 4 * k..8 + 4 * k].copy_from_slice(&(member_at as u32).to_be_bytes());
    }
    let mut out = b"!<arch>\n".to_vec();
    if !symtab.is_empty() {
        out.extend(ar_header("/", symtab.len()));
        out.extend(&symtab);
        pad_even(&mut out);
    }
    if long {
        out.extend(ar_header("//", names.len()));
        out.extend(&names);
        pad_even(&mut out);
    }
    debug_assert_eq!(out.len(), member_at);
    let name = if long {
        "/0".to_string()
    } else {
        format!("{member}/")
    };
    out.extend(ar_header(&name, data.len()));
    out.extend(data);
    pad_even(&mut out);
    out
}

/// The files a bundle consists of, by name.
pub fn file_names(name: &str, o: &Outputs) -> Vec<String> {
    let mut v = vec![
        format!("{name}.o"),
        format!("lib{name}.a"),
        format!("{name}.h"),
        "manifest.json".to_string(),
        "report.json".to_string(),
    ];
    if !o.embed_weights {
        v.push(format!("{name}.weights"));
    }
    if o.tokenizer {
        v.push(TOKENIZER_FILE.to_string());
    }
    if o.so {
        v.push(format!("lib{name}.so"));
    }
    if o.llvm_ir {
        v.push(format!("{name}.ll"));
    }
    if o.asm {
        v.push(format!("{name}.s"));
    }
    v
}

/// Writes the bundle into `dir` (created if missing). Files already there are replaced only
/// with `force`; the error names the first that would be.
pub fn write_bundle(
    b: &Bundle,
    dir: &Path,
    o: &Outputs,
    force: bool,
) -> Result<Vec<PathBuf>, WriteError> {
    let manifest = BundleManifest {
        backend: b.manifest.clone(),
        model: None,
        weights_file: None,
    };
    write_files(b, manifest, None, None, dir, o, force)
}

/// Writes the bundle of a model read by a frontend: as [`write_bundle`], plus the model's
/// tokenizer (`tokenizer.json`), the build report (`report.json`, when given) and what a host needs to
/// drive it in `manifest.json`: its kind, BOS/EOS tokens, and the graph's inputs and outputs
/// with named dimensions.
pub fn write_model_bundle(
    b: &Bundle,
    model: &Model,
    report: Option<&crate::report::BuildReport>,
    dir: &Path,
    o: &Outputs,
    force: bool,
) -> Result<Vec<PathBuf>, WriteError> {
    let mut o = *o;
    o.tokenizer = model.tokenizer.is_some();
    let tok_json = model
        .tokenizer
        .as_ref()
        .map(|t| t.to_json())
        .transpose()
        .map_err(|e| WriteError::Io {
            path: dir.join(TOKENIZER_FILE),
            msg: e.to_string(),
        })?;
    let manifest = BundleManifest {
        backend: b.manifest.clone(),
        model: Some(model_manifest(&b.manifest, model)),
        weights_file: None,
    };
    write_files(b, manifest, tok_json.as_deref(), report, dir, &o, force)
}

/// The name of the tokenizer file in a bundle.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Bytes of weights one decoded token reads, by the weights' encodings: all of every weight
/// but embedding tables, of which a token reads one row (an output head tied to the table
/// counts in full).
pub fn weight_bytes_per_token(g: &llmc_ir::Graph) -> u64 {
    let users = g.users();
    g.weights
        .iter()
        .map(|w| {
            let dims: Vec<u64> = w.ty.shape.0.iter().filter_map(|d| d.fixed()).collect();
            let bytes = w.ty.enc.byte_size(&dims).unwrap_or(0);
            let uses = &users[w.value.0 as usize];
            let table_only = !uses.is_empty()
                && uses.iter().all(|&n| {
                    matches!(g.nodes[n].op, llmc_ir::Op::Gather { .. })
                        && g.nodes[n].inputs[0] == w.value
                });
            match (table_only, dims.first()) {
                (true, Some(&rows)) if rows > 0 => bytes / rows,
                _ => bytes,
            }
        })
        .sum()
}

/// Multiply-adds of the linear layers per token (Σ N·K), the work prefill speed is judged by.
pub fn linear_macs_per_token(g: &llmc_ir::Graph) -> u64 {
    g.nodes
        .iter()
        .filter(|n| matches!(n.op, llmc_ir::Op::Linear { .. }))
        .filter_map(|n| g.ty(n.inputs[1]).shape.numel())
        .sum()
}

/// Multiply-adds of the linear layer that produces the logits (a decoder's output head, which
/// prefill runs for the last token only).
pub fn head_macs(g: &llmc_ir::Graph) -> u64 {
    let Some((_, v)) = g.outputs.iter().find(|(n, _)| n == "logits") else {
        return 0;
    };
    let producers = g.producers();
    let mut v = *v;
    while let Some(n) = producers[v.0 as usize] {
        match g.nodes[n].op {
            llmc_ir::Op::Cast { .. } => v = g.nodes[n].inputs[0],
            llmc_ir::Op::Linear { .. } => {
                return g.ty(g.nodes[n].inputs[1]).shape.numel().unwrap_or(0)
            }
            _ => return 0,
        }
    }
    0
}

/// `manifest.json`: the backend's manifest, with what the compiler knows of the model when
/// the bundle was built from one, and how the weights file is coded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BundleManifest {
    #[serde(flatten)]
    pub backend: Manifest,
    #[serde(flatten)]
    pub model: Option<ModelManifest>,
    /// Present when the weights file is entropy-coded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_file: Option<CodedWeights>,
}

/// What a host needs to drive a model's bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelManifest {
    pub model: ModelInfo,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Bytes of weights one decoded token reads (see [`weight_bytes_per_token`]).
    pub weight_bytes_per_token: u64,
    /// Multiply-adds of the linear layers per token.
    pub linear_macs_per_token: u64,
    /// Multiply-adds of the output head, which prefill runs for the last token only.
    pub head_macs: u64,
    /// The tokenizer file, when the model carries one.
    pub tokenizer: Option<String>,
    /// The graph's inputs and outputs with the model's dimension names.
    pub signature: Signature,
}

/// The model a bundle was built from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// `causal-lm`, `encoder` or `graph`.
    pub kind: String,
    /// As the source calls it (`llama`, `BertModel`, `onnx`).
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab: Option<usize>,
    /// The context the model was trained for (the bundle's is the backend's `max_context`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_context: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<usize>,
}

/// The inputs and outputs of the model's graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    pub inputs: Vec<IoEntry>,
    pub outputs: Vec<IoEntry>,
}

/// How the weights file is entropy-coded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CodedWeights {
    /// `rans`.
    pub coding: String,
    /// Bytes per independently coded chunk.
    pub chunk: usize,
    /// Bytes of the coded file.
    pub bytes: usize,
    /// Bytes once decoded (the buffer `init` takes).
    pub decoded_bytes: usize,
}

/// What the compiler knows of a model, for the manifest: its kind, and the graph's inputs
/// and outputs with the model's dimension names (those it leaves unknown taken from the
/// buffers the backend planned).
fn model_manifest(base: &Manifest, m: &Model) -> ModelManifest {
    let g = &m.graph;
    let mut model = ModelInfo {
        kind: String::new(),
        architecture: m.architecture.clone(),
        vocab: None,
        max_context: None,
        hidden: None,
    };
    model.kind = match &m.kind {
        ModelKind::CausalLm {
            vocab, max_context, ..
        } => {
            model.vocab = Some(*vocab);
            model.max_context = Some(*max_context);
            "causal-lm"
        }
        ModelKind::Encoder { hidden } => {
            model.hidden = Some(*hidden);
            "encoder"
        }
        ModelKind::Generic => "graph",
    }
    .to_string();
    let (bos, eos) = match &m.kind {
        ModelKind::CausalLm { bos, eos, .. } => (*bos, *eos),
        _ => (None, None),
    };
    let io = |list: &[(String, llmc_ir::ValueId)], planned: &[Buffer]| -> Vec<IoEntry> {
        list.iter()
            .map(|(n, v)| {
                let t = g.ty(*v);
                let buffer = planned
                    .iter()
                    .find(|b| &b.name == n)
                    .filter(|b| b.dims.len() == t.shape.0.len());
                let shape = t
                    .shape
                    .0
                    .iter()
                    .enumerate()
                    .map(|(i, d)| match (d, buffer) {
                        (Dim::Fixed(n), _) => DimSpec::Fixed(*n as usize),
                        (Dim::Sym(s), _) => DimSpec::Named(s.clone()),
                        (Dim::Any, Some(b)) => match &b.dims[i] {
                            BufferDim::Fixed(n) => DimSpec::Fixed(*n as usize),
                            BufferDim::Named(s) => DimSpec::Named(s.clone()),
                        },
                        (Dim::Any, None) => DimSpec::Unknown,
                    })
                    .collect();
                IoEntry {
                    name: n.clone(),
                    dtype: match &t.enc {
                        llmc_ir::Encoding::Dense(d) => d.name().to_string(),
                        other => other.to_string(),
                    },
                    shape,
                }
            })
            .collect()
    };
    ModelManifest {
        model,
        bos,
        eos,
        weight_bytes_per_token: weight_bytes_per_token(g),
        linear_macs_per_token: linear_macs_per_token(g),
        head_macs: head_macs(g),
        tokenizer: m.tokenizer.as_ref().map(|_| TOKENIZER_FILE.to_string()),
        signature: Signature {
            inputs: io(&g.inputs, &base.inputs),
            outputs: io(&g.outputs, &base.outputs),
        },
    }
}

fn write_files(
    b: &Bundle,
    mut manifest: BundleManifest,
    tokenizer: Option<&str>,
    report: Option<&crate::report::BuildReport>,
    dir: &Path,
    o: &Outputs,
    force: bool,
) -> Result<Vec<PathBuf>, WriteError> {
    std::fs::create_dir_all(dir).map_err(|e| WriteError::Io {
        path: dir.to_path_buf(),
        msg: e.to_string(),
    })?;
    let names = file_names(&b.name, o);
    if !force {
        if let Some(p) = names.iter().map(|n| dir.join(n)).find(|p| p.exists()) {
            return Err(WriteError::Io {
                path: p,
                msg: "exists; pass --force to replace the bundle, or choose another -o".into(),
            });
        }
    }
    let obj = dir.join(format!("{}.o", b.name));
    write(&obj, &b.object)?;
    write(
        &dir.join(format!("lib{}.a", b.name)),
        &ar_archive(&format!("{}.o", b.name), &b.object),
    )?;
    write(&dir.join(format!("{}.h", b.name)), b.header.as_bytes())?;
    if !o.embed_weights {
        let path = dir.join(format!("{}.weights", b.name));
        if o.entropy {
            let coded = llmc_runtime::weights::encode(&b.weights);
            manifest.weights_file = Some(CodedWeights {
                coding: "rans".into(),
                chunk: llmc_runtime::weights::CODED_CHUNK,
                bytes: coded.len(),
                decoded_bytes: b.weights.len(),
            });
            write(&path, &coded)?;
        } else {
            write(&path, &b.weights)?;
        }
    }
    if let (true, Some(t)) = (o.tokenizer, tokenizer) {
        write(&dir.join(TOKENIZER_FILE), t.as_bytes())?;
    }
    let mut manifest = serde_json::to_string_pretty(&manifest).expect("the manifest serializes");
    manifest.push('\n');
    write(&dir.join("manifest.json"), manifest.as_bytes())?;
    if let Some(r) = report {
        let mut json = serde_json::to_string_pretty(r).expect("the report serializes");
        json.push('\n');
        write(&dir.join("report.json"), json.as_bytes())?;
    }
    if let Some(ir) = &b.llvm_ir {
        write(&dir.join(format!("{}.ll", b.name)), ir.as_bytes())?;
    }
    if let Some(s) = &b.asm {
        write(&dir.join(format!("{}.s", b.name)), s.as_bytes())?;
    }
    if o.so {
        link_shared(&obj, &dir.join(format!("lib{}.so", b.name)))?;
    }
    Ok(names.iter().map(|n| dir.join(n)).collect())
}

/// Links an object into a shared library with the system C compiler (`$CC`, else `cc`),
/// without libc: the object needs nothing from it.
pub fn link_shared(obj: &Path, out: &Path) -> Result<(), WriteError> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let res = Command::new(&cc)
        .args(["-shared", "-nostdlib", "-o"])
        .arg(out)
        .arg(obj)
        .output();
    match res {
        Ok(r) if r.status.success() => Ok(()),
        Ok(r) => Err(WriteError::Link {
            path: out.to_path_buf(),
            msg: String::from_utf8_lossy(&r.stderr).into_owned(),
        }),
        Err(e) => Err(WriteError::Link {
            path: out.to_path_buf(),
            msg: format!("cannot run '{cc}': {e} (install a C compiler or set CC)"),
        }),
    }
}

/// What is wrong with a bundle directory, or with a call into it.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum BundleDirError {
    /// A file the command needs is not in the bundle.
    #[error("{path}: missing ({fix})")]
    #[diagnostic(code(llmc::bundle::missing))]
    Missing { path: PathBuf, fix: String },
    /// The manifest or a file of the bundle cannot be read or makes no sense.
    #[error("{path}: {msg}")]
    #[diagnostic(code(llmc::bundle::bad))]
    Bad { path: PathBuf, msg: String },
    /// The bundle is of another kind or for another machine than the command needs.
    #[error("{0}")]
    #[diagnostic(code(llmc::bundle::unsuitable))]
    Unsuitable(String),
    /// The compiled code returned an error.
    #[error(transparent)]
    #[diagnostic(code(llmc::bundle::runtime))]
    Runtime(#[from] llmc_runtime::BundleError),
}

/// Whether the bundle is a decoder (`prefill`/`decode`) or a graph (`run`).
pub use llmc_backends::cpu::manifest::EntryKind as BundleKind;

/// One input or output of a model's graph as the manifest records it: its element type (an
/// encoding for a weight-like output) and its dimensions, numbers or named run-time
/// dimensions (`seq`), as in the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IoEntry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<DimSpec>,
}

/// One input or output of a graph bundle, as `run` takes or writes it.
#[derive(Clone, Debug, PartialEq)]
pub struct IoSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<RunDim>,
}

/// A dimension of an [`IoSpec`]: fixed, or bound at run time by name.
#[derive(Clone, Debug, PartialEq)]
pub enum RunDim {
    Fixed(usize),
    Named(String),
}

/// A dimension of an [`IoSpec`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DimSpec {
    Fixed(usize),
    Named(String),
    /// Neither the model nor the backend knows it (`null`).
    Unknown,
}

/// A bundle directory (one with a `manifest.json`), read back to run its compiled code.
#[derive(Clone, Debug)]
pub struct BundleDir {
    pub dir: PathBuf,
    pub name: String,
    pub kind: BundleKind,
    pub manifest: BundleManifest,
    /// The model's kind as the compiler recorded it: `causal-lm`, `encoder`, `graph`.
    pub model_kind: String,
    pub vocab: Option<usize>,
    /// Tokens the bundle's KV cache holds (decoders).
    pub max_context: usize,
    /// Tokens one prefill call may take (decoders).
    pub max_tokens: usize,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// The target triple the code was built for.
    pub triple: String,
    /// Bytes of the weights file (header included).
    pub weights_bytes: u64,
    pub weights_embedded: bool,
}

impl BundleDir {
    /// Whether `path` is a bundle directory (it holds a `manifest.json`).
    pub fn is_bundle(path: &Path) -> bool {
        path.is_dir() && path.join("manifest.json").is_file()
    }

    /// Reads a bundle directory's manifest.
    pub fn open(dir: &Path) -> Result<BundleDir, BundleDirError> {
        let mpath = dir.join("manifest.json");
        let bad = |msg: String| BundleDirError::Bad {
            path: mpath.clone(),
            msg,
        };
        let text = std::fs::read_to_string(&mpath).map_err(|e| {
            bad(format!(
                "{e} (is {} a bundle written by llmc build?)",
                dir.display()
            ))
        })?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let format = value["format"].as_u64();
        if format != Some(MANIFEST_FORMAT as u64) {
            return Err(bad(format!(
                "manifest format {} where this llmc reads {MANIFEST_FORMAT}: rebuild the bundle with this llmc",
                format.map_or("none".to_string(), |f| f.to_string())
            )));
        }
        let manifest: BundleManifest = serde_json::from_value(value)
            .map_err(|e| bad(format!("not a bundle manifest: {e}")))?;
        let b = &manifest.backend;
        let model = manifest.model.as_ref();
        Ok(BundleDir {
            dir: dir.to_path_buf(),
            name: b.name.clone(),
            kind: b.kind,
            model_kind: model
                .map_or(
                    match b.kind {
                        BundleKind::Decoder => "causal-lm",
                        BundleKind::Graph => "graph",
                    },
                    |m| m.model.kind.as_str(),
                )
                .to_string(),
            vocab: b.vocab.map(|v| v as usize),
            max_context: b.max_context.max(0) as usize,
            max_tokens: b.max_tokens.max(0) as usize,
            bos: model.and_then(|m| m.bos),
            eos: model.and_then(|m| m.eos),
            triple: b.target.triple.clone(),
            weights_bytes: b.weights_bytes,
            weights_embedded: b.weights_embedded,
            manifest,
        })
    }

    /// Bytes of the weights file's tensors (the file without its header).
    pub fn tensor_bytes(&self) -> u64 {
        self.weights_bytes
            .saturating_sub(llmc_runtime::weights::HEADER_SIZE as u64)
    }

    /// Bytes of weights one decoded token reads: the manifest's count (every weight, the
    /// output head included, and one row of an embedding table), else every tensor of the
    /// weights file.
    pub fn weight_bytes_per_token(&self) -> u64 {
        self.manifest
            .model
            .as_ref()
            .map_or_else(|| self.tensor_bytes(), |m| m.weight_bytes_per_token)
    }

    /// The bundle's tokenizer (`tokenizer.json`).
    pub fn tokenizer(&self) -> Result<Tokenizer, BundleDirError> {
        let p = self.dir.join(TOKENIZER_FILE);
        if !p.is_file() {
            return Err(BundleDirError::Missing {
                path: p,
                fix: "the model had no tokenizer when the bundle was built; rebuild from a model that carries one".into(),
            });
        }
        Tokenizer::from_file(&p).map_err(|e| BundleDirError::Bad {
            path: p,
            msg: e.to_string(),
        })
    }

    /// Fails unless the bundle is of `kind`, naming what `command` needs.
    pub fn expect_kind(&self, kind: BundleKind, command: &str) -> Result<(), BundleDirError> {
        if self.kind == kind {
            return Ok(());
        }
        let what = |k: BundleKind| match k {
            BundleKind::Decoder => "a decoder (language model) bundle",
            BundleKind::Graph => "a graph bundle",
        };
        Err(BundleDirError::Unsuitable(format!(
            "{}: {command} needs {}, and this is {} (model kind '{}')",
            self.dir.display(),
            what(kind),
            what(self.kind),
            self.model_kind
        )))
    }

    /// Loads the compiled code with `threads` threads (1: none) and initializes a state.
    pub fn load(&self, threads: usize) -> Result<llmc_runtime::Bundle, BundleDirError> {
        let host = std::env::consts::ARCH;
        let arch = self.triple.split('-').next().unwrap_or("");
        if !arch.is_empty() && arch != host {
            return Err(BundleDirError::Unsuitable(format!(
                "{}: the bundle was built for {}; this machine is {host} (build it with --target host to run it here)",
                self.dir.display(),
                self.triple
            )));
        }
        let so = self.dir.join(format!("lib{}.so", self.name));
        if !so.is_file() {
            return Err(BundleDirError::Missing {
                path: so,
                fix: "llmc runs bundles through their shared library, which llmc build links for a target this machine runs: rebuild the bundle with llmc build MODEL -o DIR (--target host)"
                    .into(),
            });
        }
        let w = self.dir.join(format!("{}.weights", self.name));
        if !self.weights_embedded && !w.is_file() {
            return Err(BundleDirError::Missing {
                path: w,
                fix: "the weights file belongs beside the library; rebuild the bundle or copy it back".into(),
            });
        }
        Ok(llmc_runtime::Bundle::open(&self.dir, &self.name, threads)?)
    }

    /// The run-time dimensions of a graph bundle and their maxima, in the order `run` takes
    /// them.
    pub fn dims(&self) -> Vec<(String, i64)> {
        self.manifest
            .backend
            .dims
            .iter()
            .map(|d| (d.name.clone(), d.max))
            .collect()
    }

    /// The model's inputs or outputs, as `run` takes or writes them.
    fn io(&self, which: fn(&Signature) -> &Vec<IoEntry>) -> Result<Vec<IoSpec>, BundleDirError> {
        let bad = |msg: String| BundleDirError::Bad {
            path: self.dir.join("manifest.json"),
            msg,
        };
        let sig = self.manifest.model.as_ref().map(|m| &m.signature).ok_or_else(|| {
            bad("no model signature: the bundle was written without its model; rebuild it with llmc build".into())
        })?;
        which(sig)
            .iter()
            .map(|e| {
                let dtype = DType::from_name(&e.dtype)
                    .ok_or_else(|| bad(format!("'{}' has no dense dtype ({})", e.name, e.dtype)))?;
                let shape = e
                    .shape
                    .iter()
                    .map(|d| match d {
                        DimSpec::Fixed(n) => Ok(RunDim::Fixed(*n)),
                        DimSpec::Named(s) => Ok(RunDim::Named(s.clone())),
                        DimSpec::Unknown => {
                            Err(bad(format!("'{}' has a dimension of unknown size", e.name)))
                        }
                    })
                    .collect::<Result<_, _>>()?;
                Ok(IoSpec {
                    name: e.name.clone(),
                    dtype,
                    shape,
                })
            })
            .collect()
    }

    /// The inputs of a graph bundle, in the order `run` takes them.
    pub fn inputs(&self) -> Result<Vec<IoSpec>, BundleDirError> {
        self.io(|s| &s.inputs)
    }

    /// The outputs of a graph bundle, in the order `run` writes them.
    pub fn outputs(&self) -> Result<Vec<IoSpec>, BundleDirError> {
        self.io(|s| &s.outputs)
    }

    /// Runs a graph bundle on named tensors: binds the run-time dimensions from the inputs'
    /// shapes (checked against the bundle's maxima), converts each input to the dtype the code
    /// takes, and returns every output.
    pub fn run_graph(
        &self,
        rt: &mut llmc_runtime::Bundle,
        given: &[(String, Tensor)],
    ) -> Result<Vec<(String, Tensor)>, BundleDirError> {
        self.expect_kind(BundleKind::Graph, "running named inputs")?;
        let inputs = self.inputs()?;
        let outputs = self.outputs()?;
        let dims = self.dims();
        for (n, _) in given {
            if !inputs.iter().any(|i| &i.name == n) {
                let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
                return Err(BundleDirError::Unsuitable(format!(
                    "the bundle has no input '{n}'; its inputs are {}",
                    names.join(", ")
                )));
            }
        }
        let mut values: Vec<Option<i64>> = vec![None; dims.len()];
        let mut bytes: Vec<Vec<u8>> = Vec::with_capacity(inputs.len());
        for spec in &inputs {
            let t = given
                .iter()
                .find(|(n, _)| n == &spec.name)
                .map(|(_, t)| t)
                .ok_or_else(|| {
                    BundleDirError::Unsuitable(format!(
                        "input '{}' is missing (give it with --input {}=FILE.npy)",
                        spec.name, spec.name
                    ))
                })?;
            if t.shape.len() != spec.shape.len() {
                return Err(BundleDirError::Unsuitable(format!(
                    "input '{}' has shape {:?}; the bundle takes {} dimensions ({})",
                    spec.name,
                    t.shape,
                    spec.shape.len(),
                    show_shape(&spec.shape)
                )));
            }
            for (&have, want) in t.shape.iter().zip(&spec.shape) {
                match want {
                    RunDim::Fixed(n) if *n != have => {
                        return Err(BundleDirError::Unsuitable(format!(
                            "input '{}' has shape {:?}; the bundle takes ({})",
                            spec.name,
                            t.shape,
                            show_shape(&spec.shape)
                        )))
                    }
                    RunDim::Fixed(_) => {}
                    RunDim::Named(s) => {
                        let k = dims.iter().position(|(d, _)| d == s).ok_or_else(|| {
                            BundleDirError::Unsuitable(format!(
                                "input '{}': dimension '{s}' is not one the bundle binds at run time",
                                spec.name
                            ))
                        })?;
                        let max = dims[k].1;
                        if have as i64 > max {
                            return Err(BundleDirError::Unsuitable(format!(
                                "input '{}': dimension '{s}' is {have}, more than the {max} the bundle was built for (rebuild with --dim {s}={have})",
                                spec.name
                            )));
                        }
                        match values[k] {
                            Some(v) if v != have as i64 => {
                                return Err(BundleDirError::Unsuitable(format!(
                                    "dimension '{s}' is {v} in one input and {have} in '{}'",
                                    spec.name
                                )))
                            }
                            _ => values[k] = Some(have as i64),
                        }
                    }
                }
            }
            bytes.push(t.data.cast(spec.dtype).to_le_bytes());
        }
        let values: Vec<i64> = values
            .iter()
            .zip(&dims)
            .map(|(v, (n, _))| {
                v.ok_or_else(|| {
                    BundleDirError::Unsuitable(format!(
                        "no input sets the run-time dimension '{n}'"
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        let mut outs: Vec<(Vec<usize>, Vec<u8>)> = Vec::with_capacity(outputs.len());
        for spec in &outputs {
            let shape: Vec<usize> = spec
                .shape
                .iter()
                .map(|d| match d {
                    RunDim::Fixed(n) => Ok(*n),
                    RunDim::Named(s) => dims
                        .iter()
                        .position(|(d, _)| d == s)
                        .map(|k| values[k] as usize)
                        .ok_or_else(|| {
                            BundleDirError::Unsuitable(format!(
                                "output '{}': dimension '{s}' is not bound by any input",
                                spec.name
                            ))
                        }),
                })
                .collect::<Result<_, _>>()?;
            let n: usize = shape.iter().product();
            outs.push((shape, vec![0u8; n * spec.dtype.size()]));
        }
        {
            let ins: Vec<&[u8]> = bytes.iter().map(|b| b.as_slice()).collect();
            let mut outb: Vec<&mut [u8]> = outs.iter_mut().map(|(_, b)| b.as_mut_slice()).collect();
            rt.run(&values, &ins, &mut outb)?;
        }
        outputs
            .iter()
            .zip(outs)
            .map(|(spec, (shape, b))| {
                let data = Data::from_le_bytes(spec.dtype, &b).ok_or_else(|| {
                    BundleDirError::Unsuitable(format!(
                        "output '{}' has dtype {} that llmc cannot read back",
                        spec.name,
                        spec.dtype.name()
                    ))
                })?;
                Ok((spec.name.clone(), Tensor::new(shape, data)))
            })
            .collect()
    }
}

fn show_shape(s: &[RunDim]) -> String {
    s.iter()
        .map(|d| match d {
            RunDim::Fixed(n) => n.to_string(),
            RunDim::Named(n) => n.clone(),
        })
        .collect::<Vec<_>>()
        .join(" x ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_layout() {
        let a = ar_archive("m.o", b"abc");
        assert!(a.starts_with(b"!<arch>\nm.o/"));
        assert_eq!(a.len(), 8 + 60 + 4);
        assert_eq!(&a[8 + 58..8 + 60], b"`\n");
        let long = ar_archive("a_rather_long_bundle_name.o", b"abcd");
        assert!(long.starts_with(b"!<arch>\n//  "));
        assert!(long.ends_with(b"abcd"));
    }
}
