//! # phi-serve
//!
//! An OpenAI-compatible HTTP server for any model the framework loads (a HF folder, with a PEFT
//! adapter if given): `GET /v1/models`, `POST /v1/chat/completions` (the model family's chat
//! template) and `POST /v1/completions`, with `temperature`, `top_p`, `max_tokens`, `stop`,
//! `seed`, `n`, `stream` (server-sent events) and `usage`. Built on axum + tokio, the Rust
//! ecosystem's HTTP stack. Each request decodes on its own blocking thread with its own handle
//! on the (shared, read-only) weights, so requests are served concurrently; there is no batched
//! decoding across requests yet.
//!
//! Bad requests get OpenAI's error object with a 4xx status: malformed JSON or parameters (400),
//! an unknown model or path (404), a prompt the context cannot hold (400,
//! `context_length_exceeded`).
//!
//! ```no_run
//! use phi_serve::{ServedModel, serve};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let model = ServedModel::load("runs/dpo/merged".as_ref(), None, None, &burn::tensor::Device::default())?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! serve(listener, model, async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! # Ok(()) }
//! ```

pub mod openai;
pub mod text;

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
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

/// The routes, for a caller that runs its own server.
pub fn router(model: ServedModel) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(|| async { ApiError::not_found("no such endpoint (try /v1/models, /v1/chat/completions, /v1/completions)", "not_found") })
        .with_state(Arc::new(model))
}

/// Serves `model` on `listener` until `shutdown` completes, then finishes the requests in
/// flight and returns.
pub async fn serve(listener: tokio::net::TcpListener, model: ServedModel, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    axum::serve(listener, router(model)).with_graceful_shutdown(shutdown).await
}

type Shared = State<Arc<ServedModel>>;

async fn models(State(s): Shared) -> Json<Value> {
    Json(json!({ "object": "list", "data": [{ "id": s.name, "object": "model", "created": s.created, "owned_by": "phi" }] }))
}

/// A request's checked generation settings.
struct Plan {
    prompt: Vec<u32>,
    max_tokens: usize,
    stop: Vec<String>,
    seed: u64,
    sampling: Sampling,
}

/// At most this many choices per request.
const MAX_N: usize = 16;

fn plan(s: &ServedModel, model: &str, prompt: Vec<u32>, sampling: Sampling, default_max: Option<usize>) -> Result<Plan, ApiError> {
    if model != s.name {
        return Err(ApiError::not_found(format!("The model `{model}` does not exist; this server serves `{}`", s.name), "model_not_found"));
    }
    let p = &sampling;
    if !(p.temperature.is_finite() && (0.0..=2.0).contains(&p.temperature)) {
        return Err(ApiError::invalid(format!("temperature {} is not in [0, 2]", p.temperature), Some("temperature")));
    }
    if !(p.top_p > 0.0 && p.top_p <= 1.0) {
        return Err(ApiError::invalid(format!("top_p {} is not in (0, 1]", p.top_p), Some("top_p")));
    }
    if !(1..=MAX_N).contains(&p.n) {
        return Err(ApiError::invalid(format!("n {} is not in [1, {MAX_N}]", p.n), Some("n")));
    }
    if prompt.is_empty() {
        return Err(ApiError::invalid("the prompt is empty", Some("prompt")));
    }
    let context = s.model.config().max_position_embeddings;
    let room = context.saturating_sub(prompt.len());
    let max_tokens = match p.max_tokens {
        Some(0) => return Err(ApiError::invalid("max_tokens must be at least 1", Some("max_tokens"))),
        Some(m) => m,
        None => default_max.unwrap_or(room).min(room),
    };
    if room == 0 || prompt.len() + max_tokens > context {
        return Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid(
                format!("This model's maximum context length is {context} tokens; the prompt has {} and max_tokens asks for {max_tokens}", prompt.len()),
                Some("messages"),
            )
        });
    }
    let stop = p.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > 4 {
        return Err(ApiError::invalid("at most 4 stop sequences", Some("stop")));
    }
    let seed = p.seed.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    Ok(Plan { prompt, max_tokens, stop, seed, sampling })
}

