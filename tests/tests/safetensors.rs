//! safetensors frontend: the real all-MiniLM-L6-v2 BERT encoder (sentence similarity, and a
//! numpy forward pass as reference), and tiny Llama checkpoints written here in f32, f16 and bf16
//! (imports, runs, and Hugging Face's half-split RoPE against GGUF's interleaved one).

use half::{bf16, f16};
use llmc::frontend::llama::{build_llama, LlamaConfig, NameScheme};
use llmc::frontend::safetensors::SafetensorsFile;
use llmc::frontend::{self, Model, ModelKind, Result as FrontendResult};
use llmc_ir::{DType, Encoding, Graph, RopeMode, Session, Tensor, TensorType, WeightData};
use llmc_tests::{max_abs_diff, minilm_l6_dir, python};
use safetensors::tensor::{Dtype, TensorView};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn minilm() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        frontend::load(&minilm_l6_dir().join("model.safetensors")).expect("MiniLM loads")
    })
}

/// Token ids of a sentence with `[CLS]` and `[SEP]`.
fn encode(text: &str) -> Vec<u32> {
    minilm()
        .tokenizer
        .as_ref()
        .expect("tokenizer.json beside the model")
        .encode(text, true)
        .expect("encodes")
}

/// Runs the encoder on sentences padded to one length; returns `last_hidden_state` per
/// sentence (`[len, 384]` rows, padding dropped).
fn encode_batch(batch: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let b = batch.len();
    let s = batch.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = vec![0i64; b * s];
    let mut mask = vec![0i64; b * s];
    for (i, row) in batch.iter().enumerate() {
        for (j, &t) in row.iter().enumerate() {
            ids[i * s + j] = t as i64;
            mask[i * s + j] = 1;
        }
    }
    let inputs = [
        ("input_ids", Tensor::i64(vec![b, s], ids)),
        ("attention_mask", Tensor::i64(vec![b, s], mask)),
        ("token_type_ids", Tensor::i64(vec![b, s], vec![0; b * s])),
    ];
    let out = Session::new(&minilm().graph)
        .expect("verifies")
        .run(&inputs)
        .expect("runs");
    let h = &out[0].1;
    assert_eq!(out[0].0, "last_hidden_state");
    assert_eq!(h.shape, vec![b, s, 384]);
    let v = h.as_f32().expect("f32");
    batch
        .iter()
        .enumerate()
        .map(|(i, row)| v[i * s * 384..(i * s + row.len()) * 384].to_vec())
        .collect()
}

