//! LoRA fine-tuning on exercises (Python functions with docstrings from code the base never
//! saw), phi-1's recipe in miniature. Starts from `train_phi1`'s checkpoint if there is one,
//! else trains a small base first. Shows the held-out loss and a completion before and after.
//!
//! ```bash
//! cargo run --release --example finetune_lora
//! ```

use clap::Parser;

#[path = "../src/bin/phi/args.rs"]
#[allow(dead_code)]
mod args;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    phi::finetune::run(args::FinetuneArgs::parse().options())
}
