//! Reference tensors from a `reference.safetensors` fixture and the distance to them. Used by
//! phi-core's tests and, included by path, by phi-train's and the `phi` tool's.

use std::collections::HashMap;
use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

/// A reference tensor from `reference.safetensors`: f32 values or i64 ids, with its shape.
pub struct RefTensor {
    pub f32: Vec<f32>,
    pub i64: Vec<i64>,
    pub shape: Vec<usize>,
}

pub fn load_reference(path: PathBuf) -> HashMap<String, RefTensor> {
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = view.data();
            let (f32, i64) = match view.dtype() {
                Dtype::F32 => (data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(), vec![]),
                Dtype::I64 => (vec![], data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, RefTensor { f32, i64, shape: view.shape().to_vec() })
        })
        .collect()
}

impl RefTensor {
    pub fn ids_tensor(&self, device: &Device) -> Tensor<2, Int> {
        Tensor::from_data(TensorData::new(self.i64.clone(), [self.shape[0], self.shape[1]]), device)
    }
    pub fn ids_u32(&self) -> Vec<u32> {
        self.i64.iter().map(|&t| t as u32).collect()
    }
}

/// Largest absolute difference between `t` and `expected`; panics with `what` on shape mismatch.
pub fn max_abs_diff<const D: usize>(what: &str, t: Tensor<D>, expected: &RefTensor) -> f32 {
    assert_eq!(t.dims().to_vec(), expected.shape, "{what}: shape");
    let got = t.into_data().convert::<f32>();
    got.as_slice::<f32>()
        .unwrap()
        .iter()
        .zip(&expected.f32)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}
