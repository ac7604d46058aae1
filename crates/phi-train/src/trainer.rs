//! The step-based training loop: micro-batches → gradient accumulation → global-norm clipping →
//! AdamW step, with validation, metrics, checkpoints and exact resume.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use phi_core::{PhiConfig, PhiForCausalLM};
use phi_data::{Mixture, TokenDataset};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, TrainerState};
use crate::error::{Result, TrainError};
use crate::precision::{compute_copy, to_f32};
use crate::{AdamWSettings, LossScaler, LrSchedule, Precision, causal_lm_loss, grad_norm, scale_grads};

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
    /// Device peak FLOP/s, for the MFU figure (6N + attention FLOPs per token).
    pub peak_flops: f64,
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

fn invalid(key: &str, message: impl std::fmt::Display) -> TrainError {
    TrainError::Invalid(format!("training config `{key}`: {message}"))
}

impl TrainConfig {
    /// Checks every setting before any work is done; the error names the key. `model` is the
    /// architecture the run trains (for `seq_len ≤ max_position_embeddings`).
    pub fn validate(&self, model: &PhiConfig) -> Result<()> {
        for (key, v) in [("batch_size", self.batch_size), ("seq_len", self.seq_len), ("grad_accum", self.grad_accum), ("max_steps", self.max_steps)] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.seq_len > model.max_position_embeddings {
            return Err(invalid(
                "seq_len",
                format!("{} exceeds the model's max_position_embeddings ({})", self.seq_len, model.max_position_embeddings),
            ));
        }
        if self.batch_size.checked_mul(self.seq_len + 1).is_none_or(|t| t > MAX_BATCH_TOKENS) {
            return Err(invalid("batch_size", format!("{} sequences of {} tokens is more than {MAX_BATCH_TOKENS} tokens per micro-batch", self.batch_size, self.seq_len)));
        }
        if let Some(c) = self.clip_norm
            && !(c.is_finite() && c > 0.0)
        {
            return Err(invalid("clip_norm", format!("{c} must be a positive number (leave it out for no clipping)")));
        }
        let s = &self.schedule;
        if !(s.peak.is_finite() && s.peak > 0.0) {
            return Err(invalid("schedule.peak", format!("{} must be a positive finite learning rate", s.peak)));
        }
        if !(s.floor.is_finite() && s.floor >= 0.0 && s.floor <= s.peak) {
            return Err(invalid("schedule.floor", format!("{} must be finite, ≥ 0 and ≤ schedule.peak ({})", s.floor, s.peak)));
        }
        if s.decay != crate::Decay::Constant && s.total_steps <= s.warmup_steps {
            return Err(invalid(
                "schedule.total_steps",
                format!("{} must exceed schedule.warmup_steps ({}) for a decaying schedule: it is the step where the decay reaches the floor", s.total_steps, s.warmup_steps),
            ));
        }
        let o = &self.optimizer;
        for (key, b) in [("optimizer.beta1", o.beta1), ("optimizer.beta2", o.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(invalid(key, format!("{b} is not in [0, 1)")));
            }
        }
        if !(o.eps.is_finite() && o.eps > 0.0) {
            return Err(invalid("optimizer.eps", format!("{} must be a positive finite number", o.eps)));
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return Err(invalid("optimizer.weight_decay", format!("{} must be finite and ≥ 0", o.weight_decay)));
        }
        if !(self.peak_flops.is_finite() && self.peak_flops > 0.0) {
            return Err(invalid("peak_flops", format!("{} must be a positive finite number", self.peak_flops)));
        }
        let l = &self.loss_scaler;
        if !(l.scale.is_finite() && l.scale >= 1.0) {
            return Err(invalid("loss_scaler.scale", format!("{} must be finite and ≥ 1", l.scale)));
        }
        if l.growth_interval == 0 {
            return Err(invalid("loss_scaler.growth_interval", "must be at least 1"));
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
    pub mfu: f64,
    /// f16 runs: the loss scale this step used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// f16 runs: the gradients overflowed and the update was skipped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

/// A skipped step's loss or gradient norm was NaN/inf and is `null` in `metrics.jsonl`; reading
/// it back must keep the line (a resumed run would otherwise drop the skipped steps' history).
fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// How a run starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// Fresh weights from the config, seeded.
    Scratch,
    /// From a HF-format checkpoint folder (fine-tuning / continued pre-training).
    Pretrained(PathBuf),
    /// The newest complete checkpoint under `out_dir/checkpoints` (falling back past unreadable
    /// ones; one of another model, config or data is an error), else from scratch.
    ResumeAuto,
}

/// What a finished run returns.
pub struct TrainOutcome {
    pub model: PhiForCausalLM,
    pub metrics: Vec<StepMetrics>,
    pub resumed_from: Option<usize>,
    /// What resuming had to work around (an unreadable newest checkpoint it fell back from, a
    /// stale folder it left alone); also printed as warnings.
    pub resume_warnings: Vec<String>,
}

/// Training FLOPs per token: 6·N for the matmuls plus 6·L·T·d for attention (forward + backward).
pub fn flops_per_token(config: &PhiConfig, seq_len: usize) -> f64 {
    let n = config.num_parameters() as f64;
    let attn = (config.num_hidden_layers * seq_len * config.num_attention_heads * config.head_dim) as f64;
    6.0 * n + 6.0 * attn
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
    let device = model.device();
    let (mut total, mut count) = (0.0, 0usize);
    for rows in data.sequential_batches(seq_len, batch).take(max_batches.max(1)) {
        let b = rows.len() / (seq_len + 1);
        let ids = batch_tensor(&rows, b, seq_len + 1, &device);
        let loss = causal_lm_loss(model.forward(ids.clone()), ids).into_scalar::<f32>() as f64;
        total += loss * (b * seq_len) as f64;
        count += b * seq_len;
        on_batch(count / (batch * seq_len).max(1));
    }
    if count == 0 { f64::NAN } else { total / count as f64 }
}

fn batch_tensor(rows: &[u32], b: usize, n: usize, device: &Device) -> Tensor<2, Int> {
    let data: Vec<i64> = rows.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(data, [b, n]), device)
}

/// Runs training on windows drawn from `train_data` (one dataset or a weighted mixture),
/// validating on `val_data`. `out_dir` receives `metrics.jsonl`, `checkpoints/` and, at the
/// end, `loss.png`.
pub fn train(
    model_config: &PhiConfig,
    cfg: &TrainConfig,
    train_data: &Mixture,
    val_data: &TokenDataset,
    out_dir: &Path,
    start: Start,
    device: &Device,
    mut on_step: impl FnMut(&StepMetrics),
) -> Result<TrainOutcome> {
    cfg.validate(model_config)?;
    train_data.check(cfg.seq_len).map_err(|e| TrainError::Invalid(format!("training data: {e}")))?;
    let bound = train_data.vocab_bound().max(val_data.vocab_bound());
    if bound > model_config.vocab_size {
        return Err(TrainError::Invalid(format!(
            "the data uses token ids up to {} but the model's vocab_size is {}",
            bound - 1,
            model_config.vocab_size
        )));
    }
    let ad = if cfg.activation_checkpointing {
        device.clone().autodiff().gradient_checkpointing()
    } else {
        device.clone().autodiff()
    };
    let ckpt_root = out_dir.join("checkpoints");
    std::fs::create_dir_all(out_dir).map_err(|e| TrainError::io(out_dir, e))?;
    // What makes a checkpoint this run's: the model, the training config, the data.
    let model_json = model_config.to_hf_json();
    let data_fingerprint = checkpoint::data_fingerprint(train_data, val_data);
    let mut resume_warnings = checkpoint::remove_stale_tmp(&ckpt_root);
    for w in &resume_warnings {
        eprintln!("warning: {w}");
    }
    let build_optim = |model: &PhiForCausalLM| cfg.optimizer.build(model);
    let resumed = match &start {
        Start::ResumeAuto => checkpoint::resume_newest(
            &ckpt_root,
            |dir, state| state.check_same_run(dir, &model_json, cfg, &data_fingerprint),
            |dir| {
                let model = PhiForCausalLM::from_pretrained(dir, &ad)?;
                let path = dir.join("optimizer.bin");
                let optim = build_optim(&model).load(&path).map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))?;
                Ok((model, optim))
            },
            &mut resume_warnings,
        )?,
        _ => None,
    };
    let resume_dir = resumed.as_ref().map(|r| r.dir.clone());
    let (mut model, mut optim, state) = match (resumed, &start) {
        (Some(r), _) => (r.loaded.0, r.loaded.1, Some(r.state)),
        (None, Start::Pretrained(dir)) => {
            let model = PhiForCausalLM::from_pretrained(dir, &ad)?;
            let optim = build_optim(&model);
            (model, optim, None)
        }
        (None, _) => {
            let model = PhiForCausalLM::init(model_config.clone(), &ad, cfg.seed)?;
            let optim = build_optim(&model);
            (model, optim, None)
        }
    };
    // A checkpoint or pretrained folder brings its own config: check the context against it too.
    if model.config() != model_config {
        cfg.validate(model.config())?;
    }
    let start_step = state.as_ref().map_or(0, |s| s.step);
    let mut tokens_seen = state.as_ref().map_or(0, |s| s.tokens_seen);
    let mut sampler = match &state {
        Some(s) => train_data.resume(cfg.seq_len, &s.sampler).map_err(|e| TrainError::Invalid(format!("resuming the data sampler: {e}")))?,
        None => train_data.sampler(cfg.seq_len, cfg.seed),
    };
    let mut scaler: Option<LossScaler> = (cfg.precision == Precision::F16)
        .then(|| state.as_ref().and_then(|s| s.loss_scaler).unwrap_or(cfg.loss_scaler));
    let metrics_path = out_dir.join("metrics.jsonl");
    let mut history = read_metrics(&metrics_path, start_step)?;
    rewrite_metrics(&metrics_path, &history)?;
    let mut metrics_file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&metrics_path)
        .map_err(|e| TrainError::io(&metrics_path, e))?;

    let flops_tok = flops_per_token(model.config(), cfg.seq_len);
    let tokens_per_step = (cfg.batch_size * cfg.seq_len * cfg.grad_accum.max(1)) as u64;
    let mut consecutive_skips = 0usize;
    let mut last_update: Option<(usize, f64)> = None;
    for step in start_step..cfg.max_steps {
        let t0 = Instant::now();
        // Dropout draws from the device RNG: reseed per step so a resumed run draws the same.
        ad.seed(cfg.seed.wrapping_mul(1_000_003).wrapping_add(step as u64));
        let mut accum = GradientsAccumulator::<PhiForCausalLM>::new();
        let mut loss_sum = 0.0;
        let micro = cfg.grad_accum.max(1);
        let loss_scale = scaler.map(|s| s.scale);
        for _ in 0..micro {
            let rows = sampler.next_batch(cfg.batch_size);
            let ids = batch_tensor(&rows, cfg.batch_size, cfg.seq_len + 1, &ad);
            // f32: the model itself; bf16/f16: a cast copy whose gradients reach the f32 masters.
            let logits = match cfg.precision {
                Precision::F32 => model.forward(ids.clone()),
                p => to_f32(compute_copy(&model, p).forward(ids.clone())),
            };
            let loss = causal_lm_loss(logits, ids) / micro as f64;
            loss_sum += loss.clone().into_scalar::<f32>() as f64;
            let loss = match loss_scale {
                Some(s) => loss * s,
                None => loss,
            };
            accum.accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
        }
        let mut grads = accum.grads();
        if let Some(s) = loss_scale {
            scale_grads(&model, &mut grads, 1.0 / s);
        }
        let grad_norm = grad_norm(&model, &grads);
        let done = step + 1;
        let lr = cfg.schedule.lr(step);
        // An f16 overflow is the scaler's to handle (skip, halve) while the scale can still come
        // down; any other NaN/inf — in the loss, or in the gradients at the smallest scale — means
        // the run has diverged, and an update with it would poison every weight.
        let scale_can_drop = scaler.is_some_and(|s| s.scale > 1.0);
        let non_finite = if !loss_sum.is_finite() {
            Some(format!("the loss is {loss_sum}"))
        } else if !grad_norm.is_finite() && !scale_can_drop {
            Some(format!("the gradient norm is {grad_norm}"))
        } else {
            None
        };
        let mut apply = match scaler.as_mut() {
            Some(s) => s.update(grad_norm),
            None => true,
        };
        if let Some(what) = &non_finite {
            consecutive_skips += 1;
            let hint = match last_update {
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
                OnNonFinite::Skip if consecutive_skips > MAX_CONSECUTIVE_SKIPS => {
                    return Err(TrainError::Invalid(format!(
                        "step {done}: {what}{hint}; {consecutive_skips} non-finite steps in a row, training stopped (on_non_finite = \"skip\" allows {MAX_CONSECUTIVE_SKIPS})"
                    )));
                }
                OnNonFinite::Skip => apply = false,
            }
        }
        if apply {
            if let Some(max) = cfg.clip_norm {
                let coef = max / (grad_norm + 1e-6);
                if coef < 1.0 {
                    scale_grads(&model, &mut grads, coef);
                }
            }
            model = optim.step(lr, model, grads);
            consecutive_skips = 0;
            last_update = Some((done, lr));
            // A finite gradient at a huge learning rate can still push weights past f32's range:
            // catch it at the step that did it, before it reaches a checkpoint.
            let (bad, total) = non_finite_weights(&model);
            if bad > 0 {
                return Err(TrainError::Invalid(format!(
                    "step {done}: the update at lr {lr:e} made {bad} of {total} weights NaN or infinite; training stopped \
                     (no checkpoint holds these weights). Lower the learning rate (schedule.peak)"
                )));
            }
        }
        tokens_seen += tokens_per_step;
        let secs = t0.elapsed().as_secs_f64();
        let last = done == cfg.max_steps;
        let (val_loss, val_perplexity) = if (cfg.eval_every > 0 && done % cfg.eval_every == 0) || last {
            let v = evaluate(&model.valid(), val_data, cfg.seq_len, cfg.batch_size, cfg.eval_batches);
            (Some(v), Some(v.exp()))
        } else {
            (None, None)
        };
        let tokens_per_s = tokens_per_step as f64 / secs;
        let m = StepMetrics {
            step: done,
            loss: loss_sum,
            val_loss,
            val_perplexity,
            lr,
            grad_norm,
            tokens_per_s,
            mfu: tokens_per_s * flops_tok / cfg.peak_flops,
            loss_scale,
            skipped: !apply,
        };
        writeln!(metrics_file, "{}", serde_json::to_string(&m).expect("metrics serialize"))
            .map_err(|e| TrainError::io(&metrics_path, e))?;
        on_step(&m);
        history.push(m);
        if (cfg.checkpoint_every > 0 && done % cfg.checkpoint_every == 0) || last {
            // Never a checkpoint with NaN/inf weights (whatever let them through, e.g. a resumed
            // checkpoint written before this check existed).
            let (bad, total) = non_finite_weights(&model);
            if bad > 0 {
                return Err(TrainError::Invalid(format!(
                    "step {done}: {bad} of {total} weights are NaN or infinite; the checkpoint was not written"
                )));
            }
            let state = TrainerState {
                step: done,
                sampler: sampler.state(),
                config: cfg.clone(),
                tokens_seen,
                loss_scaler: scaler,
                model: model_json.clone(),
                data: data_fingerprint.clone(),
            };
            checkpoint::save(&ckpt_root, done, cfg.keep_checkpoints, |dir| {
                model.valid().save_pretrained(dir)?;
                let path = dir.join("optimizer.bin");
                optim.save(&path).map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))?;
                let json = serde_json::to_string_pretty(&state).expect("state serializes");
                let path = dir.join("trainer_state.json");
                std::fs::write(&path, json).map_err(|e| TrainError::io(&path, e))
            })?;
        }
    }
    // The curve is a convenience: a failure to draw it must not cost the finished run.
    let png = out_dir.join("loss.png");
    let title = format!("{} layers x {} hidden, {} tokens/step", model.config().num_hidden_layers, model.config().hidden_size, tokens_per_step);
    if let Err(e) = crate::plot::write_loss_curve(&history, &title, &png) {
        eprintln!("warning: loss curve not written: {e}");
    }
    Ok(TrainOutcome { model: model.valid(), metrics: history, resumed_from: resume_dir.map(|_| start_step), resume_warnings })
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
                return Err(TrainError::Invalid(format!(
                    "{}: line {} is not a phi metrics line ({e}); it is not ours to overwrite (is the output folder one of yours?)",
                    path.display(),
                    i + 1
                )));
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

