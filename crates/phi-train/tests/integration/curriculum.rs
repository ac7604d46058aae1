//! A staged curriculum in a real training run: every step logs its stage, the tokens each
//! dataset gave per stage match the plan, the learning rate anneals over the last stage, and a
//! run killed just before, at or just after a stage boundary resumes bitwise.

use crate::common;

use burn::tensor::Device;
use phi_core::PhiConfig;
use phi_data::TokenDataset;
use phi_data::curriculum::{Curriculum, Source, StageSpec};
use phi_train::checkpoint::{self, CHECKPOINTS_DIR, DATA_REPORT_FILE, LOSS_CURVE_FILE, WEIGHTS_FILE};
use phi_train::{CausalLm, Resume, StepMetrics, TrainConfig, TrainOutcome, Weights, anneal_over_last_stage, fit};

/// Datasets told apart by their ids: "web" counts in 0..32, "books" in 32..64.
fn sources() -> Vec<Source> {
    let stream = |n: u32, lo: u32| -> Vec<u32> { (0..n).map(|i| lo + if i % 5 == 0 { (i * 2654435761u32) >> 27 } else { i % 32 }).collect() };
    vec![Source::new("web", TokenDataset::from_tokens(stream(4000, 0))), Source::new("books", TokenDataset::from_tokens(stream(1200, 32))).max_epochs(3.0)]
}

fn setup() -> (PhiConfig, TrainConfig, Curriculum) {
    // The guard tests' tiny model and config, run longer, with accumulation and validation.
    let (model, base, _, _) = common::tiny();
    let mut cfg = TrainConfig { grad_accum: 2, max_steps: 20, eval_every: 5, keep_checkpoints: 30, seed: 4, ..base };
    cfg.schedule.warmup_steps = 3;
    cfg.schedule.total_steps = 20;
    // 10 steps × 4 windows × 16 tokens = 640 tokens of a 3:1 mix, then books-heavy.
    let stages = vec![StageSpec::until_tokens("broad", 640, [("web", 0.75), ("books", 0.25)]), StageSpec::rest("anneal", [("web", 0.25), ("books", 0.75)])];
    let c = Curriculum::new(sources(), stages, cfg.seq_len, cfg.batch_size * cfg.grad_accum, cfg.max_steps).unwrap();
    anneal_over_last_stage(&mut cfg, &c);
    (model, cfg, c)
}

/// Causal-LM pre-training of `model` from scratch on windows drawn by `curriculum`: [`fit`] with
/// [`CausalLm::curriculum`], as `phi train --curriculum` runs it.
#[allow(clippy::too_many_arguments)]
fn fit_curriculum(
    model: &PhiConfig,
    cfg: &TrainConfig,
    curriculum: &Curriculum,
    val: &TokenDataset,
    out: &std::path::Path,
    resume: Resume,
    device: &Device,
    on_step: impl FnMut(&StepMetrics),
) -> phi_train::Result<TrainOutcome> {
    let mut objective = CausalLm::curriculum(curriculum, val, cfg.seed);
    fit(&Weights::Scratch(model.clone()), &mut objective, cfg, out, resume, device, on_step)
}

fn bits(m: &[StepMetrics]) -> Vec<(usize, u64, u64, Option<u64>, Option<String>)> {
    m.iter().map(|m| (m.step, m.loss.to_bits(), m.grad_norm.to_bits(), m.val_loss.map(f64::to_bits), m.stage.clone())).collect()
}

