//! Scalar math written so that the compiler vectorises loops over it: no branches, no libm.

/// `exp(x)` for f32 with ≈ 2 ulp error: `2^k · p(r)`, `r = x - k ln 2`, `p` the Cephes degree-6
/// polynomial. Inputs are clamped to the finite range of f32 (−87.3 … 88.3).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: adding and subtracting it rounds to the nearest integer without a branch.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let shifted = x * LOG2E + ROUND;
    let k = shifted - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    let p = p * r * r + r + 1.0;
    // `shifted` lies in [2^23, 2^24), where the ulp is 1: its low bits are `k` over ROUND's.
    // (`k as i32` is the same integer, but Rust's saturating float-to-int cast compiled to a
    // scalar conversion and compare per value, which kept every loop over this scalar.)
    let k_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let scale = f32::from_bits(((k_int + 127) as u32) << 23);
    p * scale
}

/// `gelu_new(x) = x · σ(2u)`, `u = √(2/π)(x + 0.044715 x³)` — equal to `0.5 x (1 + tanh u)`.
#[inline(always)]
pub fn gelu_tanh_scalar(x: f32) -> f32 {
    const C: f32 = 2.0 * 0.797_884_6; // 2·√(2/π)
    let two_u = x * (C + (0.044715 * C) * x * x);
    x / (1.0 + fast_exp(-two_u))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decode attention kernels give the bits of the loops they replace: every head size
    /// (whole 16-lane chunks and a remainder), key counts around the blocks of 16, and values
    /// whose signs of zero and infinities a reordered sum would change.
    #[test]
    fn decode_attention_kernels_give_the_loops_bits() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()));
        for d in [1usize, 8, 16, 17, 32, 40, 64, 80, 96, 128, 130] {
            for n in [1usize, 15, 16, 17, 33, 100] {
                let q: Vec<f32> = (0..d).map(|_| next()).collect();
                let mut keys: Vec<f32> = (0..n * d).map(|_| next()).collect();
                // Key 3: every product −0 (its sum's sign of zero is the neutral element's); key
                // 20: an infinity.
                if n > 3 {
                    keys[3 * d..4 * d].iter_mut().zip(&q).for_each(|(k, qv)| *k = if *qv > 0.0 { -0.0 } else { 0.0 });
                }
                if n > 20 {
                    keys[20 * d] = f32::INFINITY;
                }
                let (mut fast, mut slow) = (vec![f32::NAN; n], vec![f32::NAN; n]);
                query_scores(&mut fast, &q, &keys, 0.125);
                query_scores_lanes(&mut slow, &q, &keys, 0.125);
                assert!(same(&fast, &slow), "scores, d {d}, {n} keys: {fast:?} vs {slow:?}");
                let weights: Vec<f32> = (0..n).map(|_| next().abs()).collect();
                let (mut fast, mut slow) = (vec![f32::NAN; d], vec![f32::NAN; d]);
                weighted_values(&mut fast, &weights, &keys);
                weighted_values_rows(&mut slow, &weights, &keys);
                assert!(same(&fast, &slow), "values, d {d}, {n} keys");
            }
        }
    }

    /// The exponent taken from `shifted`'s bits is `k as i32`: over every f32 from −100 to 100
    /// (and the infinities) the result is bit for bit the cast's.
    #[test]
    fn fast_exp_takes_the_exponent_from_the_bits_as_the_cast_did() {
        fn by_cast(x: f32) -> f32 {
            let x = x.clamp(-87.3, 88.3);
            let k = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
            let r = x - k * 0.693_359_4 - k * -2.121_944_4e-4;
            let p = 1.987_569_1e-4_f32;
            let p = p * r + 1.398_199_9e-3;
            let p = p * r + 8.333_452e-3;
            let p = p * r + 4.166_579_6e-2;
            let p = p * r + 1.666_666_5e-1;
            let p = p * r + 5.000_000_1e-1;
            let p = p * r * r + r + 1.0;
            p * f32::from_bits(((k as i32 + 127) as u32) << 23)
        }
        let mut checked = 0u64;
        for bits in (0..=u32::MAX).step_by(97) {
            let x = f32::from_bits(bits);
            if x.is_nan() || x.abs() > 100.0 {
                continue;
            }
            assert_eq!(fast_exp(x).to_bits(), by_cast(x).to_bits(), "x = {x:e}");
            checked += 1;
        }
        assert!(checked > 10_000_000, "{checked}");
        for x in [f32::INFINITY, f32::NEG_INFINITY, 88.3, -87.3, 0.0, -0.0] {
            assert_eq!(fast_exp(x).to_bits(), by_cast(x).to_bits(), "x = {x:e}");
        }
    }

    #[test]
    fn fast_exp_is_accurate_over_the_f32_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let exact = (x as f64).exp();
            let rel = ((fast_exp(x) as f64 - exact) / exact).abs();
            worst = worst.max(rel);
            x += 0.013;
        }
        assert!(worst < 5e-7, "max relative error {worst:e}");
        assert_eq!(fast_exp(-1000.0), fast_exp(-87.3));
        assert!(fast_exp(1000.0).is_finite());
    }

    /// The sampler's weights: `exp((x − max) / t)` to f32 accuracy, 0 at −∞, and each block's
    /// total; the same on every kernel the CPU has (only the baseline and the widest differ here).
    #[test]
    fn softmax_weights_are_the_shifted_exponentials_with_block_totals() {
        let x: Vec<f32> = (0..1000).map(|i| if i % 97 == 5 { f32::NEG_INFINITY } else { ((i * 31 % 113) as f32 - 56.0) / 9.0 }).collect();
        let (mut out, mut blocks) = (vec![f32::NAN; x.len()], vec![f64::NAN; x.len().div_ceil(WEIGHT_BLOCK)]);
        softmax_weights(&mut out, &x, 1.0 / 0.8, &mut blocks);
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        for (i, (&o, &v)) in out.iter().zip(&x).enumerate() {
            let exact = if v == f32::NEG_INFINITY { 0.0 } else { ((v as f64 - max) / 0.8).exp() };
            // f32 arguments: rounding (x − max)/t costs up to ~2e-6 relative at the far tail.
            assert!((o as f64 - exact).abs() <= 4e-6 * exact + 1e-30, "{i}: {o} vs {exact}");
        }
        for (b, &total) in blocks.iter().enumerate() {
            let exact: f64 = out[b * WEIGHT_BLOCK..((b + 1) * WEIGHT_BLOCK).min(out.len())].iter().map(|&v| v as f64).sum();
            assert!((total - exact).abs() <= 1e-6 * exact, "block {b}: {total} vs {exact}");
        }
    }

    #[test]
    fn gelu_matches_the_tanh_formula() {
        let mut x = -12.0f32;
        while x < 12.0 {
            let xd = x as f64;
            let u = (2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd * xd * xd);
            let exact = 0.5 * xd * (1.0 + u.tanh());
            let got = gelu_tanh_scalar(x) as f64;
            assert!((got - exact).abs() <= 1e-6 * (1.0 + exact.abs()), "x = {x}: {got} vs {exact}");
            x += 0.001;
        }
    }
}

