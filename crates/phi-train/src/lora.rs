//! LoRA adapters in PEFT's format: attach to the projections PEFT names (`q_proj`, `dense`,
//! `fc1`, `qkv_proj`, `gate_up_proj`, …), train only them, save and load
//! `adapter_config.json` + `adapter_model.safetensors`, merge into the base weights.
//!
//! The base model is frozen (no gradients, hence no optimizer state). `save_pretrained` of an
//! unmerged model writes the base weights only: save the adapter, or [`merge`] first.

use std::path::Path;

use burn::module::Module;
use burn::tensor::{DType, Distribution, Tensor};
use phi_core::nn::{LoraAdapter, param};
use phi_core::weights::{CheckpointReader, Init, ParamSource, StateDict, write_atomic};
use phi_core::{PhiConfig, PhiForCausalLM};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{Result, TrainError};

/// The PEFT `LoraConfig` fields that define the adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    /// Last components of the projection keys (`q_proj`, `fc1`, …).
    pub target_modules: Vec<String>,
    /// rsLoRA: scale `alpha / √r` instead of `alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        if self.use_rslora { self.lora_alpha / (self.r as f64).sqrt() } else { self.lora_alpha / self.r as f64 }
    }

    fn targets(&self, key: &str) -> bool {
        let last = key.rsplit('.').next().unwrap_or(key);
        self.target_modules.iter().any(|t| t == last)
    }

    fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(TrainError::Invalid("LoRA r must be positive".into()));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(TrainError::Invalid(format!("lora_dropout {} is not in [0, 1)", self.lora_dropout)));
        }
        if self.target_modules.is_empty() {
            return Err(TrainError::Invalid("LoRA target_modules is empty".into()));
        }
        Ok(())
    }
}

/// Every projection of a model with `config` (what LoRA can target), as `(key, d_in, d_out)`
/// in checkpoint order — the shapes `PhiForCausalLM::linears_mut` has, known without building
/// the model.
pub fn projection_shapes(config: &PhiConfig) -> Vec<(String, usize, usize)> {
    let (h, i, d) = (config.hidden_size, config.intermediate_size, config.head_dim);
    let (q, kv) = (config.num_attention_heads * d, config.num_key_value_heads * d);
    let mut out = Vec::new();
    for layer in 0..config.num_hidden_layers {
        let attn = format!("model.layers.{layer}.self_attn");
        let mlp = format!("model.layers.{layer}.mlp");
        if config.fused_qkv {
            out.push((format!("{attn}.qkv_proj"), h, q + 2 * kv));
            out.push((format!("{attn}.o_proj"), q, h));
        } else {
            out.push((format!("{attn}.q_proj"), h, q));
            out.push((format!("{attn}.k_proj"), h, kv));
            out.push((format!("{attn}.v_proj"), h, kv));
            out.push((format!("{attn}.dense"), q, h));
        }
        match config.mlp {
            phi_core::MlpKind::Plain => {
                out.push((format!("{mlp}.fc1"), h, i));
                out.push((format!("{mlp}.fc2"), i, h));
            }
            phi_core::MlpKind::Gated => {
                out.push((format!("{mlp}.gate_up_proj"), h, 2 * i));
                out.push((format!("{mlp}.down_proj"), i, h));
            }
        }
    }
    if !config.tie_word_embeddings {
        out.push(("lm_head".to_string(), h, config.vocab_size));
    }
    out
}

/// The adapter parameters `lora` puts on a model with `config`, after checking it fits:
/// at least one projection matches `target_modules`, and the rank is at most every targeted
/// projection's smaller side (the update `B·A` of a `d_in × d_out` matrix has rank at most
/// `min(d_in, d_out)`: a larger `r` adds only parameters, and memory). Nothing is allocated.
pub fn adapter_params(config: &PhiConfig, lora: &LoraConfig) -> Result<u64> {
    lora.validate()?;
    let targeted: Vec<(String, usize, usize)> = projection_shapes(config).into_iter().filter(|(key, _, _)| lora.targets(key)).collect();
    if targeted.is_empty() {
        return Err(TrainError::Invalid(format!("no projection matches LoRA target_modules {:?}", lora.target_modules)));
    }
    let (key, d_in, d_out) = targeted.iter().min_by_key(|(_, a, b)| (*a).min(*b)).expect("not empty");
    let limit = (*d_in).min(*d_out);
    if lora.r > limit {
        return Err(TrainError::Invalid(format!(
            "LoRA `rank` (r) {} is larger than the targeted projection {key} ({d_in} → {d_out}): an adapter's update has rank at most {limit}, \
             so the rank must be at most {limit}",
            lora.r
        )));
    }
    Ok(targeted.iter().map(|(_, a, b)| lora.r as u64 * (*a + *b) as u64).sum())
}

