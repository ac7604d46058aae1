//! Inference with narrow frozen weights on the CPU: bf16, int8 or int4 projections — or f32
//! ones repacked in the order the decode kernels read them ([`WeightFormat::F32`], what a model
//! loaded for decoding on the CPU takes by default: [`decoding_format`]).
//!
//! At 1B+ parameters a decode step is bound by reading the weights (every projection is
//! multiplied by one row per token), so storing them narrower is what makes it faster.
//! [`PhiForCausalLM::pack_weights`] converts every projection, and the LM head (tied or not;
//! in f32 a tied head is read in place), into a [`PackedMatrix`] and frees the f32 weights; [`Linear::forward`](crate::nn::Linear)
//! then multiplies by the packed values directly (phi-kernels' `packed` kernels), whatever the
//! rows — a decoded token, a batch of sequences, a prompt or a perplexity window, 64 rows at a
//! time — each row getting the bits it gets alone.
//! Norms, embeddings (the lookup), biases, the KV cache and all activations stay f32.
//!
//! This module packs a model (it walks the model's listing, above [`crate::model`]); the packed
//! matrix and the product a layer runs with it are [`crate::packed`], below [`crate::nn`]
//! (re-exported here: `phi_core::quant::PackedMatrix` is the same type).
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
use burn::tensor::Tensor;

use crate::error::{Error, Result};
use crate::model::PhiForCausalLM;
use crate::nn::Linear;
use crate::tree::{Leaf, LeafMut};

pub use crate::packed::{PackedMatrix, WeightFormat};

/// What [`PhiForCausalLM::pack_weights`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct PackReport {
    pub format: WeightFormat,
    /// Projections packed (a tied head packed in a narrow format counts as one; in f32 it is
    /// read in place and not counted).
    pub matrices: usize,
    /// Their bytes as f32, and packed (scales included).
    pub bytes_before: usize,
    pub bytes_after: usize,
}

/// Refuses what `format` cannot pack: in-features not a multiple of the block (int8/int4) and
/// non-finite weights (f32 keeps any value, as the unpacked model does), naming `key`.
fn check_packable(key: &str, d_in: usize, values: Tensor<2>, format: WeightFormat) -> Result<()> {
    if format == WeightFormat::F32 {
        return Ok(());
    }
    if matches!(format, WeightFormat::Int8 | WeightFormat::Int4) && d_in % phi_kernels::packed::BLOCK != 0 {
        return Err(Error::arg(key, format!("{format} needs in-features divisible by {}, got {d_in}", phi_kernels::packed::BLOCK)));
    }
    if values.clone().is_nan().any().into_scalar::<bool>() || values.is_inf().any().into_scalar::<bool>() {
        return Err(Error::arg(key, "holds a NaN or infinite weight"));
    }
    Ok(())
}

/// The format a model loaded for decoding takes: `asked`, else on the CPU (flex) f32 in strips
/// ([`WeightFormat::F32`]: the unpacked model's values and logits, read faster — about 1.3× at
/// 16 rows of a 50k-vocabulary head, 2.6× for a 2048 × 1024 projection), else (a GPU) none.
/// What `phi generate`, `phi serve` and the `--local` data commands load with.
///
/// ```
/// use burn::tensor::Device;
/// use phi_core::quant::{WeightFormat, decoding_format};
///
/// assert_eq!(decoding_format(None, &Device::flex()), Some(WeightFormat::F32));
/// assert_eq!(decoding_format(Some(WeightFormat::Int4), &Device::flex()), Some(WeightFormat::Int4));
/// ```
pub fn decoding_format(asked: Option<WeightFormat>, device: &burn::tensor::Device) -> Option<WeightFormat> {
    asked.or_else(|| check_device(device).is_ok().then_some(WeightFormat::F32))
}

/// Packs one projection, freeing its f32 weight.
fn pack_linear(key: &str, lin: &mut Linear, format: WeightFormat, report: &mut PackReport) -> Result<()> {
    let (d_in, d_out) = lin.dims();
    let w = lin.weight.val();
    let device = w.device();
    let values = w.into_data().convert::<f32>().try_into_vec::<f32>().expect("converted to f32");
    let packed = PackedMatrix::pack(&values, d_in, d_out, format).map_err(|e| Error::arg(key, e))?;
    drop(values);
    report.add(4 * d_in * d_out, packed.bytes());
    lin.packed = Some(Arc::new(packed));
    // The f32 weight goes; `dims` now answers from the packed matrix.
    lin.set_weight(Tensor::zeros([0, 0], &device), true);
    Ok(())
}

