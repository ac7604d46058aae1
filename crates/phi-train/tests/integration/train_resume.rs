//! Training runs end to end, and a run stopped at step 10 and resumed reproduces the
//! uninterrupted run bitwise (CPU); interrupted checkpoint writes are never resumed from.

use crate::common;

use burn::tensor::Device;
use common::{fit_lm, snapshot};
use phi_core::{BlockKind, Family, MlpKind, NormKind, PhiConfig};
use phi_data::shard::write_shard;
use phi_data::{Mixture, TokenDataset};
use phi_train::checkpoint::{self, CHECKPOINTS_DIR, CONFIG_FILE, MARKER, METRICS_FILE, OPTIMIZER_FILE, STATE_FILE, WEIGHTS_FILE};
use phi_train::{AdamWSettings, Decay, LossScaler, LrSchedule, Precision, Resume, TrainConfig};

use crate::common::take_turn;

/// A run from scratch in a fresh folder (kept alive with the outcome).
fn fresh_run(model: &PhiConfig, cfg: &TrainConfig, train_data: &Mixture, val: &TokenDataset) -> (phi_train::TrainOutcome, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let out = fit_lm(model, cfg, train_data, val, dir.path(), Resume::No, &Device::default()).unwrap();
    (out, dir)
}

/// A tiny model and a mixture of two memory-mapped shard datasets (70/30), so that resuming
/// covers the mixture sampler's state and the shard reader too.
fn tiny() -> (PhiConfig, TrainConfig, Mixture, TokenDataset, tempfile::TempDir) {
    let mut model = PhiConfig::phi_family(32, 2, 4, 64, 0.5);
    model.max_position_embeddings = 64;
    let cfg = TrainConfig {
        batch_size: 4,
        seq_len: 16,
        grad_accum: 2,
        max_steps: 20,
        optimizer: AdamWSettings { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, no_decay_for_bias_norm_embedding: true },
        schedule: LrSchedule { peak: 3e-3, warmup_steps: 3, total_steps: 20, floor: 3e-4, decay: Decay::Cosine },
        eval_every: 5,
        eval_batches: 4,
        checkpoint_every: 10,
        seed: 11,
        ..TrainConfig::default()
    };
    // A learnable stream: counting modulo 64 with every 7th token random-ish.
    let stream = |n: usize, salt: u32| -> Vec<u32> {
        (0..n as u32).map(|i| if i % 7 == 0 { (i * 2654435761u32.wrapping_add(salt)) >> 26 } else { i % 64 }).collect()
    };
    let data = tempfile::tempdir().unwrap();
    let shard = |name: &str, tokens: Vec<u32>| {
        let path = data.path().join(name);
        write_shard(&path, 64, &tokens).unwrap();
        TokenDataset::from_shards([path]).unwrap()
    };
    let train = Mixture::new(vec![(shard("a.bin", stream(3000, 1)), 0.7), (shard("b.bin", stream(1000, 3)), 0.3)]).unwrap();
    (model, cfg, train, TokenDataset::from_tokens(stream(600, 2)), data)
}

