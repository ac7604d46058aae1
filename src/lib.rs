//! # phi
//!
//! Train, load and run Microsoft's Phi models in Rust on burn. This facade re-exports the
//! workspace crates and holds what the `phi` tool and the examples share (their command-line flags are in
//! `src/bin/phi/args.rs`; no library here parses arguments):
//! - [`core`] (`phi-core`): the model, configs, HF weight I/O, generation;
//! - [`data`] (`phi-data`): tokenizers and data preparation;
//! - [`train`] (`phi-train`): the training loop;
//! - [`eval`] (`phi-eval`): HumanEval, judged in [`sandbox`] (`phi-sandbox`, OS-level isolation
//!   for model-written programs);
//! - [`device`]: picking a burn backend by name ([`device::Backend`]);
//! - [`export`]: writing model folders without ever replacing a folder that is not ours;
//! - [`bench`]: `phi bench`, measured against the PyTorch baseline in the same run;
//! - [`finetune`]: LoRA fine-tuning on exercises or SFT data (`phi finetune`);
//! - [`recipes`]: the Phi pre-training recipes behind the `train_*` examples.

pub use phi_core as core;
pub use phi_data as data;
pub use phi_train as train;

pub mod bench;
pub mod device;
pub mod export;
pub mod finetune;
pub use phi_eval::humaneval;
pub use phi_eval as eval;
pub use phi_sandbox as sandbox;
pub mod overrides;
pub mod recipes;
