//! Training runs end to end, and a run stopped at step 10 and resumed reproduces the
//! uninterrupted run bitwise (CPU); interrupted checkpoint writes are never resumed from.

use burn::tensor::Device;
use phi_core::PhiConfig;
use phi_data::shard::write_shard;
use phi_data::{Mixture, TokenDataset};
use phi_train::{AdamWSettings, Decay, LossScaler, LrSchedule, Precision, Start, TrainConfig, checkpoint, train};

/// burn's device RNG (dropout) is one per process, and every training step reseeds it: tests
/// that train take turns, or one test's reseeding would land between another's draws.
static DEVICE_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn take_turn() -> std::sync::MutexGuard<'static, ()> {
    DEVICE_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// A run from scratch in a fresh folder (kept alive with the outcome).
fn fresh_run(model: &PhiConfig, cfg: &TrainConfig, train_data: &Mixture, val: &TokenDataset) -> (phi_train::TrainOutcome, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let out = train(model, cfg, train_data, val, dir.path(), Start::Scratch, &Device::default(), |_| {}).unwrap();
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
        clip_norm: Some(1.0),
        eval_every: 5,
        eval_batches: 4,
        checkpoint_every: 10,
        keep_checkpoints: 2,
        seed: 11,
        peak_flops: 1e11,
        activation_checkpointing: false,
        precision: Precision::F32,
        loss_scaler: LossScaler::default(),
        on_non_finite: phi_train::OnNonFinite::Stop,
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
    let full = train(&model, &cfg, &train_tokens, &val_tokens, full_dir.path(), Start::Scratch, &device, |_| {}).unwrap();
    assert_eq!(full.metrics.len(), 20);
    // Dropout is really applied in training: the same step without it gives another loss.
    let plain = PhiConfig { resid_pdrop: 0.0, embd_pdrop: 0.0, ..model.clone() };
    let one = TrainConfig { max_steps: 1, checkpoint_every: 0, ..cfg.clone() };
    let no_dropout = train(&plain, &one, &train_tokens, &val_tokens, tempfile::tempdir().unwrap().path(), Start::Scratch, &device, |_| {}).unwrap();
    assert_ne!(no_dropout.metrics[0].loss, full.metrics[0].loss);
    let first = full.metrics[0].val_loss.or(full.metrics[4].val_loss).unwrap();
    let last = full.metrics[19].val_loss.unwrap();
    assert!(last < first, "validation loss should fall: {first} → {last}");

    let dir = tempfile::tempdir().unwrap();
    let half = TrainConfig { max_steps: 10, ..cfg.clone() };
    train(&model, &half, &train_tokens, &val_tokens, dir.path(), Start::ResumeAuto, &device, |_| {}).unwrap();
    // A checkpoint write that died half-way: a temporary directory, never picked up.
    let ckpts = dir.path().join("checkpoints");
    std::fs::create_dir_all(ckpts.join(".tmp-step-00000015-999")).unwrap();
    std::fs::write(ckpts.join(".tmp-step-00000015-999/config.json"), "{").unwrap();
    // And one whose state file never got written.
    std::fs::create_dir_all(ckpts.join("step-00000016")).unwrap();
    assert_eq!(checkpoint::latest(&ckpts).unwrap(), checkpoint::checkpoint_dir(&ckpts, 10));

    let resumed = train(&model, &cfg, &train_tokens, &val_tokens, dir.path(), Start::ResumeAuto, &device, |_| {}).unwrap();
    assert_eq!(resumed.resumed_from, Some(10));
    let losses = |m: &[phi_train::StepMetrics]| m.iter().map(|m| (m.step, m.loss.to_bits(), m.grad_norm.to_bits(), m.val_loss.map(f64::to_bits))).collect::<Vec<_>>();
    assert_eq!(losses(&resumed.metrics), losses(&full.metrics));
    // metrics.jsonl holds each step once.
    let lines = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
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
    let run = |cfg: &TrainConfig| {
        let (out, dir) = fresh_run(&model, cfg, &train_tokens, &val_tokens);
        let weights = std::fs::read(checkpoint::checkpoint_dir(&dir.path().join("checkpoints"), 4).join("model.safetensors")).unwrap();
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
    let out = train(&model, &cfg, &train_tokens, &val_tokens, dir.path(), Start::Scratch, &device, |_| {}).unwrap();
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
        serde_json::from_str(&std::fs::read_to_string(checkpoint::checkpoint_dir(&dir.path().join("checkpoints"), 16).join("trainer_state.json")).unwrap()).unwrap();
    let (last, good) = (&m[15], state["loss_scaler"]["good_steps"].as_u64().unwrap());
    let next_scale = match (last.skipped, good) {
        (true, _) => last.loss_scale.unwrap() / 2.0,
        (false, 0) => last.loss_scale.unwrap() * 2.0,
        _ => last.loss_scale.unwrap(),
    };
    assert_eq!(state["loss_scaler"]["scale"].as_f64(), Some(next_scale), "{state}");
}
