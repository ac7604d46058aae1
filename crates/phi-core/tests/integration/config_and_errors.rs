//! Config parsing (hub and transformers-5 formats), preset parameter counts, and the errors a
//! user gets for bad input.

use crate::common;

use std::path::Path;

use burn::tensor::{Device, Int, Tensor};
use common::{NamedTensors, fixture, read_f32_file, write_file};
use phi_core::{BlockKind, Error, Family, MlpKind, NormKind, PhiConfig, PhiForCausalLM};
use serde_json::{Value, json};

#[test]
fn preset_parameter_counts_are_exact() {
    for (name, expected) in [
        ("phi-1", 1_418_270_720u64),
        ("phi-1.5", 1_418_270_720),
        ("phi-2", 2_779_683_840),
        ("phi-3-mini", 3_821_079_552),
        ("phi-3-medium", 13_960_238_080),
        ("phi-4-mini", 3_836_021_760),
    ] {
        let config = PhiConfig::preset(name).unwrap();
        config.validate().unwrap();
        assert_eq!(config.num_parameters(), expected, "{name}");
    }
}

#[test]
fn counted_parameters_equal_allocated_ones() {
    let device = Device::default();
    for dir in ["phi-tiny", "phi-qkln-tiny", "phi3-tiny", "phi3-gqa-tiny", "phi3-longrope-tiny"] {
        let model = PhiForCausalLM::from_pretrained(fixture(dir), &device).unwrap();
        assert_eq!(model.num_params() as u64, model.config().num_parameters(), "{dir}");
    }
}

/// `config.json` carries only `model_type`: a field its HF class cannot express would be written
/// out and loaded by transformers as the family's own layout, so `validate` refuses it.
#[test]
fn a_config_its_family_cannot_express_is_refused_naming_field_and_value() {
    let phi = PhiConfig::phi_family(32, 2, 4, 64, 0.5);
    let phi3 = PhiConfig::phi3_family(32, 2, 4, 2, 64, 64);
    let cases: Vec<(PhiConfig, &str, &str)> = vec![
        (PhiConfig { block: BlockKind::Sequential, ..phi.clone() }, "block", "Sequential"),
        (PhiConfig { norm: NormKind::RmsNorm, ..phi.clone() }, "norm", "RmsNorm"),
        (PhiConfig { mlp: MlpKind::Gated, ..phi.clone() }, "mlp", "Gated"),
        (PhiConfig { fused_qkv: true, ..phi.clone() }, "fused_qkv", "true"),
        (PhiConfig { linear_bias: false, ..phi.clone() }, "linear_bias", "false"),
        (PhiConfig { lm_head_bias: false, ..phi.clone() }, "lm_head_bias", "false"),
        (PhiConfig { block: BlockKind::Parallel, ..phi3.clone() }, "block", "Parallel"),
        (PhiConfig { norm: NormKind::LayerNorm, ..phi3.clone() }, "norm", "LayerNorm"),
        (PhiConfig { mlp: MlpKind::Plain, ..phi3.clone() }, "mlp", "Plain"),
        (PhiConfig { fused_qkv: false, ..phi3.clone() }, "fused_qkv", "false"),
        (PhiConfig { qk_layernorm: true, ..phi3.clone() }, "qk_layernorm", "true"),
        (PhiConfig { linear_bias: true, ..phi3.clone() }, "linear_bias", "true"),
        (PhiConfig { lm_head_bias: true, ..phi3.clone() }, "lm_head_bias", "true"),
    ];
    for (config, field, value) in cases {
        let family = config.family.model_type();
        let e = config.validate().unwrap_err().to_string();
        assert!(e.contains(&format!("`{field}`")) && e.contains(value) && e.contains(family), "{field} = {value}: {e}");
        // A model cannot be built from it either (so it can never be saved).
        let e = PhiForCausalLM::init(config, &Device::default(), 0).unwrap_err().to_string();
        assert!(e.contains(field), "{e}");
    }
    // What each family's class does express stays valid: qk-layernorm and GQA on phi.
    PhiConfig { qk_layernorm: true, num_key_value_heads: 2, ..phi }.validate().unwrap();
    phi3.validate().unwrap();
}

