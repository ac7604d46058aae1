//! The memory a training run needs, estimated from its configs before anything is allocated,
//! and the host memory there is for it. A run that cannot fit is refused with both numbers and
//! the setting to change, instead of dying in the allocator (an abort, exit 134) minutes in.
//!
//! The estimate counts what a step holds at its peak:
//! - weights: every parameter in f32 (the masters), plus the bf16/f16 compute copy;
//! - gradients: one f32 per trainable parameter;
//! - AdamW: two f32 moments per trainable parameter (1/N of them per rank with ZeRO-1);
//! - activations kept for the backward pass of one micro-batch:
//!   `rows × seq_len × layers × (ACTIVATIONS_PER_HIDDEN × hidden + ACTIVATIONS_PER_INTERMEDIATE
//!   × intermediate)` values (see the constants; with activation checkpointing, one value per
//!   hidden unit per layer plus one layer's worth);
//! - logits: `rows × seq_len × vocab` f32 values, three times (the logits, their softmax and
//!   their gradient).
//!
//! Calibrated on the flex CPU backend with `phi bench train` (hidden 256, 4 layers, vocab 8192,
//! seq 256): from batch 8 to 64 the peak RSS grew by 48.5 MiB a sequence for the phi block and
//! 54 for the phi3 block; the estimate says 52 and 46. It is meant to refuse what cannot fit (a
//! batch of 100,000 sequences, a LoRA rank of 100,000), not to police the last gigabyte.

use std::path::Path;

use phi_core::PhiConfig;

use crate::{Precision, TrainConfig};

/// Activation values the backward pass keeps per token, layer and unit of `hidden_size`: the
/// block input, the normalized input (twice for a sequential block), q, k and v, the rotated q
/// and k, the attention output and the residual sums.
pub const ACTIVATIONS_PER_HIDDEN: u64 = 12;
/// … and per unit of `intermediate_size`: the MLP's up-projection output, its activation (for a
/// gated MLP the gate and the product too) — what the backward of the activation and of the
/// down projection read.
pub const ACTIVATIONS_PER_INTERMEDIATE: u64 = 4;

/// A run's memory, in bytes, by what holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    pub weights: u64,
    pub gradients: u64,
    pub optimizer: u64,
    pub activations: u64,
    pub logits: u64,
    /// Of `weights + gradients + optimizer`: what the LoRA adapters take (0 for a full run).
    pub adapters: u64,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.weights.saturating_add(self.gradients).saturating_add(self.optimizer).saturating_add(self.activations).saturating_add(self.logits)
    }

    /// What one sequence of a micro-batch adds (activations and logits scale with the batch).
    fn per_batch(&self) -> u64 {
        self.activations.saturating_add(self.logits)
    }
}

/// What a run trains, for the estimate: the model, the parameters that get gradients and how
/// many rows each batch item puts through the model (2 for a preference pair).
#[derive(Debug, Clone, Copy)]
pub struct RunShape<'a> {
    pub model: &'a PhiConfig,
    /// Parameters with gradients and optimizer state: all of them, or a LoRA run's adapters.
    pub trainable: u64,
    /// Of `trainable`, the LoRA adapters' parameters (they add weights as well); 0 for a full run.
    pub adapters: u64,
    pub rows_per_item: usize,
}

/// How many ranks share the AdamW state: the process-wide world's size ([`crate::dist::world`])
/// under `zero = 1`, else 1.
fn optimizer_shards(cfg: &TrainConfig) -> u64 {
    if cfg.zero == 1 { crate::dist::world().size().max(1) as u64 } else { 1 }
}

fn mul(values: &[u64]) -> u64 {
    values.iter().fold(1u64, |a, &b| a.saturating_mul(b))
}

