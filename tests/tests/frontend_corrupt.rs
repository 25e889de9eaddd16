//! Corrupted copies of the real SmolLM2 GGUF and MiniLM safetensors files: each must give a
//! `FrontendError` naming the file and the field or tensor at fault, and none may panic.

use llmc::frontend::{self, FrontendError};
use llmc_tests::{minilm_l6_dir, smollm2_gguf};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[derive(Debug, PartialEq)]
enum Kind {
    Bad,
    Unsupported,
}

/// Loads `model` expecting an error of `kind` whose message names `file` and every `needle`.
fn expect_error(model: &Path, file: &Path, kind: Kind, needles: &[&str]) {
    let result = catch_unwind(AssertUnwindSafe(|| frontend::load(model)))
        .unwrap_or_else(|_| panic!("loading {} panicked", model.display()));
    let err = match result {
        Ok(_) => panic!("{} loaded without an error", model.display()),
        Err(e) => e,
    };
    let msg = err.to_string();
    eprintln!("{msg}");
    let got = match err {
        FrontendError::BadInput { .. } => Kind::Bad,
        FrontendError::Unsupported { .. } => Kind::Unsupported,
        other => panic!("expected {kind:?}, got {other:?}"),
    };
    assert_eq!(got, kind, "{msg}");
    assert!(
        msg.contains(&file.display().to_string()),
        "the message does not name {}: {msg}",
        file.display()
    );
    for n in needles {
        assert!(msg.contains(n), "the message does not mention {n:?}: {msg}");
    }
    // each variant lives alone in its scratch directory: drop it (the GGUF copies are large)
    let ours = |d: &&Path| {
        d.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&scratch_prefix()))
    };
    if let Some(dir) = model.parent().filter(ours) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn scratch_prefix() -> String {
    format!("llmc-corrupt-{}-", std::process::id())
}

/// A fresh scratch directory for this test binary.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("{}{name}", scratch_prefix()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create a scratch dir");
    d
}

// ---------------------------------------------------------------- GGUF

fn gguf() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| std::fs::read(smollm2_gguf()).expect("read the GGUF"))
}

/// Where things are in the GGUF: the offset of each metadata value (after its type) and of
/// each tensor info's rank field. A minimal walker, independent of the frontend.
struct Layout {
    values: HashMap<String, usize>,
    infos: HashMap<String, usize>,
}

fn layout() -> &'static Layout {
    static L: OnceLock<Layout> = OnceLock::new();
    L.get_or_init(|| {
        let b = gguf();
        let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
        let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap()) as usize;
        fn skip(b: &[u8], p: usize, ty: u32) -> usize {
            let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
            let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap()) as usize;
            match ty {
                0 | 1 | 7 => p + 1,
                2 | 3 => p + 2,
                4..=6 => p + 4,
                10..=12 => p + 8,
                8 => p + 8 + u64_at(p),
                9 => {
                    let (et, n) = (u32_at(p), u64_at(p + 4));
                    (0..n).fold(p + 12, |q, _| skip(b, q, et))
                }
                t => panic!("type {t}"),
            }
        }
        let (nt, nkv) = (u64_at(8), u64_at(16));
        let mut p = 24;
        let mut values = HashMap::new();
        for _ in 0..nkv {
            let len = u64_at(p);
            let key = String::from_utf8(b[p + 8..p + 8 + len].to_vec()).unwrap();
            let ty = u32_at(p + 8 + len);
            let v = p + 12 + len;
            values.insert(key, v);
            p = skip(b, v, ty);
        }
        let mut infos = HashMap::new();
        for _ in 0..nt {
            let len = u64_at(p);
            let name = String::from_utf8(b[p + 8..p + 8 + len].to_vec()).unwrap();
            let rank_at = p + 8 + len;
            infos.insert(name, rank_at);
            p = rank_at + 4 + 8 * u32_at(rank_at) as usize + 4 + 8;
        }
        Layout { values, infos }
    })
}

/// Byte offsets of a tensor info's fields: (rank, first dimension, type, data offset).
fn info_fields(name: &str) -> (usize, usize, usize, usize) {
    let r = layout().infos[name];
    let rank = u32::from_le_bytes(gguf()[r..r + 4].try_into().unwrap()) as usize;
    let ty = r + 4 + 8 * rank;
    (r, r + 4, ty, ty + 4)
}

