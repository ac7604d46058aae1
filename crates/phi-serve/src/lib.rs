//! # phi-serve
//!
//! An OpenAI-compatible HTTP server for any model the framework loads (a HF folder, with a PEFT
//! adapter if given): `GET /v1/models`, `POST /v1/chat/completions` (the model family's chat
//! template) and `POST /v1/completions`, with `temperature`, `top_p`, `max_tokens`, `stop`,
//! `seed`, `n`, `stream` (server-sent events, `stream_options.include_usage`) and `usage`. Built
//! on axum + tokio, the Rust ecosystem's HTTP stack. Requests decode together: one thread owns
//! decoding and runs every request's current choice as one sequence of a continuous batch (one
//! forward per step for all of them, a new request joining at the next step; see
//! [`phi_core::batching`]), at most [`Limits::max_concurrent`] at once with
//! [`Limits::max_waiting`] more queued (beyond that: 429). Each request gets the tokens it would
//! get alone. A request whose client goes away stops decoding at its next token, and so does
//! every request when the server shuts down.
//!
//! Bad requests get OpenAI's error object with a 4xx status: malformed JSON or parameters (400),
//! a parameter this server does not implement (`logprobs`, `echo`, `best_of`, penalties, …: 400
//! naming it, never silently ignored), an unknown model or path (404), a prompt the context
//! cannot hold (400, `context_length_exceeded`), a body over [`Limits::max_body_bytes`] (413), a
//! full server (429). A request cut off by shutdown ends with an error (503, or an error event
//! on a stream), never with a `length` finish the client did not ask for. The server speaks
//! HTTP/1.1; a connection that has not sent a request's headers within
//! [`Limits::header_timeout`] is closed.
//!
//! The server logs through [`tracing`] (target `phi_serve`): an `info` event for every request
//! served (`endpoint`, `model`, `status`, `n`, `stream`, `prompt_tokens`, `completion_tokens`,
//! `ms`) or whose client went away; a `warn` event for every request refused with a 4xx or cut
//! off by shutdown (503) and an `error` event for any other 5xx (`endpoint`, `status`, `code`,
//! `param`, `error`: the message the client got); `info` events when it stops. Nothing is
//! printed unless the program installs a subscriber (`phi serve` does, on stderr).
//!
//! ```no_run
//! use phi_serve::{Limits, ServedModel, serve};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let model = ServedModel::load("runs/dpo/merged".as_ref(), None, None, &burn::tensor::Device::default())?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! serve(listener, model, Limits::default(), async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! # Ok(()) }
//! ```

pub mod client;
pub mod error;
pub mod log;
pub mod openai;
mod scheduler;
pub mod text;

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Json, State};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use phi_core::chat::ChatTemplate;
use phi_core::{GenerationConfig, PhiForCausalLM};
use phi_data::Tokenizer;
use serde_json::{Value, json};

pub use error::{Result, ServeError};
use openai::{ApiError, ChatRequest, CompletionRequest, Prompt, Sampling, Usage};
use text::TextStream;

/// A loaded model and what serving it needs.
pub struct ServedModel {
    /// The id clients name in `model`.
    pub name: String,
    pub model: PhiForCausalLM,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub stop_ids: Vec<u32>,
    pub created: u64,
}

