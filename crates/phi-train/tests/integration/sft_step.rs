//! SFT through the shared training step: accumulation gives the large-batch step (with masked
//! tokens, where micro-batches hold different counts), a stopped and resumed run reproduces the
//! uninterrupted one bitwise — full-parameter and LoRA — and half precision trains.

use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use phi_core::{PhiConfig, PhiForCausalLM};
use phi_train::lora::LoraConfig;
use phi_train::sft_objective::Sft;
use phi_train::checkpoint::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, CHECKPOINTS_DIR, WEIGHTS_FILE};
use phi_train::{Adapter, AdamWSettings, Decay, LrSchedule, Precision, Resume, TrainConfig, Weights, fit};

use crate::common::{sft_examples as examples, take_turn};

/// A small random base model saved as a HF folder (phi or phi3 family).
fn base(dir: &Path, phi3: bool) -> PhiConfig {
    let mut c = if phi3 { PhiConfig::phi3_family(32, 2, 4, 2, 64, 96) } else { PhiConfig::phi_family(32, 2, 4, 96, 0.5) };
    c.max_position_embeddings = 64;
    PhiForCausalLM::init(c.clone(), &Device::default(), 5).unwrap().save_pretrained(dir).unwrap();
    c
}


fn cfg(batch_size: usize, grad_accum: usize, steps: usize) -> TrainConfig {
    TrainConfig {
        batch_size,
        seq_len: 32,
        grad_accum,
        max_steps: steps,
        optimizer: AdamWSettings { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, no_decay_for_bias_norm_embedding: false },
        // Decays over 8 steps whatever max_steps is: a run stopped early is the start of the long one.
        schedule: LrSchedule { peak: 2e-3, warmup_steps: 1, total_steps: 8, floor: 2e-4, decay: Decay::Cosine },
        clip_norm: Some(0.5),
        eval_every: 2,
        eval_batches: 4,
        checkpoint_every: 3,
        seed: 9,
        ..TrainConfig::default()
    }
}

fn lora() -> LoraConfig {
    LoraConfig { r: 4, lora_alpha: 8.0, lora_dropout: 0.0, target_modules: ["q_proj", "v_proj", "fc1", "qkv_proj", "down_proj"].map(String::from).to_vec(), use_rslora: false }
}

/// Every parameter value of `model`, in visiting order.
fn values(model: &PhiForCausalLM) -> Vec<f32> {
    struct All(Vec<f32>);
    impl burn::module::ModuleVisitor for All {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<burn::tensor::Tensor<D>>) {
            self.0.extend(p.val().dequantize().into_data().convert::<f32>().iter::<f32>());
        }
    }
    let mut all = All(Vec::new());
    model.visit(&mut all);
    all.0
}

#[test]
fn accumulated_micro_batches_give_the_large_batch_step() {
    let _turn = take_turn();
    let dir = tempfile::tempdir().unwrap();
    base(dir.path(), false);
    let (train, val) = (examples(24, 1), examples(4, 2));
    for weights in [Weights::Pretrained(dir.path().into()), Weights::Lora { base: dir.path().into(), adapter: Adapter::Fresh(lora()), quantize: None }] {
        let run = |batch, accum| {
            let out = tempfile::tempdir().unwrap();
            let mut objective = Sft::new(&train, &val, 0, 9).unwrap();
            fit(&weights, &mut objective, &cfg(batch, accum, 4), out.path(), Resume::No, &Device::default(), |_| {}).unwrap()
        };
        let large = run(8, 1);
        let accumulated = run(2, 4);
        // The micro-batches hold different numbers of learned tokens: a plain mean of their
        // means would differ from the large batch's loss.
        for (a, b) in large.metrics.iter().zip(&accumulated.metrics) {
            assert!((a.loss - b.loss).abs() < 1e-5 * a.loss.abs().max(1.0), "step {}: loss {} vs {}", a.step, a.loss, b.loss);
            assert!((a.grad_norm - b.grad_norm).abs() < 1e-4 * a.grad_norm.max(1.0), "step {}: grad norm {} vs {}", a.step, a.grad_norm, b.grad_norm);
        }
        let (x, y) = (values(&large.model), values(&accumulated.model));
        let worst = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 2e-5, "weights differ by {worst}");
        // And the run learned something: the loss went down.
        let (first, last) = (large.metrics[0].loss, large.metrics.last().unwrap().loss);
        assert!(last < first, "{first} → {last}");
    }
}

#[test]
fn unequal_micro_batches_are_weighted_by_their_learned_tokens() {
    // Two micro-batches, one with 1 learned token and one with many: the step's loss is the
    // mean over all learned tokens, which the single large batch computes directly.
    let _turn = take_turn();
    let dir = tempfile::tempdir().unwrap();
    base(dir.path(), true);
    let mut ex = examples(2, 3);
    ex[0].learn = ex[0].ids.iter().enumerate().map(|(t, _)| t + 1 == ex[0].ids.len()).collect();
    let weights = Weights::Pretrained(dir.path().into());
    let run = |batch, accum| {
        let out = tempfile::tempdir().unwrap();
        let mut objective = Sft::new(&ex, &[], 0, 1).unwrap();
        let mut c = cfg(batch, accum, 1);
        c.clip_norm = None;
        fit(&weights, &mut objective, &c, out.path(), Resume::No, &Device::default(), |_| {}).unwrap()
    };
    let (large, accumulated) = (run(2, 1), run(1, 2));
    let (a, b) = (large.metrics[0].loss, accumulated.metrics[0].loss);
    assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    let worst = values(&large.model).iter().zip(values(&accumulated.model)).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-6, "weights differ by {worst}");
}

