//! # phi-eval
//!
//! Evaluation of Phi models: [`humaneval`] judges completions by running them in
//! [`phi_sandbox`], and computes the Codex paper's unbiased pass@k; [`perplexity`] is the
//! training loop's validation loss over any evaluation data.

pub mod humaneval;
pub mod perplexity;

pub use phi_sandbox::{Exit, Limits, Run, Sandbox, SandboxError};
