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
    let k = (x * LOG2E + ROUND) - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    let p = p * r * r + r + 1.0;
    let scale = f32::from_bits(((k as i32 + 127) as u32) << 23);
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
