//! The one way into training: [`fit()`] trains [`Weights`] on an [`Objective`] — running
//! [`Trainer::step`] with validation, `metrics.jsonl`, checkpoints and exact [`Resume`] — and
//! returns a [`TrainOutcome`]. Here too: the run's [`TrainConfig`] (with litgpt-like
//! defaults), the [`StepMetrics`] of each step, and [`evaluate`], the held-out causal-LM loss.
//!
//! ```no_run
//! use phi_train::{CausalLm, Resume, TrainConfig, Weights, fit};
//! # fn demo(data: &phi_data::Mixture, val: &phi_data::TokenDataset) -> phi_train::Result<()> {
//! let model = phi_core::PhiConfig::preset("phi-1").unwrap();
//! let cfg = TrainConfig { batch_size: 8, seq_len: 512, max_steps: 100, ..TrainConfig::default() };
//! let mut objective = CausalLm::new(data, val, cfg.seq_len, cfg.seed)?;
//! let out = fit(&Weights::Scratch(model), &mut objective, &cfg, "runs/demo".as_ref(), Resume::Auto, &burn::tensor::Device::default(), |m| {
//!     tracing::info!(step = m.step, loss = m.loss, "trained")
//! })?;
//! assert_eq!(out.metrics.last().map(|m| m.step), Some(cfg.max_steps));
//! # Ok(()) }
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};
use phi_core::{PhiConfig, PhiForCausalLM};
use phi_data::TokenDataset;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, TrainerState};
use crate::error::{Result, TrainError};
use crate::lora::{self, BaseQuantization, LoraConfig};
use crate::objective::{Objective, window_tensors};
use crate::trainer::{Trainer, optimizer_for};
use crate::{AdamWSettings, Decay, LossScaler, LrSchedule, Precision, causal_lm_loss};

/// Hyper-parameters of a run (serialisable: TOML files, checkpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Sequences per micro-batch.
    pub batch_size: usize,
    pub seq_len: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub max_steps: usize,
    pub optimizer: AdamWSettings,
    pub schedule: LrSchedule,
    /// Global gradient-norm clip (`None`: no clipping).
    pub clip_norm: Option<f64>,
    /// Validation every this many steps (0: only at the end).
    pub eval_every: usize,
    /// At most this many validation batches.
    pub eval_batches: usize,
    /// Checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    pub keep_checkpoints: usize,
    pub seed: u64,
    /// Peak FLOP/s of the device, for the MFU figure (see [`crate::mfu`]). Left out, a GPU's
    /// comes from its name ([`crate::mfu::GPU_PEAKS`]) and a CPU run reports no MFU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_flops: Option<f64>,
    /// Recompute activations in the backward pass instead of keeping them (burn's balanced
    /// gradient checkpointing): less memory, more compute.
    #[serde(default)]
    pub activation_checkpointing: bool,
    /// Compute dtype of the forward/backward (`f32`, `bf16`, `f16`); master weights and the
    /// optimizer stay f32. Half precision is for GPU backends.
    #[serde(default)]
    pub precision: Precision,
    /// The initial f16 loss scale and its growth interval (ignored otherwise).
    #[serde(default)]
    pub loss_scaler: LossScaler,
    /// What a step whose loss or gradient norm is NaN/inf does: stop the run with an error
    /// naming the step (the default), or skip the update (logged with `skipped: true`); more
    /// than [`MAX_CONSECUTIVE_SKIPS`] skips in a row stop the run all the same.
    #[serde(default)]
    pub on_non_finite: OnNonFinite,
    /// The ZeRO stage of a data-parallel run: 0, every rank keeps the whole AdamW state (the
    /// default); 1, each of the N ranks keeps and updates its 1/N of it ([`crate::zero`]).
    /// The same training either way, and the same checkpoints; one process ignores it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub zero: u8,
}

fn is_zero(stage: &u8) -> bool {
    *stage == 0
}