impl ServedModel {
    /// The model in `dir` (with its `tokenizer.json`; or a hub id), a PEFT `adapter` on it if
    /// given, served as `name` (default: the folder's name).
    pub fn load(dir: &Path, adapter: Option<&Path>, name: Option<String>, device: &burn::tensor::Device) -> Result<Self> {
        // A hub id: its snapshot folder, whose tokenizer and template are read below too.
        let resolved = phi_core::hub::resolve(dir, phi_core::hub::Kind::Model).map_err(phi_core::Error::from)?;
        let dir = resolved.as_path();
        let mut model = PhiForCausalLM::from_pretrained(dir, device)?;
        if let Some(a) = adapter {
            model = phi_core::lora::load(model, a).map_err(ServeError::Adapter)?;
        }
        let path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&path).map_err(|source| ServeError::Tokenizer { path: path.clone(), source })?;
        let stop_ids = text::stop_ids(dir, &model, &tokenizer);
        let template = ChatTemplate::for_model(dir, model.config().family)?;
        let name = name.unwrap_or_else(|| {
            let canon = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
            canon.file_name().map_or("phi".into(), |n| n.to_string_lossy().into_owned())
        });
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Ok(ServedModel { name, model, tokenizer, template, stop_ids, created })
    }

    /// Packs the weights the way `phi serve` decodes with them: `asked` (bf16, int8, int4), else
    /// on the CPU f32 in strips ([`phi_core::quant::decoding_format`]: the same values, read
    /// faster); on a GPU nothing.
    pub fn pack_for_decoding(&mut self, asked: Option<phi_core::WeightFormat>) -> Result<()> {
        if let Some(format) = phi_core::quant::decoding_format(asked, &self.model.device()) {
            self.model.pack_weights(format)?;
        }
        Ok(())
    }
}

/// Requests decoded together by default: one decode step for 16 sequences costs little more
/// than for one (the weights are read once), and 16 KV caches are small next to the weights.
pub const DEFAULT_MAX_CONCURRENT: usize = 16;

/// KV cache budget by default, in MiB: about 5,400 tokens of Phi-3-mini in f32 (0.75 MiB a
/// token), 10,900 of phi-1.5 (0.375 MiB).
pub const DEFAULT_KV_CACHE_MB: usize = 4096;

/// Prompt tokens prefilled per decode step by default: a longer prompt joins over several
/// steps, each delaying the running sequences by one chunk's forward (on a CPU, 64 rows keep
/// the prefill on the few-rows kernels), rather than stalling them for the whole prompt.
pub const DEFAULT_PREFILL_CHUNK: usize = 64;

/// How much a server takes on at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Requests decoding at once: the continuous batch's rows.
    pub max_concurrent: usize,
    /// Requests waiting for a slot; one more gets 429.
    pub max_waiting: usize,
    /// KV cache the decoding sequences may hold together, in bytes: each reserves its prompt +
    /// `max_tokens` when it starts, and waits while that does not fit (one larger than the whole
    /// budget runs alone).
    pub kv_cache_bytes: usize,
    /// Prompt tokens prefilled per decode step, in the step's forward beside the running
    /// sequences: several short prompts, or a chunk of a long one
    /// ([`Batcher::with_prefill_chunk`](phi_core::batching::Batcher::with_prefill_chunk)). 0: a
    /// prompt is prefilled whole and alone when it joins, stalling the running sequences
    /// meanwhile.
    pub prefill_chunk: usize,
    /// Largest request body taken (413 beyond it, refused on its `Content-Length` before any of
    /// it is read). 8 MiB holds a 128k-token prompt several times over.
    pub max_body_bytes: usize,
    /// A connection must send a request's headers within this long of being ready for one (a
    /// new connection, or an idle kept-alive one), else it is closed: a client that trickles
    /// headers, or never sends any, cannot hold a connection open (used by [`serve`]).
    pub header_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Sequences decoded together in one batch (each holds its own KV cache).
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            max_waiting: 64,
            kv_cache_bytes: DEFAULT_KV_CACHE_MB << 20,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
            max_body_bytes: 8 << 20,
            header_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// The server's state: the model, admission and a stop flag every decode checks.
struct App {
    model: Arc<ServedModel>,
    /// The one thread that decodes: every request's choices run as one continuous batch.
    scheduler: scheduler::Scheduler,
    /// Permits for requests in the building (decoding or waiting).
    admitted: Arc<tokio::sync::Semaphore>,
    /// Permits to decode.
    decoding: Arc<tokio::sync::Semaphore>,
    stopping: AtomicBool,
    limits: Limits,
}

