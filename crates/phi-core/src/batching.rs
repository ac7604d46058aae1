//! Continuous batching: many prompts decoded together. At most `max_batch` sequences run at
//! once; each step decodes every running one in one forward ([`PhiForCausalLM::decode_step`]:
//! the weights are read once for all of them, which is what a memory-bound decode step costs),
//! and a waiting prompt joins as soon as a running one finishes. Without a prefill budget a
//! prompt is prefilled alone when it joins. With one ([`Batcher::with_prefill_chunk`]) the
//! steps prefill the waiting prompts beside the running sequences, in the same forward
//! ([`PhiForCausalLM::forward_sequences`]): several short prompts a step, or a long one a chunk
//! at a time, so a joining prompt does not stall the running sequences for its whole length
//! and, while the step's tokens fit the few-rows kernels' 64 rows, costs no pass over the
//! weights of its own.
//!
//! Each sequence gets what [`PhiForCausalLM::generate_streaming`] gives it alone: its own
//! sampler (a seeded one draws the same tokens), stop ids and token budget, and the LongRoPE
//! switch (crossing the original context recomputes that sequence's cache, alone).
//!
//! [`Batcher`] is the engine (a server feeds it requests as they come);
//! [`PhiForCausalLM::generate_batch`] runs a fixed list of requests through it.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::generation::{GenerationConfig, Sampler};
use crate::kv_cache::KvCache;
use crate::model::PhiForCausalLM;

/// One sequence while it runs.
struct Running {
    /// The caller's name for it.
    id: usize,
    tokens: Vec<u32>,
    new: usize,
    config: GenerationConfig,
    sampler: Sampler,
}

/// A token chosen for sequence `id`; `done` when the sequence ended with it (its budget, or a
/// stop id) and has left the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chosen {
    pub id: usize,
    pub token: u32,
    pub done: bool,
}

/// The running sequences, the prompts waiting to be prefilled, and their KV caches.
/// [`admit`](Self::admit) takes a prompt in (prefilled at once without a prefill budget, by the
/// steps with one); [`step`](Self::step) chooses the next token of every running
/// sequence in one forward; [`remove`](Self::remove) ends one early (a cancelled request).
///
/// ```
/// # use phi_core::{GenerationConfig, PhiConfig, PhiForCausalLM, burn::tensor::Device};
/// # let model = PhiForCausalLM::init(PhiConfig::phi3_family(32, 2, 4, 2, 48, 64), &Device::flex(), 0).unwrap();
/// use phi_core::batching::Batcher;
/// let mut batch = Batcher::new(&model);
/// let first = batch.admit(0, vec![1, 2, 3], &GenerationConfig::greedy(4)).unwrap().expect("prefilled whole");
/// batch.admit(1, vec![4], &GenerationConfig::greedy(4)).unwrap();
/// let mut ids = vec![vec![1, 2, 3, first.token]];
/// while !batch.is_empty() {
///     for c in batch.step().unwrap() {
///         if c.id == 0 { ids[0].push(c.token) }
///     }
/// }
/// assert_eq!(ids[0], model.generate(&[1, 2, 3], &GenerationConfig::greedy(4)).unwrap());
/// ```
pub struct Batcher<'m> {
    model: &'m PhiForCausalLM,
    running: Vec<Running>,
    caches: Vec<KvCache>,
    /// Prompts waiting to be prefilled by the steps, oldest first (their caches hold the pieces
    /// already run).
    prefilling: std::collections::VecDeque<(Running, KvCache)>,
    /// Prompt tokens per prefill chunk (0: a prompt is prefilled whole when admitted).
    chunk: usize,
    /// Prompts whose prefill failed in a step, with why ([`take_failed`](Self::take_failed)).
    failed: Vec<(usize, Error)>,
}

impl<'m> Batcher<'m> {
    pub fn new(model: &'m PhiForCausalLM) -> Self {
        Batcher { model, running: Vec::new(), caches: Vec::new(), prefilling: Default::default(), chunk: 0, failed: Vec::new() }
    }

