//! One decoder layer, parallel (Phi-1/2) or sequential (Phi-3).

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::Tensor;

use crate::attention::PhiAttention;
use crate::config::{BlockKind, PhiConfig};
use crate::error::Result;
use crate::kv_cache::LayerCache;
use crate::mlp::Mlp;
use crate::nn::Norm;
use crate::rope::Rope;
use crate::weights::{ParamSource, StateDict};

#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub input_layernorm: Norm,
    /// Only in sequential blocks: the parallel block feeds one normed input to both branches.
    pub post_attention_layernorm: Option<Norm>,
    pub self_attn: PhiAttention,
    pub mlp: Mlp,
    pub resid_dropout: Dropout,
}

impl DecoderLayer {
    pub fn load(src: &mut impl ParamSource, prefix: &str, c: &PhiConfig) -> Result<Self> {
        let norm = |src: &mut _, name: &str| Norm::load(src, &format!("{prefix}.{name}"), c.norm, c.hidden_size, c.norm_eps);
        let input_layernorm = norm(src, "input_layernorm")?;
        let post_attention_layernorm = match c.block {
            BlockKind::Parallel => None,
            BlockKind::Sequential => Some(norm(src, "post_attention_layernorm")?),
        };
        Ok(DecoderLayer {
            input_layernorm,
            post_attention_layernorm,
            self_attn: PhiAttention::load(src, &format!("{prefix}.self_attn"), c)?,
            mlp: Mlp::load(src, &format!("{prefix}.mlp"), c)?,
            resid_dropout: DropoutConfig::new(c.resid_pdrop).init(),
        })
    }

    pub fn save(&self, prefix: &str, out: &mut StateDict) {
        self.input_layernorm.save(&format!("{prefix}.input_layernorm"), out);
        if let Some(n) = &self.post_attention_layernorm {
            n.save(&format!("{prefix}.post_attention_layernorm"), out);
        }
        self.self_attn.save(&format!("{prefix}.self_attn"), out);
        self.mlp.save(&format!("{prefix}.mlp"), out);
    }

    pub fn forward(&self, x: Tensor<3>, rope: &Rope, cache: Option<&mut LayerCache>) -> Tensor<3> {
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
