//! GGUF frontend on the real SmolLM2-135M (Q4_1): metadata, the rebuilt tokenizer, greedy
//! decoding through the KV cache, and perplexity against the numpy reference.

use llmc::frontend::{self, Model, ModelKind};
use llmc_ir::interp::WeightCache;
use llmc_ir::{Encoding, Session, Tensor};
use llmc_tests::{max_abs_diff, smollm2_gguf, sotu_dir};
use sha2::{Digest, Sha256};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// The model, loaded once for every test here, and the decoded weights its sessions share.
fn model() -> &'static (Model, Arc<WeightCache>) {
    static M: OnceLock<(Model, Arc<WeightCache>)> = OnceLock::new();
    M.get_or_init(|| {
        let m = frontend::load(&smollm2_gguf()).expect("SmolLM2 loads");
        let cache = Arc::new(WeightCache::new(&m.graph));
        (m, cache)
    })
}

fn session() -> Session<'static> {
    let (m, cache) = model();
    Session::with_cache(&m.graph, cache.clone()).expect("the graph verifies")
}

/// The evaluation text of ASSETS.md: the 2016..2021 addresses, sorted by file name, each
/// stripped, joined by a blank line.
fn eval_text() -> String {
    let dir = sotu_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("read the corpus")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".txt") && ("2016".."2022").contains(&n.get(..4).unwrap_or("")))
        .collect();
    names.sort();
    assert_eq!(names.len(), 6, "{names:?}");
    let parts: Vec<String> = names
        .iter()
        .map(|n| {
            std::fs::read_to_string(dir.join(n))
                .expect("read a speech")
                .trim()
                .to_string()
        })
        .collect();
    let text = parts.join("\n\n");
    assert_eq!(text.len(), 211_660);
    let digest: String = Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        digest,
        "fb4e51482722b21ed1041940a5e56ccd2c6315adbcc484ce9b37fc7e39208548"
    );
    text
}