fn app(model: ServedModel, limits: Limits) -> Arc<App> {
    let n = limits.max_concurrent.max(1);
    let model = Arc::new(model);
    Arc::new(App {
        scheduler: scheduler::Scheduler::start(model.clone(), n, limits.kv_cache_bytes, limits.prefill_chunk),
        model,
        admitted: Arc::new(tokio::sync::Semaphore::new(n + limits.max_waiting)),
        decoding: Arc::new(tokio::sync::Semaphore::new(n)),
        stopping: AtomicBool::new(false),
        limits,
    })
}

fn routes(app: Arc<App>) -> Router {
    let limit = app.limits.max_body_bytes;
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(|uri: axum::http::Uri| async move {
            let e = ApiError::not_found("no such endpoint (try /v1/models, /v1/chat/completions, /v1/completions)", "not_found");
            log_failure(uri.path(), &e);
            e
        })
        // Bodies without a length (chunked) are cut at the limit while read (`body` turns the
        // rejection into 413); a declared length over it is refused before reading a byte.
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| async move {
            let declared = req.headers().get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
            match declared {
                Some(n) if n > limit as u64 => {
                    let e = ApiError::too_large(format!("the request body is {n} bytes; this server takes at most {limit}"));
                    log_failure(req.uri().path(), &e);
                    e.into_response()
                }
                _ => next.run(req).await,
            }
        }))
        .with_state(app)
}

/// The routes, for a caller that runs its own server.
pub fn router(model: ServedModel, limits: Limits) -> Router {
    routes(app(model, limits))
}

/// Serves `model` on `listener` (HTTP/1.1) until `shutdown` completes; then it accepts no more
/// connections, decoding stops at the next token of every request in flight, their replies end
/// with an error (503, or an error event on a stream), and it returns once every connection
/// has closed.
///
/// Its own accept loop rather than `axum::serve`, which gives hyper no timer and so cannot
/// time out a connection that never finishes its headers ([`Limits::header_timeout`]).
pub async fn serve(listener: tokio::net::TcpListener, model: ServedModel, limits: Limits, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let app = app(model, limits);
    let router = routes(app.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Small SSE writes go out as they are made.
                    stream.set_nodelay(true).ok();
                    connections.spawn(connection(stream, router.clone(), limits.header_timeout, stopped.clone()));
                }
                // A connection reset before it was taken costs only itself.
                Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionRefused) => {}
                // Out of file descriptors and the like: wait for some to close rather than spin.
                Err(e) => {
                    tracing::error!(error = %e, "accepting a connection failed; retrying in 100 ms");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await
                }
            },
            // Reaps finished connections, so the set holds only live ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    tracing::info!(connections = connections.len(), "shutting down: no new connections; requests in flight end at their next token");
    app.stopping.store(true, Ordering::SeqCst);
    stop.send_replace(true);
    while connections.join_next().await.is_some() {}
    tracing::info!("stopped: every connection has closed");
    Ok(())
}

/// One HTTP/1.1 connection, closed gracefully (the reply in flight finishes, no further request
/// is read) once `stopped` turns true.
async fn connection(stream: tokio::net::TcpStream, router: Router, header_timeout: std::time::Duration, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_timeout);
    let service = hyper_util::service::TowerToHyperService::new(router);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    if !*stopped.borrow_and_update() {
        tokio::select! {
            // A failed connection (a client gone, a header timeout) ends only itself.
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "a connection ended with an error");
                }
                return;
            }
            _ = stopped.changed() => {}
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

type Shared = State<Arc<App>>;

/// Sets its flag when dropped: a handler's future is dropped when its client goes away.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

async fn models(State(app): Shared) -> Json<Value> {
    let s = &app.model;
    Json(json!({ "object": "list", "data": [{ "id": s.name, "object": "model", "created": s.created, "owned_by": "phi" }] }))
}

