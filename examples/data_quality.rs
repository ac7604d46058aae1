//! The seed's claim, measured on this machine: the same small model with the same token budget
//! and seeds, trained on the raw local Python code and on the same code filtered and
//! deduplicated (and, when given, classified or mixed with verified synthetic exercises), each
//! evaluated on held-out code no arm saw and on HumanEval. `phi experiment data-quality` is the
//! same program; see the README for a run's results.
//!
//! ```bash
//! cargo run --release --example data_quality
//! cargo run --release --example data_quality -- --classifier runs/quality_filter/classifier --seeds 0,1,2,3
//! ```

use clap::Parser;

#[path = "../src/bin/phi/args.rs"]
#[allow(dead_code)]
mod args;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: args::DataQualityArgs,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    Cli::parse().args.run()
}
