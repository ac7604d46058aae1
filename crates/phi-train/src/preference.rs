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
//! use phi_train::preference::{PreferenceLoss, preference_loss};
//!
//! let device = Device::default();
//! // Two pairs: chosen log-probs first, then rejected.
//! let policy = Tensor::<1>::from_data([-10.0, -12.0, -14.0, -11.0], &device);
//! let reference = Tensor::<1>::from_data([-11.0, -12.0, -13.0, -12.0], &device);
//! let (loss, m) = preference_loss(policy, reference, 0.1, PreferenceLoss::Sigmoid { label_smoothing: 0.0 });
//! assert!(loss.into_scalar::<f32>() > 0.0);
//! assert_eq!(m.rewards_accuracies, 0.5);
//! ```

use burn::tensor::activation::{log_sigmoid, log_softmax, relu};
use burn::tensor::{Device, Int, Tensor, TensorData};
use phi_core::{PhiConfig, PhiForCausalLM};
use phi_data::{SamplerState, TokenSampler};
use serde::{Deserialize, Serialize};

use crate::TrainConfig;
use crate::error::{Result, TrainError};
use crate::objective::{BatchLoss, Forward, Objective};

/// Which preference loss, with TRL's `loss_type` names.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "loss_type", rename_all = "snake_case")]
pub enum PreferenceLoss {
    /// DPO: `-(1-ε)·logσ(βΔ) - ε·logσ(-βΔ)` (ε > 0 is conservative DPO, cDPO).
    Sigmoid { label_smoothing: f64 },
    /// IPO: `(Δ - 1/(2β))²`, on log-probabilities averaged over completion tokens (as TRL).
    Ipo,
    /// SLiC's hinge: `relu(1 - βΔ)`.
    Hinge,
}

impl PreferenceLoss {
    /// Whether sequence log-probabilities are averaged over their completion tokens (IPO) rather
    /// than summed.
    pub fn averages_logps(&self) -> bool {
        matches!(self, PreferenceLoss::Ipo)
    }
}

/// The metrics TRL logs for a preference batch, with its names and definitions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PreferenceMetrics {
    pub loss: f64,
    /// Mean of `β·(policy - reference)` over the chosen completions.
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

/// Per-sequence log-probability of the completion tokens: `logits` `[n, t, vocab]`, `ids`
/// `[n, t]`, `mask` `[n, t]` (1 at completion tokens, 0 at prompt and padding). Token `j` is
/// scored by the logits at `j - 1`, so position 0 never counts. `average`: divide by the number
/// of completion tokens.
pub fn completion_logps(logits: Tensor<3>, ids: Tensor<2, Int>, mask: Tensor<2>, average: bool) -> Tensor<1> {
    let [n, t, v] = logits.dims();
    let log_probs = log_softmax(logits.narrow(1, 0, t - 1).reshape([n * (t - 1), v]), 1);
    let picked = log_probs.gather(1, ids.narrow(1, 1, t - 1).reshape([n * (t - 1), 1])).reshape([n, t - 1]);
    let mask = mask.narrow(1, 1, t - 1);
    let sums = (picked * mask.clone()).sum_dim(1).reshape([n]);
    if average { sums / mask.sum_dim(1).reshape([n]).clamp_min(1.0) } else { sums }
}

fn mean(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64).sum::<f64>() / x.len().max(1) as f64
}

