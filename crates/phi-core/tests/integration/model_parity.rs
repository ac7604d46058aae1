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

/// Packed rows (SFT packing): the reference sequences of each fixture laid end to end, in two
/// orders, with a padding tail — each sequence's logits are still transformers' for it alone.
/// With LongRoPE, the short and the long sequences share a row and each uses its own factors.
#[test]
fn packed_rows_reproduce_each_sequences_transformers_logits() {
    use burn::tensor::{Int, Tensor, TensorData};
    let device = Device::default();
    for (dir, tags) in [("phi-tiny", &[""][..]), ("phi-qkln-tiny", &[""]), ("phi3-tiny", &[""]), ("phi3-gqa-tiny", &[""]), ("phi3-longrope-tiny", &["_short", "_long"])] {
        let model = PhiForCausalLM::from_pretrained(fixture(dir), &device).unwrap();
        let reference = load_reference(fixture(dir).join("reference.safetensors"));
        let vocab = model.config().vocab_size;
        // (ids, reference logits) of every row of every tag.
        let mut sequences: Vec<(Vec<i64>, Vec<f32>)> = Vec::new();
        for tag in tags {
            let (ids, logits) = (&reference[&format!("input_ids{tag}")], &reference[&format!("logits{tag}")]);
            let (b, t) = (ids.shape[0], ids.shape[1]);
            for r in 0..b {
                sequences.push((ids.i64[r * t..(r + 1) * t].to_vec(), logits.f32[r * t * vocab..(r + 1) * t * vocab].to_vec()));
            }
        }
        let forward: Vec<usize> = (0..sequences.len()).collect();
        let rows = [forward.clone(), forward.into_iter().rev().collect::<Vec<_>>()];
        let len = sequences.iter().map(|s| s.0.len()).sum::<usize>() + 5;
        let mut ids = Vec::new();
        let mut lengths = Vec::new();
        for row in &rows {
            let start = ids.len();
            for &i in row {
                ids.extend_from_slice(&sequences[i].0);
            }
            ids.resize(start + len, 0);
            lengths.push(row.iter().map(|&i| sequences[i].0.len()).collect::<Vec<_>>());
        }
        let segments = phi_core::Segments::new(len, &lengths).unwrap();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, len]), &device);
        let logits = model.forward_packed(ids, &segments).unwrap().into_data().convert::<f32>();
        let logits = logits.as_slice::<f32>().unwrap();
        for (r, row) in rows.iter().enumerate() {
            let mut at = r * len;
            for &i in row {
                let n = sequences[i].0.len();
                let got = &logits[at * vocab..(at + n) * vocab];
                let d = got.iter().zip(&sequences[i].1).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(d < TOL, "{dir}: sequence {i} packed in row {r} differs from transformers by {d}");
                at += n;
            }
        }
    }
}
