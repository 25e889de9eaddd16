//! Corrupted copies of the real paraphrase-MiniLM-L3 ONNX file: every one must give a
//! `FrontendError` (bad input or unsupported) that names the file and the node or initializer
//! at fault, and none may panic. Needs the assets (`scripts/setup.sh --assets`): the model and
//! the Python venv with `onnx`, which writes the field-level corruptions.

use llmc::frontend::{onnx, FrontendError};
use llmc_tests::{paraphrase_onnx, python};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;

const NODE: &str = "/model/model.0/auto_model/encoder/layer.0/attention/self/query/MatMul";
const INIT: &str = "onnx::MatMul_470";

/// Writes the field-level corruptions with the `onnx` package; returns their directory.
fn write_variants(dir: &Path) {
    let script = r#"
import sys, copy, onnx
from onnx import TensorProto
src, out, node_name, init_name = sys.argv[1:5]
base = onnx.load(src)
def variant(name, edit):
    m = copy.deepcopy(base)
    edit(m)
    onnx.save(m, f"{out}/{name}.onnx")
def init(m):
    return next(t for t in m.graph.initializer if t.name == init_name)
def node(m):
    return next(n for n in m.graph.node if n.name == node_name)
def raw_len(m): init(m).raw_data = init(m).raw_data[:-4]
def dtype(m): init(m).data_type = 99
def huge(m): init(m).dims[0] = 1 << 40
def negative(m): init(m).dims[0] = -3
def unknown_op(m): node(m).op_type = "FrobnicateMatMul"
def missing(m): node(m).input[1] = "does_not_exist"
def opset9(m): m.opset_import[0].version = 9
def external(m):
    t = init(m)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    e = t.external_data.add(); e.key = "location"; e.value = "missing_weights.bin"
def double(m): init(m).data_type = TensorProto.DOUBLE
def ext_range(m):
    t = init(m)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in [("location", "short.bin"), ("offset", "64"), ("length", str(384 * 384 * 4))]:
        e = t.external_data.add(); e.key = k; e.value = v
    open(f"{out}/short.bin", "wb").write(bytes(100))
def ext_escape(m):
    t = init(m)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    e = t.external_data.add(); e.key = "location"; e.value = "../../etc/passwd"
for f in [raw_len, dtype, huge, negative, unknown_op, missing, opset9, external, double, ext_range, ext_escape]:
    variant(f.__name__, f)
"#;
    let st = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(paraphrase_onnx())
        .arg(dir)
        .arg(NODE)
        .arg(INIT)
        .status()
        .expect("run python");
    assert!(st.success(), "writing the corrupted models failed: {st}");
}

/// Loads `path` under `catch_unwind`; returns the error, failing on success or panic.
fn load_err(path: &Path) -> FrontendError {
    match catch_unwind(AssertUnwindSafe(|| onnx::load(path))) {
        Ok(Ok(_)) => panic!("{} imported although it is corrupt", path.display()),
        Ok(Err(e)) => e,
        Err(_) => panic!("importing {} panicked", path.display()),
    }
}

struct Expect {
    file: &'static str,
    unsupported: bool,
    says: &'static [&'static str],
}

#[test]
fn corrupted_models_give_errors_that_name_the_culprit() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("llmc-onnx-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read(paraphrase_onnx()).unwrap();
    // Byte-level damage: cut inside an initializer's data, inside the nodes, inside the header;
    // garbage over a node; not protobuf at all; empty.
    let half = good.len() / 2;
    std::fs::write(dir.join("cut_initializer.onnx"), &good[..half]).unwrap();
    std::fs::write(dir.join("cut_nodes.onnx"), &good[..3000]).unwrap();
    std::fs::write(dir.join("cut_header.onnx"), &good[..20]).unwrap();
    let mut garbage = good.clone();
    garbage[200..232].fill(0xff);
    std::fs::write(dir.join("garbage.onnx"), &garbage).unwrap();
    std::fs::write(
        dir.join("text.onnx"),
        b"this is not a model, just some text\n",
    )
    .unwrap();
    std::fs::write(dir.join("empty.onnx"), b"").unwrap();
    write_variants(&dir);

    let cases = [
        Expect {
            file: "cut_initializer",
            unsupported: false,
            says: &["initializer '", "truncated"],
        },
        Expect {
            file: "cut_nodes",
            unsupported: false,
            says: &["node '", "truncated"],
        },
        Expect {
            file: "cut_header",
            unsupported: false,
            says: &["truncated"],
        },
        Expect {
            file: "garbage",
            unsupported: false,
            says: &[
                "node #1",
                "does not decode",
                "the last good node is '/model/model.0/auto_model/Shape'",
            ],
        },
        Expect {
            file: "text",
            unsupported: false,
            says: &["not a valid ONNX protobuf"],
        },
        Expect {
            file: "empty",
            unsupported: false,
            says: &["empty"],
        },
        Expect {
            file: "raw_len",
            unsupported: false,
            says: &["initializer 'onnx::MatMul_470'", "589820 bytes of raw data"],
        },
        Expect {
            file: "dtype",
            unsupported: true,
            says: &["initializer 'onnx::MatMul_470'", "code 99"],
        },
        Expect {
            file: "huge",
            unsupported: false,
            says: &["initializer 'onnx::MatMul_470'", "1099511627776"],
        },
        Expect {
            file: "negative",
            unsupported: false,
            says: &["initializer 'onnx::MatMul_470'", "negative dimension -3"],
        },
        Expect {
            file: "unknown_op",
            unsupported: true,
            says: &[NODE, "FrobnicateMatMul"],
        },
        Expect {
            file: "missing",
            unsupported: false,
            says: &[NODE, "'does_not_exist'"],
        },
        Expect {
            file: "opset9",
            unsupported: true,
            says: &["opset 9", "node '"],
        },
        Expect {
            file: "external",
            unsupported: false,
            says: &["initializer 'onnx::MatMul_470'", "missing_weights.bin"],
        },
        Expect {
            file: "double",
            unsupported: true,
            says: &["initializer 'onnx::MatMul_470'", "DOUBLE"],
        },
        Expect {
            file: "ext_range",
            unsupported: false,
            says: &[
                "initializer 'onnx::MatMul_470'",
                "runs past the end",
                "short.bin",
            ],
        },
        Expect {
            file: "ext_escape",
            unsupported: false,
            says: &[
                "initializer 'onnx::MatMul_470'",
                "inside the model's directory",
            ],
        },
    ];
    assert!(cases.len() >= 8);
    for c in &cases {
        let path = dir.join(format!("{}.onnx", c.file));
        let e = load_err(&path);
        let msg = e.to_string();
        println!("{}: {msg}", c.file);
        let kind_ok = match e {
            FrontendError::Unsupported { .. } => c.unsupported,
            FrontendError::BadInput { .. } => !c.unsupported,
            _ => false,
        };
        assert!(kind_ok, "{}: wrong kind of error: {msg}", c.file);
        assert!(
            msg.contains(&path.display().to_string()),
            "{}: the message does not name the file: {msg}",
            c.file
        );
        for s in c.says {
            assert!(
                msg.contains(s),
                "{}: the message does not say {s:?}: {msg}",
                c.file
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