/// Parameters that receive gradients (the adapters, once the base is frozen).
pub fn trainable_params(model: &PhiForCausalLM) -> usize {
    use burn::module::{ModuleVisitor, Param};
    struct Count(usize);
    impl ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.is_require_grad() {
                self.0 += param.shape().num_elements();
            }
        }
    }
    let mut c = Count(0);
    model.visit(&mut c);
    c.0
}

/// Bits of a quantized (QLoRA-style) base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BaseQuantization {
    Int8,
    Int4,
}

impl std::fmt::Display for BaseQuantization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BaseQuantization::Int8 => "int8",
            BaseQuantization::Int4 => "int4",
        })
    }
}

/// Quantizes the weights of every projection of a frozen `model` (symmetric, per block of 32
/// values with an f32 scale each, through burn's quantization) while adapters stay f32: QLoRA's
/// memory trade. Returns the model and the bytes of the projection weights before and after.
pub fn quantize_base(mut model: PhiForCausalLM, bits: BaseQuantization) -> (PhiForCausalLM, u64, u64) {
    use burn::tensor::quantization::{QuantScheme, QuantValue, ScaleDtype};
    const BLOCK: u64 = 32;
    let value = match bits {
        BaseQuantization::Int8 => QuantValue::Q8S,
        BaseQuantization::Int4 => QuantValue::Q4S,
    };
    let scheme = QuantScheme::default().with_value(value).per_block([BLOCK as u8], ScaleDtype::F32);
    let (mut before, mut after) = (0u64, 0u64);
    for (_, lin) in model.linears_mut() {
        let w = lin.weight.val();
        let n = w.shape().num_elements() as u64;
        before += 4 * n;
        after += n * value.size_bits() as u64 / 8 + 4 * n.div_ceil(BLOCK);
        lin.set_weight(Tensor::from_inner(w.inner().quantize_dynamic(&scheme)), true);
    }
    (model, before, after)
}

/// PEFT's key for a projection's adapter matrix (`lora_A` / `lora_B`).
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
        return Err(TrainError::Invalid(format!("no projection matches LoRA target_modules {:?}", config.target_modules)));
    }
    Ok(model)
}

/// Loads a PEFT adapter folder onto `model` (frozen base, adapters trainable).
pub fn load(model: PhiForCausalLM, dir: impl AsRef<Path>) -> Result<PhiForCausalLM> {
    let dir = dir.as_ref();
    let config = read_config(dir)?;
    let device = model.device();
    let mut model = attach(model, &config)?;
    let mut reader = CheckpointReader::from_files(dir, vec![dir.join("adapter_model.safetensors")], &device, DType::F32)?;
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
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))?;
    if let Some(kind) = value.get("peft_type").and_then(|v| v.as_str()).filter(|k| *k != "LORA") {
        return Err(TrainError::Invalid(format!("{}: peft_type `{kind}` is not LORA", path.display())));
    }
    if value.get("use_dora").and_then(|v| v.as_bool()) == Some(true) {
        return Err(TrainError::Invalid(format!("{}: DoRA adapters are not supported", path.display())));
    }
    serde_json::from_value(value).map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))
}

/// Writes the adapters of `model` as a PEFT folder that `PeftModel.from_pretrained` loads.
pub fn save(model: &mut PhiForCausalLM, config: &LoraConfig, dir: impl AsRef<Path>) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let mut out = StateDict::default();
    for (key, lin) in model.linears_mut() {
        if let Some(adapter) = &lin.lora {
            out.put(peft_key(&key, "lora_A"), adapter.lora_a.val().transpose());
            out.put(peft_key(&key, "lora_B"), adapter.lora_b.val().transpose());
        }
    }
    if out.tensors.is_empty() {
        return Err(TrainError::Invalid("the model has no LoRA adapters to save".into()));
    }
    let arch = model.config().family.architecture();
    let cfg = json!({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": config.r, "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout, "target_modules": config.target_modules,
        "use_rslora": config.use_rslora, "bias": "none", "fan_in_fan_out": false, "inference_mode": true,
        "init_lora_weights": true, "base_model_name_or_path": null, "auto_mapping": {"base_model_class": arch},
    });
    let text = serde_json::to_string_pretty(&cfg).expect("JSON value serializes");
    write_atomic(&dir.join("adapter_config.json"), text.as_bytes())?;
    out.save(dir.join("adapter_model.safetensors"))?;
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
    use phi_core::tree::Role;
    use phi_core::{PhiConfig, PhiForCausalLM};

    use super::{LoraConfig, attach, save};

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
            let mut model = attach(base.clone(), &config(&targets)).unwrap();
            let dir = tempfile::tempdir().unwrap();
            save(&mut model, &config(&targets), dir.path()).unwrap();
            let bytes = std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap();
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
