//! The training step, the same for every [`Objective`]: micro-batches → (scaled) backward →
//! accumulated gradients → non-finite guard → global-norm clipping → AdamW at the scheduled
//! learning rate. A [`Trainer`] starts fresh ([`Trainer::new`]) or from a checkpoint's saved
//! state ([`Trainer::from_checkpoint`]); [`crate::fit()`] runs it in a loop; `phi bench train`
//! times it.

use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::Device;
use phi_core::PhiForCausalLM;

use crate::checkpoint::TrainerState;
use crate::dist::Collective;
use crate::error::{Result, TrainError};
use crate::fit::{MAX_CONSECUTIVE_SKIPS, OnNonFinite, StepMetrics, non_finite_weights};
use crate::objective::{Forward, Objective};
use crate::precision::compute_copy;
use crate::zero::Shards;
use crate::{LossScaler, Precision, TrainConfig, grad_norm, scale_grads};

/// Steps of at most this many tokens (`batch_size × (seq_len + 1) × grad_accum`) hold their
/// micro-batches' ids on the host at once: 128 MiB of u32 ids, and 30 times the published recipes'
/// steps (phi-3-mini: 2 × 4096 × 512). Larger steps draw them one by one.
const PREDRAW_TOKENS: u64 = 1 << 25;

/// A model under training with its optimizer, loss scale and step count: everything a step
/// changes. Build it with [`Trainer::new`] from a model on an autodiff device, or with
/// [`Trainer::from_checkpoint`] to continue a saved run.
///
/// ```no_run
/// # use phi_train::*;
/// # fn demo(model: phi_core::PhiForCausalLM, cfg: &TrainConfig, data: &phi_data::Mixture, val: &phi_data::TokenDataset) -> Result<()> {
/// let mut objective = CausalLm::new(data, val, cfg.seq_len, cfg.seed)?;
/// let mut trainer = Trainer::new(model, cfg)?;
/// for _ in 0..cfg.max_steps {
///     let m = trainer.step(&mut objective)?;
///     tracing::info!(step = m.step, loss = m.loss, "trained");
/// }
/// assert_eq!(trainer.steps_done(), cfg.max_steps);
/// # Ok(()) }
/// ```
pub struct Trainer {
    model: Option<PhiForCausalLM>,
    optim: ModuleOptimizer,
    cfg: TrainConfig,
    device: Device,
    /// f16 runs: the dynamic loss scale.
    scaler: Option<LossScaler>,
    /// Optimizer steps done (also the index of the next step's learning rate).
    step: usize,
    tokens_seen: u64,
    consecutive_skips: usize,
    last_update: Option<(usize, f64)>,
    /// The peak MFU is measured against: the config's, else the device's (`None`: no MFU).
    peak_flops: Option<f64>,
    /// Steps of at most this many tokens draw their micro-batches up front (see [`Self::step`]).
    predraw_tokens: u64,
    /// The ranks this trainer shares each step with ([`crate::dist::world`] when it was built).
    world: Arc<dyn Collective>,
    /// ZeRO-1 (`cfg.zero = 1` with several ranks): who owns which parameter, set at the first
    /// step, when the optimizer keeps this rank's share of its state only.
    shards: Option<Shards>,
}

/// The whole optimizer state of a run, for a checkpoint ([`Trainer::whole_optimizer`]).
pub enum WholeOptimizer<'a> {
    /// The trainer's own optimizer: the whole state (an unsharded run).
    Here(&'a ModuleOptimizer),
    /// Every rank's shard gathered into one record, in [`ModuleOptimizer::save`]'s format.
    Gathered(burn::tensor::Bytes),
}

impl WholeOptimizer<'_> {
    /// Writes the state to `path` (a checkpoint's `optimizer.bin`), the same file either way.
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        match self {
            WholeOptimizer::Here(optim) => optim.save(path).map_err(|e| TrainError::checkpoint(path, format!("{}: {e}", path.display()))),
            WholeOptimizer::Gathered(bytes) => Ok(phi_core::weights::write_atomic(path, bytes)?),
        }
    }
}

