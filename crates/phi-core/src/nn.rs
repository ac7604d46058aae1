//! The few layers a Phi model is made of. Keys are HF's; one layout differs: `Linear.weight` is
//! kept `[in, out]` (transposed once at load and save), because a transposed view in the
//! forward pass makes burn copy the whole matrix on every call for small batches.

use burn::module::{Module, Param, ParamId};
use burn::tensor::activation::{gelu, relu, silu};
use burn::tensor::module::embedding;
use phi_kernels::linear;
use burn::tensor::{Device, Int, Shape, Tensor};

use crate::config::{Activation, NormKind};
use crate::tree::{Role, param as entry, params};

/// The name of a leaf module's weight in the checkpoint (`prefix.weight`).
pub const WEIGHT: &str = "weight";
/// The name of a leaf module's bias in the checkpoint (`prefix.bias`).
pub const BIAS: &str = "bias";

/// The id of the parameter stored under checkpoint key `key`: the same model loaded twice (or
/// resumed from a checkpoint) has the same ids — optimizer state is keyed by them.
pub fn param_id(key: &str) -> ParamId {
    // FNV-1a: stable across runs and platforms, unlike std's randomly seeded hasher.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    ParamId::from(hash)
}

/// A trainable parameter whose id is derived from its checkpoint key ([`param_id`]).
pub fn param<const D: usize>(key: &str, tensor: Tensor<D>) -> Param<Tensor<D>> {
    with_id(param_id(key), tensor)
}

/// A trainable parameter with the given id.
fn with_id<const D: usize>(id: ParamId, tensor: Tensor<D>) -> Param<Tensor<D>> {
    let mut p = Param::from_tensor(tensor);
    p.id = id;
    p
}

/// A parameter of `shape` whose value is filled in later, from a checkpoint or an initialiser
/// (modules are built empty, then loaded through their listing: see [`crate::tree`]).
fn pending<const D: usize>(shape: [usize; D], device: &Device) -> Param<Tensor<D>> {
    let init = |_: &Device, _: bool| -> Tensor<D> { panic!("a parameter was read before it was loaded") };
    Param::uninitialized(ParamId::new(), init, device.clone(), true, Shape::from(shape))
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
    Param::initialized(param_id(key), tensor)
}

/// `y = x W + b`: `weight` is `[in, out]`, the transpose of `torch.nn.Linear.weight`; with a
/// LoRA adapter, `+ scale · x A B`.
#[derive(Module, Debug)]
pub struct Linear {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
    pub lora: Option<LoraAdapter>,
    /// The weight packed for CPU inference (f32 or bf16 strips, int8/int4 tiles), set by
    /// [`PhiForCausalLM::pack_weights`](crate::PhiForCausalLM::pack_weights); `weight` is then
    /// emptied (see [`crate::quant`]; the matrix is [`crate::packed`]'s).
    #[module(skip)]
    pub packed: Option<std::sync::Arc<crate::packed::PackedMatrix>>,
}

params!(Linear, |this, out| {
    let Linear { weight, bias, .. } = this;
    entry(out, WEIGHT, Role::Projection, weight);
    entry(out, BIAS, Role::Bias, bias);
});

impl Linear {
    /// An empty `d_in → d_out` projection, to be loaded (see [`crate::tree`]).
    pub fn new(d_in: usize, d_out: usize, bias: bool, device: &Device) -> Self {
        Linear { weight: pending([d_in, d_out], device), bias: bias.then(|| pending([d_out], device)), lora: None, packed: None }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let bias = self.bias.as_ref().map(|b| b.val());
        let y = match &self.packed {
            Some(p) => crate::packed::packed_linear(p, x.clone(), bias),
            None => linear(x.clone(), self.weight.val(), bias),
        };
        match &self.lora {
            None => y,
            Some(l) => y + linear(linear(l.dropout.forward(x), l.lora_a.val(), None), l.lora_b.val(), None) * l.scale,
        }
    }

    /// `(in, out)` features.
    pub fn dims(&self) -> (usize, usize) {
        if let Some(p) = &self.packed {
            return p.dims();
        }
        let [d_in, d_out] = self.weight.val().dims();
        (d_in, d_out)
    }

    /// Replaces the weight (`[in, out]`), keeping its id: a trainable one such as a merged
    /// adapter's, or with `frozen` one that takes no gradient (a quantized base).
    pub fn set_weight(&mut self, weight: Tensor<2>, frozen: bool) {
        let id = self.weight.id;
        self.weight = if frozen { Param::initialized(id, weight) } else { with_id(id, weight) };
    }
}

/// Token embedding table `[vocab, hidden]`.
#[derive(Module, Debug)]
pub struct Embedding {
    pub weight: Param<Tensor<2>>,
}

params!(Embedding, |this, out| {
    let Embedding { weight } = this;
    entry(out, WEIGHT, Role::Embedding, weight);
});

impl Embedding {
    /// An empty `[vocab, hidden]` table, to be loaded (see [`crate::tree`]).
    pub fn new(vocab: usize, hidden: usize, device: &Device) -> Self {
        Embedding { weight: pending([vocab, hidden], device) }
    }

    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        embedding(self.weight.val(), ids)
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

params!(Norm, |this, out| {
    let Norm { weight, bias, .. } = this;
    entry(out, WEIGHT, Role::Scale, weight);
    entry(out, BIAS, Role::Bias, bias);
});

impl Norm {
    /// An empty norm over `dim` features (LayerNorm has a bias, RMSNorm none), to be loaded.
    pub fn new(kind: NormKind, dim: usize, eps: f64, device: &Device) -> Self {
        let bias = match kind {
            NormKind::LayerNorm => Some(pending([dim], device)),
            NormKind::RmsNorm => None,
        };
        Norm { weight: pending([dim], device), bias, eps }
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
