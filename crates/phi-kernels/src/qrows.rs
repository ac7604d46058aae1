//! Products of a few rows (≤ [`MAX_ROWS`]: a decoded token, a batch of sequences, a short prompt)
//! against int8/int4 weights, with the activations quantized to int8 too and every product an
//! integer dot product — llama.cpp's scheme for its `Q8_0`/`Q4_0` (activations in blocks of 32,
//! one f32 scale each). Widening each weight to f32 for every row cost more than reading it:
//! int4 ran compute-bound at ~12 GB/s of weights for one row, and each further row of a batch
//! widened the weights again. Here a weight is expanded once per group of up to 8 rows, and
//! AVX-512 VNNI's `vpdpbusd` multiplies 64 of them by a row in one instruction.
//!
//! **The arithmetic, exactly** (every kernel computes it, bit for bit, so a row's result depends
//! neither on the CPU's kernel nor on the other rows):
//! - each block of 32 activations `x` gets `d = max|x| / 127` and `q = round_ties_even(x · 127 /
//!   max|x|)` in −127…127 (computed in f64, where it is exact) (an all-zero block `d = 0`; a block holding a NaN or infinity `d = NaN`,
//!   so the output is NaN rather than the bad value being rounded away);
//! - the products run in 16 lanes: lane `8h + l` takes lanes `l` of the blocks `b` with `b mod 2
//!   = h`, i.e. values `4l … 4l + 3` of those blocks; per block and lane the integer sum
//!   `s = Σ q_w q_x` of those 4 values (exact), then `acc = fma(s, d_w · d_x, acc)`, blocks in
//!   order;
//! - the 16 lanes are summed as a tree: `i + (i + 8)`, then `+ 4`, `+ 2`, `+ 1`.
//!
//! The cost is a quantization error in the activations (≤ half a step of 1/127 of a block's
//! largest value) on top of the weights'; BENCHMARKS.md gives the perplexity it costs.

use crate::packed::{BLOCK, Kernel, WeightFormat};

/// The most rows the integer products take; more (a long prompt) go to gemm.
pub const MAX_ROWS: usize = 64;

/// Rows a kernel call keeps in registers.
const GROUP: usize = 8;

/// Rows quantized for the integer products: per row and pair of blocks, 64 bytes `q + 128`
/// (a missing odd block: `128`, i.e. `q = 0`) and 2 scales `d` (0 for a missing block).
pub struct QuantizedRows {
    rows: usize,
    /// Blocks per row, and pairs of them.
    blocks: usize,
    pairs: usize,
    ux: Vec<u8>,
    dx: Vec<f32>,
}

/// `x` (`rows × k`, `k` a multiple of [`BLOCK`]) quantized into `out` (see the module docs):
/// AVX-512 (eight f64 lanes: the same correctly rounded division and rounding, so the same
/// bytes) where the CPU has it, else [`quantize_portable`].
fn quantize_into(x: &[f32], k: usize, out: &mut QuantizedRows) {
    #[cfg(target_arch = "x86_64")]
    if Kernel::detect() == Kernel::Avx512 {
        // SAFETY: AVX-512F was detected with the kernel; `out` was sized for `x`
        // (`QuantizedRows::new`).
        return unsafe { x86::quantize_into(x, k, out) };
    }
    quantize_portable(x, k, out)
}

/// Walks `x`'s rows (`k` values each) block by block into `out`: each row's bytes start as 128
/// (`q = 0`) and its scales as 0 (a missing odd block keeps them), and `block` quantizes one
/// block's 32 values into its 32 bytes and returns its scale.
#[inline(always)]
fn quantize_rows(x: &[f32], k: usize, out: &mut QuantizedRows, mut block: impl FnMut(&[f32], &mut [u8]) -> f32) {
    if k == 0 {
        return;
    }
    let pairs = out.pairs;
    for (r, row) in x.chunks_exact(k).enumerate() {
        let ux = &mut out.ux[r * pairs * 64..(r + 1) * pairs * 64];
        let dx = &mut out.dx[r * pairs * 2..(r + 1) * pairs * 2];
        ux.fill(128);
        dx.fill(0.0);
        for (b, values) in row.chunks_exact(BLOCK).enumerate() {
            dx[b] = block(values, &mut ux[b * BLOCK..(b + 1) * BLOCK]);
        }
    }
}

