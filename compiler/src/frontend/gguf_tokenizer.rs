//! Tokenizers rebuilt from GGUF metadata (`tokenizer.ggml.*`): byte-level BPE with the
//! pre-tokenizer `tokenizer.ggml.pre` names.

use super::gguf::{GgufFile, MetaValue};
use super::{FrontendError, Result};
use crate::tokenizer::Tokenizer;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

/// GGUF token types (`tokenizer.ggml.token_type`).
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// Llama 3's pre-tokenizer pattern (`tokenizer.ggml.pre` = `llama-bpe`).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer a GGUF file describes; `None` when it has no `tokenizer.ggml.model`.
///
/// Reads `gpt2` (byte-level BPE) tokenizers with the pre-tokenizers `smollm` (digits split one
/// by one, then byte-level splitting), `default`/`gpt2` (byte-level splitting) and
/// `llama-bpe` (Llama 3's pattern); other models and pre-tokenizers are
/// [`FrontendError::Unsupported`]. Control and user-defined tokens are matched whole.
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<Option<Tokenizer>> {
    let path = &file.path;
    let Some(model) = file.opt_str("tokenizer.ggml.model")? else {
        return Ok(None);
    };
    if model != "gpt2" {
        return Err(FrontendError::unsupported(
            path,
            format!("tokenizer model '{model}' (tokenizer.ggml.model); llmc rebuilds 'gpt2' (byte-level BPE) tokenizers"),
        ));
    }
    let tokens = string_array(file, "tokenizer.ggml.tokens")?
        .ok_or_else(|| FrontendError::bad(path, "metadata 'tokenizer.ggml.tokens' is missing"))?;
    let merges = string_array(file, "tokenizer.ggml.merges")?
        .ok_or_else(|| FrontendError::bad(path, "metadata 'tokenizer.ggml.merges' is missing"))?;
    if u32::try_from(tokens.len()).is_err() {
        return Err(FrontendError::bad(
            path,
            format!(
                "metadata 'tokenizer.ggml.tokens' holds {} tokens; ids are 32-bit",
                tokens.len()
            ),
        ));
    }
    let mut vocab = Vocab::default();
    for (i, t) in tokens.iter().enumerate() {
        // Duplicate tokens keep their first id, as llama.cpp's map does.
        vocab.entry(t.to_string()).or_insert(i as u32);
    }
    let mut pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        let Some((a, b)) = m.split_once(' ') else {
            return Err(FrontendError::bad(
                path,
                format!("merge {i} of 'tokenizer.ggml.merges' ({m:?}) is not two tokens"),
            ));
        };
        pairs.push((a.to_string(), b.to_string()));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .build()
        .map_err(|e| FrontendError::bad(path, format!("tokenizer.ggml.merges: {e}")))?;
    let mut t = tokenizers::Tokenizer::new(bpe);

    let pre = file.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
    let byte_level =
        |regex: bool| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, regex));
    let pre_tokenizer = match pre {
        "smollm" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            byte_level(true),
        ])),
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        "llama-bpe" | "llama3" => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_PATTERN.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| FrontendError::bad(path, format!("tokenizer pattern: {e}")))?;
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Split(split),
                byte_level(false),
            ]))
        }
        other => {
            return Err(FrontendError::unsupported(
                path,
                format!("pre-tokenizer '{other}' (tokenizer.ggml.pre); llmc knows smollm, default/gpt2 and llama-bpe"),
            ));
        }
    };
    t.with_pre_tokenizer(Some(pre_tokenizer));
    t.with_decoder(Some(ByteLevelDecoder::default()));

    if let Some(types) = file.get("tokenizer.ggml.token_type") {
        let types = types.as_array().ok_or_else(|| {
            FrontendError::bad(
                path,
                "metadata 'tokenizer.ggml.token_type' must be an array",
            )
        })?;
        let mut special = Vec::new();
        for (i, ty) in types.iter().enumerate() {
            let ty = match ty {
                MetaValue::I32(v) => i64::from(*v),
                other => other.as_f64().map_or(-1, |f| f as i64),
            };
            if ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED {
                if let Some(tok) = tokens.get(i) {
                    special.push(AddedToken::from(tok.to_string(), ty == TOKEN_CONTROL));
                }
            }
        }
        t.add_special_tokens(&special);
    }

    let add_bos = file
        .get("tokenizer.ggml.add_bos_token")
        .and_then(MetaValue::as_bool)
        .unwrap_or(false);
    if add_bos {
        if let Some(bos) = file.opt_u64("tokenizer.ggml.bos_token_id")? {
            let name = usize::try_from(bos)
                .ok()
                .and_then(|i| tokens.get(i))
                .ok_or_else(|| {
                    FrontendError::bad(
                        path,
                        format!("metadata 'tokenizer.ggml.bos_token_id' = {bos} is not a token id"),
                    )
                })?;
            let mut builder = TemplateProcessing::builder();
            builder
                .try_single(format!("{name} $A"))
                .map_err(|e| FrontendError::bad(path, format!("BOS template: {e}")))?;
            builder.special_tokens(vec![(name.to_string(), bos as u32)]);
            let template = builder
                .build()
                .map_err(|e| FrontendError::bad(path, format!("BOS template: {e}")))?;
            t.with_post_processor(Some(template));
        }
    }
    Ok(Some(Tokenizer::new(t)))
}

/// An array of strings from the metadata, or `None` when the key is absent.
fn string_array<'f>(file: &'f GgufFile, key: &str) -> Result<Option<Vec<&'f str>>> {
    let Some(v) = file.get(key) else {
        return Ok(None);
    };
    let items = v.as_array().ok_or_else(|| {
        FrontendError::bad(
            &file.path,
            format!("metadata '{key}' must be an array of strings"),
        )
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.as_str().ok_or_else(|| {
                FrontendError::bad(
                    &file.path,
                    format!(
                        "element {i} of metadata '{key}' is a {}, not a string",
                        s.type_name()
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}
