//! The real paraphrase-MiniLM-L3 ONNX export (opset 17, dynamic shapes) through the importer
//! and the interpreter, against onnxruntime on the same tokens; the fusions must have fired.
//! Needs the assets (`scripts/setup.sh --assets`): the model, the MiniLM-L6 tokenizer and the
//! Python venv with onnxruntime.

use llmc::frontend::onnx;
use llmc::frontend::ModelKind;
use llmc::tokenizer::Tokenizer;
use llmc_ir::Tensor;
use llmc_tests::{max_abs_diff, minilm_l6_dir, paraphrase_onnx, python};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

const SENTENCES: [&str; 4] = [
    "The quick brown fox jumps over the lazy dog.",
    "A compiler turns a model into native code.",
    "Hello!",
    "Sentence embeddings map text of any length to one vector, so similar meanings land close together.",
];

/// Runs onnxruntime on each batch of `(input_ids, attention_mask)`; returns per batch the
/// outputs by name as (shape, values).
fn onnxruntime(
    model: &std::path::Path,
    batches: &[(Vec<Vec<i64>>, Vec<Vec<i64>>)],
) -> Vec<BTreeMap<String, (Vec<usize>, Vec<f64>)>> {
    let dir = std::env::temp_dir().join(format!("llmc-onnx-minilm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let req: Vec<serde_json::Value> = batches
        .iter()
        .map(|(ids, mask)| serde_json::json!({"input_ids": ids, "attention_mask": mask}))
        .collect();
    let (inp, out) = (dir.join("in.json"), dir.join("out.json"));
    std::fs::write(&inp, serde_json::to_string(&req).unwrap()).unwrap();
    let script = r#"
import sys, json, numpy as np, onnxruntime as ort
model, inp, out = sys.argv[1:4]
s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
res = []
for b in json.load(open(inp)):
    feeds = {k: np.array(v, dtype=np.int64) for k, v in b.items()}
    outs = s.run(None, feeds)
    res.append({o.name: {"shape": list(a.shape), "data": a.astype(np.float64).ravel().tolist()} for o, a in zip(s.get_outputs(), outs)})
json.dump(res, open(out, "w"))
"#;
    let st = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(model)
        .arg(&inp)
        .arg(&out)
        .status()
        .expect("run python");
    assert!(st.success(), "onnxruntime failed: {st}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| {
            b.as_object()
                .unwrap()
                .iter()
                .map(|(k, o)| {
                    let shape = o["shape"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_u64().unwrap() as usize)
                        .collect();
                    let data = o["data"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_f64().unwrap())
                        .collect();
                    (k.clone(), (shape, data))
                })
                .collect()
        })
        .collect()
}

#[test]
fn minilm_matches_onnxruntime() {
    let path = paraphrase_onnx();
    let t0 = Instant::now();
    let model = onnx::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let import = t0.elapsed();
    println!("import: {:.3} s", import.as_secs_f64());
    assert!(
        import.as_secs_f64() < 5.0,
        "importing the 69 MB model took {import:?}"
    );
    let g = &model.graph;
    llmc_ir::verify(g).unwrap();
    let hist = g.op_histogram();
    println!("op histogram after import: {hist:?}");
    assert_eq!(model.kind, ModelKind::Encoder { hidden: 384 });
    assert_eq!(model.architecture, "onnx");
    // 3 layers: q, k, v, output, two FFN linears each; 7 layer norms (embeddings + 2 per layer).
    assert_eq!(hist.get("attention"), Some(&3), "{hist:?}");
    assert_eq!(hist.get("layer_norm"), Some(&7), "{hist:?}");
    assert_eq!(hist.get("linear"), Some(&18), "{hist:?}");
    assert_eq!(hist.get("gelu"), Some(&3), "{hist:?}");
    for gone in ["matmul", "softmax", "erf"] {
        assert!(
            !hist.contains_key(gone),
            "{gone} left after fusion: {hist:?}"
        );
    }
    assert!(g.outputs.iter().any(|(n, _)| n == "last_hidden_state"));

    let tok = Tokenizer::from_file(&minilm_l6_dir().join("tokenizer.json")).unwrap();
    let ids: Vec<Vec<i64>> = SENTENCES
        .iter()
        .map(|s| {
            tok.encode(s, true)
                .unwrap()
                .into_iter()
                .map(|t| t as i64)
                .collect()
        })
        .collect();
    // One sentence per run, then all four padded into one batch with a mask.
    let mut batches: Vec<(Vec<Vec<i64>>, Vec<Vec<i64>>)> = ids
        .iter()
        .map(|s| (vec![s.clone()], vec![vec![1; s.len()]]))
        .collect();
    let longest = ids.iter().map(|s| s.len()).max().unwrap();
    let padded: Vec<Vec<i64>> = ids
        .iter()
        .map(|s| {
            s.iter()
                .copied()
                .chain(std::iter::repeat(0))
                .take(longest)
                .collect()
        })
        .collect();
    let mask: Vec<Vec<i64>> = ids
        .iter()
        .map(|s| (0..longest).map(|i| (i < s.len()) as i64).collect())
        .collect();
    batches.push((padded, mask));

    let t1 = Instant::now();
    let want = onnxruntime(&path, &batches);
    println!("onnxruntime: {:.2} s", t1.elapsed().as_secs_f64());
    let mut worst = 0.0f32;
    let t2 = Instant::now();
    let mut session = llmc_ir::Session::new(g).unwrap();
    for (b, ((ids, mask), want)) in batches.iter().zip(&want).enumerate() {
        let flat = |v: &Vec<Vec<i64>>| {
            Tensor::i64(
                vec![v.len(), v[0].len()],
                v.iter().flatten().copied().collect(),
            )
        };
        let outs = session
            .run(&[("input_ids", flat(ids)), ("attention_mask", flat(mask))])
            .unwrap_or_else(|e| panic!("{e}"));
        let outs: BTreeMap<String, Tensor> = outs.into_iter().collect();
        for (name, (shape, data)) in want {
            let got = outs
                .get(name)
                .unwrap_or_else(|| panic!("llmc's graph has no output '{name}'"));
            assert_eq!(&got.shape, shape, "batch {b} output {name}");
            let w: Vec<f32> = data.iter().map(|&x| x as f32).collect();
            let d = max_abs_diff(&got.to_f32_vec(), &w);
            println!("batch {b} output {name:>16} {shape:?}: max abs diff {d:.3e}");
            worst = worst.max(d);
        }
    }
    println!(
        "interpreter: {:.2} s for {} runs; worst max abs diff {worst:.3e}",
        t2.elapsed().as_secs_f64(),
        batches.len()
    );
    assert!(worst <= 1e-4, "llmc and onnxruntime differ by {worst}");
}

/// The same model saved with its weights in an external data file imports to the same graph
/// (the weights mapped from the data file) and computes the same.
#[test]
fn external_data_imports_the_same_graph() {
    let path = paraphrase_onnx();
    let dir = std::env::temp_dir().join(format!("llmc-onnx-external-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ext = dir.join("model.onnx");
    let script = "import sys, onnx\nm = onnx.load(sys.argv[1])\nonnx.save(m, sys.argv[2], save_as_external_data=True, all_tensors_to_one_file=True, location='weights.bin', size_threshold=1024)\n";
    let st = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(&path)
        .arg(&ext)
        .status()
        .expect("run python");
    assert!(st.success(), "saving with external data failed: {st}");
    assert!(
        std::fs::metadata(&ext).unwrap().len() < 1 << 20,
        "the weights should have moved to weights.bin"
    );
    let inline = onnx::load(&path).unwrap();
    let external = onnx::load(&ext).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        llmc_ir::print(&external.graph),
        llmc_ir::print(&inline.graph)
    );
    let ids = Tensor::i64(vec![1, 5], vec![101, 7592, 2088, 999, 102]);
    let mask = Tensor::i64(vec![1, 5], vec![1; 5]);
    let run = |g: &llmc_ir::Graph| {
        llmc_ir::interp::run_once(
            g,
            &[("input_ids", ids.clone()), ("attention_mask", mask.clone())],
        )
        .unwrap()
    };
    for ((n, a), (_, b)) in run(&inline.graph).iter().zip(run(&external.graph).iter()) {
        assert_eq!(a, b, "output {n}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
