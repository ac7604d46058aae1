//! # phi-data
//!
//! Text to token ids and back. For now: loading any HF `tokenizer.json` through the
//! `tokenizers` crate (the format every Phi checkpoint ships).

use std::path::Path;

/// A HF tokenizer (`tokenizer.json`).
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TokenizerError {
    pub path: String,
    pub message: String,
}

impl Tokenizer {
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| TokenizerError { path: path.display().to_string(), message: e.to_string() })?;
        Ok(Tokenizer { inner })
    }

    /// Token ids of `text`, without added special tokens.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.inner.encode(text, false).map(|e| e.get_ids().to_vec()).unwrap_or_default()
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_default()
    }

    /// Id of a token such as `<|endoftext|>`.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
