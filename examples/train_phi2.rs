//! Pre-trains a phi-2-family model: on the CPU a scaled-down model of the same family on a
//! local code corpus (minutes, into `runs/phi-2`), or with `--full` the published architecture
//! and recipe on a CUDA GPU. Resumes from the newest checkpoint there unless `--fresh`.
//! `phi train --recipe phi-2` is the same run with every setting a flag.
//!
//! ```bash
//! cargo run --release --example train_phi2
//! cargo run --release --example train_phi2 -- --fresh                  # start over
//! cargo run --release --features cuda --example train_phi2 -- --full   # the published model
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
    run(Recipe::phi_2(), options)
}
