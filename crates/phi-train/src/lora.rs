//! LoRA training. The adapters themselves — PEFT's config and folder format, attaching, loading,
//! saving, merging, each family's default targets — are [`phi_core::lora`], re-exported here
//! (`phi_train::lora::load` is `phi_core::lora::load`), so serving and exporting an adapter need
//! no training crate. What only training needs stays here: the count of parameters that take
//! gradients, and a quantized (QLoRA-style) frozen base.
//!
//! The base model is frozen (no gradients, hence no optimizer state). `save_pretrained` of an
//! unmerged model writes the base weights only: save the adapter, or [`merge`] first.

use burn::module::Module;
use burn::tensor::Tensor;
use phi_core::PhiForCausalLM;

pub use phi_core::lora::*;

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