impl Default for TrainConfig {
    /// litgpt's defaults where they map onto these fields (its `TrainArgs` and `EvalArgs`, on
    /// one device, with `litgpt pretrain`'s seed and clipping and its default optimizer, torch's
    /// AdamW), and the safe choice where litgpt has none. A run sets at least its length and batch
    /// shape: `TrainConfig { batch_size: 8, seq_len: 512, max_steps: 100, ..TrainConfig::default() }`;
    /// one of another length than 1000 steps sets `schedule.total_steps` too (the `phi` tool's
    /// recipes fit the schedule to the run's length).
    fn default() -> Self {
        TrainConfig {
            // litgpt's micro_batch_size 4 and global_batch_size 64: 16 micro-batches a step.
            batch_size: 4,
            // litgpt trains at the model's whole context by default; 2048 is phi-1's, 1.5's and
            // 2's (validate refuses more than the model's max_position_embeddings).
            seq_len: 2048,
            grad_accum: 16,
            // litgpt derives the length from max_tokens or epochs and has no step default: one
            // save interval, so that a default run ends with exactly one checkpoint.
            max_steps: 1000,
            // litgpt's "AdamW" is torch.optim.AdamW with torch's defaults: betas (0.9, 0.999),
            // eps 1e-8, weight decay 0.01 on every parameter.
            optimizer: AdamWSettings::default(),
            // torch's AdamW lr 1e-3 (what litgpt's "AdamW" keeps unless told otherwise);
            // TrainArgs' lr_warmup_steps 100, then litgpt's cosine decay to its min_lr 6e-5 at
            // the run's last step.
            schedule: LrSchedule { peak: 1e-3, warmup_steps: 100, total_steps: 1000, floor: 6e-5, decay: Decay::Cosine },
            // litgpt pretrain's max_norm 1.0 (TrainArgs leaves it unset); every recipe here
            // clips at 1.0 too.
            clip_norm: Some(1.0),
            // EvalArgs: validation every 600 steps, on at most 100 batches.
            eval_every: 600,
            eval_batches: 100,
            // TrainArgs.save_interval.
            checkpoint_every: 1000,
            // litgpt keeps every checkpoint; two is the newest and one to fall back on when the
            // newest cannot be read (resuming passes over it), at a bounded cost in disk.
            keep_checkpoints: 2,
            // `litgpt pretrain`'s seed (its fine-tuning scripts use 1337): a default run is a
            // pre-training run from scratch, the case `Weights::Scratch` seeds.
            seed: 42,
            // The device's own (a GPU's from its name; none on a CPU): see `crate::mfu`.
            peak_flops: None,
            activation_checkpointing: false,
            // f32: litgpt picks bf16-mixed where the GPU has it, but the CPU backend computes in
            // f32 only; a GPU run asks for bf16.
            precision: Precision::F32,
            // torch's GradScaler defaults (f16 runs only).
            loss_scaler: LossScaler::default(),
            on_non_finite: OnNonFinite::Stop,
            // litgpt's FSDP default shards everything; one process has nothing to shard, and
            // sharding is opt-in here (it adds a broadcast of the weights to every step).
            zero: 0,
        }
    }
}

/// The policy for a step whose loss or gradient norm is not finite (see
/// [`TrainConfig::on_non_finite`]). f16 overflows are the loss scaler's business and are
/// skipped either way while the scale can still come down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnNonFinite {
    #[default]
    Stop,
    Skip,
}

/// With `on_non_finite = "skip"`, this many non-finite steps in a row end the run: a run that
/// diverged produces nothing but NaNs, and skipping it to the end would only hide that.
pub const MAX_CONSECUTIVE_SKIPS: usize = 10;

/// Upper bound on tokens in one micro-batch: far beyond any device, and it keeps the
/// products of the size fields from overflowing before anything is allocated.
const MAX_BATCH_TOKENS: usize = 1 << 31;

/// Upper bound on tokens in one optimizer step (`batch_size × grad_accum × seq_len`): 4.3B, over
/// 250 times the largest published batches (2M tokens for phi-1's 1024 × 2048, 16M for
/// the largest LLM runs). Accumulation costs no memory, but a step of more would take the run's
/// whole budget before its first update.
pub const MAX_STEP_TOKENS: u64 = 1 << 32;

