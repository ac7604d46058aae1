//! Pre-trains a phi-2-family model: on the CPU by default a scaled-down model of the same
//! family on a local code corpus (minutes), with `--full` the published architecture and recipe
//! on a GPU. Resumes from the newest checkpoint in `--out` unless `--fresh`.
//!
//! ```bash
//! cargo run --release --example train_phi2
//! cargo run --release --features cuda --example train_phi2 -- --full --device cuda
//! ```

use clap::Parser;

#[path = "../src/bin/phi/args.rs"]
#[allow(dead_code)]
mod args;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    phi::recipes::run(phi::recipes::Recipe::phi_2(), args::RecipeArgs::parse().options())
}
