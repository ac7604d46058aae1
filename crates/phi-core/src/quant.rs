//! Inference with narrow frozen weights on the CPU: bf16, int8 or int4 projections.
//!
//! At 1B+ parameters a decode step is bound by reading the weights (every projection is
//! multiplied by one row per token), so storing them narrower is what makes it faster.
//! [`PhiForCausalLM::pack_weights`] converts every projection, and the LM head (tied or not),
//! into a [`PackedMatrix`] and frees the f32 weights; [`Linear::forward`](crate::nn::Linear)
//! then multiplies by the packed values directly (phi-kernels' `packed` kernels) when a call has
//! few rows — decoding — and through an ordinary gemm on weights widened per call when it has
//! many (a prompt, a perplexity window), where arithmetic rather than bytes sets the pace.
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
use burn::tensor::module::linear;
use burn::tensor::{Tensor, TensorData};

use crate::error::{Error, Result};
use crate::model::PhiForCausalLM;
use crate::tree::LeafMut;

pub use phi_kernels::packed::{PackedMatrix, WeightFormat};

/// Above this many rows a call widens the weights once and runs a gemm: its arithmetic, not
/// the weight bytes, is then what costs.
const GEMM_ROWS: usize = 8;

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
    let (d_in, d_out) = p.dims();
    let dims = x.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let device = x.device();
    if rows > GEMM_ROWS {
        let wt = Tensor::<2>::from_data(TensorData::new(p.dequantize_out_in(), [d_out, d_in]), &device);
        return linear(x, wt.transpose(), bias);
    }
    let xs = x.into_data().convert::<f32>().into_vec::<f32>().expect("converted to f32");
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
        let mut report = PackReport { format, matrices: 0, bytes_before: 0, bytes_after: 0 };
        let mut tied = false;
        for (key, leaf) in self.leaves_mut() {
            match leaf {
                LeafMut::Linear(lin) => {
                    let (d_in, d_out) = lin.dims();
                    let w = lin.weight.val();
                    let device = w.device();
                    let values = w.into_data().convert::<f32>().into_vec::<f32>().expect("converted to f32");
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
            let values = e.into_data().convert::<f32>().into_vec::<f32>().expect("converted to f32");
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