/// The loss (mean over pairs) and TRL's metrics. `policy` and `reference` hold `2·pairs`
/// sequence log-probabilities, chosen ones first; `reference` carries no gradient.
pub fn preference_loss(policy: Tensor<1>, reference: Tensor<1>, beta: f64, kind: PreferenceLoss) -> (Tensor<1>, PreferenceMetrics) {
    let n = policy.dims()[0] / 2;
    let reference = reference.detach();
    let (pc, pr) = (policy.clone().narrow(0, 0, n), policy.clone().narrow(0, n, n));
    let (rc, rr) = (reference.clone().narrow(0, 0, n), reference.narrow(0, n, n));
    let chosen_ratio = pc - rc;
    let rejected_ratio = pr - rr;
    let delta = chosen_ratio.clone() - rejected_ratio.clone();
    let losses = match kind {
        PreferenceLoss::Sigmoid { label_smoothing: eps } => {
            let z = delta * beta;
            log_sigmoid(z.clone()).neg() * (1.0 - eps) - log_sigmoid(z.neg()) * eps
        }
        PreferenceLoss::Ipo => (delta - 1.0 / (2.0 * beta)).powi_scalar(2),
        PreferenceLoss::Hinge => relu((delta * beta).neg() + 1.0),
    };
    let loss = losses.mean();
    let host = |t: Tensor<1>| t.detach().into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 data");
    let (cr, rj) = (host(chosen_ratio * beta), host(rejected_ratio * beta));
    let logps = host(policy);
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

/// One preference pair as token ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenPair {
    pub prompt_ids: Vec<u32>,
    pub chosen_ids: Vec<u32>,
    pub rejected_ids: Vec<u32>,
}

/// The batch TRL's preference collator builds: rows `prompt + chosen` for every pair, then
/// `prompt + rejected`, right-padded with `pad` to the longest; the mask marks completion tokens.
/// Returns `(ids [2n, t], mask [2n, t])`.
pub fn pair_batch(pairs: &[TokenPair], pad: u32, device: &Device) -> (Tensor<2, Int>, Tensor<2>) {
    let rows: Vec<(&[u32], &[u32])> = pairs
        .iter()
        .map(|p| (&p.prompt_ids[..], &p.chosen_ids[..]))
        .chain(pairs.iter().map(|p| (&p.prompt_ids[..], &p.rejected_ids[..])))
        .collect();
    let t = rows.iter().map(|(p, c)| p.len() + c.len()).max().unwrap_or(0).max(2);
    let (mut ids, mut mask) = (Vec::with_capacity(rows.len() * t), Vec::with_capacity(rows.len() * t));
    for (p, c) in &rows {
        ids.extend(p.iter().chain(c.iter()).map(|&x| x as i64));
        ids.extend(std::iter::repeat_n(pad as i64, t - p.len() - c.len()));
        mask.extend(std::iter::repeat_n(0.0f32, p.len()));
        mask.extend(std::iter::repeat_n(1.0f32, c.len()));
        mask.extend(std::iter::repeat_n(0.0f32, t - p.len() - c.len()));
    }
    let n = rows.len();
    (Tensor::from_data(TensorData::new(ids, [n, t]), device), Tensor::from_data(TensorData::new(mask, [n, t]), device))
}

/// Sequence log-probabilities of `pairs` under `model` (no gradients), `batch` pairs at a time:
/// `(chosen, rejected)` per pair — the reference side of the preference losses, computed once.
pub fn sequence_logps(model: &PhiForCausalLM, pairs: &[TokenPair], pad: u32, batch: usize, average: bool) -> Vec<(f32, f32)> {
    let device = model.device();
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch.max(1)) {
        let (ids, mask) = pair_batch(chunk, pad, &device);
        let logps = completion_logps(model.forward(ids.clone()), ids, mask, average);
        let v = logps.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 data");
        let n = chunk.len();
        out.extend((0..n).map(|i| (v[i], v[n + i])));
    }
    out
}

/// Preference tuning as an [`Objective`]: batches of pairs (chosen and rejected through the
/// model together), the policy's completion log-probabilities against the reference's, one of
/// the [`PreferenceLoss`]es, TRL's metrics in `metrics.jsonl`.
///
/// The reference's log-probabilities are computed once, when the objective is built, from the
/// reference model given (an explicit reference folder, or the policy as it starts — TRL's
/// default): training then holds one model, not two.
///
/// ```no_run
/// # use phi_train::*;
/// # use phi_train::preference::*;
/// # fn demo(pairs: &[TokenPair], base: &phi_core::PhiForCausalLM, cfg: &TrainConfig, lora: lora::LoraConfig) -> Result<()> {
/// let loss = PreferenceLoss::Sigmoid { label_smoothing: 0.0 };
/// let mut objective = Dpo::new(pairs, &[], base, 0.1, loss, 0, cfg.seed);
/// let weights = Weights::Lora { base: "sft-model".into(), adapter: Adapter::Fresh(lora), quantize: None };
/// fit(&weights, &mut objective, cfg, "runs/dpo".as_ref(), true, &burn::tensor::Device::default(), |m| {
///     println!("{} {:.4} margin {:.3}", m.step, m.loss, m.extra["rewards/margins"])
/// })?;
/// # Ok(()) }
/// ```
pub struct Dpo<'a> {
    pairs: &'a [TokenPair],
    validation: &'a [TokenPair],
    /// Reference `(chosen, rejected)` log-probabilities, of `pairs` then of `validation`.
    reference: Vec<(f32, f32)>,
    beta: f64,
    loss: PreferenceLoss,
    pad: u32,
    sampler: TokenSampler,
}

