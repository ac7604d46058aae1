//! LoRA fine-tuning on exercises (Python functions with docstrings from code the base never
//! saw), phi-1's recipe in miniature. Starts from `train_phi1`'s checkpoint if there is one,
//! else trains a small base first. Shows the held-out loss and a completion before and after,
//! and writes the adapter (PEFT format) and the merged model to `runs/finetune_lora`.
//! `phi finetune` is the same run with every setting a flag.
//!
//! ```bash
//! cargo run --release --example finetune_lora
//! cargo run --release --example finetune_lora -- --fresh   # start over
//! ```

use phi::finetune::{FinetuneOptions, run};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fresh = std::env::args().skip(1).any(|w| w == "--fresh");
    // r 8, alpha 16 on q/k/v, dense, fc1 and fc2; 200 steps of 16 exercises at lr 2e-3.
    run(FinetuneOptions { fresh, ..FinetuneOptions::default() })
}