/// A request's checked generation settings.
struct Plan {
    prompt: Vec<u32>,
    max_tokens: usize,
    temperature: f64,
    top_p: f64,
    n: usize,
    stream: bool,
    include_usage: bool,
    stop: Vec<String>,
    seed: u64,
}

/// At most this many choices per request.
const MAX_N: usize = 16;
/// Stop strings: at most this many, of at most this many bytes (text up to that long is held
/// back while it could still become one).
const MAX_STOPS: usize = 4;
const MAX_STOP_BYTES: usize = 256;

fn plan(s: &ServedModel, model: &str, prompt: Vec<u32>, p: Sampling, default_max: Option<usize>, prompt_param: &'static str) -> Result<Plan, ApiError> {
    if model != s.name {
        return Err(ApiError::not_found(format!("The model `{model}` does not exist; this server serves `{}`", s.name), "model_not_found"));
    }
    let (temperature, top_p, n) = (p.temperature.unwrap_or(1.0), p.top_p.unwrap_or(1.0), p.n.unwrap_or(1));
    if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
        return Err(ApiError::invalid(format!("temperature {temperature} is not in [0, 2]"), Some("temperature")));
    }
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(format!("top_p {top_p} is not in (0, 1]"), Some("top_p")));
    }
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::invalid(format!("n {n} is not in [1, {MAX_N}]"), Some("n")));
    }
    if prompt.is_empty() {
        return Err(ApiError::invalid("the prompt encodes to no tokens", Some(prompt_param)));
    }
    let context = s.model.config().max_position_embeddings;
    let room = context.saturating_sub(prompt.len());
    let max_tokens = match p.max_tokens {
        Some(0) => return Err(ApiError::invalid("max_tokens must be at least 1", Some("max_tokens"))),
        Some(m) => m,
        None => default_max.unwrap_or(room).min(room),
    };
    if room == 0 || max_tokens > room {
        return Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid(
                format!("This model's maximum context length is {context} tokens; the prompt has {} and max_tokens asks for {max_tokens}", prompt.len()),
                Some(prompt_param),
            )
        });
    }
    let stop = p.stop.map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > MAX_STOPS || stop.iter().any(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid(format!("at most {MAX_STOPS} stop sequences of at most {MAX_STOP_BYTES} bytes"), Some("stop")));
    }
    let seed = p.seed.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    let include_usage = p.stream_options.is_some_and(|o| o.include_usage);
    Ok(Plan { prompt, max_tokens, temperature, top_p, n, stream: p.stream.unwrap_or(false), include_usage, stop, seed })
}

/// One choice, generated on the calling (blocking) thread; `emit` receives the text as it
/// becomes final; `cancelled` is asked before every token (a client gone, a server stopping).
///
/// A choice that `cancelled` cuts short is an error, not a `length` finish: the client asked for
/// up to `max_tokens` and would otherwise take a truncated text for a complete one.
fn generate_one(app: &App, plan: &Plan, choice: usize, cancelled: &dyn Fn() -> bool, mut emit: impl FnMut(&str)) -> Result<(String, &'static str, usize), ApiError> {
    let s = &*app.model;
    let config = GenerationConfig::sampling(plan.max_tokens, plan.temperature, plan.seed.wrapping_add(choice as u64))
        .with_top_p(plan.top_p)
        .with_stop_tokens(s.stop_ids.clone());
    let mut stream = TextStream::new(&s.tokenizer, &plan.stop);
    let (mut text, mut count, mut finish, mut cut) = (String::new(), 0usize, "length", false);
    app.scheduler
        .generate(&plan.prompt, &config, cancelled, |t| {
            count += 1;
            if s.stop_ids.contains(&t) {
                finish = "stop";
                return false;
            }
            let piece = stream.push(t);
            if !piece.is_empty() {
                emit(&piece);
                text.push_str(&piece);
            }
            if stream.stopped() {
                finish = "stop";
                return false;
            }
            // The last allowed token ends the choice anyway: only an earlier stop cuts it.
            if count < plan.max_tokens && cancelled() {
                cut = true;
                return false;
            }
            true
        })
        .map_err(|scheduler::Failure(m)| ApiError::internal(format!("generation failed: {m}")))?;
    // Fewer than max_tokens without a stop: only cancellation (while waiting for a row, or
    // between tokens) ends a choice so — the context always holds max_tokens.
    if finish == "length" && count < plan.max_tokens && cancelled() {
        cut = true;
    }
    if cut {
        return Err(ApiError::stopping(format!(
            "the server is shutting down: choice {choice} was cut off after {count} of up to {} tokens; retry the request",
            plan.max_tokens
        )));
    }
    let rest = stream.finish();
    if stream.stopped() {
        finish = "stop";
    }
    if !rest.is_empty() {
        emit(&rest);
        text.push_str(&rest);
    }
    Ok((text, finish, count))
}