crate::math::dispatch_simd! {
    avx512;
    /// [`quantize_into`]'s arithmetic, one value at a time: the reference.
    pub fn quantize_portable(x: &[f32], k: usize, out: &mut QuantizedRows) {
        quantize_rows(x, k, out, |block, ux| {
            let (mut amax, mut finite) = (0.0f32, true);
            for &v in block {
                amax = amax.max(v.abs());
                finite &= v.is_finite();
            }
            if !finite {
                return f32::NAN;
            }
            if amax > 0.0 {
                // In f64, `v · 127` is exact and the one division rounds once: the documented
                // rounding, even for blocks too small for 127 / amax in f32.
                let m = amax as f64;
                for (u, &v) in ux.iter_mut().zip(block) {
                    *u = ((v as f64 * 127.0 / m).round_ties_even().clamp(-127.0, 127.0) as i32 + 128) as u8;
                }
            }
            amax / 127.0
        })
    }
}

impl QuantizedRows {
    /// `x` (`rows × k`) quantized; `k` must be a multiple of [`BLOCK`].
    pub fn new(x: &[f32], rows: usize, k: usize) -> Self {
        assert_eq!(x.len(), rows * k, "x is not [{rows}, {k}]");
        assert_eq!(k % BLOCK, 0, "{k} inputs: not a multiple of {BLOCK}");
        let blocks = k / BLOCK;
        let pairs = blocks.div_ceil(2);
        let mut q = QuantizedRows { rows, blocks, pairs, ux: vec![128; rows * pairs * 64], dx: vec![0.0; rows * pairs * 2] };
        quantize_into(x, k, &mut q);
        q
    }
}

/// The 16 lanes summed as the module docs say.
#[inline(always)]
fn reduce16(a: &[f32; 16]) -> f32 {
    let mut t = [0.0f32; 8];
    for i in 0..8 {
        t[i] = a[i] + a[i + 8];
    }
    let u = [t[0] + t[4], t[1] + t[5], t[2] + t[6], t[3] + t[7]];
    let v = [u[0] + u[2], u[1] + u[3]];
    v[0] + v[1]
}

/// The 32 values of block `b` of one output's weights (`w`: that output's bytes).
#[inline(always)]
fn block_values(format: WeightFormat, w: &[u8], b: usize) -> [i8; BLOCK] {
    let mut q = [0i8; BLOCK];
    match format {
        WeightFormat::Int4 => {
            for (i, &p) in w[b * BLOCK / 2..(b + 1) * BLOCK / 2].iter().enumerate() {
                q[i] = (p & 0x0f) as i8 - 8;
                q[i + 16] = (p >> 4) as i8 - 8;
            }
        }
        _ => q.iter_mut().zip(&w[b * BLOCK..(b + 1) * BLOCK]).for_each(|(q, &v)| *q = v as i8),
    }
    q
}

crate::math::dispatch_simd! {
    avx512;
    /// Row `r` of `x` times one output's weights (`w`, `scales`): the reference arithmetic, for
    /// any CPU.
    pub fn dot_portable(format: WeightFormat, w: &[u8], scales: &[f32], x: &QuantizedRows, r: usize, out: &mut f32) {
        let mut acc = [0.0f32; 16];
        let ux = &x.ux[r * x.pairs * 64..(r + 1) * x.pairs * 64];
        let dx = &x.dx[r * x.pairs * 2..(r + 1) * x.pairs * 2];
        for b in 0..x.blocks {
            let q = block_values(format, w, b);
            let (h, dw) = (b % 2, scales[b]);
            let u = &ux[b * BLOCK..(b + 1) * BLOCK];
            for l in 0..8 {
                let s: i32 = (0..4).map(|t| q[4 * l + t] as i32 * (u[4 * l + t] as i32 - 128)).sum();
                let lane = 8 * h + l;
                acc[lane] = (s as f32).mul_add(dw * dx[b], acc[lane]);
            }
        }
        *out = reduce16(&acc);
    }
}

/// Whether this CPU runs the AVX-512 VNNI kernels (under [`Kernel::Avx512`]'s switches).
fn vnni(kernel: Kernel) -> bool {
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx512 {
        return is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl");
    }
    let _ = kernel;
    false
}