#[test]
fn family_reads_and_writes_hf_model_type_strings() {
    for (name, family) in [("phi", Family::Phi), ("phi-msft", Family::Phi), ("phi3", Family::Phi3), ("phi4", Family::Phi3)] {
        assert_eq!(Family::from_model_type(name), Some(family), "{name}");
        assert_eq!(serde_json::from_value::<Family>(json!(name)).unwrap(), family, "{name}");
    }
    assert_eq!(Family::from_model_type("llama"), None);
    let e = serde_json::from_value::<Family>(json!("llama")).unwrap_err().to_string();
    assert!(e.contains("model_type") && e.contains("llama"), "{e}");
    for (family, model_type, arch) in [(Family::Phi, "phi", "PhiForCausalLM"), (Family::Phi3, "phi3", "Phi3ForCausalLM")] {
        assert_eq!(serde_json::to_value(family).unwrap(), json!(model_type));
        assert_eq!((family.model_type(), family.architecture()), (model_type, arch));
    }
}

#[test]
fn every_preset_and_fixture_config_validates_and_round_trips_through_config_json() {
    let mut configs: Vec<(String, PhiConfig)> =
        PhiConfig::PRESETS.iter().map(|n| (n.to_string(), PhiConfig::preset(n).unwrap())).collect();
    for dir in ["phi-tiny", "phi-qkln-tiny", "phi3-tiny", "phi3-gqa-tiny", "phi3-longrope-tiny"] {
        configs.push((dir.to_string(), PhiConfig::from_file(fixture(dir).join("config.json")).unwrap()));
    }
    for (name, config) in configs {
        config.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        let json = config.to_hf_json();
        assert_eq!(json["model_type"], json!(config.family.model_type()), "{name}");
        assert_eq!(json["architectures"], json!([config.family.architecture()]), "{name}");
        assert_eq!(PhiConfig::from_hf_json(&json).unwrap(), config, "{name}");
    }
}

fn hub_config(dir: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(dir).join("config.json")).unwrap()).unwrap()
}

