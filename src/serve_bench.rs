//! `phi bench serve`: requests/s and tokens/s of `phi serve` at several numbers of concurrent
//! clients, over real HTTP on 127.0.0.1, on the bench-small shape (random weights; a byte-level
//! BPE trained on synthetic words, topped up with added tokens to the same vocabulary, gives it
//! a tokenizer) — or on a model
//! folder, or against another OpenAI-compatible server ([`Target`]), so that two servers meet
//! the same load in one run.
//!
//! Every client sends chat completions one after another, streamed (a short prompt, `max_tokens`
//! sampled tokens at temperature 1 — a random model without an end-of-text id never stops early,
//! so every reply is `max_tokens` long), timing the first piece of text and the gaps between
//! pieces; tokens are counted from the server's usage report. Our server runs with the limits a
//! user gets by default.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::Device;
use phi_core::chat::ChatTemplate;
use phi_core::{PhiConfig, PhiForCausalLM, WeightFormat};
use phi_data::Tokenizer;
use serde::Serialize;

use phi_serve::client::Client;
use phi_serve::{Limits, LocalServer, ServedModel};

/// Which server the clients load.
#[derive(Debug, Clone)]
pub enum Target {
    /// `phi serve` in this process on a random model of this shape, with a byte-level BPE
    /// trained on synthetic words and padded to its vocabulary ([`Tokenizer::pad_vocab`]).
    Random(PhiConfig),
    /// `phi serve` in this process on the model folder (its tokenizer and chat template).
    Folder(PathBuf),
    /// An OpenAI-compatible server already running (`transformers serve`, vLLM, …): its base
    /// URL (`http://host:port/v1`) and the model name its requests must carry.
    Endpoint { url: String, model: String },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ServeBench {
    pub target: Target,
    /// How our server holds the weights (`None`: f32); not for an endpoint.
    pub weights: Option<WeightFormat>,
    /// Concurrent clients, one level after another.
    pub clients: Vec<usize>,
    /// Requests per level (at least 2 per client).
    pub requests: usize,
    pub max_tokens: usize,
    /// Words of each request's prompt beyond the usual short one (0: none), to load the server
    /// with long prefills.
    pub prompt_words: usize,
    pub limits: Limits,
}

/// One level's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ServeBenchRow {
    /// The model's parameters (0 for an endpoint's).
    pub params: u64,
    pub clients: usize,
    pub requests: usize,
    pub completion_tokens: u64,
    pub seconds: f64,
    pub requests_per_s: f64,
    pub tokens_per_s: f64,
    /// Median and 95th-percentile request latency.
    pub p50_ms: f64,
    pub p95_ms: f64,
    /// Time to first token (the first piece of text streamed), median and 99th percentile.
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    /// Inter-token latency: the gaps between streamed pieces of text, over all requests.
    pub itl_p50_ms: f64,
    pub itl_p99_ms: f64,
}

/// One streamed request's times, in ms: the whole request, its first piece, the gaps after.
struct Timed {
    total: f64,
    first: f64,
    gaps: Vec<f64>,
    tokens: u64,
}

/// A tokenizer of about `vocab` ids, trained on seeded pseudo-words.
fn synthetic_tokenizer(vocab: usize) -> Result<Tokenizer, String> {
    let syllables = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "de", "gu", "fa", "zo", "bi", "che", "wa", "xe", "qu", "yo", "ha", "ju"];
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    let texts: Vec<String> = (0..4000)
        .map(|_| (0..60).map(|_| (0..1 + next(4)).map(|_| syllables[next(syllables.len())]).collect::<String>()).collect::<Vec<_>>().join(" "))
        .collect();
    Tokenizer::train_bpe(texts.iter(), vocab).map_err(|e| e.to_string())
}

