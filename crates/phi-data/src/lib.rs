//! # phi-data
//!
//! From a raw corpus to training batches, the Phi way (data quality first):
//!
//! - [`tokenizer`]: any HF `tokenizer.json`, or a byte-level BPE trained on the corpus.
//! - [`filters`]: heuristic quality filters for code and prose (Python parsed with tree-sitter).
//! - [`quality`]: exact and MinHash/LSH near-duplicate removal, n-gram decontamination.
//! - [`evalsets`]: HumanEval built in, user evaluation sets from files.
//! - [`parquet`]: the hub's Parquet dataset shards, a row group at a time (prepare reads them
//!   with `Input::Parquet`).
//! - [`prepare`]: the streaming `phi data prepare` pipeline → token shards + `manifest.json`,
//!   reporting progress to the caller's [`PrepareProgress`] (the library draws nothing).
//! - [`shard`]: the documented binary shard format; memory-mapped, verified reads.
//! - [`sampler`]: seeded, resumable `[batch, seq_len + 1]` windows over one dataset or a mixture.
//! - [`sft`], [`exercises`]: instruction data for fine-tuning; [`pairs`]: preference pairs
//!   (prompt, chosen, rejected) for DPO and its variants. Both parse and check records and
//!   report bad ones by line; rendering text with a model's chat template is the caller's
//!   (phi-train's), as this crate does not depend on the model crates.
//! - [`assemble`]: `DIR:WEIGHT` mixtures of prepared datasets; evaluation data from datasets,
//!   shards or text.
//! - [`owned`]: whether a folder is ours to replace or remove (datasets, checkpoints, exports).

pub mod assemble;
pub mod corpus;
pub mod curriculum;
pub mod error;
pub mod evalsets;
pub mod exercises;
pub mod filters;
pub mod owned;
pub mod packing;
pub mod pairs;
pub mod parquet;
pub mod prepare;
pub mod quality;
pub mod sampler;
pub mod sft;
pub mod shard;
pub mod tokenizer;

pub use error::DataError;
pub use prepare::{Manifest, PrepareConfig, PrepareProgress, prepare, prepare_with};
pub use sampler::{Mixture, MixtureSampler, MixtureState, SamplerState, TokenDataset, TokenSampler};
pub use shard::Shard;
pub use tokenizer::{Tokenizer, TokenizerError};
