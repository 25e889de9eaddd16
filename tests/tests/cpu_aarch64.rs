//! The CPU backend's code for AArch64, run under `qemu-aarch64 -cpu max`, agrees with the
//! interpreter: op families (a representative subset of `llmc_tests::cpu::cases`, with every
//! linear weight encoding and i8 activations) for the generic CPU, with `+dotprod` and with
//! `+i8mm`; a tiny decoder across calls; and whole models (SmolLM2-135M, MiniLM-L6, random
//! Llamas under every quantization scheme) also on the host. Every test needs qemu-aarch64 and
//! aarch64-linux-gnu-gcc on `PATH` (`tests/build.rs`); without them all are reported ignored.

use llmc_ir::ActQuant;
use llmc_tests::cpu::cases::{self, check_all, Case};
use llmc_tests::cpu::{Exec, Target};

/// The cases of a family whose names are listed (all when `names` is empty).
fn pick(all: Vec<Case>, names: &[&str]) -> Vec<Case> {
    if names.is_empty() {
        return all;
    }
    let picked: Vec<Case> = all
        .into_iter()
        .filter(|c| names.contains(&c.name.as_str()))
        .collect();
    assert_eq!(picked.len(), names.len(), "a listed case is missing");
    picked
}

/// The op cases every AArch64 variant runs.
fn op_subset() -> Vec<Case> {
    let mut v = vec![];
    v.extend(pick(
        cases::unary(),
        &[
            "unary_f32_1",
            "unary_f16_2",
            "unary_special",
            "unary_small",
            "unary_i8",
        ],
    ));
    v.extend(pick(
        cases::binary(),
        &[
            "binary_f32_rank6",
            "binary_f32_middle",
            "binary_f32_special",
            "binary_bf16",
            "binary_i32",
            "binary_strided",
        ],
    ));
    v.extend(pick(cases::where_(), &["where_f16_11"]));
    v.extend(pick(
        cases::cast(),
        &["cast_from_f32", "cast_from_f16", "cast_from_i64"],
    ));
    v.extend(pick(cases::clip(), &["clip_f32", "clip_u8"]));
    v.extend(pick(
        cases::matmul(),
        &[
            "matmul_bcast_both",
            "matmul_strided",
            "matmul_f16",
            "matmul_weights",
        ],
    ));
    v.extend(pick(cases::gather(), &[]));
    v.extend(pick(cases::softmax(), &["softmax_f32", "softmax_sym"]));
    v.extend(pick(cases::norms(), &["norm_f32"]));
    v.extend(pick(cases::reduce(), &["reduce_f32", "reduce_i32"]));
    v.extend(pick(cases::shape_ops(), &["views_f32", "views_sym"]));
    v.extend(pick(cases::shape_math(), &[]));
    v.extend(pick(cases::rope(), &["rope_f32"]));
    v.extend(pick(cases::attention(), &["attention_f32"]));
    v
}

fn arm(features: &str, cases: Vec<Case>) {
    check_all(&Target::aarch64(features), cases, &[Exec::Serial]);
}

#[test]
#[cfg_attr(not(has_qemu_aarch64), ignore = "needs qemu-aarch64")]
fn ops_generic() {
    arm("", op_subset());
}

#[test]
#[cfg_attr(not(has_qemu_aarch64), ignore = "needs qemu-aarch64")]
fn linear_generic() {
    arm("", cases::linear(ActQuant::None, false));
}

#[test]
#[cfg_attr(not(has_qemu_aarch64), ignore = "needs qemu-aarch64")]
fn linear_act_i8_generic() {
    arm("", cases::linear(ActQuant::I8PerToken, false));
}