/// The maximum of `row` (−∞ when empty), in 8 lanes so that it vectorises.
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (m, x) in lanes.iter_mut().zip(c) {
            *m = if *x > *m { *x } else { *m };
        }
    }
    let max = lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    chunks.remainder().iter().copied().fold(max, f32::max)
}

/// Defines `pub fn $name(args)` that runs `$body` compiled for AVX2+FMA when the CPU has them
/// (checked once at run time) and for the baseline target otherwise — the same source twice, so
/// the default build stays portable and still gets 8-wide vectors where they exist.
macro_rules! dispatch_simd {
    // `avx512;` first: an AVX-512 build of the same source ahead of the AVX2 one (no FMA
    // contraction either way, so the values are the same).
    (avx512; $(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) { body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the feature was just detected.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the features were just detected.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) { body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the features were just detected.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

pub(crate) use dispatch_simd;

/// Weights per block of [`softmax_weights`]' block totals.
pub const WEIGHT_BLOCK: usize = 64;

dispatch_simd! {
    avx512;
    /// A sampler's unnormalised softmax at temperature `1 / inv_t`: `out[i] = exp((x[i] − max x)
    /// · inv_t)`, exactly 0 for a −∞ logit, and in `blocks[b]` the total of `out`'s block `b` of
    /// [`WEIGHT_BLOCK`] (summed in a fixed order), so that a draw skips whole blocks — one pass
    /// over a 50k vocabulary per sampled token of every sequence of a batch.
    ///
    /// # Panics
    /// When `out` is not as long as `x`, or `blocks` is not one total per [`WEIGHT_BLOCK`].
    pub fn softmax_weights(out: &mut [f32], x: &[f32], inv_t: f32, blocks: &mut [f64]) {
        assert!(out.len() == x.len() && blocks.len() == x.len().div_ceil(WEIGHT_BLOCK), "softmax_weights: {} weights and {} block totals for {} logits", out.len(), blocks.len(), x.len());
        let max = row_max(x);
        let weight = |v: f32| if v == f32::NEG_INFINITY { 0.0 } else { fast_exp((v - max) * inv_t) };
        for ((o, xs), b) in out.chunks_mut(WEIGHT_BLOCK).zip(x.chunks(WEIGHT_BLOCK)).zip(blocks.iter_mut()) {
            // Lane l sums the block's values l, l + 16, …: full 16-value chunks as fixed-size
            // arrays (so the loop compiles to vectors: over slices of unknown length it stayed
            // scalar, 130 µs for a 50k vocabulary), then a short tail into the first lanes.
            let mut lanes = [0.0f32; 16];
            let (mut oc, mut xc) = (o.chunks_exact_mut(16), xs.chunks_exact(16));
            for (o16, x16) in (&mut oc).zip(&mut xc) {
                let (o16, x16): (&mut [f32; 16], &[f32; 16]) = (o16.try_into().expect("16"), x16.try_into().expect("16"));
                for l in 0..16 {
                    o16[l] = weight(x16[l]);
                    lanes[l] += o16[l];
                }
            }
            for ((o, &v), l) in oc.into_remainder().iter_mut().zip(xc.remainder()).zip(lanes.iter_mut()) {
                *o = weight(v);
                *l += *o;
            }
            *b = lanes.iter().map(|&l| l as f64).sum();
        }
    }
}

dispatch_simd! {
    /// `gelu_new` over a slice, in place.
    pub fn gelu_tanh_slice(values: &mut [f32]) {
        for v in values.iter_mut() {
            *v = gelu_tanh_scalar(*v);
        }
    }
}

dispatch_simd! {
    /// `out = up · silu(gate)`.
    pub fn silu_glu_slice(out: &mut [f32], gate: &[f32], up: &[f32]) {
        for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
            *o = u * g / (1.0 + fast_exp(-g));
        }
    }
}

dispatch_simd! {
    avx512;
    /// [`query_scores`] as written: the reference its AVX-512 kernel is tested against, and the
    /// path of other CPUs and of the keys past the last block of 16.
    pub fn query_scores_lanes(scores: &mut [f32], q: &[f32], keys: &[f32], scale: f32) {
        let d = q.len();
        for (s, key) in scores.iter_mut().zip(keys.chunks_exact(d)) {
            let mut lanes = [0.0f32; 16];
            let (mut qc, mut kc) = (q.chunks_exact(16), key.chunks_exact(16));
            for (q16, k16) in (&mut qc).zip(&mut kc) {
                let (q16, k16): (&[f32; 16], &[f32; 16]) = (q16.try_into().expect("16"), k16.try_into().expect("16"));
                for l in 0..16 {
                    lanes[l] += q16[l] * k16[l];
                }
            }
            for ((a, b), l) in qc.remainder().iter().zip(kc.remainder()).zip(lanes.iter_mut()) {
                *l += a * b;
            }
            *s = lanes.iter().sum::<f32>() * scale;
        }
    }
}

/// One query's attention scores: `scores[j] = scale · (q · keys[j])` for the `scores.len()`
/// keys of `keys` (contiguous rows of `q.len()`). Each dot product keeps 16 partial sums (lane
/// `i % 16`, multiply then add), added in lane order: one query at a time, as a decode step has.
///
/// With AVX-512, 16 keys at a time: their 16 lane vectors are transposed so that one vector add
/// per lane sums all 16 keys in lane order — the same additions, the same bits, where a key at a
/// time spent 15 dependent scalar adds on its sum (a decode step makes rows × heads × layers of
/// these calls).
pub fn query_scores(scores: &mut [f32], q: &[f32], keys: &[f32], scale: f32) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::packed::Kernel::detect() == crate::packed::Kernel::Avx512 && !q.is_empty() {
        // SAFETY: `Kernel::Avx512` is only chosen when the CPU has AVX-512F.
        done = unsafe { attend512::query_scores(scores, q, keys, scale) };
    }
    let d = q.len();
    query_scores_lanes(&mut scores[done..], q, &keys[(done * d).min(keys.len())..], scale);
}

dispatch_simd! {
    avx512;
    /// [`weighted_values`] as written: its AVX-512 kernel's reference and other CPUs' path.
    pub fn weighted_values_rows(out: &mut [f32], weights: &[f32], values: &[f32]) {
        out.fill(0.0);
        for (&w, row) in weights.iter().zip(values.chunks_exact(out.len())) {
            for (o, &v) in out.iter_mut().zip(row) {
                *o += w * v;
            }
        }
    }
}

/// `out = Σ_j weights[j] · values[j]` over contiguous value rows of `out.len()`, in key order
/// (multiply, then add). With AVX-512 and up to 128 values a row, the sums stay in registers
/// across the keys (the same additions in the same order) instead of going through memory.
pub fn weighted_values(out: &mut [f32], weights: &[f32], values: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::packed::Kernel::detect() == crate::packed::Kernel::Avx512 && !out.is_empty() && out.len() <= 128 {
        // SAFETY: `Kernel::Avx512` is only chosen when the CPU has AVX-512F.
        return unsafe { attend512::weighted_values(out, weights, values) };
    }
    weighted_values_rows(out, weights, values)
}

/// The decode step's attention products on AVX-512, bit for bit the portable loops' arithmetic.
#[cfg(target_arch = "x86_64")]
mod attend512 {
    use std::arch::x86_64::*;

    /// Scores of the keys in whole blocks of 16; returns how many keys it did.
    ///
    /// # Safety
    /// AVX-512F is available.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn query_scores(scores: &mut [f32], q: &[f32], keys: &[f32], scale: f32) -> usize {
        let d = q.len();
        let n = scores.len().min(keys.len() / d);
        let (full, rest) = (d / 16, d % 16);
        let tail = ((1u32 << rest) - 1) as __mmask16;
        // `Sum for f32` folds from its own neutral element: start each key's total from it.
        let neutral = _mm512_set1_ps([0.0f32; 0].iter().sum::<f32>());
        let (qp, kp) = (q.as_ptr(), keys.as_ptr());
        for b in 0..n / 16 {
            let mut lanes = [_mm512_setzero_ps(); 16];
            for (j, l) in lanes.iter_mut().enumerate() {
                // SAFETY: key 16b + j < n has d values at (16b + j)·d; q has d.
                let key = unsafe { kp.add((16 * b + j) * d) };
                for c in 0..full {
                    let p = unsafe { _mm512_mul_ps(_mm512_loadu_ps(qp.add(16 * c)), _mm512_loadu_ps(key.add(16 * c))) };
                    *l = _mm512_add_ps(*l, p);
                }
                if rest > 0 {
                    // Only the first `rest` lanes take the remainder, as in the loop.
                    let p = unsafe { _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, qp.add(16 * full)), _mm512_maskz_loadu_ps(tail, key.add(16 * full))) };
                    *l = _mm512_mask_add_ps(*l, tail, *l, p);
                }
            }
            let t = transpose16(lanes);
            let mut sum = neutral;
            for v in t {
                sum = _mm512_add_ps(sum, v);
            }
            // SAFETY: scores 16b..16b + 16 < n.
            unsafe { _mm512_storeu_ps(scores.as_mut_ptr().add(16 * b), _mm512_mul_ps(sum, _mm512_set1_ps(scale))) };
        }
        n / 16 * 16
    }

    /// A 16 × 16 transpose: lane `i` of `rows[j]` becomes lane `j` of the result's `i`.
    #[target_feature(enable = "avx512f")]
    fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        // Pairs of rows interleaved by 32-bit lanes, then by 64-bit, then 128-bit blocks twice.
        let mut t = [_mm512_setzero_ps(); 16];
        for k in 0..8 {
            t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
            t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
        }
        let mut u = [_mm512_setzero_ps(); 16];
        for k in 0..4 {
            let (a0, a1, b0, b1) = (t[4 * k], t[4 * k + 1], t[4 * k + 2], t[4 * k + 3]);
            u[4 * k] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a0), _mm512_castps_pd(b0)));
            u[4 * k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a0), _mm512_castps_pd(b0)));
            u[4 * k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a1), _mm512_castps_pd(b1)));
            u[4 * k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a1), _mm512_castps_pd(b1)));
        }
        // u[4k + m] holds, in each 128-bit block c, lane 4c + m of rows 4k..4k + 4.
        let mut v = [_mm512_setzero_ps(); 16];
        for m in 0..4 {
            let (g0, g1, g2, g3) = (u[m], u[4 + m], u[8 + m], u[12 + m]);
            // Blocks 0 and 2 of g0, g1 | of g2, g3; then blocks 1 and 3.
            let lo01 = _mm512_shuffle_f32x4::<0x88>(g0, g1);
            let hi01 = _mm512_shuffle_f32x4::<0xdd>(g0, g1);
            let lo23 = _mm512_shuffle_f32x4::<0x88>(g2, g3);
            let hi23 = _mm512_shuffle_f32x4::<0xdd>(g2, g3);
            v[m] = _mm512_shuffle_f32x4::<0x88>(lo01, lo23);
            v[8 + m] = _mm512_shuffle_f32x4::<0xdd>(lo01, lo23);
            v[4 + m] = _mm512_shuffle_f32x4::<0x88>(hi01, hi23);
            v[12 + m] = _mm512_shuffle_f32x4::<0xdd>(hi01, hi23);
        }
        v
    }

    /// `out = Σ_j weights[j] · values[j]`, `out.len()` ≤ 128, the sums in registers.
    ///
    /// # Safety
    /// AVX-512F is available; `0 < out.len() <= 128`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weighted_values(out: &mut [f32], weights: &[f32], values: &[f32]) {
        let d = out.len();
        // SAFETY (each arm): forwarded.
        unsafe {
            match d.div_ceil(16) {
                1 => rows::<1>(out, weights, values),
                2 => rows::<2>(out, weights, values),
                3 => rows::<3>(out, weights, values),
                4 => rows::<4>(out, weights, values),
                5 => rows::<5>(out, weights, values),
                6 => rows::<6>(out, weights, values),
                7 => rows::<7>(out, weights, values),
                _ => rows::<8>(out, weights, values),
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn rows<const V: usize>(out: &mut [f32], weights: &[f32], values: &[f32]) {
        let d = out.len();
        let masks: [__mmask16; V] = std::array::from_fn(|v| ((1u32 << (d - 16 * v).min(16)) - 1) as __mmask16);
        let mut acc = [_mm512_setzero_ps(); V];
        for (j, &w) in weights.iter().enumerate().take(values.len() / d) {
            let wv = _mm512_set1_ps(w);
            // SAFETY: value row j has d values at j·d; lanes past d are masked off.
            let row = unsafe { values.as_ptr().add(j * d) };
            for v in 0..V {
                let x = unsafe { _mm512_maskz_loadu_ps(masks[v], row.add(16 * v)) };
                acc[v] = _mm512_add_ps(acc[v], _mm512_mul_ps(wv, x));
            }
        }
        for v in 0..V {
            // SAFETY: lanes past d are masked off.
            unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr().add(16 * v), masks[v], acc[v]) };
        }
    }
}

