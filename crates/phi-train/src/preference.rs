//! Preference objectives (DPO and its variants), as TRL's `DPOTrainer` defines them: a batch
//! holds each pair's chosen and rejected sequence (prompt + completion, right-padded), the
//! policy's and the reference's log-probabilities of the completion tokens are summed per
//! sequence, and the loss compares the two log-ratios.
//!
//! Right padding needs no attention mask: attention is causal, so pad tokens after a sequence
//! never influence the logits of its real positions; they only have to be left out of the sums.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use phi_train::preference::{PreferenceLoss, SequenceLogps, preference_loss};
//!
//! let device = Device::default();
//! // Two pairs: chosen log-probs first, then rejected (summed over 3, 4, 2 and 5 tokens).
//! let policy = SequenceLogps {
//!     sums: Tensor::from_data([-10.0, -12.0, -14.0, -11.0], &device),
//!     counts: Tensor::from_data([3.0, 4.0, 2.0, 5.0], &device),
//!     lengths: Tensor::from_data([3.0, 4.0, 2.0, 5.0], &device),
//!     chosen_nll: Tensor::from_data([3.0], &device),
//! };
//! let reference = Tensor::<1>::from_data([-11.0, -12.0, -13.0, -12.0], &device);
//! let (loss, m) = preference_loss(policy, Some(reference), 0.1, PreferenceLoss::Sigmoid { label_smoothing: 0.0 });
//! assert!(loss.into_scalar::<f32>() > 0.0);
//! assert_eq!(m.rewards_accuracies, 0.5);
//! ```

use burn::tensor::activation::{log_sigmoid, log_softmax, relu};
use burn::tensor::{Device, Int, Tensor, TensorData};
use phi_core::{PhiConfig, PhiForCausalLM};
use phi_data::pairs::{PairRecord, PairText};
use phi_data::{SamplerState, TokenSampler};
use serde::{Deserialize, Serialize};

use crate::TrainConfig;
use crate::error::{Result, TrainError};
use crate::objective::{BatchLoss, Forward, Objective};

/// The data side of preference pairs lives in phi-data ([`phi_data::pairs`]: records, their
/// parsing and checks, the load report); re-exported here, where the objective takes them.
pub use phi_data::pairs::{PairReport, TokenPair};

/// Which preference loss, with TRL's `loss_type` names.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "loss_type", rename_all = "snake_case")]
pub enum PreferenceLoss {
    /// DPO: `-(1-ε)·logσ(βΔ) - ε·logσ(-βΔ)` (ε > 0 is conservative DPO, cDPO).
    Sigmoid { label_smoothing: f64 },
    /// IPO: `(Δ̄ - 1/(2β))²`, where each log-ratio is averaged over its completion tokens (as
    /// TRL, which confirmed this normalisation with IPO's authors).
    Ipo,
    /// SLiC's hinge: `relu(1 - βΔ)`.
    Hinge,
    /// SimPO (TRL's CPO trainer, `loss_type="simpo"`, `cpo_alpha=0`): reference-free, on
    /// log-probabilities averaged over completion tokens, with a target margin γ:
    /// `-(1-ε)·logσ(β·Δ̄ - γ) - ε·logσ(-(β·Δ̄ - γ))`.
    Simpo { gamma: f64, label_smoothing: f64 },
    /// ORPO (TRL's ORPO trainer): reference-free; the NLL of the chosen sequences (prompt and
    /// completion, mean over tokens) minus `β·logσ(log odds(chosen) - log odds(rejected))` of
    /// log-probabilities averaged over completion tokens.
    Orpo,
}

impl PreferenceLoss {
    /// From TRL's `loss_type` name. `label_smoothing` (0 for none) applies to sigmoid and
    /// simpo only, `gamma` to simpo only (default 0.5, TRL's `simpo_gamma`): given to another
    /// loss, either is an error rather than silently unused.
    pub fn from_name(name: &str, label_smoothing: f64, gamma: Option<f64>) -> std::result::Result<Self, String> {
        if gamma.is_some() && name != "simpo" {
            return Err(format!("simpo gamma is for the simpo loss, not `{name}`"));
        }
        if label_smoothing != 0.0 && !["sigmoid", "simpo"].contains(&name) {
            return Err(format!("label smoothing is for the sigmoid and simpo losses, not `{name}`"));
        }
        Ok(match name {
            "sigmoid" => PreferenceLoss::Sigmoid { label_smoothing },
            "ipo" => PreferenceLoss::Ipo,
            "hinge" => PreferenceLoss::Hinge,
            "simpo" => PreferenceLoss::Simpo { gamma: gamma.unwrap_or(0.5), label_smoothing },
            "orpo" => PreferenceLoss::Orpo,
            other => return Err(format!("unknown preference loss `{other}`: expected sigmoid, ipo, hinge, simpo or orpo")),
        })
    }

    /// The loss's name, as `--loss` takes it (TRL's `loss_type`).
    pub fn name(&self) -> &'static str {
        match self {
            PreferenceLoss::Sigmoid { .. } => "sigmoid",
            PreferenceLoss::Ipo => "ipo",
            PreferenceLoss::Hinge => "hinge",
            PreferenceLoss::Simpo { .. } => "simpo",
            PreferenceLoss::Orpo => "orpo",
        }
    }

    /// Whether the loss compares the policy with a reference model (SimPO and ORPO do not).
    pub fn needs_reference(&self) -> bool {
        !self.reference_free()
    }

    /// Reference-free losses compare log-probabilities averaged over completion tokens, and
    /// their rewards and `logps/*` metrics are those averages.
    fn reference_free(&self) -> bool {
        matches!(self, PreferenceLoss::Simpo { .. } | PreferenceLoss::Orpo)
    }
}

/// The name with the settings that apply to it, as a user reads it: `sigmoid`, `sigmoid (label
/// smoothing 0.1)`, `simpo (gamma 0.5)`.
impl std::fmt::Display for PreferenceLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())?;
        match *self {
            PreferenceLoss::Sigmoid { label_smoothing } if label_smoothing != 0.0 => write!(f, " (label smoothing {label_smoothing})"),
            PreferenceLoss::Simpo { gamma, label_smoothing } if label_smoothing != 0.0 => write!(f, " (gamma {gamma}, label smoothing {label_smoothing})"),
            PreferenceLoss::Simpo { gamma, .. } => write!(f, " (gamma {gamma})"),
            _ => Ok(()),
        }
    }
}

