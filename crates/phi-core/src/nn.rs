//! The few layers a Phi model is made of. Keys are HF's; one layout differs: `Linear.weight` is
//! kept `[in, out]` (transposed once at load and save), because a transposed view in the
//! forward pass makes burn copy the whole matrix on every call for small batches.

use burn::module::{Module, Param, ParamId};
use burn::tensor::activation::{gelu, relu, silu};
use burn::tensor::module::{embedding, linear};
use burn::tensor::{Int, Tensor};

use crate::config::{Activation, NormKind};
use crate::error::Result;
use crate::weights::{Init, ParamSource, StateDict};

/// A parameter whose id is derived from its checkpoint key, so the same model loaded twice (or
/// resumed from a checkpoint) has the same ids — optimizer state is keyed by them.
pub fn param<const D: usize>(key: &str, tensor: Tensor<D>) -> Param<Tensor<D>> {
    // FNV-1a: stable across runs and platforms, unlike std's randomly seeded hasher.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    let mut p = Param::from_tensor(tensor);
    p.id = ParamId::from(hash);
    p
}

/// A low-rank update `scale · x A B` added to a [`Linear`] (LoRA). `lora_a` is `[in, r]` and
/// `lora_b` `[r, out]` — the transposes of PEFT's `lora_A.weight` `[r, in]` / `lora_B.weight`
/// `[out, r]`, matching [`Linear`]'s own layout.
#[derive(Module, Debug)]
pub struct LoraAdapter {
    pub lora_a: Param<Tensor<2>>,
    pub lora_b: Param<Tensor<2>>,
    /// PEFT's `lora_dropout`, on the adapter's input only (active on autodiff devices).
    pub dropout: burn::nn::Dropout,
    #[module(skip)]
    pub scale: f64,
}

/// A parameter that takes no gradient (a frozen or quantized base weight), id from its key.
pub fn frozen_param<const D: usize>(key: &str, tensor: Tensor<D>) -> Param<Tensor<D>> {
    let id = param(key, Tensor::<1>::zeros([1], &tensor.device())).id;
    Param::initialized(id, tensor)
}

/// `y = x W + b`: `weight` is `[in, out]`, the transpose of `torch.nn.Linear.weight`; with a
/// LoRA adapter, `+ scale · x A B`.
#[derive(Module, Debug)]
pub struct Linear {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
    pub lora: Option<LoraAdapter>,
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
        let key = format!("{prefix}.weight");
        let weight = src.take(&key, [d_out, d_in], Init::Normal(std))?;
        // Materialise the transpose once, contiguous.
        let weight = param(&key, Tensor::from_data(weight.transpose().into_data(), src.device()));
        let bias = if bias {
            let key = format!("{prefix}.bias");
            Some(param(&key, src.take(&key, [d_out], Init::Zeros)?))
        } else {
            None
        };
        Ok(Linear { weight, bias, lora: None })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let y = linear(x.clone(), self.weight.val(), self.bias.as_ref().map(|b| b.val()));
        match &self.lora {
            None => y,
            Some(l) => y + linear(linear(l.dropout.forward(x), l.lora_a.val(), None), l.lora_b.val(), None) * l.scale,
        }
    }

    /// `(in, out)` features.
    pub fn dims(&self) -> (usize, usize) {
        let [d_in, d_out] = self.weight.val().dims();
        (d_in, d_out)
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
        let key = format!("{prefix}.weight");
        Ok(Embedding { weight: param(&key, src.take(&key, [vocab, hidden], Init::Normal(std))?) })
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
        let key = format!("{prefix}.weight");
        let weight = param(&key, src.take(&key, [dim], Init::Ones)?);
        let bias = match kind {
            NormKind::LayerNorm => {
                let key = format!("{prefix}.bias");
                Some(param(&key, src.take(&key, [dim], Init::Zeros)?))
            }
            NormKind::RmsNorm => None,
        };
        Ok(Norm { weight, bias, eps })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let weight = self.weight.val();
        // Mixed precision: bf16/f16 activations are normalised in the weights' f32, as AMP does.
        let dtype = x.dtype();
        let x = if dtype == weight.dtype() { x } else { x.cast(weight.dtype()) };
        let y = match &self.bias {
            Some(bias) => phi_kernels::layer_norm(x, weight, bias.val(), self.eps),
            None => phi_kernels::rms_norm(x, weight, self.eps),
        };
        if y.dtype() == dtype { y } else { y.cast(dtype) }
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
