//! Filetests: IR text in `tests/filetests/*.llmc`, the patterns its `// RUN:` line names run to
//! a fixpoint (or the pipeline its `// PASSES:` line names, calibrated on random inputs), the
//! result verified, snapshotted, checked against `// CHECK:` / `// CHECK-NEXT:` lines of text
//! (in order, as FileCheck does) and `// CHECK-NOT:` / `// CHECK-COUNT:` ops, and run in the
//! interpreter before and after on the same inputs (outputs within 1e-5, or `// TOL:` of the
//! largest output for lossy passes).

use llmc_ir::{parse, print, verify, DType, Data, Dim, Graph, Tensor, WeightData};
use llmc_passes::calib::Calibration;
use llmc_passes::core::{manager::PassManager, pass::PassContext};
use llmc_passes::{apply_patterns, patterns_by_name, RewriteConfig};
use std::collections::HashMap;
use std::path::Path;

/// Deterministic values in [-2, 2).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
    }

    fn tensor(&mut self, shape: Vec<usize>, dtype: DType) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.next()).collect();
        match dtype {
            d if d.is_float() => Tensor::f32(shape, v).cast(d),
            DType::Bool => Tensor::new(shape, Data::Bool(v.iter().map(|x| *x > 0.0).collect())),
            d => Tensor::i64(shape, v.iter().map(|x| (x.abs() * 1.5) as i64).collect()).cast(d),
        }
    }
}

/// The `// NAME: value` lines of a file.
fn directives<'a>(src: &'a str, name: &str) -> Vec<&'a str> {
    let tag = format!("// {name}:");
    src.lines()
        .filter_map(|l| l.trim().strip_prefix(tag.as_str()))
        .map(str::trim)
        .collect()
}

fn attach_weights(g: &mut Graph, rng: &mut Rng) {
    for w in &mut g.weights {
        let dims = w.ty.shape.as_fixed().expect("weights have fixed shapes");
        let t = rng.tensor(dims, w.ty.dtype());
        let data = WeightData::from_tensor(&t, format!("filetest weight @{}", w.name));
        w.hash = data.hash();
        w.data = Some(data);
    }
}

fn make_inputs(g: &Graph, dims: &HashMap<String, usize>, rng: &mut Rng) -> Vec<(String, Tensor)> {
    g.inputs
        .iter()
        .map(|(name, v)| {
            let ty = g.ty(*v);
            let shape: Vec<usize> = ty
                .shape
                .0
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => *n as usize,
                    Dim::Sym(s) => dims.get(s).copied().unwrap_or(3),
                    Dim::Any => 3,
                })
                .collect();
            (name.clone(), rng.tensor(shape, ty.dtype()))
        })
        .collect()
}

fn run(g: &Graph, inputs: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    let ins: Vec<(&str, Tensor)> = inputs
        .iter()
        .map(|(n, t)| (n.as_str(), t.clone()))
        .collect();
    llmc_ir::interp::run_once(g, &ins).unwrap_or_else(|e| panic!("interpreter: {e}\n{}", print(g)))
}

/// FileCheck's rule over the rewritten graph's text: each `// CHECK: text` line must occur in
/// a line after the one the previous CHECK matched, and `// CHECK-NEXT: text` in the very next
/// line. (`CHECK-NOT` and `CHECK-COUNT` name ops, `CHECK-CHANGED` and `CHECK-UNCHANGED`
/// weights whose content the rewrite must or must not change: see [`run_file`].)
fn check_lines(file: &str, src: &str, text: &str) {
    let lines: Vec<&str> = text.lines().collect();
    let mut at = 0usize;
    for l in src.lines().map(str::trim) {
        if let Some(want) = l.strip_prefix("// CHECK:").map(str::trim) {
            let found = lines[at..].iter().position(|x| x.contains(want));
            let Some(k) = found else {
                panic!("{file}: CHECK: '{want}' not found after line {at} of\n{text}");
            };
            at += k + 1;
        } else if let Some(want) = l.strip_prefix("// CHECK-NEXT:").map(str::trim) {
            assert!(
                at > 0 && lines.get(at).is_some_and(|x| x.contains(want)),
                "{file}: CHECK-NEXT: '{want}' is not on line {} of\n{text}",
                at + 1
            );
            at += 1;
        }
    }
}

