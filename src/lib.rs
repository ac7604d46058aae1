//! # phi
//!
//! Train, load and run Microsoft's Phi models in Rust on burn. This crate is the `phi` tool,
//! the examples, and these re-exports; the logic is in the workspace crates (the tool's and the
//! examples' command-line flags are in `src/bin/phi/args.rs`; no library parses arguments):
//! - [`core`] (`phi-core`): the model, configs, HF weight I/O, chat templates, generation,
//!   backend choice ([`device::Backend`]);
//! - [`data`] (`phi-data`): tokenizers and data preparation;
//! - [`train`] (`phi-train`): one training step for every objective, the loop, LoRA, and the
//!   run orchestration: [`recipes`] (the Phi pre-training recipes), [`finetune`], [`bench`],
//!   [`export`] (model folders that never replace a folder that is not ours);
//! - [`eval`] (`phi-eval`): HumanEval, judged in [`sandbox`] (`phi-sandbox`, OS-level isolation
//!   for model-written programs), and perplexity;
//! - [`serve`] (`phi-serve`): the OpenAI-compatible server, its client, LLM annotation;
//! - [`classify`] (`phi-classify`): the learned quality filter (embeddings, random forest and
//!   logistic heads, cross-validation) and the scorer of `prepare`'s classifier stage.

pub use phi_core as core;
pub use phi_data as data;
pub use phi_train as train;
pub use phi_core::device;
pub use phi_train::{bench, dpo, export, finetune, overrides, recipes};

pub use phi_eval::humaneval;
pub use phi_eval as eval;
pub use phi_sandbox as sandbox;
pub use phi_serve as serve;
pub use phi_classify as classify;
