//! The CPU backend: a verified graph becomes one LLVM module (a static memory plan, a schedule
//! of kernel calls, the kernels themselves) compiled for a target, plus the weights file,
//! header and manifest of a bundle.

pub mod emit;
pub mod header;
pub mod isa;
pub mod kb;
pub mod kernels;
pub mod lower;
pub mod machine;
pub mod manifest;
pub mod math;
pub mod pack;
pub mod plan;
pub mod shapes;
pub mod size;

use crate::llvm::{Codegen, CodegenOptions, LlvmError};
use crate::target::TargetSpec;
use emit::{Entry, Layout};
use inkwell::context::Context;
use inkwell::passes::PassBuilderOptions;
use llmc_ir::{DType, Dim, Graph};
use lower::{LowerOptions, STATE_HEADER};
use shapes::{Binding, Symbols};
use size::Size;
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The graph uses something the backend does not compile: names the node.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The model or options are wrong (weights that do not decode, bad limits).
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Llvm(#[from] LlvmError),
    /// A bug in the backend.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Choices of a build that are not part of the target.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Prefix of every symbol and file name (a C identifier).
    pub name: String,
    /// Tokens the KV cache holds.
    pub max_context: i64,
    /// Tokens one prefill call may take (sizes the arena).
    pub max_tokens: i64,
    /// Largest value of each named input dimension of non-decoder graphs (`batch`, `seq`).
    pub dims: BTreeMap<String, i64>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            name: "model".into(),
            max_context: 2048,
            max_tokens: 512,
            dims: BTreeMap::new(),
        }
    }
}

/// What to produce besides the object.
#[derive(Clone, Copy, Debug, Default)]
pub struct EmitRequest {
    pub llvm_ir: bool,
    pub asm: bool,
    /// Put the weights file into the object as a read-only global `<name>_weights` (64-byte
    /// aligned) with its size in `<name>_weights_size`; `init` still takes the pointer.
    pub embed_weights: bool,
}

/// A compiled bundle, in memory.
pub struct Bundle {
    pub name: String,
    pub object: Vec<u8>,
    pub weights: Vec<u8>,
    pub header: String,
    pub manifest: manifest::Manifest,
    pub llvm_ir: Option<String>,
    pub asm: Option<String>,
    pub entry: Entry,
    pub state_bytes: u64,
    pub model_hash: u64,
}

/// Bumped whenever the generated code or weight layouts change meaning.
const CODEGEN_VERSION: u32 = 1;

