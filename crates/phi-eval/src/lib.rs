//! # phi-eval
//!
//! Evaluation of Phi models: [`humaneval`] judges completions by running them in
//! [`phi_sandbox`], and computes the Codex paper's unbiased pass@k; [`perplexity`] is the
//! training loop's validation loss over any evaluation data; [`tested_exercises`] judges
//! function bodies by their docstrings' examples (preference pairs that need no human);
//! [`experiment`] is `phi experiment data-quality`.

pub mod experiment;
pub mod humaneval;
pub mod perplexity;
pub mod tested_exercises;

pub use phi_sandbox::{Exit, Limits, Run, Sandbox, SandboxError};
