//! Continuous batching in the server: one thread owns decoding, and every choice of every
//! request being decoded is one sequence of its batch ([`phi_core::batching::Batcher`]). Each
//! step decodes all of them in one forward, so concurrent requests share the weight reads
//! that dominate a decode step; a new request joins at the next step, its prompt prefilled in
//! that step's forward beside the running sequences (a long one a chunk a step), and a
//! finished or cancelled one leaves at once with its KV cache.
//!
//! KV memory is budgeted, not sized for clients × context: a sequence reserves the cache of its
//! prompt plus its `max_tokens` when it joins and frees it when it leaves, and a request waits
//! (first come, first served) while the reservations of the running ones leave no room for it.
//! One larger than the whole budget runs alone, as every request ran before batching (a chat
//! request without `max_tokens` may take the rest of the context); nothing joins it meanwhile.
//!
//! A panic while decoding fails the requests then running (500) and the thread goes on with an
//! empty batch: the server keeps serving.
//!
//! The request's own thread keeps what it did before: it receives each token and runs its text,
//! stop-string and cancellation logic — so sampling, stop strings, `n`, seeds, streaming and
//! errors behave as when each request decoded alone, and give the same tokens. The decoding
//! thread does not wait for it: a request that has what it wants hangs up, and its sequence
//! leaves the batch at the next step (one token decoded in vain, instead of every step waiting
//! for every request's thread).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};

use phi_core::GenerationConfig;
use phi_core::batching::{Batcher, Chosen};

use crate::ServedModel;

/// What the decoding thread tells a request.
enum Msg {
    /// The sequence's prefill starts (a request that has hung up by then is skipped).
    Started,
    Token(u32),
    /// The sequence ended with the last token (its budget, or a stop id).
    Done,
    Failed(Failure),
}

/// Why a sequence did not run to its end: decoding failed, or the decoding thread is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure(pub(crate) String);

struct Job {
    prompt: Vec<u32>,
    config: GenerationConfig,
    to: Sender<Msg>,
}

impl Job {
    /// The KV cache this sequence can grow to.
    fn kv_bytes(&self, model: &ServedModel) -> usize {
        model.model.kv_cache_bytes(self.prompt.len().saturating_add(self.config.max_new_tokens))
    }
}

/// The handle requests decode through; the decoding thread ends when it is dropped.
pub(crate) struct Scheduler {
    jobs: Sender<Job>,
    /// KV bytes reserved by the running sequences (read by the tests).
    #[cfg(test)]
    reserved: Arc<AtomicUsize>,
}

impl Scheduler {
    /// Starts the decoding thread, with at most `max_batch` sequences at once whose KV caches
    /// together stay within `kv_budget` bytes, prompts prefilled `prefill_chunk` tokens a step
    /// (0: whole).
    pub(crate) fn start(model: Arc<ServedModel>, max_batch: usize, kv_budget: usize, prefill_chunk: usize) -> Self {
        let (jobs, queue) = mpsc::channel();
        let reserved = Arc::new(AtomicUsize::new(0));
        let limits = Budget { rows: max_batch.max(1), kv_bytes: kv_budget, reserved: reserved.clone(), prefill_chunk };
        std::thread::Builder::new().name("phi-serve-decode".into()).spawn(move || run(&model, &queue, limits)).expect("spawning the decoding thread");
        #[cfg(not(test))]
        drop(reserved);
        Scheduler {
            jobs,
            #[cfg(test)]
            reserved,
        }
    }

    /// KV bytes the running sequences have reserved (0 when idle).
    #[cfg(test)]
    pub(crate) fn kv_reserved(&self) -> usize {
        self.reserved.load(Ordering::SeqCst)
    }

    /// Decodes after `prompt` as one sequence of the batch, calling `on_token` with each token
    /// on the calling thread; `false` from it ends the sequence (returning drops the receiver,
    /// which the decoding thread sees at its next token). Blocks until the sequence ends, or —
    /// asked every 20 ms while no token comes, as while it waits for a row — until `cancelled`:
    /// a request that hangs up before its turn is never prefilled.
    pub(crate) fn generate(&self, prompt: &[u32], config: &GenerationConfig, cancelled: &dyn Fn() -> bool, mut on_token: impl FnMut(u32) -> bool) -> Result<(), Failure> {
        let (to, from) = mpsc::channel();
        let stopped = || Failure("the decoding thread has stopped".to_string());
        self.jobs.send(Job { prompt: prompt.to_vec(), config: config.clone(), to }).map_err(|_| stopped())?;
        loop {
            match from.recv_timeout(std::time::Duration::from_millis(20)) {
                Ok(Msg::Started) => {}
                Ok(Msg::Token(t)) => {
                    if !on_token(t) {
                        return Ok(());
                    }
                }
                Ok(Msg::Done) => return Ok(()),
                Ok(Msg::Failed(e)) => return Err(e),
                Err(mpsc::RecvTimeoutError::Timeout) if cancelled() => return Ok(()),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(stopped()),
            }
        }
    }
}

