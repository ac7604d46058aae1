//! Preference objectives against TRL: `tests/fixtures/dpo-phi-tiny`, made by
//! `tests/fixtures/make_dpo_fixture.py` with PyTorch, PEFT 0.21 and TRL 1.16's DPOTrainer (f32, no autocast).
//! Policy = phi-tiny + the lora-phi-tiny adapter, reference = phi-tiny; 4 token-id pairs of
//! different lengths, β 0.1, sigmoid loss.

use crate::common;

use burn::optim::GradientsParams;
use burn::tensor::Device;
use common::fixture;
use phi_core::PhiForCausalLM;
use phi_train::preference::{Collate, PreferenceLoss, TokenPair, completion_logps, pair_batch, preference_loss};
use phi_train::{AdamWSettings, grad_norm, lora};

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("dpo-phi-tiny/reference.json")).unwrap()).unwrap()
}

fn pairs() -> Vec<TokenPair> {
    std::fs::read_to_string(fixture("dpo-phi-tiny/pairs.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn close(name: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}");
    for (g, w) in got.iter().zip(want) {
        assert!((*g as f64 - w).abs() < tol, "{name}: {got:?} vs {want:?}");
    }
}

#[test]
fn dpo_log_probs_loss_metrics_and_gradient_match_trl() {
    let r = reference();
    let device = Device::default().autodiff();
    let policy = lora::load(PhiForCausalLM::from_pretrained(fixture("phi-tiny"), &device).unwrap(), fixture("lora-phi-tiny")).unwrap();
    let reference_model = PhiForCausalLM::from_pretrained(fixture("phi-tiny"), &device.clone().inner()).unwrap();
    let batch = pair_batch(&pairs(), &Collate::new(0), &device);
    let n = pairs().len();
    let policy_logps = completion_logps(policy.forward(batch.ids.clone()), &batch);
    let inner = pair_batch(&pairs(), &Collate::new(0), &device.clone().inner());
    let ref_logps = completion_logps(reference_model.forward(inner.ids.clone()), &inner).sums;
    let host = |t: burn::tensor::Tensor<1>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let (p, rf) = (host(policy_logps.sums.clone().detach()), host(ref_logps.clone()));
    close("policy_chosen_logps", &p[..n], &floats(&r["policy_chosen_logps"]), 1e-4);
    close("policy_rejected_logps", &p[n..], &floats(&r["policy_rejected_logps"]), 1e-4);
    close("reference_chosen_logps", &rf[..n], &floats(&r["reference_chosen_logps"]), 1e-4);
    close("reference_rejected_logps", &rf[n..], &floats(&r["reference_rejected_logps"]), 1e-4);

    let beta = r["beta"].as_f64().unwrap();
    let (loss, m) = preference_loss(policy_logps, Some(ref_logps.to_device(&device)), beta, PreferenceLoss::Sigmoid { label_smoothing: 0.0 });
    assert!((m.loss - r["loss"].as_f64().unwrap()).abs() < 1e-5, "{m:?}");
    for (got, key) in [
        (m.rewards_chosen, "rewards/chosen"),
        (m.rewards_rejected, "rewards/rejected"),
        (m.rewards_margins, "rewards/margins"),
        (m.rewards_accuracies, "rewards/accuracies"),
    ] {
        assert!((got - r[key].as_f64().unwrap()).abs() < 1e-5, "{key}: {got} vs {}", r[key]);
    }
    // TRL's names, as metrics.jsonl will carry them.
    let json = serde_json::to_value(m).unwrap();
    assert!(json.get("rewards/margins").is_some() && json.get("logps/chosen").is_some());
    let grads = GradientsParams::from_grads(loss.backward(), &policy);
    let norm = grad_norm(&policy, &grads);
    assert!((norm - r["lora_grad_norm"].as_f64().unwrap()).abs() < 1e-4, "{norm} vs {}", r["lora_grad_norm"]);
}

#[test]
fn three_adamw_steps_on_the_adapter_match_torch() {
    let r = reference();
    let a = &r["adamw"];
    let device = Device::default().autodiff();
    let mut policy = lora::load(PhiForCausalLM::from_pretrained(fixture("phi-tiny"), &device).unwrap(), fixture("lora-phi-tiny")).unwrap();
    let reference_model = PhiForCausalLM::from_pretrained(fixture("phi-tiny"), &device.clone().inner()).unwrap();
    let batch = pair_batch(&pairs(), &Collate::new(0), &device);
    let inner = pair_batch(&pairs(), &Collate::new(0), &device.clone().inner());
    // The reference log-probs once, before training: the reference never changes.
    let ref_logps = completion_logps(reference_model.forward(inner.ids.clone()), &inner).sums.to_device(&device);
    let betas = floats(&a["betas"]);
    let settings = AdamWSettings { beta1: betas[0], beta2: betas[1], eps: a["eps"].as_f64().unwrap(), weight_decay: 0.0, no_decay_for_bias_norm_embedding: false };
    let mut optim = settings.build(&policy);
    let mut losses = Vec::new();
    for step in 0..4 {
        let logps = completion_logps(policy.forward(batch.ids.clone()), &batch);
        let (loss, m) = preference_loss(logps, Some(ref_logps.clone()), r["beta"].as_f64().unwrap(), PreferenceLoss::Sigmoid { label_smoothing: 0.0 });
        losses.push(m.loss);
        if step == 3 {
            break;
        }
        let grads = GradientsParams::from_grads(loss.backward(), &policy);
        policy = optim.step(a["lr"].as_f64().unwrap(), policy, grads);
    }
    let want = floats(&a["losses_before_each_step_and_after_last"]);
    for (g, w) in losses.iter().zip(&want) {
        assert!((g - w).abs() < 1e-4, "{losses:?} vs {want:?}");
    }
    // The final lora_B of layer 0's q_proj, PEFT layout [out, r].
    let qb = policy
        .linears_mut()
        .into_iter()
        .find(|(k, _)| k == "model.layers.0.self_attn.q_proj")
        .and_then(|(_, l)| l.lora.as_ref().map(|ad| ad.lora_b.val().transpose()))
        .unwrap();
    let got = qb.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let want: Vec<f64> = a["final_layers.0.self_attn.q_proj.lora_B"].as_array().unwrap().iter().flat_map(|row| floats(row)).collect();
    close("final q_proj lora_B", &got, &want, 1e-4);
}