/// The metrics TRL logs for a preference batch, with its names and definitions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PreferenceMetrics {
    pub loss: f64,
    /// Mean of `β·(policy - reference)` over the chosen completions (summed log-probabilities;
    /// `β·policy` averaged per token for the reference-free losses).
    #[serde(rename = "rewards/chosen")]
    pub rewards_chosen: f64,
    #[serde(rename = "rewards/rejected")]
    pub rewards_rejected: f64,
    /// Mean of chosen minus rejected reward.
    #[serde(rename = "rewards/margins")]
    pub rewards_margins: f64,
    /// Fraction of pairs whose chosen reward is strictly greater.
    #[serde(rename = "rewards/accuracies")]
    pub rewards_accuracies: f64,
    /// Mean policy log-probability of the chosen completions.
    #[serde(rename = "logps/chosen")]
    pub logps_chosen: f64,
    #[serde(rename = "logps/rejected")]
    pub logps_rejected: f64,
}

/// Which end of a too-long sequence survives (TRL's `truncation_mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// The first `max_length` tokens (TRL's default); a pair whose prompt alone fills
    /// `max_length` is dropped, since none of its completion tokens would remain.
    #[default]
    KeepStart,
    /// The last `max_length` tokens: the prompt's start goes first.
    KeepEnd,
}

/// How pairs become a batch: TRL's preference collator.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Collate {
    /// Right padding (masked out of every sum: any id the model has will do).
    pub pad: u32,
    /// Each row (prompt + one completion) is cut to this many tokens (`None`: no limit).
    pub max_length: Option<usize>,
    pub truncation: Truncation,
}

impl Collate {
    /// No truncation.
    pub fn new(pad: u32) -> Self {
        Collate { pad, max_length: None, truncation: Truncation::KeepStart }
    }

    /// One row: `prompt + completion` and its completion mask, cut to `max_length`.
    fn row<'p>(&self, prompt: &'p [u32], completion: &'p [u32]) -> (impl Iterator<Item = (u32, bool)> + 'p, usize) {
        let len = prompt.len() + completion.len();
        let keep = self.max_length.map_or(len, |m| m.min(len));
        let skip = match self.truncation {
            Truncation::KeepStart => 0,
            Truncation::KeepEnd => len - keep,
        };
        let tokens = prompt.iter().map(|&t| (t, false)).chain(completion.iter().map(|&t| (t, true)));
        (tokens.skip(skip).take(keep), keep)
    }

    /// Whether either row of `pair` is cut.
    pub fn truncates(&self, pair: &TokenPair) -> bool {
        let longest = pair.prompt_ids.len() + pair.chosen_ids.len().max(pair.rejected_ids.len());
        self.max_length.is_some_and(|m| longest > m)
    }

    /// Why `pair` cannot be learned from after truncation (TRL drops it), if so.
    pub fn drops(&self, pair: &TokenPair) -> Option<String> {
        match (self.max_length, self.truncation) {
            (Some(m), Truncation::KeepStart) if pair.prompt_ids.len() >= m => Some(format!(
                "the prompt alone has {} tokens and max_length is {m} (keep_start): no completion token would remain",
                pair.prompt_ids.len()
            )),
            _ => None,
        }
    }

    /// The longest row this collator builds from `pair`.
    fn longest(&self, pair: &TokenPair) -> usize {
        let longest = pair.prompt_ids.len() + pair.chosen_ids.len().max(pair.rejected_ids.len());
        self.max_length.map_or(longest, |m| m.min(longest))
    }
}

/// A batch of pairs: rows `prompt + chosen` for every pair, then `prompt + rejected`, each cut
/// to `max_length` and right-padded to the longest.
pub struct PairBatch {
    /// `[2n, t]` token ids.
    pub ids: Tensor<2, Int>,
    /// `[2n, t]`: 1 at completion tokens.
    pub completion: Tensor<2>,
    /// `[2n, t]`: 1 at every token that is not padding.
    pub real: Tensor<2>,
}

/// The batch TRL's preference collator builds ([`PairBatch`]).
pub fn pair_batch(pairs: &[TokenPair], collate: &Collate, device: &Device) -> PairBatch {
    let sides: [fn(&TokenPair) -> (&[u32], &[u32]); 2] = [|p| (&p.prompt_ids, &p.chosen_ids), |p| (&p.prompt_ids, &p.rejected_ids)];
    let t = pairs.iter().map(|p| collate.longest(p)).max().unwrap_or(0).max(2);
    let n = 2 * pairs.len();
    let (mut ids, mut completion, mut real) = (Vec::with_capacity(n * t), Vec::with_capacity(n * t), Vec::with_capacity(n * t));
    for side in sides {
        for p in pairs {
            let (prompt, answer) = side(p);
            let (row, len) = collate.row(prompt, answer);
            for (id, learn) in row {
                ids.push(id as i64);
                completion.push(if learn { 1.0f32 } else { 0.0 });
            }
            ids.extend(std::iter::repeat_n(collate.pad as i64, t - len));
            completion.extend(std::iter::repeat_n(0.0f32, t - len));
            real.extend(std::iter::repeat_n(1.0f32, len));
            real.extend(std::iter::repeat_n(0.0f32, t - len));
        }
    }
    let floats = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [n, t]), device);
    PairBatch { ids: Tensor::from_data(TensorData::new(ids, [n, t]), device), completion: floats(completion), real: floats(real) }
}

/// What a preference loss needs of one forward pass over a [`PairBatch`].
#[derive(Clone)]
pub struct SequenceLogps {
    /// `[2n]` log-probability of each row's completion tokens, summed; chosen rows first.
    pub sums: Tensor<1>,
    /// `[2n]` completion tokens scored in each row (the averages of SimPO and ORPO).
    pub counts: Tensor<1>,
    /// `[2n]` completion tokens in each row, a token at position 0 (scored by nothing) included:
    /// what TRL's IPO divides by.
    pub lengths: Tensor<1>,
    /// `[1]` mean negative log-probability over every scored token (prompt and completion) of
    /// the chosen rows: ORPO's NLL term.
    pub chosen_nll: Tensor<1>,
}