impl TrainConfig {
    /// Checks every setting before any work is done; the error names the key. `model` is the
    /// architecture the run trains (for `seq_len ≤ max_position_embeddings`).
    pub fn validate(&self, model: &PhiConfig) -> Result<()> {
        for (key, v) in [("batch_size", self.batch_size), ("seq_len", self.seq_len), ("grad_accum", self.grad_accum), ("max_steps", self.max_steps)] {
            if v == 0 {
                return Err(TrainError::config(key, v, "must be at least 1"));
            }
        }
        if self.seq_len > model.max_position_embeddings {
            return Err(TrainError::config(
                "seq_len",
                self.seq_len,
                format!("{} exceeds the model's max_position_embeddings ({})", self.seq_len, model.max_position_embeddings),
            ));
        }
        if self.batch_size.checked_mul(self.seq_len + 1).is_none_or(|t| t > MAX_BATCH_TOKENS) {
            return Err(TrainError::config("batch_size", self.batch_size, format!("{} sequences of {} tokens is more than {MAX_BATCH_TOKENS} tokens per micro-batch", self.batch_size, self.seq_len)));
        }
        let step_tokens = (self.batch_size as u64).saturating_mul(self.grad_accum as u64).saturating_mul(self.seq_len as u64);
        if step_tokens > MAX_STEP_TOKENS {
            return Err(TrainError::config(
                "grad_accum",
                self.grad_accum,
                format!(
                    "{} micro-batches of {} × {} tokens is {step_tokens} tokens per optimizer step, more than {MAX_STEP_TOKENS} (phi-1 trained on 2M a step)",
                    self.grad_accum, self.batch_size, self.seq_len
                ),
            ));
        }
        if self.zero > 1 {
            return Err(TrainError::config(
                "zero",
                self.zero,
                format!("{}: the ZeRO stages are 0 (no sharding) and 1 (AdamW state sharded across the ranks)", self.zero),
            ));
        }
        if let Some(c) = self.clip_norm
            && !(c.is_finite() && c > 0.0)
        {
            return Err(TrainError::config("clip_norm", c, format!("{c} must be a positive number (leave it out for no clipping)")));
        }
        let s = &self.schedule;
        if !(s.peak.is_finite() && s.peak > 0.0) {
            return Err(TrainError::config("schedule.peak", s.peak, format!("{} must be a positive finite learning rate", s.peak)));
        }
        if !(s.floor.is_finite() && s.floor >= 0.0 && s.floor <= s.peak) {
            return Err(TrainError::config("schedule.floor", s.floor, format!("{} must be finite, ≥ 0 and ≤ schedule.peak ({})", s.floor, s.peak)));
        }
        if let crate::Decay::Wsd { decay_start } = s.decay {
            if decay_start < s.warmup_steps || decay_start >= s.total_steps {
                return Err(TrainError::config(
                    "schedule.decay.wsd.decay_start",
                    decay_start,
                    format!("{decay_start} must lie in [warmup_steps ({}), total_steps ({}))", s.warmup_steps, s.total_steps),
                ));
            }
        }
        if s.decay != crate::Decay::Constant && s.total_steps <= s.warmup_steps {
            return Err(TrainError::config(
                "schedule.total_steps",
                s.total_steps,
                format!("{} must exceed schedule.warmup_steps ({}) for a decaying schedule: it is the step where the decay reaches the floor", s.total_steps, s.warmup_steps),
            ));
        }
        let o = &self.optimizer;
        for (key, b) in [("optimizer.beta1", o.beta1), ("optimizer.beta2", o.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(TrainError::config(key, b, format!("{b} is not in [0, 1)")));
            }
        }
        if !(o.eps.is_finite() && o.eps > 0.0) {
            return Err(TrainError::config("optimizer.eps", o.eps, format!("{} must be a positive finite number", o.eps)));
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return Err(TrainError::config("optimizer.weight_decay", o.weight_decay, format!("{} must be finite and ≥ 0", o.weight_decay)));
        }
        if let Some(p) = self.peak_flops
            && !(p.is_finite() && p > 0.0)
        {
            return Err(TrainError::config("peak_flops", p, format!("{p} must be a positive finite number (leave it out for the device's own)")));
        }
        let l = &self.loss_scaler;
        if !(l.scale.is_finite() && l.scale >= 1.0) {
            return Err(TrainError::config("loss_scaler.scale", l.scale, format!("{} must be finite and ≥ 1", l.scale)));
        }
        if l.growth_interval == 0 {
            return Err(TrainError::config("loss_scaler.growth_interval", l.growth_interval, "must be at least 1"));
        }
        Ok(())
    }
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: usize,
    /// JSON has no NaN/inf: serde_json writes them as `null`, read back as NaN.
    #[serde(deserialize_with = "null_as_nan")]
    pub loss: f64,
    pub val_loss: Option<f64>,
    pub val_perplexity: Option<f64>,
    pub lr: f64,
    #[serde(deserialize_with = "null_as_nan")]
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    /// Model FLOPs utilisation in [0, 1]; `None` without a known peak (a CPU without
    /// `peak_flops`), see [`crate::mfu`].
    #[serde(default)]
    pub mfu: Option<f64>,
    /// f16 runs: the loss scale this step used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// The update was skipped (an f16 overflow, or a non-finite step under
    /// `on_non_finite = "skip"`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    /// The data stage of the step (a curriculum's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The objective's own figures (e.g. DPO's `rewards/margins`), averaged over the step.
    #[serde(flatten)]
    pub extra: std::collections::BTreeMap<String, f64>,
}

