//! Inference with narrow frozen weights on the CPU: bf16, int8 or int4 projections.
//!
//! At 1B+ parameters a decode step is bound by reading the weights (every projection is
//! multiplied by one row per token), so storing them narrower is what makes it faster.
//! [`PhiForCausalLM::pack_weights`] converts every projection, and the LM head (tied or not),
//! into a [`PackedMatrix`] and frees the f32 weights; [`Linear::forward`](crate::nn::Linear)
//! then multiplies by the packed values directly (phi-kernels' `packed` kernels) when a call has
//! few rows — decoding — and, when it has many (a prompt, a perplexity window), where arithmetic
//! rather than bytes sets the pace, through gemm on the weights widened a cache-sized tile at a
//! time.
//! Norms, embeddings (the lookup), biases, the KV cache and all activations stay f32.
//!
//! ```
//! use burn::tensor::Device;
//! use phi_core::{GenerationConfig, PhiConfig, PhiForCausalLM, WeightFormat};
//!
//! let config = PhiConfig::phi_family(64, 2, 4, 256, 0.5);
//! let mut model = PhiForCausalLM::init(config, &Device::flex(), 0)?;
//! let report = model.pack_weights(WeightFormat::Int8)?;
//! assert!(report.bytes_after * 3 < report.bytes_before);
//! let tokens = model.generate(&[1, 2, 3], &GenerationConfig::greedy(4))?;
//! assert_eq!(tokens.len(), 7);
//! # Ok::<(), phi_core::Error>(())
//! ```

use std::sync::Arc;

use burn::backend::DispatchDevice;
use burn::tensor::{Tensor, TensorData};

use crate::error::{Error, Result};
use crate::model::PhiForCausalLM;
use crate::tree::{Leaf, LeafMut};

pub use phi_kernels::packed::{PackedMatrix, WeightFormat};

/// What [`PhiForCausalLM::pack_weights`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct PackReport {
    pub format: WeightFormat,
    /// Projections packed (the tied head counts as one).
    pub matrices: usize,
    /// Their bytes as f32, and packed (scales included).
    pub bytes_before: usize,
    pub bytes_after: usize,
}

/// `x Wᵀ + b` with a packed `W`, `x` `[…, in]` → `[…, out]`.
pub(crate) fn packed_linear<const D: usize>(p: &PackedMatrix, x: Tensor<D>, bias: Option<Tensor<1>>) -> Tensor<D> {
    let (_, d_out) = p.dims();
    let dims = x.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let device = x.device();
    let xs = x.into_data().convert::<f32>().try_into_vec::<f32>().expect("converted to f32");
    let mut y = vec![0.0f32; rows * d_out];
    p.matmul(&xs, rows, &mut y);
    let mut shape = dims;
    shape[D - 1] = d_out;
    let y = Tensor::<D>::from_data(TensorData::new(y, shape), &device);
    match bias {
        Some(b) => y + b.unsqueeze(),
        None => y,
    }
}

impl PhiForCausalLM {
    /// [`from_pretrained`](Self::from_pretrained), then [`pack_weights`](Self::pack_weights)
    /// when `format` is given.
    pub fn from_pretrained_packed(dir: impl AsRef<std::path::Path>, device: &burn::tensor::Device, format: Option<WeightFormat>) -> Result<Self> {
        let mut model = Self::from_pretrained(dir, device)?;
        if let Some(format) = format {
            model.pack_weights(format)?;
        }
        Ok(model)
    }

    /// Packs every projection and the LM head into `format` for CPU inference, freeing their
    /// f32 weights. Packed models generate, score and serve; they cannot be trained or saved
    /// (save first). Errors off the CPU backend, on a model already packed, and on a projection
    /// whose in-features are not a multiple of 32 (int8/int4), naming it.
    pub fn pack_weights(&mut self, format: WeightFormat) -> Result<PackReport> {
        if !matches!(self.device().as_dispatch(), DispatchDevice::Flex(_)) {
            return Err(Error::arg("device", "packed weights are a CPU (flex) path; on a GPU load the model in bf16 instead"));
        }
        if let Some(f) = self.packed_format() {
            return Err(Error::arg("model", format!("already packed as {f}")));
        }
        // Everything that could refuse is checked before the first weight is replaced, so an
        // error leaves the model as it was.
        for (key, leaf) in self.leaves() {
            let (d_in, values) = match leaf {
                Leaf::Linear(lin) => (lin.dims().0, lin.weight.val()),
                Leaf::Tied => (self.config().hidden_size, self.model.embed_tokens.weight.val()),
                _ => continue,
            };
            if format != WeightFormat::Bf16 && d_in % phi_kernels::packed::BLOCK != 0 {
                return Err(Error::arg(key, format!("{format} needs in-features divisible by {}, got {d_in}", phi_kernels::packed::BLOCK)));
            }
            if values.clone().is_nan().any().into_scalar::<bool>() || values.is_inf().any().into_scalar::<bool>() {
                return Err(Error::arg(key, "holds a NaN or infinite weight"));
            }
        }
        let mut report = PackReport { format, matrices: 0, bytes_before: 0, bytes_after: 0 };
        let mut tied = false;
        for (key, leaf) in self.leaves_mut() {
            match leaf {
                LeafMut::Linear(lin) => {
                    let (d_in, d_out) = lin.dims();
                    let w = lin.weight.val();
                    let device = w.device();
                    let values = w.into_data().convert::<f32>().try_into_vec::<f32>().expect("converted to f32");
                    let packed = PackedMatrix::pack(&values, d_in, d_out, format).map_err(|e| Error::arg(key.clone(), e))?;
                    drop(values);
                    report.matrices += 1;
                    report.bytes_before += 4 * d_in * d_out;
                    report.bytes_after += packed.bytes();
                    lin.packed = Some(Arc::new(packed));
                    // The f32 weight goes; `dims` now answers from the packed matrix.
                    lin.set_weight(Tensor::zeros([0, 0], &device), true);
                }
                LeafMut::Tied => tied = true,
                _ => {}
            }
        }
        if tied {
            let e = self.model.embed_tokens.weight.val();
            let [vocab, hidden] = e.dims();
            let values = e.into_data().convert::<f32>().try_into_vec::<f32>().expect("converted to f32");
            let packed = PackedMatrix::pack_out_in(&values, hidden, vocab, format).map_err(|e| Error::arg("lm_head (tied)", e))?;
            report.matrices += 1;
            report.bytes_before += 4 * vocab * hidden;
            report.bytes_after += packed.bytes();
            self.packed_head = Some(Arc::new(packed));
        }
        Ok(report)
    }

