//! LoRA adapters in PEFT's format, in one place: the config (`adapter_config.json`), each
//! family's default targets, attaching fresh adapters, loading and saving a PEFT folder
//! (`adapter_config.json` + `adapter_model.safetensors`) and merging into the base weights —
//! what serving, exporting and training an adapter all need.
//!
//! The adapter is [`LoraAdapter`] on a [`Linear`](crate::nn::Linear). Targets are found through
//! the model's listing ([`PhiForCausalLM::linears_mut`]): a projection is adapted when the last
//! component of its key is in `target_modules`, and its adapter's keys are PEFT's prefix on the
//! listed key (`base_model.model.{key}.lora_A.weight`); nothing here spells a projection's name.
//! Training adapters (the trainable count, a quantized base) is phi-train's.
//!
//! [`attach`] freezes the base (no gradients, hence no optimizer state): `save_pretrained` of an
//! unmerged model writes the base weights only — [`save`] the adapter, or [`merge`] first.
//!
//! ```
//! use burn::tensor::Device;
//! use phi_core::lora::{self, LoraConfig};
//! use phi_core::{Family, PhiConfig, PhiForCausalLM};
//!
//! let base = PhiForCausalLM::init(PhiConfig::phi_family(32, 2, 4, 64, 0.5), &Device::flex(), 0)?;
//! let config = LoraConfig { r: 4, lora_alpha: 8.0, lora_dropout: 0.0, target_modules: lora::default_targets(Family::Phi), use_rslora: false };
//! let adapted = lora::attach(base.clone(), &config)?;
//! let dir = std::env::temp_dir().join(format!("lora-doc-{}", std::process::id()));
//! lora::save(&adapted, &config, &dir)?;
//! let mut merged = lora::merge(lora::load(base, &dir)?);
//! assert!(merged.linears_mut().iter().all(|(_, l)| l.lora.is_none()));
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), phi_core::Error>(())
//! ```

use std::path::Path;

use burn::module::Module;
use burn::tensor::{DType, Device, Distribution, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::{Family, PhiConfig};
use crate::error::{Error, Result};
use crate::model::PhiForCausalLM;
use crate::nn::param;
use crate::tree::Leaf;
use crate::weights::{CheckpointReader, Init, ParamSource, StateDict, write_atomic};

pub use crate::nn::LoraAdapter;

/// A PEFT adapter folder's (and a LoRA checkpoint's) adapter config.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// A PEFT adapter folder's (and a LoRA checkpoint's) adapter weights.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The PEFT `LoraConfig` fields that define the adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    /// Last components of the projection keys (`q_proj`, `fc1`, …; [`default_targets`]).
    pub target_modules: Vec<String>,
    /// rsLoRA: scale `alpha / √r` instead of `alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        if self.use_rslora { self.lora_alpha / (self.r as f64).sqrt() } else { self.lora_alpha / self.r as f64 }
    }

    /// Whether the projection under `key` is targeted (its last key component is named).
    fn targets(&self, key: &str) -> bool {
        let last = key.rsplit('.').next().unwrap_or(key);
        self.target_modules.iter().any(|t| t == last)
    }

    fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(Error::Lora("LoRA r must be positive".into()));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(Error::Lora(format!("lora_dropout {} is not in [0, 1)", self.lora_dropout)));
        }
        if self.target_modules.is_empty() {
            return Err(Error::Lora("LoRA target_modules is empty".into()));
        }
        Ok(())
    }
}