/// Writes a patched copy of the GGUF (the whole file, or its first `keep` bytes).
fn write_gguf(name: &str, keep: Option<usize>, patches: &[(usize, &[u8])]) -> PathBuf {
    let src = gguf();
    let mut b = src[..keep.unwrap_or(src.len())].to_vec();
    for (at, bytes) in patches {
        b[*at..*at + bytes.len()].copy_from_slice(bytes);
    }
    let p = scratch(name).join("model.gguf");
    std::fs::write(&p, b).expect("write a corrupt GGUF");
    p
}

#[test]
fn gguf_truncated_in_the_header() {
    let p = write_gguf("gguf-short-header", Some(10), &[]);
    expect_error(&p, &p, Kind::Bad, &["truncated", "tensor count"]);
}

#[test]
fn gguf_truncated_in_the_metadata() {
    let at = layout().values["tokenizer.ggml.tokens"] + 500_000;
    let p = write_gguf("gguf-short-metadata", Some(at), &[]);
    expect_error(&p, &p, Kind::Bad, &["truncated", "tokenizer.ggml.tokens"]);
}

#[test]
fn gguf_truncated_in_the_tensor_data() {
    let len = gguf().len();
    let p = write_gguf("gguf-short-data", Some(len - 1000), &[]);
    // the tensor whose data runs to the end of the file
    let last = layout()
        .infos
        .keys()
        .max_by_key(|n| {
            let (_, _, _, o) = info_fields(n);
            u64::from_le_bytes(gguf()[o..o + 8].try_into().unwrap())
        })
        .unwrap()
        .clone();
    expect_error(
        &p,
        &p,
        Kind::Bad,
        &[&format!("tensor '{last}'"), "truncated"],
    );
}

#[test]
fn gguf_with_a_bad_magic() {
    let p = write_gguf("gguf-magic", None, &[(0, b"GGUX")]);
    expect_error(&p, &p, Kind::Bad, &["magic"]);
    // the GGUF reader itself says the same when called directly
    let e = frontend::gguf::load(&p).err().expect("an error");
    assert!(e.to_string().contains("magic"), "{e}");
}

#[test]
fn gguf_of_version_99() {
    let p = write_gguf("gguf-version", None, &[(4, &99u32.to_le_bytes())]);
    expect_error(&p, &p, Kind::Unsupported, &["version 99"]);
}

#[test]
fn gguf_with_a_string_of_2_to_the_60_bytes() {
    let v = layout().values["general.architecture"];
    let p = write_gguf(
        "gguf-long-string",
        None,
        &[(v, &(1u64 << 60).to_le_bytes())],
    );
    expect_error(
        &p,
        &p,
        Kind::Bad,
        &["general.architecture", "1152921504606846976 bytes"],
    );
}

#[test]
fn gguf_with_an_array_longer_than_the_file() {
    let v = layout().values["tokenizer.ggml.merges"];
    let p = write_gguf(
        "gguf-long-array",
        None,
        &[(v + 4, &(1u64 << 62).to_le_bytes())],
    );
    expect_error(&p, &p, Kind::Bad, &["tokenizer.ggml.merges", "elements"]);
}

#[test]
fn gguf_with_a_huge_tensor_count() {
    let p = write_gguf("gguf-tensor-count", None, &[(8, &u64::MAX.to_le_bytes())]);
    expect_error(&p, &p, Kind::Bad, &["tensor infos"]);
}

#[test]
fn gguf_tensor_of_rank_9() {
    let (rank, ..) = info_fields("blk.0.attn_q.weight");
    let p = write_gguf("gguf-rank", None, &[(rank, &9u32.to_le_bytes())]);
    expect_error(
        &p,
        &p,
        Kind::Bad,
        &["tensor 'blk.0.attn_q.weight'", "9 dimensions"],
    );
}

#[test]
fn gguf_tensor_with_a_dimension_of_2_to_the_40() {
    let (_, dim0, ..) = info_fields("blk.0.attn_k.weight");
    let p = write_gguf("gguf-dim", None, &[(dim0 + 8, &(1u64 << 40).to_le_bytes())]);
    expect_error(&p, &p, Kind::Bad, &["tensor 'blk.0.attn_k.weight'"]);
}

