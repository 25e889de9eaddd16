//! Library crates return typed errors (`thiserror` enums with fields), never `Result<_, String>`:
//! this walks their sources and fails on any line `grep -E 'Result<[^;]*, String>'` would find.

use std::path::{Path, PathBuf};

/// The library crates' source folders, from the workspace root.
const LIBRARY_SOURCES: [&str; 5] = [
    "ir/src",
    "passes/src",
    "backends/src",
    "runtime/src",
    "compiler/src",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Whether the line matches `Result<[^;]*, String>`: a `Result<` followed, before any `;`, by
/// `, String>`.
fn string_result(line: &str) -> bool {
    line.match_indices("Result<").any(|(at, open)| {
        let rest = &line[at + open.len()..];
        let rest = rest.split(';').next().unwrap_or("");
        rest.contains(", String>")
    })
}

#[test]
fn string_result_matches_what_grep_finds() {
    assert!(string_result("fn f() -> Result<u8, String> {"));
    assert!(string_result("type R<T> = Result<T, String>;"));
    assert!(string_result("fn f() -> Option<Result<Vec<u8>, String>> {"));
    assert!(string_result("fn f() -> std::result::Result<(), String> {"));
    assert!(!string_result("fn f() -> Result<u8, MyError> {"));
    assert!(!string_result(
        "let r: Result<u8, E> = x; let s: Vec<(u8, String>)"
    ));
    assert!(!string_result("fn f() -> Vec<(String, String)> {"));
}

#[test]
fn library_crates_return_no_string_errors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    let mut files = Vec::new();
    for dir in LIBRARY_SOURCES {
        rust_files(&root.join(dir), &mut files);
    }
    files.sort();
    assert!(
        files.len() > 50,
        "found only {} sources under {root:?}",
        files.len()
    );
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for (i, line) in text.lines().enumerate() {
            if string_result(line) {
                let rel = f.strip_prefix(root).unwrap_or(f);
                found.push(format!("{}:{}: {}", rel.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "library crates must return typed errors (a thiserror enum with fields: bad input, \
         unsupported, internal), not Result<_, String>; {} site(s):\n  {}",
        found.len(),
        found.join("\n  ")
    );
}
