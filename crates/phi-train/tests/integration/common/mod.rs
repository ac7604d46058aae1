//! Shared helpers for phi-train's integration tests: fixture paths, reference tensors, the tiny
//! run of the guard tests.
#![allow(dead_code, unused_imports)]

#[path = "../../../../phi-core/tests/integration/common/reference.rs"]
mod reference;
#[path = "../../../../phi-data/tests/integration/common/snapshot.rs"]
mod snapshot;
mod tiny;

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use phi_core::PhiConfig;
use phi_data::{Mixture, TokenDataset};
use phi_train::{CausalLm, Resume, TrainConfig, TrainOutcome, Weights, fit};

/// burn's device RNG (dropout, fresh adapters) is one per process, and every training step
/// reseeds it: tests that train take turns, in every file of this binary, or one test's
/// reseeding would land between another's draws.
static DEVICE_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn take_turn() -> std::sync::MutexGuard<'static, ()> {
    DEVICE_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// SFT examples of 5 to 19 tokens: a prompt of `p` tokens, then a response of `r` tokens, learned,
/// that continues a pattern the model can learn; `salt` varies the set.
pub fn sft_examples(n: usize, salt: u32) -> Vec<phi_data::sft::SftExample> {
    (0..n as u32)
        .map(|i| {
            let p = 3 + (i * 7 + salt) % 6;
            let r = 2 + (i * 5 + salt) % 9;
            let ids: Vec<u32> = (0..p + r).map(|t| if t < p { (i * 13 + t * 3 + salt) % 90 } else { (t * 2 + i) % 90 }).collect();
            let learn = (0..p + r).map(|t| t >= p).collect();
            phi_data::sft::SftExample { ids, learn }
        })
        .collect()
}

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

/// Causal-LM pre-training of `model` from scratch on windows of `train`, validated on `val`:
/// [`fit`] with the [`CausalLm`] objective, as `phi train` runs it.
pub fn fit_lm(model: &PhiConfig, cfg: &TrainConfig, train: &Mixture, val: &TokenDataset, out: &Path, resume: Resume, device: &Device) -> phi_train::Result<TrainOutcome> {
    let mut objective = CausalLm::new(train, val, cfg.seq_len, cfg.seed)?;
    fit(&Weights::Scratch(model.clone()), &mut objective, cfg, out, resume, device, |_| {})
}