dispatch_simd! {
    /// Softmax over `row[..visible]` in place; `row[visible..]` (masked keys) becomes 0.
    pub fn masked_softmax_row(row: &mut [f32], visible: usize) {
        let (live, masked) = row.split_at_mut(visible);
        let max = row_max(live);
        for x in live.iter_mut() {
            *x = fast_exp(*x - max);
        }
        let mut sums = [0.0f32; 8];
        let mut chunks = live.chunks_exact(8);
        for c in &mut chunks {
            for (s, x) in sums.iter_mut().zip(c) {
                *s += *x;
            }
        }
        let sum: f32 = sums.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
        let inv = 1.0 / sum;
        for x in live.iter_mut() {
            *x *= inv;
        }
        masked.fill(0.0);
    }
}

dispatch_simd! {
    /// `out = max + ln Σ exp(row − max)`: the log-sum-exp of one row of logits.
    pub fn row_logsumexp(row: &[f32], out: &mut f32) {
        let max = row_max(row);
        let mut sums = [0.0f32; 8];
        let mut chunks = row.chunks_exact(8);
        for c in &mut chunks {
            for (s, x) in sums.iter_mut().zip(c) {
                *s += fast_exp(*x - max);
            }
        }
        let tail: f32 = chunks.remainder().iter().map(|x| fast_exp(*x - max)).sum();
        *out = max + (sums.iter().sum::<f32>() + tail).ln();
    }
}

