//! # phi-core
//!
//! One configurable Phi decoder — Phi-1, 1.5, 2, 3, 3.5 and 4-mini are values of
//! [`PhiConfig`], not separate models — that loads HuggingFace checkpoints and reproduces the
//! logits of `transformers`. Generic over burn's runtime [`Device`](burn::tensor::Device): the
//! backend (flex on CPU, CUDA, wgpu) is chosen by the application, never here.
//!
//! Layout follows the checkpoint: `model.layers.N.self_attn.q_proj` is
//! `model.layers[N].self_attn.proj` → `q_proj`, and each module states its parts' HF names once,
//! in its listing ([`tree`]), from which loading, saving, adapter targeting and the optimizer's
//! parameter groups derive. One deliberate difference: a projection's weight is held `[in, out]`,
//! the transpose of HF's `[out, in]` (transposed once at load and save, see [`nn::Linear`]),
//! because burn would otherwise copy the transposed matrix on every call.
//!
//! LoRA lives here too ([`lora`]): PEFT's config and folder format, attaching, loading, saving
//! and merging adapters, and each family's default targets — serving and exporting an adapter
//! need no training crate. What depends on what: [`packed`] (a packed weight matrix) ← [`nn`]
//! (the layers, listed through [`tree`]) ← attention, MLP, block ← [`model`] ← [`quant`]
//! (packing a model's weights) and [`lora`] (adapting its projections).

pub mod attention;
pub mod block;
pub mod chat;
pub mod config;
pub mod device;
pub mod embeddings;
pub mod error;
pub mod generation;
pub mod hub;
pub mod kv_cache;
pub mod lora;
pub mod mlp;
pub mod model;
pub mod nn;
pub mod packed;
mod presets;
pub mod quant;
pub mod rope;
pub mod batching;
pub mod tree;
pub mod weights;

pub use burn;
pub use config::{Activation, BlockKind, Family, Layout, LongRope, MlpKind, NormKind, PhiConfig};
pub use error::{Error, Result};
pub use generation::{GenerationConfig, Sampler};
pub use kv_cache::KvCache;
pub use model::{PhiForCausalLM, PhiModel};
pub use phi_kernels::Segments;
pub use quant::{PackReport, WeightFormat};