fn arm_variants(features: &str) {
    let mut v = vec![];
    v.extend(pick(cases::unary(), &["unary_f32_1", "unary_special"]));
    v.extend(pick(cases::binary(), &["binary_f32_rank6", "binary_i32"]));
    v.extend(pick(cases::cast(), &["cast_from_f32"]));
    v.extend(pick(cases::matmul(), &["matmul_weights"]));
    v.extend(pick(cases::gather(), &["gather_computed_f32"]));
    v.extend(pick(cases::softmax(), &["softmax_sym"]));
    v.extend(pick(cases::norms(), &["norm_f16"]));
    v.extend(pick(cases::reduce(), &["reduce_sym"]));
    v.extend(pick(cases::shape_ops(), &["views_sym"]));
    v.extend(pick(cases::rope(), &["rope_f16"]));
    v.extend(pick(cases::attention(), &["attention_f16"]));
    arm(features, v);
}

#[test]
#[cfg_attr(not(has_qemu_aarch64), ignore = "needs qemu-aarch64")]
fn ops_dotprod() {
    arm_variants("+dotprod");
}

#[test]
#[cfg_attr(not(has_qemu_aarch64), ignore = "needs qemu-aarch64")]
fn ops_i8mm() {
    arm_variants("+i8mm");
}

#[test]
#[cfg_attr(not(has_qemu_aarch64), ignore = "needs qemu-aarch64")]
fn linear_dotprod() {
    arm("+dotprod", cases::linear(ActQuant::None, false));
}

#[test]
#[cfg_attr(not(has_qemu_aarch64), ignore = "needs qemu-aarch64")]
fn linear_i8mm() {
    arm("+i8mm", cases::linear(ActQuant::None, false));
}

#[test]
#[cfg_attr(not(has_qemu_aarch64), ignore = "needs qemu-aarch64")]
fn linear_act_i8_dotprod() {
    arm("+dotprod", cases::linear(ActQuant::I8PerToken, false));
}

#[test]
#[cfg_attr(not(has_qemu_aarch64), ignore = "needs qemu-aarch64")]
fn linear_act_i8_i8mm() {
    arm("+i8mm", cases::linear(ActQuant::I8PerToken, false));
}

/// The generated entropy decoder on AArch64: a coded weights file runs, damaged ones are
/// refused with a status.
#[test]
#[cfg_attr(not(has_qemu_aarch64), ignore = "needs qemu-aarch64")]
fn entropy_coded_weights_generic() {
    cases::check_coded_weights(&Target::aarch64(""));
}

#[test]
#[cfg_attr(not(has_qemu_aarch64), ignore = "needs qemu-aarch64")]
fn decoder_generic() {
    use llmc_backends::cpu::BuildOptions;
    use llmc_tests::cpu::{build, Rng};
    let g = cases::tiny_decoder(&mut Rng::new(31), None);
    let opts = BuildOptions {
        name: "tiny".into(),
        max_context: 24,
        max_tokens: 8,
        ..Default::default()
    };
    let c = build(&g, &Target::aarch64(""), &opts).unwrap();
    let chunks: Vec<&[i32]> = vec![&[3, 17, 42, 9, 0], &[7], &[11, 12, 13]];
    cases::check_decoder_calls(&c, &g, &chunks, Exec::Threads(2), cases::F32).unwrap();
}

// ---- whole models ----

use llmc_backends::cpu::BuildOptions;
use llmc_ir::{Graph, Tensor};
use llmc_tests::cpu::{build, Tol};

/// Where the models run: the host, and AArch64 with the int8 dot-product extensions.
fn model_targets() -> [Target; 2] {
    [Target::host(), Target::aarch64("+dotprod,+i8mm")]
}

fn decoder_opts(name: &str) -> BuildOptions {
    BuildOptions {
        name: name.into(),
        max_context: 32,
        max_tokens: 8,
        ..Default::default()
    }
}

