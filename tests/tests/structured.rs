//! Structured pruning end to end on random Llamas: FFN channels, attention heads (query heads
//! per KV group, whole KV groups) and whole layers (ShortGPT) leave the graph, which verifies,
//! holds fewer weight bytes by the fraction removed, runs in the interpreter, and compiled for
//! the host agrees with the interpreter on prefill and decode. Local distillation after compression is
//! checked on the model's next-token loss and never leaves it worse.

use llmc_backends::cpu::BuildOptions;
use llmc_ir::Graph;
use llmc_passes::calib::{decoder_feeds, Calibration};
use llmc_passes::core::{manager::PassManager, pass::PassContext};
use llmc_tests::cpu::cases;
use llmc_tests::cpu::{build, Exec, Target, Tol};

/// 4 windows of 48 pseudo-random tokens.
fn calibration(seed: u64) -> Calibration {
    let mut rng = 0x9e3779b97f4a7c15u64.wrapping_mul(seed + 1);
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
    Calibration {
        windows: decoder_feeds(&windows),
        label: "random tokens".into(),
    }
}

/// Bytes of the weights whose names satisfy `pick`.
fn bytes(g: &Graph, pick: impl Fn(&str) -> bool) -> u64 {
    (0..g.weights.len())
        .filter(|&i| pick(&g.weights[i].name))
        .map(|i| llmc_passes::core::edit::weight_bytes(g, i))
        .sum()
}

fn attention(name: &str) -> bool {
    ["attn_q", "attn_k", "attn_v", "attn_output"]
        .iter()
        .any(|p| name.contains(p))
}

/// Runs `pipeline` on a random Llama; returns the graph before and after and the report's
/// rows as `report.json` holds them.
fn prune(seed: u64, biases: bool, pipeline: &str) -> (Graph, Graph, Vec<serde_json::Value>) {
    prune_graph(cases::random_llama(seed, false, biases), seed, pipeline)
}

/// Runs `pipeline` on `dense` with the calibration of `seed`.
fn prune_graph(dense: Graph, seed: u64, pipeline: &str) -> (Graph, Graph, Vec<serde_json::Value>) {
    let mut g = dense.clone();
    let mut cx = PassContext {
        calib: Some(calibration(seed)),
        ..Default::default()
    };
    PassManager::new(llmc_passes::registry::pipeline(pipeline).unwrap())
        .run(&mut g, &mut cx, |_, _| {})
        .unwrap_or_else(|e| panic!("{pipeline}: {e}"));
    llmc_ir::verify(&g).unwrap();
    // the rows as report.json holds them
    let rows = cx
        .report
        .iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect();
    (dense, g, rows)
}