#[test]
fn gguf_tensor_offset_beyond_the_file() {
    let (.., off) = info_fields("blk.3.ffn_up.weight");
    let p = write_gguf("gguf-offset", None, &[(off, &(200u64 << 20).to_le_bytes())]);
    expect_error(
        &p,
        &p,
        Kind::Bad,
        &["tensor 'blk.3.ffn_up.weight'", "data section"],
    );
}

#[test]
fn gguf_tensor_of_an_unknown_ggml_type() {
    let (_, _, ty, _) = info_fields("blk.2.attn_v.weight");
    let p = write_gguf("gguf-type", None, &[(ty, &99u32.to_le_bytes())]);
    expect_error(
        &p,
        &p,
        Kind::Unsupported,
        &["tensor 'blk.2.attn_v.weight'", "id 99"],
    );
    let p = write_gguf("gguf-type-q2k", None, &[(ty, &10u32.to_le_bytes())]);
    expect_error(
        &p,
        &p,
        Kind::Unsupported,
        &["tensor 'blk.2.attn_v.weight'", "Q2_K"],
    );
}

#[test]
fn gguf_tensor_with_a_misaligned_offset() {
    let (.., off) = info_fields("blk.1.ffn_gate.weight");
    let old = u64::from_le_bytes(gguf()[off..off + 8].try_into().unwrap());
    let p = write_gguf("gguf-misaligned", None, &[(off, &(old + 1).to_le_bytes())]);
    expect_error(
        &p,
        &p,
        Kind::Bad,
        &["tensor 'blk.1.ffn_gate.weight'", "alignment"],
    );
}

#[test]
fn gguf_tensors_that_overlap() {
    let (.., q_off) = info_fields("blk.0.attn_q.weight");
    let (.., k_off) = info_fields("blk.0.attn_k.weight");
    let q = gguf()[q_off..q_off + 8].to_vec();
    let p = write_gguf("gguf-overlap", None, &[(k_off, &q)]);
    expect_error(
        &p,
        &p,
        Kind::Bad,
        &["overlaps", "blk.0.attn_k.weight", "blk.0.attn_q.weight"],
    );
}

#[test]
fn gguf_of_another_architecture() {
    let v = layout().values["general.architecture"];
    let p = write_gguf("gguf-arch", None, &[(v + 8, b"qwen2")]);
    expect_error(&p, &p, Kind::Unsupported, &["architecture 'qwen2'"]);
}

#[test]
fn gguf_whose_metadata_disagrees_with_its_tensors() {
    // one layer more than the file has
    let v = layout().values["llama.block_count"];
    let p = write_gguf("gguf-layers", None, &[(v, &31u32.to_le_bytes())]);
    expect_error(
        &p,
        &p,
        Kind::Bad,
        &["tensor 'blk.30.attn_norm.weight' is missing"],
    );
    // a feed-forward width the weights do not have
    let v = layout().values["llama.feed_forward_length"];
    let p = write_gguf("gguf-width", None, &[(v, &1537u32.to_le_bytes())]);
    expect_error(
        &p,
        &p,
        Kind::Bad,
        &["tensor 'blk.0.ffn_gate.weight'", "1537x576"],
    );
    // a block count of the wrong type
    let ty = layout().values["llama.block_count"] - 4;
    let p = write_gguf("gguf-meta-type", None, &[(ty, &6u32.to_le_bytes())]);
    expect_error(&p, &p, Kind::Bad, &["llama.block_count", "integer"]);
}

// ---------------------------------------------------------------- safetensors

/// The real MiniLM file: its header as JSON and its data section.
fn minilm() -> &'static (Map<String, Value>, Vec<u8>) {
    static M: OnceLock<(Map<String, Value>, Vec<u8>)> = OnceLock::new();
    M.get_or_init(|| {
        let b = std::fs::read(minilm_l6_dir().join("model.safetensors")).expect("read MiniLM");
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        let header = serde_json::from_slice(&b[8..8 + n]).expect("a JSON header");
        (header, b[8 + n..].to_vec())
    })
}

fn config() -> Value {
    serde_json::from_str(&std::fs::read_to_string(minilm_l6_dir().join("config.json")).unwrap())
        .unwrap()
}