/// The family's default `target_modules`: every projection of a decoder layer, by name, in
/// checkpoint order — `q_proj`, `k_proj`, `v_proj`, `dense`, `fc1`, `fc2` for `phi` (Phi-1, 1.5,
/// 2); `qkv_proj`, `o_proj`, `gate_up_proj`, `down_proj` for `phi3` (Phi-3, 3.5, 4-mini) — and
/// not the LM head (as PEFT's `all-linear`). Read from the listing of a one-layer model of the
/// family with a tied head (the family fixes the projection layout, [`Family::layout`]), so the
/// names are the listing's, spelled nowhere else. The one list of default targets: the tool's
/// `--targets` defaults and the benchmarks' adapters take it from here.
pub fn default_targets(family: Family) -> Vec<String> {
    let layer = match family {
        Family::Phi => PhiConfig::phi_family(32, 1, 4, 64, 0.5),
        Family::Phi3 => PhiConfig::phi3_family(32, 1, 4, 4, 64, 64),
    };
    let mut names: Vec<String> = Vec::new();
    for (key, _, _) in projection_shapes(&PhiConfig { tie_word_embeddings: true, ..layer }) {
        let name = key.rsplit('.').next().unwrap_or(&key).to_string();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// Every projection of a model with `config` (what LoRA can target), as `(key, d_in, d_out)`
/// in checkpoint order — what [`PhiForCausalLM::linears_mut`] lists once the model is built,
/// read from the listing of an unloaded model: nothing is allocated.
pub fn projection_shapes(config: &PhiConfig) -> Vec<(String, usize, usize)> {
    let skeleton = PhiForCausalLM::unloaded(config.clone(), &Device::flex());
    skeleton
        .leaves()
        .into_iter()
        .filter_map(|(key, leaf)| match leaf {
            Leaf::Linear(lin) => {
                let [d_in, d_out] = lin.weight.lazy_shape().dims();
                Some((key, d_in, d_out))
            }
            _ => None,
        })
        .collect()
}

/// The adapter parameters `lora` puts on a model with `config`, after checking it fits:
/// at least one projection matches `target_modules`, and the rank is at most every targeted
/// projection's smaller side (the update `B·A` of a `d_in × d_out` matrix has rank at most
/// `min(d_in, d_out)`: a larger `r` adds only parameters, and memory). Nothing is allocated.
pub fn adapter_params(config: &PhiConfig, lora: &LoraConfig) -> Result<u64> {
    lora.validate()?;
    let targeted: Vec<(String, usize, usize)> = projection_shapes(config).into_iter().filter(|(key, _, _)| lora.targets(key)).collect();
    if targeted.is_empty() {
        return Err(Error::Lora(format!("no projection matches LoRA target_modules {:?}", lora.target_modules)));
    }
    let (key, d_in, d_out) = targeted.iter().min_by_key(|(_, a, b)| (*a).min(*b)).expect("not empty");
    let limit = (*d_in).min(*d_out);
    if lora.r > limit {
        return Err(Error::Lora(format!(
            "LoRA `rank` (r) {} is larger than the targeted projection {key} ({d_in} → {d_out}): an adapter's update has rank at most {limit}, \
             so the rank must be at most {limit}",
            lora.r
        )));
    }
    Ok(targeted.iter().map(|(_, a, b)| lora.r as u64 * (*a + *b) as u64).sum())
}

/// PEFT's key for the adapter matrix `which` (`lora_A` / `lora_B`) of the projection listed
/// under `prefix`.
fn peft_key(prefix: &str, which: &str) -> String {
    format!("base_model.model.{prefix}.{which}.weight")
}

/// Freezes `model` and attaches fresh adapters to every targeted projection: `A` as PEFT
/// initialises it (Kaiming-uniform with a = √5, i.e. U(±1/√in)), `B` zero — so the adapted model
/// starts equal to the base. Errors if no projection matches.
pub fn attach(model: PhiForCausalLM, config: &LoraConfig) -> Result<PhiForCausalLM> {
    // Checked on the shapes before any adapter is allocated: a rank beyond the projections'
    // sides is refused by name, not attempted.
    // (A loaded adapter is held to it too: its `r` sizes the tensors allocated before the file's
    // are read, so an absurd one must not be attempted either.)
    adapter_params(model.config(), config)?;
    let mut model = model.no_grad();
    let device = model.device();
    let mut attached = 0;
    for (key, lin) in model.linears_mut() {
        if !config.targets(&key) {
            continue;
        }
        let (d_in, d_out) = lin.dims();
        let bound = 1.0 / (d_in as f64).sqrt();
        let a = Tensor::random([d_in, config.r], Distribution::Uniform(-bound, bound), &device);
        let b = Tensor::zeros([config.r, d_out], &device);
        lin.lora = Some(LoraAdapter {
            lora_a: param(&peft_key(&key, "lora_A"), a),
            lora_b: param(&peft_key(&key, "lora_B"), b),
            dropout: burn::nn::DropoutConfig::new(config.lora_dropout).init(),
            scale: config.scale(),
        });
        attached += 1;
    }
    if attached == 0 {
        return Err(Error::Lora(format!("no projection matches LoRA target_modules {:?}", config.target_modules)));
    }
    Ok(model)
}

/// Loads a PEFT adapter folder onto `model` (frozen base, adapters trainable).
pub fn load(model: PhiForCausalLM, dir: impl AsRef<Path>) -> Result<PhiForCausalLM> {
    // A hub id (`org/name`) is resolved through the hub cache, as a model's is.
    let dir = crate::hub::resolve(dir.as_ref(), crate::hub::Kind::Adapter)?;
    let dir = dir.as_path();
    let config = read_config(dir)?;
    let device = model.device();
    let mut model = attach(model, &config)?;
    let mut reader = CheckpointReader::from_files(dir, vec![dir.join(ADAPTER_WEIGHTS_FILE)], &device, DType::F32)?;
    for (key, lin) in model.linears_mut() {
        let Some(adapter) = &mut lin.lora else { continue };
        let (d_in, d_out) = (adapter.lora_a.val().dims()[0], adapter.lora_b.val().dims()[1]);
        let (ka, kb) = (peft_key(&key, "lora_A"), peft_key(&key, "lora_B"));
        let a: Tensor<2> = reader.take(&ka, [config.r, d_in], Init::Zeros)?;
        let b: Tensor<2> = reader.take(&kb, [d_out, config.r], Init::Zeros)?;
        adapter.lora_a = param(&ka, Tensor::from_data(a.transpose().into_data(), &device));
        adapter.lora_b = param(&kb, Tensor::from_data(b.transpose().into_data(), &device));
    }
    reader.finish()?;
    Ok(model)
}

/// The `adapter_config.json` of a PEFT folder (LoRA only; DoRA refused).
pub fn read_config(dir: &Path) -> Result<LoraConfig> {
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Lora(format!("{}: {e}", path.display())))?;
    if let Some(kind) = value.get("peft_type").and_then(|v| v.as_str()).filter(|k| *k != "LORA") {
        return Err(Error::Lora(format!("{}: peft_type `{kind}` is not LORA", path.display())));
    }
    if value.get("use_dora").and_then(|v| v.as_bool()) == Some(true) {
        return Err(Error::Lora(format!("{}: DoRA adapters are not supported", path.display())));
    }
    serde_json::from_value(value).map_err(|e| Error::Lora(format!("{}: {e}", path.display())))
}

/// Writes the adapters of `model` as a PEFT folder that `PeftModel.from_pretrained` loads.
pub fn save(model: &PhiForCausalLM, config: &LoraConfig, dir: impl AsRef<Path>) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut out = StateDict::default();
    for (key, leaf) in model.leaves() {
        if let Leaf::Linear(lin) = leaf
            && let Some(adapter) = &lin.lora
        {
            out.put(peft_key(&key, "lora_A"), adapter.lora_a.val().transpose());
            out.put(peft_key(&key, "lora_B"), adapter.lora_b.val().transpose());
        }
    }
    if out.tensors.is_empty() {
        return Err(Error::Lora("the model has no LoRA adapters to save".into()));
    }
    let arch = model.config().family.architecture();
    let cfg = json!({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": config.r, "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout, "target_modules": config.target_modules,
        "use_rslora": config.use_rslora, "bias": "none", "fan_in_fan_out": false, "inference_mode": true,
        "init_lora_weights": true, "base_model_name_or_path": null, "auto_mapping": {"base_model_class": arch},
    });
    let text = serde_json::to_string_pretty(&cfg).expect("JSON value serializes");
    write_atomic(&dir.join(ADAPTER_CONFIG_FILE), text.as_bytes())?;
    out.save(dir.join(ADAPTER_WEIGHTS_FILE))?;
    Ok(())
}