/// The memory a run of `cfg` on `run` needs at its peak (see the module docs).
pub fn estimate(run: RunShape<'_>, cfg: &TrainConfig) -> MemoryEstimate {
    let m = run.model;
    let params = m.num_parameters().saturating_add(run.adapters);
    let compute_bytes = match cfg.precision {
        Precision::F32 => 4,
        Precision::Bf16 | Precision::F16 => 2,
    };
    let copy = if cfg.precision == Precision::F32 { 0 } else { params.saturating_mul(2) };
    let tokens = mul(&[cfg.batch_size as u64, run.rows_per_item as u64, cfg.seq_len as u64]);
    let per_layer = ACTIVATIONS_PER_HIDDEN * m.hidden_size as u64 + ACTIVATIONS_PER_INTERMEDIATE * m.intermediate_size as u64;
    let layers = m.num_hidden_layers as u64;
    let kept = if cfg.activation_checkpointing {
        // Each layer's input is kept, and one layer's activations are rebuilt at a time.
        (m.hidden_size as u64).saturating_mul(layers).saturating_add(per_layer)
    } else {
        per_layer.saturating_mul(layers)
    };
    MemoryEstimate {
        weights: params.saturating_mul(4).saturating_add(copy),
        gradients: run.trainable.saturating_mul(4),
        // ZeRO-1 in a data-parallel run: this rank's share of the moments.
        optimizer: run.trainable.saturating_mul(8).div_ceil(optimizer_shards(cfg)),
        activations: mul(&[tokens, kept, compute_bytes]),
        logits: mul(&[tokens, m.vocab_size as u64, 4, 3]),
        adapters: run.adapters.saturating_mul(16),
    }
}

/// Host memory this process can still use, in bytes, and where the figure comes from:
/// `MemAvailable` of `/proc/meminfo`, lowered to the room left under the cgroup's memory limit
/// (a container sees the host's `MemAvailable`), plus what this process already holds (a base
/// model loaded before training is memory the estimate counts again). `None` off Linux.
pub fn host_available() -> Option<(u64, String)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let mut available = kib_field(&meminfo, "MemAvailable:")?;
    let mut source = "MemAvailable in /proc/meminfo".to_string();
    for (limit, usage) in [
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ] {
        if let (Some(limit), Some(usage)) = (read_bytes(Path::new(limit)), read_bytes(Path::new(usage))) {
            let room = limit.saturating_sub(usage);
            if room < available {
                available = room;
                source = "the room under the cgroup's memory limit".to_string();
            }
            break;
        }
    }
    let own = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| kib_field(&s, "VmRSS:")).unwrap_or(0);
    Some((available.saturating_add(own), format!("{source}, plus the {} this process holds", human(own))))
}

/// A `Name:   123 kB` line of a /proc file, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse::<u64>().ok().map(|k| k.saturating_mul(1024))
}

/// A cgroup file holding a byte count (`max`, no limit, reads as `None`).
fn read_bytes(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `12.3 GiB`, `45.6 MiB`, `789 KiB`.
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    for (unit, size) in [("TiB", 1u64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)] {
        if bytes >= size {
            return format!("{:.1} {unit}", b / size as f64);
        }
    }
    format!("{:.0} KiB", b / 1024.0)
}

/// Refuses a run whose estimate exceeds `available` bytes (from `source`), naming what to
/// change: the micro-batch (with the largest `batch_size` that fits), the LoRA rank, or the
/// model itself.
pub fn check(run: RunShape<'_>, cfg: &TrainConfig, available: u64, source: &str) -> std::result::Result<MemoryEstimate, String> {
    let e = estimate(run, cfg);
    if e.total() <= available {
        return Ok(e);
    }
    let rows = cfg.batch_size as u64 * run.rows_per_item as u64;
    let parts = format!(
        "weights {}, gradients {}, AdamW moments {}, activations of a micro-batch of {rows} × {} tokens {}, logits {}",
        human(e.weights),
        human(e.gradients),
        human(e.optimizer),
        cfg.seq_len,
        human(e.activations),
        human(e.logits)
    );
    let fixed = e.total() - e.per_batch();
    let per_item = e.per_batch() / cfg.batch_size.max(1) as u64;
    let (what, advice) = if e.adapters > e.per_batch() && e.adapters > fixed - e.adapters {
        ("LoRA `rank`", format!("lower the LoRA `rank` (adapters take {})", human(e.adapters)))
    } else if fixed < available && per_item > 0 {
        let fits = (available - fixed) / per_item;
        let advice = if fits == 0 {
            "lower seq_len: not even one sequence of this length fits".to_string()
        } else {
            format!("lower batch_size to at most {fits} (raise grad_accum to keep the tokens per step: it costs no memory), or lower seq_len")
        };
        ("training config `batch_size`", advice)
    } else {
        ("the model", "the model alone does not fit: train a smaller one, or LoRA on a quantized base".to_string())
    };
    Err(format!(
        "{what}: this run needs about {} of memory ({parts}) but {} is available ({source}); {advice}",
        human(e.total()),
        human(available)
    ))
}

