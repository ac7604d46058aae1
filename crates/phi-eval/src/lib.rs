//! # phi-eval
//!
//! Evaluation of Phi models: [`humaneval`] judges completions by running them in
//! [`phi_sandbox`], and computes the Codex paper's unbiased pass@k; [`perplexity`] is the
//! training loop's validation loss over any evaluation data; [`tested_exercises`] judges
//! function bodies by their docstrings' examples (preference pairs that need no human). The
//! `phi experiment data-quality` run built on them is the `phi` crate's `experiment`.

pub mod error;
pub mod humaneval;
pub mod perplexity;
pub mod tested_exercises;

pub use error::{EvalError, OutProblem, Result};
pub use phi_sandbox::{Exit, Limits, Run, Sandbox, SandboxError};
