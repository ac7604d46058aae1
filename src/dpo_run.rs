//! The `phi dpo` run — preference tuning of a model folder on a JSONL file of pairs — and
//! `phi eval dpo`, the loss and TRL's metrics of a policy against a reference over such a file.
//! This is the command's orchestration; the DPO objective it trains with is
//! [`phi_train::preference::Dpo`], and the pairs are parsed by [`phi_data::pairs`].
//!
//! [`prepare`] loads and checks everything a run needs (data, models, output folders) and says
//! what it found; [`train`] runs it through [`phi_train::fit()`] with the [`Dpo`] objective,
//! draws the loss curve and writes the result (a HF model folder, or a PEFT adapter plus its
//! merged model).
//!
//! ```no_run
//! use phi::dpo_run::{DpoRunOptions, prepare, train};
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let opts = DpoRunOptions { steps: 100, lr: 5e-6, ..DpoRunOptions::new("runs/sft/merged", "pairs.jsonl", "runs/dpo") };
//! let run = prepare(&opts)?;
//! tracing::info!(pairs = run.report.pairs, skipped = run.report.skipped.len(), truncated = run.report.truncated, "pairs");
//! let done = train(&run, |m| tracing::info!(step = m.step, loss = m.loss, accuracy = m.extra["rewards/accuracies"], "dpo"))?;
//! if let (Some(before), Some(after)) = (done.before, done.after) {
//!     assert!(after.rewards_margins.is_finite() && before.rewards_margins.is_finite());
//! }
//! # Ok(()) }
//! ```

use std::error::Error;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use phi_core::device::Backend;
use phi_core::{PhiConfig, PhiForCausalLM};

use phi_train::lora::{self, BaseQuantization, LoraConfig};
use phi_train::preference::{Collate, Dpo, PairEncoder, PairReport, PreferenceLoss, PreferenceMetrics, PreferenceSettings, TokenPair, Truncation, check_pairs, evaluate_pairs, load_pairs};
use phi_train::checkpoint::{CHECKPOINTS_DIR, CONFIG_FILE, TOKENIZER_FILE};
use phi_train::{AdamWSettings, Adapter, Decay, LrSchedule, Precision, Resume, StepMetrics, TrainConfig, TrainOutcome, Weights};

type Res<T> = std::result::Result<T, Box<dyn Error>>;

/// What a preference run trains.
#[derive(Debug, Clone)]
pub enum Tuning {
    /// Every parameter.
    Full,
    /// A fresh LoRA adapter on the frozen policy. An empty `target_modules` takes the policy
    /// family's default targets ([`phi_core::lora::default_targets`]), as PEFT's
    /// `target_modules=None` takes the model type's.
    Lora(LoraConfig),
    /// A PEFT adapter folder, trained further (the policy folder is its base).
    Adapter(PathBuf),
}

/// How to run `phi dpo`.
#[derive(Debug, Clone)]
pub struct DpoRunOptions {
    /// The policy's HF model folder (the SFT model; the base of a LoRA run).
    pub policy: PathBuf,
    pub tuning: Tuning,
    /// QLoRA-style: quantize the frozen base projections of a LoRA run.
    pub quantize: Option<BaseQuantization>,
    /// The reference model folder; `None`: the policy as it starts (TRL's default — with a
    /// loaded adapter that is the adapter as loaded, with a fresh one the base).
    pub reference: Option<PathBuf>,
    /// Keep the reference in memory and run it on every batch instead of scoring every pair
    /// once before training (the default, TRL's `precompute_ref_log_probs`).
    pub live_reference: bool,
    /// JSONL pairs (token ids, or text / message lists through the policy's tokenizer).
    pub data: PathBuf,
    /// Held-out pairs; `None`: the last `holdout` fraction of `data`.
    pub val_data: Option<PathBuf>,
    pub holdout: f64,
    pub beta: f64,
    pub loss: PreferenceLoss,
    /// Rows (prompt + completion) are cut to this many tokens (default: the model's context).
    pub max_length: Option<usize>,
    pub truncation: Truncation,
    pub steps: usize,
    pub lr: f64,
    pub warmup_steps: usize,
    /// Pairs per micro-batch.
    pub batch_size: usize,
    pub grad_accum: usize,
    /// Global gradient-norm clip (0: none).
    pub clip: f64,
    pub precision: Precision,
    pub eval_every: usize,
    pub checkpoint_every: usize,
    /// Start over: remove this run's checkpoints (only ours) instead of resuming from them.
    pub fresh: bool,
    pub seed: u64,
    pub out: PathBuf,
    pub device: Backend,
    /// ZeRO stage of a data-parallel run (see `TrainConfig::zero`).
    pub zero: u8,
}