/// Writes `model.safetensors` (raw bytes) and, when given, `config.json` into a fresh directory.
fn write_st_raw(name: &str, bytes: &[u8], config: Option<&str>) -> PathBuf {
    let dir = scratch(name);
    let p = dir.join("model.safetensors");
    std::fs::write(&p, bytes).expect("write safetensors");
    if let Some(c) = config {
        std::fs::write(dir.join("config.json"), c).expect("write config");
    }
    p
}

/// Writes a MiniLM copy whose header went through `edit`, with the real config.
fn write_st(name: &str, edit: impl FnOnce(&mut Map<String, Value>)) -> PathBuf {
    let (header, data) = minilm();
    let mut h = header.clone();
    edit(&mut h);
    let text = serde_json::to_vec(&h).unwrap();
    let mut b = (text.len() as u64).to_le_bytes().to_vec();
    b.extend(text);
    b.extend(data);
    write_st_raw(name, &b, Some(&config().to_string()))
}

fn tensor<'a>(h: &'a mut Map<String, Value>, name: &str) -> &'a mut Map<String, Value> {
    h.get_mut(name)
        .and_then(Value::as_object_mut)
        .expect("the tensor is in the header")
}

#[test]
fn safetensors_shorter_than_its_length_field() {
    let p = write_st_raw("st-tiny", &[1, 2, 3, 4, 5], Some("{}"));
    expect_error(&p, &p, Kind::Bad, &["8-byte header length"]);
}

#[test]
fn safetensors_header_longer_than_the_file() {
    let (header, data) = minilm();
    let text = serde_json::to_vec(header).unwrap();
    let mut b = (text.len() as u64 + data.len() as u64 + 100)
        .to_le_bytes()
        .to_vec();
    b.extend(text);
    b.extend(data);
    let p = write_st_raw("st-header-len", &b, Some(&config().to_string()));
    expect_error(&p, &p, Kind::Bad, &["header length"]);
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let p = write_st_raw("st-header-max", &b, Some(&config().to_string()));
    expect_error(&p, &p, Kind::Bad, &["header length"]);
}

#[test]
fn safetensors_header_that_is_not_json() {
    let (header, data) = minilm();
    let mut text = serde_json::to_vec(header).unwrap();
    let last = text.len() - 1;
    text[last] = b'#'; // the closing brace
    let mut b = (text.len() as u64).to_le_bytes().to_vec();
    b.extend(text);
    b.extend(data);
    let p = write_st_raw("st-json", &b, Some(&config().to_string()));
    expect_error(&p, &p, Kind::Bad, &["header is not a JSON object"]);
}

#[test]
fn safetensors_truncated_in_the_data() {
    let (header, data) = minilm();
    let text = serde_json::to_vec(header).unwrap();
    let mut b = (text.len() as u64).to_le_bytes().to_vec();
    b.extend(text);
    b.extend(&data[..data.len() - 4096]);
    let p = write_st_raw("st-truncated", &b, Some(&config().to_string()));
    expect_error(&p, &p, Kind::Bad, &["tensor '", "outside the data section"]);
}

#[test]
fn safetensors_with_dtype_f64_or_xyz() {
    let name = "embeddings.word_embeddings.weight";
    // F64 with the byte length of an F32 tensor: the sizes disagree
    let p = write_st("st-f64", |h| {
        tensor(h, name).insert("dtype".into(), json!("F64"));
    });
    expect_error(&p, &p, Kind::Bad, &[&format!("tensor '{name}'"), "F64"]);
    // a consistent F64 tensor (half the columns): valid safetensors, but not a weight llmc reads
    let p = write_st("st-f64-consistent", |h| {
        let t = tensor(h, name);
        t.insert("dtype".into(), json!("F64"));
        t.insert("shape".into(), json!([30522, 192]));
    });
    expect_error(
        &p,
        &p,
        Kind::Unsupported,
        &[&format!("tensor '{name}'"), "F64"],
    );
    let p = write_st("st-xyz", |h| {
        tensor(h, name).insert("dtype".into(), json!("XYZ"));
    });
    expect_error(
        &p,
        &p,
        Kind::Bad,
        &[&format!("tensor '{name}'"), "unknown dtype 'XYZ'"],
    );
}

