//! The ONNX backend node tests (shipped in the `onnx` Python package) for every operator the
//! importer claims: each case is imported, run in the interpreter and compared with the
//! expected outputs. A case may be rejected as unsupported (double or string data, training
//! mode, ...), never answered wrongly. Needs the asset venv (`scripts/setup.sh --assets`).

use llmc::frontend::onnx::{self, ImportOptions};
use llmc::frontend::FrontendError;
use llmc_ir::Tensor;
use llmc_tests::onnx_node_tests_dir;
use std::collections::{BTreeMap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Case directory prefixes (after `test_`) that name an operator's cases.
fn prefixes(op: &str) -> Vec<String> {
    let snake = |s: &str| {
        let mut o = String::new();
        for (i, c) in s.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                o.push('_');
            }
            o.push(c.to_ascii_lowercase());
        }
        o
    };
    match op {
        o if o.starts_with("Reduce") => vec![snake(o)],
        "LayerNormalization" => vec!["layer_normalization".into()],
        "LessOrEqual" => vec!["less_equal".into()],
        "GreaterOrEqual" => vec!["greater_equal".into()],
        "Dropout" => vec!["dropout".into(), "training_dropout".into()],
        o => vec![o.to_ascii_lowercase()],
    }
}

/// The claimed operator a case belongs to: the longest matching prefix, followed by the end of
/// the name, `_` or a digit; and the case's model must use the operator (or be its expansion).
fn op_of_case(case: &str, ops: &[&'static str], model_ops: &[String]) -> Option<&'static str> {
    let name = case.strip_prefix("test_")?;
    let mut best: Option<(&'static str, usize)> = None;
    for &op in ops {
        for p in prefixes(op) {
            let boundary = name.strip_prefix(p.as_str()).is_some_and(|rest| {
                rest.is_empty()
                    || rest.starts_with('_')
                    || rest.starts_with(|c: char| c.is_ascii_digit())
            });
            if boundary && best.is_none_or(|(_, l)| p.len() > l) {
                best = Some((op, p.len()));
            }
        }
    }
    let (op, _) = best?;
    (model_ops.iter().any(|m| m == op) || name.contains("_expanded")).then_some(op)
}

enum Outcome {
    Pass { pinned: bool },
    Unsupported(String),
    Fail(String),
}

fn close(a: &Tensor, b: &Tensor) -> Result<(), String> {
    if a.dtype() != b.dtype() {
        return Err(format!(
            "element type {} where {} is expected",
            a.dtype(),
            b.dtype()
        ));
    }
    if a.shape != b.shape {
        return Err(format!(
            "shape {:?} where {:?} is expected",
            a.shape, b.shape
        ));
    }
    if a.dtype().is_float() {
        let (x, y) = (a.to_f32_vec(), b.to_f32_vec());
        for (i, (p, q)) in x.iter().zip(&y).enumerate() {
            let ok = (p.is_nan() && q.is_nan()) || p == q || (p - q).abs() <= 1e-5 + 1e-3 * q.abs();
            if !ok {
                return Err(format!("element {i} is {p}, expected {q}"));
            }
        }
        Ok(())
    } else if a.data == b.data {
        Ok(())
    } else {
        let (x, y) = (a.data.to_f64(), b.data.to_f64());
        let i = x.iter().zip(&y).position(|(p, q)| p != q).unwrap_or(0);
        Err(format!(
            "element {i} is {}, expected {}",
            x.get(i).copied().unwrap_or(0.0),
            y.get(i).copied().unwrap_or(0.0)
        ))
    }
}

fn numbered(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let n = e.file_name().into_string().ok()?;
                    let k: usize = n.strip_prefix(prefix)?.strip_suffix(".pb")?.parse().ok()?;
                    Some((k, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

fn run_case(dir: &Path) -> Outcome {
    let model = dir.join("model.onnx");
    let unsupported_or_fail = |e: FrontendError| match e {
        FrontendError::Unsupported { msg, .. } => Outcome::Unsupported(msg),
        other => Outcome::Fail(other.to_string()),
    };
    let (in_names, out_names) = match onnx::model_io_names(&model) {
        Ok(x) => x,
        Err(e) => return unsupported_or_fail(e),
    };
    let params = match onnx::parameter_inputs(&model) {
        Ok(p) => p,
        Err(e) => return unsupported_or_fail(e),
    };
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    sets.sort();
    if sets.is_empty() {
        return Outcome::Fail("no test_data_set_* directory".into());
    }
    let mut pinned_any = false;
    for set in sets {
        let ins = numbered(&set, "input_");
        let outs = numbered(&set, "output_");
        let mut values: Vec<(String, Tensor)> = Vec::new();
        for (i, p) in ins.iter().enumerate() {
            let name = in_names.get(i).cloned().unwrap_or_default();
            match onnx::read_tensor_file(p) {
                Ok((_, t)) => values.push((name, t)),
                // Inputs that are not tensors (sequences, optionals) do not read as one; the
                // importer must have refused the model for them.
                Err(e) => {
                    return match onnx::load_with(&model, &ImportOptions::default()) {
                        Err(FrontendError::Unsupported { msg, .. }) => Outcome::Unsupported(msg),
                        _ => unsupported_or_fail(e),
                    }
                }
            }
        }
        let pinned: HashMap<String, Tensor> = values
            .iter()
            .filter(|(n, _)| params.contains(n))
            .cloned()
            .collect();
        pinned_any |= !pinned.is_empty();
        let opts = ImportOptions {
            pinned: pinned.clone(),
            ..ImportOptions::default()
        };
        let m = match onnx::load_with(&model, &opts) {
            Ok(m) => m,
            Err(e) => return unsupported_or_fail(e),
        };
        if let Err(e) = llmc_ir::verify(&m.graph) {
            return Outcome::Fail(format!("the imported graph does not verify: {e}"));
        }
        let feed: Vec<(&str, Tensor)> = values
            .iter()
            .filter(|(n, _)| !pinned.contains_key(n))
            .map(|(n, t)| (n.as_str(), t.clone()))
            .collect();
        let got = match llmc_ir::interp::run_once(&m.graph, &feed) {
            Ok(r) => r,
            Err(e) => return Outcome::Fail(format!("interpreter: {e}")),
        };
        let got: HashMap<String, Tensor> = got.into_iter().collect();
        for (i, p) in outs.iter().enumerate() {
            let want = match onnx::read_tensor_file(p) {
                Ok((_, t)) => t,
                Err(e) => return unsupported_or_fail(e),
            };
            let name = out_names.get(i).cloned().unwrap_or_default();
            let Some(have) = got.get(&name) else {
                return Outcome::Fail(format!("no output '{name}'"));
            };
            if let Err(m) = close(have, &want) {
                return Outcome::Fail(format!("output '{name}': {m}"));
            }
        }
    }
    Outcome::Pass { pinned: pinned_any }
}

#[derive(Default)]
struct Row {
    pass: usize,
    pinned: usize,
    unsupported: Vec<(String, String)>,
    fail: Vec<(String, String)>,
}

#[test]
fn onnx_backend_node_tests() {
    let root = onnx_node_tests_dir();
    let ops = onnx::supported_ops();
    let mut cases: Vec<String> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("test_"))
        .collect();
    cases.sort();
    let t0 = Instant::now();
    let mut rows: BTreeMap<&'static str, Row> = ops.iter().map(|&o| (o, Row::default())).collect();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut ran = 0;
    for case in &cases {
        let dir = root.join(case);
        let model_ops = onnx::model_op_types(&dir.join("model.onnx")).unwrap_or_default();
        let Some(op) = op_of_case(case, ops, &model_ops) else {
            continue;
        };
        ran += 1;
        let outcome = catch_unwind(AssertUnwindSafe(|| run_case(&dir))).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Outcome::Fail(format!("panic: {msg}"))
        });
        let row = rows.get_mut(op).expect("claimed");
        match outcome {
            Outcome::Pass { pinned } => {
                row.pass += 1;
                row.pinned += pinned as usize;
            }
            Outcome::Unsupported(m) => row.unsupported.push((case.clone(), m)),
            Outcome::Fail(m) => row.fail.push((case.clone(), m)),
        }
    }
    std::panic::set_hook(hook);
    println!(
        "{ran} cases of {} claimed operators in {:.1} s\n",
        ops.len(),
        t0.elapsed().as_secs_f64()
    );
    println!(
        "{:<20} {:>6} {:>7} {:>6} {:>5}  unsupported because",
        "operator", "passed", "(pinned)", "unsup", "fail"
    );
    let (mut tp, mut tu, mut tf) = (0, 0, 0);
    for (op, r) in &rows {
        let why: Vec<String> = r
            .unsupported
            .iter()
            .map(|(c, m)| {
                format!(
                    "{}: {}",
                    c.trim_start_matches("test_"),
                    m.chars().take(90).collect::<String>()
                )
            })
            .collect();
        println!(
            "{:<20} {:>6} {:>7} {:>6} {:>5}  {}",
            op,
            r.pass,
            r.pinned,
            r.unsupported.len(),
            r.fail.len(),
            why.first().cloned().unwrap_or_default()
        );
        for w in why.iter().skip(1) {
            println!("{:<49}{w}", "");
        }
        tp += r.pass;
        tu += r.unsupported.len();
        tf += r.fail.len();
    }
    println!("\ntotal: {tp} passed, {tu} unsupported, {tf} failed");
    let mut problems = Vec::new();
    for (op, r) in &rows {
        for (c, m) in &r.fail {
            problems.push(format!("{op} {c}: {m}"));
        }
        if r.pass == 0 {
            problems.push(format!("{op}: no case passes"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn case_names_match_operators_carefully() {
    let ops = onnx::supported_ops();
    let uses = |o: &str| vec![o.to_string()];
    assert_eq!(
        op_of_case(
            "test_reduce_sum_square_keepdims_random",
            ops,
            &uses("ReduceSumSquare")
        ),
        Some("ReduceSumSquare")
    );
    assert_eq!(
        op_of_case("test_reduce_sum_keepdims_random", ops, &uses("ReduceSum")),
        Some("ReduceSum")
    );
    assert_eq!(
        op_of_case("test_less_equal_bcast", ops, &uses("LessOrEqual")),
        Some("LessOrEqual")
    );
    assert_eq!(op_of_case("test_and2d", ops, &uses("And")), Some("And"));
    assert_eq!(
        op_of_case("test_tanh_example", ops, &uses("Tanh")),
        Some("Tanh")
    );
    assert_eq!(
        op_of_case("test_expand_dim_changed", ops, &uses("Expand")),
        Some("Expand")
    );
    // another operator's case that shares a prefix
    assert_eq!(
        op_of_case("test_gather_elements_0", ops, &uses("GatherElements")),
        None
    );
    assert_eq!(op_of_case("test_constant_pad", ops, &uses("Pad")), None);
    assert_eq!(
        op_of_case(
            "test_layer_normalization_2d_axis0_expanded",
            ops,
            &uses("Flatten")
        ),
        Some("LayerNormalization")
    );
}
