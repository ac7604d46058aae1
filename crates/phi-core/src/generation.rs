//! Autoregressive generation: prompt in one batched forward, then cached decoding; greedy or
//! seeded sampling with temperature, top-k and top-p; stop tokens; a streaming callback.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::model::PhiForCausalLM;

/// How to pick the next tokens. `temperature == 0` means greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1 = off).
    pub top_p: f64,
    pub seed: u64,
    /// Generation ends after emitting any of these (the stop token is included in the output).
    pub stop_token_ids: Vec<u32>,
    /// Decode with the KV cache (default); `false` recomputes the whole sequence each step.
    pub use_cache: bool,
}

impl GenerationConfig {
    /// Greedy decoding of `max_new_tokens` tokens, no stop tokens.
    pub fn greedy(max_new_tokens: usize) -> Self {
        GenerationConfig {
            max_new_tokens,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            stop_token_ids: Vec::new(),
            use_cache: true,
        }
    }

    /// Sampling at `temperature` with a fixed `seed` (same seed, same tokens).
    pub fn sampling(max_new_tokens: usize, temperature: f64, seed: u64) -> Self {
        GenerationConfig { temperature, seed, ..Self::greedy(max_new_tokens) }
    }

    pub fn with_top_k(mut self, k: usize) -> Self {
        self.top_k = k;
        self
    }

    pub fn with_top_p(mut self, p: f64) -> Self {
        self.top_p = p;
        self
    }

    pub fn with_stop_tokens(mut self, ids: impl IntoIterator<Item = u32>) -> Self {
        self.stop_token_ids = ids.into_iter().collect();
        self
    }

    pub fn with_cache(mut self, use_cache: bool) -> Self {
        self.use_cache = use_cache;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::arg("temperature", format!("{} must be ≥ 0", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::arg("top_p", format!("{} is not in (0, 1]", self.top_p)));
        }
        Ok(())
    }
}

/// Chooses a token from one row of logits.
///
/// Without `top_k` and `top_p` a draw walks the vocabulary in id order (as `torch.multinomial`
/// does), over weights computed in one vectorised pass and skipped a block at a time — no sort.
/// With either, candidates are ranked by logit first. Either way a seed gives the same tokens
/// wherever the row is computed: alone, or as one row of a batch.
pub struct Sampler {
    config: GenerationConfig,
    rng: StdRng,
    /// Reused between draws: the softmax weights and their block totals.
    weights: Vec<f32>,
    blocks: Vec<f64>,
}

