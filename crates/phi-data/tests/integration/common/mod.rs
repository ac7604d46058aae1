//! Shared helpers for phi-data's integration tests.
#![allow(dead_code, unused_imports)]

mod snapshot;

use std::path::PathBuf;

pub use snapshot::snapshot;

/// A fixture of this crate: the GPT-2 tokenizer with reference encodings.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}
