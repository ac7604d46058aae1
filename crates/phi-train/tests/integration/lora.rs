//! Training LoRA adapters: the base stays frozen and holds no optimizer state, also quantized.
//! (Loading the real PEFT adapter, the save → load round trip and merging are phi-core's
//! `tests/integration/lora.rs`: LoRA itself lives there.)

use crate::common;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Device;
use common::{fixture, load_reference};
use phi_core::PhiForCausalLM;
use phi_train::lora::{self, BaseQuantization, LoraConfig, quantize_base};
use phi_train::{AdamWSettings, causal_lm_loss};

fn logits(model: &PhiForCausalLM) -> Vec<f32> {
    let reference = load_reference(fixture("lora-phi-tiny/reference.safetensors"));
    let ids = reference["input_ids"].ids_tensor(&model.device());
    model.forward(ids).into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[test]
fn training_moves_only_the_adapters() {
    let device = Device::default().autodiff();
    let base = PhiForCausalLM::from_pretrained(fixture("phi-tiny"), &device).unwrap();
    let config = LoraConfig {
        r: 2,
        lora_alpha: 4.0,
        lora_dropout: 0.0,
        target_modules: vec!["q_proj".into(), "fc1".into()],
        use_rslora: true,
    };
    let mut model = lora::attach(base, &config).unwrap();
    let before = model.state_dict().tensors;
    let start = logits(&model.valid());
    let mut optim = AdamWSettings::default().build(&model);
    let reference = load_reference(fixture("train-adamw/reference.safetensors"));
    let batch = reference["batch"].ids_tensor(&device);
    for _ in 0..3 {
        let loss = causal_lm_loss(model.forward(batch.clone()), batch.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        // Two adapted projections per layer, two layers, A and B each.
        assert_eq!(grads.len(), 2 * 2 * 2, "gradients only for adapter matrices");
        model = optim.step(1e-2, model, grads);
    }
    assert_eq!(model.state_dict().tensors, before, "base weights are bit-identical");
    assert_ne!(logits(&model.valid()), start, "the adapters trained");
    let record_tensors = optim.to_record().len();
    assert_eq!(record_tensors, 8 * 2, "AdamW state (two moments) for the 8 adapter matrices only");
}

// One test per format, so that the two run side by side: on lavapipe (scripts/test's wgpu step)
// compiling their kernels takes minutes.
#[test]
fn int8_base_trains_adapters_and_stays_close_to_f32() {
    quantized_base_trains_adapters_and_stays_close_to_f32(BaseQuantization::Int8, 0.05, 0.29);
}

#[test]
fn int4_base_trains_adapters_and_stays_close_to_f32() {
    quantized_base_trains_adapters_and_stays_close_to_f32(BaseQuantization::Int4, 0.6, 0.16);
}

/// `tol`: the largest logit difference from the f32 model; `ratio`: the most the quantized
/// projection weights may weigh against f32.
fn quantized_base_trains_adapters_and_stays_close_to_f32(bits: BaseQuantization, tol: f32, ratio: f64) {
    let device = Device::default().autodiff();
    let config = LoraConfig { r: 4, lora_alpha: 8.0, lora_dropout: 0.0, target_modules: vec!["q_proj".into(), "fc1".into(), "fc2".into()], use_rslora: false };
    let reference = load_reference(fixture("train-adamw/reference.safetensors"));
    let batch = reference["batch"].ids_tensor(&device);
    let f32_logits = logits(&PhiForCausalLM::from_pretrained(fixture("phi-tiny"), &device.clone().inner()).unwrap());
    let base = PhiForCausalLM::from_pretrained(fixture("phi-tiny"), &device).unwrap();
    let model = lora::attach(base, &config).unwrap();
    let (mut model, before, after) = quantize_base(model, bits);
    assert!((after as f64) < ratio * before as f64, "{bits:?}: {after} of {before} bytes");
    // B = 0: the adapted quantized model is the quantized base, close to the f32 one.
    let q = logits(&model.valid());
    let d = q.iter().zip(&f32_logits).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(d < tol, "{bits:?}: logits moved by {d}");
    let mut optim = AdamWSettings::default().build(&model);
    let mut losses = Vec::new();
    for _ in 0..5 {
        let loss = causal_lm_loss(model.forward(batch.clone()), batch.clone());
        losses.push(loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        assert_eq!(grads.len(), 3 * 2 * 2, "gradients only for the adapters");
        model = optim.step(1e-2, model, grads);
    }
    assert!(losses[4] < losses[0], "{bits:?}: {losses:?}");
    // Merging a quantized base gives a plain f32 checkpoint that saves and reloads.
    let merged = lora::merge(model.valid());
    let dir = tempfile::tempdir().unwrap();
    merged.save_pretrained(dir.path()).unwrap();
    let back = PhiForCausalLM::from_pretrained(dir.path(), &device.clone().inner()).unwrap();
    let d = logits(&back).iter().zip(&logits(&merged)).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(d < 1e-4, "{bits:?}: reloaded merged model differs by {d}");
}
