//! AdamW with every hyper-parameter explicit (burn's defaults differ from torch's: eps 1e-5 vs
//! 1e-8, weight decay 1e-4 vs 1e-2), and an optional no-decay group for biases, norms and
//! embeddings.

use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::{AdamWConfig, ModuleOptimizer};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Exempt 1-D parameters (biases, norm weights) and the token embedding from weight decay,
    /// as GPT-style recipes do. `false` decays every parameter, like a plain `torch.optim.AdamW`.
    pub no_decay_for_bias_norm_embedding: bool,
}

impl Default for AdamWSettings {
    /// torch.optim.AdamW's defaults.
    fn default() -> Self {
        AdamWSettings { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, no_decay_for_bias_norm_embedding: false }
    }
}

impl AdamWSettings {
    fn config(&self, weight_decay: f64) -> AdamWConfig {
        AdamWConfig::new()
            .with_beta_1(self.beta1 as f32)
            .with_beta_2(self.beta2 as f32)
            .with_epsilon(self.eps as f32)
            .with_weight_decay(weight_decay as f32)
    }

    /// The optimizer for `model`. The no-decay group holds every parameter of rank < 2 and the
    /// embedding table (`embedding_ids`).
    pub fn build<M: Module>(&self, model: &M, embedding_ids: &[ParamId]) -> ModuleOptimizer {
        let optim = self.config(self.weight_decay).init();
        if !self.no_decay_for_bias_norm_embedding || self.weight_decay == 0.0 {
            return optim;
        }
        let mut ids = LowRankIds(Vec::new());
        model.visit(&mut ids);
        ids.0.extend_from_slice(embedding_ids);
        optim.with_group(ParamGroup::from_ids(ids.0), self.config(0.0).build(), None)
    }
}

/// Collects the ids of 1-D parameters (biases and norm weights).
struct LowRankIds(Vec<ParamId>);

impl ModuleVisitor for LowRankIds {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if D < 2 {
            self.0.push(param.id);
        }
    }
}
