//! The loss curve the command layer draws after `fit` returns (`phi::plot::fit_and_plot`): a
//! `loss.png` that is not a picture phi drew is never replaced, and the `phi` tool says so once,
//! as a `warning: …` line on stderr, when it happens.

use crate::common;

use std::path::Path;

use burn::tensor::Device;
use phi::core::PhiConfig;
use phi::data::{Mixture, TokenDataset};
use phi::plot::fit_and_plot;
use phi::train::checkpoint::LOSS_CURVE_FILE;
use phi::train::{AdamWSettings, CausalLm, Decay, LrSchedule, Resume, TrainConfig, TrainOutcome, Weights};

/// A tiny model, a two-step config and a learnable token stream (phi-train's resume tests').
fn tiny() -> (PhiConfig, TrainConfig, Mixture, TokenDataset) {
    let mut model = PhiConfig::phi_family(32, 2, 4, 64, 0.5);
    model.max_position_embeddings = 64;
    let cfg = TrainConfig {
        batch_size: 4,
        seq_len: 16,
        grad_accum: 2,
        max_steps: 2,
        optimizer: AdamWSettings { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, no_decay_for_bias_norm_embedding: true },
        schedule: LrSchedule { peak: 3e-3, warmup_steps: 1, total_steps: 2, floor: 3e-4, decay: Decay::Cosine },
        eval_every: 0,
        eval_batches: 4,
        checkpoint_every: 0,
        seed: 11,
        ..TrainConfig::default()
    };
    let stream: Vec<u32> = (0..3000u32).map(|i| if i % 7 == 0 { (i.wrapping_mul(2654435761)) >> 26 } else { i % 64 }).collect();
    (model, cfg, Mixture::single(TokenDataset::from_tokens(stream[400..].to_vec())), TokenDataset::from_tokens(stream[..400].to_vec()))
}

fn run(out: &Path) -> TrainOutcome {
    let (model, cfg, train, val) = tiny();
    let mut objective = CausalLm::new(&train, &val, cfg.seq_len, cfg.seed).unwrap();
    fit_and_plot(&Weights::Scratch(model), &mut objective, &cfg, out, Resume::No, &Device::default(), |_| {}).unwrap()
}

#[test]
fn a_loss_png_that_is_not_ours_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let theirs = b"\x89PNG\r\n\x1a\n my own plot".to_vec();
    std::fs::write(dir.path().join(LOSS_CURVE_FILE), &theirs).unwrap();
    let out = run(dir.path());
    assert_eq!(std::fs::read(dir.path().join(LOSS_CURVE_FILE)).unwrap(), theirs);
    let w = out.warnings.join("\n");
    assert!(w.contains(LOSS_CURVE_FILE) && w.contains("not a picture phi drew"), "{w}");
    // Ours is drawn by the next run, and redrawn by the one after, without a warning.
    std::fs::remove_file(dir.path().join(LOSS_CURVE_FILE)).unwrap();
    let first = run(dir.path());
    assert!(first.warnings.is_empty(), "{:?}", first.warnings);
    let drawn = std::fs::read(dir.path().join(LOSS_CURVE_FILE)).unwrap();
    assert!(drawn.starts_with(b"\x89PNG\r\n\x1a\n") && drawn != theirs);
    let again = run(dir.path());
    assert!(again.warnings.is_empty(), "{:?}", again.warnings);
}

#[test]
fn phi_train_says_once_when_it_leaves_a_loss_png_that_is_not_ours() {
    let out = tempfile::tempdir().unwrap();
    let theirs = b"\x89PNG\r\n\x1a\n my own plot".to_vec();
    std::fs::write(out.path().join(LOSS_CURVE_FILE), &theirs).unwrap();
    let run = common::train_phi1(out.path(), "batch_size = 2\nseq_len = 32\neval_batches = 1\n", &["--steps", "2"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].starts_with("warning: loss curve not written: ") && warnings[0].contains("not a picture phi drew"), "{stderr}");
    assert_eq!(std::fs::read(out.path().join(LOSS_CURVE_FILE)).unwrap(), theirs);
}