impl Trainer {
    /// A trainer for `model` (on an autodiff device) with a fresh optimizer.
    pub fn new(model: PhiForCausalLM, cfg: &TrainConfig) -> Result<Self> {
        let optim = optimizer_for(&model, cfg);
        Self::with_optimizer(model, optim, cfg)
    }

    /// A trainer continuing a saved run: `model` and `optim` as the checkpoint holds them (its
    /// weights and AdamW moments, the model on an autodiff device), `state` its
    /// `trainer_state.json`. The next step is `state.step + 1`, at that step's learning rate;
    /// the token count goes on from `state.tokens_seen`, and an f16 run's loss scale from where
    /// it stood (a checkpoint of an f32/bf16 run, which has none, starts it at
    /// `cfg.loss_scaler`). `cfg` is this run's config (see
    /// [`crate::checkpoint::MAY_CHANGE_ON_RESUME`] for what may differ from the saved one).
    ///
    /// ```no_run
    /// # use phi_train::*;
    /// # fn demo(cfg: &TrainConfig, dir: &std::path::Path, device: &burn::tensor::Device) -> Result<()> {
    /// let state = checkpoint::read_state(dir)?;
    /// let model = phi_core::PhiForCausalLM::from_pretrained(dir, &device.clone().autodiff())?;
    /// let optim = optimizer_for(&model, cfg).load(&dir.join(checkpoint::OPTIMIZER_FILE)).map_err(|e| TrainError::Checkpoint { path: dir.join(checkpoint::OPTIMIZER_FILE), message: e.to_string() })?;
    /// let trainer = Trainer::from_checkpoint(model, optim, cfg, &state)?;
    /// assert_eq!(trainer.steps_done(), state.step);
    /// # Ok(()) }
    /// ```
    pub fn from_checkpoint(model: PhiForCausalLM, optim: ModuleOptimizer, cfg: &TrainConfig, state: &TrainerState) -> Result<Self> {
        let mut t = Self::with_optimizer(model, optim, cfg)?;
        t.step = state.step;
        t.tokens_seen = state.tokens_seen;
        if t.scaler.is_some() {
            t.scaler = state.loss_scaler.or(t.scaler);
        }
        Ok(t)
    }

    fn with_optimizer(model: PhiForCausalLM, optim: ModuleOptimizer, cfg: &TrainConfig) -> Result<Self> {
        cfg.validate(model.config())?;
        let device = model.device();
        if !device.is_autodiff() {
            return Err(TrainError::Device("a Trainer needs the model on an autodiff device (device.autodiff())".into()));
        }
        cfg.precision.check_device(&device)?;
        let scaler = (cfg.precision == Precision::F16).then_some(cfg.loss_scaler);
        let peak_flops = crate::mfu::device_peak(cfg.peak_flops, &device, cfg.precision);
        Ok(Trainer { model: Some(model), optim, cfg: cfg.clone(), device, scaler, step: 0, tokens_seen: 0, consecutive_skips: 0, last_update: None, peak_flops, predraw_tokens: PREDRAW_TOKENS, world: crate::dist::world(), shards: None })
    }