/// Runs every level; `on_row` sees each as it finishes.
pub fn run(b: &ServeBench, device: &Device, mut on_row: impl FnMut(&ServeBenchRow)) -> Result<Vec<ServeBenchRow>, String> {
    let served = match &b.target {
        Target::Random(config) => {
            // Training on the synthetic words stops short of a large vocabulary (~15k ids for
            // GPT-2's 50,304): the rest are added tokens, so the LM head has the rows asked for.
            let mut tokenizer = synthetic_tokenizer(config.vocab_size)?;
            tokenizer.pad_vocab(config.vocab_size);
            let mut config = config.clone();
            config.vocab_size = tokenizer.vocab_size();
            config.eos_token_ids = vec![];
            let model = PhiForCausalLM::init(config.clone(), device, 0).map_err(|e| e.to_string())?;
            let template = ChatTemplate::for_family(config.family);
            Some(ServedModel { name: "bench".into(), model, tokenizer, template, stop_ids: vec![], created: 0 })
        }
        Target::Folder(dir) => Some(ServedModel::load(dir, None, Some("bench".into()), device).map_err(|e| format!("{}: {e}", dir.display()))?),
        Target::Endpoint { .. } => {
            if b.weights.is_some() {
                return Err("--weights applies to our server, not to an endpoint's".into());
            }
            None
        }
    };
    let (_server, base, name, params) = match served {
        Some(mut served) => {
            // As `phi serve` packs them (f32: in strips).
            served.pack_for_decoding(b.weights).map_err(|e| e.to_string())?;
            let params = served.model.config().num_parameters();
            // Stopped when it goes out of scope, at the end.
            let server = LocalServer::start(served, b.limits).map_err(|e| e.to_string())?;
            let url = server.url.clone();
            (Some(server), url, "bench".to_string(), params)
        }
        None => match &b.target {
            Target::Endpoint { url, model } => (None, url.trim_end_matches('/').to_string(), model.clone(), 0),
            _ => unreachable!("only an endpoint has no model here"),
        },
    };
    let base = &base;
    let name = name.as_str();

    let mut rows = Vec::new();
    let mut prompt = "kalomi nesuta ripode gufazo: write more".to_string();
    for i in 0..b.prompt_words {
        prompt.push_str(["ka", " lomi", " nesu", " ta", " ripo", " de"][i % 6]);
    }
    let prompt = prompt.as_str();
    // One warm-up request (allocations, first-use paths).
    Client::new(base, name, None).chat(&[("user", prompt)], 1.0, 4, 3).map_err(|e| e.to_string())?;
    for &clients in &b.clients {
        let clients = clients.max(1);
        let per_client = b.requests.div_ceil(clients).max(2);
        let t = Instant::now();
        let results: Vec<Result<Vec<Timed>, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..clients)
                .map(|_| {
                    s.spawn(move || {
                        let client = Client::new(base, name, None);
                        (0..per_client)
                            .map(|_| {
                                let t = Instant::now();
                                let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
                                let (mut first, mut last, mut gaps) = (None, t, Vec::with_capacity(b.max_tokens));
                                let r = client
                                    .chat_stream(&[("user", prompt)], 1.0, b.max_tokens, |_| {
                                        let now = Instant::now();
                                        match first {
                                            None => first = Some(ms(t)),
                                            Some(_) => gaps.push((now - last).as_secs_f64() * 1e3),
                                        }
                                        last = now;
                                    })
                                    .map_err(|e| e.to_string())?;
                                Ok(Timed { total: ms(t), first: first.unwrap_or(f64::NAN), gaps, tokens: r.completion_tokens.unwrap_or(0) })
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a client thread panicked".into()))).collect()
        });
        let seconds = t.elapsed().as_secs_f64();
        let (mut latencies, mut firsts, mut gaps) = (Vec::new(), Vec::new(), Vec::new());
        let mut tokens = 0;
        for r in results {
            for t in r? {
                latencies.push(t.total);
                firsts.push(t.first);
                gaps.extend(t.gaps);
                tokens += t.tokens;
            }
        }
        let pct_of = |v: &mut Vec<f64>, p: f64| {
            v.sort_by(f64::total_cmp);
            v.get(((v.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or(f64::NAN)
        };
        let (ttft_p50_ms, ttft_p99_ms) = (pct_of(&mut firsts, 0.5), pct_of(&mut firsts, 0.99));
        let (itl_p50_ms, itl_p99_ms) = (pct_of(&mut gaps, 0.5), pct_of(&mut gaps, 0.99));
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
        let row = ServeBenchRow {
            params,
            clients,
            requests: latencies.len(),
            completion_tokens: tokens,
            seconds,
            requests_per_s: latencies.len() as f64 / seconds,
            tokens_per_s: tokens as f64 / seconds,
            p50_ms: pct(0.5),
            p95_ms: pct(0.95),
            ttft_p50_ms,
            ttft_p99_ms,
            itl_p50_ms,
            itl_p99_ms,
        };
        on_row(&row);
        rows.push(row);
    }
    Ok(rows)
}
