//! Shared helpers for the integration tests: fixture paths and reference tensors.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

/// Every file under `dir` with its bytes, sorted: equal snapshots, untouched files.
pub fn snapshot(dir: &std::path::Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(snapshot(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

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

/// Named f32 tensors of a safetensors file: (name, shape, values), sorted by name.
pub type NamedTensors = Vec<(String, Vec<usize>, Vec<f32>)>;

pub fn read_f32_file(path: &std::path::Path) -> NamedTensors {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut v: NamedTensors = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec(), t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Writes `tensors` as a safetensors file in `dtype` (F32, BF16 or F16).
pub fn write_file(path: &std::path::Path, tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: Dtype) {
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, d)| {
            let bytes = match dtype {
                Dtype::F32 => d.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Dtype::BF16 => d.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
                Dtype::F16 => d.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
                other => panic!("write_file: unsupported dtype {other:?}"),
            };
            (n.clone(), s.clone(), bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = raw
        .iter()
        .map(|(n, s, d)| (n.clone(), safetensors::tensor::TensorView::new(dtype, s.clone(), d).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}
