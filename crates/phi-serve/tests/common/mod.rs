//! Shared by the phi-serve tests: a served tiny model.

use std::net::SocketAddr;
use std::path::PathBuf;

use phi_serve::ServedModel;
use serde_json::{Value, json};

/// phi3-tiny in a scratch folder with a word-level tokenizer: "the cat sat" are 3, 4, 5, the
/// rest are "wN".
pub fn model_dir() -> tempfile::TempDir {
    let fixture = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../phi-core/tests/fixtures/phi3-tiny"));
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(f), dir.path().join(f)).unwrap();
    }
    let vocab: serde_json::Map<String, Value> = (0..512)
        .map(|i| {
            let word = match i {
                3 => "the".to_string(),
                4 => "cat".into(),
                5 => "sat".into(),
                6 => "[UNK]".into(),
                _ => format!("w{i}"),
            };
            (word, i.into())
        })
        .collect();
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).unwrap();
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

