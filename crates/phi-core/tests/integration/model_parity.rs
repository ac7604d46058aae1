//! Every fixture model reproduces HF transformers: logits and each hidden state within 1e-4,
//! greedy generation token for token, with and without the KV cache.

use crate::common;

use burn::tensor::Device;
use common::{fixture, load_reference, max_abs_diff};
use phi_core::{GenerationConfig, PhiForCausalLM};

const TOL: f32 = 1e-4;

fn check_forward(model_dir: &str, tag: &str) {
    let device = Device::default();
    let model = PhiForCausalLM::from_pretrained(fixture(model_dir), &device).unwrap();
    let reference = load_reference(fixture(model_dir).join("reference.safetensors"));
    let ids = reference[&format!("input_ids{tag}")].ids_tensor(&device);
    let (logits, hidden) = model.forward_with_hidden_states(ids.clone()).unwrap();
    assert_eq!(hidden.len(), model.config().num_hidden_layers + 1);
    for (i, h) in hidden.into_iter().enumerate() {
        let d = max_abs_diff("hidden", h, &reference[&format!("hidden{tag}_{i}")]);
        assert!(d < TOL, "{model_dir}{tag}: hidden_{i} differs by {d}");
        // The same state alone, without the later layers or the head (what embeddings use).
        let d = max_abs_diff("hidden", model.hidden_state(ids.clone(), i).unwrap(), &reference[&format!("hidden{tag}_{i}")]);
        assert!(d < TOL, "{model_dir}{tag}: hidden_state({i}) differs by {d}");
    }
    let d = max_abs_diff("logits", logits, &reference[&format!("logits{tag}")]);
    eprintln!("{model_dir}{tag}: max |logits - reference| = {d:e}");
    assert!(d < TOL, "{model_dir}{tag}: logits differ by {d}");
}

#[test]
fn phi_tiny_matches_transformers() {
    check_forward("phi-tiny", "");
}

#[test]
fn phi_qk_layernorm_partial_rotary_matches_transformers() {
    check_forward("phi-qkln-tiny", "");
}

#[test]
fn phi3_tiny_matches_transformers() {
    check_forward("phi3-tiny", "");
}

#[test]
fn phi3_gqa_tied_partial_rotary_matches_transformers() {
    check_forward("phi3-gqa-tiny", "");
}

#[test]
fn phi3_longrope_short_matches_transformers() {
    check_forward("phi3-longrope-tiny", "_short");
}

#[test]
fn phi3_longrope_long_matches_transformers() {
    check_forward("phi3-longrope-tiny", "_long");
}

fn check_greedy(model_dir: &str) {
    let device = Device::default();
    let model = PhiForCausalLM::from_pretrained(fixture(model_dir), &device).unwrap();
    let reference = load_reference(fixture(model_dir).join("reference.safetensors"));
    let expected = reference["greedy_ids"].ids_u32();
    let prompt = &expected[..5];
    let new = expected.len() - prompt.len();
    for use_cache in [true, false] {
        let got = model.generate(prompt, &GenerationConfig::greedy(new).with_cache(use_cache)).unwrap();
        assert_eq!(got, expected, "{model_dir} greedy (use_cache = {use_cache})");
    }
}

#[test]
fn phi_tiny_greedy_generation_matches_transformers() {
    check_greedy("phi-tiny");
}

#[test]
fn phi3_tiny_greedy_generation_matches_transformers() {
    check_greedy("phi3-tiny");
}
