//! Feed-forward: `fc2(act(fc1 x))` (Phi-1/2) or SwiGLU from the fused `gate_up_proj` (Phi-3).

use burn::module::Module;
use burn::tensor::Tensor;

use crate::config::{Activation, MlpKind, PhiConfig};
use crate::error::Result;
use crate::nn::{Linear, activate};
use crate::weights::{ParamSource, StateDict};

#[derive(Module, Debug)]
pub struct PlainMlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

/// `gate_up_proj` holds `[gate; up]`: the gate is the first half of its output.
#[derive(Module, Debug)]
pub struct GatedMlp {
    pub gate_up_proj: Linear,
    pub down_proj: Linear,
}

#[derive(Module, Debug)]
pub enum MlpLayers {
    Plain(PlainMlp),
    Gated(GatedMlp),
}

#[derive(Module, Debug)]
pub struct Mlp {
    pub layers: MlpLayers,
    #[module(skip)]
    pub act: Activation,
}

impl Mlp {
    pub fn load(src: &mut impl ParamSource, prefix: &str, c: &PhiConfig) -> Result<Self> {
        let (h, i, bias, std) = (c.hidden_size, c.intermediate_size, c.linear_bias, c.initializer_range);
        let layers = match c.mlp {
            MlpKind::Plain => MlpLayers::Plain(PlainMlp {
                fc1: Linear::load(src, &format!("{prefix}.fc1"), h, i, bias, std)?,
                fc2: Linear::load(src, &format!("{prefix}.fc2"), i, h, bias, std)?,
            }),
            MlpKind::Gated => MlpLayers::Gated(GatedMlp {
                gate_up_proj: Linear::load(src, &format!("{prefix}.gate_up_proj"), h, 2 * i, bias, std)?,
                down_proj: Linear::load(src, &format!("{prefix}.down_proj"), i, h, bias, std)?,
            }),
        };
        Ok(Mlp { layers, act: c.hidden_act })
    }

    pub fn save(&self, prefix: &str, out: &mut StateDict) {
        match &self.layers {
            MlpLayers::Plain(m) => {
                m.fc1.save(&format!("{prefix}.fc1"), out);
                m.fc2.save(&format!("{prefix}.fc2"), out);
            }
            MlpLayers::Gated(m) => {
                m.gate_up_proj.save(&format!("{prefix}.gate_up_proj"), out);
                m.down_proj.save(&format!("{prefix}.down_proj"), out);
            }
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        match &self.layers {
            MlpLayers::Plain(m) => m.fc2.forward(activate(self.act, m.fc1.forward(x))),
            MlpLayers::Gated(m) => {
                let gate_up = m.gate_up_proj.forward(x);
                let hidden = if self.act == Activation::Silu {
                    phi_kernels::silu_glu(gate_up)
                } else {
                    let i = gate_up.dims()[2] / 2;
                    let gate = gate_up.clone().narrow(2, 0, i);
                    gate_up.narrow(2, i, i) * activate(self.act, gate)
                };
                m.down_proj.forward(hidden)
            }
        }
    }
}