/// The completion log-probabilities of `batch` from its `[2n, t, vocab]` logits. Token `j` is
/// scored by the logits at `j - 1`, so position 0 never counts.
pub fn completion_logps(logits: Tensor<3>, batch: &PairBatch) -> SequenceLogps {
    let [n, t, v] = logits.dims();
    let log_probs = log_softmax(logits.narrow(1, 0, t - 1).reshape([n * (t - 1), v]), 1);
    let picked = log_probs.gather(1, batch.ids.clone().narrow(1, 1, t - 1).reshape([n * (t - 1), 1])).reshape([n, t - 1]);
    let mask = batch.completion.clone().narrow(1, 1, t - 1);
    // Masked positions are set to 0, not multiplied by it: a non-finite value there (padding)
    // must not reach the sums.
    let masked = |values: Tensor<2>, keep: Tensor<2>| values.mask_fill(keep.equal_elem(0.0), 0.0);
    let sums = masked(picked.clone(), mask.clone()).sum_dim(1).reshape([n]);
    let counts = mask.sum_dim(1).reshape([n]);
    let lengths = batch.completion.clone().sum_dim(1).reshape([n]);
    let real = batch.real.clone().narrow(1, 1, t - 1).narrow(0, 0, n / 2);
    let chosen = picked.narrow(0, 0, n / 2);
    let chosen_nll = masked(chosen, real.clone()).sum().neg() / real.sum().clamp_min(1.0);
    SequenceLogps { sums, counts, lengths, chosen_nll }
}

fn mean(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64).sum::<f64>() / x.len().max(1) as f64
}

/// `log(1 - exp(x))` for `x < 0`, accurate near 0 (a series for `-expm1`) and with finite
/// gradients in both branches.
fn log1mexp(x: Tensor<1>) -> Tensor<1> {
    let x = x.clamp_max(-1e-7);
    let near = x.clone().greater_equal_elem(-0.1);
    let far = (x.clone().clamp_max(-0.05).exp().neg() + 1.0).log();
    let s = x.clamp_min(-0.2);
    // -expm1(s) = -(s + s²/2 + s³/6 + s⁴/24 + s⁵/120); the next term is below 1e-9 here.
    let series = (s.clone() * (((((s.clone() / 120.0 + 1.0 / 24.0) * s.clone() + 1.0 / 6.0) * s.clone()) + 0.5) * s + 1.0)).neg().log();
    far.mask_where(near, series)
}

/// The loss (mean over pairs) and TRL's metrics. `policy` holds `2·pairs` rows, chosen first;
/// `reference` the reference's summed log-probabilities of the same rows (no gradient), or
/// `None`: zeros (TRL's `reference_free`), which is what SimPO and ORPO use anyway.
pub fn preference_loss(policy: SequenceLogps, reference: Option<Tensor<1>>, beta: f64, kind: PreferenceLoss) -> (Tensor<1>, PreferenceMetrics) {
    let n = policy.sums.dims()[0] / 2;
    let counts = policy.counts.clamp_min(1.0);
    let lengths = policy.lengths.clamp_min(1.0);
    let (score, reference) = if kind.reference_free() { (policy.sums / counts.clone(), None) } else { (policy.sums, reference) };
    let ratio = match reference {
        Some(r) => score.clone() - r.detach(),
        None => score.clone(),
    };
    let (chosen, rejected) = (ratio.clone().narrow(0, 0, n), ratio.narrow(0, n, n));
    let sigmoid_loss = |z: Tensor<1>, eps: f64| log_sigmoid(z.clone()).neg() * (1.0 - eps) - log_sigmoid(z.neg()) * eps;
    let loss = match kind {
        PreferenceLoss::Sigmoid { label_smoothing } => sigmoid_loss((chosen.clone() - rejected.clone()) * beta, label_smoothing).mean(),
        PreferenceLoss::Ipo => {
            let (cc, rc) = (lengths.clone().narrow(0, 0, n), lengths.narrow(0, n, n));
            (chosen.clone() / cc - rejected.clone() / rc - 1.0 / (2.0 * beta)).powi_scalar(2).mean()
        }
        PreferenceLoss::Hinge => relu(((chosen.clone() - rejected.clone()) * beta).neg() + 1.0).mean(),
        PreferenceLoss::Simpo { gamma, label_smoothing } => sigmoid_loss((chosen.clone() - rejected.clone()) * beta - gamma, label_smoothing).mean(),
        PreferenceLoss::Orpo => {
            let log_odds = (chosen.clone() - rejected.clone()) - (log1mexp(chosen.clone()) - log1mexp(rejected.clone()));
            policy.chosen_nll - log_sigmoid(log_odds).mean() * beta
        }
    };
    let host = |t: Tensor<1>| t.detach().into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 data");
    let (cr, rj) = (host(chosen * beta), host(rejected * beta));
    let logps = host(score);
    let metrics = PreferenceMetrics {
        loss: host(loss.clone())[0] as f64,
        rewards_chosen: mean(&cr),
        rewards_rejected: mean(&rj),
        rewards_margins: mean(&cr.iter().zip(&rj).map(|(c, r)| c - r).collect::<Vec<_>>()),
        rewards_accuracies: cr.iter().zip(&rj).filter(|(c, r)| c > r).count() as f64 / n.max(1) as f64,
        logps_chosen: mean(&logps[..n]),
        logps_rejected: mean(&logps[n..]),
    };
    (loss, metrics)
}

/// Summed completion log-probabilities of `pairs` under `model` (no gradients), `batch` pairs
/// at a time: `(chosen, rejected)` per pair — the reference side of the preference losses.
pub fn sequence_logps(model: &PhiForCausalLM, pairs: &[TokenPair], collate: &Collate, batch: usize) -> Vec<(f32, f32)> {
    let device = model.device();
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch.max(1)) {
        let b = pair_batch(chunk, collate, &device);
        let logps = completion_logps(model.forward(b.ids.clone()), &b).sums;
        let v = logps.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 data");
        let n = chunk.len();
        out.extend((0..n).map(|i| (v[i], v[n + i])));
    }
    out
}

/// What a preference objective computes: the loss, β, and how pairs are batched.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PreferenceSettings {
    pub beta: f64,
    pub loss: PreferenceLoss,
    pub collate: Collate,
}

impl PreferenceSettings {
    /// TRL's defaults: sigmoid (DPO), β 0.1, no truncation.
    pub fn dpo(pad: u32) -> Self {
        PreferenceSettings { beta: 0.1, loss: PreferenceLoss::Sigmoid { label_smoothing: 0.0 }, collate: Collate::new(pad) }
    }

