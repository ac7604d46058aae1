//! # phi-train
//!
//! Training for Phi models, one way in: [`fit()`] trains [`Weights`] (from scratch, a pretrained
//! folder, or LoRA adapters on a frozen base) on an [`Objective`] under a [`TrainConfig`] (whose
//! `Default` follows litgpt's), with validation, `metrics.jsonl`, atomic [`checkpoint`]s and
//! exact [`Resume`], and returns a [`TrainOutcome`] (the model, the metrics, and the run's
//! warnings: the library prints nothing, it emits them with `tracing` and returns them).
//!
//! The objectives, each a batch and its loss (module [`objective`] holds the trait):
//! - [`CausalLm`]: pre-training on token windows of a mixture or a curriculum (phi-data's
//!   samplers);
//! - [`sft_objective::Sft`]: the SFT objective, loss on response tokens only; the examples are
//!   `phi_data::sft`'s, rendered with the model's chat template by [`sft_objective::encode`];
//! - [`preference::Dpo`]: preference tuning (DPO, IPO, hinge, SimPO, ORPO) as TRL defines it,
//!   with its batching ([`preference::Collate`]) and losses; the pairs are `phi_data::pairs`'s
//!   (re-exported as [`preference::TokenPair`]), text tokenized by [`preference::PairEncoder`].
//!
//! Underneath, each piece exact to its PyTorch counterpart: [`Trainer::step`] (module
//! [`trainer`]: micro-batch accumulation, mixed precision with loss scaling ([`precision`]),
//! non-finite guards; a `Trainer` starts fresh or [`Trainer::from_checkpoint`]), causal-LM
//! cross-entropy ([`loss`]), AdamW with torch's hyper-parameters spelled out and a no-decay group
//! ([`optim`]), global-norm gradient clipping ([`clip`], `torch.nn.utils.clip_grad_norm_`), and
//! learning rate schedules ([`schedule`]: warmup, then cosine, linear or warmup-stable decay to
//! a floor). Module [`fit`] holds the loop, the config and [`evaluate`]; [`lora`] LoRA training
//! (the adapters themselves are `phi_core::lora`'s, re-exported); [`memory`] refuses a run that
//! cannot fit before it starts; [`mfu`] the FLOPs utilisation figure; [`export`] the layout of
//! the model folders the tool writes; [`run_dir`] one run at a time in an output folder;
//! [`dist`] data-parallel training across processes (`mpirun -np N`, with the `mpi` feature):
//! each step's micro-batches shared among the ranks, the gradients summed once per step;
//! [`zero`] ZeRO-1, the AdamW state sharded across those ranks (`TrainConfig::zero = 1`).
//!
//! Errors are [`TrainError`]s, one variant per kind of trouble to match on: a setting by its
//! config key (`Config`), a step that went NaN/inf (`NonFinite`), data that does not fit the
//! model (`Data`), a checkpoint (`Checkpoint`, `NotResumable`), memory, the output folder, I/O
//! and the model's own errors.
//!
//! The run orchestration of the `phi` tool (the Phi recipes, `phi finetune`, `phi dpo`,
//! `phi bench`, writing model folders, the loss curve) is the `phi` crate's command layer, built
//! on this one.

pub mod checkpoint;
pub mod clip;
pub mod dist;
pub mod error;
pub mod export;
pub mod fit;
pub mod lora;
pub mod memory;
pub mod mfu;
pub mod objective;
pub mod loss;
pub mod optim;
pub mod precision;
pub mod preference;
pub mod run_dir;
pub mod schedule;
pub mod sft_objective;
pub mod trainer;
pub mod zero;

pub use clip::{clip_grad_norm, grad_norm, scale_grads};
pub use precision::{LossScaler, Precision};
pub use loss::{causal_lm_loss, masked_causal_lm_loss};
pub use optim::{AdamWSettings, no_decay_ids};
pub use error::{Result, TrainError};
pub use schedule::{Decay, LrSchedule};
pub use objective::{BatchLoss, CausalLm, Forward, Objective};
pub use trainer::{Trainer, WholeOptimizer, optimizer_for};
pub use fit::{Adapter, MAX_CONSECUTIVE_SKIPS, OnNonFinite, Resume, StepMetrics, TrainConfig, TrainOutcome, Weights, evaluate, evaluate_with_progress, fit, non_finite_weights, anneal_over_last_stage};
pub use mfu::flops_per_token;
