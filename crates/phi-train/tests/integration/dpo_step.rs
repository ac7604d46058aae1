//! DPO through the shared training step (`fit` with the `Dpo` objective and a LoRA policy)
//! against TRL 1.16's DPOTrainer: the fixture `dpo-phi-tiny` (policy = phi-tiny + the
//! lora-phi-tiny adapter, reference = phi-tiny, 4 pairs, β 0.1, sigmoid, 3 plain AdamW steps at
//! lr 1e-3 on the whole set as one batch, f32).

use crate::common;

use burn::tensor::Device;
use common::fixture;
use phi_core::PhiForCausalLM;
use phi_train::preference::{Collate, Dpo, PreferenceLoss, PreferenceSettings, TokenPair};
use phi_train::checkpoint::{ADAPTER_WEIGHTS_FILE, CHECKPOINTS_DIR, METRICS_FILE};
use phi_train::{Adapter, AdamWSettings, Decay, LrSchedule, Resume, TrainConfig, Weights, fit};

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn three_dpo_steps_through_fit_match_trl() {
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("dpo-phi-tiny/reference.json")).unwrap()).unwrap();
    let a = &r["adamw"];
    let pairs: Vec<TokenPair> =
        std::fs::read_to_string(fixture("dpo-phi-tiny/pairs.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let betas = floats(&a["betas"]);
    let lr = a["lr"].as_f64().unwrap();
    let cfg = TrainConfig {
        batch_size: pairs.len(),
        seq_len: 64,
        grad_accum: 1,
        max_steps: 3,
        optimizer: AdamWSettings { beta1: betas[0], beta2: betas[1], eps: a["eps"].as_f64().unwrap(), weight_decay: 0.0, no_decay_for_bias_norm_embedding: false },
        schedule: LrSchedule { peak: lr, warmup_steps: 0, total_steps: 0, floor: lr, decay: Decay::Constant },
        clip_norm: None,
        eval_every: 0,
        eval_batches: 1,
        checkpoint_every: 0,
        keep_checkpoints: 1,
        seed: 0,
        ..TrainConfig::default()
    };
    // The reference is the base without the adapter; its log-probs are taken once, here.
    let reference = PhiForCausalLM::from_pretrained(fixture("phi-tiny"), &Device::default()).unwrap();
    let beta = r["beta"].as_f64().unwrap();
    // Validating on the training pairs gives the loss after the last step.
    let settings = PreferenceSettings { beta, loss: PreferenceLoss::Sigmoid { label_smoothing: 0.0 }, collate: Collate::new(0) };
    let mut objective = Dpo::new(&pairs, &pairs, Some(&reference), settings, 1).unwrap();
    drop(reference);
    let weights = Weights::Lora { base: fixture("phi-tiny"), adapter: Adapter::Load(fixture("lora-phi-tiny")), quantize: None };
    let out = tempfile::tempdir().unwrap();
    let run = fit(&weights, &mut objective, &cfg, out.path(), Resume::No, &Device::default(), |_| {}).unwrap();

    let want = floats(&a["losses_before_each_step_and_after_last"]);
    let mut got: Vec<f64> = run.metrics.iter().map(|m| m.loss).collect();
    got.push(run.metrics.last().unwrap().val_loss.unwrap());
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-4, "losses {got:?} vs TRL {want:?}");
    }
    // Step 1 sees the initial policy: TRL's metrics and the adapter's gradient norm.
    let first = &run.metrics[0];
    for key in ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"] {
        let g = first.extra[key];
        assert!((g - r[key].as_f64().unwrap()).abs() < 1e-5, "{key}: {g} vs {}", r[key]);
    }
    let logps_chosen = floats(&r["policy_chosen_logps"]).iter().sum::<f64>() / 4.0;
    assert!((first.extra["logps/chosen"] - logps_chosen).abs() < 1e-4);
    assert!((first.grad_norm - r["lora_grad_norm"].as_f64().unwrap()).abs() < 1e-4, "{} vs {}", first.grad_norm, r["lora_grad_norm"]);
    // metrics.jsonl carries them under TRL's names.
    let line = std::fs::read_to_string(out.path().join(METRICS_FILE)).unwrap();
    assert!(line.lines().next().unwrap().contains("\"rewards/margins\":"), "{line}");

    // The final lora_B of layer 0's q_proj (PEFT layout [out, r]), from the checkpoint the run
    // wrote as a PEFT adapter.
    let ckpt = phi_train::checkpoint::latest(&out.path().join(CHECKPOINTS_DIR)).unwrap();
    let tensors = std::fs::read(ckpt.join(ADAPTER_WEIGHTS_FILE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&tensors).unwrap();
    let b = st.tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight").unwrap();
    let got: Vec<f32> = b.data().chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let want: Vec<f64> = a["final_layers.0.self_attn.q_proj.lora_B"].as_array().unwrap().iter().flat_map(floats).collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!((*g as f64 - w).abs() < 1e-4, "lora_B {got:?} vs {want:?}");
    }
}