/// A skipped step's loss or gradient norm was NaN/inf and is `null` in `metrics.jsonl`; reading
/// it back must keep the line (a resumed run would otherwise drop the skipped steps' history).
fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Whether [`fit()`] continues from the run's own checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Start from the [`Weights`], whatever checkpoints `out_dir/checkpoints` holds (a run that
    /// reaches the step of one replaces it; `--fresh` removes them first).
    No,
    /// The newest complete checkpoint under `out_dir/checkpoints`, falling back past unreadable
    /// ones (each a warning); one of another model, training config or data is an error naming
    /// every difference. With no checkpoint, start from the [`Weights`].
    Auto,
}

/// The weights a run trains and where they come from.
#[derive(Debug, Clone)]
pub enum Weights {
    /// Every parameter, fresh from this config (seeded with the run's seed).
    Scratch(PhiConfig),
    /// Every parameter, from a HF-format folder (fine-tuning, continued pre-training).
    Pretrained(PathBuf),
    /// LoRA adapters on the frozen base in the HF folder `base` (quantized if asked); only the
    /// adapters are trained, and checkpoints hold the adapter in PEFT format.
    Lora { base: PathBuf, adapter: Adapter, quantize: Option<BaseQuantization> },
}

/// The adapters a LoRA run starts from.
#[derive(Debug, Clone)]
pub enum Adapter {
    /// Fresh adapters (PEFT's initialisation: the adapted model starts equal to the base).
    Fresh(LoraConfig),
    /// A PEFT adapter folder, trained further.
    Load(PathBuf),
}

impl Weights {
    /// The model config, without loading weights.
    pub fn model_config(&self) -> Result<PhiConfig> {
        match self {
            Weights::Scratch(c) => Ok(c.clone()),
            Weights::Pretrained(dir) | Weights::Lora { base: dir, .. } => Ok(PhiConfig::from_file(dir.join(checkpoint::CONFIG_FILE))?),
        }
    }

    /// What a checkpoint of this run must have been made with: the model config (its
    /// `config.json` form), plus the adapter config and base quantization for LoRA.
    fn identity(&self) -> Result<serde_json::Value> {
        let mut json = self.model_config()?.to_hf_json();
        if let (Some(config), Weights::Lora { quantize, .. }) = (self.lora_config()?, self) {
            json["phi_lora"] = serde_json::to_value(config).expect("LoRA config serializes");
            json["phi_base_quantization"] = serde_json::to_value(quantize).expect("serializes");
        }
        Ok(json)
    }

    /// The parameters this run trains (all, or the LoRA adapters) and, of them, the adapters'
    /// (0 for a full run), from the configs alone; a LoRA rank beyond the projections' sides is
    /// an error naming `rank`.
    pub fn trainable_params(&self, model: &PhiConfig) -> Result<(u64, u64)> {
        match self.lora_config()? {
            Some(lora) => {
                let n = lora::adapter_params(model, &lora)?;
                Ok((n, n))
            }
            None => Ok((model.num_parameters(), 0)),
        }
    }

    /// The adapter config of a LoRA run.
    pub fn lora_config(&self) -> Result<Option<LoraConfig>> {
        match self {
            Weights::Lora { adapter: Adapter::Fresh(c), .. } => Ok(Some(c.clone())),
            Weights::Lora { adapter: Adapter::Load(dir), .. } => Ok(Some(lora::read_config(dir)?)),
            _ => Ok(None),
        }
    }

    /// The model at the start of a run, on `device` (an autodiff device).
    pub fn build(&self, device: &Device, seed: u64) -> Result<PhiForCausalLM> {
        match self {
            Weights::Scratch(c) => Ok(PhiForCausalLM::init(c.clone(), device, seed)?),
            Weights::Pretrained(dir) => Ok(PhiForCausalLM::from_pretrained(dir, device)?),
            Weights::Lora { base, adapter, quantize } => {
                let model = PhiForCausalLM::from_pretrained(base, device)?;
                let model = match adapter {
                    Adapter::Fresh(config) => lora::attach(model, config)?,
                    Adapter::Load(dir) => lora::load(model, dir)?,
                };
                Ok(quantized(model, *quantize))
            }
        }
    }

