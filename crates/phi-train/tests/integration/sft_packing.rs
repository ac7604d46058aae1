//! SFT packing: a packed batch's loss and gradients are those of its examples trained one by
//! one (phi with partial rotary and qk-layernorm, phi3 with GQA, phi3 with LongRoPE where each
//! example's own length picks the factors), and a packed run resumes bitwise.

use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Gradients, Int, Tensor, TensorData};
use phi_core::{LongRope, PhiConfig, PhiForCausalLM};
use phi_data::sft::SftExample;
use phi_train::objective::{Forward, Objective};
use phi_train::sft_objective::Sft;
use phi_train::{AdamWSettings, Decay, LrSchedule, Resume, TrainConfig, Weights, fit, masked_causal_lm_loss};

use crate::common::{sft_examples as examples, take_turn};

fn configs() -> Vec<(&'static str, PhiConfig)> {
    let mut phi = PhiConfig { qk_layernorm: true, ..PhiConfig::phi_family(32, 2, 4, 96, 0.5) };
    let mut gqa = PhiConfig::phi3_family(32, 2, 4, 2, 64, 96);
    let mut long = PhiConfig::phi3_family(32, 2, 4, 4, 64, 96);
    // Examples longer than 8 tokens rotate with the long factors, shorter ones with the short.
    long.longrope = Some(LongRope {
        short_factor: vec![1.0, 1.3, 1.9, 2.4],
        long_factor: vec![1.5, 2.5, 4.0, 6.5],
        original_max_position_embeddings: 8,
        attention_factor: 1.2,
    });
    for c in [&mut phi, &mut gqa, &mut long] {
        c.max_position_embeddings = 64;
    }
    vec![("phi", phi), ("phi3 gqa", gqa), ("phi3 longrope", long)]
}


/// Every parameter's gradient, in visiting order.
fn gradients(model: &PhiForCausalLM, grads: &Gradients) -> Vec<f32> {
    struct All<'a>(Vec<f32>, &'a Gradients);
    impl ModuleVisitor for All<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let g = p.val().grad(self.1).expect("every parameter has a gradient");
            self.0.extend(g.into_data().convert::<f32>().iter::<f32>());
        }
    }
    let mut all = All(Vec::new(), grads);
    model.visit(&mut all);
    all.0
}

/// The mean response-token loss over `examples`, each run alone (a batch of one, no padding).
fn alone(model: &PhiForCausalLM, examples: &[&SftExample]) -> Tensor<1> {
    let total: f32 = examples.iter().map(|e| e.learn.iter().skip(1).filter(|&&l| l).count() as f32).sum();
    let device = model.device();
    let mut sum: Option<Tensor<1>> = None;
    for e in examples {
        let (ids, mask, len) = phi_data::sft::batch(&[e], 0);
        let learned: f32 = mask.iter().sum();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids.into_iter().map(i64::from).collect::<Vec<_>>(), [1, len]), &device);
        let mask = Tensor::<2>::from_data(TensorData::new(mask, [1, len - 1]), &device);
        let term = masked_causal_lm_loss(model.forward(ids.clone()), ids, mask) * (learned / total);
        sum = Some(match sum {
            Some(s) => s + term,
            None => term,
        });
    }
    sum.expect("at least one example")
}

