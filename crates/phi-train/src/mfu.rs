//! Model FLOPs utilisation: training FLOPs per second over the device's peak. The peak is the
//! device's own — looked up by the accelerator's name in [`GPU_PEAKS`], or given
//! (`peak_flops` in the training config, `phi train --peak-flops`) — never a guess: on a CPU, or
//! a GPU the table does not know, a run without a given peak reports no MFU at all.

use burn::tensor::Device;
use phi_core::PhiConfig;

use crate::Precision;

/// One accelerator's dense (no sparsity) peak FLOP/s, from the vendor's data sheet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuPeak {
    /// Matched against the name the device reports (`NVIDIA H100 80GB HBM3`): every word here
    /// must appear in it, and the first entry that matches wins (so the variants come first).
    pub name: &'static str,
    /// bf16/f16 tensor-core peak.
    pub half: f64,
    /// The peak of an f32 run: the TF32 tensor-core rate where the card has one. Kernels may
    /// run f32 matmuls in TF32, and the higher of the two rates keeps MFU an honest ≤ 100%.
    pub single: f64,
}

/// Dense peaks of the data-centre GPUs a Phi run is likely to meet (NVIDIA data sheets).
pub const GPU_PEAKS: &[GpuPeak] = &[
    GpuPeak { name: "GH200", half: 989.4e12, single: 494.7e12 },
    GpuPeak { name: "H200", half: 989.4e12, single: 494.7e12 },
    GpuPeak { name: "H100 PCIe", half: 756.0e12, single: 378.0e12 },
    GpuPeak { name: "H100 NVL", half: 835.0e12, single: 417.5e12 },
    GpuPeak { name: "H100", half: 989.4e12, single: 494.7e12 },
    GpuPeak { name: "H800", half: 989.4e12, single: 494.7e12 },
    GpuPeak { name: "A100", half: 312.0e12, single: 156.0e12 },
    GpuPeak { name: "A800", half: 312.0e12, single: 156.0e12 },
    GpuPeak { name: "L40S", half: 362.05e12, single: 183.0e12 },
    GpuPeak { name: "L40", half: 181.05e12, single: 90.5e12 },
    GpuPeak { name: "A10G", half: 125.0e12, single: 62.5e12 },
    GpuPeak { name: "A10", half: 125.0e12, single: 62.5e12 },
    GpuPeak { name: "L4", half: 121.0e12, single: 60.0e12 },
    GpuPeak { name: "V100", half: 125.0e12, single: 15.7e12 },
    GpuPeak { name: "T4", half: 65.0e12, single: 8.1e12 },
];

/// The table's entry for a device named `name`: every word of the entry's name is a word of
/// `name` (so `A10` does not match `A100`, nor `L4` `L40S`).
pub fn gpu_peak(name: &str) -> Option<&'static GpuPeak> {
    let words: Vec<String> = name.split(|c: char| c.is_whitespace() || c == '-' || c == '_').map(str::to_ascii_uppercase).collect();
    GPU_PEAKS.iter().find(|p| p.name.split_whitespace().all(|w| words.iter().any(|x| x == &w.to_ascii_uppercase())))
}

/// The peak FLOP/s a run at `precision` on the accelerator named `name` can reach, if the table
/// knows the card.
pub fn peak_for(name: &str, precision: Precision) -> Option<f64> {
    gpu_peak(name).map(|p| match precision {
        Precision::F32 => p.single,
        Precision::Bf16 | Precision::F16 => p.half,
    })
}

/// The peak MFU is measured against: `given` (the config's `peak_flops`) if set, else the
/// table's for the accelerator `device` runs on; `None` on a CPU or an unknown GPU.
pub fn device_peak(given: Option<f64>, device: &Device, precision: Precision) -> Option<f64> {
    given.or_else(|| phi_core::device::accelerator_name(device).and_then(|name| peak_for(&name, precision)))
}