impl DpoRunOptions {
    /// TRL's defaults (sigmoid, β 0.1, lr 1e-6, linear decay, clip 1.0), full-parameter.
    pub fn new(policy: impl Into<PathBuf>, data: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        DpoRunOptions {
            policy: policy.into(),
            tuning: Tuning::Full,
            quantize: None,
            reference: None,
            live_reference: false,
            data: data.into(),
            val_data: None,
            holdout: 0.1,
            beta: 0.1,
            loss: PreferenceLoss::Sigmoid { label_smoothing: 0.0 },
            max_length: None,
            truncation: Truncation::KeepStart,
            steps: 100,
            lr: 1e-6,
            warmup_steps: 0,
            batch_size: 8,
            grad_accum: 1,
            clip: 1.0,
            precision: Precision::F32,
            eval_every: 0,
            checkpoint_every: 50,
            fresh: false,
            seed: 42,
            out: out.into(),
            device: Backend::Cpu,
            zero: 0,
        }
    }

    fn check(&self) -> std::result::Result<(), String> {
        for (flag, v) in [("--steps", self.steps), ("--batch-size", self.batch_size), ("--grad-accum", self.grad_accum)] {
            if v == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!("--lr {} must be a positive finite number", self.lr));
        }
        if !(self.clip.is_finite() && self.clip >= 0.0) {
            return Err(format!("--clip {} must be ≥ 0 (0: no clipping)", self.clip));
        }
        if self.warmup_steps >= self.steps {
            return Err(format!("--warmup-steps {} must be below --steps {}", self.warmup_steps, self.steps));
        }
        if !(0.0..0.5).contains(&self.holdout) {
            return Err(format!("--holdout {} must be in [0, 0.5)", self.holdout));
        }
        if let Tuning::Lora(c) = &self.tuning
            && (c.r == 0 || !(c.lora_alpha.is_finite() && c.lora_alpha > 0.0))
        {
            return Err(format!("LoRA rank {} and alpha {} must be positive", c.r, c.lora_alpha));
        }
        if self.quantize.is_some() && matches!(self.tuning, Tuning::Full) {
            return Err("--quantize needs LoRA (--lora or --adapter): a quantized base cannot be trained in full".into());
        }
        if !self.loss.needs_reference() && (self.reference.is_some() || self.live_reference) {
            return Err(format!("the {} loss is reference-free: --reference and --live-reference do not apply", self.loss.name()));
        }
        // What the run writes under --out (checkpoints, metrics, the outputs at its end) may
        // not reach what it reads.
        let adapter = match &self.tuning {
            Tuning::Adapter(dir) => Some(("--adapter", dir.as_path())),
            _ => None,
        };
        let inputs: Vec<(&str, &Path)> = [
            Some(("--policy", self.policy.as_path())),
            self.reference.as_deref().map(|p| ("--reference", p)),
            Some(("--data", self.data.as_path())),
            self.val_data.as_deref().map(|p| ("--val-data", p)),
            adapter,
        ]
        .into_iter()
        .flatten()
        .collect();
        phi_train::run_dir::check_inputs(&inputs, ("--out", &self.out), output_names(&self.tuning))
    }

    /// The weights to train; `family` (the policy's) fills a fresh adapter's default targets.
    fn weights(&self, family: phi_core::Family) -> Weights {
        match &self.tuning {
            Tuning::Full => Weights::Pretrained(self.policy.clone()),
            Tuning::Lora(c) => {
                let mut c = c.clone();
                if c.target_modules.is_empty() {
                    c.target_modules = phi_core::lora::default_targets(family);
                }
                Weights::Lora { base: self.policy.clone(), adapter: Adapter::Fresh(c), quantize: self.quantize }
            }
            Tuning::Adapter(dir) => Weights::Lora { base: self.policy.clone(), adapter: Adapter::Load(dir.clone()), quantize: self.quantize },
        }
    }
}

