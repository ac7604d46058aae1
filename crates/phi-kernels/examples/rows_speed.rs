//! Throughput of `rows::matmul_rows` (f32 weights read in place: the decode step's products) on
//! one row-major shape, default the bench-small LM head (256 → 50304; pass `IN OUT`), 1–64 rows,
//! best of 20 calls (`MEAN=1`: their mean): in place, and repacked in strips (`rows::Strips`).
//!
//! `cargo run --release -p phi-kernels --example rows_speed [-- 2048 8192]`
use phi_kernels::rows::{Strips, Weights, matmul_rows};
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let (k, n) = if args.len() == 2 { (args[0], args[1]) } else { (256usize, 50304usize) };
    let w: Vec<f32> = (0..k * n).map(|i| ((i * 2654435761usize) % 1000) as f32 / 1000.0 - 0.5).collect();
    let strips = Strips::pack(&w, k, n);
    for rows in [1usize, 2, 4, 6, 8, 12, 16, 32, 64] {
        let x: Vec<f32> = (0..rows * k).map(|i| (i % 13) as f32 / 13.0).collect();
        let mut y = vec![0.0f32; rows * n];
        for (name, weights) in [("in place", Weights::RowMajor(&w)), ("strips", Weights::Strips(&strips))] {
            let (mut best, mut total) = (f64::MAX, 0.0);
            for _ in 0..20 {
                let t = Instant::now();
                matmul_rows(&x, rows, weights, k, n, &mut y);
                let s = t.elapsed().as_secs_f64();
                best = best.min(s);
                total += s;
            }
            if std::env::var("MEAN").is_ok() { best = total / 20.0; }
            println!("{rows:>2} rows, {name:>8}: {:.3} ms, {:.1} GMAC/s, {:.1} GB/s of weights", best * 1e3, (rows * k * n) as f64 / best / 1e9, (4 * k * n) as f64 / best / 1e9);
        }
    }
}
