//! The Rust half of `scripts/gpu-check`: what a GPU machine (no Rust toolchain, no network) runs
//! from a binary built here with `--features cuda` (see `scripts/build-gpu-check`).
//!
//! - `parity`: every fixture model on the device (f32) against its transformers logits;
//! - `train`: mixed-precision training steps of a phi-1.5-sized model ([`phi::bench::bench_train`],
//!   the step every objective runs), tokens/s and MFU;
//! - `decode`: greedy decoding with the KV cache at batch 1 and 16, tokens/s;
//! - `dp`: the data-parallel step on 1, 2, 4, … of the machine's `--gpus` GPUs (one rank per
//!   GPU, as threads of this process: [`phi::train::dist::LocalGroup`]), unsharded and with
//!   ZeRO-1, tokens/s and the scaling efficiency against one GPU. The gradients and weights go
//!   device → host → device as on the MPI path, but are summed in shared host buffers
//!   (each rank a 1/N segment) rather than sent between processes. On one GPU: world size 1
//!   through the same code.
//!
//! Prints one JSON object per result line on stdout; the script gathers them.
//!
//! ```bash
//! cargo run --release --features cuda --example gpu_check -- parity --fixtures crates/phi-core/tests/fixtures
//! ```

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::Parser;
use phi::core::PhiForCausalLM;
use phi::device::Backend;
use safetensors::{Dtype, SafeTensors};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// parity, train, decode, dp or all.
    what: String,
    /// dp: the machine's GPUs (the script counts them with nvidia-smi).
    #[arg(long, default_value_t = 1)]
    gpus: usize,
    #[arg(long, default_value = "cuda")]
    device: Backend,
    /// The fixture models (phi-core's tests/fixtures).
    #[arg(long, default_value = "crates/phi-core/tests/fixtures")]
    fixtures: PathBuf,
    /// The largest |logit − transformers| a fixture may show. f32 matmuls on tensor cores may
    /// round through TF32, hence looser than the CPU's 1e-4.
    #[arg(long, default_value_t = 2e-3)]
    tolerance: f32,
    // The phi-1.5 shape.
    #[arg(long, default_value_t = 2048)]
    hidden: usize,
    #[arg(long, default_value_t = 24)]
    layers: usize,
    #[arg(long, default_value_t = 32)]
    heads: usize,
    #[arg(long, default_value_t = 51200)]
    vocab: usize,
    #[arg(long, default_value_t = 2048)]
    seq: usize,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Timed training steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Training precision: bf16 (default), f16 or f32.
    #[arg(long, default_value = "bf16")]
    precision: String,
    /// Peak FLOP/s of the GPU at this precision, for MFU (default: the table's for the GPU's
    /// name, phi::train::mfu::GPU_PEAKS; no MFU for a card it does not know).
    #[arg(long)]
    peak_flops: Option<f64>,
    /// Decode batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    decode_batches: Vec<usize>,
    #[arg(long, default_value_t = 32)]
    prompt: usize,
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let device = a.device.device()?;
    let all = a.what == "all";
    if !all && !["parity", "train", "decode", "dp"].contains(&a.what.as_str()) {
        return Err(format!("`{}`: expected parity, train, decode, dp or all", a.what).into());
    }
    if all || a.what == "parity" {
        parity(&a, &device)?;
    }
    if all || a.what == "train" {
        train(&a)?;
    }
    if all || a.what == "decode" {
        decode(&a, &device)?;
    }
    if all || a.what == "dp" {
        data_parallel(&a)?;
    }
    Ok(())
}

/// f32 tensors and i64 ids of a `reference.safetensors`.
fn reference(path: &std::path::Path) -> Result<std::collections::HashMap<String, (Vec<usize>, Vec<f64>)>, Box<dyn std::error::Error>> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)?;
    let mut out = std::collections::HashMap::new();
    for (name, view) in st.tensors() {
        let values: Vec<f64> = match view.dtype() {
            Dtype::F32 => view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64).collect(),
            Dtype::I64 => view.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f64).collect(),
            other => return Err(format!("{}: {name} has dtype {other:?}", path.display()).into()),
        };
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(out)
}

fn parity(a: &Args, device: &Device) -> Result<(), Box<dyn std::error::Error>> {
    let cases = [
        ("phi-tiny", ""),
        ("phi-qkln-tiny", ""),
        ("phi3-tiny", ""),
        ("phi3-gqa-tiny", ""),
        ("phi3-longrope-tiny", "_short"),
        ("phi3-longrope-tiny", "_long"),
    ];
    let mut failed = vec![];
    for (name, tag) in cases {
        let dir = a.fixtures.join(name);
        let model = PhiForCausalLM::from_pretrained(&dir, device)?;
        let r = reference(&dir.join("reference.safetensors"))?;
        let (ids_shape, ids) = &r[&format!("input_ids{tag}")];
        let ids: Vec<i64> = ids.iter().map(|&v| v as i64).collect();
        let x = Tensor::<2, Int>::from_data(TensorData::new(ids, [ids_shape[0], ids_shape[1]]), device);
        let logits = model.try_forward(x)?.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| format!("{e:?}"))?;
        let (_, expect) = &r[&format!("logits{tag}")];
        let diff = logits.iter().zip(expect).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
        let ok = diff <= a.tolerance as f64 && logits.len() == expect.len();
        if !ok {
            failed.push(format!("{name}{tag}"));
        }
        println!("{}", json!({"check": "parity", "model": format!("{name}{tag}"), "max_abs_diff": diff, "tolerance": a.tolerance, "ok": ok}));
    }
    if failed.is_empty() { Ok(()) } else { Err(format!("parity failed: {}", failed.join(", ")).into()) }
}

