//! Perplexity: the token-weighted next-token loss of a model over a dataset, computed exactly as
//! the training loop's validation loss (`phi_train::evaluate`), so the two agree to the bit.
//!
//! ```no_run
//! use burn::tensor::Device;
//! use phi_core::PhiForCausalLM;
//! use phi_data::assemble::eval_dataset;
//!
//! let model = PhiForCausalLM::from_pretrained("runs/phi-1/checkpoints/step-00000300", &Device::default())?;
//! let data = eval_dataset(&["runs/phi-1/data".into()], "validation", None)?;
//! let p = phi_eval::perplexity::perplexity(&model, &data, 256, 8, 0, |_, _| {})?;
//! // The perplexity is the exponential of the mean loss over the tokens scored.
//! assert_eq!(p.perplexity, p.loss.exp());
//! assert!(p.tokens > 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};

use phi_core::PhiForCausalLM;
use phi_data::prepare::{MANIFEST, Manifest};
use phi_data::{TokenDataset, Tokenizer};

use crate::error::{EvalError, Result};

/// What [`perplexity`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perplexity {
    pub loss: f64,
    pub perplexity: f64,
    /// Tokens scored.
    pub tokens: usize,
}

/// Mean next-token loss over the windows of `data` (`seq_len` scored tokens each, clamped to the
/// model's context), `batch_size` windows a batch, at most `max_batches` batches (0: all).
/// `on_batch(done, total)` reports progress.
pub fn perplexity(
    model: &PhiForCausalLM,
    data: &TokenDataset,
    seq_len: usize,
    batch_size: usize,
    max_batches: usize,
    mut on_batch: impl FnMut(usize, usize),
) -> Result<Perplexity> {
    let vocab = model.config().vocab_size;
    if data.vocab_bound() > vocab {
        return Err(EvalError::Vocab { max_id: data.vocab_bound() - 1, vocab_size: vocab });
    }
    if seq_len == 0 || batch_size == 0 {
        return Err(EvalError::ZeroSize { seq_len, batch_size });
    }
    // A window is `seq_len + 1` tokens; the first `seq_len` go through the model, each predicting
    // the next, so the whole context can be scored at once.
    let seq_len = seq_len.min(model.config().max_position_embeddings.max(1));
    let windows = data.num_windows(seq_len);
    if windows == 0 {
        return Err(EvalError::TooFewTokens { tokens: data.num_tokens(), window: seq_len + 1 });
    }
    let batches = windows.div_ceil(batch_size);
    let limit = if max_batches == 0 { batches } else { max_batches.min(batches) };
    let loss = phi_train::evaluate_with_progress(model, data, seq_len, batch_size, limit, |done| on_batch(done, limit));
    Ok(Perplexity { loss, perplexity: loss.exp(), tokens: windows.min(limit * batch_size) * seq_len })
}

/// The prepared datasets among `data` that were tokenized with another tokenizer than the
/// model folder's `tokenizer.json`, each with what differs. Their ids would be scored as other
/// tokens: a perplexity that looks like a number and means nothing. Tokenizers match when their
/// files are byte-identical or give every id the same token. Shards and text have no tokenizer
/// of their own (text is tokenized with the model's); a model folder without `tokenizer.json`
/// cannot be compared, which counts as a mismatch.
pub fn tokenizer_mismatches(model_dir: &Path, data: &[PathBuf]) -> Result<Vec<String>> {
    let prepared: Vec<&PathBuf> = data.iter().filter(|p| p.join(MANIFEST).is_file()).collect();
    if prepared.is_empty() {
        return Ok(Vec::new());
    }
    let model_path = model_dir.join("tokenizer.json");
    let model_bytes = match std::fs::read(&model_path) {
        Ok(bytes) => bytes,
        Err(e) => {
            return Ok(vec![format!(
                "{} was tokenized with its own tokenizer.json, and the model's cannot be compared with it ({}: {e})",
                prepared[0].display(),
                model_path.display()
            )]);
        }
    };
    let mut model_vocab = None;
    let mut out = Vec::new();
    for dir in prepared {
        let manifest = Manifest::read(dir)?;
        let data_path = dir.join(&manifest.tokenizer.file);
        let data_bytes = std::fs::read(&data_path).map_err(|e| EvalError::io(&data_path, e))?;
        if data_bytes == model_bytes {
            continue;
        }
        if model_vocab.is_none() {
            model_vocab = Some(Tokenizer::from_file(&model_path)?.vocab_by_id());
        }
        let model_vocab = model_vocab.as_ref().expect("loaded above");
        let data_vocab = Tokenizer::from_file(&data_path)?.vocab_by_id();
        if &data_vocab == model_vocab {
            continue;
        }
        let example = model_vocab
            .iter()
            .find(|(id, token)| data_vocab.get(id) != Some(*token))
            .map(|(id, token)| format!("id {id} is {token:?} for the model and {:?} in the data", data_vocab.get(id).map_or("nothing", |t| t.as_str())))
            .unwrap_or_else(|| "the data's vocabulary has ids the model's lacks".to_string());
        out.push(format!(
            "{} was tokenized with {} ({} tokens), not the model's {} ({} tokens): {example}",
            dir.display(),
            data_path.display(),
            data_vocab.len(),
            model_path.display(),
            model_vocab.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_whole_context_is_scored_and_a_longer_seq_len_clamped_to_it() {
        let mut config = phi_core::PhiConfig::phi_family(32, 1, 2, 50, 0.5);
        config.max_position_embeddings = 16;
        let model = PhiForCausalLM::init(config, &burn::tensor::Device::default(), 0).unwrap();
        let data = TokenDataset::from_tokens((0..200u32).map(|i| i * 7 % 50).collect());
        // 16 = the context: windows of 17 tokens, the first 16 through the model.
        let p = perplexity(&model, &data, 16, 2, 1, |_, _| {}).unwrap();
        assert!(p.loss.is_finite() && p.tokens == 2 * 16, "{p:?}");
        let longer = perplexity(&model, &data, 40, 2, 1, |_, _| {}).unwrap();
        assert_eq!((longer.loss, longer.tokens), (p.loss, p.tokens));
    }
}
