//! Continuous batching in the server: one thread owns decoding, and every choice of every
//! request being decoded is one sequence of its batch ([`phi_core::batching::Batcher`]). Each
//! step decodes all of them in one forward, so concurrent requests share the weight reads
//! that dominate a decode step; a new request joins at the next step (its prompt prefilled),
//! and a finished or cancelled one leaves at once with its KV cache.
//!
//! The request's own thread keeps what it did before: it receives each token, runs its text,
//! stop-string and cancellation logic, and answers whether to go on — so sampling, stop
//! strings, `n`, seeds, streaming and errors behave as when each request decoded alone, and
//! give the same tokens.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};

use phi_core::GenerationConfig;
use phi_core::batching::{Batcher, Chosen};

use crate::ServedModel;

/// What the decoding thread tells a request.
enum Msg {
    Token(u32),
    /// The sequence ended with the last token (its budget, or a stop id).
    Done,
    Failed(String),
}

struct Job {
    prompt: Vec<u32>,
    config: GenerationConfig,
    to: Sender<Msg>,
    /// The request's answer after each token: go on?
    go: Receiver<bool>,
}

/// The handle requests decode through; the decoding thread ends when it is dropped.
pub(crate) struct Scheduler {
    jobs: Sender<Job>,
}

impl Scheduler {
    /// Starts the decoding thread, with at most `max_batch` sequences at once.
    pub(crate) fn start(model: Arc<ServedModel>, max_batch: usize) -> Self {
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("phi-serve-decode".into())
            .spawn(move || run(&model, &queue, max_batch.max(1)))
            .expect("spawning the decoding thread");
        Scheduler { jobs }
    }

    /// Decodes after `prompt` as one sequence of the batch, calling `on_token` with each token
    /// on the calling thread; `false` from it ends the sequence. Blocks until the sequence ends.
    pub(crate) fn generate(&self, prompt: &[u32], config: &GenerationConfig, mut on_token: impl FnMut(u32) -> bool) -> Result<(), String> {
        let (to, from) = mpsc::channel();
        let (answer, go) = mpsc::channel();
        let stopped = || "the decoding thread has stopped".to_string();
        self.jobs.send(Job { prompt: prompt.to_vec(), config: config.clone(), to, go }).map_err(|_| stopped())?;
        loop {
            match from.recv() {
                Ok(Msg::Token(t)) => {
                    let more = on_token(t);
                    // After the last token the decoding thread no longer listens.
                    let _ = answer.send(more);
                    if !more {
                        return Ok(());
                    }
                }
                Ok(Msg::Done) => return Ok(()),
                Ok(Msg::Failed(e)) => return Err(e),
                Err(_) => return Err(stopped()),
            }
        }
    }
}

/// The decoding thread: admit what has come (waiting when idle), step, deliver, repeat.
fn run(model: &ServedModel, queue: &Receiver<Job>, max_batch: usize) {
    let mut batch = Batcher::new(&model.model);
    let mut live: HashMap<usize, Job> = HashMap::new();
    let mut next_id = 0usize;
    loop {
        if batch.is_empty() {
            match queue.recv() {
                Ok(job) => admit(job, &mut next_id, &mut batch, &mut live),
                // The server is gone.
                Err(_) => return,
            }
        }
        while batch.len() < max_batch {
            match queue.try_recv() {
                Ok(job) => admit(job, &mut next_id, &mut batch, &mut live),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        match batch.step() {
            Ok(chosen) => deliver(&chosen, &mut batch, &mut live),
            Err(e) => {
                // Every running sequence fails with the step.
                for (id, job) in live.drain() {
                    batch.remove(id);
                    let _ = job.to.send(Msg::Failed(e.to_string()));
                }
            }
        }
    }
}

/// Prefills `job`'s prompt and delivers its first token (a request the batcher refuses gets
/// the reason).
fn admit(job: Job, next_id: &mut usize, batch: &mut Batcher<'_>, live: &mut HashMap<usize, Job>) {
    let id = *next_id;
    *next_id += 1;
    match batch.admit(id, job.prompt.clone(), &job.config) {
        Ok(c) => {
            live.insert(id, job);
            deliver(&[c], batch, live);
        }
        Err(e) => {
            let _ = job.to.send(Msg::Failed(e.to_string()));
        }
    }
}

/// Hands each chosen token to its request — all of them first, so the requests' threads work
/// on their text at the same time — then collects their answers; a sequence ends when it is
/// done, or when its request says stop (or went away).
fn deliver(chosen: &[Chosen], batch: &mut Batcher<'_>, live: &mut HashMap<usize, Job>) {
    let mut ended = Vec::new();
    let mut waiting = Vec::with_capacity(chosen.len());
    for c in chosen {
        let Some(job) = live.get(&c.id) else { continue };
        let delivered = job.to.send(Msg::Token(c.token)).is_ok();
        if c.done {
            let _ = job.to.send(Msg::Done);
            ended.push(c.id);
        } else if delivered {
            waiting.push(c.id);
        } else {
            ended.push(c.id);
        }
    }
    for id in waiting {
        if !live[&id].go.recv().unwrap_or(false) {
            ended.push(id);
        }
    }
    for id in ended {
        live.remove(&id);
        batch.remove(id);
    }
}