#[test]
fn resumed_run_matches_uninterrupted_run_bitwise() {
    let _turn = take_turn();
    let (model, cfg, train_tokens, val_tokens, _data) = tiny();
    // With dropout (phi-2 style): the masks of a resumed step must be the ones it would have drawn.
    let model = PhiConfig { resid_pdrop: 0.1, embd_pdrop: 0.1, ..model };
    let device = Device::default();

    let full_dir = tempfile::tempdir().unwrap();
    let full = fit_lm(&model, &cfg, &train_tokens, &val_tokens, full_dir.path(), Resume::No, &device).unwrap();
    assert_eq!(full.metrics.len(), 20);
    // Dropout is really applied in training: the same step without it gives another loss.
    let plain = PhiConfig { resid_pdrop: 0.0, embd_pdrop: 0.0, ..model.clone() };
    let one = TrainConfig { max_steps: 1, checkpoint_every: 0, ..cfg.clone() };
    let no_dropout = fit_lm(&plain, &one, &train_tokens, &val_tokens, tempfile::tempdir().unwrap().path(), Resume::No, &device).unwrap();
    assert_ne!(no_dropout.metrics[0].loss, full.metrics[0].loss);
    let first = full.metrics[0].val_loss.or(full.metrics[4].val_loss).unwrap();
    let last = full.metrics[19].val_loss.unwrap();
    assert!(last < first, "validation loss should fall: {first} → {last}");

    let dir = tempfile::tempdir().unwrap();
    let half = TrainConfig { max_steps: 10, ..cfg.clone() };
    fit_lm(&model, &half, &train_tokens, &val_tokens, dir.path(), Resume::Auto, &device).unwrap();
    // A checkpoint write that died half-way: a temporary directory, never picked up.
    let ckpts = dir.path().join(CHECKPOINTS_DIR);
    std::fs::create_dir_all(ckpts.join(".tmp-step-00000015-999")).unwrap();
    std::fs::write(ckpts.join(".tmp-step-00000015-999").join(CONFIG_FILE), "{").unwrap();
    // And one whose state file never got written.
    std::fs::create_dir_all(ckpts.join("step-00000016")).unwrap();
    assert_eq!(checkpoint::latest(&ckpts).unwrap(), checkpoint::checkpoint_dir(&ckpts, 10));

    let resumed = fit_lm(&model, &cfg, &train_tokens, &val_tokens, dir.path(), Resume::Auto, &device).unwrap();
    assert_eq!(resumed.resumed_from, Some(10));
    let losses = |m: &[phi_train::StepMetrics]| m.iter().map(|m| (m.step, m.loss.to_bits(), m.grad_norm.to_bits(), m.val_loss.map(f64::to_bits))).collect::<Vec<_>>();
    assert_eq!(losses(&resumed.metrics), losses(&full.metrics));
    // metrics.jsonl holds each step once.
    let lines = std::fs::read_to_string(dir.path().join(METRICS_FILE)).unwrap();
    assert_eq!(lines.lines().count(), 20);
    // Only the newest `keep_checkpoints` remain, and each loads as a HF checkpoint.
    let kept: Vec<usize> = checkpoint::list(&ckpts).into_iter().map(|(s, _)| s).collect();
    assert_eq!(kept, vec![10, 20]);
    phi_core::PhiForCausalLM::from_pretrained(checkpoint::checkpoint_dir(&ckpts, 20), &device).unwrap();
}

#[test]
fn activation_checkpointing_gives_the_same_training() {
    let _turn = take_turn();
    let (model, cfg, train_tokens, val_tokens, _data) = tiny();
    let cfg = TrainConfig { max_steps: 4, eval_every: 0, checkpoint_every: 0, ..cfg };
    let run = |cfg: &TrainConfig| fresh_run(&model, cfg, &train_tokens, &val_tokens).0.metrics.iter().map(|m| m.loss).collect::<Vec<_>>();
    let plain = run(&cfg);
    let recomputed = run(&TrainConfig { activation_checkpointing: true, ..cfg.clone() });
    for (a, b) in plain.iter().zip(&recomputed) {
        assert!((a - b).abs() < 1e-6, "{plain:?} vs {recomputed:?}");
    }
}

#[test]
fn bf16_compute_keeps_f32_masters_and_tracks_the_f32_run() {
    let _turn = take_turn();
    let (model, cfg, train_tokens, val_tokens, _data) = tiny();
    let cfg = TrainConfig { max_steps: 4, eval_every: 0, checkpoint_every: 0, ..cfg };
    if !Device::default().supports_dtype(burn::tensor::DType::BF16) {
        // wgpu's WGSL compiler has no bf16: the run is refused up front, naming the setting,
        // and nothing is written.
        let dir = tempfile::tempdir().unwrap();
        let bf16 = TrainConfig { precision: Precision::Bf16, ..cfg.clone() };
        let e = fit_lm(&model, &bf16, &train_tokens, &val_tokens, dir.path(), Resume::No, &Device::default()).err().expect("bf16 refused").to_string();
        assert!(e.contains("precision = \"bf16\"") && e.contains("cannot compute in"), "{e}");
        assert!(!dir.path().join(CHECKPOINTS_DIR).exists() && !dir.path().join(METRICS_FILE).exists());
        return;
    }
    let run = |cfg: &TrainConfig| {
        let (out, dir) = fresh_run(&model, cfg, &train_tokens, &val_tokens);
        let weights = std::fs::read(checkpoint::checkpoint_dir(&dir.path().join(CHECKPOINTS_DIR), 4).join(WEIGHTS_FILE)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&weights).unwrap();
        assert!(st.tensors().iter().all(|(_, t)| t.dtype() == safetensors::Dtype::F32), "master weights stay f32");
        (out.metrics, st.tensor("model.layers.0.mlp.fc1.weight").unwrap().data().to_vec())
    };
    let (f32_metrics, f32_w) = run(&cfg);
    let (bf16_metrics, bf16_w) = run(&TrainConfig { precision: Precision::Bf16, ..cfg.clone() });
    for (a, b) in f32_metrics.iter().zip(&bf16_metrics) {
        assert!((a.loss - b.loss).abs() < 0.05 && (a.loss - b.loss).abs() > 0.0, "bf16 loss {} vs f32 {}", b.loss, a.loss);
        assert!(b.grad_norm.is_finite() && !b.skipped && b.loss_scale.is_none());
    }
    assert!(bf16_metrics[3].loss < bf16_metrics[0].loss, "bf16 training learns");
    // Updates are applied to the f32 masters at f32 resolution: the bf16 run's weights are not
    // bf16-representable values.
    let w: Vec<f32> = bf16_w.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert!(w.iter().any(|v| v.to_bits() & 0xffff != 0));
    assert_ne!(f32_w, bf16_w);
}

