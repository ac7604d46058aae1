//! # phi
//!
//! Train, load and run Microsoft's Phi models in Rust on burn. This crate is the `phi` tool's
//! command layer — the run orchestration the tool and the examples share, over the workspace's
//! libraries — and re-exports of those libraries. The split follows torchtune's `recipes/` over
//! `torchtune/`: the libraries take option structs and parsed specs, report through return
//! values, callbacks and `tracing` events, and print nothing; this layer reads the tool's file
//! formats (TOML settings, curricula and prompt lists), draws progress bars and the loss curve,
//! prints what a run did, and installs the `tracing` subscriber that shows the libraries' warnings
//! ([`progress::print_warnings`]). The tool's flags are in `src/bin/phi/args.rs` (clap), turned
//! into this layer's option structs; no library parses arguments.
//!
//! The layer, one module per command:
//! - [`recipes`]: the Phi pre-training recipes and `phi train` (data, training, a sample);
//!   [`overrides`] checks the keys of its TOML settings files;
//! - [`finetune`]: `phi finetune`, LoRA on exercises; [`dpo_run`]: the `phi dpo` run and
//!   `phi eval dpo` (the DPO objective itself is `phi_train::preference::Dpo`);
//! - [`bench`]: `phi bench`'s workloads; [`serve_bench`]: `phi bench serve`;
//! - [`experiment`]: `phi experiment data-quality`;
//! - [`synth`] and [`annotate`]: `phi data synth` and `phi data annotate` over any
//!   OpenAI-compatible endpoint;
//! - [`export`]: model folders that never replace a folder that is not ours;
//! - [`plot`]: the loss curve every training command draws after `fit` returns, and the
//!   experiment's picture; [`progress`]: bars on a terminal, lines in a log, and the warnings.
//!
//! The libraries:
//! - [`core`] (`phi-core`): the model, configs, HF weight I/O, chat templates, generation,
//!   backend choice ([`device::Backend`]);
//! - [`data`] (`phi-data`): tokenizers and data preparation;
//! - [`train`] (`phi-train`): one training step for every objective, the loop (`fit`), LoRA;
//! - [`eval`] (`phi-eval`): HumanEval, judged in [`sandbox`] (`phi-sandbox`, OS-level isolation
//!   for model-written programs), perplexity, tested exercises;
//! - [`serve`] (`phi-serve`): the OpenAI-compatible server and its client;
//! - [`classify`] (`phi-classify`): the learned quality filter (embeddings, random forest and
//!   logistic heads, cross-validation) and the scorer of `prepare`'s classifier stage.

pub mod annotate;
pub mod bench;
pub mod dpo_run;
pub mod experiment;
pub mod export;
pub mod finetune;
pub mod overrides;
pub mod plot;
pub mod progress;
pub mod recipes;
pub mod serve_bench;
pub mod sft_bench;
pub mod synth;
pub mod world;

pub use phi_core as core;
pub use phi_data as data;
pub use phi_train as train;
pub use phi_core::device;

pub use phi_eval::humaneval;
pub use phi_eval as eval;
pub use phi_sandbox as sandbox;
pub use phi_serve as serve;
pub use phi_classify as classify;
