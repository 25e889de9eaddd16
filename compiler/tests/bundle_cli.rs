//! `llmc run`, `eval`, `bench`, `tokenize`/`detokenize` and `targets` on compiled bundles:
//! SmolLM2-135M (f32) as a decoder bundle and all-MiniLM-L6 as an encoder (graph) bundle,
//! checked against the interpreter, and clear errors for bundles that do not fit.

#[path = "../../tests/src/assets.rs"]
#[allow(dead_code)]
mod assets;
mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use support::*;

const PROMPT: &str = "The capital of France is";

/// SmolLM2 compiled for the host: KV cache of 160 tokens, prefill calls of up to 64.
fn smol() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tmp("smol");
        let model = s(&assets::smollm2_gguf());
        ok(&[
            "build",
            &model,
            "-o",
            &s(&dir),
            "--name",
            "smol",
            "--max-context",
            "160",
            "--max-tokens",
            "64",
            "--force",
        ]);
        dir
    })
}

/// all-MiniLM-L6 compiled for the host: batches of up to 2 sentences of 16 tokens.
fn minilm() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tmp("minilm");
        let model = s(&assets::minilm_l6_dir());
        ok(&[
            "build",
            &model,
            "-o",
            &s(&dir),
            "--name",
            "mini",
            "--emit",
            "so",
            "--dim",
            "batch=2",
            "--dim",
            "seq=16",
        ]);
        dir
    })
}

fn first_text_file() -> String {
    s(&assets::sotu_dir().join("2016_barack_obama_d.txt"))
}

#[test]
fn run_on_a_bundle_continues_with_paris() {
    let b = s(smol());
    for threads in ["1", "2"] {
        let out = ok(&[
            "run",
            &b,
            "--prompt",
            PROMPT,
            "-n",
            "6",
            "--threads",
            threads,
        ]);
        assert!(out.starts_with(PROMPT), "{out}");
        assert!(
            out[PROMPT.len()..].contains("Paris"),
            "{threads} threads: {out}"
        );
    }
}

#[test]
fn eval_on_a_bundle_matches_the_interpreter() {
    let b = s(smol());
    let model = s(&assets::smollm2_gguf());
    let text = first_text_file();
    // a window of 128 takes two prefill calls of 64
    let common = [
        "--window",
        "128",
        "--windows",
        "1",
        "--json",
        "--text",
        &text,
    ];
    let run = |first: &[&str]| -> serde_json::Value {
        let mut args: Vec<&str> = first.to_vec();
        args.extend(common);
        serde_json::from_str(&ok(&args)).expect("json")
    };
    let compiled = run(&["eval", &b, "--reference", &model]);
    let interp = run(&["eval", &model, "--interp"]);
    let (pc, pi) = (
        compiled["perplexity"].as_f64().unwrap(),
        interp["perplexity"].as_f64().unwrap(),
    );
    println!("perplexity: bundle {pc:.5}, interpreter {pi:.5}; {compiled}");
    assert!((pc - pi).abs() / pi < 1e-3, "{pc} vs {pi}");
    assert!(compiled["kl"].as_f64().unwrap() < 1e-4, "{compiled}");
    assert!(compiled["top1"].as_f64().unwrap() > 0.99, "{compiled}");
    fails_with(
        &[
            "eval",
            &b,
            "--window",
            "512",
            "--windows",
            "1",
            "--text",
            &text,
        ],
        "--max-context 512",
    );
}

#[test]
fn bench_reports_prefill_decode_and_bandwidth() {
    let b = s(smol());
    let j: serde_json::Value = serde_json::from_str(&ok(&[
        "bench",
        &b,
        "--threads",
        "1,2",
        "--prefill",
        "64",
        "--context",
        "32",
        "--decode",
        "4",
        "--runs",
        "2",
        "--json",
    ]))
    .expect("json");
    let results = j["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{j}");
    let bytes = j["weight_bytes_per_token"].as_f64().unwrap();
    assert!(bytes > 5e8, "SmolLM2 in f32 reads over 500 MB a token: {j}");
    for r in results {
        let pre = r["prefill_tokens_per_s"]["median"].as_f64().unwrap();
        let dec = r["decode_tokens_per_s"]["median"].as_f64().unwrap();
        let bw = r["decode_weight_gb_per_s"]["median"].as_f64().unwrap();
        assert!(pre > 0.0 && dec > 0.0, "{r}");
        assert!((bw - dec * bytes / 1e9).abs() < 1e-6 * bw, "{r}");
        assert_eq!(
            r["decode_tokens_per_s"]["runs"].as_array().unwrap().len(),
            2
        );
    }
    let table = ok(&[
        "bench",
        &b,
        "--prefill",
        "8",
        "--context",
        "8",
        "--decode",
        "2",
        "--runs",
        "1",
    ]);
    assert!(
        table.contains("decode tok/s") && table.contains("GB/s"),
        "{table}"
    );
    fails_with(&["bench", &b, "--context", "200"], "--max-context 216");
}

