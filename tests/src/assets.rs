//! Where the pinned test assets live; missing ones are fetched with `scripts/setup.sh --assets`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

/// The asset cache (`$LLMC_CACHE`, by default `~/.cache/llmc`).
pub fn cache_dir() -> PathBuf {
    if let Some(c) = std::env::var_os("LLMC_CACHE") {
        return PathBuf::from(c);
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    PathBuf::from(home).join(".cache/llmc")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("a crate folder has a parent")
        .to_path_buf()
}

static FETCH: Once = Once::new();

/// Returns an asset's path, running `scripts/setup.sh --assets` once if it is missing.
/// Panics with instructions when the asset still cannot be had: a test that needs a real
/// model fails loudly rather than skipping.
pub fn asset(rel: &str) -> PathBuf {
    let p = cache_dir().join(rel);
    if !p.exists() {
        FETCH.call_once(|| {
            eprintln!(
                "asset {} is missing: running scripts/setup.sh --assets",
                p.display()
            );
            let status = Command::new("bash")
                .arg(repo_root().join("scripts/setup.sh"))
                .arg("--assets")
                .status();
            if !matches!(status, Ok(s) if s.success()) {
                eprintln!("scripts/setup.sh --assets failed: {status:?}");
            }
        });
    }
    assert!(
        p.exists(),
        "test asset {} is missing and scripts/setup.sh --assets could not fetch it",
        p.display()
    );
    p
}

pub fn smollm2_gguf() -> PathBuf {
    asset("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

pub fn minilm_l6_dir() -> PathBuf {
    asset("minilm-l6/model.safetensors")
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn paraphrase_onnx() -> PathBuf {
    asset("paraphrase-minilm-l3/paraphrase-MiniLM-L3-v2.onnx")
}

pub fn sotu_dir() -> PathBuf {
    asset("sotu/.complete").parent().unwrap().to_path_buf()
}

/// The Python of the asset venv (numpy, onnx, onnxruntime).
pub fn python() -> PathBuf {
    asset("venv/bin/python")
}

/// Where the `onnx` package keeps its backend node tests.
pub fn onnx_node_tests_dir() -> PathBuf {
    let out = Command::new(python())
        .args(["-c", "import onnx, os; print(os.path.join(os.path.dirname(onnx.__file__), 'backend/test/data/node'))"])
        .output()
        .expect("run the venv python");
    assert!(
        out.status.success(),
        "python could not import onnx: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}