/// Runs `ids` at positions `start..` and returns the logits, `[ids.len(), vocab]` row-major.
fn forward(s: &mut Session, ids: &[u32], start: usize) -> Vec<f32> {
    let n = ids.len();
    let tokens = Tensor::i64(vec![1, n], ids.iter().map(|&t| t as i64).collect());
    let positions = Tensor::i64(vec![1, n], (start..start + n).map(|p| p as i64).collect());
    let out = s
        .run(&[("tokens", tokens), ("positions", positions)])
        .expect("the model runs");
    let (name, logits) = out.into_iter().next().expect("one output");
    assert_eq!(name, "logits");
    assert_eq!(logits.shape, vec![1, n, 49152]);
    logits.as_f32().expect("f32 logits").to_vec()
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn imports_with_its_metadata_in_well_under_a_second() {
    let path = smollm2_gguf();
    let _ = frontend::load(&path).expect("loads"); // warm the page cache
    let t = Instant::now();
    let m = frontend::load(&path).expect("loads");
    let load = t.elapsed();
    eprintln!("GGUF load (parse, tokenizer, graph): {load:?}");
    assert!(load.as_secs_f64() < 1.0, "loading took {load:?}");

    assert_eq!(m.architecture, "llama");
    assert_eq!(
        m.kind,
        ModelKind::CausalLm {
            vocab: 49152,
            max_context: 8192,
            bos: Some(1),
            eos: Some(2)
        }
    );
    let g = &m.graph;
    let meta = |k: &str| g.meta.get(k).map(String::as_str);
    assert_eq!(meta("llama.block_count"), Some("30"));
    assert_eq!(meta("llama.embedding_length"), Some("576"));
    assert_eq!(meta("llama.attention.head_count"), Some("9"));
    assert_eq!(meta("llama.attention.head_count_kv"), Some("3"));
    assert_eq!(meta("llama.feed_forward_length"), Some("1536"));
    assert_eq!(meta("llama.vocab_size"), Some("49152"));
    assert_eq!(meta("llama.tied_embeddings"), Some("true"));
    assert_eq!(meta("llama.rope.mode"), Some("interleaved"));
    assert_eq!(meta("llama.rope.freq_base"), Some("100000.0"));
    // 1 embedding + 9 per layer + the final norm; no output weight (tied)
    assert_eq!(g.weights.len(), 1 + 30 * 9 + 1);
    assert!(g.weight_by_name("output.weight").is_none());
    assert_eq!(g.states.len(), 60);
    assert_eq!(g.states[0].ty.to_string(), "tensor<{batch}x3x{ctx}x64xf32>");
    let ins: Vec<String> = g
        .inputs
        .iter()
        .map(|(n, v)| format!("{n}: {}", g.ty(*v)))
        .collect();
    assert_eq!(
        ins,
        [
            "tokens: tensor<{batch}x{seq}xi64>",
            "positions: tensor<{batch}x{seq}xi64>"
        ]
    );
    assert_eq!(
        g.ty(g.outputs[0].1).to_string(),
        "tensor<{batch}x{seq}x49152xf32>"
    );
    let emb = g.weight_by_name("token_embd.weight").expect("embedding");
    assert_eq!(emb.ty.to_string(), "tensor<49152x576x!q8<g32,f16,sym>>");
    let q = g.weight_by_name("blk.0.attn_q.weight").expect("q");
    assert_eq!(q.ty.to_string(), "tensor<576x576x!q4<g32,f16,min>>");
    assert_eq!(
        g.weight_by_name("blk.7.ffn_down.weight")
            .expect("down")
            .ty
            .to_string(),
        "tensor<576x1536x!q4<g32,f16,min>>"
    );
    assert_eq!(
        g.weight_by_name("output_norm.weight").expect("norm").ty.enc,
        Encoding::Dense(llmc_ir::DType::F32)
    );
    // weights stay in the file's map until something decodes them
    assert!(matches!(
        q.data.as_ref().expect("data").bytes,
        llmc_ir::Bytes::Mapped { .. }
    ));
    // the graph's text form is a fixed point
    let text = llmc_ir::print(g);
    let again = llmc_ir::parse("smollm2.llmc", &text).expect("the printed graph parses");
    assert_eq!(llmc_ir::print(&again), text);
}

#[test]
fn tokenizer_makes_45385_tokens_of_the_eval_text() {
    let (m, _) = model();
    let tok = m.tokenizer.as_ref().expect("the GGUF carries a tokenizer");
    assert_eq!(tok.vocab_size(), 49152);
    let text = eval_text();
    let ids = tok.encode(&text, false).expect("encodes");
    assert_eq!(ids.len(), 45_385);
    // digits are split one by one; byte-level BPE round-trips the text
    let year = tok.encode("in 2016", false).expect("encodes");
    assert_eq!(year.len(), 1 + 4 + 1, "{year:?}");
    assert_eq!(
        tok.decode(&ids[..200]).expect("decodes"),
        tok.decode(
            &tok.encode(&tok.decode(&ids[..200]).unwrap(), false)
                .unwrap()
        )
        .unwrap()
    );
    assert!(text.starts_with(&tok.decode(&ids[..100]).expect("decodes")));
    // control tokens are matched whole
    assert_eq!(
        tok.encode("<|im_start|>user", false).expect("encodes")[0],
        1
    );
}

#[test]
fn greedy_continuation_of_the_capital_of_france_is_paris() {
    let (m, _) = model();
    let tok = m.tokenizer.as_ref().expect("tokenizer");
    let mut ids = tok
        .encode("The capital of France is", false)
        .expect("encodes");
    let mut s = session();
    let logits = forward(&mut s, &ids, 0);
    let mut next = argmax(&logits[(ids.len() - 1) * 49152..]);
    let t = Instant::now();
    let steps = 8;
    for _ in 0..steps {
        ids.push(next);
        let pos = ids.len() - 1;
        next = argmax(&forward(&mut s, &ids[pos..], pos));
    }
    eprintln!("decode: {:?} per token", t.elapsed() / steps);
    assert_eq!(s.context_len(), ids.len());
    let text = tok.decode(&ids).expect("decodes");
    eprintln!("greedy: {text:?}");
    assert!(text.contains("Paris"), "{text:?}");
}

#[test]
fn prefill_logits_equal_token_by_token_decode() {
    let (m, _) = model();
    let tok = m.tokenizer.as_ref().expect("tokenizer");
    let ids = tok
        .encode("It was the best of times, it was the worst", false)
        .expect("encodes");
    let ids = &ids[..8];
    let all = forward(&mut session(), ids, 0);
    let mut s = session();
    for (i, &id) in ids.iter().enumerate() {
        let row = forward(&mut s, &[id], i);
        let d = max_abs_diff(&row, &all[i * 49152..(i + 1) * 49152]);
        assert!(
            d <= 1e-3,
            "token {i}: prefill and decode logits differ by {d}"
        );
    }
    assert_eq!(s.context_len(), 8);
    s.reset();
    assert_eq!(s.context_len(), 0);
    let again = forward(&mut s, &ids[..1], 0);
    assert!(
        max_abs_diff(&again, &all[..49152]) <= 1e-3,
        "reset does not empty the cache"
    );
}

/// Perplexity of the first 512-token window of the evaluation text (no BOS, empty cache),
/// 511 predicted tokens.
///
/// Reference: `python3 /work/shared/reference/smollm2_reference.py SmolLM2-135M-Instruct.Q4_1.gguf
/// eval.txt 512` (numpy forward pass over the weights dequantized to f32, tokenizer rebuilt from
/// the GGUF) on the same text, which encodes it and takes the first 512 ids — the same tokens as
/// here. It printed `{"tokens": 512, "nll": 3.212371349334717, "ppl": 24.837915819413514}`.
#[test]
fn first_window_perplexity_matches_the_numpy_reference() {
    const REFERENCE_PPL: f64 = 24.837915819413514;
    let (m, _) = model();
    let tok = m.tokenizer.as_ref().expect("tokenizer");
    let ids = tok.encode(&eval_text(), false).expect("encodes");
    let window = &ids[..512];
    let mut s = session();
    let _ = forward(&mut s, &window[..1], 0); // decode the weights before timing
    s.reset();
    let t = Instant::now();
    let logits = forward(&mut s, window, 0);
    eprintln!("512-token prefill through Session::run: {:?}", t.elapsed());
    let mut nll = 0f64;
    for i in 0..511 {
        let row = &logits[i * 49152..(i + 1) * 49152];
        let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let lse = row
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln()
            + max;
        nll += lse - row[window[i + 1] as usize] as f64;
    }
    let ppl = (nll / 511.0).exp();
    eprintln!("first-window perplexity: {ppl:.4} (numpy reference {REFERENCE_PPL:.4})");
    assert!(
        (ppl / REFERENCE_PPL - 1.0).abs() < 0.005,
        "perplexity {ppl} vs reference {REFERENCE_PPL}"
    );
}
