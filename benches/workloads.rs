//! `cargo bench`: the workloads of `phi bench` (forward, greedy generation, and the training
//! steps: full, LoRA, SFT, DPO with precomputed and with live reference log-probs) on the
//! bench-small shape of `benches/torch_baseline.py`, one line of tokens/s each.
//!
//! `cargo bench --bench workloads -- train` runs the workloads whose name contains `train`.
//! The backend is `Device::default()`'s: flex in a default build; with the GPU backends
//! compiled in, `BURN_DEVICE` (`flex`, `wgpu`, `cuda`) chooses.
//!
//! Under `cargo test` (no `--bench` argument) every workload runs once on a tiny shape, so the
//! test suite keeps this target compiling and working (criterion's test mode). For same-run
//! ratios against PyTorch or an earlier binary, use `phi bench` (BENCHMARKS.md).

use burn::tensor::Device;
use phi::bench::{BenchOptions, PreferenceBench, baseline_config, bench_forward, bench_generate_split, bench_preference, bench_train};
use phi::core::PhiForCausalLM;

type Workload = fn(&phi::core::PhiConfig, &BenchOptions, &Device) -> f64;

const WORKLOADS: [(&str, Workload); 7] = [
    ("forward", |c, a, d| bench_forward(&model(c, d), a, d)),
    ("generate", |c, a, d| bench_generate_split(&model(c, d), a).tokens_per_s),
    ("train_step", |c, a, d| bench_train(c, a, d, false)),
    ("lora_step", |c, a, d| bench_train(c, a, d, true)),
    ("sft_step", |c, a, d| bench_preference(c, a, d, PreferenceBench::Sft)),
    ("dpo_step", |c, a, d| bench_preference(c, a, d, PreferenceBench::DpoPrecomputed)),
    ("dpo_step_live", |c, a, d| bench_preference(c, a, d, PreferenceBench::DpoLive)),
];

fn model(config: &phi::core::PhiConfig, device: &Device) -> PhiForCausalLM {
    PhiForCausalLM::init(config.clone(), device, 0).expect("a valid bench config")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // cargo passes `--bench` to a bench target under `cargo bench`, and nothing under `cargo test`.
    let bench = args.iter().any(|a| a == "--bench");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let options = if bench {
        BenchOptions::default()
    } else {
        BenchOptions { hidden: 32, layers: 1, heads: 2, vocab: 64, batch: 2, seq: 8, steps: 1, gen_tokens: 2, ..BenchOptions::default() }
    };
    let device = Device::default();
    for (arch, phi3) in [("phi", false), ("phi3", true)] {
        let config = baseline_config(&options, phi3);
        for (name, run) in WORKLOADS {
            let id = format!("{name}/{arch}");
            if !filters.is_empty() && !filters.iter().any(|f| id.contains(f.as_str())) {
                continue;
            }
            let tokens_per_s = run(&config, &options, &device);
            assert!(tokens_per_s.is_finite() && tokens_per_s > 0.0, "{id}: {tokens_per_s} tokens/s");
            if bench {
                println!("{id:<20} {tokens_per_s:>12.0} tokens/s  (batch {}, seq {}, median of {} steps)", options.batch, options.seq, options.steps);
            } else {
                println!("{id:<20} ok");
            }
        }
    }
}