fn id(prefix: &str) -> String {
    let n = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{prefix}-{n:x}")
}

/// The body as JSON, or OpenAI's error saying why not: 413 for a body over the limit, else 400.
fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v).map_err(|e| match e.status() {
        axum::http::StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(format!("the request body is over this server's limit: {}", e.body_text())),
        _ => ApiError::invalid(format!("malformed request: {}", e.body_text()), None),
    })
}

/// The messages as `(role, text)`: OpenAI's `developer` role is the system turn.
fn messages(r: &ChatRequest) -> Result<Vec<(String, String)>, ApiError> {
    if r.messages.is_empty() {
        return Err(ApiError::invalid("messages is empty", Some("messages")));
    }
    r.messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "developer" => "system",
                r @ ("system" | "user" | "assistant") => r,
                other => return Err(ApiError::invalid(format!("messages[{i}] has role `{other}` (system, developer, user or assistant)"), Some("messages"))),
            };
            let text = m.content.text().map_err(|e| ApiError::invalid(format!("messages[{i}] has {e}"), Some("messages")))?;
            Ok((role.to_string(), text))
        })
        .collect()
}

/// Tokenizes off the async threads (a long prompt must not stall other connections).
async fn encode(app: &Arc<App>, text: String) -> Result<Vec<u32>, ApiError> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || app.model.tokenizer.encode(&text)).await.map_err(|e| ApiError::internal(format!("tokenizing failed: {e}")))
}

async fn chat(State(app): Shared, req: Result<Json<ChatRequest>, JsonRejection>) -> Response {
    let log = RequestLog::new("/v1/chat/completions");
    let result = async {
        let r = body(req)?;
        r.sampling.check_rest()?;
        let turns = messages(&r)?;
        let prompt = app.model.template.prompt(turns.iter().map(|(r, c)| (r.as_str(), c.as_str()))).map_err(|e| ApiError::invalid(e.to_string(), Some("messages")))?;
        let ids = encode(&app, prompt).await?;
        plan(&app.model, &r.model, ids, r.sampling, None, "messages")
    };
    match result.await {
        Ok(plan) => respond(app, plan, Kind::Chat, log).await,
        Err(e) => log.refused(e),
    }
}

async fn completions(State(app): Shared, req: Result<Json<CompletionRequest>, JsonRejection>) -> Response {
    let log = RequestLog::new("/v1/completions");
    let result = async {
        let r = body(req)?;
        r.sampling.check_rest()?;
        let prompt = match r.prompt {
            Prompt::One(p) => p,
            Prompt::Many(mut v) if v.len() == 1 => v.remove(0),
            Prompt::Many(v) => return Err(ApiError::invalid(format!("{} prompts in one request: this server takes one", v.len()), Some("prompt"))),
        };
        let ids = encode(&app, prompt).await?;
        plan(&app.model, &r.model, ids, r.sampling, Some(16), "prompt")
    };
    match result.await {
        Ok(plan) => respond(app, plan, Kind::Completion, log).await,
        Err(e) => log.refused(e),
    }
}