/// Folds every adapter into its base weight (`W += scale · A B`) and removes it: a plain f32
/// model whose `save_pretrained` output is an ordinary HF checkpoint (a quantized base is
/// dequantized first).
pub fn merge(mut model: PhiForCausalLM) -> PhiForCausalLM {
    for (_, lin) in model.linears_mut() {
        if let Some(adapter) = lin.lora.take() {
            let delta = adapter.lora_a.val().matmul(adapter.lora_b.val()) * adapter.scale;
            // A quantized (QLoRA) base merges into full precision.
            lin.set_weight(lin.weight.val().dequantize() + delta, false);
        }
    }
    model
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::{LoraConfig, attach, default_targets, save};
    use crate::tree::Role;
    use crate::{Family, PhiConfig, PhiForCausalLM};

    fn config(targets: &[&str]) -> LoraConfig {
        LoraConfig { r: 2, lora_alpha: 4.0, lora_dropout: 0.0, target_modules: targets.iter().map(|t| t.to_string()).collect(), use_rslora: false }
    }

    /// Adapters go on the projections of the model's listing whose last key component is targeted,
    /// and are saved under those keys.
    #[test]
    fn lora_targets_are_found_through_the_listing() {
        let phi = PhiConfig::phi_family(32, 2, 4, 64, 0.5);
        let phi3 = PhiConfig::phi3_family(32, 2, 4, 2, 48, 64);
        for (config_, targets) in [
            (phi, vec!["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2", "lm_head"]),
            (phi3, vec!["qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head"]),
        ] {
            let base = PhiForCausalLM::init(config_, &Device::default(), 0).unwrap();
            let projections: Vec<String> = base
                .named_params()
                .into_iter()
                .filter(|(_, role, _)| *role == Role::Projection)
                .map(|(k, _, _)| k.strip_suffix(".weight").unwrap().to_string())
                .collect();
            assert_eq!(projections.len(), 2 * (targets.len() - 1) + 1);
            // Each target alone: exactly the listed projections of that name.
            for t in &targets {
                let mut model = attach(base.clone(), &config(&[t])).unwrap();
                let adapted: Vec<String> =
                    model.linears_mut().into_iter().filter(|(_, l)| l.lora.is_some()).map(|(k, _)| k).collect();
                let expected: Vec<String> =
                    projections.iter().filter(|k| k.rsplit('.').next() == Some(*t)).cloned().collect();
                assert!(!expected.is_empty());
                assert_eq!(adapted, expected, "{t}");
            }
            // All of them: every listed projection, saved under PEFT's keys for those names.
            let model = attach(base.clone(), &config(&targets)).unwrap();
            let dir = tempfile::tempdir().unwrap();
            save(&model, &config(&targets), dir.path()).unwrap();
            let bytes = std::fs::read(dir.path().join(super::ADAPTER_WEIGHTS_FILE)).unwrap();
            let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let mut saved: Vec<String> = file.names().into_iter().map(str::to_string).collect();
            saved.sort();
            let mut expected: Vec<String> = projections
                .iter()
                .flat_map(|k| ["lora_A", "lora_B"].map(|w| format!("base_model.model.{k}.{w}.weight")))
                .collect();
            expected.sort();
            assert_eq!(saved, expected);
        }
    }

    /// The default targets are every decoder-layer projection of the family, by name: all of
    /// them but the head, on any model of the family.
    #[test]
    fn default_targets_are_every_layer_projection_of_the_family() {
        assert_eq!(default_targets(Family::Phi), ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]);
        assert_eq!(default_targets(Family::Phi3), ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]);
        let qk = PhiConfig { qk_layernorm: true, ..PhiConfig::phi_family(32, 2, 4, 64, 0.5) };
        for c in [qk, PhiConfig::phi3_family(32, 2, 4, 2, 48, 64)] {
            let mut model = attach(PhiForCausalLM::init(c.clone(), &Device::default(), 0).unwrap(), &LoraConfig { target_modules: default_targets(c.family), ..config(&[]) }).unwrap();
            let bare: Vec<String> = model.linears_mut().into_iter().filter(|(_, l)| l.lora.is_none()).map(|(k, _)| k).collect();
            assert_eq!(bare, ["lm_head"], "{:?}", c.family);
        }
    }

    /// The shapes known from the config alone (what the rank check and the memory estimate
    /// use) are the built model's, projection for projection.
    #[test]
    fn projection_shapes_are_the_built_models() {
        for c in [PhiConfig::phi_family(32, 2, 4, 64, 0.5), PhiConfig::phi3_family(32, 2, 4, 2, 48, 64), PhiConfig { tie_word_embeddings: true, ..PhiConfig::phi3_family(32, 1, 4, 1, 40, 64) }] {
            let mut model = PhiForCausalLM::init(c.clone(), &Device::default(), 0).unwrap();
            let built: Vec<(String, usize, usize)> = model.linears_mut().into_iter().map(|(k, l)| (k, l.dims().0, l.dims().1)).collect();
            assert_eq!(super::projection_shapes(&c), built);
        }
    }

    #[test]
    fn a_rank_beyond_the_projections_sides_is_refused_naming_rank_before_allocating() {
        let c = PhiConfig::phi3_family(32, 2, 4, 2, 48, 64);
        let lora = |r| LoraConfig { r, ..config(&["qkv_proj", "down_proj"]) };
        // qkv_proj is 32 → 64, down_proj 48 → 32: rank 32 is the most either can take.
        assert_eq!(super::adapter_params(&c, &lora(32)).unwrap(), 2 * 32 * ((32 + 64) + (48 + 32)));
        // 100000 × (32 + 64) adapters would be allocated first without the check.
        let base = PhiForCausalLM::init(c.clone(), &Device::default(), 0).unwrap();
        let e = attach(base, &lora(100_000)).err().expect("refused").to_string();
        assert!(e.contains("`rank`") && e.contains("100000") && e.contains("at most 32"), "{e}");
        let e = super::adapter_params(&c, &config(&["nothing"])).unwrap_err().to_string();
        assert!(e.contains("no projection matches"), "{e}");
    }
}