/// SmolLM2-135M (GGUF Q4_1): a prefill of a short prompt and one decode step agree with the
/// interpreter within 2e-3 absolute on logits of magnitude ~20 (Q4_1 rows decode exactly;
/// what differs is f32 summation order over 576–1536 terms through 30 layers).
#[test]
#[cfg_attr(not(has_qemu_aarch64), ignore = "needs qemu-aarch64")]
fn smollm2_prefill_and_decode() {
    let model = llmc::frontend::load(&llmc_tests::smollm2_gguf()).unwrap();
    let tok = model.tokenizer.as_ref().unwrap();
    let prompt: Vec<i32> = tok
        .encode("The capital of France is", false)
        .unwrap()
        .into_iter()
        .map(|t| t as i32)
        .collect();
    let first = cases::interpreter_calls(&model.graph, &[&prompt]);
    let vocab = first[0].len() / prompt.len();
    let last = &first[0][(prompt.len() - 1) * vocab..];
    let next = (0..vocab)
        .max_by(|&a, &b| last[a].total_cmp(&last[b]))
        .unwrap() as i32;
    let step = [next];
    let chunks: Vec<&[i32]> = vec![&prompt, &step];
    let g = &model.graph;
    let errs = cases::par_each(&model_targets(), |t| {
        let c = build(g, t, &decoder_opts("smollm2")).map_err(|e| e.to_string())?;
        cases::check_decoder_calls(&c, g, &chunks, Exec::Serial, Tol::new(2e-3, 0.0))
    });
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

/// MiniLM-L6 (safetensors BERT) as a graph bundle with run-time batch and sequence: two
/// sentences padded to one length agree with the interpreter within 1e-4 absolute + relative
/// on hidden states of magnitude ~1.
#[test]
#[cfg_attr(not(has_qemu_aarch64), ignore = "needs qemu-aarch64")]
fn minilm_batch_with_padding() {
    let model = llmc::frontend::load(&llmc_tests::minilm_l6_dir()).unwrap();
    let tok = model.tokenizer.as_ref().unwrap();
    let sents = [
        "A man is playing a guitar.",
        "The weather is lovely today in Paris, isn't it?",
    ];
    let ids: Vec<Vec<u32>> = sents.iter().map(|s| tok.encode(s, true).unwrap()).collect();
    let (b, s) = (ids.len(), ids.iter().map(Vec::len).max().unwrap());
    let mut tokens = vec![0i64; b * s];
    let mut mask = vec![0i64; b * s];
    for (i, row) in ids.iter().enumerate() {
        for (j, &t) in row.iter().enumerate() {
            tokens[i * s + j] = t as i64;
            mask[i * s + j] = 1;
        }
    }
    let inputs = vec![
        ("input_ids", Tensor::i64(vec![b, s], tokens)),
        ("attention_mask", Tensor::i64(vec![b, s], mask)),
        ("token_type_ids", Tensor::i64(vec![b, s], vec![0; b * s])),
    ];
    let want = llmc_ir::Session::new(&model.graph)
        .unwrap()
        .run(&inputs)
        .unwrap();
    let g = &model.graph;
    let errs = cases::par_each(&model_targets(), |t| {
        let mut opts = llmc_tests::cpu::options_for(g, &inputs);
        opts.dims.insert("seq".into(), 24);
        let c = build(g, t, &opts).map_err(|e| e.to_string())?;
        let got = c
            .run(&inputs)
            .map_err(|code| format!("{}: status {code}", t.label()))?;
        for ((n, gt), (_, wt)) in got.iter().zip(&want) {
            if let Some(e) = llmc_tests::cpu::compare(gt, wt, Tol::new(1e-4, 1e-4)) {
                return Err(format!("{} output {n}: {e}", t.label()));
            }
        }
        Ok(())
    });
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

/// Random Llamas quantized by `llmc_passes::quant::quantize` under `schemes`, each compiled
/// for the host and for AArch64: prefill, decode, prefill agree with the interpreter on the
/// quantized graph.
fn llama_schemes(schemes: &[(&str, Option<u32>)], tol: cases::LogitTol) {
    use llmc_passes::quant::{quantize, QuantOptions, Scheme};
    let graphs: Vec<(String, Graph)> = schemes
        .iter()
        .enumerate()
        .map(|(i, (name, group))| {
            let mut g = cases::random_llama(40 + i as u64, i % 2 == 1, i % 3 == 2);
            let scheme = Scheme::parse(name).unwrap();
            quantize(&mut g, &QuantOptions::preset(scheme, *group)).unwrap();
            (
                format!("{name}_g{}", group.map_or("pc".into(), |g| g.to_string())),
                g,
            )
        })
        .collect();
    let jobs: Vec<(usize, Target)> = (0..graphs.len())
        .flat_map(|i| model_targets().map(|t| (i, t)))
        .collect();
    let chunks: Vec<&[i32]> = vec![&[5, 17, 42, 95, 3], &[64], &[8, 0, 33]];
    let errs = cases::par_each(&jobs, |(i, t)| {
        let (name, g) = &graphs[*i];
        let c = build(g, t, &decoder_opts(name)).map_err(|e| format!("{name}: {e}"))?;
        cases::check_decoder_rows(&c, g, &chunks, Exec::Serial, tol)
            .map_err(|e| format!("llama {name}: {e}"))
    });
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

/// Weight-only schemes: f32 and f16 weights, 8- and 4-bit weights per channel and in groups of
/// 32, 64 and 128 (odd configurations with a tied, quantized embedding; every third with q/k/v
/// biases). Logits of magnitude ~3 within 1e-4: only summation order differs (measured: 2e-5).
#[test]
#[cfg_attr(not(has_qemu_aarch64), ignore = "needs qemu-aarch64")]
fn llama_weight_quantization() {
    llama_schemes(
        &[
            ("none", None),
            ("f16", None),
            ("w8a16", None),
            ("w8a16", Some(64)),
            ("w4a16", Some(32)),
            ("w4a16", Some(64)),
            ("w4a16", Some(128)),
            ("w8a16", Some(128)),
        ],
        cases::LogitTol::strict(Tol::new(1e-4, 1e-4)),
    );
}

/// Schemes with int8 activations per token. Rounding activations to int8 amplifies the
/// summation-order differences of everything before it: a value near a rounding boundary may
/// round the other way, and the interpreter itself moves one row of logits by 0.21 when the
/// attention scale changes by 2^-22 (seed 41, w8a8 g32). So rows agree within 1e-3, except
/// one row in eight that may differ up to 0.5.
#[test]
#[cfg_attr(not(has_qemu_aarch64), ignore = "needs qemu-aarch64")]
fn llama_act_i8_quantization() {
    llama_schemes(
        &[
            ("w8a8", None),
            ("w8a8", Some(32)),
            ("w4a8", Some(32)),
            ("w4a8", Some(64)),
            ("w8a8", Some(128)),
            ("w4a8", Some(128)),
        ],
        cases::LogitTol {
            tol: Tol::new(1e-3, 1e-3),
            outlier_per_rows: 8,
            outlier_cap: 0.5,
        },
    );
}

/// Calibrated compression on random Llamas (calibration: 4 windows of 48 random tokens):
/// SmoothQuant then w8a8, GPTQ w4a8 g32, AWQ w4a16 g32, GPTQ w3a16 g32, SVD-LLM factors at
/// half the values, and CALDERA (2-bit backbone + rank-8 4-bit factors), each compiled for
/// the host and AArch64 and checked against the interpreter on the compressed graph.
#[test]
#[cfg_attr(not(has_qemu_aarch64), ignore = "needs qemu-aarch64")]
fn llama_calibrated_methods() {
    use llmc_passes::core::{manager::PassManager, pass::PassContext};
    let pipelines = [
        "smooth,quantize{bits=8,act=i8}",
        "quantize{bits=4,group=32,act=i8,method=gptq}",
        "quantize{bits=4,group=32,method=awq}",
        "quantize{bits=3,group=32,method=gptq}",
        "lowrank{method=svd-llm,params=0.5}",
        "caldera{bits=2,group=32,rank=8,iters=2}",
        "quantize{bits=3,group=32,method=gptq},distill{rank=4}",
        "palettize{bits=4,group=rows:16},distill",
    ];
    let graphs: Vec<(String, Graph)> = pipelines
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut g = cases::random_llama(60 + i as u64, i % 2 == 1, false);
            let mut rng = 0x9e3779b97f4a7c15u64.wrapping_mul(i as u64 + 1);
            let windows: Vec<Vec<u32>> = (0..4)
                .map(|_| {
                    (0..48)
                        .map(|_| {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            (rng % 96) as u32
                        })
                        .collect()
                })
                .collect();
            let mut cx = PassContext {
                calib: Some(llmc_passes::calib::Calibration {
                    windows: llmc_passes::calib::decoder_feeds(&windows),
                    label: "random tokens".into(),
                }),
                ..Default::default()
            };
            let mut pm = PassManager::new(llmc_passes::registry::pipeline(p).unwrap());
            pm.run(&mut g, &mut cx, |_, _| {}).unwrap();
            (format!("calibrated{i}"), g)
        })
        .collect();
    let jobs: Vec<(usize, Target)> = (0..graphs.len())
        .flat_map(|i| model_targets().map(|t| (i, t)))
        .collect();
    let chunks: Vec<&[i32]> = vec![&[5, 17, 42, 95, 3], &[64], &[8, 0, 33]];
    let errs = cases::par_each(&jobs, |(i, t)| {
        let (name, g) = &graphs[*i];
        let c = build(g, t, &decoder_opts(name)).map_err(|e| format!("{name}: {e}"))?;
        let tol = if pipelines[*i].contains("act=i8") {
            cases::LogitTol {
                tol: Tol::new(1e-3, 1e-3),
                outlier_per_rows: 8,
                outlier_cap: 0.5,
            }
        } else {
            cases::LogitTol::strict(Tol::new(1e-4, 1e-4))
        };
        cases::check_decoder_rows(&c, g, &chunks, Exec::Serial, tol)
            .map_err(|e| format!("{}: {e}", pipelines[*i]))
    });
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

/// SmolLM2-135M compressed as `llmc build` does it, with calibration (8 windows of 256 tokens
/// of one address): GPTQ w4a8 g128 and SmoothQuant w8a8, head kept. Compiled for the host and
/// for AArch64 (`+dotprod,+i8mm`, under qemu), a 20-token prefill is as close in distribution to
/// the interpreter on the compressed graph as the interpreter is to itself under 1e-6 noise,
/// and the compiled code continues "The capital of France is" with " Paris".
#[test]
#[cfg_attr(not(has_qemu_aarch64), ignore = "needs qemu-aarch64")]
fn smollm2_calibrated_methods() {
    use llmc::compress::preset_pipeline;
    use llmc_passes::quant::Scheme;
    let configs: Vec<(&str, PipelineFn, bool)> = vec![
        (
            "gptq-w4a8",
            Box::new(|| preset_pipeline(Scheme::W4A8, Some(128), "gptq", true, None).unwrap()),
            true,
        ),
        (
            "smoothquant-w8a8",
            Box::new(|| {
                preset_pipeline(Scheme::W8A8, Some(128), "smoothquant", true, None).unwrap()
            }),
            true,
        ),
    ];
    smollm2_agrees(configs);
}

/// SmolLM2-135M compressed by the methods whose bundles read compressed forms (CALDERA's
/// three linears, 2:4 with 4-bit kept values, 16-entry palettes per 128 rows): host and
/// AArch64 builds agree with the interpreter on the compressed graph as
/// `smollm2_calibrated_methods` checks. Only the palettized model is asked for " Paris": at
/// about 2.5 bits (CALDERA with this small calibration) and with half the weights gone (2:4
/// by Wanda) the model no longer knows it.
#[test]
#[cfg_attr(not(has_qemu_aarch64), ignore = "needs qemu-aarch64")]
fn smollm2_compressed_forms() {
    use llmc_passes::registry::pipeline;
    let configs: Vec<(&str, PipelineFn, bool)> = vec![
        (
            "caldera-q2-r16",
            Box::new(|| pipeline("caldera{bits=2,rank=16,iters=1}").unwrap()),
            false,
        ),
        (
            "wanda24-w4",
            Box::new(|| {
                pipeline("prune{method=wanda,n=2,m=4},quantize{bits=4,group=128,head=false}")
                    .unwrap()
            }),
            false,
        ),
        (
            "palettize-16-r128",
            Box::new(|| pipeline("palettize{bits=4,group=rows:128,head=false}").unwrap()),
            true,
        ),
    ];
    smollm2_agrees(configs);
}

type PipelineFn = Box<dyn Fn() -> Vec<Box<dyn llmc_passes::core::pass::Pass>> + Sync>;

/// Compresses SmolLM2-135M by each pipeline (calibration: 8 windows of 256 tokens of one
/// address), compiles it for the host and AArch64 and checks a 20-token prefill against the
/// interpreter on the compressed graph; with `paris`, also that the compiled code continues
/// "The capital of France is" with " Paris".
fn smollm2_agrees(configs: Vec<(&str, PipelineFn, bool)>) {
    use llmc::compress::calibration;
    use llmc_passes::core::{manager::PassManager, pass::PassContext};
    use llmc_tests::agreement::{argmax, interpreter_logits, Spread};
    use llmc_tests::cpu::{Call, Reply};

    let model = llmc::frontend::load(&llmc_tests::smollm2_gguf()).unwrap();
    let calib_file = llmc_tests::sotu_dir().join("1962_john_f_kennedy_d.txt");
    let calib = calibration(&model, &[calib_file], 8, 256).unwrap();
    let tok = model.tokenizer.as_ref().unwrap();
    let ids = tok
        .encode(
            "The capital of France is Paris, and the capital of Germany is Berlin. Rivers in Europe include",
            false,
        )
        .unwrap();
    let is_at = tok.encode("The capital of France is", false).unwrap().len() - 1;
    let paris = tok.encode(" Paris", false).unwrap()[0] as usize;
    let graphs: Vec<(&str, Graph, Vec<f32>, Spread, bool)> = configs
        .iter()
        .map(|(name, passes, want_paris)| {
            let mut g = model.graph.clone();
            let mut cx = PassContext {
                calib: Some(calib.clone()),
                ..Default::default()
            };
            PassManager::new(passes())
                .run(&mut g, &mut cx, |_, _| {})
                .unwrap();
            let want = interpreter_logits(&g, &ids);
            let spread = Spread::measure(&g, &ids, &want, want.len() / ids.len());
            (*name, g, want, spread, *want_paris)
        })
        .collect();
    let jobs: Vec<(usize, Target)> = (0..graphs.len())
        .flat_map(|i| model_targets().map(|t| (i, t)))
        .collect();
    let toks: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
    let errs = cases::par_each(&jobs, |(i, t)| {
        let (name, g, want, spread, want_paris) = &graphs[*i];
        let at = format!("{name} on {}", t.label());
        let opts = BuildOptions {
            max_tokens: 24,
            ..decoder_opts(name)
        };
        let c = build(g, t, &opts).map_err(|e| format!("{at}: {e}"))?;
        let got = match c
            .calls(&[Call::Prefill(toks.clone())], Exec::Serial)
            .remove(0)
        {
            Ok(Reply::Logits(l)) => l,
            other => return Err(format!("{at}: prefill gave {other:?}")),
        };
        let vocab = want.len() / ids.len();
        let line = spread
            .check(want, &got, vocab, 3.0)
            .map_err(|e| format!("{at}: {e}"))?;
        println!("{at}: {line}");
        let next = argmax(&got[is_at * vocab..(is_at + 1) * vocab]);
        if *want_paris && next != paris {
            return Err(format!(
                "{at}: continues \"The capital of France is\" with token {next}, not \" Paris\" ({paris})"
            ));
        }
        Ok(())
    });
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}