    /// Checks the settings, naming the one that is wrong ([`TrainError::Config`] with its key
    /// in these settings: `beta`, `loss.label_smoothing`, `loss.gamma`, `collate.max_length`).
    pub fn validate(&self) -> Result<()> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(TrainError::setting("beta", self.beta, format!("beta {} must be a positive number", self.beta)));
        }
        if let PreferenceLoss::Sigmoid { label_smoothing: e } | PreferenceLoss::Simpo { label_smoothing: e, .. } = self.loss
            && !(0.0..0.5).contains(&e)
        {
            return Err(TrainError::setting("loss.label_smoothing", e, format!("label_smoothing {e} must be in [0, 0.5)")));
        }
        if let PreferenceLoss::Simpo { gamma, .. } = self.loss
            && !gamma.is_finite()
        {
            return Err(TrainError::setting("loss.gamma", gamma, format!("simpo gamma {gamma} must be a finite number")));
        }
        if let Some(m) = self.collate.max_length
            && m < 2
        {
            return Err(TrainError::setting("collate.max_length", m, format!("max_length {m} must be at least 2")));
        }
        Ok(())
    }
}

/// Where a [`Dpo`] objective's reference log-probabilities come from.
enum ReferenceScores {
    /// Scored once when the objective was built: `(chosen, rejected)` of `pairs` then of
    /// `validation`.
    Precomputed(Vec<(f32, f32)>),
    /// A reference model kept in memory and run on every batch (TRL's default).
    Live(PhiForCausalLM),
    /// Reference-free losses.
    None,
}

/// Preference tuning as an [`Objective`]: batches of pairs (chosen and rejected through the
/// model together), the policy's completion log-probabilities against the reference's, one of
/// the [`PreferenceLoss`]es, TRL's metrics in `metrics.jsonl`.
///
/// The reference is an explicit model or the policy as it starts (TRL's default; with a LoRA
/// adapter that is the adapter as loaded, with a fresh adapter the base). [`Dpo::new`] scores
/// every pair with it once, before training — training then holds one model, not two (TRL's
/// `precompute_ref_log_probs`); [`Dpo::live`] keeps the reference and runs it on each batch.
///
/// ```no_run
/// # use phi_train::*;
/// # use phi_train::preference::*;
/// # fn demo(pairs: &[TokenPair], base: &phi_core::PhiForCausalLM, cfg: &TrainConfig, lora: lora::LoraConfig) -> Result<()> {
/// let settings = PreferenceSettings::dpo(0);
/// let mut objective = Dpo::new(pairs, &[], Some(base), settings, cfg.seed)?;
/// let weights = Weights::Lora { base: "sft-model".into(), adapter: Adapter::Fresh(lora), quantize: None };
/// fit(&weights, &mut objective, cfg, "runs/dpo".as_ref(), Resume::Auto, &burn::tensor::Device::default(), |m| {
///     tracing::info!(step = m.step, loss = m.loss, margin = m.extra["rewards/margins"], "dpo")
/// })?;
/// # Ok(()) }
/// ```
pub struct Dpo<'a> {
    pairs: &'a [TokenPair],
    validation: &'a [TokenPair],
    reference: ReferenceScores,
    /// Identifies the reference in the run's fingerprint (another reference scores differently).
    reference_digest: u64,
    settings: PreferenceSettings,
    sampler: TokenSampler,
}

/// Every pair fits the model as `collate` batches it: ids within its vocabulary, rows within
/// its context (a [`TrainError::Data`] naming the pair, counting from 0).
pub fn check_pairs<'p>(pairs: impl IntoIterator<Item = &'p TokenPair>, collate: &Collate, model: &PhiConfig) -> Result<()> {
    for (i, p) in pairs.into_iter().enumerate() {
        let longest = collate.longest(p);
        if longest > model.max_position_embeddings {
            return Err(TrainError::Data(format!(
                "pair {i} has {longest} tokens, more than the model's max_position_embeddings ({}): set max_length",
                model.max_position_embeddings
            )));
        }
        if let Some(&id) = p.prompt_ids.iter().chain(&p.chosen_ids).chain(&p.rejected_ids).find(|&&id| id as usize >= model.vocab_size) {
            return Err(TrainError::Data(format!("pair {i} has token id {id}, but the model's vocab_size is {}", model.vocab_size)));
        }
        if let Some(why) = collate.drops(p) {
            return Err(TrainError::Data(format!("pair {i}: {why}")));
        }
    }
    Ok(())
}

/// Pairs a reference or an evaluation scores at once.
const SCORE_BATCH: usize = 8;

/// What identifies a reference in a run's fingerprint: its scores of the first training pairs,
/// in one batch — the same whether it is precomputed or live, so a run may resume either way,
/// and different for another reference model.
fn reference_digest(model: &PhiForCausalLM, pairs: &[TokenPair], settings: &PreferenceSettings) -> u64 {
    let head = &pairs[..pairs.len().min(SCORE_BATCH)];
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (c, r) in sequence_logps(model, head, &settings.collate, SCORE_BATCH) {
        h.update(&[c.to_le_bytes(), r.to_le_bytes()].concat());
    }
    h.digest()
}

impl<'a> Dpo<'a> {
    /// Scores `pairs` and `validation` with `reference` (a model without autodiff) once and
    /// keeps only those numbers. `reference` may be `None` only for reference-free losses
    /// (and is not used by them).
    pub fn new(pairs: &'a [TokenPair], validation: &'a [TokenPair], reference: Option<&PhiForCausalLM>, settings: PreferenceSettings, seed: u64) -> Result<Self> {
        Self::check_args(pairs, validation, &settings, reference)?;
        let (scores, reference_digest) = match reference {
            Some(model) if settings.loss.needs_reference() => {
                let all: Vec<TokenPair> = pairs.iter().chain(validation).cloned().collect();
                (ReferenceScores::Precomputed(sequence_logps(model, &all, &settings.collate, SCORE_BATCH)), reference_digest(model, pairs, &settings))
            }
            _ => (ReferenceScores::None, 0),
        };
        Ok(Dpo { pairs, validation, reference: scores, reference_digest, settings, sampler: TokenSampler::new(pairs.len(), seed) })
    }

    /// Keeps `reference` (a model without autodiff) and scores each batch with it as training
    /// goes: TRL's default, two models in memory.
    pub fn live(pairs: &'a [TokenPair], validation: &'a [TokenPair], reference: PhiForCausalLM, settings: PreferenceSettings, seed: u64) -> Result<Self> {
        Self::check_args(pairs, validation, &settings, Some(&reference))?;
        if !settings.loss.needs_reference() {
            return Self::new(pairs, validation, None, settings, seed);
        }
        let reference_digest = reference_digest(&reference, pairs, &settings);
        Ok(Dpo { pairs, validation, reference: ReferenceScores::Live(reference), reference_digest, settings, sampler: TokenSampler::new(pairs.len(), seed) })
    }

