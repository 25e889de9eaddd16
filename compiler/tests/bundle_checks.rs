//! The checks every entry point makes (issue 3, done-when 5) on a tiny Llama compiled for the
//! host: corrupt weights get their own error code from init, bad token ids and a full
//! context are refused without touching the KV cache; and building the same model twice
//! gives byte-identical bundles (done-when 6).

mod support;

use llmc_runtime::{Bundle, Status};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use support::*;

const MAX_CONTEXT: i64 = 16;
const MAX_TOKENS: i64 = 8;

/// The tiny model's directory (written once per test process).
fn tiny_model() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| write_tiny_llama(&tmp("tiny-model")))
}

/// Compiles the tiny model for the host into a fresh bundle directory.
fn build(name: &str, max_context: i64) -> PathBuf {
    build_with(name, max_context, false)
}

/// As [`build`], with the weights embedded in the object or not.
fn build_with(name: &str, max_context: i64, embed_weights: bool) -> PathBuf {
    let m = llmc::frontend::load(tiny_model()).expect("load the tiny model");
    let spec = llmc_backends::TargetSpec::parse("host", None, None).unwrap();
    let opts = llmc_backends::cpu::BuildOptions {
        name: "tiny".into(),
        max_context,
        max_tokens: MAX_TOKENS,
        ..Default::default()
    };
    let req = llmc_backends::cpu::EmitRequest {
        embed_weights,
        ..Default::default()
    };
    let b = llmc_backends::cpu::compile(&m.graph, &spec, &opts, req).expect("compile");
    let dir = tmp(name);
    llmc::bundle::write_model_bundle(
        &b,
        &m,
        None,
        &dir,
        &llmc::bundle::Outputs {
            so: true,
            embed_weights,
            ..Default::default()
        },
        false,
    )
    .expect("write the bundle");
    dir
}

fn bundle() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build("tiny-bundle", MAX_CONTEXT))
}

fn status<T: std::fmt::Debug>(r: Result<T, llmc_runtime::BundleError>) -> Status {
    r.expect_err("the call should fail")
        .status()
        .expect("an entry point's status")
}

fn weights() -> Vec<u8> {
    std::fs::read(bundle().join("tiny.weights")).unwrap()
}

#[test]
fn init_names_each_corruption_of_the_weights() {
    let mut b = Bundle::open(bundle(), "tiny", 1).unwrap();
    let good = weights();
    let vocab = VOCAB;
    let mut cases: Vec<(&str, Vec<u8>, Status)> = vec![];
    cases.push((
        "truncated by one block",
        good[..good.len() - 64].to_vec(),
        Status::BadWeightsSize,
    ));
    cases.push((
        "truncated into the header",
        good[..40].to_vec(),
        Status::BadWeightsSize,
    ));
    let mut flipped = good.clone();
    let at = good.len() - 100;
    flipped[at] ^= 0x10;
    cases.push(("one flipped byte in the data", flipped, Status::BadChecksum));
    let mut version = good.clone();
    version[8..12].copy_from_slice(&2u32.to_le_bytes());
    cases.push(("version 2", version, Status::BadVersion));
    let mut magic = good.clone();
    magic[0] = b'X';
    cases.push(("bad magic", magic, Status::BadMagic));
    // the same model built for another context: same size, another model hash
    let other = build("tiny-other", MAX_CONTEXT + 1);
    let other_w = std::fs::read(other.join("tiny.weights")).unwrap();
    assert_eq!(other_w.len(), good.len());
    cases.push(("another build's weights", other_w, Status::WrongModel));
    for (what, bytes, want) in cases {
        assert_eq!(status(b.set_weights(&bytes)), want, "{what}");
        // a failed init leaves the state unusable
        assert_eq!(
            status(b.prefill(&[1], vocab)),
            Status::NotInitialized,
            "{what}: prefill after a failed init"
        );
    }
    b.set_weights(&good).expect("the good weights pass");
    b.prefill(&[1, 2, 3], vocab).expect("and the state works");
    let _ = std::fs::remove_dir_all(other);
}

#[test]
fn calls_before_init_and_a_small_state_are_refused() {
    let mut b = Bundle::load(bundle(), "tiny", 1).unwrap();
    let mut logits = vec![0f32; VOCAB];
    assert_eq!(status(b.prefill(&[1], VOCAB)), Status::NotInitialized);
    assert_eq!(status(b.decode(1, &mut logits)), Status::NotInitialized);
    assert_eq!(status(b.reset()), Status::NotInitialized);
    assert_eq!(status(b.context()), Status::NotInitialized);
    let (sb, wb) = (b.state_bytes() as u64, b.weights_bytes() as u64);
    assert_eq!(b.init_raw(sb - 1, wb), Status::StateTooSmall as i32);
    assert_eq!(b.init_raw(0, wb), Status::StateTooSmall as i32);
    assert_eq!(b.init_raw(sb, wb - 64), Status::BadWeightsSize as i32);
    assert_eq!(b.init_raw(sb, wb), Status::Ok as i32);
    assert_eq!(b.context().unwrap(), 0);
}

