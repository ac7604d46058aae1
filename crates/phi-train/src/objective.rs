//! What a training run optimises, apart from how: an [`Objective`] says what a batch is and how
//! its loss is computed; [`crate::Trainer`] does everything else once for every objective
//! (micro-batch accumulation, mixed precision and loss scaling, clipping, the optimizer step,
//! the schedule, non-finite guards) and [`crate::fit()`] adds validation, metrics, checkpoints
//! and exact resume.
//!
//! The objectives: [`CausalLm`] here (pre-training on token windows),
//! [`crate::sft_objective::Sft`] (response-only loss on chat/prompt–response examples) and
//! [`crate::preference::Dpo`] (preference pairs).

use burn::tensor::{Device, Int, Tensor, TensorData};
use phi_core::{PhiConfig, PhiForCausalLM};
use phi_data::curriculum::{Curriculum, CurriculumSampler};
use phi_data::{Mixture, MixtureSampler, TokenDataset};

use crate::error::{Result, TrainError};
use crate::precision::to_f32;
use crate::{TrainConfig, causal_lm_loss};

/// The model as a training step runs it: the f32 masters or a bf16/f16 copy of them whose
/// gradients reach the masters (see [`crate::precision`]); logits always come back in f32.
pub struct Forward<'a> {
    model: &'a PhiForCausalLM,
}

impl<'a> Forward<'a> {
    pub fn new(model: &'a PhiForCausalLM) -> Self {
        Forward { model }
    }

    /// `[batch, seq, vocab]` f32 logits of `ids`.
    pub fn logits(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        to_f32(self.model.forward(ids))
    }

    /// `[batch, seq, vocab]` f32 logits of packed rows, each sequence of `segments` computed as
    /// if alone ([`PhiForCausalLM::forward_packed`]).
    ///
    /// # Panics
    /// When `segments` do not describe `ids` or a sequence is longer than the model's context
    /// (the objectives check their data first).
    pub fn packed_logits(&self, ids: Tensor<2, Int>, segments: &phi_core::Segments) -> Tensor<3> {
        to_f32(self.model.forward_packed(ids, segments).unwrap_or_else(|e| panic!("packed forward: {e}")))
    }

    pub fn model(&self) -> &PhiForCausalLM {
        self.model
    }

    pub fn device(&self) -> Device {
        self.model.device()
    }
}

/// The loss of one micro-batch.
pub struct BatchLoss {
    /// The mean over the batch's loss terms (tokens, or pairs for preference losses).
    pub loss: Tensor<1>,
    /// Further per-batch figures to log (averaged over the step by weight), under the names
    /// `metrics.jsonl` uses, e.g. TRL's `rewards/margins`.
    pub metrics: Vec<(String, f64)>,
}

/// What a batch is and how its loss is computed.
pub trait Objective {
    /// One micro-batch, drawn on the host.
    type Batch;

    /// Checks the objective's data against the model before any work (ids within the
    /// vocabulary, sequences within the context).
    fn check(&self, model: &PhiConfig, cfg: &TrainConfig) -> Result<()>;

    /// The next micro-batch of `batch_size` items; advances the data cursor.
    fn next_batch(&mut self, batch_size: usize) -> Self::Batch;

    /// Tokens `batch` puts through the model (for tokens/s and MFU).
    fn tokens(&self, batch: &Self::Batch) -> usize;

    /// How many loss terms `batch`'s mean is over (predicted tokens; learned tokens for SFT;
    /// pairs for preference losses). A step's loss is the mean over all its terms: each
    /// micro-batch counts `weight / total weight`, so accumulated micro-batches give the step
    /// one large batch gives, also where micro-batches hold different counts.
    fn weight(&self, batch: &Self::Batch) -> f64;

    /// Sequences each item of a batch puts through the model (2 for a preference pair): what
    /// the memory estimate ([`crate::memory`]) multiplies `batch_size` by.
    fn rows_per_item(&self) -> usize {
        1
    }