/// Mean of the token embeddings (padding already dropped).
fn mean_pool(h: &[f32]) -> Vec<f32> {
    let n = (h.len() / 384) as f32;
    let mut m = vec![0f32; 384];
    for row in h.chunks(384) {
        m.iter_mut().zip(row).for_each(|(a, b)| *a += b / n);
    }
    m
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
fn minilm_imports_as_an_encoder() {
    let m = minilm();
    assert_eq!(m.architecture, "BertModel");
    assert_eq!(m.kind, ModelKind::Encoder { hidden: 384 });
    let g = &m.graph;
    let ins: Vec<&str> = g.inputs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(ins, ["input_ids", "attention_mask", "token_type_ids"]);
    // 3 embeddings + their norm (2) + 16 per layer
    assert_eq!(g.weights.len(), 3 + 2 + 6 * 16);
    let w = g
        .weight_by_name("encoder.layer.5.intermediate.dense.weight")
        .expect("weight");
    assert_eq!(w.ty.to_string(), "tensor<1536x384xf32>");
    assert!(matches!(
        w.data.as_ref().expect("data").bytes,
        llmc_ir::Bytes::Mapped { .. }
    ));
    assert_eq!(
        g.meta.get("general.architecture").map(String::as_str),
        Some("bert")
    );
    assert!(g.states.is_empty());
    let text = llmc_ir::print(g);
    let again = llmc_ir::parse("minilm.llmc", &text).expect("the printed graph parses");
    assert_eq!(llmc_ir::print(&again), text);
}

#[test]
fn minilm_paraphrases_are_closer_than_unrelated_sentences() {
    let sentences = [
        "A man is playing a guitar.",
        "Someone plays the guitar.",
        "The weather is lovely today.",
        "It is a beautiful sunny day.",
        "The cat sat on the mat.",
        "A cat was sitting on a rug.",
        "The stock market fell sharply this morning.",
        "He ate a bowl of noodles for dinner.",
        "Quantum computers use qubits.",
    ];
    let ids: Vec<Vec<u32>> = sentences.iter().map(|s| encode(s)).collect();
    assert_eq!(ids[0].first(), Some(&101), "[CLS] first");
    assert_eq!(ids[0].last(), Some(&102), "[SEP] last");
    let hidden = encode_batch(&ids);
    let emb: Vec<Vec<f32>> = hidden.iter().map(|h| mean_pool(h)).collect();

    // padding must not change a sentence's embedding: run the shortest one alone
    let shortest = (0..ids.len())
        .min_by_key(|&i| ids[i].len())
        .expect("sentences");
    let alone = encode_batch(&ids[shortest..=shortest]);
    let d = max_abs_diff(&alone[0], &hidden[shortest]);
    assert!(d < 1e-4, "padding changes the hidden state by {d}");

    let paraphrases = [(0, 1), (2, 3), (4, 5)];
    let unrelated = [(0, 6), (2, 7), (4, 8), (1, 3), (3, 5), (0, 4)];
    let sim = |&(a, b): &(usize, usize)| cosine(&emb[a], &emb[b]);
    let p: Vec<f32> = paraphrases.iter().map(sim).collect();
    let u: Vec<f32> = unrelated.iter().map(sim).collect();
    eprintln!("paraphrase cosines {p:?}\nunrelated cosines {u:?}");
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    assert!(
        mean(&p) - mean(&u) > 0.3,
        "paraphrases {p:?} vs unrelated {u:?}"
    );
    let min_p = p.iter().cloned().fold(f32::INFINITY, f32::min);
    let max_u = u.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    assert!(min_p > max_u, "paraphrases {p:?} vs unrelated {u:?}");
}

/// A numpy BERT forward pass over the safetensors file, read without any library but numpy.
const NUMPY_BERT: &str = r#"
import sys, os, json, struct, math
import numpy as np
path, ids_file = sys.argv[1], sys.argv[2]
ids = json.load(open(ids_file))
cfg = json.load(open(os.path.join(os.path.dirname(path), "config.json")))
with open(path, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    data = f.read()
W = {}
for k, v in header.items():
    if k == "__metadata__" or v["dtype"] != "F32":
        continue
    s, e = v["data_offsets"]
    W[k] = np.frombuffer(data[s:e], dtype="<f4").reshape(v["shape"]).astype(np.float64)
eps = cfg["layer_norm_eps"]; H = cfg["hidden_size"]; nh = cfg["num_attention_heads"]; hd = H // nh
erf = np.vectorize(math.erf)
def ln(x, p):
    m = x.mean(-1, keepdims=True); v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * W[p + ".weight"] + W[p + ".bias"]
def lin(x, p):
    return x @ W[p + ".weight"].T + W[p + ".bias"]
T = len(ids)
x = W["embeddings.word_embeddings.weight"][ids] + W["embeddings.position_embeddings.weight"][:T] \
    + W["embeddings.token_type_embeddings.weight"][0]
x = ln(x, "embeddings.LayerNorm")
for l in range(cfg["num_hidden_layers"]):
    p = f"encoder.layer.{l}."
    q, k, v = (lin(x, p + "attention.self." + w).reshape(T, nh, hd) for w in ("query", "key", "value"))
    s = np.einsum("thd,shd->hts", q, k) / math.sqrt(hd)
    s = np.exp(s - s.max(-1, keepdims=True)); s /= s.sum(-1, keepdims=True)
    a = np.einsum("hts,shd->thd", s, v).reshape(T, H)
    x = ln(lin(a, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
    f = lin(x, p + "intermediate.dense"); f = 0.5 * f * (1 + erf(f / math.sqrt(2)))
    x = ln(lin(f, p + "output.dense") + x, p + "output.LayerNorm")
print(json.dumps(x.ravel().tolist()))
"#;

#[test]
fn minilm_matches_a_numpy_forward_pass() {
    let ids = encode("The quick brown fox jumps over the lazy dog, 42 times!");
    let ours = encode_batch(std::slice::from_ref(&ids)).remove(0);
    let dir = scratch_dir("numpy-bert");
    let script = dir.join("bert.py");
    std::fs::write(&script, NUMPY_BERT).expect("write the script");
    let ids_file = dir.join("ids.json");
    std::fs::write(&ids_file, serde_json::to_string(&ids).expect("json")).expect("write ids");
    let out = std::process::Command::new(python())
        .arg(&script)
        .arg(minilm_l6_dir().join("model.safetensors"))
        .arg(&ids_file)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "numpy reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Vec<f32> = serde_json::from_slice(&out.stdout).expect("a JSON list of numbers");
    let d = max_abs_diff(&ours, &reference);
    eprintln!(
        "MiniLM last_hidden_state vs numpy (f64): max abs diff {d:e} over {} values",
        ours.len()
    );
    assert!(d < 1e-3, "max abs diff {d}");
    remove_scratch(&script);
}

/// A fresh directory under the system's temp dir.
fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llmc-st-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create a temp dir");
    d
}

const VOCAB: usize = 100;
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

/// The tensors of a tiny Llama under Hugging Face's names, as f32.
fn tiny_llama_weights(tied: bool) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    type Named = Vec<(String, Vec<usize>, Vec<f32>)>;
    let mut t: Named = vec![];
    let mut mat = |name: String, rows: usize, cols: usize, scale: f32, t: &mut Named| {
        let v: Vec<f32> = (0..rows * cols).map(|_| rng.next() * scale).collect();
        t.push((name, vec![rows, cols], v));
    };
    mat(
        "model.embed_tokens.weight".into(),
        VOCAB,
        HIDDEN,
        1.0,
        &mut t,
    );
    let w = 1.0 / (HIDDEN as f32).sqrt();
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}.");
        mat(
            format!("{p}self_attn.q_proj.weight"),
            HEADS * HEAD_DIM,
            HIDDEN,
            2.0 * w,
            &mut t,
        );
        mat(
            format!("{p}self_attn.k_proj.weight"),
            KV_HEADS * HEAD_DIM,
            HIDDEN,
            2.0 * w,
            &mut t,
        );
        mat(
            format!("{p}self_attn.v_proj.weight"),
            KV_HEADS * HEAD_DIM,
            HIDDEN,
            w,
            &mut t,
        );
        mat(
            format!("{p}self_attn.o_proj.weight"),
            HIDDEN,
            HEADS * HEAD_DIM,
            w,
            &mut t,
        );
        mat(format!("{p}mlp.gate_proj.weight"), FFN, HIDDEN, w, &mut t);
        mat(format!("{p}mlp.up_proj.weight"), FFN, HIDDEN, w, &mut t);
        mat(format!("{p}mlp.down_proj.weight"), HIDDEN, FFN, w, &mut t);
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
    if !tied {
        mat("lm_head.weight".into(), VOCAB, HIDDEN, w, &mut t);
    }
    t
}

/// Writes a tiny Llama checkpoint (weights in `dtype`) and its config.json into a fresh directory.
fn write_tiny_llama(name: &str, dtype: Dtype, tied: bool) -> PathBuf {
    let dir = scratch_dir(name);
    let tensors = tiny_llama_weights(tied);
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| match dtype {
            Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::F16 => v
                .iter()
                .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                .collect(),
            Dtype::BF16 => v
                .iter()
                .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
                .collect(),
            other => panic!("no tiny model in {other:?}"),
        })
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, shape, _), b)| {
            (
                n.clone(),
                TensorView::new(dtype, shape.clone(), b).expect("view"),
            )
        })
        .collect();
    let path = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, None, &path).expect("write safetensors");
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
        "tie_word_embeddings": tied,
        "bos_token_id": 1,
        "eos_token_id": [2, 3],
        "rope_scaling": null,
        "torch_dtype": "float32",
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("write config");
    path
}

