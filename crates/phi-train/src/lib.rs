//! # phi-train
//!
//! The training loop (AdamW, schedules, checkpoints) is not built yet; see the project issues.
