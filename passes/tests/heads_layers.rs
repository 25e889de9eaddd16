//! Attention-head and whole-layer removal on a small Llama-shaped decoder built here: the
//! rewritten graphs verify, run, and compute exactly what the dense graph computes with the
//! removed heads' output columns zeroed, or with the removed layers left out.

use llmc_ir::{
    verify, BinaryOp, DType, Dim, Graph, Op, RopeMode, Session, Shape, Tensor, TensorType, UnaryOp,
    ValueId, WeightData,
};
use llmc_passes::calib::{decoder_feeds, Calibration};
use llmc_passes::core::report::{HeadsRow, LayersRow, PassRow};
use llmc_passes::core::{
    manager::PassManager,
    pass::{Pass, PassContext},
};
use llmc_passes::prune::heads::{attention_blocks, HeadUnit, PruneHeadsPass};
use llmc_passes::prune::layers::{residual_stream, DropLayersPass};

const D: usize = 32;
const HEADS: usize = 6;
const KV: usize = 2;
const HD: usize = 8;
const FFN: usize = 48;
const VOCAB: usize = 40;

/// Deterministic values in `[lo, hi)` from a name (the same weight in every build).
fn values(name: &str, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut s: u64 = name.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// A Llama-shaped decoder with `layers` blocks of which only those in `keep` are built; the
/// blocks in `quiet` write nothing into the residual stream (zero output projections).
fn llama(layers: usize, keep: &[usize], quiet: &[usize]) -> Graph {
    let mut g = Graph::new("tiny");
    g.kind = llmc_ir::ModelKind::Decoder;
    let seq = Shape(vec![Dim::sym("batch"), Dim::sym("seq")]);
    let tokens = g.add_input("tokens", TensorType::new(seq.clone(), DType::I64));
    let positions = g.add_input("positions", TensorType::new(seq, DType::I64));
    let w = |g: &mut Graph, name: &str, shape: &[usize], lo: f32, hi: f32| -> ValueId {
        let n = shape.iter().product();
        let t = Tensor::f32(shape.to_vec(), values(name, n, lo, hi));
        g.add_weight(
            name,
            TensorType::fixed(shape, DType::F32),
            Some(WeightData::from_tensor(&t, name)),
        )
        .unwrap()
    };
    let embed = w(&mut g, "embed", &[VOCAB, D], -1.0, 1.0);
    let mut x = g.add1(Op::Gather { axis: 0 }, &[embed, tokens]).unwrap();
    let to_heads = Op::Transpose {
        perm: vec![0, 2, 1, 3],
    };
    let rope = Op::Rope {
        base: 10000.0,
        mode: RopeMode::Half,
        dims: None,
    };
    for l in 0..layers {
        if !keep.contains(&l) {
            continue;
        }
        let q_ = |s: &str| format!("blk.{l}.{s}");
        let state_ty = TensorType::new(
            Shape(vec![
                Dim::sym("batch"),
                Dim::Fixed(KV as u64),
                Dim::sym("ctx"),
                Dim::Fixed(HD as u64),
            ]),
            DType::F32,
        );
        let ks = g.add_state(&q_("k"), state_ty.clone());
        let vs = g.add_state(&q_("v"), state_ty);
        let nw = w(&mut g, &q_("attn_norm"), &[D], 0.8, 1.2);
        let h = g
            .add1(
                Op::RmsNorm {
                    axis: -1,
                    eps: 1e-5,
                },
                &[x, nw],
            )
            .unwrap();
        let proj = |g: &mut Graph, name: &str, rows: usize, bias: bool| {
            let wt = w(g, &q_(name), &[rows, D], -0.3, 0.3);
            let mut ins = vec![h, wt];
            if bias {
                ins.push(w(g, &q_(&format!("{name}.bias")), &[rows], -0.5, 0.5));
            }
            g.add1(Op::LINEAR, &ins).unwrap()
        };
        let q = proj(&mut g, "q", HEADS * HD, true);
        let k = proj(&mut g, "k", KV * HD, true);
        let v = proj(&mut g, "v", KV * HD, false);
        let split = |g: &mut Graph, v: ValueId, n: usize| {
            g.add1(
                Op::Reshape {
                    shape: Some(vec![0, 0, n as i64, HD as i64]),
                },
                &[v],
            )
            .unwrap()
        };
        let q = split(&mut g, q, HEADS);
        let k = split(&mut g, k, KV);
        let v = split(&mut g, v, KV);
        let q = g.add1(rope.clone(), &[q, positions]).unwrap();
        let k = g.add1(rope.clone(), &[k, positions]).unwrap();
        let q = g.add1(to_heads.clone(), &[q]).unwrap();
        let k = g.add1(to_heads.clone(), &[k]).unwrap();
        let v = g.add1(to_heads.clone(), &[v]).unwrap();
        let k = g
            .add1(Op::CacheConcat { state: ks, axis: 2 }, &[k])
            .unwrap();
        let v = g
            .add1(Op::CacheConcat { state: vs, axis: 2 }, &[v])
            .unwrap();
        let a = g
            .add1(
                Op::Attention {
                    causal: true,
                    scale: 1.0 / (HD as f32).sqrt(),
                },
                &[q, k, v],
            )
            .unwrap();
        let a = g.add1(to_heads.clone(), &[a]).unwrap();
        let a = g
            .add1(
                Op::Reshape {
                    shape: Some(vec![0, 0, (HEADS * HD) as i64]),
                },
                &[a],
            )
            .unwrap();
        let (lo, hi) = if quiet.contains(&l) {
            (0.0, 0.0)
        } else {
            (-0.3, 0.3)
        };
        let wo = w(&mut g, &q_("o"), &[D, HEADS * HD], lo, hi);
        let a = g.add1(Op::LINEAR, &[a, wo]).unwrap();
        x = g.add1(Op::Binary(BinaryOp::Add), &[x, a]).unwrap();
        let nw = w(&mut g, &q_("ffn_norm"), &[D], 0.8, 1.2);
        let h = g
            .add1(
                Op::RmsNorm {
                    axis: -1,
                    eps: 1e-5,
                },
                &[x, nw],
            )
            .unwrap();
        let wg = w(&mut g, &q_("gate"), &[FFN, D], -0.3, 0.3);
        let wu = w(&mut g, &q_("up"), &[FFN, D], -0.3, 0.3);
        let wd = w(&mut g, &q_("down"), &[D, FFN], lo, hi);
        let gt = g.add1(Op::LINEAR, &[h, wg]).unwrap();
        let up = g.add1(Op::LINEAR, &[h, wu]).unwrap();
        let gt = g.add1(Op::Unary(UnaryOp::Silu), &[gt]).unwrap();
        let f = g.add1(Op::Binary(BinaryOp::Mul), &[gt, up]).unwrap();
        let f = g.add1(Op::LINEAR, &[f, wd]).unwrap();
        x = g.add1(Op::Binary(BinaryOp::Add), &[x, f]).unwrap();
    }
    let nw = w(&mut g, "out_norm", &[D], 0.8, 1.2);
    let x = g
        .add1(
            Op::RmsNorm {
                axis: -1,
                eps: 1e-5,
            },
            &[x, nw],
        )
        .unwrap();
    let logits = g.add1(Op::LINEAR, &[x, embed]).unwrap();
    g.set_output("logits", logits);
    verify(&g).unwrap();
    g
}

fn calibration() -> Calibration {
    let windows: Vec<Vec<u32>> = (0..3)
        .map(|w| (0..24).map(|t| ((t * 7 + w * 11) % VOCAB) as u32).collect())
        .collect();
    Calibration {
        windows: decoder_feeds(&windows),
        label: "3 windows of 24 tokens".into(),
    }
}

fn run_pass(g: &mut Graph, pass: Box<dyn Pass>) -> Vec<PassRow> {
    let mut cx = PassContext {
        calib: Some(calibration()),
        ..Default::default()
    };
    PassManager::new(vec![pass])
        .run(g, &mut cx, |_, _| {})
        .unwrap();
    verify(g).unwrap();
    cx.report
}

/// The `prune-heads` rows of a report.
fn heads_rows(report: &[PassRow]) -> Vec<&HeadsRow> {
    report
        .iter()
        .filter_map(|r| match r {
            PassRow::PruneHeads(h) => Some(h),
            _ => None,
        })
        .collect()
}

/// The `drop-layers` row of a report.
fn layers_row(report: &[PassRow]) -> &LayersRow {
    report
        .iter()
        .find_map(|r| match r {
            PassRow::DropLayers(l) => Some(l),
            _ => None,
        })
        .expect("a drop-layers row")
}

/// Logits of a prefill of 6 tokens and then of one decoded token (through the KV cache).
fn logits(g: &Graph) -> Vec<f32> {
    let mut s = Session::new(g).unwrap();
    let toks: Vec<i64> = vec![3, 17, 5, 29, 11, 2];
    let mut out = s
        .run(&[
            ("tokens", Tensor::i64(vec![1, 6], toks)),
            ("positions", Tensor::i64(vec![1, 6], (0..6).collect())),
        ])
        .unwrap()[0]
        .1
        .to_f32_vec();
    out.extend(
        s.run(&[
            ("tokens", Tensor::i64(vec![1, 1], vec![7])),
            ("positions", Tensor::i64(vec![1, 1], vec![6])),
        ])
        .unwrap()[0]
            .1
            .to_f32_vec(),
    );
    out
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn weight_bytes(g: &Graph) -> u64 {
    (0..g.weights.len())
        .map(|i| llmc_passes::core::edit::weight_bytes(g, i))
        .sum()
}

/// The dense graph with the output-projection columns of the removed heads set to zero.
fn zeroed_heads(mut g: Graph, report: &[PassRow]) -> Graph {
    for r in heads_rows(report) {
        let name = r.weight.as_str();
        let removed = &r.removed;
        let i = g.weights.iter().position(|w| w.name == name).unwrap();
        let (mut v, rows, cols) = llmc_passes::core::edit::weight_f32(&g, i).unwrap();
        for r in 0..rows {
            for &h in removed {
                v[r * cols + h * HD..r * cols + (h + 1) * HD].fill(0.0);
            }
        }
        llmc_passes::core::edit::set_weight_f32(&mut g, i, v, "zeroed").unwrap();
    }
    g
}

#[test]
fn attention_blocks_are_found_with_their_head_counts() {
    let g = llama(3, &[0, 1, 2], &[]);
    let b = attention_blocks(&g);
    assert_eq!(b.len(), 3);
    assert_eq!(
        (b[0].heads, b[0].kv_heads, b[0].head_dim, b[0].v_dim),
        (HEADS, KV, HD, HD)
    );
    assert!(b[0].q.bias.is_some() && b[0].v.bias.is_none());
    assert_eq!(g.weights[b[1].o.weight].name, "blk.1.o");
    assert_eq!((b[2].k_state, b[2].v_state), (Some(4), Some(5)));
}

#[test]
fn removing_query_heads_equals_zeroing_their_output_columns() {
    let dense = llama(3, &[0, 1, 2], &[]);
    let mut g = dense.clone();
    let before = weight_bytes(&g);
    let report = run_pass(
        &mut g,
        Box::new(PruneHeadsPass {
            fraction: 0.34,
            unit: HeadUnit::Query,
            compensate: false,
        }),
    );
    assert_eq!(report.len(), 3);
    for r in heads_rows(&report) {
        assert_eq!(r.heads_after, 4);
        assert_eq!(r.kv_heads_after, KV);
        // one of the three query heads of each KV group
        let removed = &r.removed;
        assert_eq!(removed.len(), 2);
        assert!(removed[0] < 3 && removed[1] >= 3, "{removed:?}");
        let e = r.energy_removed;
        assert!(e > 0.0 && e < 1.0 / 3.0 + 1e-9, "the weakest heads go: {e}");
    }
    let q = g.weight_by_name("blk.0.q").unwrap();
    assert_eq!(q.ty.shape, Shape::fixed(&[4 * HD, D]));
    assert_eq!(
        g.weight_by_name("blk.0.q.bias").unwrap().ty.shape,
        Shape::fixed(&[4 * HD])
    );
    assert_eq!(
        g.weight_by_name("blk.0.o").unwrap().ty.shape,
        Shape::fixed(&[D, 4 * HD])
    );
    assert_eq!(
        g.weight_by_name("blk.0.k").unwrap().ty.shape,
        Shape::fixed(&[KV * HD, D])
    );
    assert!(attention_blocks(&g).iter().all(|b| b.heads == 4));
    // q and o lose a third: 2 · 2 · HD · D · 4 bytes per layer, the q bias 2 · HD · 4
    let per_layer = (2 * 2 * HD * D + 2 * HD) as u64 * 4;
    assert_eq!(before - weight_bytes(&g), 3 * per_layer);
    let want = logits(&zeroed_heads(dense, &report));
    let d = max_diff(&logits(&g), &want);
    assert!(
        d < 1e-4,
        "pruned logits differ from the zeroed dense ones by {d}"
    );
}

#[test]
fn removing_kv_groups_shrinks_the_cache_and_stays_exact() {
    let dense = llama(3, &[0, 1, 2], &[]);
    let mut g = dense.clone();
    let report = run_pass(
        &mut g,
        Box::new(PruneHeadsPass {
            fraction: 0.5,
            unit: HeadUnit::Kv,
            compensate: false,
        }),
    );
    for r in heads_rows(&report) {
        assert_eq!((r.heads_after, r.kv_heads_after), (3, 1));
    }
    assert!(g.states.iter().all(|s| s.ty.shape.0[1] == Dim::Fixed(1)));
    assert_eq!(
        g.weight_by_name("blk.2.v").unwrap().ty.shape,
        Shape::fixed(&[HD, D])
    );
    assert!(attention_blocks(&g).iter().all(|b| b.kv_heads == 1));
    let want = logits(&zeroed_heads(dense, &report));
    let d = max_diff(&logits(&g), &want);
    assert!(
        d < 1e-4,
        "pruned logits differ from the zeroed dense ones by {d}"
    );
}

#[test]
fn prune_heads_without_calibration_says_what_it_needs() {
    let mut g = llama(1, &[0], &[]);
    let mut cx = PassContext::default();
    let e = PruneHeadsPass {
        fraction: 0.34,
        unit: HeadUnit::Query,
        compensate: false,
    }
    .run(&mut g, &mut cx)
    .unwrap_err()
    .to_string();
    assert!(e.contains("prune-heads needs calibration data"), "{e}");
    let e = llmc_passes::registry::pipeline("prune-heads{unit=group}")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("option 'unit' takes query|kv"), "{e}");
    let e = llmc_passes::registry::pipeline("prune-heads{fraction=0.9}")
        .map(|mut p| {
            let mut cx = PassContext {
                calib: Some(calibration()),
                ..Default::default()
            };
            p[0].run(&mut g, &mut cx).unwrap_err().to_string()
        })
        .unwrap();
    assert!(e.contains("removes 3 of the 3 query heads"), "{e}");
}

#[test]
fn the_stream_is_found_layer_by_layer() {
    let g = llama(3, &[0, 1, 2], &[]);
    let s = residual_stream(&g).unwrap();
    assert_eq!(s.layers(), 3);
    assert_eq!(s.values.len(), 7);
    assert_eq!(s.starts, vec![0, 2, 4]);
}

#[test]
fn the_quiet_layer_goes_and_the_rest_computes_as_before() {
    // layer 2 writes nothing: its block influence is zero, and without it the graph is the
    // decoder built from layers 0, 1 and 3
    let mut g = llama(4, &[0, 1, 2, 3], &[2]);
    let before = weight_bytes(&g);
    let report = run_pass(
        &mut g,
        Box::new(DropLayersPass {
            count: 1,
            compensate: false,
            rank: 0,
        }),
    );
    let r = layers_row(&report);
    assert_eq!(r.removed, [2]);
    let bi = &r.block_influence;
    assert!(bi[2].abs() < 1e-9, "{bi:?}");
    assert!(
        bi.iter().enumerate().all(|(i, &b)| i == 2 || b > 1e-4),
        "{bi:?}"
    );
    assert_eq!(g.states.len(), 6);
    assert!(g.weight_by_name("blk.2.q").is_none());
    assert_eq!(residual_stream(&g).unwrap().layers(), 3);
    let reference = llama(4, &[0, 1, 3], &[]);
    assert_eq!(weight_bytes(&g), weight_bytes(&reference));
    let layer = 2 * D + HEADS * HD * (D + 1) + KV * HD * (2 * D + 1) + D * HEADS * HD + 3 * FFN * D;
    assert_eq!(before - weight_bytes(&g), layer as u64 * 4);
    let d = max_diff(&logits(&g), &logits(&reference));
    assert!(d < 1e-5, "{d}");
}

#[test]
fn dropping_adjacent_layers_rewires_past_the_whole_run() {
    let mut g = llama(4, &[0, 1, 2, 3], &[1, 2]);
    let report = run_pass(
        &mut g,
        Box::new(DropLayersPass {
            count: 2,
            compensate: false,
            rank: 0,
        }),
    );
    assert_eq!(layers_row(&report).removed, [1, 2]);
    let reference = llama(4, &[0, 3], &[]);
    let d = max_diff(&logits(&g), &logits(&reference));
    assert!(d < 1e-5, "{d}");
    let e = llmc_passes::registry::pipeline("drop-layers{count=2}")
        .map(|mut p| {
            let mut cx = PassContext {
                calib: Some(calibration()),
                ..Default::default()
            };
            p[0].run(&mut g, &mut cx).unwrap_err().to_string()
        })
        .unwrap();
    assert!(
        e.contains("would remove every one of the model's 2 layers"),
        "{e}"
    );
    let e = llmc_passes::registry::pipeline("drop-layers{count=0}")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("count must be at least 1"), "{e}");
}