fn is_c_ident(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && s.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// Compiles a graph for a target.
pub fn compile(
    g: &Graph,
    spec: &TargetSpec,
    opts: &BuildOptions,
    req: EmitRequest,
) -> Result<Bundle, BackendError> {
    if !is_c_ident(&opts.name) {
        return Err(BackendError::BadInput(format!(
            "bundle name '{}' must be a C identifier (letters, digits, _)",
            opts.name
        )));
    }
    if opts.max_context < 1 || opts.max_tokens < 1 {
        return Err(BackendError::BadInput(
            "--max-context and --max-tokens must be at least 1".into(),
        ));
    }
    llmc_ir::verify(g).map_err(|e| BackendError::BadInput(e.to_string()))?;
    let input = |n: &str| g.inputs.iter().position(|(m, _)| m == n);
    let decoder = g.kind == llmc_ir::ModelKind::Decoder;
    if !g.states.is_empty() && !decoder {
        return Err(BackendError::Unsupported("graphs with a KV cache compile as decoders (kind decoder: inputs 'tokens' and 'positions', output 'logits'); this graph is of kind graph".into()));
    }
    if decoder {
        // the C API passes exactly these: tokens and positions (i64 in the state), logits (f32)
        let unsupported = |m: String| Err(BackendError::Unsupported(m));
        if let Some((n, _)) = g
            .inputs
            .iter()
            .find(|(n, _)| n != "tokens" && n != "positions")
        {
            return unsupported(format!(
                "decoder input '{n}': a decoder bundle takes only 'tokens' and 'positions'"
            ));
        }
        if let Some((n, _)) = g.outputs.iter().find(|(n, _)| n != "logits") {
            return unsupported(format!(
                "decoder output '{n}': a decoder bundle returns only 'logits'"
            ));
        }
        for (n, v) in &g.inputs {
            if g.ty(*v).dtype() != DType::I64 {
                return unsupported(format!(
                    "decoder input '{n}' is {}: tokens and positions must be i64",
                    g.ty(*v)
                ));
            }
        }
        for (n, v) in &g.outputs {
            if g.ty(*v).dtype() != DType::F32 {
                return unsupported(format!(
                    "decoder output '{n}' is {}: logits must be f32",
                    g.ty(*v)
                ));
            }
        }
    }
    let (syms, entry, bind_seq) = if decoder {
        let (syms, t, _) =
            lower::decoder_symbols(opts.max_tokens.min(opts.max_context), opts.max_context);
        let logits = g
            .outputs
            .iter()
            .find(|(n, _)| n == "logits")
            .expect("checked")
            .1;
        let vocab = g
            .ty(logits)
            .shape
            .0
            .last()
            .and_then(|d| d.fixed())
            .ok_or_else(|| {
                BackendError::Unsupported(
                    "the logits' last dimension (vocabulary) must be fixed".into(),
                )
            })? as i64;
        let entry = Entry::Decoder {
            vocab,
            max_tokens: opts.max_tokens.min(opts.max_context),
            max_context: opts.max_context,
            tokens_input: input("tokens").expect("checked"),
            positions_input: input("positions").expect("checked"),
        };
        (syms, entry, Some(t))
    } else {
        let mut syms = Symbols::default();
        for (_, v) in &g.inputs {
            for d in &g.ty(*v).shape.0 {
                if let Dim::Sym(n) = d {
                    let mx = opts.dims.get(n).copied().unwrap_or(if n == "batch" {
                        1
                    } else {
                        opts.max_tokens
                    });
                    syms.add(n, mx);
                }
            }
        }
        (syms, Entry::Graph, None)
    };
    let syms_for_bind = syms.clone();
    let dim_fn = move |d: &Dim| -> Option<Size> {
        match d {
            Dim::Fixed(n) => Some(Size::c(*n as i64)),
            Dim::Sym(n) if bind_seq.is_some() => match n.as_str() {
                "batch" => Some(Size::c(1)),
                _ => Some(Size::sym(bind_seq.expect("decoder"))),
            },
            Dim::Sym(n) => syms_for_bind.find(n).map(Size::sym),
            Dim::Any => None,
        }
    };
    let bind = Binding {
        dim: &dim_fn,
        cache: syms.find("past"),
    };
    let sh = shapes::propagate(g, &bind)?;
    let isa = isa::isa_of(spec);
    let lopts = LowerOptions {
        max_context: opts.max_context,
        isa,
    };
    let low = lower::lower(g, sh, syms.clone(), &lopts, lower::Packed::default())?;
    // decoders also get a schedule with the output head on the last token only
    let last = match (&entry, last_token_graph(g)) {
        (Entry::Decoder { .. }, Some(g2)) => {
            let sh2 = shapes::propagate(&g2, &bind)?;
            Some(lower::lower(&g2, sh2, syms, &lopts, low.data.clone())?)
        }
        _ => None,
    };
    let data = last.as_ref().map_or(&low.data, |l| &l.data).clone();
    let (buf_offsets, arena_bytes) = plan::allocate(&low.bufs, 64);
    let (last_offsets, last_arena) = last
        .as_ref()
        .map_or((vec![], 0), |l| plan::allocate(&l.bufs, 64));
    let arena_bytes = arena_bytes.max(last_arena);
    let mut end = low.state_end.max(STATE_HEADER);
    let (tokens_offset, positions_offset) = if let Entry::Decoder { max_tokens, .. } = &entry {
        let t = end;
        let p = t + (*max_tokens as u64 * 8).div_ceil(64) * 64;
        end = p + (*max_tokens as u64 * 8).div_ceil(64) * 64;
        (t, p)
    } else {
        (0, 0)
    };
    let arena_offset = end.div_ceil(64) * 64;
    let layout = Layout {
        arena_offset,
        state_bytes: arena_offset + arena_bytes,
        tokens_offset,
        positions_offset,
    };
    let mut forwards = vec![emit::Forward {
        low: &low,
        buf_offsets,
    }];
    if let Some(l) = &last {
        forwards.push(emit::Forward {
            low: l,
            buf_offsets: last_offsets,
        });
    }

    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(llmc_ir::print(g).as_bytes());
    hasher.update(
        format!(
            "{spec}|{}|{}|{:?}|v{CODEGEN_VERSION}",
            opts.max_context, opts.max_tokens, opts.dims
        )
        .as_bytes(),
    );
    let model_hash = hasher.digest();

    let tensors: Vec<(usize, &[u8])> = data
        .packed
        .iter()
        .map(|(o, b)| (*o as usize, b.as_slice()))
        .collect();
    let weights = llmc_runtime::weights::write_file(model_hash, &tensors);
    debug_assert_eq!(
        weights.len() as u64,
        llmc_runtime::weights::align(data.weights_size as usize) as u64
    );

    let cx = Context::create();
    let mut kernels = kernels::Kernels::new(isa);
    let module = emit::emit(
        &cx,
        &opts.name,
        &forwards,
        &data,
        &layout,
        &entry,
        &mut kernels,
        model_hash,
    );
    if req.embed_weights {
        emit::embed_weights(&cx, &module, &opts.name, &weights);
    }
    let cg = Codegen::new(spec, CodegenOptions::default())?;
    cg.configure_module(&module);
    module
        .verify()
        .map_err(|m| BackendError::Internal(format!("generated module does not verify: {m}")))?;
    module
        .run_passes(
            "default<O3>",
            cg.target_machine(),
            PassBuilderOptions::create(),
        )
        .map_err(|m| BackendError::Internal(format!("LLVM optimization failed: {m}")))?;
    let llvm_ir = req.llvm_ir.then(|| module.print_to_string().to_string());
    let asm = if req.asm {
        Some(cg.emit_assembly(&module)?)
    } else {
        None
    };
    let object = cg.emit_object(&module)?;

    let header = header::header(
        &opts.name,
        &low,
        data.weights_size,
        &entry,
        layout.state_bytes,
        model_hash,
        req.embed_weights,
    );
    let names = &low.syms.names;
    let buffers = |list: &[(String, plan::View)]| -> Vec<manifest::Buffer> {
        list.iter()
            .map(|(n, v)| manifest::Buffer {
                name: n.clone(),
                dtype: v.dtype.name().to_string(),
                dims: v
                    .dims
                    .iter()
                    .map(|d| manifest::BufferDim::of(d, names))
                    .collect(),
            })
            .collect()
    };
    let manifest = manifest::Manifest {
        name: opts.name.clone(),
        format: manifest::MANIFEST_FORMAT,
        target: manifest::TargetInfo {
            triple: spec.llvm_triple(),
            cpu: spec.cpu().to_string(),
            features: spec.llvm_features(),
            kernels: isa::describe(&isa),
        },
        kind: match &entry {
            Entry::Decoder { .. } => manifest::EntryKind::Decoder,
            Entry::Graph => manifest::EntryKind::Graph,
        },
        model_hash: format!("{model_hash:016x}"),
        state_bytes: layout.state_bytes,
        arena_bytes,
        weights_bytes: weights.len() as u64,
        weights_deduplicated_bytes: data.deduplicated,
        weights_embedded: req.embed_weights,
        max_context: opts.max_context,
        max_tokens: opts.max_tokens,
        vocab: match &entry {
            Entry::Decoder { vocab, .. } => Some(*vocab),
            Entry::Graph => None,
        },
        dims: names
            .iter()
            .zip(&low.syms.max)
            .map(|(n, m)| manifest::DimMax {
                name: n.clone(),
                max: *m,
            })
            .collect(),
        inputs: buffers(&low.inputs),
        outputs: buffers(&low.outputs),
        kernel_calls: low.steps.len(),
        weights: g.weights.len(),
    };
    Ok(Bundle {
        name: opts.name.clone(),
        object,
        weights,
        header,
        manifest,
        llvm_ir,
        asm,
        entry,
        state_bytes: layout.state_bytes,
        model_hash,
    })
}

/// The decoder with its output head applied to the last token only: `logits = linear(x)`
/// (maybe cast) becomes `linear(x[:, -1:])`. `None` when the logits do not come from a linear
/// layer that way.
fn last_token_graph(g: &Graph) -> Option<Graph> {
    use llmc_ir::{Op, SliceSpec};
    let logits = g.outputs.iter().find(|(n, _)| n == "logits")?.1;
    let producers = g.producers();
    let mut chain = vec![];
    let mut v = logits;
    loop {
        let node = producers[v.0 as usize]?;
        chain.push(node);
        match g.nodes[node].op {
            Op::Cast { .. } => v = g.nodes[node].inputs[0],
            Op::Linear { .. } => break,
            _ => return None,
        }
    }
    let lin = *chain.last()?;
    let x = g.nodes[lin].inputs[0];
    let r = g.ty(x).rank();
    if r < 2 {
        return None;
    }
    let mut g2 = g.clone();
    let spec = SliceSpec {
        starts: vec![-1],
        ends: vec![i64::MAX],
        axes: vec![r as i64 - 2],
        steps: vec![1],
    };
    let sliced = g2.add1(Op::Slice { spec: Some(spec) }, &[x]).ok()?;
    g2.nodes[lin].inputs[0] = sliced;
    for &n in chain.iter().rev() {
        let node = &g2.nodes[n];
        let ty = g2.infer_node(&node.op, &node.inputs).ok()?.remove(0);
        let out = node.outputs[0];
        g2.values[out.0 as usize].ty = ty;
    }
    g2.sort().ok()?;
    llmc_ir::verify(&g2).ok()?;
    Some(g2)
}
