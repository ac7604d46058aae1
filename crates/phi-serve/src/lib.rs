//! # phi-serve
//!
//! An OpenAI-compatible HTTP server for any model the framework loads (a HF folder, with a PEFT
//! adapter if given): `GET /v1/models`, `POST /v1/chat/completions` (the model family's chat
//! template) and `POST /v1/completions`, with `temperature`, `top_p`, `max_tokens`, `stop`,
//! `seed`, `n`, `stream` (server-sent events, `stream_options.include_usage`) and `usage`. Built
//! on axum + tokio, the Rust ecosystem's HTTP stack. Requests decode concurrently, each on its
//! own blocking thread with a handle on the shared, read-only weights, at most
//! [`Limits::max_concurrent`] at once with [`Limits::max_waiting`] more queued (beyond that: 429);
//! there is no batched decoding across requests yet. A request whose client goes away stops
//! decoding at its next token, and so does every request when the server shuts down.
//!
//! Bad requests get OpenAI's error object with a 4xx status: malformed JSON or parameters (400),
//! an unknown model or path (404), a prompt the context cannot hold (400,
//! `context_length_exceeded`), a full server (429).
//!
//! ```no_run
//! use phi_serve::{Limits, ServedModel, serve};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let model = ServedModel::load("runs/dpo/merged".as_ref(), None, None, &burn::tensor::Device::default())?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! serve(listener, model, Limits::default(), async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! # Ok(()) }
//! ```

pub mod annotate;
pub mod bench;
pub mod client;
pub mod log;
pub mod synth;
pub mod openai;
pub mod text;

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Json, State};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use phi_core::chat::ChatTemplate;
use phi_core::{GenerationConfig, PhiForCausalLM};
use phi_data::Tokenizer;
use serde_json::{Value, json};

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
    /// The model in `dir` (with its `tokenizer.json`), a PEFT `adapter` on it if given, served
    /// as `name` (default: the folder's name).
    pub fn load(dir: &Path, adapter: Option<&Path>, name: Option<String>, device: &burn::tensor::Device) -> Result<Self, Box<dyn std::error::Error>> {
        let mut model = PhiForCausalLM::from_pretrained(dir, device)?;
        if let Some(a) = adapter {
            model = phi_train::lora::load(model, a)?;
        }
        let path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&path).map_err(|e| format!("{}: {e} (serving text needs the model's tokenizer)", path.display()))?;
        let stop_ids = text::stop_ids(dir, &model, &tokenizer);
        let template = ChatTemplate::for_family(model.config().family);
        let name = name.unwrap_or_else(|| {
            let canon = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
            canon.file_name().map_or("phi".into(), |n| n.to_string_lossy().into_owned())
        });
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Ok(ServedModel { name, model, tokenizer, template, stop_ids, created })
    }
}

/// How much a server takes on at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Requests decoding at once.
    pub max_concurrent: usize,
    /// Requests waiting for a slot; one more gets 429.
    pub max_waiting: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_concurrent: std::thread::available_parallelism().map_or(2, |n| n.get()), max_waiting: 64 }
    }
}

/// The server's state: the model, admission and a stop flag every decode checks.
struct App {
    model: ServedModel,
    /// Permits for requests in the building (decoding or waiting).
    admitted: Arc<tokio::sync::Semaphore>,
    /// Permits to decode.
    decoding: Arc<tokio::sync::Semaphore>,
    stopping: AtomicBool,
}

fn app(model: ServedModel, limits: Limits) -> Arc<App> {
    let n = limits.max_concurrent.max(1);
    Arc::new(App {
        model,
        admitted: Arc::new(tokio::sync::Semaphore::new(n + limits.max_waiting)),
        decoding: Arc::new(tokio::sync::Semaphore::new(n)),
        stopping: AtomicBool::new(false),
    })
}

fn routes(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(|| async { ApiError::not_found("no such endpoint (try /v1/models, /v1/chat/completions, /v1/completions)", "not_found") })
        .with_state(app)
}

/// The routes, for a caller that runs its own server.
pub fn router(model: ServedModel, limits: Limits) -> Router {
    routes(app(model, limits))
}

/// Serves `model` on `listener` until `shutdown` completes; then decoding stops at the next
/// token of every request in flight, their replies end, and it returns.
pub async fn serve(listener: tokio::net::TcpListener, model: ServedModel, limits: Limits, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let app = app(model, limits);
    let flag = app.clone();
    axum::serve(listener, routes(app))
        .with_graceful_shutdown(async move {
            shutdown.await;
            flag.stopping.store(true, Ordering::SeqCst);
        })
        .await
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
fn generate_one(s: &ServedModel, plan: &Plan, choice: usize, cancelled: &dyn Fn() -> bool, mut emit: impl FnMut(&str)) -> Result<(String, &'static str, usize), ApiError> {
    let config = GenerationConfig::sampling(plan.max_tokens, plan.temperature, plan.seed.wrapping_add(choice as u64))
        .with_top_p(plan.top_p)
        .with_stop_tokens(s.stop_ids.clone());
    let mut stream = TextStream::new(&s.tokenizer, &plan.stop);
    let (mut text, mut count, mut finish) = (String::new(), 0usize, "length");
    s.model
        .generate_streaming(&plan.prompt, &config, |t| {
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
            !cancelled()
        })
        .map_err(|e| ApiError::internal(format!("generation failed: {e}")))?;
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

/// The body as JSON, or OpenAI's 400 error saying why not.
fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v).map_err(|e| ApiError::invalid(format!("malformed request: {}", e.body_text()), None))
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
    let result = async {
        let r = body(req)?;
        let turns = messages(&r)?;
        let prompt = app.model.template.prompt(turns.iter().map(|(r, c)| (r.as_str(), c.as_str())));
        let ids = encode(&app, prompt).await?;
        plan(&app.model, &r.model, ids, r.sampling, None, "messages")
    };
    match result.await {
        Ok(plan) => respond(app, plan, Kind::Chat).await,
        Err(e) => e.into_response(),
    }
}