    /// Writes what a checkpoint holds of `model` (everything, or the adapter).
    fn save(&self, model: &PhiForCausalLM, dir: &Path) -> Result<()> {
        match self.lora_config()? {
            Some(config) => Ok(lora::save(&model.valid(), &config, dir)?),
            // One file whatever the size: a checkpoint's layout lists `model.safetensors`.
            None => Ok(model.valid().save_pretrained_sharded(dir, u64::MAX).map(drop)?),
        }
    }

    /// The model as a checkpoint in `dir` holds it.
    fn restore(&self, dir: &Path, device: &Device) -> Result<PhiForCausalLM> {
        match self {
            Weights::Lora { base, quantize, .. } => {
                let model = lora::load(PhiForCausalLM::from_pretrained(base, device)?, dir)?;
                Ok(quantized(model, *quantize))
            }
            _ => Ok(PhiForCausalLM::from_pretrained(dir, device)?),
        }
    }
}

fn quantized(model: PhiForCausalLM, bits: Option<BaseQuantization>) -> PhiForCausalLM {
    match bits {
        Some(bits) => lora::quantize_base(model, bits).0,
        None => model,
    }
}

/// What a finished run returns.
pub struct TrainOutcome {
    /// The trained model without autodiff (with its adapters unmerged for LoRA).
    pub model: PhiForCausalLM,
    pub metrics: Vec<StepMetrics>,
    pub resumed_from: Option<usize>,
    /// What resuming had to work around (an unreadable newest checkpoint it fell back from, a
    /// stale folder it left alone); each also emitted with `tracing::warn!` as it happened.
    pub resume_warnings: Vec<String>,
    /// What the run did not do, without failing for it: an old checkpoint it could not prune, a
    /// `data_report.json` in the output folder that is not ours (left as it is); each also
    /// emitted with `tracing::warn!` as it happened. The library prints none of them: the `phi`
    /// tool subscribes to the events and prints each as a `warning: …` line when it happens.
    pub warnings: Vec<String>,
}

/// The held-out loss of `objective`, each rank taking its part of the validation batches and the
/// parts summed across ranks (the mean one process gives, up to the summation order).
fn validate<O: Objective>(objective: &O, model: &PhiForCausalLM, cfg: &TrainConfig, world: &dyn crate::dist::Collective) -> Option<f64> {
    let (sum, weight) = objective.validate_part(model, cfg, world.rank(), world.size())?;
    let mut both = [sum, weight];
    world.sum_f64(&mut both);
    Some(if both[1] > 0.0 { both[0] / both[1] } else { f64::NAN })
}

/// Mean next-token loss over (at most `max_batches` of) the windows of `data`, in order,
/// weighted by token count.
pub fn evaluate(model: &PhiForCausalLM, data: &TokenDataset, seq_len: usize, batch: usize, max_batches: usize) -> f64 {
    evaluate_with_progress(model, data, seq_len, batch, max_batches, |_| {})
}

/// [`evaluate`], calling `on_batch` with the number of batches done after each one.
pub fn evaluate_with_progress(
    model: &PhiForCausalLM,
    data: &TokenDataset,
    seq_len: usize,
    batch: usize,
    max_batches: usize,
    mut on_batch: impl FnMut(usize),
) -> f64 {
    let mut done = 0;
    let (total, count) = evaluate_part(model, data, seq_len, batch, max_batches, 0, 1, |_| {
        done += 1;
        on_batch(done)
    });
    if count == 0.0 { f64::NAN } else { total / count }
}

/// The part of [`evaluate`] that process `part` of `parts` takes: batches `part`, `part + parts`,
/// … of those `evaluate` reads, as `(Σ loss × tokens, Σ tokens)`; `on_batch` is called after
/// each batch taken.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_part(
    model: &PhiForCausalLM,
    data: &TokenDataset,
    seq_len: usize,
    batch: usize,
    max_batches: usize,
    part: usize,
    parts: usize,
    mut on_batch: impl FnMut(usize),
) -> (f64, f64) {
    let device = model.device();
    // The forward pass checks ids only in host memory; the data's largest id is known here.
    let vocab = model.config().vocab_size;
    assert!(data.vocab_bound() <= vocab, "evaluate: the data uses token ids up to {} but the model's vocab_size is {vocab}", data.vocab_bound());
    let (mut total, mut count) = (0.0, 0usize);
    for (i, rows) in data.sequential_batches(seq_len, batch).take(max_batches.max(1)).enumerate() {
        if !crate::dist::takes(i, part, parts) {
            continue;
        }
        let b = rows.len() / (seq_len + 1);
        let (inputs, ids) = window_tensors(&rows, b, seq_len, &device);
        let loss = causal_lm_loss(model.forward(inputs), ids).into_scalar::<f32>() as f64;
        total += loss * (b * seq_len) as f64;
        count += b * seq_len;
        on_batch(i);
    }
    (total, count as f64)
}