const TOKENS: [u32; 7] = [5, 17, 42, 99, 3, 64, 8];

/// Logits of a prefill of the first 5 tokens then two single-token decode steps.
fn tiny_logits(g: &Graph) -> Vec<f32> {
    let mut s = Session::new(g).expect("verifies");
    let mut out = vec![];
    let mut run = |ids: &[u32], start: usize| {
        let n = ids.len();
        let r = s
            .run(&[
                (
                    "tokens",
                    Tensor::i64(vec![1, n], ids.iter().map(|&t| t as i64).collect()),
                ),
                (
                    "positions",
                    Tensor::i64(vec![1, n], (start..start + n).map(|p| p as i64).collect()),
                ),
            ])
            .expect("runs");
        assert_eq!(r[0].1.shape, vec![1, n, VOCAB]);
        out.extend(r[0].1.to_f32_vec());
    };
    run(&TOKENS[..5], 0);
    run(&TOKENS[5..6], 5);
    run(&TOKENS[6..7], 6);
    out
}

fn tiny_config(mode: RopeMode) -> LlamaConfig {
    LlamaConfig {
        layers: LAYERS,
        hidden: HIDDEN,
        heads: HEADS,
        kv_heads: KV_HEADS,
        head_dim: HEAD_DIM,
        ffn: FFN,
        vocab: VOCAB,
        rms_eps: 1e-5,
        rope_base: 10000.0,
        rope_mode: mode,
        tied_embeddings: false,
        max_context: 256,
        bos: Some(1),
        eos: Some(2),
    }
}