/// One choice, generated on the calling (blocking) thread; `emit` receives the text as it
/// becomes final and stops generation by returning `false` (a client gone).
fn generate_one(s: &ServedModel, plan: &Plan, choice: usize, mut emit: impl FnMut(&str) -> bool) -> Result<(String, &'static str, usize), ApiError> {
    let config = GenerationConfig::sampling(plan.max_tokens, plan.sampling.temperature, plan.seed.wrapping_add(choice as u64))
        .with_top_p(plan.sampling.top_p)
        .with_stop_tokens(s.stop_ids.clone());
    let mut stream = TextStream::new(&s.tokenizer, &plan.stop);
    let (mut text, mut count, mut finish, mut gone) = (String::new(), 0usize, "length", false);
    s.model
        .generate_streaming(&plan.prompt, &config, |t| {
            count += 1;
            if s.stop_ids.contains(&t) {
                finish = "stop";
                return false;
            }
            let piece = stream.push(t);
            text.push_str(&piece);
            if !piece.is_empty() && !emit(&piece) {
                gone = true;
                return false;
            }
            if stream.stopped() {
                finish = "stop";
                return false;
            }
            true
        })
        .map_err(|e| ApiError::internal(format!("generation failed: {e}")))?;
    let rest = stream.finish();
    if !rest.is_empty() && !gone {
        emit(&rest);
    }
    text.push_str(&rest);
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

async fn chat(State(s): Shared, req: Result<Json<ChatRequest>, JsonRejection>) -> Response {
    let r = match body(req) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    for (i, m) in r.messages.iter().enumerate() {
        if !["system", "user", "assistant"].contains(&m.role.as_str()) {
            return ApiError::invalid(format!("messages[{i}] has role `{}` (system, user or assistant)", m.role), Some("messages")).into_response();
        }
    }
    if r.messages.is_empty() {
        return ApiError::invalid("messages is empty", Some("messages")).into_response();
    }
    let prompt = s.template.prompt(r.messages.iter().map(|m| (m.role.as_str(), m.content.as_str())));
    let ids = s.tokenizer.encode(&prompt);
    let plan = match plan(&s, &r.model, ids, r.sampling, None) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    respond(s, plan, Kind::Chat).await
}

async fn completions(State(s): Shared, req: Result<Json<CompletionRequest>, JsonRejection>) -> Response {
    let r = match body(req) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let prompt = match r.prompt {
        Prompt::One(p) => p,
        Prompt::Many(mut v) if v.len() == 1 => v.remove(0),
        Prompt::Many(v) => return ApiError::invalid(format!("{} prompts in one request: this server takes one", v.len()), Some("prompt")).into_response(),
    };
    let ids = s.tokenizer.encode(&prompt);
    let plan = match plan(&s, &r.model, ids, r.sampling, Some(16)) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    respond(s, plan, Kind::Completion).await
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

async fn respond(s: Arc<ServedModel>, plan: Plan, kind: Kind) -> Response {
    let (id, created, model) = (id(if kind == Kind::Chat { "chatcmpl" } else { "cmpl" }), s.created, s.name.clone());
    if !plan.sampling.stream {
        let result = tokio::task::spawn_blocking(move || {
            let mut choices = Vec::new();
            let mut usage = Usage { prompt_tokens: plan.prompt.len(), ..Usage::default() };
            for i in 0..plan.sampling.n {
                let (text, finish, count) = generate_one(&s, &plan, i, |_| true)?;
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
    // Streaming: chunks go out as server-sent events while a blocking thread decodes.
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    let chunk = move |choice: Value, usage: Option<Usage>| {
        let mut v = json!({ "id": id, "object": kind.object(true), "created": created, "model": model, "choices": [choice] });
        if let Some(u) = usage {
            v["usage"] = json!(u);
        }
        Event::default().data(v.to_string())
    };
    tokio::task::spawn_blocking(move || {
        let send = |e: Event| tx.blocking_send(e).is_ok();
        let mut usage = Usage { prompt_tokens: plan.prompt.len(), ..Usage::default() };
        for i in 0..plan.sampling.n {
            if kind == Kind::Chat && !send(chunk(json!({ "index": i, "delta": { "role": "assistant", "content": "" }, "finish_reason": null }), None)) {
                return;
            }
            match generate_one(&s, &plan, i, |piece| send(chunk(kind.choice(i, piece, None, true), None))) {
                Ok((_, finish, count)) => {
                    usage.completion_tokens += count;
                    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
                    let last = i + 1 == plan.sampling.n;
                    if !send(chunk(kind.choice(i, "", Some(finish), true), last.then_some(usage))) {
                        return;
                    }
                }
                Err(e) => {
                    send(Event::default().data(json!({ "error": { "message": e.message, "type": e.kind } }).to_string()));
                    return;
                }
            }
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
    pub device: phi_core::device::Backend,
}

/// Loads the model, binds, calls `on_ready` with the address and the model's id, and serves
/// until Ctrl-C (SIGINT) or SIGTERM; requests in flight finish first.
pub fn run(o: &ServeOptions, on_ready: impl FnOnce(std::net::SocketAddr, &str)) -> Result<(), Box<dyn std::error::Error>> {
    let device = o.device.device()?;
    let model = ServedModel::load(&o.model, o.adapter.as_deref(), o.name.clone(), &device)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((o.host.as_str(), o.port)).await.map_err(|e| format!("{}:{}: {e}", o.host, o.port))?;
        on_ready(listener.local_addr()?, &model.name);
        serve(listener, model, shutdown_signal()).await?;
        Ok(())
    })
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
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
