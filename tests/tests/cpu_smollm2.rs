//! SmolLM2-135M compiled for the host agrees with the interpreter.

use llmc_ir::{Session, Tensor};
use llmc_tests::smollm2_gguf;

#[test]
fn host_bundle_matches_interpreter_logits() {
    let model = llmc::frontend::load(&smollm2_gguf()).unwrap();
    let tok = model.tokenizer.as_ref().unwrap();
    let ids = tok.encode("The capital of France is", false).unwrap();
    let dir = std::env::temp_dir().join(format!("llmc-cpu-smol-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let spec = llmc_backends::TargetSpec::parse("host", None, None).unwrap();
    let opts = llmc_backends::cpu::BuildOptions {
        name: "smol".into(),
        max_context: 64,
        max_tokens: 16,
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let b = llmc_backends::cpu::compile(&model.graph, &spec, &opts, Default::default()).unwrap();
    println!("compile {:.1}s", t0.elapsed().as_secs_f64());
    llmc::bundle::write_bundle(
        &b,
        &dir,
        &llmc::bundle::Outputs {
            so: true,
            ..Default::default()
        },
        true,
    )
    .unwrap();
    let mut rt = llmc_runtime::Bundle::open(&dir, "smol", 1).unwrap();
    let toks: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
    let vocab = 49152;
    let t0 = std::time::Instant::now();
    let got = rt.prefill(&toks, vocab).unwrap();
    println!("prefill {:.3}s", t0.elapsed().as_secs_f64());
    let mut s = Session::new(&model.graph).unwrap();
    let n = ids.len();
    let out = s
        .run(&[
            (
                "tokens",
                Tensor::i64(vec![1, n], ids.iter().map(|&t| t as i64).collect()),
            ),
            (
                "positions",
                Tensor::i64(vec![1, n], (0..n as i64).collect()),
            ),
        ])
        .unwrap();
    let want = out[0].1.to_f32_vec();
    let d = llmc_tests::max_abs_diff(&got, &want);
    println!("max abs diff {d}");
    assert!(d < 1e-2, "{d}");
}