#[test]
fn sft_stopped_and_resumed_is_bitwise_the_uninterrupted_run() {
    let _turn = take_turn();
    let dir = tempfile::tempdir().unwrap();
    base(dir.path(), true);
    let (train, val) = (examples(10, 4), examples(3, 5));
    let lora_weights = Weights::Lora { base: dir.path().into(), adapter: Adapter::Fresh(lora()), quantize: None };
    for weights in [Weights::Pretrained(dir.path().into()), lora_weights] {
        let full = {
            let out = tempfile::tempdir().unwrap();
            let mut objective = Sft::new(&train, &val, 0, 3).unwrap();
            fit(&weights, &mut objective, &cfg(3, 2, 8), out.path(), Resume::No, &Device::default(), |_| {}).unwrap()
        };
        let out = tempfile::tempdir().unwrap();
        // Stop after step 6 (checkpoints at 3 and 6; the data cycles through epochs by then).
        let mut objective = Sft::new(&train, &val, 0, 3).unwrap();
        fit(&weights, &mut objective, &cfg(3, 2, 6), out.path(), Resume::No, &Device::default(), |_| {}).unwrap();
        let mut objective = Sft::new(&train, &val, 0, 3).unwrap();
        let resumed = fit(&weights, &mut objective, &cfg(3, 2, 8), out.path(), Resume::Auto, &Device::default(), |_| {}).unwrap();
        assert_eq!(resumed.resumed_from, Some(6));
        let (a, b) = (values(&full.model), values(&resumed.model));
        let differ = a.iter().zip(&b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
        assert!(a.len() == b.len() && differ == 0, "{weights:?}: {differ} of {} values differ", a.len());
        let losses = |o: &phi_train::TrainOutcome| o.metrics.iter().map(|m| (m.step, m.loss.to_bits(), m.val_loss.map(f64::to_bits))).collect::<Vec<_>>();
        assert_eq!(losses(&full), losses(&resumed));
        if matches!(weights, Weights::Lora { .. }) {
            // A LoRA checkpoint holds the adapter (PEFT format), not the base.
            let ckpt = phi_train::checkpoint::latest(&out.path().join(CHECKPOINTS_DIR)).unwrap();
            assert!(ckpt.join(ADAPTER_WEIGHTS_FILE).is_file() && ckpt.join(ADAPTER_CONFIG_FILE).is_file());
            assert!(!ckpt.join(WEIGHTS_FILE).exists());
            // and it loads onto the base as a PEFT adapter.
            let reloaded = phi_train::lora::load(PhiForCausalLM::from_pretrained(dir.path(), &Device::default()).unwrap(), &ckpt).unwrap();
            assert!(values(&reloaded) == values(&resumed.model), "the checkpoint's adapter is the trained one");
        }
    }
}

#[test]
fn resuming_with_another_adapter_config_or_other_examples_is_refused() {
    let _turn = take_turn();
    let dir = tempfile::tempdir().unwrap();
    base(dir.path(), false);
    let (train, val) = (examples(6, 1), examples(2, 2));
    let out = tempfile::tempdir().unwrap();
    let weights = Weights::Lora { base: dir.path().into(), adapter: Adapter::Fresh(lora()), quantize: None };
    let mut objective = Sft::new(&train, &val, 0, 3).unwrap();
    fit(&weights, &mut objective, &cfg(2, 1, 3), out.path(), Resume::No, &Device::default(), |_| {}).unwrap();
    let other = Weights::Lora { base: dir.path().into(), adapter: Adapter::Fresh(LoraConfig { r: 2, ..lora() }), quantize: None };
    let mut objective = Sft::new(&train, &val, 0, 3).unwrap();
    let e = fit(&other, &mut objective, &cfg(2, 1, 5), out.path(), Resume::Auto, &Device::default(), |_| {}).err().expect("another adapter config").to_string();
    assert!(e.contains("model.phi_lora.r: 4 in the checkpoint, 2 now"), "{e}");
    let fewer = examples(5, 1);
    let mut objective = Sft::new(&fewer, &val, 0, 3).unwrap();
    let e = fit(&weights, &mut objective, &cfg(2, 1, 5), out.path(), Resume::Auto, &Device::default(), |_| {}).err().expect("other data").to_string();
    assert!(e.contains("data: sft 6 train"), "{e}");
}

#[test]
fn sft_trains_in_bf16_with_f32_masters() {
    let _turn = take_turn();
    let dir = tempfile::tempdir().unwrap();
    base(dir.path(), true);
    let (train, val) = (examples(16, 6), examples(4, 7));
    let mut c = cfg(4, 2, 6);
    c.precision = Precision::Bf16;
    let out = tempfile::tempdir().unwrap();
    let mut objective = Sft::new(&train, &val, 0, 3).unwrap();
    let weights = Weights::Lora { base: dir.path().into(), adapter: Adapter::Fresh(lora()), quantize: None };
    let r = fit(&weights, &mut objective, &c, out.path(), Resume::No, &Device::default(), |_| {}).unwrap();
    let losses: Vec<f64> = r.metrics.iter().map(|m| m.loss).collect();
    assert!(losses.iter().all(|l| l.is_finite()) && losses.last() < losses.first(), "{losses:?}");
    assert!(values(&r.model).iter().all(|v| v.is_finite()));
}
