//! The crate's layout rule: a pass family imports only `core` and `calib`, never another
//! family; `core` and `calib` import no family; only the registry knows every family.

use std::path::{Path, PathBuf};

const FAMILIES: [&str; 6] = ["canon", "quant", "prune", "lowrank", "share", "distill"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The crate-relative modules a file names (`crate::quant::...` gives `quant`).
fn named_modules(src: &str) -> Vec<String> {
    src.match_indices("crate::")
        .map(|(i, m)| {
            src[i + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn families_import_only_core_and_calib() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel.iter().next().unwrap().to_string_lossy().to_string();
        let top = top.trim_end_matches(".rs");
        if top == "registry" || top == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        for m in named_modules(&text) {
            let family = FAMILIES.contains(&m.as_str());
            let allowed = match top {
                // the shared layer names no family
                "core" | "calib" => !family && m != "registry",
                own => m == own || !family,
            };
            // calib is the bottom of the crate: it needs nothing but the error type
            let calib_ok = top != "calib" || m == "calib" || m == "PassError";
            if !allowed || !calib_ok {
                wrong.push(format!("{}: crate::{m}", rel.display()));
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "imports that break the layout (put what two families share in core):\n{}",
        wrong.join("\n")
    );
}
