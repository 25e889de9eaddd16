//! Helpers shared by the bundle tests: running the `llmc` binary, scratch directories, and a
//! tiny random Llama checkpoint (safetensors + config.json) that compiles in a second.

#![allow(dead_code)]

use safetensors::tensor::{Dtype, TensorView};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn llmc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llmc"))
        .args(args)
        .output()
        .expect("run llmc")
}

/// Runs llmc, fails the test on a non-zero exit, returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = llmc(args);
    assert!(
        out.status.success(),
        "llmc {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Fails with exit code 1 (not a panic's 101) and says `needle` on stderr.
pub fn fails_with(args: &[&str], needle: &str) {
    let out = llmc(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "llmc {args:?}: want a clean failure, got {:?}\n{err}",
        out.status
    );
    // miette wraps long messages: compare with the line breaks and gutters taken out
    let flat = err
        .split(|c: char| c.is_whitespace() || c == '│')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        flat.contains(needle),
        "llmc {args:?}: stderr lacks {needle:?}:\n{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// A fresh scratch directory under the target directory's `tmp` (reused by the next run, so
/// big bundles do not pile up).
pub fn tmp(name: &str) -> PathBuf {
    let d =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{name}", env!("CARGO_CRATE_NAME")));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create a scratch dir");
    d
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the compiler crate has a parent")
        .to_path_buf()
}

pub fn s(p: &Path) -> String {
    p.display().to_string()
}

pub const VOCAB: usize = 100;
const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 16;
const FFN: usize = 96;
const LAYERS: usize = 2;

/// Deterministic pseudo-random numbers in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Writes a tiny Llama (vocabulary 100, 2 layers, hidden 64, grouped-query attention) as
/// `model.safetensors` + `config.json` into `dir`; returns the directory.
pub fn write_tiny_llama(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("create the model dir");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut t: Vec<(String, Vec<usize>, Vec<f32>)> = vec![];
    let mut mat = |name: String, rows: usize, cols: usize, scale: f32| {
        let v: Vec<f32> = (0..rows * cols).map(|_| rng.next() * scale).collect();
        (name, vec![rows, cols], v)
    };
    let w = 1.0 / (HIDDEN as f32).sqrt();
    t.push(mat("model.embed_tokens.weight".into(), VOCAB, HIDDEN, 1.0));
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}.");
        t.push(mat(
            format!("{p}self_attn.q_proj.weight"),
            HEADS * HEAD_DIM,
            HIDDEN,
            2.0 * w,
        ));
        t.push(mat(
            format!("{p}self_attn.k_proj.weight"),
            KV_HEADS * HEAD_DIM,
            HIDDEN,
            2.0 * w,
        ));
        t.push(mat(
            format!("{p}self_attn.v_proj.weight"),
            KV_HEADS * HEAD_DIM,
            HIDDEN,
            w,
        ));
        t.push(mat(
            format!("{p}self_attn.o_proj.weight"),
            HIDDEN,
            HEADS * HEAD_DIM,
            w,
        ));
        t.push(mat(format!("{p}mlp.gate_proj.weight"), FFN, HIDDEN, w));
        t.push(mat(format!("{p}mlp.up_proj.weight"), FFN, HIDDEN, w));
        t.push(mat(format!("{p}mlp.down_proj.weight"), HIDDEN, FFN, w));
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            t.push((
                format!("{p}{norm}.weight"),
                vec![HIDDEN],
                (0..HIDDEN)
                    .map(|i| 1.0 + 0.1 * ((i % 7) as f32 - 3.0) / 3.0)
                    .collect(),
            ));
        }
    }
    t.push(("model.norm.weight".into(), vec![HIDDEN], vec![1.0; HIDDEN]));
    t.push(mat("lm_head.weight".into(), VOCAB, HIDDEN, 4.0 * w));
    let bytes: Vec<Vec<u8>> = t
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView)> = t
        .iter()
        .zip(&bytes)
        .map(|((n, shape, _), b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, shape.clone(), b).expect("view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors"))
        .expect("write safetensors");
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "num_hidden_layers": LAYERS,
        "vocab_size": VOCAB,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 256,
        "hidden_act": "silu",
        "tie_word_embeddings": false,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("write config");
    dir.to_path_buf()
}

/// Greedy continuation of `prompt` by the interpreter: `n` new token ids.
pub fn interp_greedy(g: &llmc_ir::Graph, prompt: &[u32], n: usize) -> Vec<u32> {
    use llmc_ir::{Session, Tensor};
    let vocab = VOCAB;
    let mut s = Session::new(g).expect("session");
    let mut out = Vec::new();
    let mut step: Vec<u32> = prompt.to_vec();
    let mut pos = 0usize;
    for _ in 0..n {
        let k = step.len();
        let r = s
            .run(&[
                (
                    "tokens",
                    Tensor::i64(vec![1, k], step.iter().map(|&t| t as i64).collect()),
                ),
                (
                    "positions",
                    Tensor::i64(vec![1, k], (pos as i64..(pos + k) as i64).collect()),
                ),
            ])
            .expect("run");
        pos += k;
        let logits = r[0].1.to_f32_vec();
        let next = llmc_runtime::sampler::argmax(&logits[(k - 1) * vocab..k * vocab]);
        out.push(next);
        step = vec![next];
    }
    out
}
