//! Every IR op compiled for the host by the CPU backend agrees with the interpreter (see
//! `llmc_tests::cpu::cases` for the cases and the tolerances each comparison allows).

use llmc_ir::ActQuant;
use llmc_tests::cpu::cases::{self, check_all};
use llmc_tests::cpu::{Exec, Target};

/// Every case runs with all work items at once, split into single items (last first), and
/// on three threads.
const EXECS: &[Exec] = &[Exec::Serial, Exec::Split, Exec::Threads(3)];

fn host(cases: Vec<cases::Case>) {
    check_all(&Target::host(), cases, EXECS);
}

#[test]
fn unary() {
    host(cases::unary());
}

#[test]
fn binary() {
    host(cases::binary());
}

#[test]
fn where_() {
    host(cases::where_());
}

#[test]
fn cast() {
    host(cases::cast());
}

#[test]
fn clip() {
    host(cases::clip());
}

#[test]
fn matmul() {
    host(cases::matmul());
}

#[test]
fn linear() {
    host(cases::linear(ActQuant::None, true));
}

#[test]
fn linear_act_i8() {
    host(cases::linear(ActQuant::I8PerToken, true));
}

#[test]
fn gather() {
    host(cases::gather());
}

#[test]
fn softmax() {
    host(cases::softmax());
}

#[test]
fn norms() {
    host(cases::norms());
}

#[test]
fn reduce() {
    host(cases::reduce());
}

#[test]
fn shape_ops() {
    host(cases::shape_ops());
}

#[test]
fn shape_math() {
    host(cases::shape_math());
}

#[test]
fn rope() {
    host(cases::rope());
}

#[test]
fn attention() {
    let mut c = cases::attention();
    c.extend(cases::attention_sym());
    host(c);
}

/// The generic kernels as the baseline x86-64 CPU (SSE2, no FMA or F16C) gets them, next to
/// the host's own: linear layers over the encodings, i8 activations, and ops that convert
/// halves or use the math functions.
#[test]
#[cfg_attr(not(target_arch = "x86_64"), ignore = "the host is not x86-64")]
fn x86_64_baseline() {
    let mut c = cases::linear(ActQuant::None, false);
    c.extend(
        cases::unary()
            .into_iter()
            .filter(|c| ["unary_f16_2", "unary_special", "unary_small"].contains(&c.name.as_str())),
    );
    c.extend(cases::rope().into_iter().filter(|c| c.name == "rope_f16"));
    check_all(&Target::new("x86_64", None, None), c, &[Exec::Serial]);
}

/// The AVX2 kernels (Haswell: AVX2, FMA, F16C, no AVX-512) for the linear layers, on hosts
/// that can run them.
#[test]
#[cfg_attr(not(has_avx2), ignore = "this CPU lacks AVX2, FMA or F16C")]
fn x86_64_avx2() {
    check_all(
        &Target::new("x86_64", Some("haswell"), None),
        cases::linear(ActQuant::None, false),
        &[Exec::Serial],
    );
}

#[test]
#[cfg_attr(not(target_arch = "x86_64"), ignore = "the host is not x86-64")]
fn x86_64_baseline_act_i8() {
    check_all(
        &Target::new("x86_64", None, None),
        cases::linear(ActQuant::I8PerToken, false),
        &[Exec::Serial],
    );
}