/// A checked run, ready to [`train`].
pub struct Prepared {
    pub opts: DpoRunOptions,
    pub settings: PreferenceSettings,
    pub pairs: Vec<TokenPair>,
    pub validation: Vec<TokenPair>,
    /// What loading `data` did (and `val_data`'s report, when given).
    pub report: PairReport,
    pub val_report: Option<PairReport>,
    pub model: PhiConfig,
    pub weights: Weights,
    pub train: TrainConfig,
}

/// The settings, pad and truncation a model folder's pairs are batched with.
fn settings_for(model: &PhiConfig, encoder: Option<&PairEncoder>, beta: f64, loss: PreferenceLoss, max_length: Option<usize>, truncation: Truncation) -> PreferenceSettings {
    // Padding is masked out of every sum; any id the model has will do.
    let pad = model.pad_token_id.or(encoder.map(|e| e.eos)).or(model.eos_token_ids.first().copied()).unwrap_or(0);
    let max_length = Some(max_length.unwrap_or(model.max_position_embeddings));
    PreferenceSettings { beta, loss, collate: Collate { pad, max_length, truncation } }
}

/// Loads pairs from `path` for `model`, naming the file in every error.
fn load(path: &Path, encoder: Option<&PairEncoder>, settings: &PreferenceSettings, model: &PhiConfig) -> Res<(Vec<TokenPair>, PairReport)> {
    let (pairs, report) = load_pairs(path, encoder, &settings.collate)?;
    if pairs.is_empty() {
        return Err(format!("{}: no usable preference pairs ({} skipped)", path.display(), report.skipped.len()).into());
    }
    check_pairs(&pairs, &settings.collate, model).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((pairs, report))
}

/// Loads and checks what a run needs; nothing is trained or written yet.
pub fn prepare(opts: &DpoRunOptions) -> Res<Prepared> {
    opts.check()?;
    for sub in output_names(&opts.tuning) {
        crate::export::check_writable(&opts.out.join(sub))?;
    }
    let model = PhiConfig::from_file(opts.policy.join(CONFIG_FILE))?;
    let encoder = PairEncoder::for_model(&opts.policy, &model)?;
    let settings = settings_for(&model, encoder.as_ref(), opts.beta, opts.loss, opts.max_length, opts.truncation);
    settings.validate()?;
    if let Some(m) = opts.max_length
        && m > model.max_position_embeddings
    {
        return Err(format!("--max-length {m} exceeds the model's max_position_embeddings ({})", model.max_position_embeddings).into());
    }
    let (mut pairs, report) = load(&opts.data, encoder.as_ref(), &settings, &model)?;
    let (validation, val_report) = match &opts.val_data {
        Some(path) => {
            let (v, r) = load(path, encoder.as_ref(), &settings, &model)?;
            (v, Some(r))
        }
        None => {
            let n = (pairs.len() as f64 * opts.holdout).round() as usize;
            let n = if opts.holdout > 0.0 && pairs.len() >= 10 { n.max(1) } else { 0 };
            (pairs.split_off(pairs.len() - n), None)
        }
    };
    let weights = opts.weights(model.family);
    let train = TrainConfig {
        batch_size: opts.batch_size,
        seq_len: settings.collate.max_length.unwrap_or(model.max_position_embeddings),
        grad_accum: opts.grad_accum,
        max_steps: opts.steps,
        // TRL's (the Trainer's) AdamW: torch's defaults, no weight decay.
        optimizer: AdamWSettings { weight_decay: 0.0, ..AdamWSettings::default() },
        schedule: LrSchedule { peak: opts.lr, warmup_steps: opts.warmup_steps, total_steps: opts.steps, floor: 0.0, decay: Decay::Linear },
        clip_norm: (opts.clip > 0.0).then_some(opts.clip),
        eval_every: opts.eval_every,
        eval_batches: usize::MAX,
        checkpoint_every: opts.checkpoint_every,
        seed: opts.seed,
        precision: opts.precision,
        zero: opts.zero,
        ..TrainConfig::default()
    };
    train.validate(&model)?;
    // Before any model is loaded (the reference is scored before training starts): a run that
    // cannot fit in memory, or a LoRA rank beyond the projections, is refused by name.
    let (trainable, adapters) = weights.trainable_params(&model)?;
    phi_train::memory::check_device(phi_train::memory::RunShape { model: &model, trainable, adapters, rows_per_item: 2 }, &train, &crate::world::device(opts.device)?)?;
    Ok(Prepared { opts: opts.clone(), settings, pairs, validation, report, val_report, model, weights, train })
}