#[test]
fn tokenize_and_detokenize_with_the_bundles_tokenizer() {
    let b = s(smol());
    let ids = ok(&["tokenize", &b, PROMPT]);
    assert_eq!(ids.trim(), "504 3575 282 4649 314");
    let model = s(&assets::smollm2_gguf());
    assert_eq!(ok(&["tokenize", &model, PROMPT]), ids);
    let text = ok(&["detokenize", &b, "504", "3575", "282", "4649", "314"]);
    assert_eq!(text.trim_end(), PROMPT);
    assert_eq!(
        ok(&["detokenize", &b, "504,3575"]).trim_end(),
        "The capital"
    );
    fails_with(&["detokenize", &b, "12x"], "not a token id");
    fails_with(&["detokenize", &b, "49152"], "outside the vocabulary");
}

/// A copy of the SmolLM2 bundle (hard links) without the files named.
fn bundle_without(name: &str, drop: &[&str]) -> PathBuf {
    let dir = tmp(name);
    for e in std::fs::read_dir(smol()).unwrap() {
        let p = e.unwrap().path();
        let f = p.file_name().unwrap().to_str().unwrap().to_string();
        if !drop.contains(&f.as_str()) {
            std::fs::hard_link(&p, dir.join(&f)).unwrap();
        }
    }
    dir
}

