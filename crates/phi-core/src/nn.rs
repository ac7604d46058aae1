//! The few layers a Phi model is made of. Keys are HF's; one layout differs: `Linear.weight` is
//! kept `[in, out]` (transposed once at load and save), because a transposed view in the
//! forward pass makes burn copy the whole matrix on every call for small batches.

use burn::module::{Module, Param};
use burn::tensor::activation::{gelu, relu, silu};
use burn::tensor::module::{embedding, layer_norm, linear};
use burn::tensor::{Int, Tensor};

use crate::config::{Activation, NormKind};
use crate::error::Result;
use crate::weights::{Init, ParamSource, StateDict};

/// `y = x W + b`: `weight` is `[in, out]`, the transpose of `torch.nn.Linear.weight`.
#[derive(Module, Debug)]
pub struct Linear {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    pub fn load(
        src: &mut impl ParamSource,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        std: f64,
    ) -> Result<Self> {
        let weight = src.take(&format!("{prefix}.weight"), [d_out, d_in], Init::Normal(std))?;
        // Materialise the transpose once, contiguous.
        let weight = Param::from_tensor(Tensor::from_data(weight.transpose().into_data(), src.device()));
        let bias = if bias {
            Some(Param::from_tensor(src.take(&format!("{prefix}.bias"), [d_out], Init::Zeros)?))
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        linear(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()))
    }

    pub fn save(&self, prefix: &str, out: &mut StateDict) {
        out.put(format!("{prefix}.weight"), self.weight.val().transpose());
        if let Some(b) = &self.bias {
            out.put(format!("{prefix}.bias"), b.val());
        }
    }
}

/// Token embedding table `[vocab, hidden]`.
#[derive(Module, Debug)]
pub struct Embedding {
    pub weight: Param<Tensor<2>>,
}

impl Embedding {
    pub fn load(src: &mut impl ParamSource, prefix: &str, vocab: usize, hidden: usize, std: f64) -> Result<Self> {
        Ok(Embedding {
            weight: Param::from_tensor(src.take(&format!("{prefix}.weight"), [vocab, hidden], Init::Normal(std))?),
        })
    }

    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        embedding(self.weight.val(), ids)
    }

    pub fn save(&self, prefix: &str, out: &mut StateDict) {
        out.put(format!("{prefix}.weight"), self.weight.val());
    }
}

/// LayerNorm (weight and bias) or RMSNorm (weight), over the last dimension.
#[derive(Module, Debug)]
pub struct Norm {
    pub weight: Param<Tensor<1>>,
    pub bias: Option<Param<Tensor<1>>>,
    #[module(skip)]
    pub eps: f64,
}

impl Norm {
    pub fn load(src: &mut impl ParamSource, prefix: &str, kind: NormKind, dim: usize, eps: f64) -> Result<Self> {
        let weight = Param::from_tensor(src.take(&format!("{prefix}.weight"), [dim], Init::Ones)?);
        let bias = match kind {
            NormKind::LayerNorm => Some(Param::from_tensor(src.take(&format!("{prefix}.bias"), [dim], Init::Zeros)?)),
            NormKind::RmsNorm => None,
        };
        Ok(Norm { weight, bias, eps })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match &self.bias {
            Some(bias) => layer_norm(x, self.weight.val(), Some(bias.val()), self.eps),
            None => phi_kernels::rms_norm(x, self.weight.val(), self.eps),
        }
    }

    pub fn save(&self, prefix: &str, out: &mut StateDict) {
        out.put(format!("{prefix}.weight"), self.weight.val());
        if let Some(b) = &self.bias {
            out.put(format!("{prefix}.bias"), b.val());
        }
    }
}

/// Applies `act` element-wise.
pub fn activate<const D: usize>(act: Activation, x: Tensor<D>) -> Tensor<D> {
    match act {
        Activation::GeluTanh => gelu_tanh(x),
        Activation::Gelu => gelu(x),
        Activation::Silu => silu(x),
        Activation::Relu => relu(x),
    }
}

/// `gelu_new`, the tanh-approximate GELU of Phi-1/2 (a fused kernel on the CPU backend).
pub use phi_kernels::gelu_tanh;
