//! The training step, the same for every [`Objective`]: micro-batches → (scaled) backward →
//! accumulated gradients → non-finite guard → global-norm clipping → AdamW at the scheduled
//! learning rate. [`crate::fit`] runs it in a loop; `phi bench train` times it.

use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::Device;
use phi_core::PhiForCausalLM;

use crate::error::{Result, TrainError};
use crate::objective::{Forward, Objective};
use crate::precision::compute_copy;
use crate::trainer::{MAX_CONSECUTIVE_SKIPS, OnNonFinite, StepMetrics, flops_per_token, non_finite_weights};
use crate::{LossScaler, Precision, TrainConfig, grad_norm, scale_grads};

/// A model under training with its optimizer, loss scale and step count: everything a step
/// changes. Build it with [`Trainer::new`] from a model on an autodiff device.
///
/// ```no_run
/// # use phi_train::*;
/// # fn demo(model: phi_core::PhiForCausalLM, cfg: &TrainConfig, data: &phi_data::Mixture, val: &phi_data::TokenDataset) -> Result<()> {
/// let mut objective = CausalLm::new(data, val, cfg.seq_len, cfg.seed)?;
/// let mut trainer = Trainer::new(model, cfg)?;
/// for _ in 0..cfg.max_steps {
///     let m = trainer.step(&mut objective)?;
///     println!("step {} loss {:.3}", m.step, m.loss);
/// }
/// # Ok(()) }
/// ```
pub struct Trainer {
    model: Option<PhiForCausalLM>,
    optim: ModuleOptimizer,
    cfg: TrainConfig,
    device: Device,
    /// f16 runs: the dynamic loss scale.
    pub(crate) scaler: Option<LossScaler>,
    /// Optimizer steps done (also the index of the next step's learning rate).
    pub(crate) step: usize,
    pub(crate) tokens_seen: u64,
    consecutive_skips: usize,
    last_update: Option<(usize, f64)>,
}

impl Trainer {
    /// A trainer for `model` (on an autodiff device) with a fresh optimizer.
    pub fn new(model: PhiForCausalLM, cfg: &TrainConfig) -> Result<Self> {
        let optim = optimizer_for(&model, cfg);
        Self::with_optimizer(model, optim, cfg)
    }

    /// A trainer continuing with `optim` (its moments loaded from a checkpoint).
    pub fn with_optimizer(model: PhiForCausalLM, optim: ModuleOptimizer, cfg: &TrainConfig) -> Result<Self> {
        cfg.validate(model.config())?;
        let device = model.device();
        if !device.is_autodiff() {
            return Err(TrainError::Invalid("a Trainer needs the model on an autodiff device (device.autodiff())".into()));
        }
        cfg.precision.check_device(&device)?;
        let scaler = (cfg.precision == Precision::F16).then_some(cfg.loss_scaler);
        Ok(Trainer { model: Some(model), optim, cfg: cfg.clone(), device, scaler, step: 0, tokens_seen: 0, consecutive_skips: 0, last_update: None })
    }

    /// The model as it stands (on the autodiff device).
    pub fn model(&self) -> &PhiForCausalLM {
        self.model.as_ref().expect("the model is only out during an update")
    }

    /// The model without autodiff, for evaluation and generation.
    pub fn valid_model(&self) -> PhiForCausalLM {
        self.model().valid()
    }

    pub fn into_model(self) -> PhiForCausalLM {
        self.model.expect("the model is only out during an update")
    }