async fn completions(State(app): Shared, req: Result<Json<CompletionRequest>, JsonRejection>) -> Response {
    let result = async {
        let r = body(req)?;
        let prompt = match r.prompt {
            Prompt::One(p) => p,
            Prompt::Many(mut v) if v.len() == 1 => v.remove(0),
            Prompt::Many(v) => return Err(ApiError::invalid(format!("{} prompts in one request: this server takes one", v.len()), Some("prompt"))),
        };
        let ids = encode(&app, prompt).await?;
        plan(&app.model, &r.model, ids, r.sampling, Some(16), "prompt")
    };
    match result.await {
        Ok(plan) => respond(app, plan, Kind::Completion).await,
        Err(e) => e.into_response(),
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

async fn respond(app: Arc<App>, plan: Plan, kind: Kind) -> Response {
    // Admission: a slot in the building, then a turn to decode.
    let Ok(admitted) = app.admitted.clone().try_acquire_owned() else {
        let e = ApiError { status: axum::http::StatusCode::TOO_MANY_REQUESTS, kind: "rate_limit_error", ..ApiError::internal("the server is busy: too many requests decoding or waiting; retry later") };
        return e.into_response();
    };
    let Ok(decoding) = app.decoding.clone().acquire_owned().await else {
        return ApiError::internal("the server is stopping").into_response();
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
            for i in 0..plan.n {
                let (text, finish, count) = generate_one(&app.model, &plan, i, &cancelled, |_| {})?;
                usage.completion_tokens += count;
                choices.push(kind.choice(i, &text, Some(finish), false));
            }
            usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
            Ok::<_, ApiError>((choices, usage))
        })
        .await;
        return match result {
            Ok(Ok((choices, usage))) => Json(json!({ "id": id, "object": kind.object(false), "created": created, "model": model, "choices": choices, "usage": usage })).into_response(),
            Ok(Err(e)) => e.into_response(),
            Err(e) => ApiError::internal(format!("the generation task failed: {e}")).into_response(),
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
        for i in 0..plan.n {
            if kind == Kind::Chat && !send(chunk(json!([{ "index": i, "delta": { "role": "assistant", "content": "" }, "finish_reason": null }]), None)) {
                return;
            }
            match generate_one(&app.model, &plan, i, &cancelled, |piece| {
                send(chunk(json!([kind.choice(i, piece, None, true)]), None));
            }) {
                Ok((_, finish, count)) => {
                    usage.completion_tokens += count;
                    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
                    if !send(chunk(json!([kind.choice(i, "", Some(finish), true)]), None)) {
                        return;
                    }
                }
                Err(e) => {
                    send(Event::default().data(json!({ "error": { "message": e.message, "type": e.kind } }).to_string()));
                    return;
                }
            }
        }
        if plan.include_usage {
            send(chunk(json!([]), Some(usage)));
        }
        send(Event::default().data("[DONE]"));
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
    pub device: phi_core::device::Backend,
    /// Pack the weights for CPU inference (bf16, int8 or int4: `phi_core::quant`).
    pub weights: Option<phi_core::WeightFormat>,
    /// Runs the load and the packing (its argument) so that the f32 weights packing frees go
    /// back to the OS; the `phi` binary passes its allocator's (see `phi_train::bench::BenchOptions::around_pack`).
    pub around_pack: Option<fn(&mut dyn FnMut())>,
}

/// Loads the model, binds, calls `on_ready` with the address and the model's id, and serves
/// until Ctrl-C (SIGINT) or SIGTERM; requests in flight finish first.
pub fn run(o: &ServeOptions, on_ready: impl FnOnce(std::net::SocketAddr, &str)) -> Result<(), Box<dyn std::error::Error>> {
    let device = o.device.device()?;
    let mut loaded = None;
    let mut load = || {
        loaded = Some((|| -> Result<ServedModel, Box<dyn std::error::Error>> {
            let mut model = ServedModel::load(&o.model, o.adapter.as_deref(), o.name.clone(), &device)?;
            if let Some(format) = o.weights {
                model.model.pack_weights(format)?;
            }
            Ok(model)
        })())
    };
    match (o.weights, o.around_pack) {
        (Some(_), Some(around)) => around(&mut load),
        _ => load(),
    }
    let model = loaded.expect("the load ran")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((o.host.as_str(), o.port)).await.map_err(|e| format!("{}:{}: {e}", o.host, o.port))?;
        on_ready(listener.local_addr()?, &model.name);
        serve(listener, model, Limits { max_concurrent: o.max_concurrent, ..Limits::default() }, shutdown_signal()).await?;
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
    pub fn start(model: ServedModel, limits: Limits) -> Result<Self, String> {
        let name = model.name.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => return tx.send(Err(e.to_string())).unwrap_or(()),
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                    Ok(l) => l,
                    Err(e) => return tx.send(Err(e.to_string())).unwrap_or(()),
                };
                let addr = listener.local_addr().map_err(|e| e.to_string());
                tx.send(addr).unwrap_or(());
                let _ = serve(listener, model, limits, async {
                    stopped.await.ok();
                })
                .await;
            });
        });
        let addr = rx.recv().map_err(|e| e.to_string())??;
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
