//! Mixed precision without AMP: the optimizer keeps f32 master weights; each micro-batch runs
//! the forward (and so the backward) on a bf16/f16 copy of them, cast in the autodiff graph so
//! that the gradients land on the f32 masters in f32. Norms and the loss stay in f32 (norm layers
//! keep f32 weights and compute in f32; the loss casts the logits up), as AMP does.
//!
//! f16's narrow range needs loss scaling: the loss is multiplied by a scale before backward, the
//! gradients divided by it after; a step whose gradients overflow is skipped and the scale
//! halved, and after `growth_interval` good steps it doubles (torch's `GradScaler` policy).

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, Device, FloatDType, Tensor};
use phi_core::PhiForCausalLM;
use serde::{Deserialize, Serialize};

/// The dtype a training step computes in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32 (the CPU default).
    #[default]
    F32,
    /// bf16 compute, f32 master weights; no loss scaling needed (f32's exponent range).
    Bf16,
    /// f16 compute, f32 master weights, dynamic loss scaling.
    F16,
}

impl Precision {
    /// The name settings files and `--precision` use.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// An error unless `device` computes in this precision. A backend without the dtype does not
    /// fail loudly: wgpu's WGSL compiler has no bf16, and casting to it there trained three steps
    /// of wrong numbers, then overflowed. So ask before any work.
    pub fn check_device(self, device: &Device) -> crate::Result<()> {
        match self.dtype() {
            Some(dtype) if !device.supports_dtype(dtype) => Err(crate::TrainError::setting(
                "precision",
                self.name(),
                format!(
                    "precision = \"{0}\": this device cannot compute in {0}; use another precision (f16 or f32) or another backend (cuda, or cpu for bf16)",
                    self.name()
                ),
            )),
            _ => Ok(()),
        }
    }

    pub fn dtype(self) -> Option<FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(FloatDType::BF16),
            Precision::F16 => Some(FloatDType::F16),
        }
    }
}

/// Casts every float parameter outside norm layers to `dtype`, inside the autodiff graph: the
/// copy's parameters are functions of `model`'s, so gradients of a loss computed with the copy
/// are gradients with respect to `model`'s f32 weights (read them with `GradientsParams::from_grads(grads, &model)`).
pub fn compute_copy(model: &PhiForCausalLM, precision: Precision) -> PhiForCausalLM {
    match precision.dtype() {
        None => model.clone(),
        Some(dtype) => model.clone().map(&mut CastOutsideNorms { dtype, in_norm: 0 }),
    }
}

struct CastOutsideNorms {
    dtype: FloatDType,
    in_norm: usize,
}

impl ModuleMapper for CastOutsideNorms {
    fn enter_module(&mut self, _name: &str, container_type: &str) {
        self.in_norm += (container_type == "Struct:Norm") as usize;
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.in_norm -= (container_type == "Struct:Norm") as usize;
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.in_norm > 0 {
            return param;
        }
        let dtype = self.dtype;
        param.map(|t| t.cast(dtype))
    }
}

/// f32 logits for the loss (a no-op in f32).
pub fn to_f32<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    if t.dtype() == DType::F32 { t } else { t.cast(FloatDType::F32) }
}

/// Dynamic loss scale (f16); its state goes into checkpoints so that a resumed run scales alike.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossScaler {
    pub scale: f64,
    /// Good steps since the last change.
    pub good_steps: usize,
    pub growth_interval: usize,
}

impl Default for LossScaler {
    /// torch's `GradScaler` defaults: 2¹⁶, doubling every 2000 good steps.
    fn default() -> Self {
        LossScaler { scale: 65536.0, good_steps: 0, growth_interval: 2000 }
    }
}

impl LossScaler {
    /// Records a step whose unscaled gradient norm was `grad_norm`; returns whether to apply it.
    pub fn update(&mut self, grad_norm: f64) -> bool {
        if !grad_norm.is_finite() {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good_steps = 0;
            return false;
        }
        self.good_steps += 1;
        if self.good_steps >= self.growth_interval {
            self.scale *= 2.0;
            self.good_steps = 0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaler_halves_on_overflow_and_grows_after_good_steps() {
        let mut s = LossScaler { scale: 1024.0, good_steps: 0, growth_interval: 3 };
        assert!(!s.update(f64::INFINITY));
        assert_eq!(s.scale, 512.0);
        assert!(!s.update(f64::NAN));
        assert_eq!(s.scale, 256.0);
        assert!(s.update(1.0) && s.update(2.0));
        assert_eq!(s.scale, 256.0);
        assert!(s.update(0.5));
        assert_eq!((s.scale, s.good_steps), (512.0, 0));
    }
}
