//! Five AdamW steps from phi-tiny reproduce torch: losses, pre-clip gradient norms and the final
//! weights (`tests/fixtures/train-adamw`, made by phi-core's `tests/fixtures/make_fixtures.py`).

use crate::common;

use burn::optim::GradientsParams;
use burn::tensor::Device;
use common::{fixture, load_reference, max_abs_diff};
use phi_core::PhiForCausalLM;
use phi_train::{AdamWSettings, causal_lm_loss, clip_grad_norm};

#[test]
fn five_adamw_steps_match_torch() {
    let hp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("train-adamw/hyperparameters.json")).unwrap()).unwrap();
    let reference = load_reference(fixture("train-adamw/reference.safetensors"));
    let device = Device::default().autodiff();
    let mut model = PhiForCausalLM::from_pretrained(fixture("phi-tiny"), &device).unwrap();
    let batch = reference["batch"].ids_tensor(&device);
    let settings = AdamWSettings {
        beta1: hp["beta1"].as_f64().unwrap(),
        beta2: hp["beta2"].as_f64().unwrap(),
        eps: hp["eps"].as_f64().unwrap(),
        weight_decay: hp["weight_decay"].as_f64().unwrap(),
        no_decay_for_bias_norm_embedding: false, // the reference decays every parameter
    };
    let mut optim = settings.build(&model);
    let (lr, clip) = (hp["lr"].as_f64().unwrap(), hp["grad_clip_norm"].as_f64().unwrap());
    for step in 0..hp["steps"].as_u64().unwrap() as usize {
        let loss = causal_lm_loss(model.forward(batch.clone()), batch.clone());
        let loss_value = loss.clone().into_scalar::<f32>();
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        let norm = clip_grad_norm(&model, &mut grads, clip);
        let (want_loss, want_norm) = (reference["losses"].f32[step], reference["grad_norms_before_clip"].f32[step]);
        eprintln!("step {step}: loss {loss_value} (torch {want_loss}), grad norm {norm:.7} (torch {want_norm})");
        assert!((loss_value - want_loss).abs() < 1e-4, "step {step}: loss {loss_value} vs torch {want_loss}");
        assert!((norm as f32 - want_norm).abs() < 1e-4, "step {step}: grad norm {norm} vs torch {want_norm}");
        model = optim.step(lr, model, grads);
    }
    let embed = model.model.embed_tokens.weight.val().inner();
    let d = max_abs_diff("embed", embed, &reference["final_embed"]);
    eprintln!("final embed_tokens max |diff| {d:e}");
    assert!(d < 1e-4, "final embed_tokens differs by {d}");
    let phi_core::mlp::MlpLayers::Plain(mlp) = &model.model.layers[0].mlp.layers else { panic!("phi-tiny has a plain MLP") };
    // Our Linear holds [in, out]; torch's fc1.weight is [out, in].
    let fc1 = mlp.fc1.weight.val().inner().transpose();
    let d = max_abs_diff("fc1", fc1, &reference["final_fc1"]);
    eprintln!("final fc1 max |diff| {d:e}");
    assert!(d < 1e-4, "final layers.0.mlp.fc1.weight differs by {d}");
}