impl PackReport {
    fn new(format: WeightFormat) -> Self {
        PackReport { format, matrices: 0, bytes_before: 0, bytes_after: 0 }
    }

    fn add(&mut self, before: usize, after: usize) {
        self.matrices += 1;
        self.bytes_before += before;
        self.bytes_after += after;
    }
}

/// Errors unless `device` is flex: packed weights are a CPU path.
fn check_device(device: &burn::tensor::Device) -> Result<()> {
    if !matches!(device.as_dispatch(), DispatchDevice::Flex(_)) {
        return Err(Error::arg("device", "packed weights are a CPU (flex) path; on a GPU load the model in bf16 instead"));
    }
    Ok(())
}

impl PhiForCausalLM {
    /// [`from_pretrained`](Self::from_pretrained) with every projection and the LM head packed
    /// into `format` (when given) for CPU inference (in f32, a tied head is read in place). Each projection is packed as soon as it is
    /// read, so the load holds one f32 matrix beside the packed ones (and the f32 embedding,
    /// which the lookup needs): a phi-1.5 loaded as int4 never holds its 5.6 GB of f32 weights.
    /// The result is the model [`pack_weights`](Self::pack_weights) makes.
    pub fn from_pretrained_packed(dir: impl AsRef<std::path::Path>, device: &burn::tensor::Device, format: Option<WeightFormat>) -> Result<Self> {
        let Some(format) = format else {
            return Self::from_pretrained(dir, device);
        };
        check_device(device)?;
        let dir = crate::hub::resolve(dir.as_ref(), crate::hub::Kind::Model)?;
        let dir = dir.as_path();
        let config = crate::PhiConfig::from_file(dir.join("config.json"))?;
        let mut reader = crate::weights::CheckpointReader::open(dir, device, burn::tensor::DType::F32)?;
        let mut report = PackReport::new(format);
        // The packer refuses non-finite weights and in-features off the block itself, and here
        // an error drops the half-built model: no separate check pass is needed.
        let mut model = Self::load_then(config, &mut reader, |key, leaf| match leaf {
            LeafMut::Linear(lin) => pack_linear(key, lin, format, &mut report),
            _ => Ok(()),
        })?;
        reader.finish()?;
        model.pack_tied_head(format, &mut report)?;
        Ok(model)
    }

    /// Packs every projection and the LM head into `format` for CPU inference, freeing their
    /// f32 weights (in f32, a tied head stays the embedding, read in place). Packed models generate, score and serve; they cannot be trained or saved
    /// (save first). Errors off the CPU backend, on a model already packed, and on a projection
    /// whose in-features are not a multiple of 32 (int8/int4), naming it.
    pub fn pack_weights(&mut self, format: WeightFormat) -> Result<PackReport> {
        check_device(&self.device())?;
        if let Some(f) = self.packed_format() {
            return Err(Error::arg("model", format!("already packed as {f}")));
        }
        // Everything that could refuse is checked before the first weight is replaced, so an
        // error leaves the model as it was.
        let hidden = self.config().hidden_size;
        for (key, leaf) in self.leaves() {
            match leaf {
                Leaf::Linear(lin) => check_packable(&key, lin.dims().0, lin.weight.val(), format)?,
                Leaf::Tied => check_packable(&key, hidden, self.model.embed_tokens.weight.val(), format)?,
                _ => {}
            }
        }
        let mut report = PackReport::new(format);
        for (key, leaf) in self.leaves_mut() {
            if let LeafMut::Linear(lin) = leaf {
                pack_linear(&key, lin, format, &mut report)?;
            }
        }
        self.pack_tied_head(format, &mut report)?;
        Ok(report)
    }