fn options(a: &Args) -> Result<phi::bench::BenchOptions, Box<dyn std::error::Error>> {
    let precision = serde_json::from_value(serde_json::Value::String(a.precision.to_lowercase())).map_err(|_| format!("--precision `{}`: expected bf16, f16 or f32", a.precision))?;
    Ok(phi::bench::BenchOptions {
        workload: phi::bench::Workload::Train,
        arch: phi::bench::Arch::Phi,
        hidden: a.hidden,
        layers: a.layers,
        heads: a.heads,
        vocab: a.vocab,
        batch: a.batch,
        seq: a.seq,
        steps: a.steps,
        gen_tokens: a.new_tokens,
        device: a.device,
        precision,
        ..Default::default()
    })
}

fn train(a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let o = options(a)?;
    let config = phi::bench::baseline_config(&o, false);
    let device = a.device.device()?;
    let tokens_per_s = phi::bench::bench_train(&config, &o, &device, false);
    let flops = phi::train::flops_per_token(&config, a.seq);
    let peak = phi::train::mfu::device_peak(a.peak_flops, &device, o.precision);
    println!(
        "{}",
        json!({
            "check": "train", "params": config.num_parameters(), "batch": a.batch, "seq": a.seq, "precision": a.precision,
            "tokens_per_s": tokens_per_s, "flops_per_token": flops, "mfu": phi::train::mfu::mfu(tokens_per_s, flops, peak), "peak_flops": peak,
            "device_name": phi::core::device::accelerator_name(&device),
        })
    );
    Ok(())
}

/// Greedy decoding of `new_tokens` after a `prompt`-token prompt for each batch size: one
/// batched prefill, then one batched step per token through the KV cache.
fn decode(a: &Args, device: &Device) -> Result<(), Box<dyn std::error::Error>> {
    let o = options(a)?;
    let config = phi::bench::baseline_config(&o, false);
    let model = PhiForCausalLM::init(config, device, 0)?;
    for &b in &a.decode_batches {
        let run = |new_tokens: usize| -> Result<f64, Box<dyn std::error::Error>> {
            let prompt: Vec<i64> = (0..b * a.prompt).map(|i| ((i * 7919 + 13) % a.vocab) as i64).collect();
            let mut cache = model.new_cache();
            let start = Instant::now();
            let mut x = Tensor::<2, Int>::from_data(TensorData::new(prompt, [b, a.prompt]), device);
            for _ in 0..new_tokens {
                let logits = model.forward_cached(x, &mut cache, true)?; // [b, 1, vocab]
                // Reading the ids back waits for the device, as a server streaming tokens must.
                let next = logits.argmax(2).reshape([b, 1]);
                let ids = next.into_data().convert::<i64>().try_into_vec::<i64>().map_err(|e| format!("{e:?}"))?;
                x = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, 1]), device);
            }
            Ok(start.elapsed().as_secs_f64())
        };
        run(4)?; // warm-up: kernels compiled and autotuned
        let secs = run(a.new_tokens)?;
        println!(
            "{}",
            json!({"check": "decode", "batch": b, "prompt": a.prompt, "new_tokens": a.new_tokens, "seconds": secs,
                   "tokens_per_s": (b * a.new_tokens) as f64 / secs, "sequences_per_s_per_token": a.new_tokens as f64 / secs})
        );
    }
    Ok(())
}

/// The training step data-parallel on `n` = 1, 2, 4, … GPUs (and all of them), one rank per GPU
/// taking one micro-batch of `batch` sequences per step (the global batch grows with `n`: weak
/// scaling, as the published recipes' global batches are far larger than one GPU's), the AdamW
/// state whole on each rank and then sharded (ZeRO-1). Scaling efficiency: tokens/s on `n`
/// GPUs over `n` times one GPU's.
fn data_parallel(a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut sizes: Vec<usize> = std::iter::successors(Some(1usize), |n| Some(n * 2)).take_while(|&n| n <= a.gpus).collect();
    if !sizes.contains(&a.gpus) {
        sizes.push(a.gpus);
    }
    // A rank that panics (out of memory, say) would leave the others waiting in a collective
    // forever: the whole check ends instead, with the panic's message.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        std::process::exit(101);
    }));
    for zero in [0u8, 1] {
        let mut one_gpu = None;
        for &n in &sizes {
            let o = phi::bench::BenchOptions { grad_accum: n, zero, ..options(a)? };
            let config = phi::bench::baseline_config(&o, false);
            let ranks = phi::train::dist::LocalGroup::new(n);
            let rates: Vec<f64> = std::thread::scope(|s| {
                let handles: Vec<_> = ranks
                    .into_iter()
                    .enumerate()
                    .map(|(gpu, world)| {
                        let (o, config) = (&o, &config);
                        s.spawn(move || {
                            let device = a.device.device_at(gpu).unwrap_or_else(|e| panic!("GPU {gpu}: {e}"));
                            phi::bench::bench_train_in(config, o, &device, false, world)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().expect("a panicking rank ends the process")).collect()
            });
            let tokens_per_s = rates[0];
            let base = *one_gpu.get_or_insert(tokens_per_s);
            println!(
                "{}",
                json!({
                    "check": "data_parallel", "gpus": n, "zero": zero, "sharded": zero == 1 && n > 1, "batch_per_gpu": a.batch, "seq": a.seq, "precision": a.precision,
                    "tokens_per_s": tokens_per_s, "scaling_efficiency": tokens_per_s / (n as f64 * base),
                })
            );
        }
    }
    Ok(())
}
