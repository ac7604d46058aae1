//! One decoder layer, parallel (Phi-1/2) or sequential (Phi-3).

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Device, Tensor};

use crate::attention::PhiAttention;
use crate::config::{BlockKind, PhiConfig};
use crate::kv_cache::LayerCaches;
use crate::mlp::Mlp;
use crate::nn::Norm;
use crate::rope::Rope;
use crate::tree::{listing, part};

#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub input_layernorm: Norm,
    /// Only in sequential blocks: the parallel block feeds one normed input to both branches.
    pub post_attention_layernorm: Option<Norm>,
    pub self_attn: PhiAttention,
    pub mlp: Mlp,
    pub resid_dropout: Dropout,
}

listing!(DecoderLayer, |this, key, out| {
    let DecoderLayer { input_layernorm, post_attention_layernorm, self_attn, mlp, .. } = this;
    part(out, key, "input_layernorm", input_layernorm);
    part(out, key, "post_attention_layernorm", post_attention_layernorm);
    part(out, key, "self_attn", self_attn);
    part(out, key, "mlp", mlp);
});

impl DecoderLayer {
    /// An empty decoder layer of `c`'s layout, to be loaded (see [`crate::tree`]).
    pub fn new(c: &PhiConfig, device: &Device) -> Self {
        let norm = || Norm::new(c.norm, c.hidden_size, c.norm_eps, device);
        DecoderLayer {
            input_layernorm: norm(),
            post_attention_layernorm: match c.block {
                BlockKind::Parallel => None,
                BlockKind::Sequential => Some(norm()),
            },
            self_attn: PhiAttention::new(c, device),
            mlp: Mlp::new(c, device),
            resid_dropout: DropoutConfig::new(c.resid_pdrop).init(),
        }
    }

    pub fn forward<'c>(&self, x: Tensor<3>, rope: &Rope, cache: impl Into<LayerCaches<'c>>) -> Tensor<3> {
        match &self.post_attention_layernorm {
            None => {
                let h = self.input_layernorm.forward(x.clone());
                let attn = self.self_attn.forward(h.clone(), rope, cache);
                let mlp = self.mlp.forward(h);
                self.resid_dropout.forward(attn) + self.resid_dropout.forward(mlp) + x
            }
            Some(post_norm) => {
                let attn = self.self_attn.forward(self.input_layernorm.forward(x.clone()), rope, cache);
                let x = x + self.resid_dropout.forward(attn);
                let mlp = self.mlp.forward(post_norm.forward(x.clone()));
                x + self.resid_dropout.forward(mlp)
            }
        }
    }
}
