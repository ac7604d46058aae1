//! HF `tokenizer.json` tokenizers: loading, and training a byte-level BPE on a corpus.

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

/// The end-of-text token that separates documents (GPT-2 / Phi-1 convention).
pub const EOS: &str = "<|endoftext|>";

impl Tokenizer {
    /// Trains a byte-level BPE tokenizer (GPT-2 style: byte alphabet, no unknown token) with
    /// `<|endoftext|>` as a special token, on `texts`.
    pub fn train_bpe<I, S>(texts: I, vocab_size: usize) -> Result<Self, TokenizerError>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
        use tokenizers::models::TrainerWrapper;
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        use tokenizers::{AddedToken, DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, TokenizerBuilder};
        let err = |e: &dyn std::fmt::Display| TokenizerError { path: "<training>".into(), message: e.to_string() };
        let mut trainer = TrainerWrapper::BpeTrainer(
            BpeTrainerBuilder::new()
                .vocab_size(vocab_size)
                .min_frequency(2)
                .show_progress(false)
                .special_tokens(vec![AddedToken::from(EOS, true)])
                .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
                .build(),
        );
        let byte_level = ByteLevel::default().add_prefix_space(false);
        let mut inner: tokenizers::TokenizerImpl<ModelWrapper, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper> =
            TokenizerBuilder::new()
                .with_model(ModelWrapper::BPE(BPE::default()))
                .with_normalizer(None)
                .with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(byte_level)))
                .with_post_processor(Some(PostProcessorWrapper::ByteLevel(byte_level)))
                .with_decoder(Some(DecoderWrapper::ByteLevel(byte_level)))
                .build()
                .map_err(|e| err(&e))?;
        inner.train(&mut trainer, texts).map_err(|e| err(&e))?;
        Ok(Tokenizer { inner: inner.into() })
    }

    /// Writes `tokenizer.json` atomically (temporary file, then rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), TokenizerError> {
        let path = path.as_ref();
        let err = |e: &dyn std::fmt::Display| TokenizerError { path: path.display().to_string(), message: e.to_string() };
        let tmp = path.with_extension("json.tmp");
        self.inner.save(&tmp, false).map_err(|e| err(&e))?;
        std::fs::rename(&tmp, path).map_err(|e| err(&e))
    }

    /// Id of [`EOS`], if the vocabulary has it.
    pub fn eos_id(&self) -> Option<u32> {
        self.token_to_id(EOS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_bpe_round_trips_text_and_knows_eos() {
        let corpus = ["def add(a, b):\n    return a + b\n", "def sub(a, b):\n    return a - b\n", "print(add(1, 2))\n"];
        let texts: Vec<String> = (0..20).flat_map(|_| corpus.iter().map(|s| s.to_string())).collect();
        let tok = Tokenizer::train_bpe(texts.iter(), 300).unwrap();
        assert!(tok.vocab_size() <= 300 && tok.vocab_size() > 256);
        let text = "def add(x, y):\n    return x + y  # ünïcödé\n";
        assert_eq!(tok.decode(&tok.encode(text)), text);
        let eos = tok.eos_id().unwrap();
        assert_eq!(tok.encode(EOS), vec![eos]);
        let dir = std::env::temp_dir().join(format!("phi-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        tok.save(dir.join("tokenizer.json")).unwrap();
        let back = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        assert_eq!(back.encode(text), tok.encode(text));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