/// Every pair fits the model: ids within its vocabulary, prompt + longer completion within its
/// context (the error names the pair, counting from 0).
pub fn check_pairs<'p>(pairs: impl IntoIterator<Item = &'p TokenPair>, model: &PhiConfig) -> Result<()> {
    for (i, p) in pairs.into_iter().enumerate() {
        let longest = p.prompt_ids.len() + p.chosen_ids.len().max(p.rejected_ids.len());
        if longest > model.max_position_embeddings {
            return Err(TrainError::Invalid(format!("pair {i} has {longest} tokens, more than the model's max_position_embeddings ({})", model.max_position_embeddings)));
        }
        if let Some(&id) = p.prompt_ids.iter().chain(&p.chosen_ids).chain(&p.rejected_ids).find(|&&id| id as usize >= model.vocab_size) {
            return Err(TrainError::Invalid(format!("pair {i} has token id {id}, but the model's vocab_size is {}", model.vocab_size)));
        }
    }
    Ok(())
}

/// Pairs the reference is scored on at once when a [`Dpo`] is built.
const REFERENCE_BATCH: usize = 8;

impl<'a> Dpo<'a> {
    /// Scores `pairs` and `validation` with `reference` (a model without autodiff) and keeps
    /// only those numbers. Panics if `pairs` is empty.
    pub fn new(pairs: &'a [TokenPair], validation: &'a [TokenPair], reference: &PhiForCausalLM, beta: f64, loss: PreferenceLoss, pad: u32, seed: u64) -> Self {
        assert!(!pairs.is_empty(), "preference tuning needs at least one pair");
        let all: Vec<TokenPair> = pairs.iter().chain(validation).cloned().collect();
        let reference = sequence_logps(reference, &all, pad, REFERENCE_BATCH, loss.averages_logps());
        Dpo { pairs, validation, reference, beta, loss, pad, sampler: TokenSampler::new(pairs.len(), seed) }
    }

    fn reference_of(&self, indices: &[usize]) -> Vec<f32> {
        let chosen = indices.iter().map(|&i| self.reference[i].0);
        chosen.chain(indices.iter().map(|&i| self.reference[i].1)).collect()
    }

    /// The loss and metrics over `indices` (of `pairs`, then `validation`).
    fn evaluate(&self, model: &Forward<'_>, indices: &[usize]) -> (Tensor<1>, PreferenceMetrics) {
        let batch: Vec<TokenPair> = indices.iter().map(|&i| self.pair(i).clone()).collect();
        let (ids, mask) = pair_batch(&batch, self.pad, &model.device());
        let policy = completion_logps(model.logits(ids.clone()), ids, mask, self.loss.averages_logps());
        let reference = Tensor::<1>::from_data(TensorData::new(self.reference_of(indices), [2 * indices.len()]), &model.device());
        preference_loss(policy, reference, self.beta, self.loss)
    }

    fn pair(&self, i: usize) -> &TokenPair {
        if i < self.pairs.len() { &self.pairs[i] } else { &self.validation[i - self.pairs.len()] }
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
        check_pairs(self.pairs.iter().chain(self.validation), model)
    }

    fn next_batch(&mut self, batch_size: usize) -> Vec<usize> {
        (0..batch_size).map(|_| self.sampler.next_window()).collect()
    }