/// A request's log events (see the crate docs): its endpoint, and when it came.
#[derive(Clone, Copy)]
struct RequestLog {
    endpoint: &'static str,
    start: std::time::Instant,
}

impl RequestLog {
    fn new(endpoint: &'static str) -> Self {
        RequestLog { endpoint, start: std::time::Instant::now() }
    }

    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Answered in full.
    fn served(&self, model: &str, plan: &Plan, usage: &Usage) {
        tracing::info!(
            endpoint = self.endpoint,
            model,
            status = 200u16,
            n = plan.n,
            stream = plan.stream,
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            ms = self.ms(),
            "request served"
        );
    }

    /// Its client went away before the reply was complete; decoding stopped.
    fn gone(&self, model: &str, plan: &Plan, usage: &Usage) {
        tracing::info!(
            endpoint = self.endpoint,
            model,
            n = plan.n,
            stream = plan.stream,
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            ms = self.ms(),
            "request dropped: the client went away"
        );
    }

    fn failed(&self, e: &ApiError) {
        log_failure(self.endpoint, e);
    }

    /// Logs `e` and makes it the reply.
    fn refused(&self, e: ApiError) -> Response {
        self.failed(&e);
        e.into_response()
    }
}

/// A request answered with an error: `warn` for the client's (4xx) and for a server that is
/// shutting down (503), `error` for any other of the server's (5xx).
fn log_failure(endpoint: &str, e: &ApiError) {
    let (status, code, param, error) = (e.status.as_u16(), e.code, e.param.as_deref(), e.message.as_str());
    if e.status.is_server_error() && e.status != axum::http::StatusCode::SERVICE_UNAVAILABLE {
        tracing::error!(endpoint, status, code, param, error, "request failed");
    } else {
        tracing::warn!(endpoint, status, code, param, error, "request refused");
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

impl Kind {
    fn object(self, stream: bool) -> &'static str {
        match (self, stream) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    /// A choice (or a streamed piece of one) in this endpoint's shape.
    fn choice(self, index: usize, text: &str, finish: Option<&str>, stream: bool) -> Value {
        match (self, stream) {
            (Kind::Chat, false) => json!({ "index": index, "message": { "role": "assistant", "content": text }, "finish_reason": finish }),
            (Kind::Chat, true) => json!({ "index": index, "delta": if text.is_empty() { json!({}) } else { json!({ "content": text }) }, "finish_reason": finish }),
            (Kind::Completion, _) => json!({ "index": index, "text": text, "logprobs": null, "finish_reason": finish }),
        }
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn respond(app: Arc<App>, plan: Plan, kind: Kind, log: RequestLog) -> Response {
    // Admission: a slot in the building, then a turn to decode.
    let Ok(admitted) = app.admitted.clone().try_acquire_owned() else {
        let e = ApiError { status: axum::http::StatusCode::TOO_MANY_REQUESTS, kind: "rate_limit_error", ..ApiError::internal("the server is busy: too many requests decoding or waiting; retry later") };
        return log.refused(e);
    };
    let decoding = match app.decoding.clone().acquire_owned().await {
        Ok(permit) if !app.stopping.load(Ordering::SeqCst) => permit,
        // Waited for a turn while the server began to stop: no decoding starts now.
        _ => return log.refused(ApiError::stopping("the server is shutting down; retry the request")),
    };
    let (id, created, model) = (id(if kind == Kind::Chat { "chatcmpl" } else { "cmpl" }), now(), app.model.name.clone());
    if !plan.stream {
        let gone = Arc::new(AtomicBool::new(false));
        // Dropped with this future when the client goes away: decoding then stops.
        let _cancel = CancelOnDrop(gone.clone());
        let result = tokio::task::spawn_blocking(move || {
            let _permits = (admitted, decoding);
            let cancelled = || gone.load(Ordering::SeqCst) || app.stopping.load(Ordering::SeqCst);
            let mut choices = Vec::new();
            let mut usage = Usage { prompt_tokens: plan.prompt.len(), ..Usage::default() };
            let mut failed = None;
            for i in 0..plan.n {
                match generate_one(&app, &plan, i, &cancelled, |_| {}) {
                    Ok((text, finish, count)) => {
                        usage.completion_tokens += count;
                        choices.push(kind.choice(i, &text, Some(finish), false));
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
            match failed {
                None => {
                    log.served(&app.model.name, &plan, &usage);
                    Ok((choices, usage))
                }
                Some(e) => {
                    if gone.load(Ordering::SeqCst) {
                        log.gone(&app.model.name, &plan, &usage);
                    } else {
                        log.failed(&e);
                    }
                    Err(e)
                }
            }
        })
        .await;
        return match result {
            Ok(Ok((choices, usage))) => Json(json!({ "id": id, "object": kind.object(false), "created": created, "model": model, "choices": choices, "usage": usage })).into_response(),
            Ok(Err(e)) => e.into_response(),
            Err(e) => log.refused(ApiError::internal(format!("the generation task failed: {e}"))),
        };
    }
    // Streaming: chunks go out as server-sent events while a blocking thread decodes; a
    // closed channel (the client gone) stops it at the next token.
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    let chunk = move |choices: Value, usage: Option<Usage>| {
        let mut v = json!({ "id": id, "object": kind.object(true), "created": created, "model": model, "choices": choices });
        if let Some(u) = usage {
            v["usage"] = json!(u);
        }
        Event::default().data(v.to_string())
    };
    tokio::task::spawn_blocking(move || {
        let _permits = (admitted, decoding);
        let send = |e: Event| tx.blocking_send(e).is_ok();
        let cancelled = || tx.is_closed() || app.stopping.load(Ordering::SeqCst);
        let mut usage = Usage { prompt_tokens: plan.prompt.len(), ..Usage::default() };
        let name = app.model.name.as_str();
        for i in 0..plan.n {
            if kind == Kind::Chat && !send(chunk(json!([{ "index": i, "delta": { "role": "assistant", "content": "" }, "finish_reason": null }]), None)) {
                return log.gone(name, &plan, &usage);
            }
            match generate_one(&app, &plan, i, &cancelled, |piece| {
                send(chunk(json!([kind.choice(i, piece, None, true)]), None));
            }) {
                Ok((_, finish, count)) => {
                    usage.completion_tokens += count;
                    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
                    if !send(chunk(json!([kind.choice(i, "", Some(finish), true)]), None)) {
                        return log.gone(name, &plan, &usage);
                    }
                }
                // The stream ends with the error and no [DONE]: the text sent so far is not a
                // whole reply.
                Err(e) => {
                    if tx.is_closed() {
                        return log.gone(name, &plan, &usage);
                    }
                    log.failed(&e);
                    send(Event::default().data(json!({ "error": { "message": e.message, "type": e.kind, "param": e.param, "code": e.code } }).to_string()));
                    return;
                }
            }
        }
        if plan.include_usage {
            send(chunk(json!([]), Some(usage)));
        }
        if send(Event::default().data("[DONE]")) {
            log.served(name, &plan, &usage);
        } else {
            log.gone(name, &plan, &usage);
        }
    });
    let events = tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok::<Event, Infallible>);
    Sse::new(events).into_response()
}

/// How `phi serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub model: std::path::PathBuf,
    pub adapter: Option<std::path::PathBuf>,
    /// The id clients name (default: the model folder's name).
    pub name: Option<String>,
    pub host: String,
    pub port: u16,
    /// Requests decoding at once (up to 64 more wait).
    pub max_concurrent: usize,
    /// The KV cache budget in MiB ([`Limits::kv_cache_bytes`]).
    pub kv_cache_mb: usize,
    /// Prompt tokens prefilled per step ([`Limits::prefill_chunk`]).
    pub prefill_chunk: usize,
    pub device: phi_core::device::Backend,
    /// Pack the weights for CPU inference (bf16, int8 or int4: `phi_core::quant`); none: f32,
    /// in strips on the CPU ([`ServedModel::pack_for_decoding`]).
    pub weights: Option<phi_core::WeightFormat>,
    /// Runs the load and the packing (its argument) so that the f32 weights packing frees go
    /// back to the OS; the `phi` binary passes its allocator's (see `phi::bench::BenchOptions::around_pack`).
    pub around_pack: Option<fn(&mut dyn FnMut())>,
}

/// Loads the model, binds, calls `on_ready` with the address and the loaded model, and serves
/// until Ctrl-C (SIGINT) or SIGTERM; requests in flight then end with an error at their next
/// token.
pub fn run(o: &ServeOptions, on_ready: impl FnOnce(std::net::SocketAddr, &ServedModel)) -> Result<()> {
    let device = o.device.device().map_err(ServeError::Device)?;
    let mut loaded = None;
    let mut load = || {
        loaded = Some((|| -> Result<ServedModel> {
            let mut model = ServedModel::load(&o.model, o.adapter.as_deref(), o.name.clone(), &device)?;
            model.pack_for_decoding(o.weights)?;
            Ok(model)
        })())
    };
    match (phi_core::quant::decoding_format(o.weights, &device), o.around_pack) {
        (Some(_), Some(around)) => around(&mut load),
        _ => load(),
    }
    let model = loaded.expect("the load ran")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(ServeError::Runtime)?;
    runtime.block_on(async {
        let addr = format!("{}:{}", o.host, o.port);
        let bind = |source| ServeError::Bind { addr: addr.clone(), source };
        let listener = tokio::net::TcpListener::bind((o.host.as_str(), o.port)).await.map_err(bind)?;
        on_ready(listener.local_addr().map_err(bind)?, &model);
        serve(listener, model, Limits { max_concurrent: o.max_concurrent, kv_cache_bytes: o.kv_cache_mb.saturating_mul(1 << 20), prefill_chunk: o.prefill_chunk, ..Limits::default() }, shutdown_signal()).await.map_err(bind)?;
        Ok(())
    })
}

/// Ctrl-C, or SIGTERM on Unix; a second Ctrl-C exits at once.
async fn shutdown_signal() {
    first_signal().await;
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    });
}

async fn first_signal() {
    let ctrl_c = async {
        tokio::signal::ctrl_c().await.ok();
    };
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => return ctrl_c.await,
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}

/// `phi serve` on 127.0.0.1 (an ephemeral port) in a background thread, for in-process clients
/// (`phi data synth --local`): stopped and joined when dropped.
pub struct LocalServer {
    /// The API base, `http://127.0.0.1:PORT/v1`.
    pub url: String,
    pub model: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LocalServer {
    pub fn start(model: ServedModel, limits: Limits) -> Result<Self> {
        let name = model.name.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (tx, rx) = std::sync::mpsc::channel::<Result<std::net::SocketAddr>>();
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => return tx.send(Err(ServeError::Runtime(e))).unwrap_or(()),
            };
            rt.block_on(async move {
                let bind = |source| ServeError::Bind { addr: "127.0.0.1:0".into(), source };
                let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                    Ok(l) => l,
                    Err(e) => return tx.send(Err(bind(e))).unwrap_or(()),
                };
                let addr = listener.local_addr().map_err(bind);
                tx.send(addr).unwrap_or(());
                let _ = serve(listener, model, limits, async {
                    stopped.await.ok();
                })
                .await;
            });
        });
        let addr = rx.recv().map_err(|_| ServeError::ServerThread)??;
        Ok(LocalServer { url: format!("http://{addr}/v1"), model: name, stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            s.send(()).ok();
        }
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}
