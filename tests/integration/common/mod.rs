//! Shared helpers for the `phi` tool's tests: fixture paths, reference tensors, directory snapshots.
#![allow(dead_code, unused_imports)]

#[path = "../../../crates/phi-core/tests/integration/common/reference.rs"]
mod reference;
pub mod serving;
#[path = "../../../crates/phi-data/tests/integration/common/snapshot.rs"]
mod snapshot;

use std::path::{Path, PathBuf};

pub use reference::*;
pub use snapshot::snapshot;

/// A fixture, in the crate that holds it: the PEFT adapter in phi-train's
/// (`crates/phi-train/tests/fixtures`), the tiny models in phi-core's (`crates/phi-core/tests/fixtures`).
pub fn fixture(name: &str) -> PathBuf {
    let krate = match name.split('/').next() {
        Some("train-adamw" | "lora-phi-tiny" | "dpo-phi-tiny") => "phi-train",
        _ => "phi-core",
    };
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crates").join(krate).join("tests/fixtures").join(name)
}

/// `phi chat --max-new-tokens 6 --model dir`, `input` on its stdin.
pub fn chat(dir: &Path, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_phi"))
        .args(["chat", "--max-new-tokens", "6", "--model"])
        .arg(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// The Python corpus shipped for tests and the fallback of `train_phi1`.
pub fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/corpus/python")
}

/// `phi train --recipe phi-1` on a fifth of the shipped corpus (vocabulary 300) into `out`, with
/// `toml` as its `--config` overrides and `extra` flags.
pub fn train_phi1(out: &Path, toml: &str, extra: &[&str]) -> std::process::Output {
    std::fs::create_dir_all(out).unwrap();
    let config = out.join("over.toml");
    std::fs::write(&config, toml).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_phi"))
        .args(["train", "--recipe", "phi-1", "--vocab-size", "300", "--max-corpus-mb", "0.2", "--corpus"])
        .arg(corpus())
        .arg("--config")
        .arg(&config)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}