    fn tokens(&self, batch: &Vec<usize>) -> usize {
        batch.iter().map(|&i| 2 * self.pairs[i].prompt_ids.len() + self.pairs[i].chosen_ids.len() + self.pairs[i].rejected_ids.len()).sum()
    }

    fn weight(&self, batch: &Vec<usize>) -> f64 {
        batch.len() as f64
    }

    fn loss(&self, model: &Forward<'_>, batch: &Vec<usize>) -> BatchLoss {
        let (loss, metrics) = self.evaluate(model, batch);
        BatchLoss { loss, metrics: metrics.named() }
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(self.sampler.state()).expect("sampler state serializes")
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        let state: SamplerState = serde_json::from_value(state.clone()).map_err(|e| TrainError::Invalid(format!("the pair sampler's state: {e}")))?;
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
        self.reference.iter().for_each(|(c, r)| h.update(&[c.to_le_bytes(), r.to_le_bytes()].concat()));
        format!(
            "preference {} train / {} validation pairs, {:?} beta {}, pad {}, {:016x}",
            self.pairs.len(),
            self.validation.len(),
            self.loss,
            self.beta,
            self.pad,
            h.digest()
        )
    }

    fn validate(&self, model: &PhiForCausalLM, _cfg: &TrainConfig) -> Option<f64> {
        if self.validation.is_empty() {
            return None;
        }
        let refs = &self.reference[self.pairs.len()..];
        Some(metrics_against(model, self.validation, refs, self.beta, self.loss, self.pad, REFERENCE_BATCH).loss)
    }
}

/// What loading a preference file did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PairReport {
    pub pairs: usize,
    /// `(line number, reason)` of every skipped record.
    pub skipped: Vec<(usize, String)>,
}

/// How text records become token ids: the model's tokenizer, chat template and EOS id.
pub struct PairEncoder<'a> {
    pub tokenizer: &'a phi_data::Tokenizer,
    pub template: phi_core::chat::ChatTemplate,
    pub eos: u32,
}

fn ids_field(v: &serde_json::Value, key: &str) -> std::result::Result<Option<Vec<u32>>, String> {
    match v.get(key) {
        None => Ok(None),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|x| x.as_u64().filter(|&n| n <= u32::MAX as u64).map(|n| n as u32).ok_or_else(|| format!("`{key}` holds {x}, not a token id")))
            .collect::<std::result::Result<Vec<u32>, String>>()
            .map(Some),
        Some(other) => Err(format!("`{key}` is {other}, not a list of token ids")),
    }
}

/// `(role, content)` messages of a field that is a message list.
fn messages(v: &serde_json::Value, key: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let list = v.as_array().ok_or_else(|| format!("`{key}` is neither text nor a list of messages"))?;
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m.get("role").and_then(|r| r.as_str()).ok_or_else(|| format!("{key}[{i}] has no `role`"))?;
            let content = m.get("content").and_then(|c| c.as_str()).ok_or_else(|| format!("{key}[{i}] has no `content`"))?;
            if !["system", "user", "assistant"].contains(&role) {
                return Err(format!("{key}[{i}] has unknown role `{role}`"));
            }
            Ok((role.to_string(), content.to_string()))
        })
        .collect()
}