    /// Checks the settings, and the pairs against the reference before it scores them.
    fn check_args(pairs: &[TokenPair], validation: &[TokenPair], settings: &PreferenceSettings, reference: Option<&PhiForCausalLM>) -> Result<()> {
        if pairs.is_empty() {
            return Err(TrainError::Data("preference tuning needs at least one pair".into()));
        }
        settings.validate()?;
        match reference {
            Some(model) => check_pairs(pairs.iter().chain(validation), &settings.collate, model.config()),
            None if settings.loss.needs_reference() => {
                Err(TrainError::setting("loss", settings.loss.name(), format!("the {} loss needs a reference model", settings.loss.name())))
            }
            None => Ok(()),
        }
    }

    fn pair(&self, i: usize) -> &TokenPair {
        if i < self.pairs.len() { &self.pairs[i] } else { &self.validation[i - self.pairs.len()] }
    }

    /// The reference's summed log-probabilities of `indices` (of `pairs`, then `validation`),
    /// chosen rows first, on `device`.
    fn reference_sums(&self, indices: &[usize], device: &Device) -> Option<Tensor<1>> {
        let values: Vec<f32> = match &self.reference {
            ReferenceScores::Precomputed(s) => indices.iter().map(|&i| s[i].0).chain(indices.iter().map(|&i| s[i].1)).collect(),
            ReferenceScores::Live(model) => {
                let batch: Vec<TokenPair> = indices.iter().map(|&i| self.pair(i).clone()).collect();
                let s = sequence_logps(model, &batch, &self.settings.collate, batch.len());
                s.iter().map(|p| p.0).chain(s.iter().map(|p| p.1)).collect()
            }
            ReferenceScores::None => return None,
        };
        let n = values.len();
        Some(Tensor::from_data(TensorData::new(values, [n]), device))
    }

    /// The loss and metrics of the policy (`logits` of a batch of ids) over `indices`.
    fn evaluate(&self, logits: impl Fn(Tensor<2, Int>) -> Tensor<3>, device: &Device, indices: &[usize]) -> (Tensor<1>, PreferenceMetrics) {
        let batch: Vec<TokenPair> = indices.iter().map(|&i| self.pair(i).clone()).collect();
        let b = pair_batch(&batch, &self.settings.collate, device);
        let policy = completion_logps(logits(b.ids.clone()), &b);
        preference_loss(policy, self.reference_sums(indices, device), self.settings.beta, self.settings.loss)
    }

    /// The loss and TRL's metrics of `model` (without autodiff) over the validation pairs.
    pub fn validation_metrics(&self, model: &PhiForCausalLM) -> Option<PreferenceMetrics> {
        self.validation_metrics_part(model, 0, 1).map(|(m, _)| m)
    }

    /// Part `part` of `parts` of [`Self::validation_metrics`] (batches `part`, `part + parts`,
    /// …): their mean and how many pairs it is over.
    pub fn validation_metrics_part(&self, model: &PhiForCausalLM, part: usize, parts: usize) -> Option<(PreferenceMetrics, usize)> {
        if self.validation.is_empty() {
            return None;
        }
        let indices: Vec<usize> = (self.pairs.len()..self.pairs.len() + self.validation.len()).collect();
        let device = model.device();
        let mut total = Weighted::default();
        for (_, chunk) in indices.chunks(SCORE_BATCH).enumerate().filter(|(i, _)| crate::dist::takes(*i, part, parts)) {
            let (_, m) = self.evaluate(|ids| model.forward(ids), &device, chunk);
            total.add(&m, chunk.len());
        }
        Some((total.mean(), total.pairs))
    }
}

/// Metrics of several batches, weighted by their pairs: the figures one batch of them all
/// would give.
#[derive(Default)]
struct Weighted {
    sum: [f64; 7],
    pairs: usize,
}

impl Weighted {
    fn add(&mut self, m: &PreferenceMetrics, pairs: usize) {
        let v = [m.loss, m.rewards_chosen, m.rewards_rejected, m.rewards_margins, m.rewards_accuracies, m.logps_chosen, m.logps_rejected];
        self.sum.iter_mut().zip(v).for_each(|(s, x)| *s += x * pairs as f64);
        self.pairs += pairs;
    }

    fn mean(&self) -> PreferenceMetrics {
        let [loss, rewards_chosen, rewards_rejected, rewards_margins, rewards_accuracies, logps_chosen, logps_rejected] = self.sum.map(|s| s / self.pairs.max(1) as f64);
        PreferenceMetrics { loss, rewards_chosen, rewards_rejected, rewards_margins, rewards_accuracies, logps_chosen, logps_rejected }
    }
}

impl PreferenceMetrics {
    /// The metrics under TRL's names (`rewards/margins`, …), without the loss.
    pub fn named(&self) -> Vec<(String, f64)> {
        let v = serde_json::to_value(self).expect("metrics serialize");
        v.as_object().expect("an object").iter().filter(|(k, _)| *k != "loss").map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(f64::NAN))).collect()
    }
}

