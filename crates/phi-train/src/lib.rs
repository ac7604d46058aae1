//! # phi-train
//!
//! The pieces of a step-based training loop for Phi models, each exact to its PyTorch
//! counterpart: causal-LM cross-entropy, AdamW with torch's hyper-parameters spelled out and a
//! no-decay group, global-norm gradient clipping (`torch.nn.utils.clip_grad_norm_`), and learning
//! rate schedules (warmup, then cosine or linear decay to a floor).

pub mod bench;
pub mod checkpoint;
pub mod clip;
pub mod dpo;
pub mod error;
pub mod export;
pub mod finetune;
pub mod lora;
pub mod memory;
pub mod mfu;
pub mod objective;
pub mod loss;
pub mod optim;
pub mod overrides;
pub mod plot;
pub mod precision;
pub mod preference;
pub mod recipes;
pub mod run_dir;
pub mod schedule;
pub mod sft;
pub mod step;
pub mod trainer;

pub use clip::{clip_grad_norm, grad_norm, scale_grads};
pub use precision::{LossScaler, Precision};
pub use loss::{causal_lm_loss, masked_causal_lm_loss};
pub use optim::{AdamWSettings, no_decay_ids};
pub use error::{Result, TrainError};
pub use schedule::{Decay, LrSchedule};
pub use objective::{BatchLoss, CausalLm, Forward, Objective};
pub use step::{Trainer, optimizer_for};
pub use trainer::{Adapter, MAX_CONSECUTIVE_SKIPS, OnNonFinite, Start, StepMetrics, TrainConfig, TrainOutcome, Weights, evaluate, evaluate_with_progress, fit, flops_per_token, non_finite_weights, train, train_curriculum, anneal_over_last_stage};
