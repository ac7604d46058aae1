//! The integration tests of phi-core, one file per subject, compiled as one test binary:
//! each test binary links the whole burn stack, so one binary per crate instead of one per file
//! saves minutes of a cold `scripts/test` (and gigabytes of target/). A test's name starts with
//! its file's module: `cargo test --test integration -- lora::` runs one file's tests.

mod common;
mod batching;
mod chat_templates;
mod config_and_errors;
mod embeddings;
mod hub;
mod hostile_input;
mod lora;
mod model_parity;
mod save_load_generate;
