//! Sequence embeddings from any Phi model: the mean over a document's tokens of one layer's
//! hidden states (the last, after the final norm, by default), without autodiff — what a
//! quality classifier learns on (phi-1 used a pretrained code model's embeddings, FineWeb-Edu a
//! frozen encoder's). Documents longer than the context are cut into context-sized chunks whose
//! means are averaged by their token counts, i.e. the mean over all the document's tokens.
//!
//! ```no_run
//! use phi_core::PhiForCausalLM;
//! use phi_core::embeddings::{EmbeddingConfig, embed};
//! # fn demo(model: &PhiForCausalLM, docs: &[Vec<u32>]) -> phi_core::Result<()> {
//! let vectors = embed(model, docs, &EmbeddingConfig::default())?;   // one Vec<f32> per document
//! assert_eq!(vectors[0].len(), model.config().hidden_size);
//! # Ok(()) }
//! ```

use burn::tensor::{Int, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::model::PhiForCausalLM;

/// How to embed.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingConfig {
    /// Which hidden state, as HF's `hidden_states` index: 0 the embeddings, `i` the output of
    /// layer `i - 1`, `num_hidden_layers` (the default, `None`) the final norm's output.
    pub layer: Option<usize>,
    /// Chunks per forward pass.
    pub batch: usize,
    /// Tokens per chunk (default: the model's context).
    pub chunk: Option<usize>,
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        EmbeddingConfig { layer: None, batch: 8, chunk: None }
    }
}

/// One vector of `hidden_size` per document (all zeros for an empty one), in order. The model
/// should be one without autodiff (`model.valid()` of a training model).
pub fn embed(model: &PhiForCausalLM, documents: &[Vec<u32>], cfg: &EmbeddingConfig) -> Result<Vec<Vec<f32>>> {
    let c = model.config();
    let layer = cfg.layer.unwrap_or(c.num_hidden_layers);
    if layer > c.num_hidden_layers {
        return Err(Error::arg("layer", format!("{layer} is past the last hidden state ({})", c.num_hidden_layers)));
    }
    let chunk = cfg.chunk.unwrap_or(c.max_position_embeddings).min(c.max_position_embeddings);
    if chunk == 0 || cfg.batch == 0 {
        return Err(Error::arg("chunk", "chunk and batch must be at least 1"));
    }
    // Every chunk of every document, longest first so that a batch pads little.
    let mut chunks: Vec<(usize, &[u32])> = documents.iter().enumerate().flat_map(|(d, ids)| ids.chunks(chunk).map(move |c| (d, c))).collect();
    chunks.sort_by_key(|(_, c)| std::cmp::Reverse(c.len()));
    let h = c.hidden_size;
    let mut sums = vec![vec![0f64; h]; documents.len()];
    let mut counts = vec![0usize; documents.len()];
    let device = model.device();
    for batch in chunks.chunks(cfg.batch) {
        let t = batch[0].1.len();
        let n = batch.len();
        // Right padding: attention is causal, so padding never reaches the real positions.
        let ids: Vec<i64> = batch.iter().flat_map(|(_, c)| c.iter().map(|&x| x as i64).chain(std::iter::repeat_n(0, t - c.len()))).collect();
        // Checked here, on the host: the forward pass does not read ids back from an accelerator.
        model.check_host_ids(ids.iter().copied())?;
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [n, t]), &device);
        let states = model.hidden_state(ids, layer)?;
        let mask: Vec<f32> = batch.iter().flat_map(|(_, c)| (0..t).map(move |j| if j < c.len() { 1.0 } else { 0.0 })).collect();
        let mask = Tensor::<3>::from_data(TensorData::new(mask, [n, t, 1]), &device);
        let summed = (states * mask).sum_dim(1).reshape([n, h]);
        let values = summed.into_data().convert::<f32>();
        let values = values.as_slice::<f32>().expect("f32 data");
        for (i, (d, c)) in batch.iter().enumerate() {
            sums[*d].iter_mut().zip(&values[i * h..(i + 1) * h]).for_each(|(s, &v)| *s += v as f64);
            counts[*d] += c.len();
        }
    }
    Ok(sums.into_iter().zip(counts).map(|(s, n)| s.into_iter().map(|v| (v / n.max(1) as f64) as f32).collect()).collect())
}
