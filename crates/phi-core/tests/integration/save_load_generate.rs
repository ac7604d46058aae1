//! Saving and loading (single file, shards, half precision) and generation behaviour.

use crate::common;

use std::path::Path;

use burn::tensor::{Device, Tensor};
use common::{fixture, load_reference, read_f32_file, write_file};
use phi_core::{GenerationConfig, PhiConfig, PhiForCausalLM};
use safetensors::{Dtype, SafeTensors};

fn logits_vec(model: &PhiForCausalLM, dir: &str) -> Vec<f32> {
    let reference = load_reference(fixture(dir).join("reference.safetensors"));
    let key = if dir == "phi3-longrope-tiny" { "input_ids_long" } else { "input_ids" };
    let ids = reference[key].ids_tensor(&model.device());
    model.forward(ids).into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[test]
fn save_then_reload_gives_identical_logits() {
    let device = Device::default();
    for dir in ["phi-tiny", "phi-qkln-tiny", "phi3-gqa-tiny", "phi3-longrope-tiny"] {
        let model = PhiForCausalLM::from_pretrained(fixture(dir), &device).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        model.save_pretrained(tmp.path()).unwrap();
        // Same tensor names as the HF checkpoint: nothing renamed, nothing added or dropped.
        let names = |p: &Path| {
            let bytes = std::fs::read(p.join("model.safetensors")).unwrap();
            let mut n: Vec<String> = SafeTensors::deserialize(&bytes).unwrap().names().into_iter().map(str::to_string).collect();
            n.sort();
            n
        };
        assert_eq!(names(tmp.path()), names(&fixture(dir)), "{dir}");
        let reloaded = PhiForCausalLM::from_pretrained(tmp.path(), &device).unwrap();
        assert_eq!(reloaded.config(), model.config(), "{dir}: config round trip");
        assert_eq!(logits_vec(&reloaded, dir), logits_vec(&model, dir), "{dir}");
        assert!(!tmp.path().join("model.safetensors.tmp").exists());
    }
}

#[test]
fn fresh_model_saves_and_reloads() {
    let device = Device::default();
    let config = PhiConfig { vocab_size: 300, max_position_embeddings: 64, ..PhiConfig::phi_family(32, 2, 4, 300, 0.5) };
    let a = PhiForCausalLM::init(config.clone(), &device, 7).unwrap();
    let b = PhiForCausalLM::init(config, &device, 7).unwrap();
    let ids = Tensor::from_data([[1, 2, 3, 4]], &device);
    let la = a.forward(ids.clone()).into_data();
    assert_eq!(la, b.forward(ids.clone()).into_data(), "same seed, same weights");
    let tmp = tempfile::tempdir().unwrap();
    a.save_pretrained(tmp.path()).unwrap();
    let c = PhiForCausalLM::from_pretrained(tmp.path(), &device).unwrap();
    assert_eq!(c.forward(ids).into_data(), la);
}

/// Every preset's layout (family, GQA, partial rotary, tied head), at a size that runs here, and
/// every fixture: saved, reloaded, the same config and bit-identical logits.
#[test]
fn every_preset_layout_and_fixture_saves_and_reloads_with_identical_logits() {
    let device = Device::default();
    let mut models = Vec::new();
    for name in PhiConfig::PRESETS {
        let full = PhiConfig::preset(name).unwrap();
        let heads = 4;
        let config = PhiConfig {
            vocab_size: 300,
            hidden_size: 160,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: heads,
            num_key_value_heads: heads * full.num_key_value_heads / full.num_attention_heads,
            head_dim: 40,
            max_position_embeddings: 64,
            longrope: None,
            bos_token_id: None,
            eos_token_ids: vec![],
            pad_token_id: None,
            ..full
        };
        models.push((name.to_string(), PhiForCausalLM::init(config, &device, 3).unwrap()));
    }
    for dir in ["phi-tiny", "phi-qkln-tiny", "phi3-tiny", "phi3-gqa-tiny", "phi3-longrope-tiny"] {
        models.push((dir.to_string(), PhiForCausalLM::from_pretrained(fixture(dir), &device).unwrap()));
    }
    let ids = Tensor::from_data([[1, 2, 3, 4, 5]], &device);
    for (name, model) in models {
        let tmp = tempfile::tempdir().unwrap();
        model.save_pretrained(tmp.path()).unwrap();
        let reloaded = PhiForCausalLM::from_pretrained(tmp.path(), &device).unwrap();
        assert_eq!(reloaded.config(), model.config(), "{name}: config round trip");
        assert_eq!(reloaded.forward(ids.clone()).into_data(), model.forward(ids.clone()).into_data(), "{name}");
    }
}

#[test]
fn sharded_checkpoint_loads_like_the_single_file() {
    let dir = "phi3-tiny";
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(fixture(dir).join("config.json"), tmp.path().join("config.json")).unwrap();
    let tensors = read_f32_file(&fixture(dir).join("model.safetensors"));
    let (a, b) = tensors.split_at(tensors.len() / 2);
    write_file(&tmp.path().join("model-00001-of-00002.safetensors"), a, Dtype::F32);
    write_file(&tmp.path().join("model-00002-of-00002.safetensors"), b, Dtype::F32);
    let mut map = serde_json::Map::new();
    for (n, _, _) in a {
        map.insert(n.clone(), "model-00001-of-00002.safetensors".into());
    }
    for (n, _, _) in b {
        map.insert(n.clone(), "model-00002-of-00002.safetensors".into());
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(tmp.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let device = Device::default();
    let sharded = PhiForCausalLM::from_pretrained(tmp.path(), &device).unwrap();
    let single = PhiForCausalLM::from_pretrained(fixture(dir), &device).unwrap();
    assert_eq!(logits_vec(&sharded, dir), logits_vec(&single, dir));
}

#[test]
fn half_precision_checkpoints_convert_to_f32() {
    let dir = "phi-tiny";
    let device = Device::default();
    for (dtype, round) in [
        (Dtype::BF16, (|x: f32| half::bf16::from_f32(x).to_f32()) as fn(f32) -> f32),
        (Dtype::F16, |x: f32| half::f16::from_f32(x).to_f32()),
    ] {
        let tensors = read_f32_file(&fixture(dir).join("model.safetensors"));
        let half_dir = tempfile::tempdir().unwrap();
        let rounded_dir = tempfile::tempdir().unwrap();
        for d in [&half_dir, &rounded_dir] {
            std::fs::copy(fixture(dir).join("config.json"), d.path().join("config.json")).unwrap();
        }
        write_file(&half_dir.path().join("model.safetensors"), &tensors, dtype);
        let rounded: Vec<_> = tensors.into_iter().map(|(n, s, d)| (n, s, d.into_iter().map(round).collect())).collect();
        write_file(&rounded_dir.path().join("model.safetensors"), &rounded, Dtype::F32);
        let from_half = PhiForCausalLM::from_pretrained(half_dir.path(), &device).unwrap();
        let from_rounded = PhiForCausalLM::from_pretrained(rounded_dir.path(), &device).unwrap();
        assert_eq!(logits_vec(&from_half, dir), logits_vec(&from_rounded, dir), "{dtype:?}");
    }
}

#[test]
fn longrope_generation_across_the_original_context_matches_recompute() {
    // Original context 32: a 28-token prompt plus 12 tokens crosses it at token 33.
    let model = PhiForCausalLM::from_pretrained(fixture("phi3-longrope-tiny"), &Device::default()).unwrap();
    let prompt: Vec<u32> = (0..28).map(|i| 3 + (i * 37) % 500).collect();
    let cached = model.generate(&prompt, &GenerationConfig::greedy(12)).unwrap();
    let recomputed = model.generate(&prompt, &GenerationConfig::greedy(12).with_cache(false)).unwrap();
    assert_eq!(cached, recomputed);
    assert!(!model.uses_long_rope(32) && model.uses_long_rope(33));
}

#[test]
fn sampling_is_seeded_and_respects_top_k_and_stop_tokens() {
    let model = PhiForCausalLM::from_pretrained(fixture("phi3-tiny"), &Device::default()).unwrap();
    let prompt = [5, 17, 99];
    let sample = |seed| model.generate(&prompt, &GenerationConfig::sampling(16, 1.0, seed)).unwrap();
    assert_eq!(sample(1), sample(1));
    assert_ne!(sample(1), sample(2), "different seeds should differ over 16 tokens");
    // top-k 1 is greedy whatever the temperature.
    let greedy = model.generate(&prompt, &GenerationConfig::greedy(16)).unwrap();
    let top1 = model.generate(&prompt, &GenerationConfig::sampling(16, 5.0, 3).with_top_k(1)).unwrap();
    assert_eq!(top1, greedy);
    // A tiny top-p keeps only the most likely token: greedy again.
    let top_p = model.generate(&prompt, &GenerationConfig::sampling(16, 1.0, 3).with_top_p(1e-6)).unwrap();
    assert_eq!(top_p, greedy);
    // Stopping at the 4th greedy token keeps it and ends there.
    let stop = greedy[prompt.len() + 3];
    let first = greedy[prompt.len()..].iter().position(|&t| t == stop).unwrap();
    let stopped = model.generate(&prompt, &GenerationConfig::greedy(16).with_stop_tokens([stop])).unwrap();
    assert_eq!(stopped, greedy[..prompt.len() + first + 1]);
}

#[test]
fn streaming_callback_sees_each_token_and_can_stop() {
    let model = PhiForCausalLM::from_pretrained(fixture("phi-tiny"), &Device::default()).unwrap();
    let mut seen = Vec::new();
    let out = model
        .generate_streaming(&[4, 5, 6], &GenerationConfig::greedy(10), |t| {
            seen.push(t);
            seen.len() < 4
        })
        .unwrap();
    assert_eq!(seen.len(), 4);
    assert_eq!(out[3..], seen[..]);
}
