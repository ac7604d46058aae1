//! The integration tests of the `phi` tool and its command layer, one file per subject, compiled as one test binary:
//! each test binary links the whole burn stack, so one binary per crate instead of one per file
//! saves minutes of a cold `scripts/test` (and gigabytes of target/). A test's name starts with
//! its file's module: `cargo test --test integration -- lora::` runs one file's tests.

mod common;
mod annotate;
mod cli;
mod cli_classify;
mod cli_dpo;
mod cli_guards;
mod cli_hub;
mod cli_humaneval;
mod cli_inputs;
mod cli_prepare_tasks;
// Two MPI processes (mpirun): built with the `mpi` feature, which scripts/test turns on.
#[cfg(feature = "mpi")]
mod distributed;
mod experiment;
mod loss_curve;
mod recipes;
mod synth;
