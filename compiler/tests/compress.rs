//! Compression through `llmc build`: calibrated methods (GPTQ, AWQ, SmoothQuant) on SmolLM2,
//! the accuracy budget, MiniLM-L6 embeddings under quantization, and clear errors for flags
//! that do not fit.

#[path = "../../tests/src/assets.rs"]
#[allow(dead_code)]
mod assets;
mod support;

use llmc_ir::{Session, Tensor};
use llmc_passes::quant::{quantize, QuantOptions, Scheme};
use support::*;

const PROMPT: &str = "The capital of France is";

fn eval_file() -> String {
    s(&assets::sotu_dir().join("2016_barack_obama_d.txt"))
}

/// Calibration small enough for a test: 8 windows of 256 tokens of one address.
fn calib_args() -> Vec<String> {
    [
        "--calib",
        &s(&assets::sotu_dir().join("1962_john_f_kennedy_d.txt")),
        "--calib-windows",
        "8",
        "--calib-window",
        "256",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

fn build(dir: &std::path::Path, extra: &[&str]) -> String {
    let model = s(&assets::smollm2_gguf());
    let mut args: Vec<String> = vec![
        "build".into(),
        model,
        "-o".into(),
        s(dir),
        "--name".into(),
        "smol".into(),
        "--emit".into(),
        "so".into(),
        "--max-context".into(),
        "64".into(),
        "--max-tokens".into(),
        "32".into(),
        "--force".into(),
    ];
    args.extend(extra.iter().map(|x| x.to_string()));
    let refs: Vec<&str> = args.iter().map(|x| x.as_str()).collect();
    ok(&refs)
}

#[test]
fn calibrated_bundles_continue_with_paris() {
    let calib = calib_args();
    let c: Vec<&str> = calib.iter().map(|x| x.as_str()).collect();
    for (tag, flags) in [
        ("gptq", &["--quant", "w4a8", "--quant-method", "gptq"][..]),
        (
            "smooth",
            &["--quant", "w8a8", "--quant-method", "smoothquant"][..],
        ),
        ("awq", &["--quant", "w4a16", "--quant-method", "awq"][..]),
    ] {
        let dir = tmp(tag);
        let mut extra = flags.to_vec();
        extra.extend(&c);
        let out = build(&dir, &extra);
        assert!(
            out.contains("calibration: 8 windows of 256 tokens"),
            "{out}"
        );
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap())
                .unwrap();
        let rows = report["rows"].as_array().unwrap();
        let method = match tag {
            "gptq" => "gptq",
            "smooth" => "rtn",
            _ => "rtn+clip",
        };
        let quantized: Vec<&serde_json::Value> = rows
            .iter()
            .filter(|r| r["pass"] == "quantize" && r["params"].as_u64().unwrap_or(0) > 0)
            .collect();
        assert_eq!(quantized.len(), 211, "210 linears and the head");
        assert!(
            quantized.iter().all(|r| r["method"] == method),
            "{tag}: {:?}",
            quantized[0]
        );
        // every calibrated row reports its output error on calibration
        assert!(quantized.iter().all(|r| r["out_error"].as_f64().is_some()));
        if tag == "smooth" {
            // per layer: the attention norm (q, k, v), the FFN norm (gate, up), up's rows (down)
            assert_eq!(rows.iter().filter(|r| r["pass"] == "smooth").count(), 90);
        }
        let text = ok(&["run", &s(&dir), "--prompt", PROMPT, "-n", "4"]);
        assert!(text.contains("Paris"), "{tag}: {text}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn palettized_and_distilled_bundles_continue_with_paris() {
    let calib = calib_args();
    let c: Vec<&str> = calib.iter().map(|x| x.as_str()).collect();
    let dir = tmp("palettize");
    let mut extra = vec!["--palettize", "16:128", "--keep-head", "--distill"];
    extra.extend(&c);
    let out = build(&dir, &extra);
    assert!(out.contains("distilled "), "{out}");
    assert!(
        out.contains("distill check on 8 calibration windows"),
        "{out}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let pal: Vec<&serde_json::Value> = rows.iter().filter(|r| r["pass"] == "palettize").collect();
    assert_eq!(pal.len(), 210, "the linears, not the head");
    assert!(pal
        .iter()
        .all(|r| r["to"] == "!pal4<r128,f16>" && r["method"] == "kmeans+gptq"));
    // indices, and a codebook of 16 f16 entries per 128 rows
    let bpw = report["totals"]["bits_per_weight"].as_f64().unwrap();
    assert!((4.0..4.01).contains(&bpw), "{bpw}");
    let distilled: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| r["pass"] == "distill" && r["correction"].is_string())
        .collect();
    assert_eq!(distilled.len(), 210);
    for r in &distilled {
        let (b, a) = (
            r["out_error_before"].as_f64().unwrap(),
            r["out_error_after"].as_f64().unwrap(),
        );
        assert!(a <= b, "{r}");
    }
    // the corrections stay only if they lower the next-token loss on the calibration windows
    let check = rows
        .iter()
        .find_map(|r| r.get("check"))
        .expect("a check row");
    let (before, after) = (
        check["loss_before"].as_f64().unwrap(),
        check["loss_after"].as_f64().unwrap(),
    );
    assert_eq!(check["kept"], after < before, "{check}");
    if after < before {
        assert!(distilled.iter().any(|r| r["correction"] == "bias"));
    } else {
        assert!(distilled
            .iter()
            .all(|r| r["correction"].as_str().unwrap().starts_with("none")));
    }
    let text = ok(&["run", &s(&dir), "--prompt", PROMPT, "-n", "4"]);
    assert!(text.contains("Paris"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn over_budget_builds_fail_and_write_nothing() {
    let dir = tmp("budget");
    let model = s(&assets::smollm2_gguf());
    let eval = eval_file();
    let base = [
        "build",
        &model,
        "-o",
        &s(&dir),
        "--eval",
        &eval,
        "--eval-windows",
        "2",
        "--eval-window",
        "128",
    ];
    let mut args = base.to_vec();
    args.extend([
        "--quant",
        "w3a16",
        "--group",
        "32",
        "--max-ppl-increase",
        "1%",
    ]);
    fails_with(&args, "over the budget of --max-ppl-increase 1%");
    assert!(
        std::fs::read_dir(&dir).unwrap().next().is_none(),
        "a failed build leaves no files"
    );
    // within budget: the bundle and the figures in report.json
    let mut args = base.to_vec();
    args.extend(["--quant", "w8a16", "--max-ppl-increase", "5"]);
    let out = ok(&args);
    assert!(out.contains("eval: 2 windows x 128 tokens"), "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let e = &report["eval"];
    let rise = e["perplexity"].as_f64().unwrap() / e["reference_perplexity"].as_f64().unwrap();
    assert!(rise < 1.05, "{e}");
    assert!(e["top1"].as_f64().unwrap() > 0.8, "{e}");
    let bpw = report["totals"]["bits_per_weight"].as_f64().unwrap();
    assert!((8.0..8.1).contains(&bpw), "w8 per channel: {bpw}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--calib-self`: the windows a model writes itself are the same for a seed and differ for
/// another; each holds its length of in-vocabulary tokens at positions 0.., and every token
/// after the first is among the 40 the model found likeliest there.
#[test]
fn self_written_calibration_follows_the_model_and_its_seed() {
    let dir = tmp("selfcal");
    let m = llmc::frontend::load(&write_tiny_llama(&dir)).unwrap();
    let write = |seed| llmc::compress::self_calibration(&m, 3, 10, seed, None).unwrap();
    let (a, b, c) = (write(7), write(7), write(8));
    assert_eq!(a.windows, b.windows);
    assert_ne!(a.windows, c.windows);
    assert!(
        a.label
            .contains("3 windows of 10 tokens the model wrote itself"),
        "{}",
        a.label
    );
    assert_eq!(a.windows.len(), 3);
    for w in &a.windows {
        let get = |name: &str| w.iter().find(|(k, _)| k == name).unwrap().1.to_i64_vec();
        let (tokens, positions) = (get("tokens"), get("positions"));
        assert_eq!(positions, (0..10).collect::<Vec<i64>>());
        assert!(tokens.iter().all(|&t| (0..100).contains(&t)), "{tokens:?}");
        let mut session = Session::new(&m.graph).unwrap();
        let feeds: Vec<(&str, Tensor)> = w.iter().map(|(k, t)| (k.as_str(), t.clone())).collect();
        let out = session.run(&feeds).unwrap();
        let logits = out
            .iter()
            .find(|(k, _)| k == "logits")
            .unwrap()
            .1
            .to_f32_vec();
        for (p, next) in tokens.iter().enumerate().skip(1) {
            let row = &logits[(p - 1) * 100..p * 100];
            let above = row.iter().filter(|&&l| l > row[*next as usize]).count();
            assert!(above < 40, "position {p}: token {next} ranks {above}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without any data: SmolLM2's FFN channels scored (and the removed ones compensated) on text
/// it writes itself keep the model working, where the spectral (PruneNet-style) score ruins it.
#[test]
fn self_calibrated_ffn_pruning_beats_the_spectral_score() {
    let model = s(&assets::smollm2_gguf());
    let eval = eval_file();
    let mut ppl = Vec::new();
    for (tag, flags) in [
        (
            "self",
            &[
                "--prune",
                "ffn:0.25",
                "--calib-self",
                "--calib-windows",
                "4",
                "--calib-window",
                "64",
                "--distill",
            ][..],
        ),
        ("spectral", &["--prune", "ffn-prunenet:0.25"][..]),
    ] {
        let dir = tmp(tag);
        let d = s(&dir);
        let mut args = vec![
            "build",
            &model,
            "-o",
            &d,
            "--emit",
            "so",
            "--max-context",
            "64",
            "--eval",
            &eval,
            "--eval-windows",
            "2",
            "--eval-window",
            "128",
        ];
        args.extend(flags);
        let out = ok(&args);
        if tag == "self" {
            assert!(
                out.contains("calibration: 4 windows of 64 tokens the model wrote itself"),
                "{out}"
            );
            // --distill compensates the removed channels, checked on the self-written windows
            assert!(
                out.contains(
                    "prune-ffn compensation: 30 biases for the mean output of what was removed"
                ),
                "{out}"
            );
        }
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap())
                .unwrap();
        let e = &report["eval"];
        ppl.push((
            e["perplexity"].as_f64().unwrap(),
            e["reference_perplexity"].as_f64().unwrap(),
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
    let (own, reference) = ppl[0];
    let spectral = ppl[1].0;
    eprintln!(
        "ffn 25%: self-calibrated {own:.2}, spectral {spectral:.0}, uncompressed {reference:.2}"
    );
    assert!(
        own < 4.0 * reference,
        "self-calibrated: {own} against {reference}"
    );
    assert!(
        spectral > 10.0 * own,
        "spectral {spectral} against self-calibrated {own}"
    );
}

#[test]
fn compression_flags_that_do_not_fit_get_clear_errors() {
    let model = s(&assets::smollm2_gguf());
    let dir = tmp("flags");
    let o = s(&dir);
    let missing = s(&dir.join("missing.txt"));
    let calib_file = s(&assets::sotu_dir().join("1962_john_f_kennedy_d.txt"));
    for (args, needle) in [
        (
            vec!["--quant", "w4a16", "--quant-method", "optq"],
            "--quant-method 'optq' is not a method llmc knows",
        ),
        (
            vec!["--quant", "f16", "--quant-method", "gptq"],
            "--quant-method gptq chooses integer weights",
        ),
        (
            vec![
                "--quant",
                "w4a16",
                "--quant-method",
                "gptq",
                "--calib",
                &missing,
            ],
            "missing.txt",
        ),
        (
            vec!["--quant", "w4a8", "--max-ppl-increase", "lots"],
            "--max-ppl-increase 'lots' is not a percentage",
        ),
        (
            vec!["--quant", "f16", "--bpw", "5"],
            "--bpw mixes integer encodings",
        ),
        (
            vec!["--passes", "quantize{bits=4,method=gptq,damp=2}"],
            "damp must lie in [0, 1)",
        ),
        (
            vec!["--lowrank", "pca:0.7"],
            "--lowrank 'pca:0.7' is not a low-rank spec",
        ),
        (
            vec!["--lowrank", "svd:1.5"],
            "the fraction of values kept must lie in (0, 1)",
        ),
        (vec!["--passes", "caldera{bits=1}"], "bits must be 2 to 4"),
        (
            vec!["--prune", "heads:many"],
            "--prune 'heads:many' is not a pruning spec",
        ),
        (
            vec!["--prune", "heads:1.5"],
            "--prune 'heads:1.5': the fraction must lie in [0, 1)",
        ),
        (vec!["--prune", "layers:0"], "N must be a positive integer"),
        (
            vec!["--prune", "ffn:0.25", "--calib-self", "--calib-window", "1"],
            "give at least one window of two tokens",
        ),
        (
            vec!["--prune", "layers:30", "--calib", &calib_file],
            "would remove every one of the model's 30 layers",
        ),
        (
            vec!["--prune", "heads:0.9", "--calib", &calib_file],
            "removes 3 of the 3 query heads of every KV group",
        ),
        (
            vec!["--passes", "lowrank", "--lowrank", "svd:0.5"],
            "--passes replaces",
        ),
        (
            vec!["--palettize", "12"],
            "a codebook holds a power of two from 2 to 256 entries",
        ),
        (
            vec!["--palettize", "512"],
            "a codebook holds a power of two from 2 to 256 entries",
        ),
        (
            vec!["--palettize", "16:0"],
            "rows per codebook must be a positive number",
        ),
        (
            vec!["--palettize", "many"],
            "--palettize 'many' is not a palette spec",
        ),
        (
            vec!["--palettize", "16", "--quant", "w4a16"],
            "--palettize and --quant/--group/--quant-method/--bpw both choose",
        ),
        (
            vec!["--passes", "palettize{group=g128}"],
            "is not a palette grouping",
        ),
        (vec!["--passes", "palettize{bits=9}"], "bits must be 1 to 8"),
        (
            vec!["--quant", "w4a16", "--distill", "rank:x"],
            "the rank must be a positive number",
        ),
        (
            vec!["--quant", "w4a16", "--distill", "lots"],
            "--distill 'lots' is not a distillation spec",
        ),
        (
            vec!["--passes", "quantize", "--distill"],
            "--passes replaces",
        ),
        (
            vec!["--passes", "quantize,distill{rank=0,bias=false}"],
            "there is nothing to fit",
        ),
    ] {
        let mut a = vec!["build", model.as_str(), "-o", o.as_str()];
        a.extend(args);
        fails_with(&a, needle);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Mean of the token vectors under the attention mask.
fn pooled(h: &Tensor) -> Vec<f32> {
    let (s, d) = (h.shape[1], h.shape[2]);
    let v = h.to_f32_vec();
    (0..d)
        .map(|k| (0..s).map(|t| v[t * d + k]).sum::<f32>() / s as f32)
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64) * (*y as f64))
        .sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// The first 100 sentences of 20 to 300 characters of the 2016–2021 addresses.
fn sentences() -> Vec<String> {
    let mut out = Vec::new();
    for f in llmc::eval::year_files(&assets::sotu_dir(), 2016, 2021).unwrap() {
        let text = std::fs::read_to_string(f).unwrap();
        for s in text.split(['.', '?', '!']) {
            let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
            if (20..=300).contains(&s.len()) && out.len() < 100 {
                out.push(format!("{s}."));
            }
        }
    }
    assert_eq!(out.len(), 100);
    out
}

#[test]
fn minilm_embeddings_survive_quantization() {
    let model = llmc::frontend::load(&assets::minilm_l6_dir()).unwrap();
    let tok = model.tokenizer.as_ref().unwrap();
    let token_types = model
        .graph
        .inputs
        .iter()
        .any(|(n, _)| n == "token_type_ids");
    let feeds: Vec<Vec<(String, Tensor)>> = sentences()
        .iter()
        .map(|s| {
            let ids = tok.encode(s, true).unwrap();
            let n = ids.len();
            let mut f = vec![
                (
                    "input_ids".to_string(),
                    Tensor::i64(vec![1, n], ids.iter().map(|&t| t as i64).collect()),
                ),
                (
                    "attention_mask".to_string(),
                    Tensor::i64(vec![1, n], vec![1; n]),
                ),
            ];
            if token_types {
                f.push((
                    "token_type_ids".to_string(),
                    Tensor::i64(vec![1, n], vec![0; n]),
                ));
            }
            f
        })
        .collect();
    let embed = |g: &llmc_ir::Graph| -> Vec<Vec<f32>> {
        let mut sess = Session::new(g).unwrap();
        feeds
            .iter()
            .map(|f| {
                let inputs: Vec<(&str, Tensor)> =
                    f.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
                let out = sess.run(&inputs).unwrap();
                let h = &out
                    .iter()
                    .find(|(n, _)| n == "last_hidden_state")
                    .unwrap()
                    .1;
                pooled(h)
            })
            .collect()
    };
    let reference = embed(&model.graph);
    let mut means = Vec::new();
    for (scheme, group) in [(Scheme::W8A8, None), (Scheme::W4A16, Some(128))] {
        let mut g = model.graph.clone();
        quantize(&mut g, &QuantOptions::preset(scheme, group)).unwrap();
        let got = embed(&g);
        let mean = got
            .iter()
            .zip(&reference)
            .map(|(a, b)| cosine(a, b))
            .sum::<f64>()
            / got.len() as f64;
        println!(
            "MiniLM-L6 {scheme:?} g{group:?}: mean cosine to f32 over 100 SOTU sentences {mean:.5}"
        );
        means.push(mean);
    }
    assert!(means[0] >= 0.995, "w8a8 mean cosine {}", means[0]);
    assert!(means[1] >= 0.93, "w4a16 g128 mean cosine {}", means[1]);
}