fn tiny_cfg(steps: usize, batch: usize, accum: usize) -> TrainConfig {
    TrainConfig {
        batch_size: batch,
        seq_len: 64,
        grad_accum: accum,
        max_steps: steps,
        optimizer: AdamWSettings { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, no_decay_for_bias_norm_embedding: false },
        schedule: LrSchedule { peak: 1e-3, warmup_steps: 1, total_steps: 6, floor: 0.0, decay: Decay::Linear },
        eval_every: 0,
        eval_batches: 1,
        checkpoint_every: 2,
        seed: 3,
        ..TrainConfig::default()
    }
}

fn fixture_pairs() -> Vec<TokenPair> {
    std::fs::read_to_string(fixture("dpo-phi-tiny/pairs.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn settings(loss: PreferenceLoss) -> PreferenceSettings {
    PreferenceSettings { beta: 0.1, loss, collate: Collate::new(0) }
}

fn param_bytes(model: &PhiForCausalLM) -> Vec<Vec<u8>> {
    struct Grab(Vec<Vec<u8>>);
    impl burn::module::ModuleVisitor for Grab {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<burn::tensor::Tensor<D>>) {
            self.0.push(p.val().into_data().as_bytes().to_vec());
        }
    }
    let mut g = Grab(Vec::new());
    burn::module::Module::visit(model, &mut g);
    g.0
}

#[test]
fn the_reference_stays_frozen_and_a_live_reference_trains_as_the_precomputed_one() {
    let pairs = fixture_pairs();
    let device = Device::default();
    let reference = PhiForCausalLM::from_pretrained(fixture("phi-tiny"), &device).unwrap();
    // A clone shares the reference's storage: an update leaking into it would show here.
    let kept = reference.clone();
    let before = param_bytes(&kept);
    let weights = Weights::Pretrained(fixture("phi-tiny"));
    let cfg = tiny_cfg(3, 2, 1);
    let mut live = Dpo::live(&pairs, &pairs, reference, settings(PreferenceLoss::Sigmoid { label_smoothing: 0.1 }), 5).unwrap();
    let a = fit(&weights, &mut live, &cfg, tempfile::tempdir().unwrap().path(), Resume::No, &device, |_| {}).unwrap();
    assert_eq!(param_bytes(&kept), before, "the reference changed during training");
    assert_ne!(param_bytes(&a.model), before, "the policy did not train");
    let mut once = Dpo::new(&pairs, &pairs, Some(&kept), settings(PreferenceLoss::Sigmoid { label_smoothing: 0.1 }), 5).unwrap();
    let b = fit(&weights, &mut once, &cfg, tempfile::tempdir().unwrap().path(), Resume::No, &device, |_| {}).unwrap();
    for (x, y) in a.metrics.iter().zip(&b.metrics) {
        assert!((x.loss - y.loss).abs() < 1e-5 && (x.extra["rewards/margins"] - y.extra["rewards/margins"]).abs() < 1e-5, "{x:?} vs {y:?}");
    }
    // The reference scores the validation pairs after training as it did before it.
    let after = once.validation_metrics(&kept).unwrap();
    assert!(after.rewards_chosen.abs() < 1e-6 && after.rewards_margins.abs() < 1e-6, "{after:?}");
}

#[test]
fn a_lora_optimizer_holds_only_adapter_state() {
    let pairs = fixture_pairs();
    let device = Device::default();
    let reference = PhiForCausalLM::from_pretrained(fixture("phi-tiny"), &device).unwrap();
    let objective = &mut Dpo::new(&pairs, &[], Some(&reference), settings(PreferenceLoss::Ipo), 1).unwrap();
    let cfg = tiny_cfg(1, 4, 1);
    let lora = phi_train::lora::LoraConfig { r: 2, lora_alpha: 4.0, lora_dropout: 0.0, target_modules: vec!["q_proj".into(), "fc1".into()], use_rslora: false };
    let weights = Weights::Lora { base: fixture("phi-tiny"), adapter: Adapter::Fresh(lora), quantize: None };
    let ad = device.clone().autodiff();
    let mut model = weights.build(&ad, 0).unwrap();
    let adapted = model.linears_mut().into_iter().filter(|(_, l)| l.lora.is_some()).count();
    let frozen = param_bytes(&model);
    let mut trainer = phi_train::Trainer::new(model, &cfg).unwrap();
    trainer.step(objective).unwrap();
    let record = trainer.optimizer().to_record();
    // AdamW keeps two moments per trainable tensor, and the trainable tensors are each adapted
    // projection's lora_A and lora_B (the base has ~30 tensors more).
    assert_eq!(record.len(), 2 * 2 * adapted, "AdamW state holds {} tensors; the adapters have {}", record.len(), 2 * adapted);
    // Only adapter tensors moved (lora_B leaves 0; lora_A keeps its init at step 1 only if its
    // gradient is 0, so compare the base's tensors: all unchanged).
    let after = param_bytes(trainer.model());
    let changed = frozen.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert!(changed >= 1 && changed <= 2 * adapted, "{changed} tensors changed");
}

#[test]
fn dpo_resumes_bitwise_and_accumulation_equals_the_large_batch() {
    let pairs = fixture_pairs();
    let device = Device::default();
    let reference = PhiForCausalLM::from_pretrained(fixture("phi-tiny"), &device).unwrap();
    let s = settings(PreferenceLoss::Sigmoid { label_smoothing: 0.0 });
    let weights = Weights::Lora { base: fixture("phi-tiny"), adapter: Adapter::Load(fixture("lora-phi-tiny")), quantize: None };
    let run = |cfg: &TrainConfig, dir: &std::path::Path, resume: Resume| {
        let mut o = Dpo::new(&pairs, &pairs[..2], Some(&reference), s, 9).unwrap();
        fit(&weights, &mut o, cfg, dir, resume, &device, |_| {}).unwrap()
    };
    // (The first half validated at its own last step, the whole run did not: losses and
    // gradients are compared, and the final validation.)
    let bits = |m: &[phi_train::StepMetrics]| m.iter().map(|m| (m.step, m.loss.to_bits(), m.grad_norm.to_bits(), m.extra["rewards/margins"].to_bits())).collect::<Vec<_>>();
    let whole = tempfile::tempdir().unwrap();
    let full = run(&tiny_cfg(6, 2, 2), whole.path(), Resume::No);
    let split = tempfile::tempdir().unwrap();
    run(&tiny_cfg(3, 2, 2), split.path(), Resume::Auto);
    let resumed = run(&tiny_cfg(6, 2, 2), split.path(), Resume::Auto);
    assert_eq!(resumed.resumed_from, Some(3));
    assert_eq!(bits(&resumed.metrics), bits(&full.metrics));
    assert_eq!(resumed.metrics[5].val_loss.map(f64::to_bits), full.metrics[5].val_loss.map(f64::to_bits));
    // The same reference run live resumes a run that precomputed it (and trains on alike).
    let mixed = tempfile::tempdir().unwrap();
    run(&tiny_cfg(3, 2, 2), mixed.path(), Resume::Auto);
    let mut live = Dpo::live(&pairs, &pairs[..2], reference.clone(), s, 9).unwrap();
    let resumed = fit(&weights, &mut live, &tiny_cfg(6, 2, 2), mixed.path(), Resume::Auto, &device, |_| {}).unwrap();
    assert_eq!(resumed.resumed_from, Some(3));
    for (x, y) in resumed.metrics.iter().zip(&full.metrics) {
        assert!((x.loss - y.loss).abs() < 1e-5, "{x:?} vs {y:?}");
    }
    // A checkpoint made against another reference is not this run's.
    let other = phi_train::lora::load(PhiForCausalLM::from_pretrained(fixture("phi-tiny"), &device).unwrap(), fixture("lora-phi-tiny")).unwrap();
    let mut o = Dpo::new(&pairs, &pairs[..2], Some(&other), s, 9).unwrap();
    let err = fit(&weights, &mut o, &tiny_cfg(7, 2, 2), split.path(), Resume::Auto, &device, |_| {}).err().expect("another reference must not resume");
    assert!(err.to_string().contains("not the same run"), "{err}");
    // Two micro-batches of 2 pairs are the step one batch of 4 gives.
    let big = run(&tiny_cfg(1, 4, 1), tempfile::tempdir().unwrap().path(), Resume::No);
    let acc = run(&tiny_cfg(1, 2, 2), tempfile::tempdir().unwrap().path(), Resume::No);
    let (b, a) = (&big.metrics[0], &acc.metrics[0]);
    assert!((b.loss - a.loss).abs() < 1e-6 && (b.grad_norm - a.grad_norm).abs() < 1e-6, "{b:?} vs {a:?}");
    assert!((b.extra["rewards/accuracies"] - a.extra["rewards/accuracies"]).abs() < 1e-9);
}

#[test]
fn reference_free_losses_train_without_a_reference() {
    let pairs = fixture_pairs();
    let device = Device::default();
    assert!(Dpo::new(&pairs, &[], None, settings(PreferenceLoss::Hinge), 0).is_err());
    for loss in [PreferenceLoss::Orpo, PreferenceLoss::Simpo { gamma: 0.5, label_smoothing: 0.0 }] {
        let mut o = Dpo::new(&pairs, &pairs, None, settings(loss), 0).unwrap();
        let before = o.validation_metrics(&PhiForCausalLM::from_pretrained(fixture("phi-tiny"), &device).unwrap()).unwrap();
        let cfg = TrainConfig { schedule: LrSchedule { peak: 3e-3, warmup_steps: 0, total_steps: 0, floor: 3e-3, decay: Decay::Constant }, ..tiny_cfg(5, 4, 1) };
        let run = fit(&Weights::Pretrained(fixture("phi-tiny")), &mut o, &cfg, tempfile::tempdir().unwrap().path(), Resume::No, &device, |_| {}).unwrap();
        let after = run.metrics.last().unwrap().val_loss.unwrap();
        assert!(after < before.loss, "{loss:?}: {} → {after}", before.loss);
        // Rewards are β times the per-token average log-probabilities.
        assert!((before.rewards_chosen - 0.1 * before.logps_chosen).abs() < 1e-6);
    }
}