/// The folders a finished run writes under `--out`.
fn output_names(tuning: &Tuning) -> &'static [&'static str] {
    match tuning {
        Tuning::Full => &["model"],
        _ => &["adapter", "merged"],
    }
}

/// What a finished run did.
pub struct DpoRun {
    /// Validation metrics of the policy as it started and as it ended (`None` without
    /// validation pairs).
    pub before: Option<PreferenceMetrics>,
    pub after: Option<PreferenceMetrics>,
    pub outcome: TrainOutcome,
    /// What was written: `model/`, or `adapter/` (PEFT) and `merged/`.
    pub written: Vec<PathBuf>,
}

/// The reference: the folder given, or the policy as the run starts (on `device`, no autodiff).
fn reference_model(p: &Prepared, device: &Device) -> Res<PhiForCausalLM> {
    match &p.opts.reference {
        Some(dir) => {
            let r = PhiForCausalLM::from_pretrained(dir, device)?;
            if r.config().vocab_size != p.model.vocab_size {
                return Err(format!("{}: the reference's vocab_size {} is not the policy's {}", dir.display(), r.config().vocab_size, p.model.vocab_size).into());
            }
            Ok(r)
        }
        None => Ok(p.weights.build(device, p.train.seed)?),
    }
}

/// Trains a [`prepare`]d run (resuming from its checkpoints unless `fresh`), draws its loss
/// curve and writes the result; `on_step` sees every step's metrics, TRL's `rewards/*` and
/// `logps/*` among them. The training's warnings are printed as they happen
/// ([`crate::progress::print_warnings`]) and kept in the outcome.
pub fn train(p: &Prepared, on_step: impl FnMut(&StepMetrics)) -> Res<DpoRun> {
    crate::progress::print_warnings();
    let o = &p.opts;
    // Held from --fresh to the last output written; `fit` takes it again within.
    // Data-parallel: rank 0 holds the folder and writes the outputs (see `crate::world`).
    let lead = crate::world::lead();
    let _lock = if lead { Some(phi_train::run_dir::RunLock::acquire(&o.out)?) } else { None };
    let device = crate::world::device(o.device)?;
    let needs_reference = p.settings.loss.needs_reference();
    // The policy as it starts, for the "before" figures; the reference unless one is given.
    let start = p.weights.build(&device, p.train.seed)?;
    let mut objective = match (needs_reference, o.live_reference) {
        (false, _) => Dpo::new(&p.pairs, &p.validation, None, p.settings, p.train.seed)?,
        (true, live) => {
            let reference = if o.reference.is_some() { reference_model(p, &device)? } else { start.clone() };
            if live {
                Dpo::live(&p.pairs, &p.validation, reference, p.settings, p.train.seed)?
            } else {
                // Scored once, then dropped: training holds one model.
                Dpo::new(&p.pairs, &p.validation, Some(&reference), p.settings, p.train.seed)?
            }
        }
    };
    let before = if lead { objective.validation_metrics(&start) } else { None };
    drop(start);
    if o.fresh && lead {
        phi_train::checkpoint::remove_all(&o.out.join(CHECKPOINTS_DIR))?;
    }
    let resume = if o.fresh { Resume::No } else { Resume::Auto };
    let outcome = crate::plot::fit_and_plot(&p.weights, &mut objective, &p.train, &o.out, resume, &device, on_step).map_err(crate::recipes::in_tool_words)?;
    if !lead {
        return Ok(DpoRun { before, after: None, outcome, written: Vec::new() });
    }
    let after = objective.validation_metrics(&outcome.model);
    let written = write_outputs(p, &outcome.model)?;
    Ok(DpoRun { before, after, outcome, written })
}