    /// This trainer shares its steps with the ranks of `world` instead of
    /// [`crate::dist::world`]'s (see [`Self::step`]): ranks that are threads of one process
    /// ([`crate::dist::LocalGroup`]), or a program's own communicator.
    pub fn with_world(mut self, world: Arc<dyn Collective>) -> Self {
        self.world = world;
        self
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

    /// The optimizer: with ZeRO-1 (after the first step), this rank's share of the state only
    /// (see [`Self::whole_optimizer`]).
    pub fn optimizer(&self) -> &ModuleOptimizer {
        &self.optim
    }

    /// The whole optimizer state, for a checkpoint: the trainer's own, or with ZeRO-1 every
    /// rank's shard gathered to rank 0 — then a collective every rank calls, `None` on the
    /// ranks other than 0.
    pub fn whole_optimizer(&self) -> Result<Option<WholeOptimizer<'_>>> {
        match &self.shards {
            None => Ok(Some(WholeOptimizer::Here(&self.optim))),
            Some(_) => Ok(crate::zero::gather_optimizer(&self.optim, &*self.world)?.map(WholeOptimizer::Gathered)),
        }
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Optimizer steps done so far.
    pub fn steps_done(&self) -> usize {
        self.step
    }

    /// Tokens the steps so far have put through the model (a resumed run's include the saved
    /// run's).
    pub fn tokens_seen(&self) -> u64 {
        self.tokens_seen
    }

    /// The f16 dynamic loss scale where it stands (`None` for f32/bf16 runs): what a checkpoint
    /// saves for [`Self::from_checkpoint`].
    pub fn loss_scaler(&self) -> Option<LossScaler> {
        self.scaler
    }

    /// One optimizer step on `cfg.grad_accum` micro-batches of `objective`. Returns the step's
    /// metrics (no validation: that is [`crate::fit()`]'s). A non-finite loss or gradient stops
    /// with an error naming the step (or skips the update, per `on_non_finite`); an update that
    /// makes weights non-finite is an error.
    ///
    /// With several ranks ([`crate::dist::world`] when the trainer was built), rank r runs
    /// micro-batches r, r+N, … of the step (every rank draws them all, so the data cursor stays
    /// global) and the gradients, the loss and the metrics are summed across ranks before the
    /// non-finite guard, clipping and the update, which every rank then applies alike.
    ///
    /// The objective's data must have passed [`Objective::check`] against this model and config
    /// ([`crate::fit()`] runs it): on an accelerator the forward pass does not read the token ids
    /// back to check them against the vocabulary.
    pub fn step<O: Objective>(&mut self, objective: &mut O) -> Result<StepMetrics> {
        let cfg = &self.cfg;
        let step = self.step;
        let done = step + 1;
        let t0 = Instant::now();
        let micro = cfg.grad_accum.max(1);
        // Data-parallel: every rank draws every micro-batch of the step (host data: the cursor
        // stays global, and so does Σw) and runs forward and backward on its own — i, i+N, … —
        // then the gradients, the loss and the metrics are summed across ranks once.
        let world = self.world.clone();
        let (rank, ranks) = (world.rank(), world.size());
        check_world(micro, ranks)?;
        if cfg.zero == 1 && ranks > 1 && self.shards.is_none() {
            // ZeRO-1 from here on: the optimizer keeps this rank's share of its state (all of
            // it was loaded, from a checkpoint; a fresh one has none yet).
            let model = self.model.as_ref().expect("model present");
            let shards = Shards::new(model, rank, ranks);
            let whole = std::mem::replace(&mut self.optim, optimizer_for(model, cfg));
            self.optim = shards.keep_owned(whole)?;
            self.shards = Some(shards);
        }
        // A step's loss is the mean over all its loss terms: micro-batch i counts w_i / Σw, so
        // Σw must be known at the first backward. A step of up to `predraw_tokens` tokens draws
        // its micro-batches first (host data, small) and divides by the known Σw. A larger one
        // draws them one at a time — nothing held grows with grad_accum — scaling each loss by
        // w_i / (w_0 · micro), w_0 the first non-zero weight: that is Σw itself, to the bit,
        // whenever the micro-batches weigh the same (every causal-LM and preference step); when
        // they differ (SFT's learned tokens) the gradients and the loss are corrected by
        // w_0 · micro / Σw once at the end.
        let step_tokens = (cfg.batch_size as u64).saturating_mul(cfg.seq_len as u64 + 1).saturating_mul(micro as u64);
        let predraw = step_tokens <= self.predraw_tokens;
        let loss_scale = self.scaler.map(|s| s.scale);
        let model = self.model.as_ref().expect("model present");
        let mut accum = GradientsAccumulator::<PhiForCausalLM>::new();
        let mut loss_sum = 0.0;
        let mut extra: Vec<(String, f64)> = Vec::new();
        let (mut total, mut tokens) = (0.0f64, 0u64);
        let mut drawn = std::collections::VecDeque::new();
        let mut reference = None::<f64>;
        if predraw {
            for i in 0..micro {
                let batch = objective.next_batch(cfg.batch_size);
                let w = objective.weight(&batch);
                total += w;
                tokens += objective.tokens(&batch) as u64;
                drawn.push_back((crate::dist::takes(i, rank, ranks).then_some(batch), w));
            }
            reference = Some(total);
        }
        for i in 0..micro {
            let (batch, w) = match drawn.pop_front() {
                Some(pair) => pair,
                None => {
                    let batch = objective.next_batch(cfg.batch_size);
                    let w = objective.weight(&batch);
                    total += w;
                    tokens += objective.tokens(&batch) as u64;
                    (crate::dist::takes(i, rank, ranks).then_some(batch), w)
                }
            };
            if w > 0.0 && reference.is_none() {
                reference = Some(w * micro as f64);
            }
            // Another rank's micro-batch.
            let Some(batch) = batch else { continue };
            // Dropout draws from the device RNG: seeded per step and micro-batch, so a resumed run
            // draws the same, and so does a micro-batch whichever rank runs it.
            self.device.seed(cfg.seed.wrapping_mul(1_000_003).wrapping_add(step as u64).wrapping_mul(1_000_033).wrapping_add(i as u64));
            // f32: the model itself; bf16/f16: a cast copy whose gradients reach the f32 masters.
            let copy;
            let forward = match cfg.precision {
                Precision::F32 => Forward::new(model),
                p => {
                    copy = compute_copy(model, p);
                    Forward::new(&copy)
                }
            };
            let out = objective.loss(&forward, &batch);
            // A batch without loss terms (all prompt, say) adds nothing, and no 0/0.
            let share = match reference {
                Some(r) if w > 0.0 => r / w,
                _ => f64::INFINITY,
            };
            let loss = out.loss / share;
            loss_sum += loss.clone().into_scalar::<f32>() as f64;
            for (name, value) in out.metrics {
                // Pre-drawn, each figure is weighted now; streamed, once Σw is known.
                let v = match (predraw, total > 0.0) {
                    (true, true) => value * w / total,
                    (true, false) => 0.0,
                    (false, _) => value * w,
                };
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
        if ranks > 1 {
            // Every rank's share summed: each rank's loss, metrics and gradients are already
            // weighted by w_i / Σw (the global Σw), so the sums are the step's.
            // An objective whose figures differ in number between ranks would make the sums
            // below mismatched buffers: refused by name instead.
            let (lo, hi) = world.min_max(extra.len() as u64);
            if lo != hi {
                return Err(TrainError::Distributed(format!(
                    "{}: step {done}: the ranks logged different numbers of metrics ({lo} and {hi}); an objective's metrics must be the same for every batch",
                    world.describe()
                )));
            }
            let mut sums: Vec<f64> = std::iter::once(loss_sum).chain(extra.iter().map(|e| e.1)).collect();
            world.sum_f64(&mut sums);
            loss_sum = sums[0];
            extra.iter_mut().zip(&sums[1..]).for_each(|(e, s)| e.1 = *s);
            match &self.shards {
                // Each gradient summed onto the rank that updates its parameter.
                Some(shards) => shards.reduce_grads(model, &mut grads, &*world)?,
                None => crate::dist::all_reduce_grads(model, &mut grads, &*world)?,
            }
        }
        if !predraw {
            for e in &mut extra {
                e.1 = if total > 0.0 { e.1 / total } else { 0.0 };
            }
        }
        // Σw / (w_0 · micro): exactly 1 when pre-drawn, and for micro-batches of equal weight.
        let correction = match reference {
            Some(r) if total > 0.0 && total != r => r / total,
            _ => 1.0,
        };
        loss_sum *= correction;
        if let Some(s) = loss_scale {
            scale_grads(model, &mut grads, 1.0 / s);
        }
        if correction != 1.0 {
            scale_grads(model, &mut grads, correction);
        }
        let grad_norm = match &self.shards {
            // Each rank holds its own parameters' gradients: the squares summed over ranks.
            Some(_) => {
                let mut squares = [grad_norm(model, &grads).powi(2)];
                world.sum_f64(&mut squares);
                // Through f32, as the unsharded sum of squares is taken: past f32's range the
                // norm is infinite either way (an f16 overflow to skip, or a divergence).
                (squares[0] as f32 as f64).sqrt()
            }
            None => grad_norm(model, &grads),
        };
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
                    return Err(TrainError::NonFinite {
                        step: done,
                        what: format!(
                            "{what}{hint}; training stopped (no checkpoint holds these weights). \
                             Lower the learning rate (schedule.peak) or set on_non_finite = \"skip\" to skip such steps"
                        ),
                    });
                }
                OnNonFinite::Skip if self.consecutive_skips > MAX_CONSECUTIVE_SKIPS => {
                    return Err(TrainError::NonFinite {
                        step: done,
                        what: format!(
                            "{what}{hint}; {} non-finite steps in a row, training stopped (on_non_finite = \"skip\" allows {MAX_CONSECUTIVE_SKIPS})",
                            self.consecutive_skips
                        ),
                    });
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
            let mut model = self.optim.step(lr, model, grads);
            if let Some(shards) = &self.shards {
                // Each rank updated its own parameters; every rank gets every update.
                model = shards.broadcast_weights(model, &*world)?;
            }
            self.consecutive_skips = 0;
            self.last_update = Some((done, lr));
            // A finite gradient at a huge learning rate can still push weights past f32's range:
            // catch it at the step that did it, before it reaches a checkpoint.
            let (bad, total) = non_finite_weights(&model);
            self.model = Some(model);
            if bad > 0 {
                return Err(TrainError::NonFinite {
                    step: done,
                    what: format!(
                        "the update at lr {lr:e} made {bad} of {total} weights NaN or infinite; training stopped \
                         (no checkpoint holds these weights). Lower the learning rate (schedule.peak)"
                    ),
                });
            }
        }
        self.step = done;
        self.tokens_seen += tokens;
        let tokens_per_s = tokens as f64 / t0.elapsed().as_secs_f64();
        let flops = crate::mfu::flops_per_token(self.model().config(), cfg.seq_len);
        Ok(StepMetrics {
            step: done,
            loss: loss_sum,
            val_loss: None,
            val_perplexity: None,
            lr,
            grad_norm,
            tokens_per_s,
            // Each of the N devices put through its 1/N of the tokens.
            mfu: crate::mfu::mfu(tokens_per_s / ranks as f64, flops, self.peak_flops),
            loss_scale,
            skipped: !apply,
            stage: None,
            extra: extra.into_iter().collect(),
        })
    }
}

/// A step's `micro` micro-batches shared by `ranks` processes: each must take as many.
pub(crate) fn check_world(micro: usize, ranks: usize) -> Result<()> {
    if micro % ranks != 0 {
        return Err(TrainError::Distributed(format!(
            "grad_accum = {micro} micro-batches per step cannot be shared by {ranks} processes: grad_accum must be a multiple of \
             the number of processes (the global batch, batch_size × grad_accum, is the same at any number of processes)"
        )));
    }
    Ok(())
}

/// AdamW for `model` as `cfg` sets it, biases/norms/embeddings exempt from decay if asked.
pub fn optimizer_for(model: &PhiForCausalLM, cfg: &TrainConfig) -> ModuleOptimizer {
    cfg.optimizer.build(model)
}


#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::tensor::Device;
    use phi_core::{PhiConfig, PhiForCausalLM};
    use phi_data::sft::SftExample;
    use phi_data::{Mixture, TokenDataset};

    use super::Trainer;
    use crate::objective::{CausalLm, Objective};
    use crate::{StepMetrics, TrainConfig};

    fn values(model: &PhiForCausalLM) -> Vec<f32> {
        struct All(Vec<f32>);
        impl burn::module::ModuleVisitor for All {
            fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<burn::tensor::Tensor<D>>) {
                self.0.extend(p.val().into_data().convert::<f32>().iter::<f32>());
            }
        }
        let mut all = All(Vec::new());
        model.visit(&mut all);
        all.0
    }