/// Runs one filetest; returns the rewritten graph's text for the snapshot.
fn run_file(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/filetests")
        .join(file);
    let src = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let run_line = directives(&src, "RUN");
    let pass_line = directives(&src, "PASSES");
    assert_eq!(
        run_line.len() + pass_line.len(),
        1,
        "{file}: needs exactly one // RUN: line naming patterns or one // PASSES: pipeline"
    );
    let what = run_line
        .first()
        .or(pass_line.first())
        .copied()
        .unwrap_or("");
    // lossy passes state how far outputs may move, relative to the largest output
    let rel_tol: Option<f32> = directives(&src, "TOL")
        .first()
        .map(|t| t.parse().expect("// TOL: a number"));
    let dims: HashMap<String, usize> = directives(&src, "DIMS")
        .iter()
        .flat_map(|l| l.split(','))
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect();
    let mut g = parse(file, &src).unwrap_or_else(|e| panic!("{e}"));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    attach_weights(&mut g, &mut rng);
    verify(&g).unwrap_or_else(|e| panic!("{file} does not verify before the pass: {e}"));
    let inputs = make_inputs(&g, &dims, &mut rng);
    let before = run(&g, &inputs);
    let hashes_before: HashMap<String, u64> =
        g.weights.iter().map(|w| (w.name.clone(), w.hash)).collect();
    let fired_line = if let Some(p) = pass_line.first() {
        // calibration: eight more draws of the inputs
        let windows = (0..8).map(|_| make_inputs(&g, &dims, &mut rng)).collect();
        let mut cx = PassContext {
            calib: Some(Calibration {
                windows,
                label: "filetest inputs".into(),
            }),
            ..Default::default()
        };
        let passes = llmc_passes::registry::pipeline(p).unwrap_or_else(|e| panic!("{file}: {e}"));
        PassManager::new(passes)
            .run(&mut g, &mut cx, |_, _| {})
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        format!("// passes: {p}")
    } else {
        let patterns = patterns_by_name(run_line[0]).unwrap_or_else(|e| panic!("{file}: {e}"));
        let stats = apply_patterns(&mut g, &patterns, &RewriteConfig::default())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let fired: Vec<String> = stats
            .fired
            .iter()
            .map(|(k, v)| format!("{k} x{v}"))
            .collect();
        format!("// fired: {}", fired.join(", "))
    };
    verify(&g)
        .unwrap_or_else(|e| panic!("{file} does not verify after {what}: {e}\n{}", print(&g)));
    let text = print(&g);
    // The printed form is a fixed point of the parser.
    let reparsed = parse(file, &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        print(&reparsed),
        text,
        "{file}: print(parse(print(g))) differs"
    );
    let after = run(&g, &inputs);
    assert_eq!(before.len(), after.len());
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        assert_eq!(a.shape, b.shape, "{file}: output {name} changed shape");
        let (x, y) = (a.to_f32_vec(), b.to_f32_vec());
        let worst = x
            .iter()
            .zip(&y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        // without a TOL line: 1e-5 absolute
        let scale = x.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let (tol, scale) = rel_tol.map_or((1e-5, 1.0), |t| (t, scale));
        assert!(
            worst <= tol * scale,
            "{file}: output {name} differs by {worst} (scale {scale}) after {what}"
        );
    }
    check_lines(file, &src, &text);
    // which weights the rewrite changed, by content hash
    for (tag, changed) in [("CHECK-CHANGED", true), ("CHECK-UNCHANGED", false)] {
        for name in directives(&src, tag)
            .iter()
            .flat_map(|l| l.split_whitespace())
        {
            let name = name.trim_start_matches('@');
            let now = g.weight_by_name(name).map(|w| w.hash);
            let was = hashes_before.get(name).copied();
            assert!(
                was.is_some() && now.is_some() && (was != now) == changed,
                "{file}: {tag}: @{name} (hash {was:?} before, {now:?} after)"
            );
        }
    }
    let hist = g.op_histogram();
    for op in directives(&src, "CHECK-NOT") {
        assert!(
            !hist.contains_key(op),
            "{file}: CHECK-NOT: '{op}' is still in\n{text}"
        );
    }
    for line in directives(&src, "CHECK-COUNT") {
        let (op, n) = line.split_once(' ').expect("CHECK-COUNT: op count");
        let n: usize = n.trim().parse().expect("a count");
        assert_eq!(
            hist.get(op).copied().unwrap_or(0),
            n,
            "{file}: CHECK-COUNT: {line}\n{text}"
        );
    }
    if pass_line.is_empty() {
        return format!("{fired_line}\n{text}");
    }
    // calibrated passes' weights depend on float summation order, which differs between CPUs
    // (AVX2, AVX-512): the snapshot keeps the encodings, not the weights' hashes
    let text: Vec<String> = text
        .lines()
        .map(|l| match l.trim_start().starts_with("weight @") {
            true => l.rsplit_once(" #").map_or(l, |(head, _)| head).to_string(),
            false => l.to_string(),
        })
        .collect();
    format!("{fired_line}\n{}\n", text.join("\n"))
}