impl Sampler {
    pub fn new(config: &GenerationConfig) -> Self {
        Sampler { config: config.clone(), rng: StdRng::seed_from_u64(config.seed), weights: Vec::new(), blocks: Vec::new() }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let c = &self.config;
        if c.temperature == 0.0 {
            return argmax(logits);
        }
        if c.top_k == 0 && c.top_p >= 1.0 {
            return self.draw_unfiltered(logits);
        }
        let mut order = ranked(logits, c.top_k);
        let max = logits[order[0]] as f64;
        let mut probs: Vec<f64> = order.iter().map(|&i| ((logits[i] as f64 - max) / c.temperature).exp()).collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        if c.top_p < 1.0 {
            let mut cum = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    cum += p;
                    cum >= c.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            order.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.rng.random::<f64>() * total;
        for (p, &i) in probs.iter().zip(&order) {
            if r < *p {
                return i as u32;
            }
            r -= p;
        }
        *order.last().expect("at least one candidate") as u32
    }
}

impl Sampler {
    /// A draw from the whole softmax at the temperature, in id order.
    fn draw_unfiltered(&mut self, logits: &[f32]) -> u32 {
        use phi_kernels::WEIGHT_BLOCK;
        self.weights.resize(logits.len(), 0.0);
        self.blocks.resize(logits.len().div_ceil(WEIGHT_BLOCK), 0.0);
        phi_kernels::softmax_weights(&mut self.weights, logits, (1.0 / self.config.temperature) as f32, &mut self.blocks);
        let total: f64 = self.blocks.iter().sum();
        let mut r = self.rng.random::<f64>() * total;
        // The block the draw falls in, then the id inside it; rounding (the block totals are
        // summed in another order than this walk) can leave `r` past a block's last weight: the
        // draw is then that block's last possible id.
        for (b, &block) in self.blocks.iter().enumerate() {
            if r >= block {
                r -= block;
                continue;
            }
            let start = b * WEIGHT_BLOCK;
            let mut last = None;
            for (i, &p) in self.weights[start..(start + WEIGHT_BLOCK).min(logits.len())].iter().enumerate() {
                if p > 0.0 {
                    if r < p as f64 {
                        return (start + i) as u32;
                    }
                    r -= p as f64;
                    last = Some(start + i);
                }
            }
            if let Some(i) = last {
                return i as u32;
            }
        }
        // Past the total by rounding: the last id with any weight (or, with none, the argmax).
        self.weights.iter().rposition(|&p| p > 0.0).map_or_else(|| argmax(logits), |i| i as u32)
    }
}

/// The ids of `logits` by logit, descending, ties to the lower id (as torch), the first `top_k`
/// of them (all when 0): the order `sort_by(total_cmp, then id)` gives, computed on one integer
/// key per id — a logit's bits mapped so that integer order is `total_cmp`'s, inverted for
/// descending, above the id — whose distinct keys any sort puts in that one order. An unstable
/// sort of integers (and, with `top_k`, a selection first) is several times faster than the
/// stable comparison sort over a 50k vocabulary, and every draw stays the same.
fn ranked(logits: &[f32], top_k: usize) -> Vec<usize> {
    let ordered = |x: f32| {
        let b = x.to_bits();
        if b >> 31 == 1 { !b } else { b | 0x8000_0000 }
    };
    let mut keys: Vec<u64> = logits.iter().enumerate().map(|(i, &l)| (u64::from(!ordered(l)) << 32) | i as u64).collect();
    if top_k > 0 && top_k < keys.len() {
        keys.select_nth_unstable(top_k - 1);
        keys.truncate(top_k);
    }
    keys.sort_unstable();
    keys.into_iter().map(|k| (k & 0xffff_ffff) as usize).collect()
}

/// Index of the largest value, the first one on ties (as `torch.argmax`).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// The ids that end a reply of the model in `model_dir`: its config's EOS ids and
/// `generation_config.json`'s `eos_token_id` (a number or a list; transformers stops on any of
/// them). An id beyond u32 names no token (it would wrap to another one) and is left out; a
/// missing or unreadable `generation_config.json` adds nothing. Sorted, without duplicates.
pub fn stop_token_ids(model_dir: &std::path::Path, config: &crate::PhiConfig) -> Vec<u32> {
    let mut ids = config.eos_token_ids.clone();
    if let Ok(text) = std::fs::read_to_string(model_dir.join("generation_config.json"))
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
    {
        let id = |n: &serde_json::Value| n.as_u64().and_then(|n| u32::try_from(n).ok());
        match &v["eos_token_id"] {
            n @ serde_json::Value::Number(_) => ids.extend(id(n)),
            serde_json::Value::Array(a) => ids.extend(a.iter().filter_map(id)),
            _ => {}
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

impl PhiForCausalLM {
    /// Generates after `prompt`; returns prompt + new tokens.
    pub fn generate(&self, prompt: &[u32], config: &GenerationConfig) -> Result<Vec<u32>> {
        self.generate_streaming(prompt, config, |_| true)
    }

    /// Like [`generate`](Self::generate), calling `on_token` with each new token as soon as it
    /// is chosen; returning `false` from it stops generation.
    pub fn generate_streaming(
        &self,
        prompt: &[u32],
        config: &GenerationConfig,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>> {
        config.validate()?;
        if prompt.is_empty() {
            return Err(Error::arg("prompt", "must hold at least one token"));
        }
        let mut tokens = prompt.to_vec();
        let max_len = self.config().max_position_embeddings;
        if config.max_new_tokens > max_len.saturating_sub(tokens.len()) {
            return Err(Error::SequenceTooLong { len: tokens.len().saturating_add(config.max_new_tokens), max: max_len });
        }
        let mut sampler = Sampler::new(config);
        let mut cache = self.new_cache();
        cache.reserve(tokens.len() + config.max_new_tokens.min(crate::kv_cache::RESERVE_AHEAD));
        // Tokens already processed into the cache.
        let mut done = 0;
        for _ in 0..config.max_new_tokens {
            let logits = if config.use_cache {
                // LongRoPE: crossing the original context switches frequencies for the whole
                // sequence, so the cached keys are stale; start over (HF drops its cache too).
                if done > 0 && self.uses_long_rope(tokens.len()) != self.uses_long_rope(done) {
                    cache.clear();
                    done = 0;
                }
                let logits = self.forward_cached(self.ids_tensor(&tokens[done..])?, &mut cache, true)?;
                done = tokens.len();
                logits
            } else {
                let logits = self.try_forward(self.ids_tensor(&tokens)?)?;
                let t = tokens.len();
                logits.narrow(1, t - 1, 1)
            };
            let row = logits.into_data().convert::<f32>();
            let next = sampler.sample(row.as_slice::<f32>().expect("f32 logits"));
            tokens.push(next);
            let keep_going = on_token(next);
            if !keep_going || config.stop_token_ids.contains(&next) {
                break;
            }
        }
        Ok(tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::ranked;

    /// The integer-key ranking is the comparison sort's order exactly: ties (to the lower id),
    /// both zeros, infinities, and a top-k cut.
    #[test]
    fn ranking_is_the_stable_comparison_sorts_order() {
        let mut state = 7u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let mut logits: Vec<f32> = (0..5000).map(|_| ((next() * 40.0) as i32 as f32 - 20.0) / 4.0).collect();
        logits.extend([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, 1e-30, -1e-30, f32::MAX, f32::MIN]);
        let mut reference: Vec<usize> = (0..logits.len()).collect();
        reference.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        assert_eq!(ranked(&logits, 0), reference);
        for k in [1, 7, 100, 5008, 9999] {
            assert_eq!(ranked(&logits, k), reference[..k.min(reference.len())], "top_k {k}");
        }
    }

    /// Unfiltered sampling draws each id with its softmax probability at the temperature (over
    /// more than one weight block), never an id of logit −∞, and the same seed draws the same.
    #[test]
    fn unfiltered_draws_follow_the_softmax() {
        use super::{GenerationConfig, Sampler};
        let n = 300;
        let mut logits: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 15.0).collect();
        for i in [3, 150, 299] {
            logits[i] = f32::NEG_INFINITY;
        }
        let t = 0.7;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let exact: Vec<f64> = logits.iter().map(|&l| ((l as f64 - max) / t).exp()).collect();
        let z: f64 = exact.iter().sum();
        let draws = 200_000;
        let mut sampler = Sampler::new(&GenerationConfig::sampling(1, t, 11));
        let mut counts = vec![0usize; n];
        let seq: Vec<u32> = (0..draws).map(|_| sampler.sample(&logits)).collect();
        seq.iter().for_each(|&i| counts[i as usize] += 1);
        for i in [3, 150, 299] {
            assert_eq!(counts[i], 0, "id {i} has logit -inf");
        }
        for (i, (&c, &p)) in counts.iter().zip(&exact).enumerate() {
            let p = p / z;
            let sd = (draws as f64 * p * (1.0 - p)).sqrt();
            assert!((c as f64 - draws as f64 * p).abs() <= 5.0 * sd + 1.0, "id {i}: {c} draws, expected {:.1}", draws as f64 * p);
        }
        let mut again = Sampler::new(&GenerationConfig::sampling(1, t, 11));
        assert!(seq.iter().take(1000).all(|&i| again.sample(&logits) == i));
        let mut only: Vec<f32> = vec![f32::NEG_INFINITY; 130];
        only[77] = 2.0;
        assert_eq!(Sampler::new(&GenerationConfig::sampling(1, 1.0, 3)).sample(&only), 77);
    }

    #[test]
    fn stop_ids_join_config_and_generation_config_without_wrapping() {
        let dir = std::env::temp_dir().join(format!("stop-ids-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = crate::PhiConfig { eos_token_ids: vec![7, 2], ..crate::PhiConfig::phi_1() };
        assert_eq!(super::stop_token_ids(&dir, &config), [2, 7]);
        std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": [5, 7, 4294967298]}"#).unwrap();
        assert_eq!(super::stop_token_ids(&dir, &config), [2, 5, 7]);
        std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": 9}"#).unwrap();
        assert_eq!(super::stop_token_ids(&dir, &config), [2, 7, 9]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