impl Objective for Dpo<'_> {
    /// Indices of the batch's pairs.
    type Batch = Vec<usize>;

    fn check(&self, model: &PhiConfig, _cfg: &TrainConfig) -> Result<()> {
        check_pairs(self.pairs.iter().chain(self.validation), &self.settings.collate, model)
    }

    fn next_batch(&mut self, batch_size: usize) -> Vec<usize> {
        (0..batch_size).map(|_| self.sampler.next_window()).collect()
    }

    fn tokens(&self, batch: &Vec<usize>) -> usize {
        let c = &self.settings.collate;
        batch.iter().map(|&i| &self.pairs[i]).map(|p| c.row(&p.prompt_ids, &p.chosen_ids).1 + c.row(&p.prompt_ids, &p.rejected_ids).1).sum()
    }

    fn weight(&self, batch: &Vec<usize>) -> f64 {
        batch.len() as f64
    }

    /// The chosen and the rejected completion of each pair go through the model.
    fn rows_per_item(&self) -> usize {
        2
    }

    fn loss(&self, model: &Forward<'_>, batch: &Vec<usize>) -> BatchLoss {
        let (loss, metrics) = self.evaluate(|ids| model.logits(ids), &model.device(), batch);
        BatchLoss { loss, metrics: metrics.named() }
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(self.sampler.state()).expect("sampler state serializes")
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        let state: SamplerState = serde_json::from_value(state.clone()).map_err(|e| TrainError::Data(format!("the pair sampler's state: {e}")))?;
        self.sampler = TokenSampler::resume(self.pairs.len(), state);
        Ok(())
    }

    fn fingerprint(&self) -> String {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for p in self.pairs.iter().chain(self.validation) {
            for ids in [&p.prompt_ids, &p.chosen_ids, &p.rejected_ids] {
                h.update(&(ids.len() as u64).to_le_bytes());
                ids.iter().for_each(|id| h.update(&id.to_le_bytes()));
            }
        }
        // The reference is part of the run: another reference model scores differently.
        h.update(&self.reference_digest.to_le_bytes());
        let s = &self.settings;
        format!(
            "preference {} train / {} validation pairs, {:?} beta {}, {:?}, {:016x}",
            self.pairs.len(),
            self.validation.len(),
            s.loss,
            s.beta,
            s.collate,
            h.digest()
        )
    }

    fn validate_part(&self, model: &PhiForCausalLM, _cfg: &TrainConfig, part: usize, parts: usize) -> Option<(f64, f64)> {
        let (m, pairs) = self.validation_metrics_part(model, part, parts)?;
        Some((m.loss * pairs as f64, pairs as f64))
    }
}

/// How text records become token ids: the model's tokenizer, chat template and EOS id.
pub struct PairEncoder {
    pub tokenizer: phi_data::Tokenizer,
    pub template: phi_core::chat::ChatTemplate,
    pub eos: u32,
}