    /// With a tied head, packs the head's copy of the embedding (the lookup keeps the f32 one).
    fn pack_tied_head(&mut self, format: WeightFormat, report: &mut PackReport) -> Result<()> {
        // In f32 the head reads the embedding in place: each output's inputs are one contiguous
        // row of it already, and a copy would double the largest matrix of a tied model.
        if self.lm_head.is_some() || format == WeightFormat::F32 {
            return Ok(());
        }
        let e = self.model.embed_tokens.weight.val();
        let [vocab, hidden] = e.dims();
        let values = e.into_data().convert::<f32>().try_into_vec::<f32>().expect("converted to f32");
        let packed = PackedMatrix::pack_out_in(&values, hidden, vocab, format).map_err(|e| Error::arg("lm_head (tied)", e))?;
        report.add(4 * vocab * hidden, packed.bytes());
        self.packed_head = Some(Arc::new(packed));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PhiConfig;
    use burn::tensor::{Device, Int, TensorData};

    fn model(tied: bool) -> PhiForCausalLM {
        let mut c = PhiConfig::phi_family(64, 2, 4, 96, 0.5);
        c.tie_word_embeddings = tied;
        PhiForCausalLM::init(c, &Device::flex(), 0).unwrap()
    }

    #[test]
    fn packed_logits_stay_close_to_f32_on_decode_and_prompt_paths() {
        for tied in [false, true] {
            let f32_model = model(tied);
            // 3 rows (one group of the strips kernel) and 12 (two).
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

    /// f32 strips change the layout, not the arithmetic: up to 64 positions the logits are the
    /// unpacked model's bits (a tied head stays in place and is not counted), and a longer prompt
    /// (64 rows at a time instead of gemm) stays within f32 rounding of them.
    #[test]
    fn f32_strips_give_the_unpacked_logits() {
        for tied in [false, true] {
            let f32_model = model(tied);
            let mut m = f32_model.clone();
            let report = m.pack_weights(WeightFormat::F32).unwrap();
            assert_eq!(report.matrices, 2 * 6 + usize::from(!tied), "tied {tied}");
            assert_eq!(m.packed_format(), Some(WeightFormat::F32), "tied {tied}");
            for len in [1usize, 5, 64, 150] {
                let ids: Vec<i64> = (0..len as i64).map(|i| (i * 7) % 96).collect();
                let x = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, len]), &Device::flex());
                let exact = f32_model.forward(x.clone()).into_data().try_to_vec::<f32>().unwrap();
                let got = m.forward(x).into_data().try_to_vec::<f32>().unwrap();
                if len <= phi_kernels::rows::MAX_ROWS {
                    assert!(got.iter().zip(&exact).all(|(a, b)| a.to_bits() == b.to_bits()), "tied {tied}, {len} positions");
                } else {
                    let worst = got.iter().zip(&exact).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                    assert!(worst < 1e-4, "tied {tied}, {len} positions: {worst}");
                }
            }
            // Packed, whether the head is or not: no second packing, no save.
            assert!(m.pack_weights(WeightFormat::Int8).unwrap_err().to_string().contains("already packed as f32"));
            let dir = std::env::temp_dir().join(format!("f32-strips-save-{}-{tied}", std::process::id()));
            assert!(m.save_pretrained(&dir).unwrap_err().to_string().contains("packed as f32"));
            assert!(!dir.exists());
        }
        // Any in-features (no blocks in f32).
        let mut odd = PhiForCausalLM::init(PhiConfig::phi_family(48, 1, 4, 64, 0.5), &Device::flex(), 0).unwrap();
        odd.pack_weights(WeightFormat::F32).unwrap();
        assert_eq!(decoding_format(None, &Device::flex()), Some(WeightFormat::F32));
    }

    #[test]
    fn packing_while_loading_gives_the_model_that_packing_after_loading_gives() {
        let dir = std::env::temp_dir().join(format!("packed-load-{}", std::process::id()));
        for tied in [false, true] {
            model(tied).save_pretrained(&dir).unwrap();
            let x = Tensor::<2, Int>::from_data(TensorData::new(vec![3i64, 50, 7, 95], [1, 4]), &Device::flex());
            for format in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Int8, WeightFormat::Int4] {
                let mut after = PhiForCausalLM::from_pretrained(&dir, &Device::flex()).unwrap();
                after.pack_weights(format).unwrap();
                let during = PhiForCausalLM::from_pretrained_packed(&dir, &Device::flex(), Some(format)).unwrap();
                assert_eq!(during.packed_format(), Some(format));
                let (a, b) = (after.forward(x.clone()).into_data(), during.forward(x.clone()).into_data());
                assert_eq!(a.try_to_vec::<f32>().unwrap(), b.try_to_vec::<f32>().unwrap(), "tied {tied}, {format}");
            }
        }
        // A projection int8 cannot pack is named by the load.
        PhiForCausalLM::init(PhiConfig::phi_family(48, 1, 4, 64, 0.5), &Device::flex(), 0).unwrap().save_pretrained(&dir).unwrap();
        let e = PhiForCausalLM::from_pretrained_packed(&dir, &Device::flex(), Some(WeightFormat::Int8)).unwrap_err().to_string();
        assert!(e.contains("model.layers.0.self_attn.q_proj") && e.contains("divisible by 32"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
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
