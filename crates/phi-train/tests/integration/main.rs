//! The integration tests of phi-train, one file per subject, compiled as one test binary:
//! each test binary links the whole burn stack, so one binary per crate instead of one per file
//! saves minutes of a cold `scripts/test` (and gigabytes of target/). A test's name starts with
//! its file's module: `cargo test --test integration -- lora::` runs one file's tests.

mod common;
mod curriculum;
mod dpo_step;
mod lora;
mod preference;
mod sft_packing;
mod sft_step;
mod train_guards;
mod train_parity;
mod train_resume;