#[test]
fn f16_loss_scaling_skips_overflowing_steps_and_backs_off() {
    let _turn = take_turn();
    let (model, cfg, train_tokens, val_tokens, _data) = tiny();
    // 2^28 overflows f16 gradients at once; halving brings it into range within a few steps.
    let cfg = TrainConfig {
        max_steps: 16,
        eval_every: 0,
        checkpoint_every: 8,
        precision: Precision::F16,
        loss_scaler: LossScaler { scale: 2f64.powi(28), good_steps: 0, growth_interval: 4 },
        ..cfg
    };
    let device = Device::default();
    let dir = tempfile::tempdir().unwrap();
    let out = fit_lm(&model, &cfg, &train_tokens, &val_tokens, dir.path(), Resume::No, &device).unwrap();
    let m = &out.metrics;
    assert!(m[0].skipped && m[0].loss_scale == Some(2f64.powi(28)), "{:?}", m[0]);
    let first_applied = m.iter().position(|m| !m.skipped).expect("the scale comes down until steps apply");
    assert!(first_applied > 0 && first_applied < 12, "{m:?}");
    for w in m[..=first_applied].windows(2) {
        assert_eq!(w[1].loss_scale.unwrap(), w[0].loss_scale.unwrap() / 2.0, "halved after each overflow");
    }
    assert!(m[first_applied..].iter().all(|m| m.grad_norm.is_finite()));
    // Four good steps in a row double the scale.
    let after = m[first_applied].loss_scale.unwrap();
    assert!(m.iter().any(|x| x.loss_scale == Some(after * 2.0)), "{m:?}");
    // The scaler's state is in the checkpoint, so a resumed run scales alike.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(checkpoint::checkpoint_dir(&dir.path().join(CHECKPOINTS_DIR), 16).join(STATE_FILE)).unwrap()).unwrap();
    let (last, good) = (&m[15], state["loss_scaler"]["good_steps"].as_u64().unwrap());
    let next_scale = match (last.skipped, good) {
        (true, _) => last.loss_scale.unwrap() / 2.0,
        (false, 0) => last.loss_scale.unwrap() * 2.0,
        _ => last.loss_scale.unwrap(),
    };
    assert_eq!(state["loss_scaler"]["scale"].as_f64(), Some(next_scale), "{state}");
}

fn resume_error(model: &PhiConfig, cfg: &TrainConfig, train_data: &Mixture, val: &TokenDataset, dir: &std::path::Path) -> String {
    match fit_lm(model, cfg, train_data, val, dir, Resume::Auto, &Device::default()) {
        Err(e) => e.to_string(),
        Ok(o) => panic!("resumed from {:?} instead of refusing", o.resumed_from),
    }
}