/// What the decoding thread may hold at once.
struct Budget {
    rows: usize,
    kv_bytes: usize,
    prefill_chunk: usize,
    reserved: Arc<AtomicUsize>,
}

/// The running sequences' requests and reservations.
struct Live {
    jobs: HashMap<usize, (Job, usize)>,
    reserved: Arc<AtomicUsize>,
}

impl Live {
    fn end(&mut self, id: usize, batch: &mut Batcher<'_>) -> Option<Job> {
        batch.remove(id);
        let (job, bytes) = self.jobs.remove(&id)?;
        self.reserved.fetch_sub(bytes, Ordering::SeqCst);
        Some(job)
    }
}

/// The decoding thread: take in what has come (waiting when idle), admit what fits, step,
/// deliver, repeat.
fn run(model: &ServedModel, queue: &Receiver<Job>, budget: Budget) {
    let mut batch = Batcher::new(&model.model).with_prefill_chunk(budget.prefill_chunk);
    let mut live = Live { jobs: HashMap::new(), reserved: budget.reserved.clone() };
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut next_id = 0usize;
    loop {
        if batch.is_empty() && waiting.is_empty() {
            match queue.recv() {
                Ok(job) => waiting.push_back(job),
                // The server is gone.
                Err(_) => return,
            }
        }
        loop {
            match queue.try_recv() {
                Ok(job) => waiting.push_back(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        // First come, first served: the oldest waiting request joins when a row and its KV
        // reservation are free — or, larger than the whole budget, when nothing else runs.
        while batch.len() < budget.rows {
            let Some(job) = waiting.front() else { break };
            let need = job.kv_bytes(model);
            if live.reserved.load(Ordering::SeqCst) + need > budget.kv_bytes && !live.jobs.is_empty() {
                break;
            }
            let job = waiting.pop_front().expect("the front");
            admit(job, need, &mut next_id, &mut batch, &mut live);
        }
        if batch.is_empty() {
            continue;
        }
        // A prompt still being prefilled hears nothing until its first token: ask whether its
        // request is still there (it ignores the message), so one that hung up leaves now.
        let queued: Vec<usize> = batch.prefilling().collect();
        for id in queued {
            if live.jobs.get(&id).is_none_or(|(job, _)| job.to.send(Msg::Started).is_err()) {
                live.end(id, &mut batch);
            }
        }
        if batch.is_empty() {
            continue;
        }
        #[cfg(test)]
        std::thread::sleep(std::time::Duration::from_millis(tests::PACE_MS.load(Ordering::SeqCst)));
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| batch.step())) {
            Ok(Ok(chosen)) => {
                // A prompt whose prefill failed: its request alone fails.
                for (id, e) in batch.take_failed() {
                    if let Some(job) = live.end(id, &mut batch) {
                        let _ = job.to.send(Msg::Failed(Failure(e.to_string())));
                    }
                }
                deliver(&chosen, &mut batch, &mut live)
            }
            // Every running sequence fails with the step.
            Ok(Err(e)) => fail_running(&e.to_string(), &mut batch, &mut live),
            Err(panic) => {
                fail_running(&format!("decoding panicked: {}", panic_message(&*panic)), &mut batch, &mut live);
                // Whatever the step left half done goes with the old batch.
                batch = Batcher::new(&model.model).with_prefill_chunk(budget.prefill_chunk);
            }
        }
    }
}

/// Ends every running sequence with `why`.
fn fail_running(why: &str, batch: &mut Batcher<'_>, live: &mut Live) {
    let ids: Vec<usize> = live.jobs.keys().copied().collect();
    for id in ids {
        if let Some(job) = live.end(id, batch) {
            let _ = job.to.send(Msg::Failed(Failure(why.to_string())));
        }
    }
}

/// A panic's message, when it carries one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_else(|| "no message".into())
}

