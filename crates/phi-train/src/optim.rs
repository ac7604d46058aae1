//! AdamW with every hyper-parameter explicit (burn's defaults differ from torch's: eps 1e-5 vs
//! 1e-8, weight decay 1e-4 vs 1e-2), and an optional no-decay group for biases, norms and
//! embeddings.

use burn::module::{ParamGroup, ParamId};
use burn::optim::{AdamWConfig, ModuleOptimizer};
use phi_core::PhiForCausalLM;
use phi_core::tree::Role;
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

    /// The optimizer for `model`. With `no_decay_for_bias_norm_embedding` (and a weight decay),
    /// the parameters of [`no_decay_ids`] form a group without decay.
    pub fn build(&self, model: &PhiForCausalLM) -> ModuleOptimizer {
        let optim = self.config(self.weight_decay).init();
        if !self.no_decay_for_bias_norm_embedding || self.weight_decay == 0.0 {
            return optim;
        }
        optim.with_group(ParamGroup::from_ids(no_decay_ids(model)), self.config(0.0).build(), None)
    }
}

/// The parameters GPT-style recipes exempt from weight decay, from the model's listing: every
/// 1-D one (biases and norm scales) and the token embedding table.
pub fn no_decay_ids(model: &PhiForCausalLM) -> Vec<ParamId> {
    model
        .named_params()
        .into_iter()
        .filter(|(_, role, p)| p.rank() < 2 || *role == Role::Embedding)
        .map(|(_, _, p)| p.id())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use burn::module::{Module, ModuleVisitor, Param, ParamId};
    use burn::tensor::{Device, Tensor};
    use phi_core::{PhiConfig, PhiForCausalLM};

    use super::no_decay_ids;

    /// The group as it was defined before the listing: burn's 1-D parameters plus the table.
    fn one_d_and_embedding(model: &PhiForCausalLM) -> BTreeSet<ParamId> {
        struct OneD(BTreeSet<ParamId>);
        impl ModuleVisitor for OneD {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                if D < 2 {
                    self.0.insert(p.id);
                }
            }
        }
        let mut ids = OneD(BTreeSet::new());
        model.visit(&mut ids);
        ids.0.insert(model.model.embed_tokens.weight.id);
        ids.0
    }

    #[test]
    fn the_no_decay_group_is_exactly_the_1d_parameters_and_the_embedding() {
        let phi = PhiConfig::phi_family(32, 2, 4, 64, 0.5);
        let phi3 = PhiConfig::phi3_family(32, 2, 4, 2, 48, 64);
        for config in [PhiConfig { qk_layernorm: true, ..phi }, phi3.clone(), PhiConfig { tie_word_embeddings: true, ..phi3 }] {
            let model = PhiForCausalLM::init(config, &Device::default(), 0).unwrap();
            let ids = no_decay_ids(&model);
            let set: BTreeSet<ParamId> = ids.iter().copied().collect();
            assert_eq!(set.len(), ids.len(), "listed once each");
            assert_eq!(set, one_d_and_embedding(&model));
        }
    }
}