#[test]
fn transformers5_rope_parameters_format_parses_like_the_hub_format() {
    let hub = hub_config("phi3-longrope-tiny");
    let mut v5 = hub.clone();
    let obj = v5.as_object_mut().unwrap();
    let scaling = obj.remove("rope_scaling").unwrap();
    let theta = obj.remove("rope_theta").unwrap();
    let orig = obj.remove("original_max_position_embeddings").unwrap();
    obj.insert(
        "rope_parameters".into(),
        json!({"rope_type": "longrope", "rope_theta": theta, "short_factor": scaling["short_factor"],
               "long_factor": scaling["long_factor"], "original_max_position_embeddings": orig}),
    );
    assert_eq!(PhiConfig::from_hf_json(&v5).unwrap(), PhiConfig::from_hf_json(&hub).unwrap());

    let hub = hub_config("phi-qkln-tiny");
    let mut v5 = hub.clone();
    let obj = v5.as_object_mut().unwrap();
    obj.remove("rope_theta");
    obj.remove("partial_rotary_factor");
    obj.insert("rope_parameters".into(), json!({"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.4}));
    assert_eq!(PhiConfig::from_hf_json(&v5).unwrap(), PhiConfig::from_hf_json(&hub).unwrap());
}

#[test]
fn longrope_attention_factor_follows_hf_formula() {
    let c = PhiConfig::from_hf_json(&hub_config("phi3-longrope-tiny")).unwrap();
    let l = c.longrope.unwrap();
    let expected = (1.0 + (128.0f64 / 32.0).ln() / 32f64.ln()).sqrt();
    assert!((l.attention_factor - expected).abs() < 1e-12);
    assert_eq!(l.original_max_position_embeddings, 32);
}

fn config_error(mutate: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
    let mut v = hub_config("phi3-tiny");
    mutate(v.as_object_mut().unwrap());
    PhiConfig::from_hf_json(&v).unwrap_err().to_string()
}

#[test]
fn invalid_config_values_name_the_field() {
    let e = config_error(|o| {
        o.insert("hidden_size".into(), json!("big"));
    });
    assert!(e.contains("hidden_size"), "{e}");
    let e = config_error(|o| {
        o.remove("vocab_size");
    });
    assert!(e.contains("vocab_size") && e.contains("missing"), "{e}");
    let e = config_error(|o| {
        o.insert("num_key_value_heads".into(), json!(3));
    });
    assert!(e.contains("num_key_value_heads"), "{e}");
    let e = config_error(|o| {
        o.insert("partial_rotary_factor".into(), json!(1.5));
    });
    assert!(e.contains("partial_rotary_factor"), "{e}");
    let e = config_error(|o| {
        o.insert("model_type".into(), json!("llama"));
    });
    assert!(e.contains("model_type") && e.contains("llama"), "{e}");
    let e = config_error(|o| {
        o.insert("rope_scaling".into(), json!({"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}));
    });
    assert!(e.contains("short_factor"), "{e}");
}

/// Copies a fixture folder so a test can damage it.
fn scratch_copy(dir: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(dir).join(f), tmp.path().join(f)).unwrap();
    }
    tmp
}

#[test]
fn malformed_config_json_names_the_file() {
    let tmp = scratch_copy("phi-tiny");
    std::fs::write(tmp.path().join("config.json"), "{\"model_type\": \"phi\", ").unwrap();
    let e = PhiForCausalLM::from_pretrained(tmp.path(), &Device::default()).unwrap_err();
    assert!(matches!(e, Error::Json { .. }), "{e}");
    assert!(e.to_string().contains("config.json"), "{e}");
}

/// Rewrites `model.safetensors` in `dir` through `edit` on the (name, shape, f32 data) list.
fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut NamedTensors)) {
    let path = dir.join("model.safetensors");
    let mut tensors = read_f32_file(&path);
    edit(&mut tensors);
    write_file(&path, &tensors, safetensors::Dtype::F32);
}

#[test]
fn missing_tensor_is_named() {
    let tmp = scratch_copy("phi-tiny");
    rewrite_weights(tmp.path(), |t| t.retain(|(n, _, _)| n != "model.layers.1.mlp.fc2.bias"));
    let e = PhiForCausalLM::from_pretrained(tmp.path(), &Device::default()).unwrap_err();
    assert!(matches!(e, Error::MissingTensor { .. }), "{e}");
    assert!(e.to_string().contains("model.layers.1.mlp.fc2.bias"), "{e}");
}

#[test]
fn wrong_shape_names_key_and_both_shapes() {
    let tmp = scratch_copy("phi-tiny");
    rewrite_weights(tmp.path(), |t| {
        let e = t.iter_mut().find(|(n, _, _)| n == "model.layers.0.self_attn.q_proj.weight").unwrap();
        e.1 = vec![32, 128];
    });
    let e = PhiForCausalLM::from_pretrained(tmp.path(), &Device::default()).unwrap_err().to_string();
    assert!(e.contains("model.layers.0.self_attn.q_proj.weight") && e.contains("[32, 128]") && e.contains("[64, 64]"), "{e}");
}

#[test]
fn unexpected_tensor_is_an_error() {
    let tmp = scratch_copy("phi-tiny");
    rewrite_weights(tmp.path(), |t| t.push(("model.layers.7.mlp.fc1.weight".into(), vec![2], vec![0.0, 0.0])));
    let e = PhiForCausalLM::from_pretrained(tmp.path(), &Device::default()).unwrap_err().to_string();
    assert!(e.contains("model.layers.7.mlp.fc1.weight"), "{e}");
}

#[test]
fn token_id_out_of_vocab_is_an_error() {
    let device = Device::default();
    let model = PhiForCausalLM::from_pretrained(fixture("phi-tiny"), &device).unwrap();
    let ids = Tensor::<2, Int>::from_data([[1, 2, 512]], &device);
    let e = model.try_forward(ids).unwrap_err();
    assert!(matches!(e, Error::TokenOutOfRange { token: 512, position: 2, vocab_size: 512 }), "{e}");
    let e = model.generate(&[5, 600], &phi_core::GenerationConfig::greedy(2)).unwrap_err();
    assert!(e.to_string().contains("600"), "{e}");
}

#[test]
fn too_long_sequence_is_an_error() {
    let model = PhiForCausalLM::from_pretrained(fixture("phi-tiny"), &Device::default()).unwrap();
    let e = model.generate(&[5; 120], &phi_core::GenerationConfig::greedy(20)).unwrap_err();
    assert!(matches!(e, Error::SequenceTooLong { len: 140, max: 128 }), "{e}");
}

/// Every numeric field of a real config.json set to 0, -1 or 0.5: refused with an error naming
/// that key, or accepted and then a model that builds and generates — never a panic (a zero
/// `num_attention_heads` next to `num_key_value_heads` divided by zero in the parser).
#[test]
fn every_config_field_zero_negative_or_fractional_is_named_or_runs_never_panics() {
    let device = Device::default();
    for dir in ["phi-tiny", "phi3-tiny", "phi3-gqa-tiny", "phi3-longrope-tiny"] {
        let base = hub_config(dir);
        let mut keys: Vec<String> = base.as_object().unwrap().iter().filter(|(_, v)| v.is_number()).map(|(k, _)| k.clone()).collect();
        // Keys the fixture leaves to their defaults, set on top.
        for extra in ["head_dim", "num_key_value_heads", "partial_rotary_factor", "rope_theta", "initializer_range", "pad_token_id"] {
            if !keys.iter().any(|k| k == extra) {
                keys.push(extra.to_string());
            }
        }
        for key in &keys {
            for bad in [json!(0), json!(-1), json!(0.5)] {
                let mut v = base.clone();
                v.as_object_mut().unwrap().insert(key.clone(), bad.clone());
                let what = format!("{dir}: {key} = {bad}");
                let parsed = std::panic::catch_unwind(|| PhiConfig::from_hf_json(&v)).unwrap_or_else(|_| panic!("{what}: the parser panicked"));
                match parsed {
                    Err(e) => {
                        let e = e.to_string();
                        assert!(e.contains(&format!("`{key}`")), "{what}: the error does not name the key: {e}");
                    }
                    Ok(config) => {
                        let ran = std::panic::catch_unwind(|| {
                            let model = PhiForCausalLM::init(config, &device, 0)?;
                            model.generate(&[0], &phi_core::GenerationConfig::greedy(2))
                        });
                        let ran = ran.unwrap_or_else(|_| panic!("{what}: accepted, then the model panicked"));
                        ran.unwrap_or_else(|e| panic!("{what}: accepted, then the model failed: {e}"));
                    }
                }
            }
        }
    }
}

#[test]
fn inconsistent_head_counts_are_named_not_divided_by() {
    for (edit, key) in [
        // The reported panic: zero query heads beside a key/value head count.
        (json!({"num_attention_heads": 0, "num_key_value_heads": 4}), "num_attention_heads"),
        (json!({"num_attention_heads": 0}), "num_attention_heads"),
        (json!({"num_key_value_heads": 0}), "num_key_value_heads"),
        (json!({"num_attention_heads": 4, "num_key_value_heads": 3}), "num_key_value_heads"),
        (json!({"num_attention_heads": 5, "num_key_value_heads": 5}), "num_attention_heads"),
        (json!({"head_dim": 0}), "head_dim"),
        (json!({"partial_rotary_factor": 0.35}), "partial_rotary_factor"),
        (json!({"rope_theta": -10000.0}), "rope_theta"),
        (json!({"rms_norm_eps": -1e-5}), "rms_norm_eps"),
        (json!({"initializer_range": -0.02}), "initializer_range"),
    ] {
        let e = config_error(|o| {
            for (k, v) in edit.as_object().unwrap() {
                o.insert(k.clone(), v.clone());
            }
        });
        assert!(e.contains(&format!("`{key}`")), "{edit}: {e}");
    }
    // A config built in code with zero heads: named too (the presets divided by it).
    let e = PhiForCausalLM::init(PhiConfig::phi_family(64, 1, 0, 32, 0.5), &Device::default(), 0).map(|_| ()).expect_err("refused").to_string();
    assert!(e.contains("`num_attention_heads`"), "{e}");
}

#[test]
fn a_folder_without_config_json_names_the_models_under_it() {
    let run = tempfile::tempdir().unwrap();
    for step in ["step-00000100", "step-00000300"] {
        let ckpt = run.path().join("checkpoints").join(step);
        std::fs::create_dir_all(&ckpt).unwrap();
        std::fs::copy(fixture("phi-tiny/config.json"), ckpt.join("config.json")).unwrap();
    }
    let e = PhiForCausalLM::from_pretrained(run.path(), &Device::default()).map(|_| ()).expect_err("no model here").to_string();
    let newest = run.path().join("checkpoints/step-00000300");
    assert!(e.contains("not a model folder") && e.contains(&format!("the newest by name is {}", newest.display())), "{e}");
    let empty = tempfile::tempdir().unwrap();
    let e = PhiConfig::from_file(empty.path().join("config.json")).unwrap_err().to_string();
    assert!(e.contains("not a model folder") && e.contains("checkpoints/step-"), "{e}");
    // A folder that does not exist keeps the plain error naming the file.
    let e = PhiConfig::from_file("/nonexistent/model/config.json").unwrap_err().to_string();
    assert!(e.contains("/nonexistent/model/config.json"), "{e}");
}

#[test]
fn a_mistyped_preset_finds_the_nearest() {
    for (typed, meant) in [("phi3", Some("phi-3-mini")), ("phi2", Some("phi-2")), ("Phi-1.5", Some("phi-1.5")), ("phi-3-mni", Some("phi-3-mini")), ("phi4", Some("phi-4-mini")), ("llama", None), ("", None)] {
        assert_eq!(PhiConfig::nearest_preset(typed), meant, "{typed}");
    }
}