#[test]
fn tiny_llama_imports_and_runs_in_f32_f16_and_bf16() {
    let f32_path = write_tiny_llama("llama-f32", Dtype::F32, false);
    let m = frontend::load(&f32_path).expect("f32 tiny Llama loads");
    assert_eq!(m.architecture, "LlamaForCausalLM");
    assert_eq!(
        m.kind,
        ModelKind::CausalLm {
            vocab: VOCAB,
            max_context: 256,
            bos: Some(1),
            eos: Some(2)
        }
    );
    assert!(m.tokenizer.is_none());
    assert_eq!(
        m.graph.meta.get("llama.rope.mode").map(String::as_str),
        Some("half")
    );
    assert_eq!(m.graph.weights.len(), 1 + 9 * LAYERS + 2);
    let reference = tiny_logits(&m.graph);
    assert!(reference.iter().all(|x| x.is_finite()));

    for (name, dtype, dt, tied, tol) in [
        ("llama-f16", Dtype::F16, DType::F16, true, 0.02f32),
        ("llama-bf16", Dtype::BF16, DType::BF16, false, 0.05),
    ] {
        let path = write_tiny_llama(name, dtype, tied);
        let m = frontend::load(&path).unwrap_or_else(|e| panic!("{name} loads: {e}"));
        let emb = m
            .graph
            .weight_by_name("model.embed_tokens.weight")
            .expect("embedding");
        assert_eq!(emb.ty.enc, Encoding::Dense(dt));
        assert_eq!(m.graph.weight_by_name("lm_head.weight").is_some(), !tied);
        assert_eq!(
            m.graph
                .meta
                .get("llama.tied_embeddings")
                .map(String::as_str),
            Some(if tied { "true" } else { "false" })
        );
        let logits = tiny_logits(&m.graph);
        if tied {
            // a tied model is a different model: compare against f32 with the same tying
            let f32_tied_path = write_tiny_llama("llama-f32-tied", Dtype::F32, true);
            let f32_tied = frontend::load(&f32_tied_path).expect("loads");
            let want = tiny_logits(&f32_tied.graph);
            remove_scratch(&f32_tied_path);
            let d = max_abs_diff(&logits, &want);
            eprintln!("{name} (tied) vs f32: max abs diff {d}");
            assert!(d < tol, "{name}: {d}");
        } else {
            let d = max_abs_diff(&logits, &reference);
            eprintln!("{name} vs f32: max abs diff {d}");
            assert!(d < tol, "{name}: {d}");
        }
        remove_scratch(&path);
    }
    remove_scratch(&f32_path);
}

/// Removes the scratch directory holding `file`.
fn remove_scratch(file: &Path) {
    if let Some(dir) = file
        .parent()
        .filter(|d| d.starts_with(std::env::temp_dir()))
    {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// llama.cpp's conversion of a Hugging Face q/k weight `[heads·head_dim, in]` to GGUF's
/// layout: within each head, row `2i + j` takes row `j·head_dim/2 + i`.
fn permute_for_interleaved(t: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let hd = rows / heads;
    let v = t.as_f32().expect("f32");
    let mut out = vec![0f32; rows * cols];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let dst = h * hd + 2 * i + j;
                let src = h * hd + j * hd / 2 + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&v[src * cols..(src + 1) * cols]);
            }
        }
    }
    Tensor::f32(vec![rows, cols], out)
}

#[test]
fn half_rope_on_hf_weights_equals_interleaved_rope_on_llama_cpp_weights() {
    let path = write_tiny_llama("llama-rope", Dtype::F32, false);
    let hf = frontend::load(&path).expect("loads");
    let want = tiny_logits(&hf.graph);

    let file = SafetensorsFile::open(&path).expect("opens");
    let build = |mode: RopeMode, permute: bool| -> Graph {
        let mut source = |name: &str| -> FrontendResult<Option<(TensorType, WeightData)>> {
            let Some((ty, data)) = file.weight(name)? else {
                return Ok(None);
            };
            let heads = if name.ends_with("q_proj.weight") {
                HEADS
            } else if name.ends_with("k_proj.weight") {
                KV_HEADS
            } else {
                return Ok(Some((ty, data)));
            };
            if !permute {
                return Ok(Some((ty, data)));
            }
            let t = permute_for_interleaved(&data.decode_f32(&ty).expect("decodes"), heads);
            Ok(Some((
                ty,
                WeightData::from_tensor(&t, format!("{name} (permuted)")),
            )))
        };
        build_llama(
            &tiny_config(mode),
            NameScheme::HuggingFace,
            Path::new(&path),
            &mut source,
        )
        .expect("builds")
    };
    let got = tiny_logits(&build(RopeMode::Interleaved, true));
    let d = max_abs_diff(&got, &want);
    eprintln!("half on HF weights vs interleaved on permuted weights: max abs diff {d:e}");
    assert!(d < 1e-4, "max abs diff {d}");
    // and the mode matters: interleaved rotation of unpermuted weights is another model
    let wrong = tiny_logits(&build(RopeMode::Interleaved, false));
    assert!(
        max_abs_diff(&wrong, &want) > 1e-2,
        "the RoPE mode has no effect on this model"
    );
    remove_scratch(&path);
}