/// The trained model as a HF folder (full), or as a PEFT adapter and its merged model (LoRA);
/// the policy's tokenizer goes along.
fn write_outputs(p: &Prepared, model: &PhiForCausalLM) -> Res<Vec<PathBuf>> {
    let o = &p.opts;
    let source = format!("preference tuning ({}) of {} on {}", p.settings.loss, o.policy.display(), o.data.display());
    let tokenizer = o.policy.join(TOKENIZER_FILE);
    let copy_tokenizer = |dir: &Path| -> Res<()> {
        if tokenizer.is_file() {
            std::fs::copy(&tokenizer, dir.join(TOKENIZER_FILE)).map_err(|e| format!("{}: {e}", tokenizer.display()))?;
        }
        crate::export::copy_template_files(&o.policy, dir).map_err(|e| e.to_string())?;
        Ok(())
    };
    match p.weights.lora_config()? {
        None => {
            let dir = o.out.join("model");
            crate::export::write_model_folder(&dir, &source, |d| {
                model.save_pretrained(d)?;
                copy_tokenizer(d)
            })?;
            Ok(vec![dir])
        }
        Some(config) => {
            let adapter = o.out.join("adapter");
            crate::export::write_model_folder(&adapter, &source, |d| Ok(lora::save(model, &config, d)?))?;
            let merged = o.out.join("merged");
            crate::export::write_model_folder(&merged, &source, |d| {
                lora::merge(model.clone()).save_pretrained(d)?;
                copy_tokenizer(d)
            })?;
            Ok(vec![adapter, merged])
        }
    }
}

/// How to run `phi eval dpo`.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub policy: PathBuf,
    /// A PEFT adapter on the policy.
    pub adapter: Option<PathBuf>,
    /// The reference folder; `None`: the policy without its adapter (TRL's reference for a
    /// PEFT model), or the policy itself.
    pub reference: Option<PathBuf>,
    pub data: PathBuf,
    pub beta: f64,
    pub loss: PreferenceLoss,
    pub max_length: Option<usize>,
    pub truncation: Truncation,
    pub batch_size: usize,
    pub device: Backend,
}

/// The loss and TRL's metrics of a policy against its reference over a file of pairs, and
/// what loading the file did.
pub fn evaluate(o: &EvalOptions) -> Res<(PreferenceMetrics, PairReport)> {
    let device = o.device.device()?;
    let base = PhiForCausalLM::from_pretrained(&o.policy, &device)?;
    let encoder = PairEncoder::for_model(&o.policy, base.config())?;
    let settings = settings_for(base.config(), encoder.as_ref(), o.beta, o.loss, o.max_length, o.truncation);
    settings.validate()?;
    let (pairs, report) = load(&o.data, encoder.as_ref(), &settings, base.config())?;
    let policy = match &o.adapter {
        Some(a) => lora::load(base.clone(), a)?,
        None => base.clone(),
    };
    let reference = match (&o.reference, settings.loss.needs_reference()) {
        (Some(_), false) => return Err(format!("the {} loss is reference-free: --reference does not apply", settings.loss.name()).into()),
        (None, false) => None,
        (Some(dir), true) => {
            let r = PhiForCausalLM::from_pretrained(dir, &device)?;
            if r.config().vocab_size != base.config().vocab_size {
                return Err(format!("{}: the reference's vocab_size {} is not the policy's {}", dir.display(), r.config().vocab_size, base.config().vocab_size).into());
            }
            Some(r)
        }
        (None, true) => Some(base),
    };
    let m = evaluate_pairs(&policy, reference.as_ref(), &pairs, settings, o.batch_size)?;
    Ok((m, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use phi_core::Family;
    use phi_core::lora::{LoraConfig, default_targets};

    /// A fresh adapter without named targets takes the policy family's (a Phi-3 policy's are not
    /// Phi-1's); named ones are kept.
    #[test]
    fn a_fresh_adapter_defaults_to_the_policy_familys_targets() {
        let targets_of = |names: Vec<String>, family| {
            let mut o = DpoRunOptions::new("policy", "pairs.jsonl", "out");
            o.tuning = Tuning::Lora(LoraConfig { r: 8, lora_alpha: 16.0, lora_dropout: 0.0, target_modules: names, use_rslora: false });
            match o.weights(family) {
                Weights::Lora { adapter: Adapter::Fresh(c), .. } => c.target_modules,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(targets_of(vec![], Family::Phi3), default_targets(Family::Phi3));
        assert_eq!(targets_of(vec![], Family::Phi), default_targets(Family::Phi));
        assert_ne!(default_targets(Family::Phi3), default_targets(Family::Phi));
        assert_eq!(targets_of(vec!["fc1".into()], Family::Phi3), ["fc1"]);
    }
}
