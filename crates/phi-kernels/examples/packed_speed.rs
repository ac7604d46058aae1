//! Throughput of `PackedMatrix::matmul` on one shape (default phi-1.5's fc1, 2048 → 8192; pass
//! `IN OUT`): 128 rows (a prompt: bf16 through tiles widened for gemm, int8/int4 the integer
//! products 64 rows at a time; beside an f32 gemm on the same matrix) and
//! 1, 4, 16 and 64 rows (decoding one sequence or a batch: weight GB/s read, best of 4). Twelve copies of the matrix, so the
//! one-row figures come from memory, not cache. `PHI_NO_AVX512=1` / `PHI_PORTABLE_KERNELS=1`
//! select the narrower kernels.
//!
//! `cargo run --release -p phi-kernels --example packed_speed [-- 8192 2048]`
use phi_kernels::packed::{PackedMatrix, WeightFormat};
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let (d_in, d_out) = if args.len() == 2 { (args[0], args[1]) } else { (2048usize, 8192usize) };
    let copies = 12; // > caches: 12 fc1-sized matrices
    let w: Vec<f32> = (0..d_in * d_out).map(|i| ((i * 2654435761usize) % 1000) as f32 / 1000.0 - 0.5).collect();
    let rows = 128;
    let xr: Vec<f32> = (0..rows * d_in).map(|i| (i % 13) as f32 / 13.0).collect();
    let mut yr = vec![0.0f32; rows * d_out];
    for rep in 0..3 {
        let t = Instant::now();
        for _ in 0..copies {
            unsafe {
                gemm::gemm(rows, d_out, d_in, yr.as_mut_ptr(), 1, d_out as isize, false, xr.as_ptr(), 1, d_in as isize, w.as_ptr(), 1, d_out as isize, 0.0, 1.0, false, false, false, gemm::Parallelism::Rayon(0));
            }
        }
        if rep > 0 {
            println!("f32 gemm {rows} rows: {:.1} GMAC/s", (copies * rows * d_in * d_out) as f64 / t.elapsed().as_secs_f64() / 1e9);
        }
    }
    for f in [WeightFormat::Bf16, WeightFormat::Int8, WeightFormat::Int4] {
        let m = PackedMatrix::pack(&w, d_in, d_out, f).unwrap();
        for rep in 0..3 {
            let t = Instant::now();
            for _ in 0..copies {
                m.matmul(&xr, rows, &mut yr);
            }
            if rep > 0 {
                println!("{f} prompt {rows} rows: {:.1} GMAC/s", (copies * rows * d_in * d_out) as f64 / t.elapsed().as_secs_f64() / 1e9);
            }
        }
    }
    for f in [WeightFormat::Bf16, WeightFormat::Int8, WeightFormat::Int4] {
        let mats: Vec<PackedMatrix> = (0..copies).map(|_| PackedMatrix::pack(&w, d_in, d_out, f).unwrap()).collect();
        let bytes: usize = mats.iter().map(|m| m.bytes()).sum();
        // Decoding: one row, and the rows of a batch of sequences.
        for rows in [1usize, 4, 16, 64] {
            let x: Vec<f32> = (0..rows * d_in).map(|i| (i % 13) as f32 / 13.0).collect();
            let mut y = vec![0.0f32; rows * d_out];
            let mut best = f64::MAX;
            for _ in 0..4 {
                let t = Instant::now();
                for m in &mats {
                    m.matmul(&x, rows, &mut y);
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!("{f} {rows:>2} rows: {:.1} GB/s of weights, {:.2} GMAC/s", bytes as f64 / best / 1e9, (copies * rows * d_in * d_out) as f64 / best / 1e9);
        }
    }
}