#[test]
fn resuming_another_run_is_an_error_that_says_what_differs() {
    let _turn = take_turn();
    let (model, cfg, train_data, val, _data) = tiny();
    let cfg = TrainConfig { max_steps: 2, eval_every: 0, checkpoint_every: 2, ..cfg };
    let dir = tempfile::tempdir().unwrap();
    fit_lm(&model, &cfg, &train_data, &val, dir.path(), Resume::No, &Device::default()).unwrap();
    let ckpts = dir.path().join(CHECKPOINTS_DIR);
    let before = snapshot(&ckpts);

    // Another model (a phi-3 style block with the same sizes, or another width).
    let phi3 = PhiConfig {
        family: Family::Phi3,
        block: BlockKind::Sequential,
        norm: NormKind::RmsNorm,
        mlp: MlpKind::Gated,
        fused_qkv: true,
        linear_bias: false,
        lm_head_bias: false,
        ..model.clone()
    };
    let e = resume_error(&phi3, &cfg, &train_data, &val, dir.path());
    assert!(e.contains("not the same run") && e.contains("model.model_type: \"phi\" in the checkpoint, \"phi3\" now") && e.contains("Start over without resuming"), "{e}");
    assert!(e.contains("step-00000002"), "names the checkpoint: {e}");
    let mut wider = PhiConfig::phi_family(48, 2, 4, 64, 0.5);
    wider.max_position_embeddings = 64;
    let e = resume_error(&wider, &cfg, &train_data, &val, dir.path());
    assert!(e.contains("model.hidden_size: 32 in the checkpoint, 48 now"), "{e}");
    // Another batch size, sequence length, seed: another run.
    let e = resume_error(&model, &TrainConfig { batch_size: 2, ..cfg.clone() }, &train_data, &val, dir.path());
    assert!(e.contains("batch_size: 4 in the checkpoint, 2 now"), "{e}");
    let e = resume_error(&model, &TrainConfig { seq_len: 8, seed: 12, ..cfg.clone() }, &train_data, &val, dir.path());
    assert!(e.contains("seq_len: 16 in the checkpoint, 8 now") && e.contains("seed: 11 in the checkpoint, 12 now"), "{e}");
    assert!(e.contains("max_steps") && e.contains("schedule"), "the error says what may change: {e}");
    // Other data: other token ids (e.g. a retrained tokenizer) or other mixture weights.
    let other = Mixture::single(TokenDataset::from_tokens((0..4000u32).map(|i| (i * 7) % 64).collect()));
    let e = resume_error(&model, &cfg, &other, &val, dir.path());
    assert!(e.contains("data:") && e.contains("in the checkpoint"), "{e}");
    assert_eq!(snapshot(&ckpts), before, "a refused resume changes no checkpoint");

    // Training longer, with the schedule stretched and checkpoints kept differently: the same run.
    let longer = TrainConfig {
        max_steps: 3,
        schedule: LrSchedule { total_steps: 30, ..cfg.schedule },
        keep_checkpoints: 5,
        eval_every: 1,
        ..cfg.clone()
    };
    let out = fit_lm(&model, &longer, &train_data, &val, dir.path(), Resume::Auto, &Device::default()).unwrap();
    assert_eq!((out.resumed_from, out.metrics.len()), (Some(2), 3));
    assert!(out.resume_warnings.is_empty(), "{:?}", out.resume_warnings);
    // Starting over is always possible.
    let fresh = fit_lm(&phi3, &cfg, &train_data, &val, tempfile::tempdir().unwrap().path(), Resume::No, &Device::default()).unwrap();
    assert_eq!(fresh.resumed_from, None);
}