/// Hands `job`'s prompt to the batcher, whose steps prefill it and deliver its first token (or,
/// without a prefill budget, which prefills it now: delivers it here); a request the batcher
/// refuses gets the reason.
fn admit(job: Job, need: usize, next_id: &mut usize, batch: &mut Batcher<'_>, live: &mut Live) {
    if job.to.send(Msg::Started).is_err() {
        // Its request hung up while it waited: nothing to prefill.
        return;
    }
    let id = *next_id;
    *next_id += 1;
    // A panic in the prefill leaves the batch as it was (a sequence joins only at the end).
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| batch.admit(id, job.prompt.clone(), &job.config))) {
        Ok(Ok(c)) => {
            live.reserved.fetch_add(need, Ordering::SeqCst);
            live.jobs.insert(id, (job, need));
            if let Some(c) = c {
                deliver(&[c], batch, live);
            }
        }
        Ok(Err(e)) => {
            let _ = job.to.send(Msg::Failed(Failure(e.to_string())));
        }
        Err(panic) => {
            let _ = job.to.send(Msg::Failed(Failure(format!("prefill panicked: {}", panic_message(&*panic)))));
        }
    }
}

/// Hands each chosen token to its request; a sequence ends when it is done, or when its
/// request has hung up (it stopped, or went away).
fn deliver(chosen: &[Chosen], batch: &mut Batcher<'_>, live: &mut Live) {
    for c in chosen {
        let Some((job, _)) = live.jobs.get(&c.id) else { continue };
        let delivered = job.to.send(Msg::Token(c.token)).is_ok();
        // Freed before the request hears it is done.
        if (c.done || !delivered)
            && let Some(job) = live.end(c.id, batch)
            && c.done
        {
            let _ = job.to.send(Msg::Done);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served() -> (tempfile::TempDir, Arc<ServedModel>) {
        let fixtures = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../phi-core/tests/fixtures"));
        let dir = tempfile::tempdir().unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(fixtures.join("phi3-tiny").join(f), dir.path().join(f)).unwrap();
        }
        std::fs::copy(fixtures.join("word-tokenizer-512/tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
        let model = ServedModel::load(dir.path(), None, Some("tiny".into()), &Default::default()).unwrap();
        (dir, Arc::new(model))
    }

    /// Milliseconds the decoding threads sleep before each step: a slow decoder, so that a
    /// test sees a sequence while it runs.
    pub(super) static PACE_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    /// A sequence holds its prompt + budget's reservation while it runs; a request that hangs
    /// up mid-stream (a cancelled one) frees it long before its budget would have run out, and
    /// the reservation returns to zero.
    #[test]
    fn a_cancelled_request_frees_its_kv_reservation() {
        let (_dir, model) = served();
        let scheduler = Scheduler::start(model.clone(), 4, usize::MAX, 0);
        let prompt = [3u32, 4, 5];
        let budget = 100;
        let need = model.model.kv_cache_bytes(prompt.len() + budget);
        // 20 ms a step: running the whole budget would take 2 s.
        PACE_MS.store(20, Ordering::SeqCst);
        let mut seen = vec![];
        let t = std::time::Instant::now();
        scheduler
            .generate(&prompt, &GenerationConfig::greedy(budget), &|| false, |_| {
                seen.push(scheduler.kv_reserved());
                seen.len() < 3
            })
            .unwrap();
        assert_eq!(seen, [need; 3]);
        while scheduler.kv_reserved() != 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let freed_after = t.elapsed();
        PACE_MS.store(0, Ordering::SeqCst);
        assert!(freed_after.as_millis() < 1000, "freed after {freed_after:?}: the sequence ran on after its request hung up");
        // A finished one frees it too, before its request hears it is done.
        scheduler.generate(&prompt, &GenerationConfig::greedy(2), &|| false, |_| true).unwrap();
        assert_eq!(scheduler.kv_reserved(), 0);
    }

    /// A request larger than the whole budget runs alone (as requests ran before batching):
    /// it waits for the running ones to end, and nothing joins it meanwhile.
    #[test]
    fn a_request_beyond_the_budget_runs_alone() {
        let (_dir, model) = served();
        let budget = model.model.kv_cache_bytes(10);
        let scheduler = Arc::new(Scheduler::start(model.clone(), 4, budget, 0));
        let need = model.model.kv_cache_bytes(11);
        let mut seen = vec![];
        scheduler
            .generate(&[3, 4, 5], &GenerationConfig::greedy(8), &|| false, |_| {
                seen.push(scheduler.kv_reserved());
                true
            })
            .unwrap();
        assert_eq!(seen.len(), 8);
        // The decoding thread may finish before the request has read every token: then it has
        // already freed the reservation.
        assert!(seen.iter().all(|&r| r == need || r == 0), "{seen:?}");
        assert_eq!(scheduler.kv_reserved(), 0);
    }
}