/// [`check`] against this machine's memory ([`host_available`]) for a run on `device`. A GPU
/// holds the run in its own memory, which is not queried: only host (CPU) runs are checked.
pub fn check_device(run: RunShape<'_>, cfg: &TrainConfig, device: &burn::tensor::Device) -> crate::Result<()> {
    if !phi_core::device::is_host(device) {
        return Ok(());
    }
    match host_available() {
        Some((available, source)) => check(run, cfg, available, &source)
            .map(|_| ())
            .map_err(|message| crate::TrainError::Memory { needed: estimate(run, cfg).total(), available, message }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batch shape of the phi-1 recipe's CPU run (the `phi` crate's `Recipe::phi_1().mini`).
    fn cfg(batch_size: usize) -> TrainConfig {
        TrainConfig { batch_size, seq_len: 128, grad_accum: 1, ..TrainConfig::default() }
    }

    /// The phi-1 recipe's CPU-sized model (`Recipe::phi_1().mini_model`) with a 2048-token vocabulary.
    fn mini_model() -> PhiConfig {
        PhiConfig {
            hidden_size: 128,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 4,
            head_dim: 32,
            intermediate_size: 512,
            max_position_embeddings: 256,
            vocab_size: 2048,
            ..PhiConfig::phi_1()
        }
    }

    #[test]
    fn the_estimate_adds_up_its_parts() {
        let model = mini_model();
        let n = model.num_parameters();
        let run = RunShape { model: &model, trainable: n, adapters: 0, rows_per_item: 1 };
        let e = estimate(run, &cfg(16));
        assert_eq!((e.weights, e.gradients, e.optimizer), (4 * n, 4 * n, 8 * n));
        // 16 × 128 tokens × 4 layers × (12 × 128 + 4 × 512) values × 4 bytes.
        assert_eq!(e.activations, 16 * 128 * 4 * (12 * 128 + 4 * 512) * 4);
        assert_eq!(e.logits, 16 * 128 * 2048 * 4 * 3);
        assert_eq!(e.total(), e.weights + e.gradients + e.optimizer + e.activations + e.logits);
        // Twice the batch, twice the per-batch part; the rest stays.
        let e2 = estimate(run, &cfg(32));
        assert_eq!((e2.activations, e2.logits, e2.weights), (2 * e.activations, 2 * e.logits, e.weights));
        // A preference pair is two rows.
        assert_eq!(estimate(RunShape { rows_per_item: 2, ..run }, &cfg(16)).activations, e2.activations);
    }

    #[test]
    fn a_huge_batch_is_refused_with_the_estimate_the_memory_and_a_batch_that_fits() {
        let model = mini_model();
        let run = RunShape { model: &model, trainable: model.num_parameters(), adapters: 0, rows_per_item: 1 };
        let available = 8u64 << 30;
        check(run, &cfg(16), available, "test").unwrap();
        let e = check(run, &cfg(100_000), available, "MemAvailable in /proc/meminfo").unwrap_err();
        let total = human(estimate(run, &cfg(100_000)).total());
        assert!(e.starts_with("training config `batch_size`: this run needs about ") && e.contains(&total), "{e}");
        assert!(e.contains("but 8.0 GiB is available (MemAvailable in /proc/meminfo)"), "{e}");
        let fits: usize = e.split("at most ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        check(run, &cfg(fits), available, "test").unwrap();
        check(run, &cfg(fits + 1), available, "test").unwrap_err();
    }

    #[test]
    fn huge_lora_adapters_name_the_rank() {
        let model = mini_model();
        let adapters = 50_000_000_000;
        let run = RunShape { model: &model, trainable: adapters, adapters, rows_per_item: 1 };
        let e = check(run, &cfg(16), 8 << 30, "test").unwrap_err();
        assert!(e.starts_with("LoRA `rank`: this run needs about") && e.contains("lower the LoRA `rank`"), "{e}");
    }

    #[test]
    fn this_machine_reports_its_available_memory() {
        let (bytes, source) = host_available().expect("Linux has /proc/meminfo");
        assert!(bytes > 1 << 20 && source.contains("MemAvailable") || source.contains("cgroup"), "{bytes} {source}");
    }
}