/// Whether this CPU runs the AVX2 kernel (under the SIMD kernels' switches; an AVX-512 CPU
/// without VNNI runs it too).
fn avx2(kernel: Kernel) -> bool {
    #[cfg(target_arch = "x86_64")]
    if kernel != Kernel::Portable {
        return is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    }
    let _ = kernel;
    false
}

/// `y = x Wᵀ` for `x.rows` quantized rows against `[out, in]` weights `data`/`scales` of
/// `format` (int8 or int4): `y` is `[rows, out]`, overwritten.
pub(crate) fn matmul(format: WeightFormat, data: &[u8], scales: &[f32], d_in: usize, d_out: usize, x: &QuantizedRows, y: &mut [f32]) {
    matmul_with(Kernel::detect(), format, data, scales, d_in, d_out, x, y)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_with(kernel: Kernel, format: WeightFormat, data: &[u8], scales: &[f32], d_in: usize, d_out: usize, x: &QuantizedRows, y: &mut [f32]) {
    let rows = x.rows;
    assert!(matches!(format, WeightFormat::Int8 | WeightFormat::Int4), "{format}: integer products are for int8 and int4");
    assert_eq!(y.len(), rows * d_out, "y is not [{rows}, {d_out}]");
    // What the unsafe kernels index by: the rows' blocks are the weights' blocks.
    assert_eq!(x.blocks * BLOCK, d_in, "rows of {} blocks against {d_in} inputs", x.blocks);
    assert_eq!((x.pairs, x.ux.len(), x.dx.len()), (x.blocks.div_ceil(2), rows * x.pairs * 64, rows * x.pairs * 2));
    let row_bytes = if format == WeightFormat::Int4 { d_in / 2 } else { d_in };
    assert_eq!(data.len(), row_bytes * d_out, "weights are not {d_out} × {d_in} {format}");
    assert_eq!(scales.len(), x.blocks * d_out);
    if rows == 0 || d_out == 0 {
        return;
    }
    if d_in == 0 {
        return y.fill(0.0);
    }
    let (use_vnni, use_avx2) = (vnni(kernel), avx2(kernel));
    crate::packed::by_outputs(d_in, d_out, rows, row_bytes + 4 * x.blocks, y, |first, chunk| {
        let outputs = chunk.len() / rows;
        let (w, s) = (&data[first * row_bytes..(first + outputs) * row_bytes], &scales[first * x.blocks..(first + outputs) * x.blocks]);
        if use_vnni {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `vnni` checked AVX-512F, BW, VL and VNNI; `w` and `s` hold `outputs`
            // outputs' weights and scales (the lengths asserted above), `chunk` their rows.
            unsafe {
                x86::outputs(format, w, s, x, chunk)
            };
        } else if use_avx2 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `avx2` checked AVX2 and FMA; the slices as above.
            unsafe {
                x86::outputs_avx2(format, w, s, x, chunk)
            };
        } else {
            for (o, out) in chunk.chunks_exact_mut(rows).enumerate() {
                let (w, s) = (&w[o * row_bytes..(o + 1) * row_bytes], &s[o * x.blocks..(o + 1) * x.blocks]);
                for (r, v) in out.iter_mut().enumerate() {
                    dot_portable(format, w, s, x, r, v);
                }
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{BLOCK, GROUP, QuantizedRows, WeightFormat};

    /// [`super::quantize_portable`] a block of 32 at a time: the block's largest magnitude and
    /// finiteness from two f32 vectors, then each value as `v · 127 / max` in four vectors of
    /// eight f64 (the product exact, the division correctly rounded, as the scalar f64 one),
    /// rounded half to even and narrowed to bytes.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `out` is sized for `x` (`rows × k`, `k` a multiple of
    /// [`BLOCK`]).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn quantize_into(x: &[f32], k: usize, out: &mut QuantizedRows) {
        // SAFETY: the caller's CPU has AVX-512F; the walk hands each block its 32 bytes.
        super::quantize_rows(x, k, out, |block, ux| unsafe { quantize_block(block, ux) })
    }

    /// One block of [`quantize_into`]: its 32 values into `ux`'s 32 bytes; returns the scale.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `block` and `ux` hold [`BLOCK`] values each.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn quantize_block(block: &[f32], ux: &mut [u8]) -> f32 {
        debug_assert!(block.len() == BLOCK && ux.len() == BLOCK);
        // SAFETY: a block is 32 values: two 16-lane loads.
        let (lo, hi) = unsafe { (_mm512_loadu_ps(block.as_ptr()), _mm512_loadu_ps(block.as_ptr().add(16))) };
        // v - v is 0 for a finite value, NaN for an infinity or a NaN.
        let bad = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(_mm512_sub_ps(lo, lo), _mm512_sub_ps(hi, hi));
        if bad != 0 {
            return f32::NAN;
        }
        let abs = _mm512_set1_epi32(0x7fff_ffff);
        let mags = _mm512_max_ps(_mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(lo), abs)), _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(hi), abs)));
        let amax = _mm512_reduce_max_ps(mags);
        if amax > 0.0 {
            let (m, k127) = (_mm512_set1_pd(amax as f64), _mm512_set1_pd(127.0));
            let (lim_lo, lim_hi) = (_mm512_set1_pd(-127.0), _mm512_set1_pd(127.0));
            let quarter = |v: __m256| -> __m256i {
                let q = _mm512_div_pd(_mm512_mul_pd(_mm512_cvtps_pd(v), k127), m);
                let q = _mm512_roundscale_pd::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(q);
                _mm512_cvtpd_epi32(_mm512_min_pd(_mm512_max_pd(q, lim_lo), lim_hi))
            };
            let halves = [lo, hi].map(|h| {
                let (a, b) = (quarter(_mm512_castps512_ps256(h)), quarter(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(h)))));
                // 16 values as q + 128 (1 … 255), one byte each.
                _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b), _mm512_set1_epi32(128)))
            });
            // SAFETY: `ux` holds the block's 32 bytes.
            unsafe {
                _mm_storeu_si128(ux.as_mut_ptr() as *mut __m128i, halves[0]);
                _mm_storeu_si128(ux.as_mut_ptr().add(16) as *mut __m128i, halves[1]);
            }
        }
        amax / 127.0
    }

    /// Every row of `x` times each of the outputs in `w`/`scales` (their weights and scales one
    /// after another), into `out` (`[outputs, rows]`). Two outputs at a time share each load of
    /// the rows.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, BW, VL and VNNI; `w` holds `out.len() / x.rows` outputs of
    /// `x.blocks` blocks (16 or 32 bytes each) and `scales` their scales.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn outputs(format: WeightFormat, w: &[u8], scales: &[f32], x: &QuantizedRows, out: &mut [f32]) {
        let (rows, blocks) = (x.rows, x.blocks);
        let row_bytes = if format == WeightFormat::Int4 { blocks * 16 } else { blocks * 32 };
        let n = out.len() / rows;
        let mut j = 0;
        while j < n {
            let two = j + 1 < n;
            let mut r0 = 0;
            while r0 < rows {
                let g = (rows - r0).min(GROUP);
                let (wj, sj) = (&w[j * row_bytes..], &scales[j * blocks..]);
                let o = &mut out[j * rows..];
                // SAFETY: as this function's: outputs j (and j + 1 when `two`) exist.
                unsafe {
                    macro_rules! call {
                        ($($g:literal)*) => {
                            match (format == WeightFormat::Int4, two, g) {
                                $((true, true, $g) => group::<true, 2, $g>(wj, sj, row_bytes, x, r0, o),
                                  (true, false, $g) => group::<true, 1, $g>(wj, sj, row_bytes, x, r0, o),
                                  (false, true, $g) => group::<false, 2, $g>(wj, sj, row_bytes, x, r0, o),
                                  (false, false, $g) => group::<false, 1, $g>(wj, sj, row_bytes, x, r0, o),)*
                                _ => unreachable!(),
                            }
                        };
                    }
                    call!(1 2 3 4 5 6 7 8);
                }
                r0 += g;
            }
            j += if two { 2 } else { 1 };
        }
    }

    /// Rows `r0 .. r0 + G` times outputs `0 .. N` of `w` (`row_bytes` apart), into
    /// `out[o * x.rows + r]`: `N × G` accumulators in registers; the weights of each pair of
    /// blocks are expanded to 64 signed bytes once for the group.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn group<const INT4: bool, const N: usize, const G: usize>(w: &[u8], scales: &[f32], row_bytes: usize, x: &QuantizedRows, r0: usize, out: &mut [f32]) {
        let (pairs, blocks) = (x.pairs, x.blocks);
        let mut acc = [[_mm512_setzero_ps(); G]; N];
        // vpsrlvw counts: the 2nd and 4th 128-bit quarters take the high nibbles.
        let shifts = _mm512_set_epi64(0x0004_0004_0004_0004, 0x0004_0004_0004_0004, 0, 0, 0x0004_0004_0004_0004, 0x0004_0004_0004_0004, 0, 0);
        let quarters = _mm512_set_epi64(3, 2, 3, 2, 1, 0, 1, 0);
        let lanes_of = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        let (nibble, eight, k128) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(8), _mm512_set1_epi8(-128));
        let zero = _mm512_setzero_si512();
        let ux = x.ux.as_ptr().wrapping_add(r0 * pairs * 64);
        let dx = x.dx.as_ptr().wrapping_add(r0 * pairs * 2);
        for p in 0..pairs {
            let full = 2 * p + 1 < blocks;
            let mut wv = [zero; N];
            let mut corr = [zero; N];
            let mut dwv = [_mm512_setzero_ps(); N];
            for o in 0..N {
                // SAFETY (every block below): `w` holds N outputs of `blocks` blocks and
                // `scales` as many values; a missing odd block is masked off (those lanes read
                // as 0); the quantized rows hold `pairs` × 64 bytes and × 2 scales for each of
                // rows r0 .. r0 + G ≤ x.rows.
                wv[o] = unsafe {
                    if INT4 {
                        let src = w.as_ptr().add(o * row_bytes + 32 * p) as *const i8;
                        let raw = if full { _mm256_loadu_si256(src as *const __m256i) } else { _mm256_maskz_loadu_epi8(0xffff, src) };
                        _mm_prefetch::<_MM_HINT_T0>(src.wrapping_add(2 * row_bytes));
                        // [A, B] (16 bytes of each block) → [A, A, B, B] → [A lo, A hi, B lo,
                        // B hi]: each block's 32 values in order, as −8 … 7.
                        let both = _mm512_permutexvar_epi64(quarters, _mm512_castsi256_si512(raw));
                        _mm512_sub_epi8(_mm512_and_si512(_mm512_srlv_epi16(both, shifts), nibble), eight)
                    } else {
                        let src = w.as_ptr().add(o * row_bytes + 64 * p) as *const i8;
                        _mm_prefetch::<_MM_HINT_T0>(src.wrapping_add(2 * row_bytes));
                        if full { _mm512_loadu_si512(src as *const __m512i) } else { _mm512_maskz_loadu_epi8(0xffff_ffff, src) }
                    }
                };
                // dpbusd multiplies unsigned by signed bytes: the rows are stored as q + 128,
                // so each lane starts at −128 Σ w (of its 4 weights) to take the offset out.
                corr[o] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, k128, wv[o]));
                let dw = unsafe {
                    let s = scales.as_ptr().add(o * blocks + 2 * p);
                    // Two scales, unaligned (`_mm_load_sd` would read them as an aligned f64).
                    if full { _mm_castsi128_ps(_mm_loadl_epi64(s as *const __m128i)) } else { _mm_load_ss(s) }
                };
                dwv[o] = _mm512_permutexvar_ps(lanes_of, _mm512_castps128_ps512(dw));
            }
            for g in 0..G {
                // SAFETY: see above.
                let (u, d) = unsafe { (_mm512_loadu_si512(ux.add(g * pairs * 64 + 64 * p) as *const __m512i), _mm_castsi128_ps(_mm_loadl_epi64(dx.add(g * pairs * 2 + 2 * p) as *const __m128i))) };
                let dxv = _mm512_permutexvar_ps(lanes_of, _mm512_castps128_ps512(d));
                for o in 0..N {
                    let s = _mm512_dpbusd_epi32(corr[o], u, wv[o]);
                    acc[o][g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dwv[o], dxv), acc[o][g]);
                }
            }
        }
        for (o, row) in acc.iter().enumerate() {
            for (g, a) in row.iter().enumerate() {
                out[o * x.rows + r0 + g] = reduce16(*a);
            }
        }
    }

    /// [`outputs`] on AVX2 + FMA (no VNNI): one output and up to 4 rows at a time, a block (8
    /// lanes) at a time — the even blocks' lanes in one accumulator, the odd blocks' in another
    /// (lanes 0–7 and 8–15 of the 16). A lane's 4 products come from `vpmaddubsw` on |q| and the
    /// weights with q's sign (≤ 2 · 127 · 127 a pair: no saturation) and `vpmaddwd`, exact as
    /// VNNI's.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; the slices as [`outputs`]'.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn outputs_avx2(format: WeightFormat, w: &[u8], scales: &[f32], x: &QuantizedRows, out: &mut [f32]) {
        let (rows, blocks) = (x.rows, x.blocks);
        let row_bytes = if format == WeightFormat::Int4 { blocks * 16 } else { blocks * 32 };
        for j in 0..out.len() / rows {
            let (wj, sj) = (&w[j * row_bytes..(j + 1) * row_bytes], &scales[j * blocks..(j + 1) * blocks]);
            let mut r0 = 0;
            while r0 < rows {
                let g = (rows - r0).min(4);
                let o = &mut out[j * rows + r0..j * rows + r0 + g];
                // SAFETY: as this function's.
                unsafe {
                    match (format == WeightFormat::Int4, g) {
                        (true, 4) => group_avx2::<true, 4>(wj, sj, x, r0, o),
                        (true, 3) => group_avx2::<true, 3>(wj, sj, x, r0, o),
                        (true, 2) => group_avx2::<true, 2>(wj, sj, x, r0, o),
                        (true, _) => group_avx2::<true, 1>(wj, sj, x, r0, o),
                        (false, 4) => group_avx2::<false, 4>(wj, sj, x, r0, o),
                        (false, 3) => group_avx2::<false, 3>(wj, sj, x, r0, o),
                        (false, 2) => group_avx2::<false, 2>(wj, sj, x, r0, o),
                        (false, _) => group_avx2::<false, 1>(wj, sj, x, r0, o),
                    }
                }
                r0 += g;
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn group_avx2<const INT4: bool, const G: usize>(w: &[u8], scales: &[f32], x: &QuantizedRows, r0: usize, out: &mut [f32]) {
        let (pairs, blocks) = (x.pairs, x.blocks);
        let mut acc = [[_mm256_setzero_ps(); G]; 2];
        let (nibble, eight, flip, ones) = (_mm_set1_epi8(0x0f), _mm256_set1_epi8(8), _mm256_set1_epi8(-128), _mm256_set1_epi16(1));
        for p in 0..pairs {
            for h in 0..2 {
                let b = 2 * p + h;
                if b >= blocks {
                    break;
                }
                // SAFETY: block b < blocks of `w` (16 or 32 bytes each); row r0 + g < x.rows
                // holds pairs × 64 bytes.
                let wv = unsafe {
                    if INT4 {
                        let v = _mm_loadu_si128(w.as_ptr().add(16 * b) as *const __m128i);
                        let (lo, hi) = (_mm_and_si128(v, nibble), _mm_and_si128(_mm_srli_epi16::<4>(v), nibble));
                        _mm256_sub_epi8(_mm256_set_m128i(hi, lo), eight)
                    } else {
                        _mm256_loadu_si256(w.as_ptr().add(32 * b) as *const __m256i)
                    }
                };
                let dw = _mm256_set1_ps(scales[b]);
                for (g, a) in acc[h].iter_mut().enumerate() {
                    let r = r0 + g;
                    // SAFETY: see above.
                    let u = unsafe { _mm256_loadu_si256(x.ux.as_ptr().add(r * pairs * 64 + 32 * b) as *const __m256i) };
                    let q = _mm256_xor_si256(u, flip);
                    let s = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(q), _mm256_sign_epi8(wv, q)), ones);
                    *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, _mm256_set1_ps(x.dx[r * pairs * 2 + b])), *a);
                }
            }
        }
        for (g, o) in out.iter_mut().enumerate() {
            // [`super::reduce16`]: lane i + lane i + 8 is even[i] + odd[i].
            let t = _mm256_add_ps(acc[0][g], acc[1][g]);
            let u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps::<1>(t));
            let v = _mm_add_ps(u, _mm_movehl_ps(u, u));
            *o = _mm_cvtss_f32(_mm_add_ss(v, _mm_shuffle_ps::<1>(v, v)));
        }
    }

    /// The 16 lanes summed in [`super::reduce16`]'s order.
    #[target_feature(enable = "avx512f")]
    fn reduce16(a: __m512) -> f32 {
        let hi = _mm512_castps512_ps256(_mm512_shuffle_f32x4::<0b11_10_11_10>(a, a));
        let t = _mm256_add_ps(_mm512_castps512_ps256(a), hi);
        let u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps::<1>(t));
        let v = _mm_add_ps(u, _mm_movehl_ps(u, u));
        _mm_cvtss_f32(_mm_add_ss(v, _mm_shuffle_ps::<1>(v, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed::PackedMatrix;

    fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
            })
            .collect()
    }

    #[test]
    fn every_kernel_computes_the_same_bits_and_each_row_what_it_gets_alone() {
        // The kernels this CPU has must include the widest (else the comparison below would
        // compare the reference with itself).
        let kernels = Kernel::available();
        #[cfg(target_arch = "x86_64")]
        if std::env::var_os("PHI_PORTABLE_KERNELS").is_none() && std::env::var_os("PHI_NO_AVX512").is_none() && is_x86_feature_detected!("avx512vnni") {
            assert!(kernels.iter().any(|&k| vnni(k)), "the VNNI kernel is not among {kernels:?}");
        }
        #[cfg(target_arch = "x86_64")]
        if std::env::var_os("PHI_PORTABLE_KERNELS").is_none() && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            assert!(kernels.iter().any(|&k| avx2(k) && !vnni(k)), "the AVX2 kernel is not among {kernels:?}");
        }
        // Odd and even block counts (a missing odd block), one pair, many; odd and even
        // outputs (the two-output path and its one-output tail); several tasks (8160 inputs:
        // 28 outputs a task in int8, 51 in int4); every group size of both SIMD kernels.
        for (d_in, d_out) in [(32, 5), (96, 37), (128, 7), (64 * 5, 70), (2048 + 96, 33), (8160, 61)] {
            let w = values(d_in * d_out, 1, 0.2);
            for format in [WeightFormat::Int8, WeightFormat::Int4] {
                let p = PackedMatrix::pack(&w, d_in, d_out, format).unwrap();
                let (data, scales) = p.raw();
                for rows in (1..=9).chain([13, MAX_ROWS]) {
                    let mut x = values(rows * d_in, 2 + rows as u64, 4.0);
                    // A row of zeros and one all-zero block.
                    x[..d_in].fill(0.0);
                    x[d_in.min((rows - 1) * d_in)..][..BLOCK].fill(0.0);
                    let q = QuantizedRows::new(&x, rows, d_in);
                    let mut first: Option<Vec<f32>> = None;
                    for &kernel in &kernels {
                        let mut y = vec![f32::NAN; rows * d_out];
                        matmul_with(kernel, format, data, scales, d_in, d_out, &q, &mut y);
                        match &first {
                            None => first = Some(y.clone()),
                            Some(f) => assert!(f.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()), "{format} {d_in}→{d_out} {rows} rows: {kernel:?} differs"),
                        }
                        // Each row alone gets the same bits.
                        for r in [0, rows / 2, rows - 1] {
                            let alone = QuantizedRows::new(&x[r * d_in..(r + 1) * d_in], 1, d_in);
                            let mut y1 = vec![f32::NAN; d_out];
                            matmul_with(kernel, format, data, scales, d_in, d_out, &alone, &mut y1);
                            assert!(y1.iter().zip(&y[r * d_out..(r + 1) * d_out]).all(|(a, b)| a.to_bits() == b.to_bits()), "{format} {kernel:?} row {r} of {rows}");
                        }
                    }
                    // Close to the product with f32 activations: within the activations'
                    // quantization error (half a step of max|x|/127 a value).
                    let deq = p.dequantize();
                    let y = first.unwrap();
                    for r in 0..rows {
                        for j in 0..d_out {
                            let (mut exact, mut bound) = (0.0f64, 0.0f64);
                            for b in 0..d_in / BLOCK {
                                let xb = &x[r * d_in + b * BLOCK..r * d_in + (b + 1) * BLOCK];
                                let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
                                for (i, &xv) in xb.iter().enumerate() {
                                    let wv = deq[(b * BLOCK + i) * d_out + j] as f64;
                                    exact += xv as f64 * wv;
                                    bound += wv.abs() * amax / 254.0;
                                }
                            }
                            let got = y[r * d_out + j] as f64;
                            assert!((got - exact).abs() <= bound * 1.01 + 1e-4, "{format} [{r}, {j}]: {got} vs {exact} (bound {bound})");
                        }
                    }
                    // The zero row is exactly zero.
                    assert!(y[..d_out].iter().all(|v| *v == 0.0));
                }
            }
        }
    }

    /// The vectorised quantization writes the reference's bytes and scales: random blocks of
    /// every magnitude, exact halves (ties to even), subnormals, signed zeros, all-zero blocks,
    /// and non-finite values.
    #[test]
    fn quantization_is_the_reference_byte_for_byte() {
        let mut x = Vec::new();
        for (i, scale) in [1e-40f32, 1e-38, 1e-30, 1e-3, 1.0, 3.5, 1e4, 3e38].into_iter().enumerate() {
            x.extend(values(32 * 64, 10 + i as u64, scale));
        }
        // Exact halves of a step: max 127 makes v · 127 / 127 = v.
        x.extend((0..32).map(|i| if i == 0 { 127.0 } else { (i as f32 - 16.0) + 0.5 }));
        x.extend((0..32).map(|i| if i % 2 == 0 { -0.0 } else { 0.0 }));
        x.extend([0.0f32; 32]);
        let mut odd = values(96, 77, 2.0);
        odd[5] = f32::NAN;
        odd[40] = f32::NEG_INFINITY;
        odd[95] = f32::INFINITY;
        x.extend(odd);
        let k = 32 * 7;
        let rows = x.len() / k;
        let x = &x[..rows * k];
        let q = QuantizedRows::new(x, rows, k);
        let mut reference = QuantizedRows::new(&[], 0, k);
        (reference.rows, reference.ux, reference.dx) = (rows, vec![128; rows * q.pairs * 64], vec![0.0; rows * q.pairs * 2]);
        quantize_portable(x, k, &mut reference);
        assert_eq!(q.ux, reference.ux);
        assert_eq!(q.dx.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), reference.dx.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    }

    #[test]
    fn tiny_blocks_quantize_as_documented_and_empty_products_are_zeros() {
        // 127 / max|x| overflows f32 here; the f64 rounding still gives round(x · 127 / max).
        let mut x = vec![0.0f32; 32];
        x[0] = 1e-37;
        x[1] = 1e-38;
        let q = QuantizedRows::new(&x, 1, 32);
        assert_eq!((q.ux[0] as i32 - 128, q.ux[1] as i32 - 128), (127, 13));
        // No inputs: zeros; no rows: nothing.
        for kernel in Kernel::available() {
            let mut y = vec![f32::NAN; 6];
            matmul_with(kernel, WeightFormat::Int8, &[], &[], 0, 3, &QuantizedRows::new(&[], 2, 0), &mut y);
            assert_eq!(y, [0.0; 6]);
            matmul_with(kernel, WeightFormat::Int4, &[0; 96], &[0.0; 6], 64, 3, &QuantizedRows::new(&[], 0, 64), &mut []);
        }
    }

    #[test]
    fn a_non_finite_activation_gives_nan_not_a_rounded_value() {
        let (d_in, d_out) = (64, 9);
        let p = PackedMatrix::pack(&values(d_in * d_out, 3, 0.2), d_in, d_out, WeightFormat::Int4).unwrap();
        let (data, scales) = p.raw();
        for bad in [f32::NAN, f32::INFINITY] {
            let mut x = values(2 * d_in, 4, 1.0);
            x[d_in + 40] = bad;
            let q = QuantizedRows::new(&x, 2, d_in);
            for kernel in Kernel::available() {
                let mut y = vec![0.0; 2 * d_out];
                matmul_with(kernel, WeightFormat::Int4, data, scales, d_in, d_out, &q, &mut y);
                assert!(y[..d_out].iter().all(|v| v.is_finite()), "{kernel:?}: the good row");
                assert!(y[d_out..].iter().all(|v| v.is_nan()), "{kernel:?}: {bad}");
            }
        }
    }
}

