//! Shared helpers for phi-train's integration tests: fixture paths, reference tensors, the tiny
//! run of the guard tests.
#![allow(dead_code, unused_imports)]

#[path = "../../../phi-core/tests/common/reference.rs"]
mod reference;
#[path = "../../../phi-data/tests/common/snapshot.rs"]
mod snapshot;
mod tiny;

use std::path::{Path, PathBuf};

pub use reference::*;
pub use snapshot::snapshot;
pub use tiny::tiny;

/// A fixture: this crate's training, LoRA and preference references (`tests/fixtures`), or one of
/// phi-core's tiny models (`crates/phi-core/tests/fixtures`), which they start from.
pub fn fixture(name: &str) -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = match name.split('/').next() {
        Some("train-adamw" | "lora-phi-tiny" | "dpo-phi-tiny") => here.join("tests/fixtures"),
        _ => here.parent().unwrap().join("phi-core/tests/fixtures"),
    };
    dir.join(name)
}