#[test]
fn stages_are_logged_planned_annealed_and_resumed_bitwise_across_the_boundary() {
    let (model, cfg, c) = setup();
    let val = TokenDataset::from_tokens((0..400).map(|i| i % 64).collect());
    let device = Device::default();
    assert_eq!(c.stage_bounds(), vec![(0, 10), (10, 20)]);

    let full_dir = tempfile::tempdir().unwrap();
    let full = fit_curriculum(&model, &cfg, &c, &val, full_dir.path(), Resume::No, &device, |_| {}).unwrap();
    let stages: Vec<&str> = full.metrics.iter().map(|m| m.stage.as_deref().unwrap()).collect();
    assert_eq!(stages, [["broad"; 10], ["anneal"; 10]].concat());
    // Warmup, the peak through the first stage, then linear to 0 over the last.
    let lr: Vec<f64> = full.metrics.iter().map(|m| m.lr).collect();
    assert!(lr[3..=10].iter().all(|&l| l == 3e-3), "{lr:?}");
    assert!(lr[10..].windows(2).all(|w| w[1] < w[0]) && lr[19] < 3e-4, "{lr:?}");
    // Tokens per dataset per stage: the plan, within 1% (here: exactly).
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(full_dir.path().join(DATA_REPORT_FILE)).unwrap()).unwrap();
    let rows = report["tokens"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    for r in rows {
        let (tokens, target) = (r["tokens"].as_f64().unwrap(), r["target"].as_f64().unwrap());
        assert!((tokens - target).abs() <= 0.01 * target, "{r}");
    }
    assert_eq!(rows[0]["tokens"], 480);
    // The loss curve is the `phi` tool's to draw (from the returned metrics), not `fit`'s.
    assert!(!full_dir.path().join(LOSS_CURVE_FILE).exists());

    // Killed after the checkpoint of step 9, 10 (the boundary) or 11, then resumed.
    for kill_after in [9usize, 10, 11] {
        let dir = tempfile::tempdir().unwrap();
        let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fit_curriculum(&model, &cfg, &c, &val, dir.path(), Resume::No, &device, |m| {
                if m.step == kill_after + 1 {
                    panic!("killed");
                }
            })
        }));
        assert!(killed.is_err());
        assert_eq!(checkpoint::latest(&dir.path().join(CHECKPOINTS_DIR)).unwrap(), checkpoint::checkpoint_dir(&dir.path().join(CHECKPOINTS_DIR), kill_after));
        let resumed = fit_curriculum(&model, &cfg, &c, &val, dir.path(), Resume::Auto, &device, |_| {}).unwrap();
        assert_eq!(resumed.resumed_from, Some(kill_after));
        assert_eq!(bits(&resumed.metrics), bits(&full.metrics), "killed after step {kill_after}");
        let w = |d: &std::path::Path| std::fs::read(checkpoint::checkpoint_dir(&d.join(CHECKPOINTS_DIR), 20).join(WEIGHTS_FILE)).unwrap();
        assert!(w(dir.path()) == w(full_dir.path()), "final weights, killed after step {kill_after}");
        assert_eq!(std::fs::read_to_string(dir.path().join(DATA_REPORT_FILE)).unwrap(), std::fs::read_to_string(full_dir.path().join(DATA_REPORT_FILE)).unwrap());
    }

    // Another curriculum (other weights) is another run: its checkpoints are not resumed from.
    let other = Curriculum::new(sources(), vec![StageSpec::until_tokens("broad", 640, [("web", 0.5), ("books", 0.5)]), StageSpec::rest("anneal", [("books", 1.0)])], 16, 4, 20).unwrap();
    let e = fit_curriculum(&model, &cfg, &other, &val, full_dir.path(), Resume::Auto, &device, |_| {}).err().unwrap().to_string();
    assert!(e.contains("curriculum"), "{e}");
    // A curriculum planned for another batch is refused before training.
    let bad = TrainConfig { grad_accum: 1, ..cfg.clone() };
    let e = fit_curriculum(&model, &bad, &c, &val, tempfile::tempdir().unwrap().path(), Resume::No, &device, |_| {}).err().unwrap().to_string();
    assert!(e.contains("planned for 4 windows per step"), "{e}");
}

#[test]
fn a_data_report_json_that_is_not_ours_is_not_overwritten() {
    let (model, cfg, c) = setup();
    let cfg = TrainConfig { eval_every: 0, checkpoint_every: 0, ..cfg };
    let val = TokenDataset::from_tokens((0..400).map(|i| i % 64).collect());
    let dir = tempfile::tempdir().unwrap();
    let theirs = r#"{"experiment": "mine", "tokens": 3}"#;
    std::fs::write(dir.path().join(DATA_REPORT_FILE), theirs).unwrap();
    let out = fit_curriculum(&model, &cfg, &c, &val, dir.path(), Resume::No, &Device::default(), |_| {}).unwrap();
    assert_eq!(std::fs::read_to_string(dir.path().join(DATA_REPORT_FILE)).unwrap(), theirs);
    let w = out.warnings.join("\n");
    assert!(w.contains(DATA_REPORT_FILE) && w.contains("not a data report of phi's"), "{w}");
    // Ours is rewritten by the next run, without a warning.
    std::fs::remove_file(dir.path().join(DATA_REPORT_FILE)).unwrap();
    fit_curriculum(&model, &cfg, &c, &val, dir.path(), Resume::No, &Device::default(), |_| {}).unwrap();
    let again = fit_curriculum(&model, &cfg, &c, &val, dir.path(), Resume::No, &Device::default(), |_| {}).unwrap();
    assert!(again.warnings.is_empty(), "{:?}", again.warnings);
}