dispatch_simd! {
    /// Softmax of `row` in place; `lse` receives its log-sum-exp.
    pub fn softmax_row_in_place(row: &mut [f32], lse: &mut f32) {
        let max = row_max(row);
        let mut sums = [0.0f32; 8];
        let mut chunks = row.chunks_exact_mut(8);
        for c in &mut chunks {
            for (s, x) in sums.iter_mut().zip(c.iter_mut()) {
                *x = fast_exp(*x - max);
                *s += *x;
            }
        }
        let mut sum: f32 = sums.iter().sum();
        for x in chunks.into_remainder() {
            *x = fast_exp(*x - max);
            sum += *x;
        }
        let inv = 1.0 / sum;
        for x in row.iter_mut() {
            *x *= inv;
        }
        *lse = max + sum.ln();
    }
}

dispatch_simd! {
    /// `g ← g · gelu_new'(x)` in place: with `z = C(x + a x³)`, `gelu = x σ(z)` and
    /// `gelu' = σ(z) + x σ(z)(1 − σ(z)) · C(1 + 3a x²)`.
    pub fn gelu_tanh_grad_slice(g: &mut [f32], x: &[f32]) {
        const C: f32 = 2.0 * 0.797_884_6; // 2·√(2/π)
        const A: f32 = 0.044715;
        for (gi, &xi) in g.iter_mut().zip(x) {
            let x2 = xi * xi;
            let s = 1.0 / (1.0 + fast_exp(-(C * xi * (1.0 + A * x2))));
            let d = s + xi * s * (1.0 - s) * C * (1.0 + 3.0 * A * x2);
            *gi *= d;
        }
    }
}

dispatch_simd! {
    /// Gradient of `up · silu(gate)` for one row: `out = [d gate, d up]` from the upstream `g`
    /// and the input row `gate_up = [gate, up]`; `silu'(x) = σ(x)(1 + x(1 − σ(x)))`.
    pub fn silu_glu_grad_slice(out: &mut [f32], g: &[f32], gate_up: &[f32]) {
        let half = g.len();
        let (gate, up) = gate_up.split_at(half);
        let (d_gate, d_up) = out.split_at_mut(half);
        for i in 0..half {
            let x = gate[i];
            let s = 1.0 / (1.0 + fast_exp(-x));
            d_up[i] = g[i] * x * s;
            d_gate[i] = g[i] * up[i] * s * (1.0 + x * (1.0 - s));
        }
    }
}
