//! The training loop refuses to go on with NaNs and refuses settings it cannot run: a diverged
//! run stops at the step that diverged and never checkpoints non-finite weights, and every
//! impossible setting is an error naming its key before any work is done.

use crate::common;

use std::path::Path;

use burn::tensor::Device;
use common::{fit_lm, tiny};
use phi_core::PhiConfig;
use phi_train::checkpoint::{self, CHECKPOINTS_DIR, METRICS_FILE, WEIGHTS_FILE};
use phi_train::{LrSchedule, OnNonFinite, Resume, StepMetrics, TrainConfig, TrainError};

/// Every value of every checkpoint under `out` is finite (and how many checkpoints there are).
fn checkpoints_are_finite(out: &Path) -> usize {
    let all = checkpoint::list(&out.join(CHECKPOINTS_DIR));
    for (step, dir) in &all {
        let bytes = std::fs::read(dir.join(WEIGHTS_FILE)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, t) in st.tensors() {
            let finite = t.data().chunks_exact(4).all(|c| f32::from_le_bytes(c.try_into().unwrap()).is_finite());
            assert!(finite, "checkpoint of step {step}: `{name}` holds NaN/inf");
        }
    }
    all.len()
}

fn metrics(out: &Path) -> Vec<StepMetrics> {
    std::fs::read_to_string(out.join(METRICS_FILE)).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn a_diverging_run_stops_at_the_first_nan_loss_and_checkpoints_no_nan() {
    let (model, mut cfg, data, val) = tiny();
    // The report's case: peak 1e30. Step 1's update is finite but huge (≈1e30), so step 2's
    // forward pass overflows.
    cfg.schedule.peak = 1e30;
    cfg.schedule.floor = 1e29;
    let dir = tempfile::tempdir().unwrap();
    let err = fit_lm(&model, &cfg, &data, &val, dir.path(), Resume::No, &Device::default()).map(|_| ()).expect_err("the run must stop");
    assert!(matches!(&err, TrainError::NonFinite { step: 2, what } if what.starts_with("the loss is")), "{err:?}");
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
    let err = fit_lm(&model, &cfg, &data, &val, dir.path(), Resume::No, &Device::default()).map(|_| ()).expect_err("the run must stop");
    assert!(matches!(err, TrainError::NonFinite { step: 1, .. }), "{err:?}");
    let msg = err.to_string();
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
    let out = fit_lm(&model, &cfg, &data, &val, dir.path(), Resume::No, &Device::default()).unwrap();
    let skipped: Vec<usize> = out.metrics.iter().filter(|m| m.skipped).map(|m| m.step).collect();
    assert_eq!(skipped, [2, 3, 4, 5, 6]);
    assert!(out.metrics[1].loss.is_nan());
    let logged = metrics(dir.path());
    assert_eq!(logged.len(), 6, "skipped steps stay in metrics.jsonl (null losses read back as NaN)");
    assert!(logged[1].skipped && logged[1].loss.is_nan() && !logged[0].skipped);
    let text = std::fs::read_to_string(dir.path().join(METRICS_FILE)).unwrap();
    assert!(text.lines().nth(1).unwrap().contains("\"skipped\":true"), "{text}");
    // Skipped updates leave the weights as step 1 made them: still finite, so checkpointable.
    assert_eq!(checkpoints_are_finite(dir.path()), 1);

    // A run that is NaN from step 2 on for longer than the bound stops after the bound.
    let dir = tempfile::tempdir().unwrap();
    let long = TrainConfig { max_steps: 40, schedule: LrSchedule { total_steps: 40, ..cfg.schedule }, ..cfg };
    let msg = fit_lm(&model, &long, &data, &val, dir.path(), Resume::No, &Device::default()).map(|_| ()).expect_err("must stop").to_string();
    let last = 2 + phi_train::MAX_CONSECUTIVE_SKIPS;
    assert!(msg.starts_with(&format!("step {last}: ")) && msg.contains(&format!("{} non-finite steps in a row", phi_train::MAX_CONSECUTIVE_SKIPS + 1)), "{msg}");
    assert_eq!(metrics(dir.path()).len(), last - 1);
}

#[test]
fn a_healthy_run_is_untouched_by_the_guards() {
    let (model, cfg, data, val) = tiny();
    let dir = tempfile::tempdir().unwrap();
    let out = fit_lm(&model, &cfg, &data, &val, dir.path(), Resume::No, &Device::default()).unwrap();
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
        fit_lm(&model, &cfg, &data, &val, dir.path(), Resume::No, &Device::default()).unwrap().metrics
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
fn the_default_config_is_valid_for_every_phi_model_and_spans_its_run() {
    let d = TrainConfig::default();
    for preset in ["phi-1", "phi-1.5", "phi-2", "phi-3-mini"] {
        d.validate(&PhiConfig::preset(preset).unwrap()).unwrap_or_else(|e| panic!("{preset}: {e}"));
    }
    // litgpt's global batch of 64 sequences, clipped at 1.0; the schedule decays over the run.
    assert_eq!((d.batch_size * d.grad_accum, d.clip_norm, d.peak_flops, d.seed), (64, Some(1.0), None, 42));
    assert_eq!((d.schedule.total_steps, d.checkpoint_every), (d.max_steps, d.max_steps));
    assert!(d.schedule.lr(d.max_steps - 1) < d.schedule.lr(d.schedule.warmup_steps) && d.schedule.lr(d.max_steps) == d.schedule.floor);
}

#[test]
fn bad_settings_are_refused_before_any_work() {
    let (model, mut cfg, data, val) = tiny();
    cfg.batch_size = 0; // used to crash inside the backend
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let msg = fit_lm(&model, &cfg, &data, &val, &out, Resume::No, &Device::default()).err().unwrap().to_string();
    assert!(msg.contains("`batch_size`"), "{msg}");
    assert!(!out.exists(), "nothing was written");
    // seq_len against the context of the model actually trained.
    let (model, mut cfg, data, val) = tiny();
    cfg.seq_len = 100;
    let msg = fit_lm(&model, &cfg, &data, &val, &out, Resume::No, &Device::default()).err().unwrap().to_string();
    assert!(msg.contains("`seq_len`: 100 exceeds the model's max_position_embeddings (64)"), "{msg}");
}

// (Settings files with unknown or misspelt keys: the `phi` crate's tests/integration/recipes.rs, where the
// TOML files are read.)

/// A caller tells the kinds of trouble apart by matching, not by reading the message: a setting
/// (by its key), data that does not fit the model, a checkpoint, the output folder, memory.
#[test]
fn errors_are_kinds_a_caller_can_match() {
    // A config key, as the config spells it, and the value given; the message is unchanged.
    let (model, mut cfg, data, val) = tiny();
    cfg.schedule.total_steps = cfg.schedule.warmup_steps;
    let e = cfg.validate(&model).expect_err("must be refused");
    assert!(matches!(&e, TrainError::Config { key, value, .. } if key == "schedule.total_steps" && value == "0"), "{e:?}");
    assert!(e.to_string().starts_with("training config `schedule.total_steps`: 0 must exceed schedule.warmup_steps (0)"), "{e}");
    let e = phi_train::TrainConfig { zero: 2, ..cfg.clone() }.validate(&model).expect_err("no ZeRO stage 2");
    assert!(matches!(&e, TrainError::Config { key, value, .. } if key == "zero" && value == "2"), "{e:?}");
    cfg.schedule = LrSchedule { warmup_steps: 2, total_steps: 6, decay: phi_train::Decay::Wsd { decay_start: 1 }, ..cfg.schedule };
    let e = cfg.validate(&model).expect_err("decay_start before the warmup ends");
    assert!(matches!(&e, TrainError::Config { key, value, .. } if key == "schedule.decay.wsd.decay_start" && value == "1"), "{e:?}");
    // An objective's setting, by its key in the objective's settings.
    use phi_train::preference::{Dpo, PreferenceSettings};
    let e = PreferenceSettings { beta: -1.0, ..PreferenceSettings::dpo(0) }.validate().expect_err("beta must be positive");
    assert!(matches!(&e, TrainError::Config { key, value, .. } if key == "beta" && value == "-1"), "{e:?}");
    assert_eq!(e.to_string(), "beta -1 must be a positive number");

    // Token ids past the model's vocabulary: the data's fault, refused before anything is written.
    let (mut small, cfg, _, _) = tiny();
    small.vocab_size = 32;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let e = fit_lm(&small, &cfg, &data, &val, &out, Resume::No, &Device::default()).map(|_| ()).expect_err("ids up to 63");
    assert!(matches!(&e, TrainError::Data(m) if m.contains("token ids up to 63") && m.contains("vocab_size is 32")), "{e:?}");
    assert!(!out.exists());
    let e = phi_train::sft_objective::Sft::new(&[], &[], 0, 0).err().expect("no examples");
    assert!(matches!(e, TrainError::Data(_)), "{e:?}");
    let e = Dpo::new(&[], &[], None, PreferenceSettings::dpo(0), 0).err().expect("no pairs");
    assert!(matches!(e, TrainError::Data(_)), "{e:?}");

    // A checkpoint whose trainer state is not JSON, named by its file.
    let ckpt = dir.path().join("ckpt");
    std::fs::create_dir_all(&ckpt).unwrap();
    std::fs::write(ckpt.join(checkpoint::STATE_FILE), "{ not json").unwrap();
    let e = checkpoint::read_state(&ckpt).err().expect("not JSON");
    assert!(matches!(&e, TrainError::Checkpoint { path, .. } if *path == ckpt.join(checkpoint::STATE_FILE)), "{e:?}");

    // An output folder whose lock is something of the user's.
    let busy = dir.path().join("busy");
    std::fs::create_dir_all(busy.join(phi_train::run_dir::LOCK_FILE)).unwrap();
    let e = phi_train::run_dir::RunLock::acquire(&busy).err().expect("not our lock");
    assert!(matches!(&e, TrainError::OutputFolder { path, .. } if *path == busy.join(phi_train::run_dir::LOCK_FILE)), "{e:?}");

    // A micro-batch no machine holds: refused with the estimate, as a memory error.
    if phi_train::memory::host_available().is_some() {
        let (model, cfg, _, _) = tiny();
        let huge = TrainConfig { batch_size: 1 << 40, ..cfg };
        let run = phi_train::memory::RunShape { model: &model, trainable: model.num_parameters(), adapters: 0, rows_per_item: 1 };
        let e = phi_train::memory::check_device(run, &huge, &Device::default()).expect_err("too big");
        assert!(matches!(&e, TrainError::Memory { needed, available, message } if needed > available && message.contains("lower batch_size")), "{e:?}");
    }
}

#[test]
fn a_config_without_on_non_finite_reads_as_stop() {
    let (_, cfg, _, _) = tiny();
    // A config without the key (an older checkpoint's) reads as "stop"; the key reads as written.
    let mut json = serde_json::to_value(TrainConfig { on_non_finite: OnNonFinite::Skip, ..cfg.clone() }).unwrap();
    assert_eq!(serde_json::from_value::<TrainConfig>(json.clone()).unwrap().on_non_finite, OnNonFinite::Skip);
    json.as_object_mut().unwrap().remove("on_non_finite");
    assert_eq!(serde_json::from_value::<TrainConfig>(json).unwrap().on_non_finite, OnNonFinite::Stop);
}

/// A library user who installs no `tracing` subscriber sees nothing from a run: `fit` writes no
/// byte to stdout or stderr — not for its steps, its validation, its checkpoints, a resume, nor
/// a warning (the run below has one). What it has to say is in its return value.
#[test]
fn fit_writes_nothing_to_stdout_or_stderr() {
    // libtest captures `print!` in a test, which would hide a library's prints: this binary runs
    // the run below again in a child process, uncaptured, and reads what reached the terminal.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "train_guards::a_run_between_markers", "--ignored", "--nocapture", "--test-threads=1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let between = stdout.split_once("<fit>").and_then(|(_, rest)| rest.split_once("</fit>")).map(|(inside, _)| inside);
    assert_eq!(between, Some(""), "what fit printed on stdout: {stdout}");
    assert_eq!(stderr, "", "what fit printed on stderr");
}

#[test]
#[ignore = "run uncaptured in a child process by fit_writes_nothing_to_stdout_or_stderr"]
fn a_run_between_markers() {
    use std::io::Write;
    let (model, cfg, data, val) = tiny();
    let cfg = TrainConfig { max_steps: 3, eval_every: 1, checkpoint_every: 1, keep_checkpoints: 1, ..cfg };
    let dir = tempfile::tempdir().unwrap();
    let device = Device::default();
    let first = fit_lm(&model, &TrainConfig { max_steps: 2, ..cfg.clone() }, &data, &val, dir.path(), Resume::No, &device).unwrap();
    assert!(first.warnings.is_empty(), "{:?}", first.warnings);
    // A file of the user's in the checkpoint the resumed run prunes: a warning of the run.
    std::fs::write(checkpoint::checkpoint_dir(&dir.path().join(CHECKPOINTS_DIR), 2).join("my-notes.txt"), b"mine").unwrap();
    print!("<fit>");
    std::io::stdout().flush().unwrap();
    let out = fit_lm(&model, &cfg, &data, &val, dir.path(), Resume::Auto, &device).unwrap();
    print!("</fit>");
    std::io::stdout().flush().unwrap();
    assert_eq!(out.resumed_from, Some(2));
    assert!(out.metrics.iter().any(|m| m.val_loss.is_some()), "validation ran");
    assert!(out.warnings.iter().any(|w| w.contains("my-notes.txt")), "{:?}", out.warnings);
}