#[test]
fn token_ids_out_of_range_leave_the_cache_untouched() {
    let mut b = Bundle::open(bundle(), "tiny", 1).unwrap();
    let mut logits = vec![0f32; VOCAB];
    b.prefill(&[5, 17, 42], VOCAB).unwrap();
    let v = VOCAB as i32;
    for bad in [
        vec![-1],
        vec![v],
        vec![3, v],
        vec![i32::MIN],
        vec![7, 8, -5],
    ] {
        assert_eq!(
            status(b.prefill(&bad, VOCAB)),
            Status::TokenOutOfRange,
            "{bad:?}"
        );
        assert_eq!(
            b.context().unwrap(),
            3,
            "{bad:?} must not advance the cache"
        );
    }
    assert_eq!(status(b.decode(v, &mut logits)), Status::TokenOutOfRange);
    assert_eq!(status(b.decode(-1, &mut logits)), Status::TokenOutOfRange);
    assert_eq!(b.context().unwrap(), 3);
    // the cache is as if the bad calls never happened
    b.decode(99, &mut logits).unwrap();
    let mut fresh = Bundle::open(bundle(), "tiny", 1).unwrap();
    let mut want = vec![0f32; VOCAB];
    fresh.prefill(&[5, 17, 42], VOCAB).unwrap();
    fresh.decode(99, &mut want).unwrap();
    assert_eq!(logits, want);
}

#[test]
fn a_full_context_and_too_many_tokens_are_refused() {
    let mut b = Bundle::open(bundle(), "tiny", 1).unwrap();
    let mut logits = vec![0f32; VOCAB];
    let nine: Vec<i32> = (1..=MAX_TOKENS as i32 + 1).collect();
    assert_eq!(status(b.prefill(&nine, VOCAB)), Status::TooManyTokens);
    assert_eq!(b.context().unwrap(), 0);
    let eight = &nine[..MAX_TOKENS as usize];
    b.prefill(eight, VOCAB).unwrap();
    b.prefill(&eight[..7], VOCAB).unwrap();
    assert_eq!(status(b.prefill(&[1, 2], VOCAB)), Status::ContextFull);
    assert_eq!(b.context().unwrap(), 15);
    b.decode(3, &mut logits).unwrap();
    assert_eq!(b.context().unwrap(), MAX_CONTEXT);
    assert_eq!(status(b.decode(3, &mut logits)), Status::ContextFull);
    assert_eq!(b.context().unwrap(), MAX_CONTEXT);
    b.reset().unwrap();
    assert_eq!(b.context().unwrap(), 0);
    b.prefill(eight, VOCAB).unwrap();
}

#[test]
fn embedded_weights_work_like_the_file() {
    let dir = build_with("tiny-embedded", MAX_CONTEXT, true);
    assert!(!dir.join("tiny.weights").exists());
    let mut e = Bundle::open(&dir, "tiny", 1).unwrap();
    assert!(e.weights_embedded());
    let mut f = Bundle::open(bundle(), "tiny", 1).unwrap();
    assert!(!f.weights_embedded());
    assert_eq!(e.weights_bytes(), f.weights_bytes());
    let toks = [5, 17, 42, 99];
    assert_eq!(
        e.prefill(&toks, VOCAB).unwrap(),
        f.prefill(&toks, VOCAB).unwrap()
    );
    // a corrupted copy of the embedded weights is caught like a corrupted file
    let w = e.weights_mut();
    let at = w.len() - 1;
    w.as_mut_slice()[at] ^= 1;
    assert_eq!(status(e.init_state()), Status::BadChecksum);
    let _ = std::fs::remove_dir_all(dir);
}

/// Every file of a bundle directory, by name.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn building_twice_gives_identical_bundles() {
    // SmolLM2 with its GGUF tokenizer, quantized (a parallel pass), and the tiny model
    let smol = llmc_tests_assets::smollm2_gguf();
    let tiny = tiny_model().to_path_buf();
    let cases: Vec<(PathBuf, Vec<&str>)> = vec![
        (
            smol,
            vec![
                "--quant",
                "w8a8",
                "--max-context",
                "32",
                "--max-tokens",
                "8",
                "--emit",
                "so",
            ],
        ),
        (
            tiny,
            vec![
                "--quant",
                "w4a16",
                "--max-context",
                "32",
                "--embed-weights",
                "--emit",
                "so",
            ],
        ),
    ];
    for (model, flags) in cases {
        let dirs = [tmp("same-a"), tmp("same-b")];
        for d in &dirs {
            let mut args = vec!["build".to_string(), s(&model), "-o".into(), s(d)];
            args.extend(["--name".to_string(), "m".to_string()]);
            args.extend(flags.iter().map(|f| f.to_string()));
            let refs: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
            ok(&refs);
        }
        let (a, b) = (files(&dirs[0]), files(&dirs[1]));
        let names: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
        for want in ["m.o", "libm.a", "m.h", "manifest.json", "libm.so"] {
            assert!(names.contains(&want), "{model:?}: no {want} in {names:?}");
        }
        assert_eq!(names, b.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>());
        for ((n, x), (_, y)) in a.iter().zip(&b) {
            let first = x.iter().zip(y).position(|(p, q)| p != q);
            assert!(
                x == y,
                "{}: {n} differs between two builds ({} vs {} bytes, first difference at {first:?})",
                model.display(),
                x.len(),
                y.len()
            );
        }
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

#[path = "../../tests/src/assets.rs"]
#[allow(dead_code)]
mod llmc_tests_assets;