/// Warmup, then the peak learning rate until the last stage starts, then linear to 0 at the
/// end: the anneal on the last stage's mix (OLMo's and MiniCPM's warmup-stable-decay). A warmup
/// longer than the stages before the last is kept: the decay then starts when it ends.
pub fn anneal_over_last_stage(cfg: &mut TrainConfig, curriculum: &phi_data::curriculum::Curriculum) {
    let decay_start = curriculum.stage_bounds().last().map_or(0, |b| b.0).max(cfg.schedule.warmup_steps).min(cfg.max_steps.saturating_sub(1));
    cfg.schedule.warmup_steps = cfg.schedule.warmup_steps.min(decay_start);
    cfg.schedule.total_steps = cfg.max_steps;
    cfg.schedule.floor = 0.0;
    cfg.schedule.decay = crate::Decay::Wsd { decay_start };
}

/// Trains `weights` on `objective` for `cfg.max_steps` optimizer steps: the only entry into
/// training, for every objective ([`crate::CausalLm`] pre-training on a mixture or a curriculum,
/// [`crate::sft_objective::Sft`], [`crate::preference::Dpo`]). `cfg` is validated against the model first,
/// and the objective's data against both, before any work. Validation every `eval_every`
/// steps, a line per step in `out_dir/metrics.jsonl`, checkpoints under `out_dir/checkpoints`
/// and a curriculum's `data_report.json` at the end (the `phi` tool draws `loss.png` from the
/// returned metrics). With [`Resume::Auto`],
/// continues bitwise from the newest complete checkpoint there (one of another model, config
/// or data is an error naming every difference), else starts from `weights`. `on_step` sees
/// every step's metrics. Warnings are returned in the [`TrainOutcome`], never printed.
///
/// In a data-parallel run ([`crate::dist`]: a world [`crate::dist::install`]ed, as `phi` does
/// under `mpirun`), every rank calls `fit` alike and each step's micro-batches are shared among
/// them; rank 0 alone holds `out_dir` and writes to it (after the step every rank took part
/// in), and `on_step` is called on rank 0 only. The other ranks' outcomes hold the model (the
/// same weights) and this run's metrics only; validation is split across the ranks.
pub fn fit<O: Objective>(
    weights: &Weights,
    objective: &mut O,
    cfg: &TrainConfig,
    out_dir: &Path,
    resume: Resume,
    device: &Device,
    mut on_step: impl FnMut(&StepMetrics),
) -> Result<TrainOutcome> {
    let model_config = weights.model_config()?;
    cfg.validate(&model_config)?;
    // Data-parallel (see `crate::dist`): every rank runs this same loop; rank 0 alone holds the
    // output folder and writes to it.
    let world = crate::dist::world();
    let lead = world.rank() == 0;
    crate::trainer::check_world(cfg.grad_accum.max(1), world.size())?;
    objective.check(&model_config, cfg)?;
    cfg.precision.check_device(device)?;
    // Before the model is built or a batch drawn: a run that cannot fit in memory is refused
    // with the estimate, not killed by the allocator.
    let (trainable, adapters) = weights.trainable_params(&model_config)?;
    crate::memory::check_device(crate::memory::RunShape { model: &model_config, trainable, adapters, rows_per_item: objective.rows_per_item() }, cfg, device)?;
    let ad = if cfg.activation_checkpointing {
        device.clone().autodiff().gradient_checkpointing()
    } else {
        device.clone().autodiff()
    };
    let ckpt_root = out_dir.join(checkpoint::CHECKPOINTS_DIR);
    // One run at a time in a folder, held to the end: two would prune each other's checkpoints
    // and rewrite each other's metrics.jsonl (see `run_dir`).
    let _lock = if lead { Some(crate::run_dir::RunLock::acquire(out_dir)?) } else { None };
    // What makes a checkpoint this run's: the model, the training config, the data.
    let model_json = weights.identity()?;
    let data_fingerprint = objective.fingerprint();
    let mut resume_warnings = if lead { checkpoint::remove_stale_tmp(&ckpt_root) } else { Vec::new() };
    // The other ranks read the checkpoints once rank 0 has cleared what a killed run left.
    world.barrier();
    let resumed = if resume == Resume::Auto {
        checkpoint::resume_newest(
            &ckpt_root,
            |dir, state| state.check_same_run(dir, &model_json, cfg, &data_fingerprint),
            |dir| {
                let model = weights.restore(dir, &ad)?;
                // Weights that are already NaN/inf would only stop the run again at once (as a
                // divergence), on every rerun: such a checkpoint is passed over like a corrupt one.
                let (bad, total) = non_finite_weights(&model);
                if bad > 0 {
                    return Err(TrainError::checkpoint(dir, format!("{bad} of its {total} weights are NaN or infinite")));
                }
                let path = dir.join(checkpoint::OPTIMIZER_FILE);
                let optim = if cfg.zero == 1 && world.size() > 1 {
                    // ZeRO-1: this rank's share of the moments only, never the whole state.
                    crate::zero::Shards::new(&model, world.rank(), world.size()).load_owned(optimizer_for(&model, cfg), &path)?
                } else {
                    optimizer_for(&model, cfg).load(&path).map_err(|e| TrainError::checkpoint(&path, format!("{}: {e}", path.display())))?
                };
                Ok((model, optim))
            },
            &mut resume_warnings,
        )?
    } else {
        None
    };
    let resumed_from = resumed.as_ref().map(|r| r.state.step);
    // Every rank must go on from the same step (a file system that shows the ranks different
    // checkpoints would otherwise train them apart).
    let (lo, hi) = world.min_max(resumed_from.map_or(0, |s| s as u64 + 1));
    if lo != hi {
        let says = |v: u64| if v == 0 { "starts fresh".to_string() } else { format!("resumes from step {}", v - 1) };
        return Err(TrainError::Distributed(format!(
            "{}: the ranks disagree on where to start: one {}, another {} (do all ranks see the same {}?)",
            world.describe(),
            says(lo),
            says(hi),
            ckpt_root.display()
        )));
    }
    let mut trainer = match resumed {
        Some(r) => {
            objective.restore(&r.state.sampler)?;
            let (model, optim) = r.loaded;
            Trainer::from_checkpoint(model, optim, cfg, &r.state)?
        }
        None => {
            // Fresh adapters draw from the device RNG: seeded, a run is reproducible.
            ad.seed(cfg.seed);
            Trainer::new(weights.build(&ad, cfg.seed)?, cfg)?
        }
    };
    let start_step = trainer.steps_done();
    let metrics_path = out_dir.join(checkpoint::METRICS_FILE);
    // Rank 0's: the other ranks' outcomes hold this run's steps only.
    let (mut history, mut metrics_file) = if lead {
        let history = read_metrics(&metrics_path, start_step)?;
        rewrite_metrics(&metrics_path, &history)?;
        let file = std::fs::OpenOptions::new().append(true).create(true).open(&metrics_path).map_err(|e| TrainError::io(&metrics_path, e))?;
        (history, Some(file))
    } else {
        (Vec::new(), None)
    };
    // What the run did not do without failing for it (pruning, the report).
    let mut warnings = Vec::new();

    for _ in start_step..cfg.max_steps {
        let mut m = trainer.step(objective)?;
        m.stage = objective.stage();
        let done = m.step;
        let last = done == cfg.max_steps;
        if (cfg.eval_every > 0 && done % cfg.eval_every == 0) || last {
            if let Some(v) = validate(objective, &trainer.valid_model(), cfg, &*world) {
                m.val_loss = Some(v);
                m.val_perplexity = Some(v.exp());
            }
        }
        if let Some(file) = metrics_file.as_mut() {
            writeln!(file, "{}", serde_json::to_string(&m).expect("metrics serialize")).map_err(|e| TrainError::io(&metrics_path, e))?;
            on_step(&m);
        }
        history.push(m);
        let checkpoint_now = (cfg.checkpoint_every > 0 && done % cfg.checkpoint_every == 0) || last;
        // What rank 0 saves must be every rank's weights: ranks that drifted apart (a
        // nondeterministic kernel, a bit flip) stop the run here instead of training on silently.
        if checkpoint_now && world.size() > 1 {
            crate::dist::check_same_weights(trainer.model(), &*world, done)?;
        }
        // ZeRO-1: every rank's share of the AdamW state, gathered to rank 0.
        let whole = if checkpoint_now { trainer.whole_optimizer()? } else { None };
        // Rank 0 writes after every rank has finished the step: the step's reduction waited
        // for all of them, and the weights are the same everywhere.
        if lead && checkpoint_now {
            // Never a checkpoint with NaN/inf weights (whatever let them through, e.g. a resumed
            // checkpoint written before this check existed).
            let (bad, total) = non_finite_weights(trainer.model());
            if bad > 0 {
                return Err(TrainError::NonFinite { step: done, what: format!("{bad} of {total} weights are NaN or infinite; the checkpoint was not written") });
            }
            let state = TrainerState {
                step: done,
                sampler: objective.state(),
                config: cfg.clone(),
                tokens_seen: trainer.tokens_seen(),
                loss_scaler: trainer.loss_scaler(),
                model: model_json.clone(),
                data: data_fingerprint.clone(),
            };
            let whole = whole.as_ref().expect("rank 0 holds the whole optimizer state");
            let write = |dir: &Path| {
                weights.save(trainer.model(), dir)?;
                whole.save(&dir.join(checkpoint::OPTIMIZER_FILE))?;
                let json = serde_json::to_string_pretty(&state).expect("state serializes");
                let path = dir.join(checkpoint::STATE_FILE);
                std::fs::write(&path, json).map_err(|e| TrainError::io(&path, e))
            };
            checkpoint::save(&ckpt_root, done, cfg.keep_checkpoints, write, &mut warnings)?;
        }
    }
    // The report is a convenience: it may not cost the finished run, nor replace a file of the
    // user's of the same name.
    if let Some(report) = objective.data_report().filter(|_| lead) {
        let path = out_dir.join(checkpoint::DATA_REPORT_FILE);
        match data_report_is_ours(&path) {
            Ok(()) => phi_core::weights::write_atomic(&path, serde_json::to_string_pretty(&report).expect("serializes").as_bytes())?,
            Err(why) => checkpoint::warn(&mut warnings, format!("data report not written: {why}")),
        }
    }
    Ok(TrainOutcome { model: trainer.valid_model(), metrics: history, resumed_from, resume_warnings, warnings })
}