    /// Prompts are prefilled by the steps, at most `tokens` prompt tokens a step, in the same
    /// forward as the running sequences' next tokens: [`admit`](Self::admit) queues them, and
    /// each [`step`](Self::step) takes from the oldest waiting prompt on each one's next piece
    /// (the rest of it, or `tokens` of it) while the pieces fit `tokens` together (the oldest
    /// one's always runs). The step that runs a prompt's last piece returns its first token.
    /// A prompt's pieces do not depend on what else waits, so it gets the same values beside
    /// others as alone; and a prompt of at most `tokens` is one piece, computed as a whole
    /// prompt is alone. A longer one's chunks give the whole prompt's logits to rounding (the
    /// same positions and keys; the products run as other row counts). A prompt that crosses
    /// the LongRoPE switch is prefilled whole when admitted: its first chunks would be rotated
    /// with the other factors. 0 (the default) prefills every prompt whole and alone in
    /// `admit`.
    ///
    /// ```
    /// # use phi_core::{GenerationConfig, PhiConfig, PhiForCausalLM, burn::tensor::Device};
    /// # let model = PhiForCausalLM::init(PhiConfig::phi3_family(32, 2, 4, 2, 48, 64), &Device::flex(), 0).unwrap();
    /// use phi_core::batching::Batcher;
    /// let mut batch = Batcher::new(&model).with_prefill_chunk(4);
    /// // Two short prompts fit one step's 4 prompt tokens: one step prefills both.
    /// assert!(batch.admit(0, vec![1, 2], &GenerationConfig::greedy(8)).unwrap().is_none());
    /// assert!(batch.admit(1, vec![3, 4], &GenerationConfig::greedy(8)).unwrap().is_none());
    /// assert_eq!(batch.step().unwrap().len(), 2);
    /// // 10 prompt tokens beside the running sequences: chunks of 4, 4 and 2, one a step, the
    /// // running ones decoding at each; the first token comes with the third.
    /// assert!(batch.admit(2, (1..=10).collect(), &GenerationConfig::greedy(2)).unwrap().is_none());
    /// for _ in 0..2 {
    ///     assert!(batch.step().unwrap().iter().all(|c| c.id != 2));
    /// }
    /// assert!(batch.step().unwrap().iter().any(|c| c.id == 2));
    /// ```
    pub fn with_prefill_chunk(mut self, tokens: usize) -> Self {
        self.chunk = tokens;
        self
    }

    /// Sequences running or being prefilled.
    pub fn len(&self) -> usize {
        self.running.len() + self.prefilling.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty() && self.prefilling.is_empty()
    }

    /// Checks a request as [`PhiForCausalLM::generate`] does (a config it refuses, an empty
    /// prompt, a budget past the context, ids outside the vocabulary).
    pub fn check(&self, prompt: &[u32], config: &GenerationConfig) -> Result<()> {
        config.validate()?;
        if !config.use_cache {
            return Err(Error::arg("use_cache", "batched decoding runs on the KV cache"));
        }
        if prompt.is_empty() {
            return Err(Error::arg("prompt", "must hold at least one token"));
        }
        let max_len = self.model.config().max_position_embeddings;
        if config.max_new_tokens > max_len.saturating_sub(prompt.len()) {
            return Err(Error::SequenceTooLong { len: prompt.len().saturating_add(config.max_new_tokens), max: max_len });
        }
        self.model.check_host_ids(prompt.iter().map(|&t| i64::from(t)))
    }

    /// Takes `prompt` in as sequence `id`. Without a prefill budget it is prefilled now, alone,
    /// and its first token returned; unless that ended it, the sequence runs from now on. With
    /// one ([`with_prefill_chunk`](Self::with_prefill_chunk)) it is queued (`None`) and the next
    /// steps prefill it, the last of them returning its first token. A zero budget is refused:
    /// the caller has nothing to decode.
    pub fn admit(&mut self, id: usize, prompt: Vec<u32>, config: &GenerationConfig) -> Result<Option<Chosen>> {
        self.check(&prompt, config)?;
        if config.max_new_tokens == 0 {
            return Err(Error::arg("max_new_tokens", "must be at least 1 to decode"));
        }
        let mut r = Running { id, tokens: prompt, new: 0, config: config.clone(), sampler: Sampler::new(config) };
        let mut cache = self.model.new_cache();
        cache.reserve(r.tokens.len() + config.max_new_tokens.min(crate::kv_cache::RESERVE_AHEAD));
        let n = r.tokens.len();
        if self.chunk > 0 && self.model.uses_long_rope(self.chunk.min(n)) == self.model.uses_long_rope(n) {
            self.prefilling.push_back((r, cache));
            return Ok(None);
        }
        let token = Self::sample_after(self.model, &r.tokens, &mut cache, &mut r.sampler)?;
        let done = chose(&mut r, token);
        if !done {
            self.running.push(r);
            self.caches.push(cache);
        }
        Ok(Some(Chosen { id, token, done }))
    }