impl PairEncoder {
    /// The encoder of a model folder: its `tokenizer.json`, its chat template
    /// ([`ChatTemplate::for_model`](phi_core::chat::ChatTemplate::for_model): its own, else its
    /// family's), its first EOS id (else the tokenizer's). `None` when the folder has no tokenizer (token-id
    /// records still load).
    pub fn for_model(dir: &std::path::Path, config: &PhiConfig) -> Result<Option<Self>> {
        let path = dir.join(crate::checkpoint::TOKENIZER_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let tokenizer = phi_data::Tokenizer::from_file(&path).map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
        let eos = config.eos_token_ids.first().copied().or(tokenizer.eos_id());
        let template = phi_core::chat::ChatTemplate::for_model(dir, config.family).map_err(|e| TrainError::Data(e.to_string()))?;
        Ok(eos.map(|eos| PairEncoder { tokenizer, template, eos }))
    }

    /// A text record as token ids. As TRL does, the prompt is tokenized on its own (a message
    /// list rendered with the chat template and its generation prompt) and every completion
    /// ends with EOS (after the template's end-of-turn marker for a message list; once, where
    /// a model's template already writes it); a completion that renders to nothing, or a
    /// conversation the template refuses, is an error.
    pub fn encode(&self, prompt: &PairText, chosen: &PairText, rejected: &PairText) -> std::result::Result<TokenPair, String> {
        fn turns(m: &[phi_data::sft::Turn]) -> impl Iterator<Item = (&str, &str)> {
            m.iter().map(|t| (t.role.as_str(), t.content.as_str()))
        }
        let prompt_messages = match prompt {
            PairText::Messages(m) => Some(turns(m).collect::<Vec<_>>()),
            PairText::Text(_) => None,
        };
        let prompt = match prompt {
            PairText::Text(s) => s.clone(),
            PairText::Messages(_) => self.template.prompt(prompt_messages.iter().flatten().copied()).map_err(|e| format!("`prompt`: {e}"))?,
        };
        let completion = |key: &str, c: &PairText| -> std::result::Result<Vec<u32>, String> {
            let text = match (c, &prompt_messages) {
                (PairText::Text(s), _) => s.clone(),
                // As TRL does: the prompt and the completion rendered together, less the prompt
                // rendered with its generation prompt — what the template writes for the reply
                // in that conversation.
                (PairText::Messages(m), Some(p)) => self.template.completion(p, &turns(m).collect::<Vec<_>>()).map_err(|e| format!("`{key}`: {e}"))?,
                // A completion as messages after a text prompt: its responses as the template writes them.
                (PairText::Messages(m), None) => {
                    let pieces = self.template.pieces(turns(m)).map_err(|e| format!("`{key}`: {e}"))?;
                    pieces.into_iter().filter(|p| p.response).map(|p| p.text).collect()
                }
            };
            if text.trim().is_empty() {
                return Err(format!("empty `{key}`"));
            }
            let mut ids = self.tokenizer.encode(&text);
            // A model's template may end the conversation with EOS itself (Phi-3's do).
            let wrote_eos = matches!(c, PairText::Messages(_)) && matches!(self.template, phi_core::chat::ChatTemplate::Jinja(_)) && ids.last() == Some(&self.eos);
            if !wrote_eos {
                ids.push(self.eos);
            }
            Ok(ids)
        };
        Ok(TokenPair { prompt_ids: self.tokenizer.encode(&prompt), chosen_ids: completion("chosen", chosen)?, rejected_ids: completion("rejected", rejected)? })
    }
}

/// A parsed record ([`phi_data::pairs::parse_record`]) as a pair: token ids as they are, text
/// through `encoder` ([`PairEncoder::encode`]); text without an encoder is an error.
pub fn encode_record(record: PairRecord, encoder: Option<&PairEncoder>) -> std::result::Result<TokenPair, String> {
    match record {
        PairRecord::Ids(pair) => Ok(pair),
        PairRecord::Text { prompt, chosen, rejected } => encoder
            .ok_or("a text record needs the model's tokenizer (or give prompt_ids/chosen_ids/rejected_ids)")?
            .encode(&prompt, &chosen, &rejected),
    }
}

/// One JSONL record as a pair: token ids (`prompt_ids`, `chosen_ids`, `rejected_ids`; no
/// tokenizer needed), or text (`prompt`, `chosen`, `rejected`), each either a string or a
/// message list ([`phi_data::pairs`] parses and checks it, [`encode_record`] tokenizes it).
pub fn parse_pair(line: &str, encoder: Option<&PairEncoder>) -> std::result::Result<TokenPair, String> {
    phi_data::pairs::parse_record(line).and_then(|r| encode_record(r, encoder))
}

/// Loads a JSONL or Parquet file of preference records ([`phi_data::pairs::load`], text through
/// `encoder`); a bad record, or one that `collate`'s truncation would leave nothing to learn
/// from, is skipped and reported with its line number and the reason; pairs that will be cut
/// are counted.
pub fn load_pairs(path: &std::path::Path, encoder: Option<&PairEncoder>, collate: &Collate) -> Result<(Vec<TokenPair>, PairReport)> {
    phi_data::pairs::load(path, |record| {
        let pair = encode_record(record, encoder)?;
        match collate.drops(&pair) {
            Some(why) => Err(why),
            None => {
                let cut = collate.truncates(&pair);
                Ok((pair, cut))
            }
        }
    })
    .map_err(|e| TrainError::io(path, e))
}

/// The loss and TRL's metrics of `policy` against `reference` over all `pairs` (both models
/// without autodiff; no reference for SimPO/ORPO), `batch` pairs at a time: what `phi eval
/// dpo` prints to compare checkpoints. Metrics are means over pairs, as one batch of them all
/// would give.
pub fn evaluate_pairs(policy: &PhiForCausalLM, reference: Option<&PhiForCausalLM>, pairs: &[TokenPair], settings: PreferenceSettings, batch: usize) -> Result<PreferenceMetrics> {
    let device = policy.device();
    let mut total = Weighted::default();
    for chunk in pairs.chunks(batch.max(1)) {
        // Each chunk is an objective of its own pairs, scored against the reference once.
        let objective = Dpo::new(chunk, &[], reference, settings, 0)?;
        let indices: Vec<usize> = (0..chunk.len()).collect();
        let (_, m) = objective.evaluate(|ids| policy.forward(ids), &device, &indices);
        total.add(&m, chunk.len());
    }
    Ok(total.mean())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn v(t: Tensor<1>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn completion_logps_sum_only_completion_tokens_scored_by_the_previous_position() {
        let device = Device::default();
        let logits = Tensor::<3>::random([2, 4, 7], Distribution::Normal(0.0, 1.0), &device);
        let pairs = [TokenPair { prompt_ids: vec![1, 2], chosen_ids: vec![3, 4], rejected_ids: vec![5] }];
        let b = pair_batch(&pairs, &Collate::new(0), &device);
        assert_eq!(v(b.completion.clone().reshape([8])), [0., 0., 1., 1., 0., 0., 1., 0.]);
        assert_eq!(v(b.real.clone().reshape([8])), [1., 1., 1., 1., 1., 1., 1., 0.]);
        let s = completion_logps(logits.clone(), &b);
        let (got, counts, lengths, nll) = (v(s.sums), v(s.counts), v(s.lengths), v(s.chosen_nll));
        let lp = log_softmax(logits, 2).into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let at = |row: usize, pos: usize, tok: usize| lp[(row * 4 + pos) * 7 + tok];
        assert!((got[0] - (at(0, 1, 3) + at(0, 2, 4))).abs() < 1e-5);
        assert!((got[1] - at(1, 1, 5)).abs() < 1e-5);
        assert_eq!((counts, lengths), (vec![2.0, 1.0], vec![2.0, 1.0]));
        // A completion token at position 0 is in the length (TRL's IPO), not in the count.
        let b0 = pair_batch(&[TokenPair { prompt_ids: vec![], chosen_ids: vec![3, 4], rejected_ids: vec![5, 6] }], &Collate::new(0), &device);
        let s0 = completion_logps(Tensor::<3>::random([2, 2, 7], Distribution::Normal(0.0, 1.0), &device), &b0);
        assert_eq!((v(s0.counts), v(s0.lengths)), (vec![1.0, 1.0], vec![2.0, 2.0]));
        // ORPO's NLL: every scored token of the chosen row, prompt included.
        assert!((nll[0] + (at(0, 0, 2) + at(0, 1, 3) + at(0, 2, 4)) / 3.0).abs() < 1e-5);
    }

    #[test]
    fn truncation_keeps_the_start_or_the_end_and_drops_what_has_nothing_left() {
        let device = Device::default();
        let p = TokenPair { prompt_ids: vec![1, 2, 3], chosen_ids: vec![4, 5, 6], rejected_ids: vec![7] };
        let ids = |c: &Collate| {
            let b = pair_batch(std::slice::from_ref(&p), c, &device);
            let ids = b.ids.into_data().convert::<i64>().try_to_vec::<i64>().unwrap();
            (ids, v(b.completion.reshape([-1])))
        };
        let start = Collate { pad: 0, max_length: Some(4), truncation: Truncation::KeepStart };
        assert_eq!(ids(&start), (vec![1, 2, 3, 4, 1, 2, 3, 7], vec![0., 0., 0., 1., 0., 0., 0., 1.]));
        let end = Collate { truncation: Truncation::KeepEnd, ..start };
        assert_eq!(ids(&end), (vec![3, 4, 5, 6, 1, 2, 3, 7], vec![0., 1., 1., 1., 0., 0., 0., 1.]));
        assert!(start.truncates(&p) && !Collate::new(0).truncates(&p));
        let short = Collate { max_length: Some(3), ..start };
        assert!(short.drops(&p).unwrap().contains("the prompt alone has 3 tokens"));
        assert!(Collate { max_length: Some(3), ..end }.drops(&p).is_none());
    }

    #[test]
    fn log1mexp_is_accurate_near_zero_and_far_from_it() {
        let device = Device::default();
        let xs = [-5.0f64, -0.7, -0.1, -0.05, -1e-3, -1e-6];
        let got = v(log1mexp(Tensor::<1>::from_data(xs.map(|x| x as f32), &device)));
        for (g, x) in got.iter().zip(xs) {
            let want = (-x.exp_m1()).ln();
            assert!(((*g as f64) - want).abs() < 1e-4 * want.abs().max(1.0), "{x}: {g} vs {want}");
        }
    }

    #[test]
    fn losses_follow_their_definitions() {
        let device = Device::default();
        let seq = |sums: [f32; 4], counts: [f32; 4]| SequenceLogps {
            sums: Tensor::from_data(sums, &device),
            counts: Tensor::from_data(counts, &device),
            lengths: Tensor::from_data(counts, &device),
            chosen_nll: Tensor::from_data([0.75f32], &device),
        };
        let policy = || seq([-1.0, -2.0, -3.0, -1.5], [1.0, 1.0, 1.0, 1.0]);
        let reference = || Some(Tensor::<1>::from_data([-1.5, -2.0, -2.0, -2.5], &device));
        // chosen ratios 0.5 and 0, rejected ratios -1 and 1: Δ = 1.5 and -1
        let (beta, d) = (0.1f64, [1.5f64, -1.0]);
        let ls = |x: f64| -(1.0 + (-x).exp()).ln();
        let eps = 0.2;
        let want = d.iter().map(|&d| -(1.0 - eps) * ls(beta * d) - eps * ls(-beta * d)).sum::<f64>() / 2.0;
        let (l, m) = preference_loss(policy(), reference(), beta, PreferenceLoss::Sigmoid { label_smoothing: eps });
        assert!((v(l)[0] as f64 - want).abs() < 1e-6);
        assert!((m.rewards_chosen - 0.1 * (0.5 + 0.0) / 2.0).abs() < 1e-6);
        assert!((m.rewards_rejected - 0.1 * (-1.0 + 1.0) / 2.0).abs() < 1e-6);
        assert_eq!(m.rewards_accuracies, 0.5);
        assert!((m.logps_chosen - (-1.5)).abs() < 1e-6 && (m.logps_rejected - (-2.25)).abs() < 1e-6);
        let want = d.iter().map(|&d| (1.0 - beta * d).max(0.0)).sum::<f64>() / 2.0;
        assert!((v(preference_loss(policy(), reference(), beta, PreferenceLoss::Hinge).0)[0] as f64 - want).abs() < 1e-6);
        // IPO averages each log-ratio over its tokens (chosen 2 and 4 tokens, rejected 1 and 5);
        // its rewards stay the summed ratios, as TRL's.
        let counted = || seq([-1.0, -2.0, -3.0, -1.5], [2.0, 4.0, 1.0, 5.0]);
        let d_ipo = [0.5 / 2.0 - (-1.0) / 1.0, 0.0 / 4.0 - 1.0 / 5.0];
        let want = d_ipo.iter().map(|&d| (d - 1.0 / (2.0 * beta)).powi(2)).sum::<f64>() / 2.0;
        let (l, m) = preference_loss(counted(), reference(), beta, PreferenceLoss::Ipo);
        assert!((v(l)[0] as f64 - want).abs() < 1e-4);
        assert!((m.rewards_chosen - 0.1 * 0.5 / 2.0).abs() < 1e-6);
        // SimPO: no reference, per-token averages, margin γ.
        let (gamma, avg) = (0.5, [-0.5f64, -0.5, -3.0, -0.3]);
        let want = [(avg[0] - avg[2]), (avg[1] - avg[3])].iter().map(|&d| -ls(beta * d - gamma)).sum::<f64>() / 2.0;
        let (l, m) = preference_loss(counted(), None, beta, PreferenceLoss::Simpo { gamma, label_smoothing: 0.0 });
        assert!((v(l)[0] as f64 - want).abs() < 1e-6, "simpo");
        assert!((m.rewards_chosen - beta * (avg[0] + avg[1]) / 2.0).abs() < 1e-6 && (m.logps_rejected - (avg[2] + avg[3]) / 2.0).abs() < 1e-6);
        // ORPO: NLL minus β·logσ(log-odds ratio) of the averages.
        let l1m = |x: f64| (-x.exp_m1()).ln();
        let lo = |c: f64, r: f64| (c - r) - (l1m(c) - l1m(r));
        let want = 0.75 - beta * (ls(lo(avg[0], avg[2])) + ls(lo(avg[1], avg[3]))) / 2.0;
        let (l, _) = preference_loss(counted(), None, beta, PreferenceLoss::Orpo);
        assert!((v(l)[0] as f64 - want).abs() < 1e-5, "orpo {} vs {want}", v(preference_loss(counted(), None, beta, PreferenceLoss::Orpo).0)[0]);
    }

    #[test]
    fn text_records_tokenize_the_prompt_alone_and_end_completions_with_eos() {
        let texts = ["hello world", "def f(x): return x", "<|user|> <|assistant|> <|end|>", "good bad answer"];
        let tok = phi_data::Tokenizer::train_bpe(texts.iter().cycle().take(40).copied(), 300).unwrap();
        let plain = PairEncoder { tokenizer: tok, template: phi_core::chat::ChatTemplate::Plain, eos: 7 };
        let tok = &plain.tokenizer;
        let p = parse_pair(r#"{"prompt": "hello world", "chosen": " good answer", "rejected": " bad"}"#, Some(&plain)).unwrap();
        assert_eq!(p.prompt_ids, tok.encode("hello world"));
        assert_eq!(p.chosen_ids, [tok.encode(" good answer"), vec![7]].concat());
        assert_eq!(p.rejected_ids, [tok.encode(" bad"), vec![7]].concat());
        // Message lists: the prompt with the Phi-3 generation prompt, completions with <|end|>.
        let phi3 = PairEncoder { template: phi_core::chat::ChatTemplate::Phi3, tokenizer: phi_data::Tokenizer::train_bpe(texts.iter().cycle().take(40).copied(), 300).unwrap(), eos: 7 };
        let line = r#"{"prompt": [{"role": "user", "content": "hello world"}], "chosen": [{"role": "assistant", "content": "good"}], "rejected": [{"role": "assistant", "content": "bad"}]}"#;
        let p = parse_pair(line, Some(&phi3)).unwrap();
        assert_eq!(tok.decode(&p.prompt_ids), "<|user|>\nhello world<|end|>\n<|assistant|>\n");
        assert_eq!(tok.decode(&p.chosen_ids[..p.chosen_ids.len() - 1]), "good<|end|>\n");
        assert_eq!(*p.chosen_ids.last().unwrap(), 7);
        // Ids need no tokenizer; text without one, empty completions and unknown roles are errors.
        let p = parse_pair(r#"{"prompt_ids": [1], "chosen_ids": [2, 3], "rejected_ids": [4]}"#, None).unwrap();
        assert_eq!((p.prompt_ids, p.chosen_ids, p.rejected_ids), (vec![1], vec![2, 3], vec![4]));
        assert!(parse_pair(r#"{"prompt": "a", "chosen": "b", "rejected": "c"}"#, None).unwrap_err().contains("tokenizer"));
        assert!(parse_pair(r#"{"prompt": "a", "chosen": "  ", "rejected": "c"}"#, Some(&plain)).unwrap_err().contains("empty `chosen`"));
        let bad_role = r#"{"prompt": [{"role": "robot", "content": "a"}], "chosen": "b", "rejected": "c"}"#;
        assert!(parse_pair(bad_role, Some(&phi3)).unwrap_err().contains("unknown role `robot`"));
    }
}
