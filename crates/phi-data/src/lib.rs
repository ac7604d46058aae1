//! # phi-data
//!
//! From text to training batches: HF tokenizers (load any `tokenizer.json`, or train a
//! byte-level BPE with `<|endoftext|>`), and a deterministic, resumable sampler of token windows.

pub mod corpus;
pub mod exercises;
pub mod quality;
pub mod sampler;
pub mod sft;
pub mod tokenizer;

pub use sampler::{SamplerState, TokenSampler};
pub use tokenizer::{Tokenizer, TokenizerError};