#[test]
fn a_kill_mid_prune_and_corrupt_newest_checkpoints_fall_back_to_the_previous_complete_one() {
    let _turn = take_turn();
    let (model, cfg, train_data, val, _data) = tiny();
    let cfg = TrainConfig { max_steps: 6, eval_every: 0, checkpoint_every: 2, keep_checkpoints: 3, ..cfg };
    let device = Device::default();
    let whole = fresh_run(&model, &cfg, &train_data, &val).0;

    let dir = tempfile::tempdir().unwrap();
    fit_lm(&model, &cfg, &train_data, &val, dir.path(), Resume::No, &device).unwrap();
    let ckpts = dir.path().join(CHECKPOINTS_DIR);
    let at = |step| checkpoint::checkpoint_dir(&ckpts, step);
    assert_eq!(checkpoint::list(&ckpts).into_iter().map(|(s, _)| s).collect::<Vec<_>>(), [2, 4, 6]);

    // What a kill in the middle of the old pruning left: a step folder with its state and no
    // weights (and no marker): never listed.
    std::fs::create_dir_all(at(8)).unwrap();
    std::fs::copy(at(6).join(STATE_FILE), at(8).join(STATE_FILE)).unwrap();
    // What a kill in the middle of today's pruning or writing leaves: `.tmp-step-*` folders.
    let stale = ckpts.join(".tmp-step-00000001-4242-old");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::copy(at(2).join(STATE_FILE), stale.join(STATE_FILE)).unwrap();
    std::fs::create_dir_all(ckpts.join(".tmp-step-00000007-4242")).unwrap();
    std::fs::write(ckpts.join(".tmp-step-00000007-4242/model.safetensors.tmp"), b"half").unwrap();
    // A `.tmp-step-*` folder holding a user's file is not ours: left, with a warning.
    let foreign = ckpts.join(".tmp-step-00000009-1");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), b"mine").unwrap();
    // The newest checkpoint truncated, the one before it garbled in place (same size).
    let weights = at(6).join(WEIGHTS_FILE);
    let len = std::fs::metadata(&weights).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&weights).unwrap().set_len(len / 2).unwrap();
    let e = checkpoint::verify(&at(6)).unwrap_err().to_string();
    assert!(e.contains(WEIGHTS_FILE) && e.contains("the checkpoint marker recorded"), "{e}");
    let optim = at(4).join(OPTIMIZER_FILE);
    let garbage = vec![0x5au8; std::fs::metadata(&optim).unwrap().len() as usize];
    std::fs::write(&optim, garbage).unwrap();
    assert_eq!(checkpoint::latest(&ckpts).unwrap(), at(6), "the marker says complete; reading is what fails");

    let resumed = fit_lm(&model, &cfg, &train_data, &val, dir.path(), Resume::Auto, &device).unwrap();
    assert_eq!(resumed.resumed_from, Some(2), "falls back past both unreadable checkpoints");
    let w = resumed.resume_warnings.join("\n");
    assert!(w.contains("step-00000006") && w.contains("step-00000004") && w.contains("falling back"), "{w}");
    assert!(w.contains(".tmp-step-00000009-1") && w.contains("notes.txt"), "{w}");
    // The continued run is the uninterrupted one, bitwise.
    let bits = |m: &[phi_train::StepMetrics]| m.iter().map(|m| (m.step, m.loss.to_bits(), m.grad_norm.to_bits())).collect::<Vec<_>>();
    assert_eq!(bits(&resumed.metrics), bits(&whole.metrics));
    // Stale folders of ours are gone, the user's is untouched, the unmarked leftover is ignored,
    // and the rewritten checkpoints are whole again.
    assert!(!stale.exists() && !ckpts.join(".tmp-step-00000007-4242").exists());
    assert_eq!(std::fs::read(foreign.join("notes.txt")).unwrap(), b"mine");
    assert_eq!(checkpoint::list(&ckpts).into_iter().map(|(s, _)| s).collect::<Vec<_>>(), [2, 4, 6]);
    for step in [2, 4, 6] {
        checkpoint::verify(&at(step)).unwrap();
    }
    assert!(at(8).join(STATE_FILE).exists());

    // Nothing readable at all: an error that lists each, not a silent start from scratch.
    for step in [2, 4, 6] {
        std::fs::write(at(step).join(STATE_FILE), "{").unwrap();
    }
    let e = resume_error(&model, &cfg, &train_data, &val, dir.path());
    assert!(e.contains("no checkpoint could be read") && e.contains("step-00000002") && e.contains("Start over without resuming"), "{e}");
}

