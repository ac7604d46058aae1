//! Shared helpers for phi-core's integration tests: fixture paths, reference tensors and
//! safetensors files.
#![allow(dead_code, unused_imports)]

mod reference;

use std::path::PathBuf;

pub use reference::*;
use safetensors::{Dtype, SafeTensors};

/// A fixture of this crate: the tiny HF models with their transformers reference outputs.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
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
