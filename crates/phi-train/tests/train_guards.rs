//! The training loop refuses to go on with NaNs and refuses settings it cannot run: a diverged
//! run stops at the step that diverged and never checkpoints non-finite weights, and every
//! impossible setting is an error naming its key before any work is done, and a settings file
//! with an unknown or misspelt key is refused naming the nearest known one.

mod common;

use std::path::Path;

use burn::tensor::Device;
use common::tiny;
use phi_core::PhiConfig;
use phi_train::{LrSchedule, OnNonFinite, Start, StepMetrics, TrainConfig, checkpoint, train};

/// Every value of every checkpoint under `out` is finite (and how many checkpoints there are).
fn checkpoints_are_finite(out: &Path) -> usize {
    let all = checkpoint::list(&out.join("checkpoints"));
    for (step, dir) in &all {
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, t) in st.tensors() {
            let finite = t.data().chunks_exact(4).all(|c| f32::from_le_bytes(c.try_into().unwrap()).is_finite());
            assert!(finite, "checkpoint of step {step}: `{name}` holds NaN/inf");
        }
    }
    all.len()
}

fn metrics(out: &Path) -> Vec<StepMetrics> {
    std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn a_diverging_run_stops_at_the_first_nan_loss_and_checkpoints_no_nan() {
    let (model, mut cfg, data, val) = tiny();
    // The report's case: peak 1e30. Step 1's update is finite but huge (≈1e30), so step 2's
    // forward pass overflows.
    cfg.schedule.peak = 1e30;
    cfg.schedule.floor = 1e29;
    let dir = tempfile::tempdir().unwrap();
    let err = train(&model, &cfg, &data, &val, dir.path(), Start::Scratch, &Device::default(), |_| {}).map(|_| ()).expect_err("the run must stop");
    let msg = err.to_string();
    assert!(msg.starts_with("step 2: the loss is NaN") || msg.starts_with("step 2: the loss is inf"), "{msg}");
    assert!(msg.contains("step 1's update") && msg.contains("schedule.peak") && msg.contains("on_non_finite"), "{msg}");
    // Step 1's checkpoint (finite, if absurd) is the only one; step 2 logged nothing.
    assert_eq!(checkpoints_are_finite(dir.path()), 1);
    assert_eq!(metrics(dir.path()).len(), 1);
}

#[test]
fn an_update_that_overflows_the_weights_stops_at_that_step() {
    let (model, mut cfg, data, val) = tiny();
    // 1e40 is a finite f64 but not an f32: the very first update makes the weights infinite,
    // while its loss and gradients were fine.
    cfg.schedule.peak = 1e40;
    cfg.schedule.floor = 1e39;
    let dir = tempfile::tempdir().unwrap();
    let msg = train(&model, &cfg, &data, &val, dir.path(), Start::Scratch, &Device::default(), |_| {}).map(|_| ()).expect_err("the run must stop").to_string();
    assert!(msg.starts_with("step 1: the update at lr 1e40 made ") && msg.contains("weights NaN or infinite"), "{msg}");
    assert_eq!(checkpoints_are_finite(dir.path()), 0, "no checkpoint of the poisoned weights");
}

#[test]
fn skip_policy_logs_skipped_steps_and_still_stops_a_run_that_is_all_nan() {
    let (model, mut cfg, data, val) = tiny();
    cfg.schedule.peak = 1e30;
    cfg.schedule.floor = 1e29;
    cfg.on_non_finite = OnNonFinite::Skip;
    cfg.checkpoint_every = 0;
    // Steps 2..=6 are NaN and skipped, fewer than the bound: the run ends, every skip logged.
    let dir = tempfile::tempdir().unwrap();
    let out = train(&model, &cfg, &data, &val, dir.path(), Start::Scratch, &Device::default(), |_| {}).unwrap();
    let skipped: Vec<usize> = out.metrics.iter().filter(|m| m.skipped).map(|m| m.step).collect();
    assert_eq!(skipped, [2, 3, 4, 5, 6]);
    assert!(out.metrics[1].loss.is_nan());
    let logged = metrics(dir.path());
    assert_eq!(logged.len(), 6, "skipped steps stay in metrics.jsonl (null losses read back as NaN)");
    assert!(logged[1].skipped && logged[1].loss.is_nan() && !logged[0].skipped);
    let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    assert!(text.lines().nth(1).unwrap().contains("\"skipped\":true"), "{text}");
    // Skipped updates leave the weights as step 1 made them: still finite, so checkpointable.
    assert_eq!(checkpoints_are_finite(dir.path()), 1);

    // A run that is NaN from step 2 on for longer than the bound stops after the bound.
    let dir = tempfile::tempdir().unwrap();
    let long = TrainConfig { max_steps: 40, schedule: LrSchedule { total_steps: 40, ..cfg.schedule }, ..cfg };
    let msg = train(&model, &long, &data, &val, dir.path(), Start::Scratch, &Device::default(), |_| {}).map(|_| ()).expect_err("must stop").to_string();
    let last = 2 + phi_train::MAX_CONSECUTIVE_SKIPS;
    assert!(msg.starts_with(&format!("step {last}: ")) && msg.contains(&format!("{} non-finite steps in a row", phi_train::MAX_CONSECUTIVE_SKIPS + 1)), "{msg}");
    assert_eq!(metrics(dir.path()).len(), last - 1);
}

#[test]
fn a_healthy_run_is_untouched_by_the_guards() {
    let (model, cfg, data, val) = tiny();
    let dir = tempfile::tempdir().unwrap();
    let out = train(&model, &cfg, &data, &val, dir.path(), Start::Scratch, &Device::default(), |_| {}).unwrap();
    assert!(out.metrics.iter().all(|m| !m.skipped && m.loss.is_finite()));
    assert_eq!(checkpoints_are_finite(dir.path()), 6);
}

#[test]
fn a_run_at_the_whole_context_trains_and_evaluates_like_a_longer_context() {
    // The `--full` recipes train at seq_len == max_position_embeddings (phi-1: 2048 on 2048). A
    // window is seq_len + 1 tokens; only the first seq_len go through the model. The same run on
    // a model with room to spare computes the same losses: the extra positions are never used.
    let run = |max_pos: usize| {
        let (mut model, mut cfg, data, val) = tiny();
        model.max_position_embeddings = max_pos;
        (cfg.max_steps, cfg.eval_every, cfg.checkpoint_every) = (3, 1, 0);
        assert_eq!(cfg.seq_len, 16);
        let dir = tempfile::tempdir().unwrap();
        train(&model, &cfg, &data, &val, dir.path(), Start::Scratch, &Device::default(), |_| {}).unwrap().metrics
    };
    let (exact, roomy) = (run(16), run(64));
    assert_eq!(exact.len(), 3);
    for (a, b) in exact.iter().zip(&roomy) {
        let (va, vb) = (a.val_loss.expect("evaluated every step"), b.val_loss.unwrap());
        assert!((a.loss - b.loss).abs() < 1e-5 * b.loss && (va - vb).abs() < 1e-5 * vb, "step {}: {a:?} vs {b:?}", a.step);
    }
}

/// The error `validate` gives for `cfg` changed by `edit`.
fn invalid(edit: impl FnOnce(&mut TrainConfig, &mut PhiConfig)) -> String {
    let (mut model, mut cfg, _, _) = tiny();
    edit(&mut cfg, &mut model);
    cfg.validate(&model).map(|_| ()).expect_err("must be refused").to_string()
}

type Edit = Box<dyn FnOnce(&mut TrainConfig, &mut PhiConfig)>;

#[test]
fn impossible_settings_are_errors_naming_the_key() {
    let cases: Vec<(&str, Edit)> = vec![
        ("`batch_size`: must be at least 1", Box::new(|c, _| c.batch_size = 0)),
        ("`seq_len`: must be at least 1", Box::new(|c, _| c.seq_len = 0)),
        ("`grad_accum`: must be at least 1", Box::new(|c, _| c.grad_accum = 0)),
        ("`max_steps`: must be at least 1", Box::new(|c, _| c.max_steps = 0)),
        ("`seq_len`: 65 exceeds the model's max_position_embeddings (64)", Box::new(|c, _| c.seq_len = 65)),
        ("`batch_size`", Box::new(|c, _| c.batch_size = usize::MAX)),
        ("`clip_norm`: -1 must be a positive number", Box::new(|c, _| c.clip_norm = Some(-1.0))),
        ("`clip_norm`: 0 must be", Box::new(|c, _| c.clip_norm = Some(0.0))),
        ("`clip_norm`: NaN must be", Box::new(|c, _| c.clip_norm = Some(f64::NAN))),
        ("`schedule.peak`: inf must be a positive finite learning rate", Box::new(|c, _| c.schedule.peak = f64::INFINITY)),
        ("`schedule.peak`: NaN", Box::new(|c, _| c.schedule.peak = f64::NAN)),
        ("`schedule.peak`: -0.001", Box::new(|c, _| c.schedule.peak = -1e-3)),
        ("`schedule.floor`: NaN", Box::new(|c, _| c.schedule.floor = f64::NAN)),
        ("`schedule.floor`: 1 must be finite, ≥ 0 and ≤ schedule.peak", Box::new(|c, _| c.schedule.floor = 1.0)),
        ("`schedule.total_steps`: 0 must exceed schedule.warmup_steps (0)", Box::new(|c, _| c.schedule.total_steps = 0)),
        ("`optimizer.beta1`: 1 is not in [0, 1)", Box::new(|c, _| c.optimizer.beta1 = 1.0)),
        ("`optimizer.beta2`: NaN is not in [0, 1)", Box::new(|c, _| c.optimizer.beta2 = f64::NAN)),
        ("`optimizer.beta2`: -0.5", Box::new(|c, _| c.optimizer.beta2 = -0.5)),
        ("`optimizer.eps`: 0 must be", Box::new(|c, _| c.optimizer.eps = 0.0)),
        ("`optimizer.weight_decay`: -0.1", Box::new(|c, _| c.optimizer.weight_decay = -0.1)),
        ("`optimizer.weight_decay`: inf", Box::new(|c, _| c.optimizer.weight_decay = f64::INFINITY)),
        ("`peak_flops`: 0", Box::new(|c, _| c.peak_flops = Some(0.0))),
        ("`loss_scaler.growth_interval`", Box::new(|c, _| c.loss_scaler.growth_interval = 0)),
    ];
    for (expected, edit) in cases {
        let e = invalid(edit);
        assert!(e.starts_with("training config ") && e.contains(expected), "expected {expected:?} in {e:?}");
    }
    // A constant schedule needs no decay horizon.
    let (model, mut cfg, _, _) = tiny();
    cfg.schedule = LrSchedule::constant(1e-3);
    cfg.validate(&model).unwrap();
}

#[test]
fn bad_settings_are_refused_before_any_work() {
    let (model, mut cfg, data, val) = tiny();
    cfg.batch_size = 0; // used to crash inside the backend
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let msg = train(&model, &cfg, &data, &val, &out, Start::Scratch, &Device::default(), |_| {}).err().unwrap().to_string();
    assert!(msg.contains("`batch_size`"), "{msg}");
    assert!(!out.exists(), "nothing was written");
    // seq_len against the context of the model actually trained.
    let (model, mut cfg, data, val) = tiny();
    cfg.seq_len = 100;
    let msg = train(&model, &cfg, &data, &val, &out, Start::Scratch, &Device::default(), |_| {}).err().unwrap().to_string();
    assert!(msg.contains("`seq_len`: 100 exceeds the model's max_position_embeddings (64)"), "{msg}");
}

#[test]
fn settings_files_with_unknown_or_misspelt_keys_are_refused() {
    let (_, cfg, _, _) = tiny();
    let dir = tempfile::tempdir().unwrap();
    let apply = |text: &str| {
        let path = dir.path().join("over.toml");
        std::fs::write(&path, text).unwrap();
        phi_train::recipes::apply_toml_overrides(&cfg, &path)
    };
    let e = apply("max_step = 10\n").unwrap_err();
    assert!(e.ends_with("over.toml: unknown key `max_step`: did you mean `max_steps`?"), "{e}");
    let e = apply("[schedule]\npeek = 3e-4\n").unwrap_err();
    assert!(e.ends_with("unknown key `schedule.peek`: did you mean `schedule.peak`?"), "{e}");
    let e = apply("on_non_finite = \"ignore\"\n").unwrap_err();
    assert!(e.contains("ignore") && e.contains("stop") && e.contains("skip"), "{e}");
    let ok = apply("max_steps = 10\non_non_finite = \"skip\"\n[schedule]\npeak = 3e-4\n").unwrap();
    assert_eq!((ok.max_steps, ok.on_non_finite, ok.schedule.peak), (10, OnNonFinite::Skip, 3e-4));
    // A config without the new key (an older checkpoint's) reads as "stop".
    let mut json = serde_json::to_value(&cfg).unwrap();
    json.as_object_mut().unwrap().remove("on_non_finite");
    assert_eq!(serde_json::from_value::<TrainConfig>(json).unwrap().on_non_finite, OnNonFinite::Stop);
}