    pub fn optimizer(&self) -> &ModuleOptimizer {
        &self.optim
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Optimizer steps done so far.
    pub fn steps_done(&self) -> usize {
        self.step
    }

    /// One optimizer step on `cfg.grad_accum` micro-batches of `objective`. Returns the step's
    /// metrics (no validation: that is [`crate::fit`]'s). A non-finite loss or gradient stops
    /// with an error naming the step (or skips the update, per `on_non_finite`); an update that
    /// makes weights non-finite is an error.
    pub fn step<O: Objective>(&mut self, objective: &mut O) -> Result<StepMetrics> {
        let cfg = &self.cfg;
        let step = self.step;
        let done = step + 1;
        let t0 = Instant::now();
        // Dropout draws from the device RNG: reseed per step so a resumed run draws the same.
        self.device.seed(cfg.seed.wrapping_mul(1_000_003).wrapping_add(step as u64));
        let micro = cfg.grad_accum.max(1);
        // All micro-batches first (host data): each one's share of the step is its weight over
        // the step's total, so the total must be known before the first backward.
        let batches: Vec<O::Batch> = (0..micro).map(|_| objective.next_batch(cfg.batch_size)).collect();
        let weights: Vec<f64> = batches.iter().map(|b| objective.weight(b)).collect();
        let total: f64 = weights.iter().sum();
        let tokens: u64 = batches.iter().map(|b| objective.tokens(b) as u64).sum();
        let loss_scale = self.scaler.map(|s| s.scale);
        let model = self.model.as_ref().expect("model present");
        let mut accum = GradientsAccumulator::<PhiForCausalLM>::new();
        let mut loss_sum = 0.0;
        let mut extra: Vec<(String, f64)> = Vec::new();
        for (batch, &w) in batches.iter().zip(&weights) {
            // f32: the model itself; bf16/f16: a cast copy whose gradients reach the f32 masters.
            let copy;
            let forward = match cfg.precision {
                Precision::F32 => Forward::new(model),
                p => {
                    copy = compute_copy(model, p);
                    Forward::new(&copy)
                }
            };
            let out = objective.loss(&forward, batch);
            // A batch without loss terms (all prompt, say) adds nothing, and no 0/0.
            let share = if w > 0.0 { total / w } else { f64::INFINITY };
            let loss = out.loss / share;
            loss_sum += loss.clone().into_scalar::<f32>() as f64;
            for (name, value) in out.metrics {
                let v = if total > 0.0 { value * w / total } else { 0.0 };
                match extra.iter_mut().find(|(n, _)| *n == name) {
                    Some(e) => e.1 += v,
                    None => extra.push((name, v)),
                }
            }
            let loss = match loss_scale {
                Some(s) => loss * s,
                None => loss,
            };
            accum.accumulate(model, GradientsParams::from_grads(loss.backward(), model));
        }
        let mut grads = accum.grads();
        if let Some(s) = loss_scale {
            scale_grads(model, &mut grads, 1.0 / s);
        }
        let grad_norm = grad_norm(model, &grads);
        let lr = cfg.schedule.lr(step);
        // An f16 overflow is the scaler's to handle (skip, halve) while the scale can still come
        // down; any other NaN/inf — in the loss, or in the gradients at the smallest scale — means
        // the run has diverged, and an update with it would poison every weight.
        let scale_can_drop = self.scaler.is_some_and(|s| s.scale > 1.0);
        let non_finite = if !loss_sum.is_finite() {
            Some(format!("the loss is {loss_sum}"))
        } else if !grad_norm.is_finite() && !scale_can_drop {
            Some(format!("the gradient norm is {grad_norm}"))
        } else {
            None
        };
        let mut apply = match self.scaler.as_mut() {
            Some(s) => s.update(grad_norm),
            None => true,
        };
        if let Some(what) = &non_finite {
            self.consecutive_skips += 1;
            let hint = match self.last_update {
                Some((at, lr)) => format!(" (the weights are from step {at}'s update, at lr {lr:e})"),
                None => String::new(),
            };
            match cfg.on_non_finite {
                OnNonFinite::Stop => {
                    return Err(TrainError::Invalid(format!(
                        "step {done}: {what}{hint}; training stopped (no checkpoint holds these weights). \
                         Lower the learning rate (schedule.peak) or set on_non_finite = \"skip\" to skip such steps"
                    )));
                }
                OnNonFinite::Skip if self.consecutive_skips > MAX_CONSECUTIVE_SKIPS => {
                    return Err(TrainError::Invalid(format!(
                        "step {done}: {what}{hint}; {} non-finite steps in a row, training stopped (on_non_finite = \"skip\" allows {MAX_CONSECUTIVE_SKIPS})",
                        self.consecutive_skips
                    )));
                }
                OnNonFinite::Skip => apply = false,
            }
        }
        if apply {
            if let Some(max) = cfg.clip_norm {
                let coef = max / (grad_norm + 1e-6);
                if coef < 1.0 {
                    scale_grads(model, &mut grads, coef);
                }
            }
            let model = self.model.take().expect("model present");
            let model = self.optim.step(lr, model, grads);
            self.consecutive_skips = 0;
            self.last_update = Some((done, lr));
            // A finite gradient at a huge learning rate can still push weights past f32's range:
            // catch it at the step that did it, before it reaches a checkpoint.
            let (bad, total) = non_finite_weights(&model);
            self.model = Some(model);
            if bad > 0 {
                return Err(TrainError::Invalid(format!(
                    "step {done}: the update at lr {lr:e} made {bad} of {total} weights NaN or infinite; training stopped \
                     (no checkpoint holds these weights). Lower the learning rate (schedule.peak)"
                )));
            }
        }
        self.step = done;
        self.tokens_seen += tokens;
        let tokens_per_s = tokens as f64 / t0.elapsed().as_secs_f64();
        let flops = flops_per_token(self.model().config(), cfg.seq_len);
        Ok(StepMetrics {
            step: done,
            loss: loss_sum,
            val_loss: None,
            val_perplexity: None,
            lr,
            grad_norm,
            tokens_per_s,
            mfu: tokens_per_s * flops / cfg.peak_flops,
            loss_scale,
            skipped: !apply,
            stage: None,
            extra: extra.into_iter().collect(),
        })
    }
}

/// AdamW for `model` as `cfg` sets it, biases/norms/embeddings exempt from decay if asked.
pub fn optimizer_for(model: &PhiForCausalLM, cfg: &TrainConfig) -> ModuleOptimizer {
    cfg.optimizer.build(model)
}

