//! IR filetests: every fixture under `filetests/ir` round-trips print → parse → print unchanged
//! (with an insta snapshot of the printed form), and every fixture under `filetests/ir-errors`
//! fails with exactly the error its `// expected-error:` line states.

use std::path::{Path, PathBuf};

fn fixtures(dir: &str) -> Vec<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("filetests")
        .join(dir);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&d)
        .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "llmc"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no fixtures in {}", d.display());
    v
}

#[test]
fn ir_fixtures_round_trip() {
    for path in fixtures("ir") {
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let src = std::fs::read_to_string(&path).unwrap();
        assert!(
            src.lines().any(|l| l.trim() == "// RUN: roundtrip"),
            "{name}: missing RUN line"
        );
        let g = llmc_ir::parse(&path.display().to_string(), &src).unwrap_or_else(|e| panic!("{e}"));
        llmc_ir::verify(&g).unwrap_or_else(|e| panic!("{name}: {e}"));
        let once = llmc_ir::print(&g);
        let again = llmc_ir::print(
            &llmc_ir::parse("printed", &once)
                .unwrap_or_else(|e| panic!("{name}: reparse: {e}\n{once}")),
        );
        assert_eq!(
            once, again,
            "{name}: print(parse(print(g))) differs from print(g)"
        );
        insta::assert_snapshot!(name, once);
    }
}

#[test]
fn ir_errors_name_value_op_and_line() {
    for path in fixtures("ir-errors") {
        let src = std::fs::read_to_string(&path).unwrap();
        let want = src
            .lines()
            .find_map(|l| l.trim().strip_prefix("// expected-error:"))
            .unwrap_or_else(|| panic!("{}: no expected-error line", path.display()))
            .trim();
        let got = llmc_ir::parse("bad.llmc", &src).and_then(|g| llmc_ir::verify(&g).map(|_| g));
        match got {
            Ok(_) => panic!("{}: accepted, expected error: {want}", path.display()),
            Err(e) => assert_eq!(e.to_string(), want, "{}", path.display()),
        }
    }
}