/// The compiled graph agrees with the interpreter over prefill, decode, prefill.
fn agrees_natively(g: &Graph, name: &str) {
    let opts = BuildOptions {
        name: name.into(),
        max_context: 32,
        max_tokens: 8,
        ..Default::default()
    };
    let c = build(g, &Target::host(), &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
    let chunks: Vec<&[i32]> = vec![&[5, 17, 42, 95, 3], &[64], &[8, 0, 33]];
    cases::check_decoder_rows(
        &c,
        g,
        &chunks,
        Exec::Serial,
        cases::LogitTol::strict(Tol::new(1e-4, 1e-4)),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
}

/// Half the query heads of every KV group (1 of 2): q, its bias and o lose half, k and v stay,
/// so the attention weights keep (q + o)/2 + k + v = 2/3 of their bytes (q, o: 128x128; k, v:
/// 64x128) plus the halved q bias.
#[test]
fn query_heads_leave_every_kv_group() {
    let (dense, g, report) = prune(70, true, "prune-heads{fraction=0.5}");
    assert_eq!(report.len(), 2, "{report:?}");
    for r in &report {
        assert_eq!(r["heads_after"], 2);
        assert_eq!(r["kv_heads_after"], 2);
    }
    let (before, after) = (bytes(&dense, attention), bytes(&g, attention));
    let biases = (128 + 64 + 64) * 4 * 2;
    let (q, kv) = (128 * 128 * 4 * 2, 64 * 128 * 4 * 2);
    assert_eq!(before, 2 * q + 2 * kv + biases);
    assert_eq!(after, q + 2 * kv + biases - 64 * 4 * 2);
    assert!(after < before, "{after} vs {before}");
    // the FFN and the embedding are untouched
    assert_eq!(
        bytes(&dense, |n| !attention(n)),
        bytes(&g, |n| !attention(n))
    );
    assert!(g.states.iter().all(|s| s.ty.shape.0[1].fixed() == Some(2)));
    agrees_natively(&g, "heads_query");
}

/// One of the two KV groups with its query heads: every attention weight and the KV cache
/// halve.
#[test]
fn whole_kv_groups_leave_and_the_cache_shrinks() {
    let (dense, g, report) = prune(71, false, "prune-heads{fraction=0.5,unit=kv}");
    for r in &report {
        assert_eq!(
            (r["heads_after"].as_u64(), r["kv_heads_after"].as_u64()),
            (Some(2), Some(1))
        );
    }
    assert_eq!(bytes(&g, attention) * 2, bytes(&dense, attention));
    assert!(g.states.iter().all(|s| s.ty.shape.0[1].fixed() == Some(1)));
    agrees_natively(&g, "heads_kv");
}

/// One of the two layers goes: exactly its weights and its two cache states leave.
#[test]
fn the_lower_influence_layer_leaves() {
    let (dense, g, report) = prune(72, false, "drop-layers{count=1}");
    let r = &report[0];
    let removed = r["removed"][0].as_u64().unwrap();
    let bi: Vec<f64> = r["block_influence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(bi.len(), 2);
    assert!(bi[removed as usize] <= bi[1 - removed as usize], "{bi:?}");
    assert!(bi.iter().all(|b| (0.0..=2.0).contains(b)), "{bi:?}");
    let layer = format!("blk.{removed}.");
    assert_eq!(
        bytes(&g, |_| true),
        bytes(&dense, |_| true) - bytes(&dense, |n| n.starts_with(&layer))
    );
    assert!(bytes(&dense, |n| n.starts_with(&layer)) > 0);
    assert_eq!(g.states.len(), 2);
    assert_eq!(
        llmc_passes::prune::layers::residual_stream(&g)
            .unwrap()
            .layers(),
        1
    );
    agrees_natively(&g, "drop_layers");
}

fn ffn(name: &str) -> bool {
    ["ffn_gate", "ffn_up", "ffn_down"]
        .iter()
        .any(|p| name.contains(p))
}

/// A quarter of every FFN's channels (64 of 256), scored on calibration or by the spectral
/// score without data: gate, up and down lose exactly that share of their bytes, nothing else
/// changes, and the compiled graph agrees with the interpreter. The two scores choose apart.
#[test]
fn ffn_channels_leave_by_either_score() {
    let mut kept = Vec::new();
    for (i, score) in ["activation", "spectral"].iter().enumerate() {
        let pipeline = format!("prune-ffn{{fraction=0.25,score={score}}}");
        let (dense, g, report) = prune(73, false, &pipeline);
        assert_eq!(report.len(), 2, "{report:?}");
        for r in &report {
            assert_eq!(
                (r["channels_before"].as_u64(), r["channels_after"].as_u64()),
                (Some(256), Some(192)),
                "{score}"
            );
        }
        assert_eq!(bytes(&g, ffn) * 4, bytes(&dense, ffn) * 3, "{score}");
        assert_eq!(
            bytes(&g, |n| !ffn(n)),
            bytes(&dense, |n| !ffn(n)),
            "{score}"
        );
        // the channels kept, read off the first layer's gate rows
        let gate = |g: &Graph| {
            let w = g
                .weights
                .iter()
                .position(|w| w.name == "blk.0.ffn_gate.weight")
                .unwrap();
            llmc_passes::core::edit::weight_f32(g, w).unwrap().0
        };
        let (before, after) = (gate(&dense), gate(&g));
        let rows: Vec<usize> = after
            .chunks(128)
            .map(|row| {
                before
                    .chunks(128)
                    .position(|r| r == row)
                    .expect("a row of the dense gate")
            })
            .collect();
        assert!(rows.windows(2).all(|w| w[0] < w[1]), "{score}: in order");
        kept.push(rows);
        agrees_natively(&g, &format!("ffn_{i}"));
    }
    assert_ne!(kept[0], kept[1]);
}

/// Prunes with `pipeline` (one pass, options in braces) and again with `compensate=true`;
/// checks the compensation row against losses measured here (the graph keeps the bias exactly
/// when it lowers the loss) and returns the dense and compensated graphs, the report and
/// whether the compensation stayed (None: the pass found nothing to compensate).
fn compensated(
    seed: u64,
    biases: bool,
    pipeline: &str,
) -> (Graph, Graph, Vec<serde_json::Value>, Option<bool>) {
    let calib = calibration(seed);
    let (dense, plain, _) = prune(seed, biases, pipeline);
    let with = format!("{},compensate=true}}", pipeline.trim_end_matches('}'));
    let (_, g, report) = prune(seed, biases, &with);
    let Some(c) = report.iter().find_map(|r| r.get("compensation")) else {
        assert!(g.weights.iter().all(|x| !x.name.ends_with(".prune_bias")));
        return (dense, g, report, None);
    };
    let (before, after) = (
        c["check"]["loss_before"].as_f64().unwrap(),
        c["check"]["loss_after"].as_f64().unwrap(),
    );
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * b.abs();
    assert!(
        close(before, loss(&plain, &calib)),
        "{with} {seed}: {before}"
    );
    assert_eq!(c["kept"], after < before, "{with} {seed}: {c}");
    assert!(
        close(loss(&g, &calib), after.min(before)),
        "{with} {seed}: {c}"
    );
    let kept = c["kept"] == true;
    (dense, g, report, Some(kept))
}

/// A removed layer's mean change of the stream joins the bias of the projection that wrote
/// the stream just before it (the layer below's down projection); a first layer has none.
#[test]
fn layer_compensation_adds_the_removed_layers_mean_change() {
    let mut outcomes = Vec::new();
    for seed in 98..106 {
        let (dense, g, report, kept) = compensated(seed, false, "drop-layers{count=1}");
        let removed = report[0]["removed"][0].as_u64().unwrap() as usize;
        match (removed, kept) {
            (0, None) => continue,
            (1, Some(true)) => {
                let s = llmc_passes::prune::layers::residual_stream(&dense).unwrap();
                let change = llmc_passes::prune::layers::block_influence(
                    &dense,
                    &s,
                    &calibration(seed),
                    |_| {},
                )
                .unwrap()
                .mean_change;
                let i = g
                    .weights
                    .iter()
                    .position(|x| x.name == "blk.0.ffn_down.weight.prune_bias")
                    .unwrap();
                let bias = llmc_passes::core::edit::weight_f32(&g, i).unwrap().0;
                assert_eq!(bias.len(), change[1].len());
                for (b, m) in bias.iter().zip(&change[1]) {
                    assert!(
                        (*b as f64 - m).abs() <= 1e-5 * (1.0 + m.abs()),
                        "{b} vs {m}"
                    );
                }
                agrees_natively(&g, &format!("layers_compensated_{seed}"));
            }
            (1, Some(false)) => {}
            other => panic!("seed {seed}: removed layer and compensation {other:?}"),
        }
        outcomes.push(kept == Some(true));
    }
    eprintln!("compensation kept, by seed with layer 1 removed: {outcomes:?}");
    assert!(outcomes.contains(&true), "{outcomes:?}");
}

/// A random 4-layer Llama whose layers 1 and 3 write a tenth of what they would: they change
/// the stream least, and `drop-layers{count=2}` removes them apart.
fn quiet_odd_layers(seed: u64) -> Graph {
    let mut dense = cases::random_llama_layers(seed, false, false, 4);
    for l in [1, 3] {
        for role in ["attn_output", "ffn_down"] {
            let name = format!("blk.{l}.{role}.weight");
            let i = dense.weights.iter().position(|w| w.name == name).unwrap();
            let v = llmc_passes::core::edit::weight_f32(&dense, i).unwrap().0;
            let quiet = v.iter().map(|x| x * 0.1).collect();
            llmc_passes::core::edit::set_weight_f32(&mut dense, i, quiet, "quieter").unwrap();
        }
    }
    dense
}

/// Removes layers 1 and 3 of [`quiet_odd_layers`] with `compensate=true` and `extra` options;
/// checks that each removed layer's compensation was tried alone, in layer order, and stayed
/// only if it lowered the loss below that of what stayed before it, that `present(layer,
/// graph)` says which stayed, and that the graph's loss is the check's last. Returns, by seed,
/// which stayed and one graph where one did.
fn each_alone(extra: &str, present: impl Fn(usize, &Graph) -> bool) -> (Vec<Vec<bool>>, Graph) {
    let mut outcomes = Vec::new();
    let mut example = None;
    for seed in 110..118 {
        let dense = quiet_odd_layers(seed);
        let (_, plain, _) = prune_graph(dense.clone(), seed, "drop-layers{count=2}");
        let pipeline = format!("drop-layers{{count=2,compensate=true{extra}}}");
        let (_, g, report) = prune_graph(dense, seed, &pipeline);
        assert_eq!(
            report[0]["removed"],
            serde_json::json!([1, 3]),
            "seed {seed}"
        );
        let c = report
            .iter()
            .find_map(|r| r.get("compensation"))
            .unwrap_or_else(|| panic!("seed {seed}: no compensation row: {report:?}"));
        let edits = c["edits"].as_array().unwrap();
        assert_eq!(edits.len(), 2, "seed {seed}: {c}");
        let calib = calibration(seed);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * b.abs();
        let mut best = c["check"]["loss_before"].as_f64().unwrap();
        assert!(close(best, loss(&plain, &calib)), "seed {seed}: {c}");
        let mut kept = Vec::new();
        for (edit, layer) in edits.iter().zip([1, 3]) {
            let l = edit["loss"].as_f64().unwrap();
            assert_eq!(edit["kept"], l < best, "seed {seed}: {c}");
            best = best.min(l);
            let here = present(layer, &g);
            assert_eq!(
                here,
                edit["kept"] == true,
                "seed {seed}, layer {layer}: {c}"
            );
            kept.push(here);
        }
        assert!(
            close(c["check"]["loss_after"].as_f64().unwrap(), best),
            "seed {seed}: {c}"
        );
        assert!(close(loss(&g, &calib), best), "seed {seed}: {c}");
        let added = bytes(&g, |_| true) as i64 - bytes(&plain, |_| true) as i64;
        assert_eq!(c["bytes_added"].as_i64(), Some(added), "seed {seed}: {c}");
        assert_eq!(added > 0, kept.contains(&true), "seed {seed}: {c}");
        if kept.contains(&true) && example.is_none() {
            example = Some(g);
        }
        outcomes.push(kept);
    }
    eprintln!("{extra}: whether the compensation of layers 1 and 3 stayed, by seed: {outcomes:?}");
    // one layer's compensation stayed where the other's went
    assert!(
        outcomes
            .iter()
            .any(|k| k.contains(&true) && k.contains(&false)),
        "{outcomes:?}"
    );
    (outcomes, example.expect("a compensation stayed"))
}

/// The mean change of each removed layer joins the bias of the kept layer below it (its down
/// projection; weights keep their names when layers leave), each tried alone.
#[test]
fn each_removed_layers_compensation_stays_or_goes_alone() {
    each_alone("", |layer, g| {
        let name = format!("blk.{}.ffn_down.weight.prune_bias", layer - 1);
        g.weights.iter().any(|w| w.name == name)
    });
}

/// With `rank`, a rank-4 affine map fitted on calibration bridges each removed layer: two
/// 4-wide linears and an addition on the stream, tried alone; native code agrees.
#[test]
fn bridges_stand_in_for_removed_layers() {
    let (_, g) = each_alone(",rank=4", |layer, g| {
        let shape = |name: String| {
            g.weights.iter().find(|w| w.name == name).map(|w| {
                w.ty.shape
                    .0
                    .iter()
                    .map(|d| d.fixed().unwrap())
                    .collect::<Vec<_>>()
            })
        };
        let down = shape(format!("blk.{layer}.bridge_down.weight"));
        let up = shape(format!("blk.{layer}.bridge_up.weight"));
        let bias = shape(format!("blk.{layer}.bridge_up.bias"));
        match (down, up, bias) {
            (Some(d), Some(u), Some(b)) => {
                assert_eq!((d, u, b), (vec![4, 128], vec![128, 4], vec![128]));
                true
            }
            (None, None, None) => false,
            other => panic!("layer {layer}: a bridge in part: {other:?}"),
        }
    });
    agrees_natively(&g, "layers_bridged");
    // and quantization after it compresses the bridges' linears too
    let (_, q, _) = prune_graph(
        quiet_odd_layers(111),
        111,
        "drop-layers{count=2,compensate=true,rank=4},quantize{bits=4,group=32}",
    );
    for name in ["blk.1.bridge_down.weight", "blk.1.bridge_up.weight"] {
        let w = q.weights.iter().find(|w| w.name == name).unwrap();
        assert!(
            matches!(&w.ty.enc, llmc_ir::Encoding::Quant(s) if s.bits == 4),
            "{name}: {:?}",
            w.ty
        );
    }
    agrees_natively(&q, "layers_bridged_w4");
}

/// `compensate`: each down projection gains a bias, the mean over calibration of what its
/// removed channels wrote (computed here from the dense graph's statistics), and keeps it only
/// if the next-token loss falls; the check's losses are the ones measured here.
#[test]
fn ffn_compensation_adds_the_removed_channels_mean_output() {
    let mut outcomes = Vec::new();
    for seed in [90, 91, 92, 93] {
        let (dense, g, _, kept) = compensated(seed, false, "prune-ffn{fraction=0.25}");
        let kept = kept.expect("a compensation row");
        if kept {
            let stats = llmc_passes::calib::collect(&dense, &calibration(seed), |_| {}).unwrap();
            for f in llmc_passes::prune::ffn::ffns(&dense) {
                let st = &stats.inputs[&f.hidden];
                let name = &dense.weights[f.down].name;
                let (down, rows, w) = llmc_passes::core::edit::weight_f32(&dense, f.down).unwrap();
                let kept_down = {
                    let i = g.weights.iter().position(|x| &x.name == name).unwrap();
                    llmc_passes::core::edit::weight_f32(&g, i).unwrap().0
                };
                // the kept channels: the dense down columns found among the pruned ones
                let kept: Vec<usize> = (0..w)
                    .filter(|&c| {
                        (0..kept_down.len() / rows).any(|k| {
                            (0..rows).all(|r| {
                                kept_down[r * (kept_down.len() / rows) + k] == down[r * w + c]
                            })
                        })
                    })
                    .collect();
                assert_eq!(kept.len(), w * 3 / 4, "{name}");
                let bias_name = format!("{name}.prune_bias");
                let i = g.weights.iter().position(|x| x.name == bias_name).unwrap();
                let bias = llmc_passes::core::edit::weight_f32(&g, i).unwrap().0;
                for r in 0..rows {
                    let want: f64 = (0..w)
                        .filter(|c| !kept.contains(c))
                        .map(|c| down[r * w + c] as f64 * st.sum[c] / st.tokens as f64)
                        .sum();
                    assert!(
                        (bias[r] as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{name} row {r}"
                    );
                }
            }
            agrees_natively(&g, &format!("ffn_compensated_{seed}"));
        } else {
            assert!(g.weights.iter().all(|x| !x.name.ends_with(".prune_bias")));
        }
        outcomes.push(kept);
    }
    eprintln!("compensation kept, by seed: {outcomes:?}");
    assert!(
        outcomes.contains(&true),
        "no seed kept the compensation: {outcomes:?}"
    );
}

/// The same for heads: each output projection gains the mean over calibration of what its
/// removed heads' columns wrote, kept only if the next-token loss falls.
#[test]
fn head_compensation_adds_the_removed_heads_mean_output() {
    let mut outcomes = Vec::new();
    for seed in [94, 95, 96, 97] {
        let (dense, g, report, kept) = compensated(seed, true, "prune-heads{fraction=0.5}");
        let kept = kept.expect("a compensation row");
        if kept {
            let stats = llmc_passes::calib::collect(&dense, &calibration(seed), |_| {}).unwrap();
            for b in llmc_passes::prune::heads::attention_blocks(&dense) {
                let name = &dense.weights[b.o.weight].name;
                let removed: Vec<usize> = report
                    .iter()
                    .find(|r| r["weight"] == name.as_str())
                    .unwrap()["removed"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|h| {
                        let h = h.as_u64().unwrap() as usize;
                        h * b.v_dim..(h + 1) * b.v_dim
                    })
                    .collect();
                let st = &stats.inputs[&b.o_input];
                let (o, rows, cols) =
                    llmc_passes::core::edit::weight_f32(&dense, b.o.weight).unwrap();
                // the o bias the model had (if any), plus the compensation
                let (old_bias, new_bias) = match b.o.bias {
                    Some(bi) => {
                        let bname = &dense.weights[bi].name;
                        let i = g.weights.iter().position(|x| &x.name == bname).unwrap();
                        (
                            llmc_passes::core::edit::weight_f32(&dense, bi).unwrap().0,
                            llmc_passes::core::edit::weight_f32(&g, i).unwrap().0,
                        )
                    }
                    None => {
                        let bname = format!("{name}.prune_bias");
                        let i = g.weights.iter().position(|x| x.name == bname).unwrap();
                        (
                            vec![0.0; rows],
                            llmc_passes::core::edit::weight_f32(&g, i).unwrap().0,
                        )
                    }
                };
                for r in 0..rows {
                    let want: f64 = old_bias[r] as f64
                        + removed
                            .iter()
                            .map(|&c| o[r * cols + c] as f64 * st.sum[c] / st.tokens as f64)
                            .sum::<f64>();
                    assert!(
                        (new_bias[r] as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{name} row {r}"
                    );
                }
            }
            agrees_natively(&g, &format!("heads_compensated_{seed}"));
        }
        outcomes.push(kept);
    }
    eprintln!("compensation kept, by seed: {outcomes:?}");
    assert!(
        outcomes.contains(&true),
        "no seed kept the compensation: {outcomes:?}"
    );
}

/// Mean next-token negative log-likelihood of `g` over the windows of `calib`, computed here
/// from the logits.
fn loss(g: &Graph, calib: &Calibration) -> f64 {
    let mut s = llmc_ir::Session::new(g).unwrap();
    let (mut sum, mut n) = (0f64, 0usize);
    for w in &calib.windows {
        let feed: Vec<(&str, llmc_ir::Tensor)> =
            w.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        let tokens = w
            .iter()
            .find(|(n, _)| n == "tokens")
            .unwrap()
            .1
            .to_f32_vec();
        s.reset();
        let out = s.run(&feed).unwrap();
        let logits = out
            .iter()
            .find(|(n, _)| n == "logits")
            .unwrap()
            .1
            .to_f32_vec();
        let vocab = logits.len() / tokens.len();
        for (t, row) in logits.chunks(vocab).enumerate().take(tokens.len() - 1) {
            let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let z: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
            sum += max + z.ln() - row[tokens[t + 1] as usize] as f64;
            n += 1;
        }
    }
    sum / n as f64
}

/// `distill` after pruning or quantization keeps its corrections only where the next-token loss
/// on calibration windows falls: the result is never worse than the undistilled graph, the check
/// reports both losses as measured here, and a rejected correction leaves the graph as it was.
#[test]
fn distillation_never_raises_the_calibration_loss() {
    for (seed, compress, distill) in [
        (80, "prune{method=wanda,sparsity=0.5}", "distill"),
        (81, "prune{method=wanda,sparsity=0.5}", "distill{rank=4}"),
        (82, "prune{method=magnitude,sparsity=0.6}", "distill"),
        (83, "quantize{bits=3,group=8}", "distill"),
        (84, "quantize{bits=2,group=16}", "distill{rank=2}"),
    ] {
        let calib = calibration(seed);
        let (_, plain, _) = prune(seed, false, compress);
        let off = match distill.strip_suffix('}') {
            Some(d) => format!("{d},check=0}}"),
            None => format!("{distill}{{check=0}}"),
        };
        let (_, unchecked, _) = prune(seed, false, &format!("{compress},{off}"));
        let checked_pipeline = format!("{compress},{distill}");
        let (_, checked, report) = prune(seed, false, &checked_pipeline);
        // prune() calibrates on calibration(seed), the windows measured here
        let (l_plain, l_unchecked, l_checked) = (
            loss(&plain, &calib),
            loss(&unchecked, &calib),
            loss(&checked, &calib),
        );
        let check = report
            .iter()
            .find_map(|r| r.get("check"))
            .unwrap_or_else(|| panic!("{checked_pipeline}: no check row in {report:?}"));
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * b.abs();
        let (before, all, after) = (
            check["loss_before"].as_f64().unwrap(),
            check["loss_all"].as_f64().unwrap(),
            check["loss_after"].as_f64().unwrap(),
        );
        let at = |what: &str, a: f64, b: f64| {
            assert!(
                close(a, b),
                "{checked_pipeline}: {what} {a} vs {b} measured"
            );
        };
        at("uncorrected", before, l_plain);
        at("every correction", all, l_unchecked);
        at("as kept", after, l_checked);
        assert_eq!(check["kept"], after < before, "{checked_pipeline}: {check}");
        assert!(
            l_checked <= l_plain * (1.0 + 1e-6),
            "{checked_pipeline}: {l_checked} worse than {l_plain}"
        );
        let corrected = report.iter().filter(|r| {
            r["pass"] == "distill"
                && r["correction"]
                    .as_str()
                    .is_some_and(|c| !c.starts_with("none"))
        });
        if check["kept"] == true {
            assert!(corrected.count() > 0, "{checked_pipeline}");
            if all < before {
                // every correction lowered the loss together: all stay
                at("kept, all", l_checked, l_unchecked);
            }
        } else {
            assert_eq!(corrected.count(), 0, "{checked_pipeline}");
            assert_eq!(checked.weights.len(), plain.weights.len());
        }
        eprintln!(
            "{checked_pipeline}: loss {l_plain:.4}, every correction {l_unchecked:.4}, as kept {l_checked:.4} {}",
            check["groups_kept"]
        );
    }
}