    /// The loss of `batch` under `model`, on `model`'s device (autodiff during training).
    fn loss(&self, model: &Forward<'_>, batch: &Self::Batch) -> BatchLoss;

    /// The data cursor, as JSON for `trainer_state.json`: restoring it continues with exactly
    /// the batches an uninterrupted run would have drawn.
    fn state(&self) -> serde_json::Value;

    fn restore(&mut self, state: &serde_json::Value) -> Result<()>;

    /// What identifies the data (a checkpoint of other data is not resumed from).
    fn fingerprint(&self) -> String;

    /// Held-out loss (no gradients), `None` without validation data.
    fn validate(&self, model: &PhiForCausalLM, cfg: &TrainConfig) -> Option<f64> {
        let (sum, weight) = self.validate_part(model, cfg, 0, 1)?;
        Some(if weight > 0.0 { sum / weight } else { f64::NAN })
    }

    /// Part `part` of `parts` of the held-out loss, for a data-parallel run (see
    /// [`crate::dist`]): `(Σ loss × weight, Σ weight)` over this part's validation batches
    /// (batches `part`, `part + parts`, …), whose sums over the parts give the loss
    /// [`Self::validate`] gives. `None` without validation data.
    fn validate_part(&self, model: &PhiForCausalLM, cfg: &TrainConfig, part: usize, parts: usize) -> Option<(f64, f64)>;

    /// The data stage the last batch came from (a curriculum's), logged with each step.
    fn stage(&self) -> Option<String> {
        None
    }

    /// What the data gave over the run (a curriculum's tokens per dataset per stage), written
    /// as `data_report.json` at the end.
    fn data_report(&self) -> Option<serde_json::Value> {
        None
    }
}

/// Causal-LM pre-training: windows of `seq_len + 1` tokens drawn from a weighted mixture or a
/// staged curriculum, validated on held-out windows in order.
pub struct CausalLm<'a> {
    windows: Windows<'a>,
    validation: &'a TokenDataset,
    seq_len: usize,
}

/// Where the training windows come from.
enum Windows<'a> {
    Mixture(&'a Mixture, MixtureSampler<'a>),
    Curriculum(&'a Curriculum, CurriculumSampler<'a>),
}

impl<'a> CausalLm<'a> {
    /// Windows of `seq_len` (+1 for the shifted targets) from `train`, shuffled with `seed`.
    pub fn new(train: &'a Mixture, validation: &'a TokenDataset, seq_len: usize, seed: u64) -> Result<Self> {
        train.check(seq_len).map_err(|e| TrainError::Data(format!("training data: {e}")))?;
        Ok(CausalLm { windows: Windows::Mixture(train, train.sampler(seq_len, seed)), validation, seq_len })
    }

    /// Windows drawn by `curriculum` (built for the run's seq_len, batch and steps).
    pub fn curriculum(curriculum: &'a Curriculum, validation: &'a TokenDataset, seed: u64) -> Self {
        CausalLm { windows: Windows::Curriculum(curriculum, curriculum.sampler(seed)), validation, seq_len: curriculum.seq_len() }
    }
}

/// `rows` (row-major `[b, n]` token ids) as an id tensor.
pub fn ids_tensor(rows: &[u32], b: usize, n: usize, device: &Device) -> Tensor<2, Int> {
    let data: Vec<i64> = rows.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(data, [b, n]), device)
}

/// The model's input and the ids the loss scores, for `b` row-major windows of `seq_len + 1`
/// tokens: the first `seq_len` tokens of each window `[b, seq_len]`, and the whole windows
/// `[b, seq_len + 1]`. Only the first `seq_len` go through the model (litgpt's
/// `input_ids = batch[:, :-1]`): its last position's logits would predict nothing, so training at
/// `seq_len == max_position_embeddings` fits the context.
pub fn window_tensors(rows: &[u32], b: usize, seq_len: usize, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let inputs: Vec<u32> = rows.chunks(seq_len + 1).flat_map(|w| &w[..seq_len]).copied().collect();
    (ids_tensor(&inputs, b, seq_len, device), ids_tensor(rows, b, seq_len + 1, device))
}