macro_rules! filetest {
    ($name:ident, $file:expr) => {
        #[test]
        fn $name() {
            insta::assert_snapshot!(stringify!($name), run_file($file));
        }
    };
}

filetest!(layer_norm, "layer_norm.llmc");
filetest!(
    layer_norm_square_no_affine,
    "layer_norm_square_no_affine.llmc"
);
filetest!(layer_norm_no_match, "layer_norm_no_match.llmc");
filetest!(gelu, "gelu.llmc");
filetest!(gelu_orders, "gelu_orders.llmc");
filetest!(gelu_tanh, "gelu_tanh.llmc");
filetest!(attention, "attention.llmc");
filetest!(attention_scaled_inputs, "attention_scaled_inputs.llmc");
filetest!(linear, "linear.llmc");
filetest!(canonicalize, "canonicalize.llmc");
filetest!(fold_large, "fold_large.llmc");
filetest!(shape_exprs, "shape_exprs.llmc");
filetest!(smooth, "smooth.llmc");
filetest!(quantize_rtn, "quantize_rtn.llmc");
filetest!(quantize_gptq, "quantize_gptq.llmc");
filetest!(quantize_awq, "quantize_awq.llmc");
filetest!(quantize_mixed, "quantize_mixed.llmc");
filetest!(smooth_then_w8a8, "smooth_then_w8a8.llmc");
filetest!(prune_sparsegpt_24, "prune_sparsegpt_24.llmc");
filetest!(prune_wanda_then_w4, "prune_wanda_then_w4.llmc");
filetest!(prune_ffn, "prune_ffn.llmc");
filetest!(prune_heads, "prune_heads.llmc");
filetest!(prune_heads_kv, "prune_heads_kv.llmc");
filetest!(drop_layers, "drop_layers.llmc");
filetest!(lowrank_svd_llm, "lowrank_svd_llm.llmc");
filetest!(caldera, "caldera.llmc");
filetest!(palettize, "palettize.llmc");
filetest!(distill_after_w3, "distill_after_w3.llmc");
filetest!(fuse_pipeline, "fuse_pipeline.llmc");

#[test]
fn every_fixture_has_a_test() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/filetests");
    let me =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/filetests.rs"))
            .unwrap();
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".llmc") {
            assert!(
                me.contains(&format!("\"{name}\"")),
                "filetests/{name} has no filetest! line"
            );
            let src = std::fs::read_to_string(e_path(&name)).unwrap();
            assert!(
                !directives(&src, "CHECK").is_empty(),
                "filetests/{name} has no // CHECK: line on the rewritten text"
            );
        }
    }
}

fn e_path(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/filetests")
        .join(name)
}

/// Every registered pass runs in at least one filetest's `// PASSES:` pipeline.
#[test]
fn every_pass_has_a_filetest() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/filetests");
    let mut named = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let src = std::fs::read_to_string(e.unwrap().path()).unwrap();
        for p in directives(&src, "PASSES") {
            for entry in llmc_passes::core::manager::parse_pipeline(p).unwrap() {
                named.insert(entry.name);
            }
        }
    }
    for info in llmc_passes::infos() {
        assert!(
            named.contains(info.name),
            "pass {} runs in no filetest (add tests/filetests/NAME.llmc with a // PASSES: line)",
            info.name
        );
    }
}