#[test]
fn bundles_that_do_not_fit_get_clear_errors() {
    let b = s(smol());
    let long = "word ".repeat(100);
    fails_with(
        &["run", &b, "--prompt", &long, "-n", "100"],
        "the bundle was built for",
    );
    fails_with(&["run", &b, "--prompt", PROMPT, "--interp"], "--interp");
    fails_with(
        &["run", &b, "--prompt", PROMPT, "--threads", "1,2"],
        "one number",
    );
    fails_with(&["run", &b, "--input", "x=y.npy"], "--prompt");
    let no_so = bundle_without("no-so", &["libsmol.so"]);
    fails_with(
        &["run", &s(&no_so), "--prompt", PROMPT],
        "rebuild the bundle",
    );
    let no_w = bundle_without("no-weights", &["smol.weights"]);
    fails_with(
        &["run", &s(&no_w), "--prompt", PROMPT],
        "smol.weights: missing",
    );
    let no_tok = bundle_without("no-tok", &["tokenizer.json"]);
    fails_with(
        &["run", &s(&no_tok), "--prompt", PROMPT],
        "tokenizer.json: missing",
    );
    let bad = bundle_without("bad-manifest", &["manifest.json"]);
    std::fs::write(bad.join("manifest.json"), "{ not json").unwrap();
    fails_with(&["run", &s(&bad), "--prompt", PROMPT], "not valid JSON");
    fails_with(&["bench", &s(&tmp("empty"))], "not a bundle directory");
    fails_with(
        &["run", &s(&tmp("empty2")), "--prompt", PROMPT],
        "neither a bundle",
    );
    // the bundle is there: building into it again needs --force, and says so before compiling
    let model = s(&assets::smollm2_gguf());
    fails_with(&["build", &model, "-o", &b, "--name", "smol"], "exists");
    fails_with(
        &[
            "build",
            &model,
            "-o",
            &s(&tmp("cross")),
            "--target",
            "aarch64",
            "--emit",
            "so",
        ],
        "--emit so",
    );
    for d in [no_so, no_w, no_tok, bad] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn an_encoder_bundle_embeds_like_the_interpreter() {
    let b = s(minilm());
    let model = s(&assets::minilm_l6_dir());
    let sentences = ["A man is playing a guitar.", "Someone plays the guitar."];
    let (got, want) = (tmp("emb-bundle"), tmp("emb-interp"));
    for (m, out) in [(&b, &got), (&model, &want)] {
        ok(&[
            "run",
            m,
            "--prompt",
            sentences[0],
            "--prompt",
            sentences[1],
            "--output-dir",
            &s(out),
            "--force",
        ]);
    }
    let read = |d: &Path, n: &str| llmc::npy::read(&d.join(format!("{n}.npy"))).unwrap();
    let (h, r) = (
        read(&got, "last_hidden_state"),
        read(&want, "last_hidden_state"),
    );
    assert_eq!(h.shape, r.shape);
    let d = h
        .to_f32_vec()
        .iter()
        .zip(r.to_f32_vec())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("MiniLM bundle vs interpreter: max abs diff {d}");
    assert!(d < 1e-3, "{d}");
    assert_eq!(read(&got, "attention_mask"), read(&want, "attention_mask"));

    // the same through --input files
    let ids_file = want.join("ids.npy");
    let (bsz, seq) = (r.shape[0], r.shape[1]);
    let tok = llmc::tokenizer::Tokenizer::from_file(&minilm().join("tokenizer.json")).unwrap();
    let mut ids = vec![0i64; bsz * seq];
    for (i, snt) in sentences.iter().enumerate() {
        for (j, t) in tok.encode(snt, true).unwrap().into_iter().enumerate() {
            ids[i * seq + j] = t as i64;
        }
    }
    llmc::npy::write(&ids_file, &llmc_ir::Tensor::i64(vec![bsz, seq], ids)).unwrap();
    let mask_file = s(&want.join("attention_mask.npy"));
    let zeros = want.join("types.npy");
    llmc::npy::write(
        &zeros,
        &llmc_ir::Tensor::i64(vec![bsz, seq], vec![0; bsz * seq]),
    )
    .unwrap();
    let via = tmp("emb-npy");
    ok(&[
        "run",
        &b,
        "--input",
        &format!("input_ids={}", s(&ids_file)),
        "--input",
        &format!("attention_mask={mask_file}"),
        "--input",
        &format!("token_type_ids={}", s(&zeros)),
        "--output-dir",
        &s(&via),
    ]);
    assert_eq!(read(&via, "last_hidden_state"), h);

    // what does not fit the bundle
    let text = first_text_file();
    fails_with(&["eval", &b, "--text", &text], "needs a decoder");
    fails_with(&["bench", &b], "needs a decoder");
    let long = "word ".repeat(40);
    fails_with(
        &[
            "run",
            &b,
            "--prompt",
            &long,
            "--output-dir",
            &s(&tmp("emb-long")),
        ],
        "--dim seq=",
    );
    fails_with(
        &[
            "run",
            &b,
            "--prompt",
            "a",
            "--prompt",
            "b",
            "--prompt",
            "c",
            "--output-dir",
            &s(&tmp("emb-3")),
        ],
        "--dim batch=3",
    );
    fails_with(
        &[
            "run",
            &b,
            "--input",
            &format!("nope={}", s(&ids_file)),
            "--output-dir",
            &s(&via),
        ],
        "no input 'nope'",
    );
    // outputs are never overwritten without --force
    fails_with(
        &[
            "run",
            &b,
            "--prompt",
            sentences[0],
            "--output-dir",
            &s(&got),
        ],
        "exists",
    );
    for d in [got, want, via] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn targets_lists_kernels_per_cpu() {
    let j: serde_json::Value = serde_json::from_str(&ok(&["targets", "--json"])).unwrap();
    let rows = j["targets"].as_array().unwrap();
    let kernels = |arch: &str, cpu: &str| -> String {
        rows.iter()
            .find(|r| r["arch"] == arch && r["cpu"] == cpu)
            .unwrap_or_else(|| panic!("no row for {arch} {cpu}: {j}"))["kernels"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let x86: Vec<String> = ["x86-64", "x86-64-v3", "skylake-avx512", "znver4"]
        .iter()
        .map(|c| kernels("x86_64", c))
        .collect();
    let arm: Vec<String> = ["generic", "cortex-a76", "neoverse-n2"]
        .iter()
        .map(|c| kernels("aarch64", c))
        .collect();
    for set in [&x86, &arm] {
        for (i, a) in set.iter().enumerate() {
            for b in &set[i + 1..] {
                assert_ne!(a, b, "two feature sets select the same kernels: {j}");
            }
        }
    }
    let ptx = rows.iter().find(|r| r["arch"] == "nvptx64").unwrap();
    assert_eq!(ptx["status"], "not yet");
    let text = ok(&["targets"]);
    for want in [
        "x86_64",
        "aarch64",
        "nvptx64",
        "neoverse-n2",
        "znver4",
        "not yet",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
}

/// `--entropy` writes a smaller, entropy-coded weights file that `llmc run` decodes before
/// init: the same text as the plain bundle (the coding is lossless); a truncated coded file
/// is refused with an error naming it.
#[test]
fn entropy_coded_weights_run_like_plain_ones() {
    let model = s(&assets::smollm2_gguf());
    let build = |name: &str, extra: &[&str]| {
        let dir = tmp(name);
        let mut args = vec![
            "build",
            &model,
            "-o",
            "",
            "--name",
            "smol",
            "--emit",
            "so",
            "--quant",
            "w4a16",
            "--group",
            "128",
            "--max-context",
            "64",
            "--max-tokens",
            "16",
            "--force",
        ];
        let d = s(&dir);
        args[3] = &d;
        args.extend(extra);
        ok(&args);
        dir
    };
    let plain = build("plain", &[]);
    let coded = build("coded", &["--entropy"]);
    let w = |d: &Path| d.join("smol.weights");
    let (pb, cb) = (
        std::fs::read(w(&plain)).unwrap(),
        std::fs::read(w(&coded)).unwrap(),
    );
    assert_eq!(&cb[..8], b"LLMCRANS");
    assert!(
        cb.len() < pb.len() * 96 / 100,
        "{} vs {}",
        cb.len(),
        pb.len()
    );
    let man: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(coded.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(man["weights_file"]["decoded_bytes"], pb.len());
    let text = |d: &Path| ok(&["run", &s(d), "--prompt", PROMPT, "-n", "8"]);
    assert_eq!(text(&plain), text(&coded));
    std::fs::write(w(&coded), &cb[..cb.len() / 2]).unwrap();
    fails_with(&["run", &s(&coded), "--prompt", PROMPT], "smol.weights");
}
