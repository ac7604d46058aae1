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