    /// The format the weights were packed in, if they were.
    pub fn packed_format(&self) -> Option<WeightFormat> {
        let head = self.lm_head.as_ref().and_then(|h| h.packed.as_ref());
        self.packed_head.as_ref().or(head).map(|p| p.format())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PhiConfig;
    use burn::tensor::{Device, Int};

    fn model(tied: bool) -> PhiForCausalLM {
        let mut c = PhiConfig::phi_family(64, 2, 4, 96, 0.5);
        c.tie_word_embeddings = tied;
        PhiForCausalLM::init(c, &Device::flex(), 0).unwrap()
    }

    #[test]
    fn packed_logits_stay_close_to_f32_on_decode_and_prompt_paths() {
        for tied in [false, true] {
            let f32_model = model(tied);
            // 3 rows take the packed kernels, 12 rows the widened-weights gemm.
            for len in [3usize, 12] {
                let ids: Vec<i64> = (0..len as i64).map(|i| (i * 7) % 96).collect();
                let x = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, len]), &Device::flex());
                let exact = f32_model.forward(x.clone()).into_data().try_to_vec::<f32>().unwrap();
                for (format, tol) in [(WeightFormat::Bf16, 0.02), (WeightFormat::Int8, 0.02), (WeightFormat::Int4, 0.3)] {
                    let mut m = f32_model.clone();
                    let report = m.pack_weights(format).unwrap();
                    assert_eq!(report.matrices, 2 * 6 + 1, "{format}: every projection and the head");
                    assert_eq!(m.packed_format(), Some(format));
                    let got = m.forward(x.clone()).into_data().try_to_vec::<f32>().unwrap();
                    let worst = got.iter().zip(&exact).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                    assert!(worst < tol, "tied {tied}, {len} rows, {format}: {worst}");
                }
            }
        }
    }

    #[test]
    fn a_packed_model_refuses_repacking_and_saving_and_writes_nothing() {
        let mut m = model(false);
        m.pack_weights(WeightFormat::Int4).unwrap();
        let e = m.pack_weights(WeightFormat::Int8).unwrap_err().to_string();
        assert!(e.contains("already packed as int4"), "{e}");
        let dir = std::env::temp_dir().join(format!("packed-save-{}", std::process::id()));
        let e = m.save_pretrained(&dir).unwrap_err().to_string();
        assert!(e.contains("packed as int4") && e.contains("save before packing"), "{e}");
        assert!(!dir.exists(), "nothing may be written");
    }

    #[test]
    fn in_features_not_a_multiple_of_32_are_named() {
        // hidden 48: every projection reading the hidden state has 48 in-features.
        let c = PhiConfig::phi_family(48, 1, 4, 64, 0.5);
        let mut m = PhiForCausalLM::init(c, &Device::flex(), 0).unwrap();
        let e = m.pack_weights(WeightFormat::Int8).unwrap_err().to_string();
        assert!(e.contains("model.layers.0.self_attn.q_proj") && e.contains("divisible by 32"), "{e}");
        // A NaN in the last layer is found before anything is packed: the model is untouched.
        let mut m = model(false);
        for (key, lin) in m.linears_mut() {
            if key == "model.layers.1.mlp.fc2" {
                let w = lin.weight.val();
                let [i, o] = w.dims();
                let mut v = w.into_data().try_to_vec::<f32>().unwrap();
                v[5] = f32::NAN;
                lin.set_weight(Tensor::from_data(TensorData::new(v, [i, o]), &Device::flex()), false);
            }
        }
        let e = m.pack_weights(WeightFormat::Int8).unwrap_err().to_string();
        assert!(e.contains("model.layers.1.mlp.fc2") && e.contains("NaN"), "{e}");
        assert_eq!(m.packed_format(), None);
        assert!(m.linears_mut().iter().all(|(_, l)| l.packed.is_none()));
        // bf16 has no blocks and packs in-features of 48.
        let mut m = PhiForCausalLM::init(PhiConfig::phi_family(48, 1, 4, 64, 0.5), &Device::flex(), 0).unwrap();
        m.pack_weights(WeightFormat::Bf16).unwrap();
    }
}