/// One JSONL record as a pair: token ids (`prompt_ids`, `chosen_ids`, `rejected_ids`; no
/// tokenizer needed), or text (`prompt`, `chosen`, `rejected`), each either a string or a
/// message list. As TRL does, the prompt is tokenized on its own (message lists rendered with
/// the chat template and its generation prompt) and every completion ends with EOS (after the
/// template's end-of-turn marker for message lists).
pub fn parse_pair(line: &str, encoder: Option<&PairEncoder<'_>>) -> std::result::Result<TokenPair, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    if let Some(prompt_ids) = ids_field(&v, "prompt_ids")? {
        let chosen_ids = ids_field(&v, "chosen_ids")?.ok_or("no `chosen_ids`")?;
        let rejected_ids = ids_field(&v, "rejected_ids")?.ok_or("no `rejected_ids`")?;
        if chosen_ids.is_empty() || rejected_ids.is_empty() {
            return Err("an empty completion".into());
        }
        return Ok(TokenPair { prompt_ids, chosen_ids, rejected_ids });
    }
    let enc = encoder.ok_or("a text record needs the model's tokenizer (or give prompt_ids/chosen_ids/rejected_ids)")?;
    let field = |key: &str| v.get(key).ok_or_else(|| format!("no `{key}` (nor `{key}_ids`)"));
    let prompt = match field("prompt")? {
        serde_json::Value::String(s) => s.clone(),
        other => {
            let m = messages(other, "prompt")?;
            enc.template.prompt(m.iter().map(|(r, c)| (r.as_str(), c.as_str())))
        }
    };
    let completion = |key: &str| -> std::result::Result<Vec<u32>, String> {
        let text = match field(key)? {
            serde_json::Value::String(s) => s.clone(),
            other => {
                let m = messages(other, key)?;
                enc.template.pieces(m.iter().map(|(r, c)| (r.as_str(), c.as_str()))).into_iter().filter(|p| p.response).map(|p| p.text).collect()
            }
        };
        if text.trim().is_empty() {
            return Err(format!("empty `{key}`"));
        }
        let mut ids = enc.tokenizer.encode(&text);
        ids.push(enc.eos);
        Ok(ids)
    };
    Ok(TokenPair { prompt_ids: enc.tokenizer.encode(&prompt), chosen_ids: completion("chosen")?, rejected_ids: completion("rejected")? })
}

/// Loads a JSONL file of preference records ([`parse_pair`]); a bad record is skipped and
/// reported with its line number and the reason.
pub fn load_pairs(path: &std::path::Path, encoder: Option<&PairEncoder<'_>>) -> Result<(Vec<TokenPair>, PairReport)> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let (mut pairs, mut report) = (Vec::new(), PairReport::default());
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = std::str::from_utf8(raw).map_err(|_| "not valid UTF-8".to_string()).and_then(|line| parse_pair(line, encoder));
        match parsed {
            Ok(p) => pairs.push(p),
            Err(why) => report.skipped.push((i + 1, why)),
        }
    }
    report.pairs = pairs.len();
    Ok((pairs, report))
}

/// The loss and TRL's metrics of `policy` against `reference` over all `pairs` (both models
/// without autodiff), `batch` pairs at a time: what `phi eval dpo` prints to compare
/// checkpoints. Metrics are means over pairs, as one batch of them all would give.
pub fn evaluate_pairs(policy: &PhiForCausalLM, reference: &PhiForCausalLM, pairs: &[TokenPair], beta: f64, kind: PreferenceLoss, pad: u32, batch: usize) -> PreferenceMetrics {
    let refs = sequence_logps(reference, pairs, pad, batch, kind.averages_logps());
    metrics_against(policy, pairs, &refs, beta, kind, pad, batch)
}

