//! Supervised fine-tuning as an [`Objective`]: tokenized examples (see `phi_data::sft`) with the
//! loss on response tokens only, drawn in a seeded order reshuffled every epoch. [`crate::fit`]
//! runs it with everything pre-training has: accumulation, precision, clipping, checkpoints and
//! bitwise resume; with [`crate::Weights::Lora`] only the adapters train.

use burn::tensor::{Device, Int, Tensor, TensorData};
use phi_core::{PhiConfig, PhiForCausalLM};
use phi_data::sft::{SftExample, batch};
use phi_data::{SamplerState, TokenSampler};

use crate::error::{Result, TrainError};
use crate::objective::{BatchLoss, Forward, Objective};
use crate::{TrainConfig, masked_causal_lm_loss};

fn tensors(examples: &[&SftExample], pad: u32, device: &Device) -> (Tensor<2, Int>, Tensor<2>) {
    let (ids, mask, len) = batch(examples, pad);
    let n = examples.len();
    let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
    (
        Tensor::from_data(TensorData::new(ids, [n, len]), device),
        Tensor::from_data(TensorData::new(mask, [n, len - 1]), device),
    )
}

/// Positions whose next token is learned (the loss terms of an example).
fn learned(e: &SftExample) -> usize {
    e.learn.iter().skip(1).filter(|&&l| l).count()
}

/// Mean response-token loss over `examples` (no gradients), `batch_size` at a time.
pub fn sft_loss(model: &PhiForCausalLM, examples: &[SftExample], batch_size: usize, pad: u32) -> f64 {
    let device = model.device();
    let (mut total, mut count) = (0.0, 0.0);
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&SftExample> = chunk.iter().collect();
        let (ids, mask) = tensors(&refs, pad, &device);
        let weight = mask.clone().sum().into_scalar::<f32>() as f64;
        let loss = masked_causal_lm_loss(model.forward(ids.clone()), ids, mask).into_scalar::<f32>() as f64;
        total += loss * weight;
        count += weight;
    }
    if count == 0.0 { f64::NAN } else { total / count }
}

/// The SFT objective: batches of examples right-padded with `pad`, loss on learned tokens.
///
/// ```no_run
/// # use phi_train::*;
/// # fn demo(train: &[phi_data::sft::SftExample], val: &[phi_data::sft::SftExample], cfg: &TrainConfig, lora: lora::LoraConfig) -> Result<()> {
/// let mut objective = sft::Sft::new(train, val, /* pad */ 0, cfg.seed)?;
/// let weights = Weights::Lora { base: "base-model".into(), adapter: Adapter::Fresh(lora), quantize: None };
/// let out = fit(&weights, &mut objective, cfg, "runs/sft".as_ref(), true, &burn::tensor::Device::default(), |_| {})?;
/// # Ok(()) }
/// ```
pub struct Sft<'a> {
    train: &'a [SftExample],
    validation: &'a [SftExample],
    pad: u32,
    sampler: TokenSampler,
}

impl<'a> Sft<'a> {
    /// Errors if `train` is empty.
    pub fn new(train: &'a [SftExample], validation: &'a [SftExample], pad: u32, seed: u64) -> Result<Self> {
        if train.is_empty() {
            return Err(TrainError::Invalid("SFT needs at least one training example".into()));
        }
        Ok(Sft { train, validation, pad, sampler: TokenSampler::new(train.len(), seed) })
    }
}

impl<'a> Objective for Sft<'a> {
    type Batch = Vec<&'a SftExample>;

    fn check(&self, model: &PhiConfig, _cfg: &TrainConfig) -> Result<()> {
        for (what, set) in [("training", self.train), ("validation", self.validation)] {
            for (i, e) in set.iter().enumerate() {
                if e.ids.len() > model.max_position_embeddings {
                    return Err(TrainError::Invalid(format!(
                        "{what} example {i} has {} tokens, more than the model's max_position_embeddings ({})",
                        e.ids.len(),
                        model.max_position_embeddings
                    )));
                }
                if let Some(&id) = e.ids.iter().find(|&&id| id as usize >= model.vocab_size) {
                    return Err(TrainError::Invalid(format!("{what} example {i} has token id {id}, but the model's vocab_size is {}", model.vocab_size)));
                }
            }
        }
        if self.pad as usize >= model.vocab_size {
            return Err(TrainError::Invalid(format!("the padding id {} is outside the model's vocab_size {}", self.pad, model.vocab_size)));
        }
        Ok(())
    }

    fn next_batch(&mut self, batch_size: usize) -> Self::Batch {
        (0..batch_size).map(|_| &self.train[self.sampler.next_window()]).collect()
    }

    fn tokens(&self, batch: &Self::Batch) -> usize {
        batch.iter().map(|e| e.ids.len()).sum()
    }

    fn weight(&self, batch: &Self::Batch) -> f64 {
        batch.iter().map(|e| learned(e)).sum::<usize>() as f64
    }

    fn loss(&self, model: &Forward<'_>, batch: &Self::Batch) -> BatchLoss {
        let (ids, mask) = tensors(batch, self.pad, &model.device());
        BatchLoss { loss: masked_causal_lm_loss(model.logits(ids.clone()), ids, mask), metrics: Vec::new() }
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(self.sampler.state()).expect("sampler state serializes")
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        let state: SamplerState = serde_json::from_value(state.clone()).map_err(|e| TrainError::Invalid(format!("the SFT sampler's state: {e}")))?;
        self.sampler = TokenSampler::resume(self.train.len(), state);
        Ok(())
    }

    fn fingerprint(&self) -> String {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for set in [self.train, self.validation] {
            h.update(&(set.len() as u64).to_le_bytes());
            for e in set {
                h.update(&(e.ids.len() as u64).to_le_bytes());
                for (&id, &l) in e.ids.iter().zip(&e.learn) {
                    h.update(&id.to_le_bytes());
                    h.update(&[l as u8]);
                }
            }
        }
        format!("sft {} train / {} validation examples, pad {}, {:016x}", self.train.len(), self.validation.len(), self.pad, h.digest())
    }

    fn validate(&self, model: &PhiForCausalLM, cfg: &TrainConfig) -> Option<f64> {
        (!self.validation.is_empty()).then(|| sft_loss(model, self.validation, cfg.batch_size, self.pad))
    }
}
