//! Tokenizers: from a `tokenizer.json` or rebuilt from GGUF metadata, over the `tokenizers` crate.

use std::path::Path;

/// A text tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("tokenizer: {0}")]
#[diagnostic(code(llmc::tokenizer))]
pub struct TokenizerError(pub String);

impl Tokenizer {
    pub fn new(inner: tokenizers::Tokenizer) -> Tokenizer {
        Tokenizer { inner }
    }

    /// Reads a `tokenizer.json`, with padding and truncation turned off.
    pub fn from_file(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let mut t = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| TokenizerError(format!("{}: {e}", path.display())))?;
        t.with_padding(None);
        t.with_truncation(None)
            .map_err(|e| TokenizerError(e.to_string()))?;
        Ok(Tokenizer { inner: t })
    }

    /// Token ids of a text, with the special tokens the tokenizer's post-processor adds when
    /// `special` is set (BERT's `[CLS]`/`[SEP]`).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, TokenizerError> {
        let e = self
            .inner
            .encode(text, special)
            .map_err(|e| TokenizerError(e.to_string()))?;
        Ok(e.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, false)
            .map_err(|e| TokenizerError(e.to_string()))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The tokenizer as `tokenizer.json` text (what [`Tokenizer::from_file`] reads back).
    pub fn to_json(&self) -> Result<String, TokenizerError> {
        self.inner
            .to_string(true)
            .map_err(|e| TokenizerError(e.to_string()))
    }

    /// Writes the tokenizer as a `tokenizer.json` file.
    pub fn save(&self, path: &Path) -> Result<(), TokenizerError> {
        let json = self.to_json()?;
        std::fs::write(path, json).map_err(|e| TokenizerError(format!("{}: {e}", path.display())))
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Turns a growing list of token ids into text pieces as they become valid UTF-8.
pub struct StreamDecoder {
    ids: Vec<u32>,
    printed: usize,
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamDecoder {
    pub fn new() -> StreamDecoder {
        StreamDecoder {
            ids: Vec::new(),
            printed: 0,
        }
    }

    /// Adds a token; returns the new text it completes, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        let text = tok.decode(&self.ids)?;
        // a trailing replacement character means a multi-byte character is still incomplete
        if text.ends_with('\u{fffd}')
            || text.len() < self.printed
            || !text.is_char_boundary(self.printed)
        {
            return Ok(String::new());
        }
        let piece = text[self.printed..].to_string();
        self.printed = text.len();
        Ok(piece)
    }
}
