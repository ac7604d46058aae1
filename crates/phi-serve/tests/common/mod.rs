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
