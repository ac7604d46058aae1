//! LoRA in PEFT's format: a real PEFT adapter (phi-train's `lora-phi-tiny` fixture, made by
//! `tests/fixtures/make_fixtures.py` from phi-tiny) reproduces PEFT's logits; save → load round
//! trip; merging changes nothing. (Training adapters is tested in phi-train's `tests/integration/lora.rs`.)

use crate::common;

use std::path::PathBuf;

use burn::tensor::Device;
use common::{fixture, load_reference, max_abs_diff};
use phi_core::PhiForCausalLM;
use phi_core::lora::{self, LoraConfig};

/// The PEFT adapter fixture (or a file in it), beside phi-train's training references.
fn adapter_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../phi-train/tests/fixtures/lora-phi-tiny").join(name)
}

fn logits(model: &PhiForCausalLM) -> Vec<f32> {
    let reference = load_reference(adapter_fixture("reference.safetensors"));
    let ids = reference["input_ids"].ids_tensor(&model.device());
    model.forward(ids).into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[test]
fn peft_adapter_reproduces_peft_logits() {
    let device = Device::default();
    let base = PhiForCausalLM::from_pretrained(fixture("phi-tiny"), &device).unwrap();
    let model = lora::load(base, adapter_fixture("")).unwrap();
    let reference = load_reference(adapter_fixture("reference.safetensors"));
    let out = model.forward(reference["input_ids"].ids_tensor(&device));
    let d = max_abs_diff("logits", out, &reference["logits"]);
    eprintln!("PEFT adapter: max |logits - reference| = {d:e}");
    assert!(d < 1e-4, "{d}");
}

#[test]
fn adapter_save_load_round_trip_and_merge_equality() {
    let device = Device::default();
    let base = || PhiForCausalLM::from_pretrained(fixture("phi-tiny"), &device).unwrap();
    let adapted = lora::load(base(), adapter_fixture("")).unwrap();
    let config = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.0,
        target_modules: ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"].map(String::from).to_vec(),
        use_rslora: false,
    };
    // The fixture's PEFT targets are phi-core's default for the family.
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let peft = lora::read_config(&adapter_fixture("")).unwrap().target_modules;
    assert_eq!(sorted(peft), sorted(lora::default_targets(phi_core::Family::Phi)));
    let dir = tempfile::tempdir().unwrap();
    lora::save(&adapted, &config, dir.path()).unwrap();
    let reloaded = lora::load(base(), dir.path()).unwrap();
    assert_eq!(logits(&reloaded), logits(&adapted));

    let merged = lora::merge(reloaded);
    let (a, m) = (logits(&adapted), logits(&merged));
    let d = a.iter().zip(&m).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    assert!(d < 1e-4, "merged differs by {d}");
    // The merged export is a plain HF checkpoint.
    let export = tempfile::tempdir().unwrap();
    merged.save_pretrained(export.path()).unwrap();
    assert_eq!(logits(&PhiForCausalLM::from_pretrained(export.path(), &device).unwrap()), m);
}