impl Objective for CausalLm<'_> {
    /// Row-major `[batch, seq_len + 1]` token ids.
    type Batch = Vec<u32>;

    fn check(&self, model: &PhiConfig, cfg: &TrainConfig) -> Result<()> {
        if cfg.seq_len != self.seq_len {
            return Err(TrainError::Data(format!("the data is drawn in windows of {} tokens but seq_len is {}", self.seq_len, cfg.seq_len)));
        }
        if let Windows::Curriculum(c, _) = &self.windows {
            if c.windows_per_step() != cfg.batch_size * cfg.grad_accum || c.max_steps() != cfg.max_steps {
                return Err(TrainError::Data(format!(
                    "the curriculum was planned for {} windows per step and {} steps, the run has batch_size × grad_accum = {} and max_steps = {}",
                    c.windows_per_step(),
                    c.max_steps(),
                    cfg.batch_size * cfg.grad_accum,
                    cfg.max_steps
                )));
            }
        }
        let train_bound = match &self.windows {
            Windows::Mixture(m, _) => m.vocab_bound(),
            Windows::Curriculum(c, _) => c.vocab_bound(),
        };
        let bound = train_bound.max(self.validation.vocab_bound());
        if bound > model.vocab_size {
            return Err(TrainError::Data(format!(
                "the data uses token ids up to {} but the model's vocab_size is {}",
                bound - 1,
                model.vocab_size
            )));
        }
        Ok(())
    }

    fn next_batch(&mut self, batch_size: usize) -> Vec<u32> {
        match &mut self.windows {
            Windows::Mixture(_, s) => s.next_batch(batch_size),
            Windows::Curriculum(_, s) => s.next_batch(batch_size),
        }
    }

    fn tokens(&self, batch: &Vec<u32>) -> usize {
        batch.len() / (self.seq_len + 1) * self.seq_len
    }

    fn weight(&self, batch: &Vec<u32>) -> f64 {
        self.tokens(batch) as f64
    }

    fn loss(&self, model: &Forward<'_>, batch: &Vec<u32>) -> BatchLoss {
        let b = batch.len() / (self.seq_len + 1);
        let (inputs, ids) = window_tensors(batch, b, self.seq_len, &model.device());
        BatchLoss { loss: causal_lm_loss(model.logits(inputs), ids), metrics: Vec::new() }
    }

    fn state(&self) -> serde_json::Value {
        match &self.windows {
            Windows::Mixture(_, s) => serde_json::to_value(s.state()),
            Windows::Curriculum(_, s) => serde_json::to_value(s.state()),
        }
        .expect("sampler state serializes")
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        let bad = |e: String| TrainError::Data(format!("resuming the data sampler: {e}"));
        match &mut self.windows {
            Windows::Mixture(m, s) => {
                let state = serde_json::from_value(state.clone()).map_err(|e| bad(e.to_string()))?;
                *s = m.resume(self.seq_len, &state).map_err(|e| bad(e.to_string()))?;
            }
            Windows::Curriculum(c, s) => {
                let state = serde_json::from_value(state.clone()).map_err(|e| bad(e.to_string()))?;
                *s = c.resume(&state).map_err(|e| bad(e.to_string()))?;
            }
        }
        Ok(())
    }

    fn fingerprint(&self) -> String {
        match &self.windows {
            Windows::Mixture(m, _) => crate::checkpoint::data_fingerprint(m, self.validation),
            Windows::Curriculum(c, _) => format!("train {} / validation {:016x}", c.fingerprint(), self.validation.fingerprint()),
        }
    }

    fn stage(&self) -> Option<String> {
        match &self.windows {
            Windows::Curriculum(_, s) => Some(s.stage().to_string()),
            Windows::Mixture(..) => None,
        }
    }

    fn data_report(&self) -> Option<serde_json::Value> {
        match &self.windows {
            Windows::Curriculum(c, s) => Some(serde_json::json!({
                "stages": c.stage_names().iter().zip(c.stage_bounds()).map(|(n, (a, b))| serde_json::json!({"name": n, "start_step": a, "end_step": b})).collect::<Vec<_>>(),
                "tokens": s.report(),
            })),
            Windows::Mixture(..) => None,
        }
    }

    fn validate_part(&self, model: &PhiForCausalLM, cfg: &TrainConfig, part: usize, parts: usize) -> Option<(f64, f64)> {
        Some(crate::fit::evaluate_part(model, self.validation, self.seq_len, cfg.batch_size, cfg.eval_batches, part, parts, |_| {}))
    }
}