/// The loss and metrics of `policy` over `pairs` against their reference log-probabilities
/// `refs` (`(chosen, rejected)` per pair), `batch` pairs at a time, weighted by pairs.
fn metrics_against(policy: &PhiForCausalLM, pairs: &[TokenPair], refs: &[(f32, f32)], beta: f64, kind: PreferenceLoss, pad: u32, batch: usize) -> PreferenceMetrics {
    let device = policy.device();
    let mut total = PreferenceMetrics { loss: 0.0, rewards_chosen: 0.0, rewards_rejected: 0.0, rewards_margins: 0.0, rewards_accuracies: 0.0, logps_chosen: 0.0, logps_rejected: 0.0 };
    for (chunk, r) in pairs.chunks(batch.max(1)).zip(refs.chunks(batch.max(1))) {
        let (ids, mask) = pair_batch(chunk, pad, &device);
        let logps = completion_logps(policy.forward(ids.clone()), ids, mask, kind.averages_logps());
        let n = chunk.len();
        let r: Vec<f32> = r.iter().map(|p| p.0).chain(r.iter().map(|p| p.1)).collect();
        let (_, m) = preference_loss(logps, Tensor::from_data(TensorData::new(r, [2 * n]), &device), beta, kind);
        let w = n as f64 / pairs.len() as f64;
        total.loss += m.loss * w;
        total.rewards_chosen += m.rewards_chosen * w;
        total.rewards_rejected += m.rewards_rejected * w;
        total.rewards_margins += m.rewards_margins * w;
        total.rewards_accuracies += m.rewards_accuracies * w;
        total.logps_chosen += m.logps_chosen * w;
        total.logps_rejected += m.logps_rejected * w;
    }
    total
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
        let (ids, mask) = pair_batch(&pairs, 0, &device);
        assert_eq!(v(mask.clone().reshape([8])), [0., 0., 1., 1., 0., 0., 1., 0.]);
        let got = v(completion_logps(logits.clone(), ids, mask, false));
        let lp = log_softmax(logits, 2).into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let at = |row: usize, pos: usize, tok: usize| lp[(row * 4 + pos) * 7 + tok];
        assert!((got[0] - (at(0, 1, 3) + at(0, 2, 4))).abs() < 1e-5);
        assert!((got[1] - at(1, 1, 5)).abs() < 1e-5);
    }

    #[test]
    fn losses_follow_their_definitions() {
        let device = Device::default();
        let policy = Tensor::<1>::from_data([-1.0, -2.0, -3.0, -1.5], &device);
        let reference = Tensor::<1>::from_data([-1.5, -2.0, -2.0, -2.5], &device);
        // chosen ratios 0.5 and 0, rejected ratios -1 and 1: Δ = 1.5 and -1
        let (beta, d) = (0.1f64, [1.5f64, -1.0]);
        let ls = |x: f64| -(1.0 + (-x).exp()).ln();
        let eps = 0.2;
        let want = d.iter().map(|&d| -(1.0 - eps) * ls(beta * d) - eps * ls(-beta * d)).sum::<f64>() / 2.0;
        let (l, m) = preference_loss(policy.clone(), reference.clone(), beta, PreferenceLoss::Sigmoid { label_smoothing: eps });
        assert!((v(l)[0] as f64 - want).abs() < 1e-6);
        assert!((m.rewards_chosen - 0.1 * (0.5 + 0.0) / 2.0).abs() < 1e-6);
        assert!((m.rewards_rejected - 0.1 * (-1.0 + 1.0) / 2.0).abs() < 1e-6);
        assert_eq!(m.rewards_accuracies, 0.5);
        assert!((m.logps_chosen - (-1.5)).abs() < 1e-6 && (m.logps_rejected - (-2.25)).abs() < 1e-6);
        let want = d.iter().map(|&d| (d - 1.0 / (2.0 * beta)).powi(2)).sum::<f64>() / 2.0;
        assert!((v(preference_loss(policy.clone(), reference.clone(), beta, PreferenceLoss::Ipo).0)[0] as f64 - want).abs() < 1e-4);
        let want = d.iter().map(|&d| (1.0 - beta * d).max(0.0)).sum::<f64>() / 2.0;
        assert!((v(preference_loss(policy, reference, beta, PreferenceLoss::Hinge).0)[0] as f64 - want).abs() < 1e-6);
    }

    #[test]
    fn text_records_tokenize_the_prompt_alone_and_end_completions_with_eos() {
        let texts = ["hello world", "def f(x): return x", "<|user|> <|assistant|> <|end|>", "good bad answer"];
        let tok = phi_data::Tokenizer::train_bpe(texts.iter().cycle().take(40).copied(), 300).unwrap();
        let plain = PairEncoder { tokenizer: &tok, template: phi_core::chat::ChatTemplate::Plain, eos: 7 };
        let p = parse_pair(r#"{"prompt": "hello world", "chosen": " good answer", "rejected": " bad"}"#, Some(&plain)).unwrap();
        assert_eq!(p.prompt_ids, tok.encode("hello world"));
        assert_eq!(p.chosen_ids, [tok.encode(" good answer"), vec![7]].concat());
        assert_eq!(p.rejected_ids, [tok.encode(" bad"), vec![7]].concat());
        // Message lists: the prompt with the Phi-3 generation prompt, completions with <|end|>.
        let phi3 = PairEncoder { template: phi_core::chat::ChatTemplate::Phi3, ..plain };
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