    /// Ends sequence `id` now and frees its cache (`false` if it was neither running nor
    /// being prefilled).
    pub fn remove(&mut self, id: usize) -> bool {
        if let Some(i) = self.prefilling.iter().position(|(r, _)| r.id == id) {
            self.prefilling.remove(i);
            return true;
        }
        match self.running.iter().position(|r| r.id == id) {
            Some(i) => {
                self.running.remove(i);
                self.caches.remove(i);
                true
            }
            None => false,
        }
    }

    /// The tokens of sequence `id` so far (prompt included), while it runs or is prefilled.
    pub fn tokens(&self, id: usize) -> Option<&[u32]> {
        self.running.iter().chain(self.prefilling.iter().map(|(r, _)| r)).find(|r| r.id == id).map(|r| r.tokens.as_slice())
    }

    /// The prompts waiting to be prefilled by the steps (or partly prefilled), oldest first.
    pub fn prefilling(&self) -> impl Iterator<Item = usize> + '_ {
        self.prefilling.iter().map(|(r, _)| r.id)
    }

    /// The sequences that failed in the steps since the last call, with why: a prompt the model
    /// refused (it alone), or every sequence of a step whose forward panicked (their caches
    /// were half written). Each has left the batch, and the others went on.
    pub fn take_failed(&mut self) -> Vec<(usize, Error)> {
        std::mem::take(&mut self.failed)
    }

    /// The prompts whose pieces this step prefills: from the oldest, each its next piece (the
    /// rest of it, at most a chunk: a prompt's pieces are the same whatever else waits), while
    /// they fit the chunk's budget together (the first always runs). A prompt the model would
    /// refuse leaves the queue for [`take_failed`](Self::take_failed) before anything runs.
    fn pieces(&mut self) -> Vec<usize> {
        let mut lens = Vec::new();
        let mut total = 0;
        let mut j = 0;
        while j < self.prefilling.len() {
            let (r, cache) = &self.prefilling[j];
            let len = (r.tokens.len() - cache.len()).min(self.chunk);
            if !lens.is_empty() && total + len > self.chunk {
                break;
            }
            if let Err(e) = self.model.check_sequence(&r.tokens[cache.len()..cache.len() + len], cache) {
                let (r, _) = self.prefilling.remove(j).expect("in the queue");
                self.failed.push((r.id, e));
                continue;
            }
            lens.push(len);
            total += len;
            j += 1;
        }
        lens
    }

    /// Chooses the next token of every running sequence, and prefills waiting prompts beside
    /// them: one forward for the running sequences' tokens and the prompts' pieces
    /// ([`PhiForCausalLM::forward_sequences`]), except that a sequence crossing the LongRoPE
    /// switch recomputes alone. A prompt whose last piece ran has its first token among those
    /// returned and runs from the next step; finished sequences leave. While nothing runs,
    /// pieces go on back to back until a prompt has its first token. A prompt the model
    /// refuses leaves the batch and is reported by [`take_failed`](Self::take_failed). An error
    /// of the forward fails the step, the caches as they were; a panic in it ends every
    /// sequence it ran (reported by `take_failed`), and the step returns the others' tokens.
    pub fn step(&mut self) -> Result<Vec<Chosen>> {
        loop {
            let out = self.step_once()?;
            if !out.is_empty() || !self.running.is_empty() || self.prefilling.is_empty() {
                return Ok(out);
            }
        }
    }

    fn step_once(&mut self) -> Result<Vec<Chosen>> {
        let model = self.model;
        let recompute: Vec<bool> = self.running.iter().zip(&self.caches).map(|(r, c)| model.uses_long_rope(r.tokens.len()) != model.uses_long_rope(c.len())).collect();
        let mut tokens: Vec<Option<u32>> = vec![None; self.running.len()];
        for i in (0..self.running.len()).filter(|&i| recompute[i]) {
            self.caches[i].clear();
            let r = &mut self.running[i];
            tokens[i] = Some(Self::sample_after(model, &r.tokens, &mut self.caches[i], &mut r.sampler)?);
        }
        let together: Vec<usize> = (0..self.running.len()).filter(|&i| !recompute[i]).collect();
        let mut dropped = vec![false; self.running.len()];
        let pieces = self.pieces();
        let mut joined = Vec::new();
        if !together.is_empty() || !pieces.is_empty() {
            let mut batch: Vec<KvCache> = together.iter().map(|&i| std::mem::replace(&mut self.caches[i], KvCache::new(0))).collect();
            batch.extend(self.prefilling.iter_mut().take(pieces.len()).map(|(_, c)| std::mem::replace(c, KvCache::new(0))));
            let starts: Vec<usize> = self.prefilling.iter().zip(&batch[together.len()..]).map(|((_, _), c)| c.len()).collect();
            let ran = {
                let mut parts: Vec<&[u32]> = together.iter().map(|&i| std::slice::from_ref(self.running[i].tokens.last().expect("a prompt"))).collect();
                parts.extend(self.prefilling.iter().zip(&starts).zip(&pieces).map(|(((r, _), &at), &len)| &r.tokens[at..at + len]));
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    if pieces.is_empty() { model.decode_step(&parts.iter().map(|p| p[0]).collect::<Vec<_>>(), &mut batch) } else { model.forward_sequences(&parts, &mut batch) }
                }))
            };
            let mut batch = batch.into_iter();
            for &i in &together {
                self.caches[i] = batch.next().expect("one cache per row");
            }
            for ((_, c), fresh) in self.prefilling.iter_mut().zip(batch) {
                *c = fresh;
            }
            let logits = match ran {
                Ok(logits) => logits?,
                Err(panic) => {
                    // The caches the forward was writing are half written: every sequence it
                    // ran leaves the batch, reported as failed; the batch goes on without them.
                    let why = format!("the step's forward panicked: {}", panic_message(&*panic));
                    for &i in &together {
                        dropped[i] = true;
                    }
                    for (r, _) in self.prefilling.drain(..pieces.len()).collect::<Vec<_>>() {
                        self.failed.push((r.id, Error::arg("step", why.clone())));
                    }
                    return Ok(self.finish(tokens, &dropped, Vec::new(), &why));
                }
            };
            let logits = logits.into_data().convert::<f32>();
            let logits = logits.as_slice::<f32>().expect("f32 logits");
            let vocab = model.config().vocab_size;
            // Rows are sampled in parallel: each has its own sampler, so the draws are the same.
            let mut rows: Vec<(usize, &mut Running)> = self.running.iter_mut().enumerate().filter(|(i, _)| !recompute[*i]).collect();
            let chosen: Vec<(usize, u32)> = rows
                .par_iter_mut()
                .enumerate()
                .map(|(row, (i, r))| (*i, r.sampler.sample(&logits[row * vocab..(row + 1) * vocab])))
                .collect();
            for (i, token) in chosen {
                tokens[i] = Some(token);
            }
            // The prompts whose last piece ran choose their first token; the others wait on.
            let ran = self.prefilling.drain(..pieces.len()).collect::<Vec<_>>();
            let mut waiting = Vec::new();
            for (j, (mut r, cache)) in ran.into_iter().enumerate() {
                if cache.len() < r.tokens.len() {
                    waiting.push((r, cache));
                    continue;
                }
                let row = together.len() + j;
                let token = r.sampler.sample(&logits[row * vocab..(row + 1) * vocab]);
                joined.push((r, cache, token));
            }
            for w in waiting.into_iter().rev() {
                self.prefilling.push_front(w);
            }
        }
        Ok(self.finish(tokens, &dropped, joined, ""))
    }

    /// Records each running sequence's chosen token (a `dropped` one, which has none, leaves as
    /// failed with `why`) and the joining prompts' first tokens; finished sequences leave.
    fn finish(&mut self, tokens: Vec<Option<u32>>, dropped: &[bool], joined: Vec<(Running, KvCache, u32)>, why: &str) -> Vec<Chosen> {
        let mut chosen = Vec::with_capacity(self.running.len() + joined.len());
        for (((r, cache), token), &dropped) in self.running.drain(..).zip(self.caches.drain(..)).zip(tokens).zip(dropped) {
            if dropped {
                self.failed.push((r.id, Error::arg("step", why.to_string())));
                continue;
            }
            chosen.push((r, cache, token.expect("every running sequence chose a token")));
        }
        let mut out = Vec::with_capacity(chosen.len() + joined.len());
        let mut kept = (Vec::with_capacity(out.capacity()), Vec::with_capacity(out.capacity()));
        for (mut r, cache, token) in chosen.into_iter().chain(joined) {
            let done = chose(&mut r, token);
            out.push(Chosen { id: r.id, token, done });
            if !done {
                kept.0.push(r);
                kept.1.push(cache);
            }
        }
        (self.running, self.caches) = kept;
        out
    }

    /// Runs what `cache` lacks of `tokens` and samples the next token.
    fn sample_after(model: &PhiForCausalLM, tokens: &[u32], cache: &mut KvCache, sampler: &mut Sampler) -> Result<u32> {
        let logits = model.forward_cached(model.ids_tensor(&tokens[cache.len()..])?, cache, true)?;
        let row = logits.into_data().convert::<f32>();
        Ok(sampler.sample(row.as_slice::<f32>().expect("f32 logits")))
    }
}