#[test]
fn pruning_retires_old_checkpoints_whole_and_leaves_folders_that_are_not_ours() {
    // Checkpoints written directly (no training): files, marker, pruning, removal.
    let root = tempfile::tempdir().unwrap();
    let ckpts = root.path().join(CHECKPOINTS_DIR);
    // Writes the checkpoint of `step`, keeping `keep`; the warnings of its pruning.
    let write = |step: usize, keep: usize| {
        let mut warnings = Vec::new();
        let write_files = |dir: &std::path::Path| {
            std::fs::write(dir.join(CONFIG_FILE), "{}").unwrap();
            std::fs::write(dir.join(WEIGHTS_FILE), vec![1u8; 100]).unwrap();
            std::fs::write(dir.join(STATE_FILE), "{}").unwrap();
            Ok(())
        };
        checkpoint::save(&ckpts, step, keep, write_files, &mut warnings).unwrap();
        warnings
    };
    for step in 1..=3 {
        assert_eq!(write(step, 2), Vec::<String>::new());
    }
    let names = || {
        let mut n: Vec<String> = std::fs::read_dir(&ckpts).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        n.sort();
        n
    };
    assert_eq!(names(), ["step-00000002", "step-00000003"], "the oldest is gone, with no temporary left");
    let marker: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ckpts.join("step-00000003").join(MARKER)).unwrap()).unwrap();
    assert_eq!((marker["format"].as_str(), marker["step"].as_u64(), marker["files"][WEIGHTS_FILE]["bytes"].as_u64()), (Some("phi-checkpoint"), Some(3), Some(100)));
    // XXH3-64 of a hundred 0x01 bytes, as hex.
    let xxh3 = marker["files"][WEIGHTS_FILE]["xxh3"].as_str().unwrap();
    assert_eq!(xxh3, format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&[1u8; 100])));

    // A user's file inside an old checkpoint: that checkpoint is not pruned, and the run goes on.
    std::fs::write(ckpts.join("step-00000002/my-eval.txt"), b"results").unwrap();
    let w = write(4, 2).join("\n");
    assert!(w.starts_with("old checkpoint not removed: ") && w.contains("step-00000002") && w.contains("my-eval.txt"), "{w}");
    assert_eq!(names(), ["step-00000002", "step-00000003", "step-00000004"]);
    assert_eq!(std::fs::read(ckpts.join("step-00000002/my-eval.txt")).unwrap(), b"results");

    // --fresh: a checkpoints folder holding a user's file is refused, naming it, all intact.
    let before = snapshot(&ckpts);
    let e = checkpoint::remove_all(&ckpts).unwrap_err().to_string();
    assert!(e.contains(&ckpts.display().to_string()) && e.contains("my-eval.txt"), "{e}");
    assert_eq!(snapshot(&ckpts), before);
    std::fs::remove_file(ckpts.join("step-00000002/my-eval.txt")).unwrap();
    // So is one with a file of the user's beside the checkpoints.
    std::fs::write(ckpts.join("notes.md"), b"mine").unwrap();
    let e = checkpoint::remove_all(&ckpts).unwrap_err().to_string();
    assert!(e.contains("notes.md"), "{e}");
    assert!(ckpts.join("step-00000004").join(WEIGHTS_FILE).exists(), "nothing removed");
    std::fs::remove_file(ckpts.join("notes.md")).unwrap();
    // A checkpoint without its marker (a write, deletion or --fresh cut short) is an incomplete
    // one of ours: not listed, and replaced by the run that reaches its step — not a dead end.
    let listed = || checkpoint::list(&ckpts).into_iter().map(|(s, _)| s).collect::<Vec<_>>();
    std::fs::remove_file(ckpts.join("step-00000003").join(MARKER)).unwrap();
    assert_eq!(listed(), [2, 4]);
    write(3, 5);
    assert_eq!(listed(), [2, 3, 4]);
    checkpoint::verify(&ckpts.join("step-00000003")).unwrap();
    // Writing over a folder that holds a file of the user's is an error naming it.
    std::fs::write(ckpts.join("step-00000003/notes.txt"), b"mine").unwrap();
    let e = checkpoint::save(&ckpts, 3, 5, |_| Ok(()), &mut Vec::new()).unwrap_err().to_string();
    assert!(e.contains("step-00000003") && e.contains("notes.txt"), "{e}");
    assert!(ckpts.join("step-00000003").join(WEIGHTS_FILE).exists());
    std::fs::remove_file(ckpts.join("step-00000003/notes.txt")).unwrap();
    // Only checkpoints of ours, complete or not (what a --fresh cut short leaves): all removed.
    std::fs::remove_file(ckpts.join("step-00000004").join(MARKER)).unwrap();
    checkpoint::remove_all(&ckpts).unwrap();
    assert!(!ckpts.exists() && root.path().exists());
}