#[test]
fn a_packed_batch_has_the_loss_and_gradients_of_its_examples_alone() {
    let _turn = take_turn();
    let device = Device::default().autodiff();
    let train = examples(23, 4);
    for (name, config) in configs() {
        let model = PhiForCausalLM::init(config, &device, 3).unwrap();
        // Rows of 32: 23 examples of 5–19 tokens, several to a row.
        let mut objective = Sft::packed(&train, &[], 0, 5, 32).unwrap();
        assert!(objective.rows() < train.len() / 2, "{name}: {} rows", objective.rows());
        let batch = objective.next_batch(3);
        assert!(batch.iter().all(|row| row.len() >= 2), "{name}: rows of several examples");
        let examples: Vec<&SftExample> = batch.iter().flatten().copied().collect();
        let packed = objective.loss(&Forward::new(&model), &batch).loss;
        let reference = alone(&model, &examples);
        let (a, b) = (packed.clone().into_scalar::<f32>(), reference.clone().into_scalar::<f32>());
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{name}: packed loss {a}, alone {b}");
        let (ga, gb) = (gradients(&model, &packed.backward()), gradients(&model, &reference.backward()));
        assert_eq!(ga.len(), gb.len());
        let worst = ga.iter().zip(&gb).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        let scale = gb.iter().map(|g| g.abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-5 * scale.max(1.0), "{name}: gradients differ by {worst} (largest {scale})");
    }
}

#[test]
fn packing_is_refused_for_an_example_longer_than_a_row() {
    let train = examples(5, 1);
    let longest = train.iter().map(|e| e.ids.len()).max().unwrap();
    let e = Sft::packed(&train, &[], 0, 1, longest - 1).err().expect("too long").to_string();
    assert!(e.contains(&format!("has {longest} tokens, more than the packing length {}", longest - 1)), "{e}");
}

fn cfg(steps: usize) -> TrainConfig {
    TrainConfig {
        batch_size: 2,
        seq_len: 32,
        grad_accum: 2,
        max_steps: steps,
        optimizer: AdamWSettings { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, no_decay_for_bias_norm_embedding: false },
        schedule: LrSchedule { peak: 2e-3, warmup_steps: 1, total_steps: 8, floor: 2e-4, decay: Decay::Cosine },
        clip_norm: Some(0.5),
        eval_every: 2,
        eval_batches: 4,
        checkpoint_every: 3,
        seed: 9,
        ..TrainConfig::default()
    }
}

fn save(config: PhiConfig, dir: &Path) {
    PhiForCausalLM::init(config, &Device::default(), 5).unwrap().save_pretrained(dir).unwrap();
}

#[test]
fn a_packed_run_stopped_and_resumed_is_bitwise_the_uninterrupted_run_and_learns() {
    let _turn = take_turn();
    let dir = tempfile::tempdir().unwrap();
    save(configs().remove(1).1, dir.path());
    let (train, val) = (examples(30, 2), examples(4, 7));
    let weights = Weights::Pretrained(dir.path().into());
    let run = |steps, out: &Path, resume| {
        let mut objective = Sft::packed(&train, &val, 0, 3, 32).unwrap();
        fit(&weights, &mut objective, &cfg(steps), out, resume, &Device::default(), |_| {}).unwrap()
    };
    let full_dir = tempfile::tempdir().unwrap();
    let full = run(8, full_dir.path(), Resume::No);
    let out = tempfile::tempdir().unwrap();
    run(6, out.path(), Resume::No);
    let resumed = run(8, out.path(), Resume::Auto);
    assert_eq!(resumed.resumed_from, Some(6));
    let bits = |o: &phi_train::TrainOutcome| o.metrics.iter().map(|m| (m.step, m.loss.to_bits(), m.val_loss.map(f64::to_bits))).collect::<Vec<_>>();
    assert_eq!(bits(&full), bits(&resumed));
    let (first, last) = (full.metrics[0].val_loss.or(full.metrics[1].val_loss).unwrap(), full.metrics.last().unwrap().val_loss.unwrap());
    assert!(last < first, "held-out loss {first} → {last}");
    // The same data unpacked, or packed to another length, is other data to a checkpoint.
    for (what, mut objective) in [("unpacked", Sft::new(&train, &val, 0, 3).unwrap()), ("rows of 40", Sft::packed(&train, &val, 0, 3, 40).unwrap())] {
        let e = fit(&weights, &mut objective, &cfg(9), out.path(), Resume::Auto, &Device::default(), |_| {}).err().expect(what).to_string();
        assert!(e.contains("packed into") , "{what}: {e}");
    }
}
