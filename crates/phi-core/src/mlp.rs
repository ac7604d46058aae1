//! Feed-forward: `fc2(act(fc1 x))` (Phi-1/2) or SwiGLU from the fused `gate_up_proj` (Phi-3).

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::config::{Activation, MlpKind, PhiConfig};
use crate::nn::{Linear, activate};
use crate::tree::{listing, part};

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

listing!(Mlp, |this, key, out| {
    let Mlp { layers, .. } = this;
    match layers {
        MlpLayers::Plain(PlainMlp { fc1, fc2 }) => {
            part(out, key, "fc1", fc1);
            part(out, key, "fc2", fc2);
        }
        MlpLayers::Gated(GatedMlp { gate_up_proj, down_proj }) => {
            part(out, key, "gate_up_proj", gate_up_proj);
            part(out, key, "down_proj", down_proj);
        }
    }
});

impl Mlp {
    /// An empty MLP of `c`'s layout, to be loaded (see [`crate::tree`]).
    pub fn new(c: &PhiConfig, device: &Device) -> Self {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let linear = |d_in, d_out| Linear::new(d_in, d_out, c.linear_bias, device);
        let layers = match c.mlp {
            MlpKind::Plain => MlpLayers::Plain(PlainMlp { fc1: linear(h, i), fc2: linear(i, h) }),
            MlpKind::Gated => MlpLayers::Gated(GatedMlp { gate_up_proj: linear(h, 2 * i), down_proj: linear(i, h) }),
        };
        Mlp { layers, act: c.hidden_act }
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