#[test]
fn a_metrics_jsonl_that_is_not_ours_is_not_overwritten() {
    let _turn = take_turn();
    let (model, cfg, train_data, val, _data) = tiny();
    let cfg = TrainConfig { max_steps: 1, eval_every: 0, checkpoint_every: 0, ..cfg };
    let dir = tempfile::tempdir().unwrap();
    let theirs = b"{\"experiment\": \"mine\"}\nepoch,loss\n1,0.5\n";
    std::fs::write(dir.path().join(METRICS_FILE), theirs).unwrap();
    let e = match fit_lm(&model, &cfg, &train_data, &val, dir.path(), Resume::No, &Device::default()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("trained over a metrics.jsonl of the user's"),
    };
    assert!(e.contains(METRICS_FILE) && e.contains("line 1"), "{e}");
    assert_eq!(std::fs::read(dir.path().join(METRICS_FILE)).unwrap(), theirs);
    // Ours, with a torn last line from a kill mid-write: the torn line is dropped, the run goes on.
    let mut ours = String::new();
    let out = fit_lm(&model, &cfg, &train_data, &val, tempfile::tempdir().unwrap().path(), Resume::No, &Device::default()).unwrap();
    ours.push_str(&serde_json::to_string(&out.metrics[0]).unwrap());
    ours.push_str("\n{\"step\": 2, \"lo");
    std::fs::write(dir.path().join(METRICS_FILE), &ours).unwrap();
    let again = fit_lm(&model, &cfg, &train_data, &val, dir.path(), Resume::No, &Device::default()).unwrap();
    assert_eq!(again.metrics.len(), 1);
    assert_eq!(std::fs::read_to_string(dir.path().join(METRICS_FILE)).unwrap().lines().count(), 1);
}

/// Sets the first value of `tensor` in a safetensors file to NaN, in place (same size).
fn poison(file: &std::path::Path, tensor: &str) {
    let mut bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = 8 + n + header[tensor]["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(file, bytes).unwrap();
}

/// Rewrites a checkpoint's marker as a version-1 one (sizes only), as phi wrote before
/// checksums.
fn as_version_1(dir: &std::path::Path) {
    let path = dir.join(MARKER);
    let mut marker: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    marker["version"] = 1.into();
    for (name, entry) in marker["files"].as_object_mut().unwrap() {
        *entry = std::fs::metadata(dir.join(name)).unwrap().len().into();
    }
    std::fs::write(&path, marker.to_string()).unwrap();
}

#[test]
fn resume_passes_over_altered_incomplete_and_non_finite_checkpoints_with_a_warning() {
    let _turn = take_turn();
    let (model, cfg, train_data, val, _data) = tiny();
    let cfg = TrainConfig { max_steps: 6, eval_every: 0, checkpoint_every: 2, keep_checkpoints: 3, ..cfg };
    let device = Device::default();
    let dir = tempfile::tempdir().unwrap();
    let whole = fit_lm(&model, &cfg, &train_data, &val, dir.path(), Resume::No, &device).unwrap();
    let ckpts = dir.path().join(CHECKPOINTS_DIR);
    let at = |step| checkpoint::checkpoint_dir(&ckpts, step);
    let resume = || fit_lm(&model, &cfg, &train_data, &val, dir.path(), Resume::Auto, &device).unwrap();
    let bits = |m: &[phi_train::StepMetrics]| m.iter().map(|m| (m.step, m.loss.to_bits())).collect::<Vec<_>>();

    // One byte of the newest weights changed in place: same size, other checksum.
    let weights = at(6).join(WEIGHTS_FILE);
    let mut bytes = std::fs::read(&weights).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&weights, bytes).unwrap();
    let e = checkpoint::verify(&at(6)).unwrap_err().to_string();
    assert!(e.contains(WEIGHTS_FILE) && e.contains("checksum"), "{e}");
    let out = resume();
    assert_eq!(out.resumed_from, Some(4));
    let w = out.resume_warnings.join("\n");
    assert!(w.contains("step-00000006") && w.contains(WEIGHTS_FILE) && w.contains("checksum") && w.contains("falling back"), "{w}");
    assert_eq!(bits(&out.metrics), bits(&whole.metrics), "continued exactly from step 4");
    checkpoint::verify(&at(6)).unwrap();

    // The newest without its checkpoint.json: incomplete, passed over with a warning, and
    // replaced by the run when it gets there.
    std::fs::remove_file(at(6).join(MARKER)).unwrap();
    let out = resume();
    assert_eq!(out.resumed_from, Some(4));
    let w = out.resume_warnings.join("\n");
    assert!(w.contains("step-00000006") && w.contains("incomplete") && w.contains(&format!("no {MARKER}")), "{w}");
    checkpoint::verify(&at(6)).unwrap();

    // NaN weights in a checkpoint of a version before checksums (and before the guard that
    // keeps them out of checkpoints): not resumed from; the version-1 checkpoint before it is.
    poison(&at(6).join(WEIGHTS_FILE), "model.embed_tokens.weight");
    as_version_1(&at(6));
    as_version_1(&at(4));
    checkpoint::verify(&at(6)).unwrap();
    let out = resume();
    assert_eq!(out.resumed_from, Some(4), "{:?}", out.resume_warnings);
    let w = out.resume_warnings.join("\n");
    assert!(w.contains("step-00000006") && w.contains("NaN or infinite"), "{w}");
    assert_eq!(bits(&out.metrics), bits(&whole.metrics));
    let marker: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(at(6).join(MARKER)).unwrap()).unwrap();
    assert_eq!(marker["version"], checkpoint::VERSION, "rewritten whole, with checksums");
}

