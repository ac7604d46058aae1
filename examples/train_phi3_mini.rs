//! Pre-trains a Phi-3-mini-family model: on the CPU a scaled-down model of the same family on a
//! local code corpus (minutes, into `runs/phi-3-mini`), or with `--full` the published architecture
//! and recipe on a CUDA GPU. Resumes from the newest checkpoint there unless `--fresh`.
//! `phi train --recipe phi-3-mini` is the same run with every setting a flag.
//!
//! ```bash
//! cargo run --release --example train_phi3_mini
//! cargo run --release --example train_phi3_mini -- --fresh                  # start over
//! cargo run --release --features cuda --example train_phi3_mini -- --full   # the published model
//! ```

use phi::device::Backend;
use phi::recipes::{Recipe, RecipeOptions, run};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let words: Vec<String> = std::env::args().skip(1).collect();
    let full = words.iter().any(|w| w == "--full");
    let options = RecipeOptions {
        full,
        fresh: words.iter().any(|w| w == "--fresh"),
        // The published model trains on a GPU; the CPU-sized one on the CPU.
        device: if full { Backend::Cuda } else { Backend::Cpu },
        ..RecipeOptions::default()
    };
    run(Recipe::phi_3_mini(), options)
}
