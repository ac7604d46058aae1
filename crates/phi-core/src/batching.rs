//! Continuous batching: many prompts decoded together. At most `max_batch` sequences run at
//! once; each step decodes every running one in one forward ([`PhiForCausalLM::decode_step`]:
//! the weights are read once for all of them, which is what a memory-bound decode step costs),
//! and a waiting prompt joins — prefilled on its own — as soon as a running one finishes.
//!
//! Each sequence gets what [`PhiForCausalLM::generate_streaming`] gives it alone: its own
//! sampler (a seeded one draws the same tokens), stop ids and token budget, and the LongRoPE
//! switch (crossing the original context recomputes that sequence's cache, alone).

use crate::error::{Error, Result};
use crate::generation::{GenerationConfig, Sampler};
use crate::kv_cache::KvCache;
use crate::model::PhiForCausalLM;

/// One sequence while it runs.
struct Running {
    /// Its index among the requests.
    index: usize,
    tokens: Vec<u32>,
    new: usize,
    sampler: Sampler,
}

impl PhiForCausalLM {
    /// Generates after each of `requests`' prompts with its own config, at most `max_batch`
    /// sequences at a time (continuous batching, see [`crate::batching`]); returns prompt + new
    /// tokens per request, in request order. `on_token(i, token)` sees request `i`'s tokens as
    /// they are chosen; returning `false` ends that request (cancellation) and frees its cache.
    ///
    /// ```
    /// # use phi_core::{GenerationConfig, PhiConfig, PhiForCausalLM, burn::tensor::Device};
    /// # let model = PhiForCausalLM::init(PhiConfig::phi3_family(32, 2, 4, 2, 48, 64), &Device::flex(), 0).unwrap();
    /// let requests = vec![(vec![1, 2, 3], GenerationConfig::greedy(5)), (vec![4], GenerationConfig::sampling(5, 0.8, 7))];
    /// let out = model.generate_batch(&requests, 8, |_, _| true).unwrap();
    /// // The same tokens as each alone.
    /// assert_eq!(out[0], model.generate(&requests[0].0, &requests[0].1).unwrap());
    /// assert_eq!(out[1], model.generate(&requests[1].0, &requests[1].1).unwrap());
    /// ```
    pub fn generate_batch(&self, requests: &[(Vec<u32>, GenerationConfig)], max_batch: usize, mut on_token: impl FnMut(usize, u32) -> bool) -> Result<Vec<Vec<u32>>> {
        if max_batch == 0 {
            return Err(Error::arg("max_batch", "must be at least 1"));
        }
        let max_len = self.config().max_position_embeddings;
        for (i, (prompt, config)) in requests.iter().enumerate() {
            let at = |e: Error| Error::arg("requests", format!("request {i}: {e}"));
            config.validate().map_err(at)?;
            if !config.use_cache {
                return Err(at(Error::arg("use_cache", "batched decoding runs on the KV cache")));
            }
            if prompt.is_empty() {
                return Err(at(Error::arg("prompt", "must hold at least one token")));
            }
            if config.max_new_tokens > max_len.saturating_sub(prompt.len()) {
                return Err(at(Error::SequenceTooLong { len: prompt.len().saturating_add(config.max_new_tokens), max: max_len }));
            }
            self.check_host_ids(prompt.iter().map(|&t| i64::from(t))).map_err(at)?;
        }
        let mut out: Vec<Option<Vec<u32>>> = vec![None; requests.len()];
        let (mut running, mut caches): (Vec<Running>, Vec<KvCache>) = (Vec::new(), Vec::new());
        let mut waiting = 0..requests.len();
        // Whether a sequence is done after choosing `token` (its budget, a stop id, the caller).
        let chose = |r: &mut Running, token: u32, on_token: &mut dyn FnMut(usize, u32) -> bool| {
            r.tokens.push(token);
            r.new += 1;
            let config = &requests[r.index].1;
            !on_token(r.index, token) || config.stop_token_ids.contains(&token) || r.new >= config.max_new_tokens
        };
        loop {
            // Admit waiting prompts while there is room: each prefilled alone, its first token chosen.
            while running.len() < max_batch {
                let Some(index) = waiting.next() else { break };
                let (prompt, config) = &requests[index];
                let mut r = Running { index, tokens: prompt.clone(), new: 0, sampler: Sampler::new(config) };
                if config.max_new_tokens == 0 {
                    out[index] = Some(r.tokens);
                    continue;
                }
                let mut cache = self.new_cache();
                let token = self.next_token(&r.tokens, &mut cache, 0, &mut r.sampler)?;
                if chose(&mut r, token, &mut on_token) {
                    out[index] = Some(r.tokens);
                } else {
                    running.push(r);
                    caches.push(cache);
                }
            }
            if running.is_empty() {
                break;
            }
            // A sequence whose next position crosses the LongRoPE switch recomputes alone;
            // the others take one step together.
            let recompute: Vec<bool> = running.iter().zip(&caches).map(|(r, c)| self.uses_long_rope(r.tokens.len()) != self.uses_long_rope(c.len())).collect();
            let mut tokens: Vec<Option<u32>> = vec![None; running.len()];
            for (i, r) in running.iter_mut().enumerate().filter(|(i, _)| recompute[*i]) {
                caches[i].clear();
                tokens[i] = Some(self.next_token(&r.tokens, &mut caches[i], 0, &mut r.sampler)?);
            }
            let together: Vec<usize> = (0..running.len()).filter(|&i| !recompute[i]).collect();
            if !together.is_empty() {
                let last: Vec<u32> = together.iter().map(|&i| *running[i].tokens.last().expect("a prompt")).collect();
                let mut batch: Vec<KvCache> = together.iter().map(|&i| std::mem::replace(&mut caches[i], KvCache::new(0))).collect();
                let logits = self.decode_step(&last, &mut batch);
                for (&i, cache) in together.iter().zip(batch) {
                    caches[i] = cache;
                }
                let logits = logits?.into_data().convert::<f32>();
                let logits = logits.as_slice::<f32>().expect("f32 logits");
                let vocab = self.config().vocab_size;
                for (row, &i) in together.iter().enumerate() {
                    tokens[i] = Some(running[i].sampler.sample(&logits[row * vocab..(row + 1) * vocab]));
                }
            }
            // Finished sequences leave at once, their caches with them.
            let mut kept = (Vec::with_capacity(running.len()), Vec::with_capacity(running.len()));
            for ((mut r, cache), token) in running.drain(..).zip(caches.drain(..)).zip(tokens) {
                if chose(&mut r, token.expect("every running sequence chose a token"), &mut on_token) {
                    out[r.index] = Some(r.tokens);
                } else {
                    kept.0.push(r);
                    kept.1.push(cache);
                }
            }
            (running, caches) = kept;
        }
        Ok(out.into_iter().map(|o| o.expect("every request finished")).collect())
    }

    /// Runs `tokens[done..]` after the `done` tokens in `cache` and samples the next token.
    fn next_token(&self, tokens: &[u32], cache: &mut KvCache, done: usize, sampler: &mut Sampler) -> Result<u32> {
        let logits = self.forward_cached(self.ids_tensor(&tokens[done..])?, cache, true)?;
        let row = logits.into_data().convert::<f32>();
        Ok(sampler.sample(row.as_slice::<f32>().expect("f32 logits")))
    }
}
