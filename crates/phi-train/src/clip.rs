//! Gradient clipping by the norm of *all* gradients together, as
//! `torch.nn.utils.clip_grad_norm_` does (burn's own clipping works per tensor).

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

/// Scales every gradient by `max_norm / (norm + 1e-6)` when the global L2 norm exceeds
/// `max_norm`; returns the norm before clipping.
pub fn clip_grad_norm<M: Module>(module: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let norm = grad_norm(module, grads);
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        scale_grads(module, grads, coef);
    }
    norm
}

/// The L2 norm of all gradients together (0 without gradients; inf/NaN if any overflowed).
pub fn grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> f64 {
    let mut sum = SquaredSum { grads, total: None };
    module.visit(&mut sum);
    sum.total.map_or(0.0, |t| (t.into_scalar::<f32>() as f64).sqrt())
}

/// Multiplies every gradient by `coef`.
pub fn scale_grads<M: Module>(module: &M, grads: &mut GradientsParams, coef: f64) {
    module.visit(&mut Scale { grads, coef });
}

struct SquaredSum<'a> {
    grads: &'a GradientsParams,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredSum<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.square().sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + s,
                None => s,
            });
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    coef: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let id: ParamId = param.id;
        if let Some(g) = self.grads.remove::<D>(id) {
            self.grads.register(id, g * self.coef);
        }
    }
}
