//! Shared helpers for the `phi` tool's tests: fixture paths, reference tensors, directory snapshots.
#![allow(dead_code, unused_imports)]

#[path = "../../crates/phi-core/tests/common/reference.rs"]
mod reference;
#[path = "../../crates/phi-data/tests/common/snapshot.rs"]
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
