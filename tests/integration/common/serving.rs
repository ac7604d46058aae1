//! OpenAI-compatible endpoints for the tests of the command layer's clients (`phi::synth`,
//! `phi::annotate`): a scripted one, and `phi serve` of a tiny model.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;

use phi::serve::ServedModel;

/// phi3-tiny in a scratch folder with the word-level fixture tokenizer (phi-core's fixtures).
pub fn model_dir() -> tempfile::TempDir {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/phi-core/tests/fixtures");
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures.join("phi3-tiny").join(f), dir.path().join(f)).unwrap();
    }
    std::fs::copy(fixtures.join("word-tokenizer-512/tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
    dir
}

/// `phi serve` of the model in `dir` as `tiny`, on 127.0.0.1 in a background thread.
pub fn start(dir: &Path) -> SocketAddr {
    let model = ServedModel::load(dir, None, Some("tiny".into()), &Default::default()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            phi::serve::serve(listener, model, phi::serve::Limits::default(), std::future::pending()).await.unwrap();
        });
    });
    rx.recv().unwrap()
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
