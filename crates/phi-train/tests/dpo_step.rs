//! DPO through the shared training step (`fit` with the `Dpo` objective and a LoRA policy)
//! against TRL 1.16's DPOTrainer: the fixture `dpo-phi-tiny` (policy = phi-tiny + the
//! lora-phi-tiny adapter, reference = phi-tiny, 4 pairs, β 0.1, sigmoid, 3 plain AdamW steps at
//! lr 1e-3 on the whole set as one batch, f32).

mod common;

use burn::tensor::Device;
use common::fixture;
use phi_core::PhiForCausalLM;
use phi_train::preference::{Dpo, PreferenceLoss, TokenPair};
use phi_train::{Adapter, AdamWSettings, Decay, LrSchedule, Precision, TrainConfig, Weights, fit};

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
        peak_flops: 1e12,
        activation_checkpointing: false,
        precision: Precision::F32,
        loss_scaler: Default::default(),
        on_non_finite: Default::default(),
    };
    // The reference is the base without the adapter; its log-probs are taken once, here.
    let reference = PhiForCausalLM::from_pretrained(fixture("phi-tiny"), &Device::default()).unwrap();
    let beta = r["beta"].as_f64().unwrap();
    // Validating on the training pairs gives the loss after the last step.
    let mut objective = Dpo::new(&pairs, &pairs, &reference, beta, PreferenceLoss::Sigmoid { label_smoothing: 0.0 }, 0, 1);
    drop(reference);
    let weights = Weights::Lora { base: fixture("phi-tiny"), adapter: Adapter::Load(fixture("lora-phi-tiny")), quantize: None };
    let out = tempfile::tempdir().unwrap();
    let run = fit(&weights, &mut objective, &cfg, out.path(), false, &Device::default(), |_| {}).unwrap();

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
    let line = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    assert!(line.lines().next().unwrap().contains("\"rewards/margins\":"), "{line}");

    // The final lora_B of layer 0's q_proj (PEFT layout [out, r]), from the checkpoint the run
    // wrote as a PEFT adapter.
    let ckpt = phi_train::checkpoint::latest(&out.path().join("checkpoints")).unwrap();
    let tensors = std::fs::read(ckpt.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&tensors).unwrap();
    let b = st.tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight").unwrap();
    let got: Vec<f32> = b.data().chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let want: Vec<f64> = a["final_layers.0.self_attn.q_proj.lora_B"].as_array().unwrap().iter().flat_map(floats).collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!((*g as f64 - w).abs() < 1e-4, "lora_B {got:?} vs {want:?}");
    }
}