/// `Ok` when `path` is absent or a data report of ours (a JSON object of exactly `stages` and
/// `tokens`, what [`Objective::data_report`] writes); otherwise why it is left alone.
fn data_report_is_ours(path: &Path) -> std::result::Result<(), String> {
    let text = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Ok(m) if m.file_type().is_file() => std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?,
        _ => return Err(format!("{} exists and is not a plain file; it is left as it is", path.display())),
    };
    let ours = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.as_object().map(|o| o.len() == 2 && o.contains_key("stages") && o.contains_key("tokens")))
        .unwrap_or(false);
    if ours { Ok(()) } else { Err(format!("{} is not a data report of phi's (a file of yours?); it is left as it is", path.display())) }
}

/// How many of the model's parameter values are NaN or infinite, and how many there are.
pub fn non_finite_weights<M: Module>(model: &M) -> (u64, u64) {
    struct Count {
        bad: Option<Tensor<1, Int>>,
        total: u64,
    }
    impl burn::module::ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let t = param.val();
            self.total += t.shape().num_elements() as u64;
            let bad = t.is_finite().bool_not().int().sum();
            self.bad = Some(match self.bad.take() {
                Some(b) => b + bad,
                None => bad,
            });
        }
    }
    let mut count = Count { bad: None, total: 0 };
    model.visit(&mut count);
    (count.bad.map_or(0, |b| b.into_scalar::<i64>() as u64), count.total)
}

/// Metrics already logged for steps `1..=up_to` (a resumed run drops what came after its
/// checkpoint). The file is rewritten next, so one that is not a metrics log of ours is an
/// error rather than lost; only a torn last line (a kill mid-write) is dropped.
fn read_metrics(path: &Path, up_to: usize) -> Result<Vec<StepMetrics>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::io(path, e)),
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<StepMetrics>(line) {
            Ok(m) if m.step <= up_to => out.push(m),
            Ok(_) => {}
            Err(_) if line.trim().is_empty() || (i + 1 == lines.len() && !text.ends_with('\n')) => {}
            Err(e) => {
                return Err(TrainError::OutputFolder {
                    path: path.to_path_buf(),
                    message: format!(
                        "{}: line {} is not a phi metrics line ({e}); it is not ours to overwrite (is the output folder one of yours?)",
                        path.display(),
                        i + 1
                    ),
                });
            }
        }
    }
    Ok(out)
}

fn rewrite_metrics(path: &Path, metrics: &[StepMetrics]) -> Result<()> {
    let text: String = metrics.iter().map(|m| serde_json::to_string(m).expect("metrics serialize") + "\n").collect();
    phi_core::weights::write_atomic(path, text.as_bytes())?;
    Ok(())
}

