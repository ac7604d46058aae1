//! Model files a user downloaded or typed are untrusted: absurd sizes, token ids that wrap, shard
//! indexes that point outside the model folder. Each is an error naming what is wrong — never a
//! panic, a wrapped value, an out-of-memory kill or a file read from elsewhere. (Hostile data
//! files: phi-data's `tests/integration/hostile_input.rs`.)

use crate::common;

use burn::tensor::Device;
use common::fixture;
use phi_core::{PhiConfig, PhiForCausalLM};
use serde_json::{Value, json};

fn config_error(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(fixture("phi3-tiny/config.json")).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    PhiConfig::from_hf_json(&v).map(|_| ()).expect_err("must be refused").to_string()
}

#[test]
fn absurd_sizes_are_errors_before_anything_is_allocated() {
    for (key, value) in [
        ("max_position_embeddings", json!(1_000_000_000_000u64)),
        ("max_position_embeddings", json!(u64::MAX)),
        ("vocab_size", json!(1u64 << 40)),
        ("hidden_size", json!(1u64 << 20)),
        ("num_hidden_layers", json!(1u64 << 30)),
        ("intermediate_size", json!(u64::MAX)),
    ] {
        let e = config_error(|o| {
            o.insert(key.into(), value.clone());
        });
        assert!(e.contains(&format!("`{key}`")) && e.contains("beyond any Phi model"), "{key} = {value}: {e}");
    }
    // 1e12 written as a float is no integer at all.
    let e = config_error(|o| {
        o.insert("max_position_embeddings".into(), json!(1e12));
    });
    assert!(e.contains("`max_position_embeddings`") && e.contains("non-negative integer"), "{e}");
    // Each field within bounds, the product not: hidden × layers is bounded too.
    let e = config_error(|o| {
        o.insert("hidden_size".into(), json!(65536));
        o.insert("intermediate_size".into(), json!(262144));
        o.insert("num_attention_heads".into(), json!(512));
        o.insert("num_key_value_heads".into(), json!(512));
        o.insert("num_hidden_layers".into(), json!(4096));
    });
    assert!(e.contains("hidden_size/num_hidden_layers") && e.contains("parameters"), "{e}");
    // A config built in code is held to the same bounds when a model is made from it.
    let mut c = PhiConfig::phi_family(32, 2, 4, 64, 0.5);
    c.max_position_embeddings = usize::MAX;
    let e = PhiForCausalLM::init(c, &Device::default(), 0).map(|_| ()).expect_err("refused").to_string();
    assert!(e.contains("`max_position_embeddings`"), "{e}");
}

#[test]
fn token_ids_beyond_u32_are_errors_not_wrapped() {
    for key in ["eos_token_id", "bos_token_id", "pad_token_id"] {
        let e = config_error(|o| {
            o.insert(key.into(), json!(1u64 << 32)); // wrapped to 0 before
        });
        assert!(e.contains(&format!("`{key}`")) && e.contains("4294967296") && e.contains("32 bits"), "{e}");
    }
    let e = config_error(|o| {
        o.insert("eos_token_id".into(), json!([2, 4294967298u64]));
    });
    assert!(e.contains("`eos_token_id`") && e.contains("4294967298"), "{e}");
    let ok = config_error_free(|o| {
        o.insert("eos_token_id".into(), json!([2, u32::MAX]));
    });
    assert_eq!(ok.eos_token_ids, vec![2, u32::MAX]);
}

fn config_error_free(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> PhiConfig {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(fixture("phi3-tiny/config.json")).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    PhiConfig::from_hf_json(&v).unwrap()
}

#[test]
fn a_shard_index_pointing_outside_the_model_folder_is_refused() {
    let device = Device::default();
    for entry in ["../../etc/hostname", "/etc/hostname", "shards/../../x.safetensors", ""] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(fixture("phi-tiny/config.json"), dir.path().join("config.json")).unwrap();
        std::fs::copy(fixture("phi-tiny/model.safetensors"), dir.path().join("model-00001-of-00002.safetensors")).unwrap();
        let index = json!({"metadata": {}, "weight_map": {
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
            "lm_head.weight": entry,
        }});
        std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
        let e = PhiForCausalLM::from_pretrained(dir.path(), &device).map(|_| ()).expect_err("refused").to_string();
        assert!(
            e.contains("model.safetensors.index.json") && e.contains("weight_map[`lm_head.weight`]") && e.contains(&format!("{entry:?}")) && e.contains("outside the model folder"),
            "{entry}: {e}"
        );
    }
    // Shards inside the folder, a subfolder included, still load.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("phi-tiny/config.json"), dir.path().join("config.json")).unwrap();
    std::fs::create_dir(dir.path().join("shards")).unwrap();
    std::fs::copy(fixture("phi-tiny/model.safetensors"), dir.path().join("shards/model-00001-of-00001.safetensors")).unwrap();
    let index = json!({"weight_map": {"model.embed_tokens.weight": "./shards/model-00001-of-00001.safetensors"}});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    PhiForCausalLM::from_pretrained(dir.path(), &device).unwrap();
}