/// A tiny decoder (embedding, rope, grouped KV heads appended to the cache, attention over
/// it, a head): prefill, decode steps and another prefill agree with an interpreter session
/// across calls, on one state; reset, context, and the errors of bad calls.
#[test]
fn decoder_cache_across_calls() {
    use llmc_backends::cpu::BuildOptions;
    use llmc_ir::{DType, Group, QuantSpec, Zero};
    use llmc_tests::cpu::{build, Call, Reply, Rng};
    let tol = cases::F32;
    let q = QuantSpec {
        bits: 4,
        group: Group::Size(32),
        scale: DType::F16,
        zero: Zero::Float,
    };
    for table in [None, Some(q)] {
        let g = cases::tiny_decoder(&mut Rng::new(31), table);
        let opts = BuildOptions {
            name: "tiny".into(),
            max_context: 24,
            max_tokens: 8,
            ..Default::default()
        };
        let c = build(&g, &Target::host(), &opts).unwrap();
        let chunks: Vec<&[i32]> = vec![&[3, 17, 42, 9, 0], &[7], &[49], &[11, 12, 13], &[1]];
        for exec in [Exec::Serial, Exec::Split, Exec::Threads(3)] {
            cases::check_decoder_calls(&c, &g, &chunks, exec, tol).unwrap();
        }
        // reset empties the cache; bad calls leave the state as it was
        let r = c.calls(
            &[
                Call::Prefill(vec![3, 17]),
                Call::Context,
                Call::Prefill(vec![5, 50]),
                Call::Decode(-1),
                Call::Prefill(vec![1; 9]),
                Call::Prefill(vec![]),
                Call::Context,
                Call::Reset,
                Call::Context,
                Call::Prefill(vec![3, 17, 42, 9, 0]),
                Call::Prefill(vec![1; 8]),
                Call::Prefill(vec![2; 8]),
                Call::Prefill(vec![3; 4]),
                Call::Context,
            ],
            Exec::Serial,
        );
        let want_first = cases::interpreter_calls(&g, &[&[3, 17, 42, 9, 0]]).remove(0);
        assert_eq!(r[1], Ok(Reply::Context(2)));
        assert_eq!(r[2], Err(8), "a token past the vocabulary");
        assert_eq!(r[3], Err(8), "a negative token");
        assert_eq!(r[4], Err(11), "more tokens than max_tokens");
        assert_eq!(r[5], Err(1), "no tokens");
        assert_eq!(r[6], Ok(Reply::Context(2)));
        assert_eq!(r[8], Ok(Reply::Context(0)));
        let Ok(Reply::Logits(l)) = &r[9] else {
            panic!("prefill after reset: {:?}", r[9])
        };
        llmc_tests::cpu::assert_close(
            "prefill after reset",
            &llmc_ir::Tensor::f32(vec![l.len()], l.clone()),
            &llmc_ir::Tensor::f32(vec![want_first.len()], want_first),
            tol,
        );
        assert!(r[11].is_ok(), "21 of 24 tokens: {:?}", r[11]);
        assert_eq!(r[12], Err(9), "a full cache");
        assert_eq!(r[13], Ok(Reply::Context(21)));
    }
}

/// What the backend does not compile is an `Unsupported` error naming the node or the input.
#[test]
fn unsupported_graphs_are_clear_errors() {
    use llmc_backends::cpu::{compile, BackendError, BuildOptions};
    use llmc_ir::{DType, Dim, Op, Shape, Tensor, TensorType};
    use llmc_tests::cpu::cases::Gb;
    let spec = Target::host().spec();
    let opts = BuildOptions::default();
    let unsupported = |g: &llmc_ir::Graph| match compile(g, &spec, &opts, Default::default()) {
        Err(BackendError::Unsupported(m)) => m,
        Err(e) => panic!("{}: not an unsupported error: {e}", g.name),
        Ok(_) => panic!("{} compiled", g.name),
    };
    // a float range whose bounds are only known at run time
    let mut b = Gb::new("float_range");
    let s = b.input("s", &[], DType::F32);
    let l = b.constant(Tensor::scalar_f32(5.0));
    let d = b.constant(Tensor::scalar_f32(1.0));
    let r = b.op(Op::Range, &[s, l, d]);
    b.out("r", r);
    let m = unsupported(&b.finish());
    assert!(m.contains("%2 = range") && m.contains("constants"), "{m}");
    // an input of unknown size
    let mut b = Gb::new("any_dim");
    let x = b.input_sym("x", vec![Dim::Any, Dim::Fixed(2)], DType::F32);
    let y = b.op(Op::Unary(llmc_ir::UnaryOp::Exp), &[x]);
    b.out("y", y);
    let m = unsupported(&b.finish());
    assert!(m.contains("input 'x'"), "{m}");
    // a linear layer whose weight is computed
    let mut b = Gb::new("computed_weight");
    let x = b.input("x", &[2, 4], DType::F32);
    let w = b.input("w", &[3, 4], DType::F32);
    let y = b.op(Op::LINEAR, &[x, w]);
    b.out("y", y);
    let m = unsupported(&b.finish());
    assert!(m.contains("linear") && m.contains("matmul"), "{m}");
    // decoders take tokens and positions only and give logits only
    let mut g = cases::tiny_decoder(&mut llmc_tests::cpu::Rng::new(1), None);
    let extra = g.add_input(
        "extra",
        TensorType::new(Shape(vec![Dim::sym("seq")]), DType::F32),
    );
    g.set_output("extra_out", extra);
    let m = unsupported(&g);
    assert!(m.contains("'extra'"), "{m}");
    let mut g = cases::tiny_decoder(&mut llmc_tests::cpu::Rng::new(1), None);
    let logits = g.outputs[0].1;
    g.set_output("again", logits);
    let m = unsupported(&g);
    assert!(m.contains("'again'"), "{m}");
}