/// A panic's message, when it carries one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_else(|| "no message".into())
}

/// Records `token` for `r`; whether it ended the sequence (budget, or a stop id).
fn chose(r: &mut Running, token: u32) -> bool {
    r.tokens.push(token);
    r.new += 1;
    r.config.stop_token_ids.contains(&token) || r.new >= r.config.max_new_tokens
}

impl PhiForCausalLM {
    /// Generates after each of `requests`' prompts with its own config, at most `max_batch`
    /// sequences at a time (continuous batching, see [`crate::batching`]: the prompts that join
    /// together are prefilled together, beside the running sequences); returns prompt + new
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
        // Prompts unchunked, as `generate` runs them, and the waiting ones prefilled together
        // in the next step (in groups of the few-rows kernel's rows, a longer prompt alone).
        let mut batch = Batcher::new(self).with_prefill_chunk(usize::MAX);
        for (i, (prompt, config)) in requests.iter().enumerate() {
            batch.check(prompt, config).map_err(|e| Error::arg("requests", format!("request {i}: {e}")))?;
        }
        let mut out: Vec<Vec<u32>> = requests.iter().map(|(p, _)| p.clone()).collect();
        let mut waiting = (0..requests.len()).filter(|&i| requests[i].1.max_new_tokens > 0);
        // Whether sequence `c.id` goes on after `c`.
        let mut take = |c: Chosen, out: &mut Vec<Vec<u32>>| {
            out[c.id].push(c.token);
            on_token(c.id, c.token) && !c.done
        };
        loop {
            while batch.len() < max_batch {
                let Some(i) = waiting.next() else { break };
                // Queued for the next step (`admit` returns a token only without a prefill budget).
                if let Some(c) = batch.admit(i, requests[i].0.clone(), &requests[i].1)?
                    && !take(c, &mut out)
                    && !c.done
                {
                    batch.remove(i);
                }
            }
            if batch.is_empty() {
                break;
            }
            let chosen = batch.step()?;
            if let Some((i, e)) = batch.take_failed().into_iter().next() {
                return Err(Error::arg("requests", format!("request {i}: {e}")));
            }
            for c in chosen {
                if !take(c, &mut out) && !c.done {
                    batch.remove(c.id);
                }
            }
        }
        Ok(out)
    }
}