#[test]
fn safetensors_data_offsets_out_of_range() {
    let len = minilm().1.len() as u64;
    let name = "encoder.layer.3.output.dense.bias";
    let p = write_st("st-offsets", |h| {
        tensor(h, name).insert("data_offsets".into(), json!([len - 4, len + 1532]));
    });
    expect_error(
        &p,
        &p,
        Kind::Bad,
        &[&format!("tensor '{name}'"), "outside the data section"],
    );
    let p = write_st("st-offsets-reversed", |h| {
        tensor(h, name).insert("data_offsets".into(), json!([100, 50]));
    });
    expect_error(
        &p,
        &p,
        Kind::Bad,
        &[
            &format!("tensor '{name}'"),
            "[100, 50] end before they begin",
        ],
    );
}

#[test]
fn safetensors_shape_that_does_not_match_the_bytes() {
    let name = "embeddings.word_embeddings.weight";
    let p = write_st("st-shape", |h| {
        tensor(h, name).insert("shape".into(), json!([30522, 385]));
    });
    expect_error(&p, &p, Kind::Bad, &[&format!("tensor '{name}'"), "needs"]);
    let p = write_st("st-shape-negative", |h| {
        tensor(h, name).insert("shape".into(), json!([-1, 384]));
    });
    expect_error(&p, &p, Kind::Bad, &[&format!("tensor '{name}'"), "-1"]);
    let p = write_st("st-shape-overflow", |h| {
        tensor(h, name).insert("shape".into(), json!([u64::MAX, u64::MAX]));
    });
    expect_error(
        &p,
        &p,
        Kind::Bad,
        &[&format!("tensor '{name}'"), "too large"],
    );
}

#[test]
fn safetensors_tensors_that_overlap() {
    let p = write_st("st-overlap", |h| {
        let w = tensor(h, "embeddings.LayerNorm.weight")["data_offsets"].clone();
        tensor(h, "embeddings.LayerNorm.bias").insert("data_offsets".into(), w);
    });
    expect_error(&p, &p, Kind::Bad, &["overlaps", "embeddings.LayerNorm"]);
}

#[test]
fn safetensors_without_config_json() {
    let (header, data) = minilm();
    let text = serde_json::to_vec(header).unwrap();
    let mut b = (text.len() as u64).to_le_bytes().to_vec();
    b.extend(text);
    b.extend(data);
    let p = write_st_raw("st-no-config", &b, None);
    expect_error(&p, &p, Kind::Bad, &["config.json"]);
}

#[test]
fn safetensors_with_a_bad_config() {
    let (header, data) = minilm();
    let text = serde_json::to_vec(header).unwrap();
    let mut b = (text.len() as u64).to_le_bytes().to_vec();
    b.extend(text);
    b.extend(data);
    let with_config = |name: &str, c: &str| {
        let p = write_st_raw(name, &b, Some(c));
        let cfg = p.with_file_name("config.json");
        (p, cfg)
    };
    let mut c = config();
    c["architectures"] = json!(["GPT2LMHeadModel"]);
    let (p, cfg) = with_config("st-arch", &c.to_string());
    expect_error(
        &p,
        &cfg,
        Kind::Unsupported,
        &["architecture 'GPT2LMHeadModel'"],
    );

    let (p, cfg) = with_config("st-config-json", "{\"architectures\": [\"BertModel\"");
    expect_error(&p, &cfg, Kind::Bad, &["not a JSON object"]);

    let mut c = config();
    c.as_object_mut().unwrap().remove("hidden_size");
    let (p, cfg) = with_config("st-config-missing", &c.to_string());
    expect_error(&p, &cfg, Kind::Bad, &["field 'hidden_size' is missing"]);

    let mut c = config();
    c["num_hidden_layers"] = json!(7);
    let (p, _) = with_config("st-config-layers", &c.to_string());
    expect_error(
        &p,
        &p,
        Kind::Bad,
        &["tensor 'encoder.layer.6.attention.self.query.weight' is missing"],
    );

    let mut c = config();
    c["hidden_size"] = json!("384");
    let (p, cfg) = with_config("st-config-type", &c.to_string());
    expect_error(&p, &cfg, Kind::Bad, &["field 'hidden_size'", "integer"]);
}