/// Training FLOPs per token: 6 per weight a token goes through in a matmul (2 forward, 4
/// backward) plus 6·L·T·d for attention's score and value products (causal: half of T², times
/// forward + backward). The input embedding is a table lookup, not a matmul, so an untied
/// table is left out (a tied one is the head's weight and counts). This undercounts nothing a
/// step computes, so MFU against a true peak stays ≤ 100%.
pub fn flops_per_token(config: &PhiConfig, seq_len: usize) -> f64 {
    let lookup = if config.tie_word_embeddings { 0 } else { config.vocab_size as u64 * config.hidden_size as u64 };
    let matmul = config.num_parameters().saturating_sub(lookup) as f64;
    let attn = (config.num_hidden_layers * seq_len * config.num_attention_heads * config.head_dim) as f64;
    6.0 * matmul + 6.0 * attn
}

/// MFU of a step that trained `tokens_per_s` tokens a second, `None` without a peak. A figure
/// above 1 cannot be: it means the peak given is below the device's, so it is left out rather
/// than reported as more than the hardware can do.
pub fn mfu(tokens_per_s: f64, flops_per_token: f64, peak: Option<f64>) -> Option<f64> {
    let m = tokens_per_s * flops_per_token / peak?;
    (m.is_finite() && m <= 1.0).then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_are_looked_up_by_whole_words_of_the_device_name() {
        let h100 = gpu_peak("NVIDIA H100 80GB HBM3").unwrap();
        assert_eq!((h100.name, h100.half), ("H100", 989.4e12));
        assert_eq!(gpu_peak("NVIDIA H100 PCIe").unwrap().name, "H100 PCIe");
        assert_eq!(gpu_peak("NVIDIA GH200 480GB").unwrap().name, "GH200");
        assert_eq!(gpu_peak("NVIDIA A100-SXM4-80GB").unwrap().name, "A100");
        assert_eq!(gpu_peak("NVIDIA A10").unwrap().name, "A10");
        assert_eq!(gpu_peak("NVIDIA L40S").unwrap().name, "L40S");
        assert_eq!(gpu_peak("NVIDIA L4").unwrap().name, "L4");
        assert_eq!(gpu_peak("llvmpipe (LLVM 15.0.6, 256 bits)"), None);
        assert_eq!(peak_for("NVIDIA H100 80GB HBM3", Precision::Bf16), Some(989.4e12));
        assert_eq!(peak_for("NVIDIA H100 80GB HBM3", Precision::F32), Some(494.7e12));
    }

    #[test]
    fn a_cpu_has_no_peak_unless_one_is_given() {
        let cpu = Device::default();
        assert_eq!(device_peak(None, &cpu, Precision::F32), None);
        assert_eq!(device_peak(Some(2e11), &cpu, Precision::F32), Some(2e11));
    }

    #[test]
    fn mfu_is_never_above_one() {
        assert_eq!(mfu(1000.0, 1e6, None), None);
        assert_eq!(mfu(1000.0, 1e6, Some(1e10)), Some(0.1));
        assert_eq!(mfu(1000.0, 1e6, Some(1e9)), Some(1.0));
        // A peak below what was done is wrong: no figure rather than 1000%.
        assert_eq!(mfu(1000.0, 1e6, Some(1e8)), None);
    }

    #[test]
    fn the_embedding_lookup_is_no_matmul() {
        let untied = phi_core::PhiConfig::phi_family(64, 2, 4, 1000, 0.5);
        let tied = phi_core::PhiConfig { tie_word_embeddings: true, ..untied.clone() };
        let lookup = 6.0 * (1000 * 64) as f64;
        assert_eq!(flops_per_token(&untied, 16), 6.0 * untied.num_parameters() as f64 - lookup + 6.0 * (2 * 16 * 64) as f64);
        // Tied, the one table is the head's weight: every parameter counts.
        assert_eq!(flops_per_token(&tied, 16), 6.0 * tied.num_parameters() as f64 + 6.0 * (2 * 16 * 64) as f64);
    }
}
