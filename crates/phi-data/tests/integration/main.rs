//! The integration tests of phi-data, one file per subject, compiled as one test binary:
//! each test binary links the whole burn stack, so one binary per crate instead of one per file
//! saves minutes of a cold `scripts/test` (and gigabytes of target/). A test's name starts with
//! its file's module: `cargo test --test integration -- lora::` runs one file's tests.

mod common;
mod data_pipeline;
mod hostile_input;
mod prepare_tasks;