    /// Two steps of `objective` with the micro-batches drawn up front or one by one.
    fn run<O: Objective>(mut objective: impl FnMut() -> O, cfg: &TrainConfig) -> [(Vec<f32>, Vec<StepMetrics>); 2] {
        [u64::MAX, 0].map(|predraw_tokens| {
            let device = Device::default().autodiff();
            let model = PhiForCausalLM::init(PhiConfig::phi_family(32, 1, 4, 64, 0.5), &device, 3).unwrap();
            let mut trainer = Trainer::new(model, cfg).unwrap();
            trainer.predraw_tokens = predraw_tokens;
            let mut o = objective();
            let metrics = (0..2).map(|_| trainer.step(&mut o).unwrap()).collect::<Vec<_>>();
            (values(trainer.model()), metrics)
        })
    }

    fn cfg(batch_size: usize, grad_accum: usize) -> TrainConfig {
        TrainConfig { batch_size, seq_len: 8, grad_accum, max_steps: 2, clip_norm: None, ..TrainConfig::default() }
    }

    #[test]
    fn micro_batches_drawn_one_by_one_give_the_step_of_those_drawn_up_front() {
        // Causal LM: every micro-batch weighs the same, and the arithmetic is the same to the bit.
        let data = Mixture::single(TokenDataset::from_tokens((0..400u32).map(|i| i * 7 % 64).collect()));
        let val = TokenDataset::from_tokens((0..40u32).collect());
        let [(up_front, m1), (one_by_one, m2)] = run(|| CausalLm::new(&data, &val, 8, 5).unwrap(), &cfg(2, 3));
        assert_eq!(up_front, one_by_one);
        assert_eq!(m1.iter().map(|m| (m.loss, m.grad_norm)).collect::<Vec<_>>(), m2.iter().map(|m| (m.loss, m.grad_norm)).collect::<Vec<_>>());
        // SFT, micro-batches of 1 and of 5 learned tokens: corrected once Σw is known.
        let ex: Vec<SftExample> = [1usize, 5]
            .iter()
            .map(|&n| SftExample { ids: (1..=8).collect(), learn: (0..8).map(|t| t >= 8 - n).collect() })
            .collect();
        let [(up_front, m1), (one_by_one, m2)] = run(|| crate::sft_objective::Sft::new(&ex, &[], 0, 1).unwrap(), &cfg(1, 2));
        for (a, b) in m1.iter().zip(&m2) {
            assert!((a.loss - b.loss).abs() < 1e-6 && (a.grad_norm - b.grad_norm).abs() < 1e-6 * a.grad_norm, "{a:?} vs {b:?}");
        }
        let worst = up_front.iter().zip(&one_by_one).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "weights differ by {worst}");
    }

    /// Three steps of `objective` on `ranks` ranks (threads, [`crate::dist::LocalGroup`]), each
    /// rank's weights and metrics; `predraw_tokens` as in [`run`].
    fn data_parallel<O: Objective>(objective: &(impl Fn() -> O + Sync), cfg: &TrainConfig, ranks: usize, predraw_tokens: u64) -> Vec<(Vec<f32>, Vec<StepMetrics>)> {
        let group = crate::dist::LocalGroup::new(ranks);
        std::thread::scope(|s| {
            let handles: Vec<_> = group
                .into_iter()
                .map(|world| {
                    s.spawn(move || {
                        let device = Device::default().autodiff();
                        let model = PhiForCausalLM::init(PhiConfig::phi_family(32, 1, 4, 64, 0.5), &device, 3).unwrap();
                        let mut trainer = Trainer::new(model, cfg).unwrap().with_world(world);
                        trainer.predraw_tokens = predraw_tokens;
                        let mut o = objective();
                        let metrics = (0..3).map(|_| trainer.step(&mut o).unwrap()).collect::<Vec<_>>();
                        (values(trainer.model()), metrics)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// `objective` on two ranks against one, micro-batches drawn up front and one by one.
    fn same_on_two_ranks<O: Objective>(name: &str, objective: impl Fn() -> O + Sync, cfg: &TrainConfig) {
        for predraw in [u64::MAX, 0] {
            let one = data_parallel(&objective, cfg, 1, predraw).remove(0);
            let two = data_parallel(&objective, cfg, 2, predraw);
            // The ranks apply the same update: the same weights, to the bit.
            assert_eq!(two[0].0, two[1].0, "{name}: the ranks' weights differ");
            let close = |x: f64, y: f64| (x - y).abs() <= 1e-5 * x.abs().max(y.abs()).max(1e-6);
            for (a, b) in one.1.iter().zip(&two[0].1) {
                assert!(a.step == b.step && close(a.loss, b.loss) && close(a.grad_norm, b.grad_norm), "{name}: {a:?} vs {b:?}");
            }
            let worst = one.0.iter().zip(&two[0].0).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= 1e-5, "{name}: one rank and two differ by {worst}");
        }
    }

    #[test]
    fn two_ranks_sharing_each_step_train_as_one() {
        let data = Mixture::single(TokenDataset::from_tokens((0..400u32).map(|i| i * 7 % 64).collect()));
        let val = TokenDataset::from_tokens((0..40u32).collect());
        same_on_two_ranks("causal lm", || CausalLm::new(&data, &val, 8, 5).unwrap(), &cfg(2, 4));
        // SFT: micro-batches of different weights (1, 5, 3 and 2 learned tokens).
        let ex: Vec<SftExample> = [1usize, 5, 3, 2]
            .iter()
            .map(|&n| SftExample { ids: (1..=8).collect(), learn: (0..8).map(|t| t >= 8 - n).collect() })
            .collect();
        same_on_two_ranks("sft", || crate::sft_objective::Sft::new(&ex, &[], 0, 1).unwrap(), &cfg(1, 4));
    }

    /// Each (name, values) of the optimizer record in `bytes`, sorted by name.
    fn record(bytes: &[u8]) -> Vec<(String, Vec<f32>)> {
        let reader = burn_pack::Reader::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes.to_vec())).unwrap();
        let mut out: Vec<(String, Vec<f32>)> = reader
            .into_tensors()
            .unwrap()
            .into_iter()
            .map(|t| {
                let (name, _, _, _, b) = t.into_parts().unwrap();
                (name, b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn zero_1_trains_as_one_rank_and_each_rank_keeps_its_share_of_the_optimizer_state() {
        let data = Mixture::single(TokenDataset::from_tokens((0..400u32).map(|i| i * 7 % 64).collect()));
        let val = TokenDataset::from_tokens((0..40u32).collect());
        let sharded = TrainConfig { zero: 1, ..cfg(2, 4) };
        same_on_two_ranks("causal lm, zero 1", || CausalLm::new(&data, &val, 8, 5).unwrap(), &sharded);
        let ex: Vec<SftExample> = [1usize, 5, 3, 2]
            .iter()
            .map(|&n| SftExample { ids: (1..=8).collect(), learn: (0..8).map(|t| t >= 8 - n).collect() })
            .collect();
        same_on_two_ranks("sft, zero 1", || crate::sft_objective::Sft::new(&ex, &[], 0, 1).unwrap(), &TrainConfig { zero: 1, ..cfg(1, 4) });

        // The optimizer state: one rank's whole, against two ranks' shards.
        let train = |world: std::sync::Arc<dyn crate::dist::Collective>| {
            let device = Device::default().autodiff();
            let model = PhiForCausalLM::init(PhiConfig::phi_family(32, 1, 4, 64, 0.5), &device, 3).unwrap();
            let mut trainer = Trainer::new(model, &sharded).unwrap().with_world(world);
            let mut o = CausalLm::new(&data, &val, 8, 5).unwrap();
            (0..3).for_each(|_| drop(trainer.step(&mut o).unwrap()));
            let own = record(&trainer.optimizer().into_bytes().unwrap());
            let whole = match trainer.whole_optimizer().unwrap() {
                Some(super::WholeOptimizer::Gathered(bytes)) => Some(record(&bytes)),
                Some(super::WholeOptimizer::Here(o)) => Some(record(&o.into_bytes().unwrap())),
                None => None,
            };
            (own, whole)
        };
        let (alone, alone_whole) = train(crate::dist::LocalGroup::new(1).remove(0));
        assert_eq!(alone_whole.as_ref(), Some(&alone), "one rank: its own state is the whole");
        let two: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = crate::dist::LocalGroup::new(2).into_iter().map(|w| s.spawn(|| train(w))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let values = |r: &[(String, Vec<f32>)]| r.iter().map(|(_, v)| v.len()).sum::<usize>();
        let total = values(&alone);
        for (rank, (own, _)) in two.iter().enumerate() {
            // A share each, about half (the parameters are not all the same size).
            assert!(values(own) > 0 && values(own) < total * 3 / 4, "rank {rank} holds {} of {total} state values", values(own));
        }
        assert_eq!(values(&two[0].0) + values(&two[1].0), total, "the shards cover the state once");
        assert!(two[1].1.is_none(), "only rank 0 gathers");
        let gathered = two[0].1.as_ref().expect("rank 0 gathers");
        assert_eq!(gathered.iter().map(|t| &t.0).collect::<Vec<_>>(), alone.iter().map(|t| &t.0).collect::<Vec<_>>());
        for ((name, a), (_, b)) in alone.iter().zip(gathered) {
            // Against the tensor's scale: an element near zero differs relatively in the last
            // bits of a sum taken in another order.
            let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
            let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(worst <= 1e-5 * scale, "{name}: the gathered state differs from one rank's by {worst} (the largest value is {scale})");
        }
    }

    #[test]
    fn a_step_the_ranks_cannot_share_evenly_is_an_error_naming_both_numbers() {
        let data = Mixture::single(TokenDataset::from_tokens((0..400u32).map(|i| i * 7 % 64).collect()));
        let val = TokenDataset::from_tokens((0..40u32).collect());
        let world = crate::dist::LocalGroup::new(2).remove(0);
        let device = Device::default().autodiff();
        let model = PhiForCausalLM::init(PhiConfig::phi_family(32, 1, 4, 64, 0.5), &device, 3).unwrap();
        let mut trainer = Trainer::new(model, &cfg(2, 3)).unwrap().with_world(world);
        let e = trainer.step(&mut CausalLm::new(&data, &val, 8, 5).unwrap()).err().expect("3 micro-batches on 2 ranks");
        assert!(matches!(&e, crate::TrainError::Distributed(m) if m.contains("grad_accum = 3") && m.contains("2 processes")), "{e}");
    }
}
