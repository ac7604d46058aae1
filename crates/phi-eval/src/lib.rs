//! # phi-eval
//!
//! Evaluation of Phi models: [`humaneval`] judges completions by running them in
//! [`phi_sandbox`], and computes the Codex paper's unbiased pass@k.

pub mod humaneval;

pub use phi_sandbox::{Exit, Limits, Run, Sandbox, SandboxError};
