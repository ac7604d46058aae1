//! Shared by the phi-serve tests: a served tiny model.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use phi_serve::ServedModel;

/// phi3-tiny in a scratch folder with the word-level fixture tokenizer (`the cat sat` are 3, 4,
/// 5, the rest are `wN`).
pub fn model_dir() -> tempfile::TempDir {
    let fixtures = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../phi-core/tests/fixtures"));
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures.join("phi3-tiny").join(f), dir.path().join(f)).unwrap();
    }
    std::fs::copy(fixtures.join("word-tokenizer-512/tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
    dir
}

pub fn start(dir: &std::path::Path) -> SocketAddr {
    let model = ServedModel::load(dir, None, Some("tiny".into()), &Default::default()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            phi_serve::serve(listener, model, phi_serve::Limits::default(), std::future::pending()).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// A served model with its own limits that a test stops: `stop()` starts the shutdown and
/// waits until `serve` returns.
pub struct Stoppable {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Stoppable {
    pub fn start(model: ServedModel, limits: phi_serve::Limits) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                phi_serve::serve(listener, model, limits, async {
                    stopped.await.ok();
                })
                .await
            })
        });
        Stoppable { addr: rx.recv().unwrap(), stop: Some(stop), thread: Some(thread) }
    }

    /// Signals shutdown now; returns once the server has returned.
    pub fn stop(&mut self) {
        self.signal();
        self.thread.take().unwrap().join().unwrap().unwrap();
    }

    /// Signals shutdown without waiting.
    pub fn signal(&mut self) {
        if let Some(s) = self.stop.take() {
            s.send(()).ok();
        }
    }
}


/// Serves `app` (a scripted endpoint) on 127.0.0.1 in a background thread; returns its API base.
pub fn spawn(app: axum::Router) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new().unwrap().block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        })
    });
    format!("http://{}/v1", rx.recv().unwrap())
}

/// A scripted OpenAI-compatible endpoint: `answer(request number, prompt)` gives the reply's
/// content (`Ok`, with `tokens` = (prompt, completion) usage) or an HTTP status to fail with.
/// Returns the API base and the request counter.
pub fn scripted(
    tokens: (u64, u64),
    answer: impl Fn(usize, &str) -> Result<String, u16> + Clone + Send + Sync + 'static,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use axum::response::IntoResponse;
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let (counter, answer) = (counter.clone(), answer.clone());
            async move {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let prompt = body["messages"][0]["content"].as_str().unwrap_or("").to_string();
                match answer(n, &prompt) {
                    Ok(content) => axum::Json(serde_json::json!({
                        "choices": [{"message": {"role": "assistant", "content": content}}],
                        "usage": {"prompt_tokens": tokens.0, "completion_tokens": tokens.1},
                    }))
                    .into_response(),
                    Err(status) => (axum::http::StatusCode::from_u16(status).unwrap(), "scripted failure").into_response(),
                }
            }
        }),
    );
    (spawn(app), hits)
}
