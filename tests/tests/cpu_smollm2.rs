//! SmolLM2-135M compiled for the host agrees with the interpreter, as GGUF's Q4_1 weights
//! and requantized to each scheme of `--quant`.

use llmc_ir::{Session, Tensor};
use llmc_passes::quant::{quantize, QuantOptions, Scheme};
use llmc_tests::smollm2_gguf;

enum Tol {
    Abs(f32),
    /// As close in distribution as the interpreter is to itself when its norm weights are
    /// scaled by 1 ± 1e-6 (KL at most this factor above the worst of three such nudges, top-1
    /// agreement no more than 0.15 below).
    Perturbed(f64),
}

/// Mean KL(reference ‖ other) per position and the fraction of positions with the same top token.
fn agreement(reference: &[f32], other: &[f32], vocab: usize) -> (f64, f64) {
    let mut kl = 0f64;
    let mut same = 0usize;
    let rows = reference.len() / vocab;
    for r in 0..rows {
        let (a, b) = (
            &reference[r * vocab..(r + 1) * vocab],
            &other[r * vocab..(r + 1) * vocab],
        );
        let lse = |v: &[f32]| {
            let m = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            m + v.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
        };
        let (la, lb) = (lse(a), lse(b));
        kl += a
            .iter()
            .zip(b)
            .map(|(&x, &y)| ((x as f64 - la).exp()) * ((x as f64 - la) - (y as f64 - lb)))
            .sum::<f64>();
        let arg = |v: &[f32]| {
            v.iter()
                .enumerate()
                .fold(0, |bi, (i, &x)| if x > v[bi] { i } else { bi })
        };
        same += (arg(a) == arg(b)) as usize;
    }
    (kl / rows as f64, same as f64 / rows as f64)
}

fn check(scheme: Option<Scheme>, tol: Tol) {
    let mut model = llmc::frontend::load(&smollm2_gguf()).unwrap();
    if let Some(s) = scheme {
        quantize(&mut model.graph, &QuantOptions::preset(s, None)).unwrap();
    }
    let tok = model.tokenizer.as_ref().unwrap();
    let ids = tok.encode("The capital of France is Paris, and the capital of Germany is Berlin. Rivers in Europe include", false).unwrap();
    let tag = format!("{scheme:?}").to_lowercase().replace(['(', ')'], "");
    let dir = std::env::temp_dir().join(format!("llmc-cpu-smol-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let spec = llmc_backends::TargetSpec::parse("host", None, None).unwrap();
    let opts = llmc_backends::cpu::BuildOptions {
        name: "smol".into(),
        max_context: 64,
        max_tokens: 32,
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let b = llmc_backends::cpu::compile(&model.graph, &spec, &opts, Default::default()).unwrap();
    let compile_s = t0.elapsed().as_secs_f64();
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
    let prefill_s = t0.elapsed().as_secs_f64();
    // the head-on-the-last-token schedule gives the last row of the full one
    rt.reset().unwrap();
    let mut last = vec![0f32; vocab];
    rt.prefill_last_into(&toks, &mut last).unwrap();
    let d_last = llmc_tests::max_abs_diff(&last, &got[(toks.len() - 1) * vocab..]);
    assert!(
        d_last < 1e-4,
        "{tag}: prefill_last differs from prefill's last row by {d_last}"
    );
    let mut logits = vec![0f32; vocab];
    let t0 = std::time::Instant::now();
    for _ in 0..4 {
        rt.decode(1000, &mut logits).unwrap();
    }
    let decode_s = t0.elapsed().as_secs_f64() / 4.0;
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
    let (kl, top1) = agreement(&want, &got, vocab);
    println!("{tag}: compile {compile_s:.1}s, prefill {n} tokens {prefill_s:.3}s, decode {:.1} ms/token, max abs diff {d}, KL {kl:.2e}, top-1 {top1}", decode_s * 1e3);
    match tol {
        Tol::Abs(t) => assert!(d < t, "{tag}: max abs diff {d}"),
        // int8 activations round: a 1e-6 difference upstream moves some values across a
        // rounding boundary and 30 layers amplify it (w8a8: the interpreter against itself
        // with one norm weight scaled by 1 + 1e-6 moves logits by 2.0), so the compiled code
        // is held to the interpreter's own sensitivity
        Tol::Perturbed(factor) => {
            // the interpreter's own spread: three different nudges
            let (mut kl_ref, mut top1_ref) = (0f64, 1f64);
            for seed in 0..3 {
                let nudged = perturbed(&model.graph, &ids, seed);
                let (k, t) = agreement(&want, &nudged, vocab);
                kl_ref = kl_ref.max(k);
                top1_ref = top1_ref.min(t);
            }
            // top-1 over ~19 positions moves in steps of 5%: a summation order change in the
            // interpreter's matrix products (gemm -> faer) alone moved it by 0.16 here
            println!(
                "{tag}: interpreter vs itself nudged by 1e-6: KL {kl_ref:.2e}, top-1 {top1_ref}"
            );
            assert!(
                kl <= factor * kl_ref.max(1e-4) && top1 >= top1_ref - 0.25,
                "{tag}: KL {kl} (nudged {kl_ref}), top-1 {top1} (nudged {top1_ref})"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The interpreter's logits with every norm weight scaled by 1 ± 1e-6 (the sign alternating
/// with `seed`): float noise everywhere, as a different summation order gives.
fn perturbed(g: &llmc_ir::Graph, ids: &[u32], seed: usize) -> Vec<f32> {
    let mut g = g.clone();
    for (i, w) in g.weights.iter_mut().enumerate() {
        if !w.name.contains("norm") {
            continue;
        }
        let sign = if (i + seed) % 2 == 0 { 1.0 } else { -1.0 };
        let t = w.data.as_ref().unwrap().decode_f32(&w.ty).unwrap();
        let v: Vec<f32> = t
            .to_f32_vec()
            .iter()
            .map(|x| x * (1.0 + sign * 1e-6))
            .collect();
        w.ty = llmc_ir::TensorType::fixed(&t.shape, llmc_ir::DType::F32);
        w.data = Some(llmc_ir::WeightData::from_tensor(
            &Tensor::f32(t.shape.clone(), v),
            "nudged",
        ));
    }
    let tys: Vec<(llmc_ir::ValueId, llmc_ir::TensorType)> =
        g.weights.iter().map(|w| (w.value, w.ty.clone())).collect();
    for (v, ty) in tys {
        g.values[v.0 as usize].ty = ty;
    }
    let n = ids.len();
    let mut s = Session::new(&g).unwrap();
    s.run(&[
        (
            "tokens",
            Tensor::i64(vec![1, n], ids.iter().map(|&t| t as i64).collect()),
        ),
        (
            "positions",
            Tensor::i64(vec![1, n], (0..n as i64).collect()),
        ),
    ])
    .unwrap()[0]
        .1
        .to_f32_vec()
}

#[test]
fn gguf_weights_match_interpreter() {
    check(None, Tol::Abs(5e-3));
}

#[test]
fn f32_and_f16_match_interpreter() {
    check(Some(Scheme::None), Tol::Abs(5e-3));
    check(Some(Scheme::F16), Tol::Abs(5e-3));
}

#[test]
fn int_weights_match_interpreter() {
    check(Some(Scheme::W8A16), Tol::Abs(5e-3));
    check(Some(Scheme::W4A16), Tol::Abs(5e-3));
}

#[test]
fn int8_activations_match_interpreter_in_distribution() {
    check(Some(Scheme::W8A8), Tol::Perturbed(3.0));
    check(Some(Scheme::W4A8), Tol::Perturbed(3.0));
}
