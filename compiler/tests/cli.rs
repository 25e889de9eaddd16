//! The `llmc` command line on the real models: the evaluation protocol's figure, greedy
//! generation, sentence embeddings, inspection, and clear errors for bad input.

#[path = "../../tests/src/assets.rs"]
#[allow(dead_code)]
mod assets;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn llmc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llmc"))
        .args(args)
        .output()
        .expect("run llmc")
}

fn ok(args: &[&str]) -> String {
    let out = llmc(args);
    assert!(
        out.status.success(),
        "llmc {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Fails with exit code 1 (not a panic's 101) and says `needle` on stderr.
fn fails_with(args: &[&str], needle: &str) {
    let out = llmc(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "llmc {args:?}: want a clean failure, got {:?}\n{err}",
        out.status
    );
    assert!(
        err.contains(needle),
        "llmc {args:?}: stderr lacks {needle:?}:\n{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

fn eval_files() -> Vec<PathBuf> {
    let dir = assets::sotu_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            ("2016".."2022").contains(&&n[..4])
        })
        .collect();
    files.sort();
    assert_eq!(files.len(), 6, "the protocol's six files 2016..2021");
    files
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llmc-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn eval_smollm2_matches_the_reference_perplexity() {
    let model = assets::smollm2_gguf();
    let files = eval_files();
    let mut args: Vec<String> = vec![
        "eval".into(),
        model.display().to_string(),
        "--json".into(),
        "--text".into(),
    ];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let j: serde_json::Value = serde_json::from_str(&ok(&refs)).expect("json");
    let ppl = j["perplexity"].as_f64().unwrap();
    println!(
        "SmolLM2-135M Q4_1 perplexity {ppl:.4} over {} tokens in {:.1} s",
        j["predicted"],
        j["seconds"].as_f64().unwrap()
    );
    assert_eq!(j["tokens"], 45385);
    assert_eq!(j["predicted"], 8176);
    // a numpy forward pass and llama.cpp on the f32 weights both measure 24.897
    assert!((ppl - 24.897).abs() / 24.897 < 0.005, "perplexity {ppl}");
}

#[test]
fn eval_against_itself_agrees_fully() {
    let model = assets::smollm2_gguf();
    let files = eval_files();
    let m = model.display().to_string();
    let f = files[0].display().to_string();
    let j: serde_json::Value = serde_json::from_str(&ok(&[
        "eval",
        &m,
        "--reference",
        &m,
        "--windows",
        "1",
        "--window",
        "64",
        "--json",
        "--text",
        &f,
    ]))
    .unwrap();
    assert!(j["kl"].as_f64().unwrap().abs() < 1e-6, "{j}");
    assert_eq!(j["top1"].as_f64().unwrap(), 1.0);
}

#[test]
fn run_smollm2_continues_with_paris() {
    let model = assets::smollm2_gguf();
    let out = ok(&[
        "run",
        &model.display().to_string(),
        "--prompt",
        "The capital of France is",
        "-n",
        "6",
    ]);
    assert!(out.starts_with("The capital of France is"), "{out}");
    assert!(
        out["The capital of France is".len()..].contains("Paris"),
        "{out}"
    );
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
fn run_minilm_embeddings_separate_paraphrases() {
    let dir = assets::minilm_l6_dir();
    let out = tmp("minilm");
    let sentences = [
        "A man is playing a guitar.",
        "Someone plays the guitar.",
        "The stock market fell sharply today.",
        "Share prices dropped steeply this afternoon.",
    ];
    let mut args = vec![
        "run".to_string(),
        dir.display().to_string(),
        "--output-dir".into(),
        out.display().to_string(),
    ];
    for s in sentences {
        args.push("--prompt".into());
        args.push(s.into());
    }
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    ok(&refs);
    let h = llmc::npy::read(&out.join("last_hidden_state.npy")).unwrap();
    let mask = llmc::npy::read(&out.join("attention_mask.npy")).unwrap();
    let (b, s, d) = (h.shape[0], h.shape[1], h.shape[2]);
    assert_eq!(b, 4);
    let (hv, mv) = (h.to_f32_vec(), mask.to_i64_vec());
    let pooled: Vec<Vec<f32>> = (0..b)
        .map(|i| {
            let mut v = vec![0f32; d];
            let mut n = 0f32;
            for t in 0..s {
                if mv[i * s + t] == 1 {
                    n += 1.0;
                    for k in 0..d {
                        v[k] += hv[(i * s + t) * d + k];
                    }
                }
            }
            v.iter().map(|x| x / n).collect()
        })
        .collect();
    let para = [
        cosine(&pooled[0], &pooled[1]),
        cosine(&pooled[2], &pooled[3]),
    ];
    let unrelated = [
        cosine(&pooled[0], &pooled[2]),
        cosine(&pooled[0], &pooled[3]),
        cosine(&pooled[1], &pooled[2]),
        cosine(&pooled[1], &pooled[3]),
    ];
    println!("paraphrase cosines {para:?}, unrelated {unrelated:?}");
    let min_para = para.iter().cloned().fold(f32::INFINITY, f32::min);
    let max_unrel = unrelated.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    assert!(
        min_para > max_unrel + 0.3,
        "paraphrases {para:?} vs unrelated {unrelated:?}"
    );
    // the outputs are kept: a second run refuses to overwrite them
    fails_with(&refs, "exists");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn inspect_describes_the_model_and_prints_parsable_ir() {
    let model = assets::smollm2_gguf().display().to_string();
    let text = ok(&["inspect", &model]);
    assert!(text.contains("architecture  llama"), "{text}");
    assert!(
        text.contains("causal language model (vocabulary 49152"),
        "{text}"
    );
    assert!(text.contains("!q4<g32,f16,min>"), "{text}");
    let ir = ok(&["inspect", &model, "--ir"]);
    let g = llmc_ir::parse("inspect", &ir).expect("the printed IR parses");
    llmc_ir::verify(&g).expect("and verifies");
    assert_eq!(llmc_ir::print(&g), ir);
    let j: serde_json::Value = serde_json::from_str(&ok(&["inspect", &model, "--json"])).unwrap();
    assert_eq!(j["ops"]["attention"], 30);
}

#[test]
fn bad_input_gets_a_clear_error() {
    fails_with(&["inspect", "/nonexistent/model.gguf"], "no such file");
    let dir = tmp("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\0\0\0\xff").unwrap();
    fails_with(&["inspect", &junk.display().to_string()], "junk.gguf");
    let model = assets::smollm2_gguf().display().to_string();
    fails_with(
        &["run", &model, "--prompt", "hi", "-n", "100000"],
        "exceed the context",
    );
    let minilm = assets::minilm_l6_dir().display().to_string();
    fails_with(
        &["run", &minilm, "--input", "input_ids"],
        "must be NAME=FILE.npy",
    );
    fails_with(
        &[
            "run",
            &minilm,
            "--input",
            &format!("input_ids={}", junk.display()),
        ],
        "not a .npy file",
    );
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}