#[test]
fn a_second_run_on_a_held_output_folder_fails_at_once_naming_the_holder() {
    let _turn = take_turn();
    let (model, cfg, train_data, val, _data) = tiny();
    let cfg = TrainConfig { max_steps: 1, eval_every: 0, checkpoint_every: 0, ..cfg };
    let dir = tempfile::tempdir().unwrap();
    // The holder: another thread, as another run in this process (another process is refused
    // alike: the lock is the kernel's).
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let path = dir.path().to_path_buf();
    let holder = std::thread::spawn(move || {
        let lock = phi_train::run_dir::RunLock::acquire(&path).unwrap();
        held_tx.send(()).unwrap();
        let _ = release_rx.recv();
        drop(lock);
    });
    held_rx.recv().unwrap();
    let e = resume_error(&model, &cfg, &train_data, &val, dir.path());
    assert!(e.contains("another run") && e.contains(&format!("pid {}", std::process::id())) && e.contains(".phi-run.lock"), "{e}");
    assert!(!dir.path().join(METRICS_FILE).exists() && !dir.path().join(CHECKPOINTS_DIR).exists(), "nothing written");
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    // Released (as a crash releases it): the run goes ahead.
    fit_lm(&model, &cfg, &train_data, &val, dir.path(), Resume::Auto, &Device::default()).unwrap();

    // A file of the user's by the lock's name is not overwritten.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join(".phi-run.lock"), b"my notes").unwrap();
    let e = resume_error(&model, &cfg, &train_data, &val, other.path());
    assert!(e.contains(".phi-run.lock") && e.contains("not a phi run lock"), "{e}");
    assert_eq!(std::fs::read(other.path().join(".phi-run.lock")).unwrap(), b"my notes");
}

// (A `loss.png` that is not ours: the loss curve is drawn by the `phi` crate after `fit`
// returns; its tests/integration/loss_curve.rs.)

#[test]
fn an_old_checkpoint_that_is_not_ours_to_prune_is_a_warning_of_the_run() {
    let _turn = take_turn();
    let (model, cfg, train_data, val, _data) = tiny();
    let cfg = TrainConfig { max_steps: 2, eval_every: 0, checkpoint_every: 1, keep_checkpoints: 2, ..cfg };
    let dir = tempfile::tempdir().unwrap();
    let first = fit_lm(&model, &cfg, &train_data, &val, dir.path(), Resume::No, &Device::default()).unwrap();
    assert!(first.warnings.is_empty(), "{:?}", first.warnings);
    // A file of the user's in the oldest checkpoint: pruning it mid-run fails, the run goes on,
    // and the outcome says so (the library prints nothing).
    let ckpts = dir.path().join(CHECKPOINTS_DIR);
    std::fs::write(checkpoint::checkpoint_dir(&ckpts, 1).join("my-eval.txt"), b"results").unwrap();
    let out = fit_lm(&model, &TrainConfig { max_steps: 3, ..cfg }, &train_data, &val, dir.path(), Resume::Auto, &Device::default()).unwrap();
    assert_eq!(out.resumed_from, Some(2));
    assert!(out.resume_warnings.is_empty(), "{:?}", out.resume_warnings);
    let w = out.warnings.join("\n");
    assert!(w.starts_with("old checkpoint not removed: ") && w.contains("step-00000001") && w.contains("my-eval.txt"), "{w}");
    assert_eq!(checkpoint::list(&ckpts).into_iter().map(|(s, _)| s).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(std::fs::read(checkpoint::checkpoint_dir(&ckpts, 1).join("my-eval.txt")).unwrap(), b"results");
}
