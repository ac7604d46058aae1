//! Products of rows (a decoded token, a batch of sequences, a prompt's 64 rows at a time: see
//! [`MAX_ROWS`]) against int8/int4 weights, with the activations quantized to int8 too and every product an
//! integer dot product — llama.cpp's scheme for its `Q8_0`/`Q4_0` (activations in blocks of 32,
//! one f32 scale each). Widening each weight to f32 for every row cost more than reading it.
//!
//! **The layout** ([`crate::packed::PackedMatrix`]'s): outputs in tiles of [`TILE`] = 16, and
//! within a tile, block by block, each run of 4 consecutive inputs of the 16 outputs side by
//! side — so one 64-byte vector holds 4 weights of each of 16 outputs, and AVX-512 VNNI's
//! `vpdpbusd` multiplies all of them by a row's 4 activations (one broadcast) into 16 sums, one
//! per output lane. No lane ever has to be summed across: a block costs a row 8 integer
//! instructions and 3 float ones for 16 outputs, and the weights are expanded once per group of
//! rows. (The layout before kept each output's weights contiguous: one dot product per output,
//! three float instructions to each integer one, and a horizontal sum per output — about a
//! quarter of the throughput at 16 rows.)
//!
//! **The arithmetic, exactly** (every kernel computes it, bit for bit, so a row's result depends
//! neither on the CPU's kernel nor on the other rows):
//! - each block of 32 activations `x` gets `d = max|x| / 127` and `q = round_ties_even(x · 127 /
//!   max|x|)` in −127…127 (computed in f64, where it is exact) (an all-zero block `d = 0`; a
//!   block holding a NaN or infinity `d = NaN`, so the output is NaN rather than the bad value
//!   being rounded away);
//! - per output and block, the integer `s = Σ q_w q_x` over the block's 32 values (exact);
//! - `acc = fma(s, d_w · d_x, acc)` from `acc = 0`, blocks in order; `acc` is the output.
//!
//! The cost is a quantization error in the activations (≤ half a step of 1/127 of a block's
//! largest value) on top of the weights'; BENCHMARKS.md gives the perplexity it costs.

use rayon::prelude::*;

use crate::packed::{BLOCK, Kernel, TILE, WeightFormat};

/// The most rows quantized and multiplied together; [`crate::packed::PackedMatrix::matmul`] takes
/// more (a long prompt) this many at a time.
pub const MAX_ROWS: usize = 64;

/// Rows a kernel call keeps in registers (one 16-lane accumulator each).
const GROUP: usize = 16;


/// Bytes of one block (32 inputs) of one tile (16 outputs): int8 one a weight, int4 two a byte.
pub(crate) const fn tile_block_bytes(format: WeightFormat) -> usize {
    match format {
        WeightFormat::Int4 => TILE * BLOCK / 2,
        _ => TILE * BLOCK,
    }
}

/// What a stored weight byte (int8) or nibble (int4) adds to `q`: stored unsigned, as `vpdpbusd`
/// takes its first operand.
pub(crate) const fn weight_offset(format: WeightFormat) -> i32 {
    match format {
        WeightFormat::Int4 => 8,
        _ => 128,
    }
}

/// Where weight `v` (0…31) of output lane `o` lies in one tile's block: its byte, and for int4
/// whether it is the high nibble — the layout, written once for the packer and the readers.
/// int8: vector `v / 4`, byte `4o + v % 4`; int4: the four 64-byte vectors hold runs `u` (values
/// `4u…4u + 3`) in their low nibbles and runs `u + 4` in their high ones.
#[inline(always)]
pub(crate) fn tile_slot(format: WeightFormat, o: usize, v: usize) -> (usize, bool) {
    match format {
        WeightFormat::Int4 => ((v % 16) / 4 * 64 + 4 * o + v % 4, v >= 16),
        _ => ((v / 4) * 64 + 4 * o + v % 4, false),
    }
}

/// Weight `v` of output lane `o` of one tile's block (`block`: its [`tile_block_bytes`]), as `q`.
#[inline(always)]
pub(crate) fn tile_weight(format: WeightFormat, block: &[u8], o: usize, v: usize) -> i32 {
    let (byte, high) = tile_slot(format, o, v);
    let stored = if high { block[byte] >> 4 } else if format == WeightFormat::Int4 { block[byte] & 0x0f } else { block[byte] };
    stored as i32 - weight_offset(format)
}

/// Rows quantized for the integer products: per row, `k` signed bytes `q`, and per block its
/// scale `d` and `Σ q` (what the weights' unsigned offset adds to a block's sum).
pub struct QuantizedRows {
    rows: usize,
    /// Blocks per row.
    blocks: usize,
    q: Vec<i8>,
    dx: Vec<f32>,
    sums: Vec<i32>,
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

/// Walks `x`'s rows (`k` values each) block by block into `out`: `block` quantizes one block's
/// 32 values into its 32 bytes (left 0 for an all-zero or non-finite block) and returns its
/// scale; the walk adds up each block's bytes.
#[inline(always)]
fn quantize_rows(x: &[f32], k: usize, out: &mut QuantizedRows, mut block: impl FnMut(&[f32], &mut [i8]) -> f32) {
    if k == 0 {
        return;
    }
    let blocks = out.blocks;
    for (r, row) in x.chunks_exact(k).enumerate() {
        let q = &mut out.q[r * k..(r + 1) * k];
        q.fill(0);
        let (dx, sums) = (&mut out.dx[r * blocks..(r + 1) * blocks], &mut out.sums[r * blocks..(r + 1) * blocks]);
        for (b, values) in row.chunks_exact(BLOCK).enumerate() {
            let qb = &mut q[b * BLOCK..(b + 1) * BLOCK];
            dx[b] = block(values, qb);
            sums[b] = qb.iter().map(|&v| v as i32).sum();
        }
    }
}

crate::math::dispatch_simd! {
    avx512;
    /// [`quantize_into`]'s arithmetic, one value at a time: the reference.
    pub fn quantize_portable(x: &[f32], k: usize, out: &mut QuantizedRows) {
        quantize_rows(x, k, out, |block, q| {
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
                for (q, &v) in q.iter_mut().zip(block) {
                    *q = (v as f64 * 127.0 / m).round_ties_even().clamp(-127.0, 127.0) as i8;
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
        let mut q = QuantizedRows { rows, blocks, q: vec![0; rows * k], dx: vec![0.0; rows * blocks], sums: vec![0; rows * blocks] };
        quantize_into(x, k, &mut q);
        q
    }
}

crate::math::dispatch_simd! {
    avx512;
    /// Row `r` of `x` times output lane `o` of one tile (`w`: the tile's blocks, `scales`: its
    /// `blocks × 16` scales): the reference arithmetic, for any CPU.
    pub fn dot_portable(format: WeightFormat, w: &[u8], scales: &[f32], o: usize, x: &QuantizedRows, r: usize, out: &mut f32) {
        let tb = tile_block_bytes(format);
        let k = x.blocks * BLOCK;
        let q = &x.q[r * k..(r + 1) * k];
        let mut acc = 0.0f32;
        for b in 0..x.blocks {
            let block = &w[b * tb..(b + 1) * tb];
            let s: i32 = (0..BLOCK).map(|v| tile_weight(format, block, o, v) * q[b * BLOCK + v] as i32).sum();
            acc = (s as f32).mul_add(scales[b * TILE + o] * x.dx[r * x.blocks + b], acc);
        }
        *out = acc;
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

/// `y = x Wᵀ` for `x.rows` quantized rows against weights `data`/`scales` of `format` (int8 or
/// int4) in the tiled layout (module docs) for `d_out` outputs: `y` is `[rows, out]`,
/// overwritten.
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
    assert_eq!((x.q.len(), x.dx.len(), x.sums.len()), (rows * d_in, rows * x.blocks, rows * x.blocks));
    let (tiles, tb) = (d_out.div_ceil(TILE), tile_block_bytes(format));
    assert_eq!(data.len(), tiles * x.blocks * tb, "weights are not {d_out} × {d_in} {format}");
    assert_eq!(scales.len(), tiles * x.blocks * TILE);
    if rows == 0 || d_out == 0 {
        return;
    }
    if d_in == 0 {
        return y.fill(0.0);
    }
    let (use_vnni, use_avx2) = (vnni(kernel), avx2(kernel));
    let tile_bytes = x.blocks * tb;
    let out = crate::flex::OutPtr(y.as_mut_ptr());
    let tile = move |t: usize| {
        let (w, s) = (&data[t * tile_bytes..(t + 1) * tile_bytes], &scales[t * x.blocks * TILE..(t + 1) * x.blocks * TILE]);
        let (j0, width) = (t * TILE, TILE.min(d_out - t * TILE));
        let y = out.get();
        if use_vnni {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `vnni` checked AVX-512F, BW, VL and VNNI; `w` and `s` are tile t's (the
            // lengths asserted above); tile t writes only columns j0 .. j0 + width of the rows
            // of `y` (rows × d_out), no other tile's.
            unsafe {
                x86::tile(format, w, s, x, y.wrapping_add(j0), d_out, width)
            };
        } else if use_avx2 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `avx2` checked AVX2 and FMA; the slices and columns as above.
            unsafe {
                x86::tile_avx2(format, w, s, x, y.wrapping_add(j0), d_out, width)
            };
        } else {
            for o in 0..width {
                for r in 0..rows {
                    let mut v = 0.0;
                    dot_portable(format, w, s, o, x, r, &mut v);
                    // SAFETY: row r < rows, column j0 + o < d_out; only this tile writes it.
                    unsafe { *y.add(r * d_out + j0 + o) = v };
                }
            }
        }
    };
    // Tasks of ~256 KiB of weights: many, each worth waking a thread for.
    let per_task = ((256 << 10) / tile_bytes).max(1);
    let run = move |task: usize| (task * per_task..((task + 1) * per_task).min(tiles)).for_each(tile);
    let tasks = tiles.div_ceil(per_task);
    if d_in * d_out < crate::packed::PARALLEL_MIN_WEIGHTS {
        (0..tasks).for_each(run);
    } else {
        (0..tasks).into_par_iter().for_each(run);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{BLOCK, GROUP, QuantizedRows, TILE, WeightFormat, tile_block_bytes, weight_offset};

    /// How far ahead of the block it multiplies the first group of rows prefetches the weights.
    const AHEAD: usize = 1024;

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
        super::quantize_rows(x, k, out, |block, q| unsafe { quantize_block(block, q) })
    }

    /// One block of [`quantize_into`]: its 32 values into `q`'s 32 bytes; returns the scale.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `block` and `q` hold [`BLOCK`] values each.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn quantize_block(block: &[f32], q: &mut [i8]) -> f32 {
        debug_assert!(block.len() == BLOCK && q.len() == BLOCK);
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
                // 16 values, −127 … 127, one byte each.
                _mm512_cvtepi32_epi8(_mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b))
            });
            // SAFETY: `q` holds the block's 32 bytes.
            unsafe {
                _mm_storeu_si128(q.as_mut_ptr() as *mut __m128i, halves[0]);
                _mm_storeu_si128(q.as_mut_ptr().add(16) as *mut __m128i, halves[1]);
            }
        }
        amax / 127.0
    }

    /// Every row of `x` times one tile's 16 outputs (`w`: its blocks, `scales`: its `blocks ×
    /// 16` scales), into columns `0 .. width` of `y`'s rows (`stride` apart), groups of up to
    /// [`GROUP`] rows at a time.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, BW, VL and VNNI; `w` and `scales` hold a tile of `x.blocks`
    /// blocks; `y` addresses `x.rows` rows of `stride` values with `width` ≤ 16 columns from
    /// its start.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn tile(format: WeightFormat, w: &[u8], scales: &[f32], x: &QuantizedRows, y: *mut f32, stride: usize, width: usize) {
        let mask = ((1u32 << width) - 1) as __mmask16;
        let mut r0 = 0;
        while r0 < x.rows {
            let g = (x.rows - r0).min(GROUP);
            // SAFETY: as this function's, for rows r0 .. r0 + g.
            unsafe {
                macro_rules! call {
                    ($($g:literal)*) => {
                        match (format == WeightFormat::Int4, g) {
                            $((true, $g) => group::<true, $g>(w, scales, x, r0, y, stride, mask),
                              (false, $g) => group::<false, $g>(w, scales, x, r0, y, stride, mask),)*
                            _ => unreachable!(),
                        }
                    };
                }
                call!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
            }
            r0 += g;
        }
    }

    /// Rows `r0 .. r0 + G` times a tile: a block's 8 weight vectors (4 inputs × 16 outputs each)
    /// are loaded (int4: expanded from 4) once for the G rows, each row's 4 activations at a time
    /// broadcast against them.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn group<const INT4: bool, const G: usize>(w: &[u8], scales: &[f32], x: &QuantizedRows, r0: usize, y: *mut f32, stride: usize, mask: __mmask16) {
        let format = if INT4 { WeightFormat::Int4 } else { WeightFormat::Int8 };
        let (blocks, tb, k) = (x.blocks, tile_block_bytes(format), x.blocks * BLOCK);
        let off = weight_offset(format);
        let nibble = _mm512_set1_epi8(0x0f);
        let mut acc = [_mm512_setzero_ps(); G];
        let (wp, qp) = (w.as_ptr(), x.q.as_ptr().wrapping_add(r0 * k));
        for b in 0..blocks {
            // SAFETY (the loads below): block b < blocks of the tile is `tb` bytes at b · tb and
            // 16 scales at 16b; rows r0 + g < x.rows hold k bytes, `blocks` scales and sums.
            let wv: [__m512i; 8] = unsafe {
                let base = wp.add(b * tb) as *const __m512i;
                if r0 == 0 {
                    // The first group of rows streams the tile from memory (the others find it
                    // in cache), faster than the hardware prefetchers fetch it: ask AHEAD bytes
                    // on (into the next tile at the end; a prefetch never faults).
                    for line in 0..tb / 64 {
                        _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(b * tb + AHEAD + 64 * line) as *const i8);
                    }
                }
                if INT4 {
                    let p: [__m512i; 4] = std::array::from_fn(|u| _mm512_loadu_si512(base.add(u)));
                    std::array::from_fn(|t| if t < 4 { _mm512_and_si512(p[t], nibble) } else { _mm512_and_si512(_mm512_srli_epi16::<4>(p[t - 4]), nibble) })
                } else {
                    std::array::from_fn(|t| _mm512_loadu_si512(base.add(t)))
                }
            };
            let dw = unsafe { _mm512_loadu_ps(scales.as_ptr().add(b * TILE)) };
            for (g, a) in acc.iter_mut().enumerate() {
                let r = r0 + g;
                let (xq, dx, sum) = unsafe { (qp.add(g * k + b * BLOCK) as *const i32, *x.dx.get_unchecked(r * blocks + b), *x.sums.get_unchecked(r * blocks + b)) };
                // The weights are stored as q + off: the sums start at −off · Σ q_x to take it
                // out. Two chains (even and odd runs of 4), for twice the instructions in flight.
                let mut s0 = _mm512_set1_epi32(-off * sum);
                let mut s1 = _mm512_setzero_si512();
                for t in (0..8).step_by(2) {
                    // SAFETY: runs t and t + 1 of the block's 32 bytes.
                    let (x0, x1) = unsafe { (_mm512_set1_epi32(xq.add(t).read_unaligned()), _mm512_set1_epi32(xq.add(t + 1).read_unaligned())) };
                    s0 = _mm512_dpbusd_epi32(s0, wv[t], x0);
                    s1 = _mm512_dpbusd_epi32(s1, wv[t + 1], x1);
                }
                let s = _mm512_add_epi32(s0, s1);
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(dx)), *a);
            }
        }
        for (g, a) in acc.iter().enumerate() {
            // SAFETY: row r0 + g < x.rows of `y`, the `width` columns `mask` keeps.
            unsafe { _mm512_mask_storeu_ps(y.wrapping_add((r0 + g) * stride), mask, *a) };
        }
    }

    /// [`tile`] on AVX2 + FMA (no VNNI): the tile as two 8-output halves, a row at a time. A
    /// lane's 4 products come from `vpmaddubsw` on |q_w| and the activations with q_w's sign (≤
    /// 2 · 127 · 127 a pair: no saturation) and `vpmaddwd`: the exact integer sum VNNI's gives.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; otherwise as [`tile`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile_avx2(format: WeightFormat, w: &[u8], scales: &[f32], x: &QuantizedRows, y: *mut f32, stride: usize, width: usize) {
        let int4 = format == WeightFormat::Int4;
        let (blocks, tb, k) = (x.blocks, tile_block_bytes(format), x.blocks * BLOCK);
        let (nibble, eight, flip, ones) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(8), _mm256_set1_epi8(-128), _mm256_set1_epi16(1));
        for r in 0..x.rows {
            let mut acc = [_mm256_setzero_ps(); 2];
            for b in 0..blocks {
                let base = w.as_ptr().wrapping_add(b * tb);
                let mut s = [_mm256_setzero_si256(); 2];
                for t in 0..8 {
                    // SAFETY: run t of block b of row r (4 bytes), and the tile's block b.
                    let xb = unsafe { _mm256_set1_epi32((x.q.as_ptr().add(r * k + b * BLOCK + 4 * t) as *const i32).read_unaligned()) };
                    for (h, sh) in s.iter_mut().enumerate() {
                        // Run t of outputs 8h … 8h + 7 as signed q.
                        let wq = unsafe {
                            if int4 {
                                let p = _mm256_loadu_si256(base.add((t % 4) * 64 + 32 * h) as *const __m256i);
                                let v = if t < 4 { p } else { _mm256_srli_epi16::<4>(p) };
                                _mm256_sub_epi8(_mm256_and_si256(v, nibble), eight)
                            } else {
                                _mm256_xor_si256(_mm256_loadu_si256(base.add(t * 64 + 32 * h) as *const __m256i), flip)
                            }
                        };
                        let p = _mm256_maddubs_epi16(_mm256_abs_epi8(wq), _mm256_sign_epi8(xb, wq));
                        *sh = _mm256_add_epi32(*sh, _mm256_madd_epi16(p, ones));
                    }
                }
                let dx = _mm256_set1_ps(x.dx[r * blocks + b]);
                for (h, a) in acc.iter_mut().enumerate() {
                    // SAFETY: 8 of the block's 16 scales.
                    let dw = unsafe { _mm256_loadu_ps(scales.as_ptr().add(b * TILE + 8 * h)) };
                    *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[h]), _mm256_mul_ps(dw, dx), *a);
                }
            }
            let mut lanes = [0.0f32; 16];
            // SAFETY: 16 floats.
            unsafe {
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc[0]);
                _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc[1]);
            }
            for (o, v) in lanes.iter().take(width).enumerate() {
                // SAFETY: row r < x.rows, column o < width.
                unsafe { *y.add(r * stride + o) = *v };
            }
        }
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
        // One block, odd and even block counts, many; outputs short of a tile, a tile and a
        // short one, exactly two tiles, several tiles; several tasks (8160 → 61: two tiles a task
        // in int8; 1024 → 600: 32 tiles a task in int4, 16 in int8); every group size of the
        // VNNI kernel and several groups.
        for (d_in, d_out) in [(32, 5), (96, 37), (128, 7), (64, 32), (64 * 5, 70), (2048 + 96, 33), (8160, 61), (1024, 600)] {
            let w = values(d_in * d_out, 1, 0.2);
            for format in [WeightFormat::Int8, WeightFormat::Int4] {
                let p = PackedMatrix::pack(&w, d_in, d_out, format).unwrap();
                let (data, scales) = p.raw();
                for rows in (1..=17).chain([31, MAX_ROWS]) {
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
        (reference.rows, reference.q, reference.dx, reference.sums) = (rows, vec![0; rows * k], vec![0.0; rows * q.blocks], vec![0; rows * q.blocks]);
        quantize_portable(x, k, &mut reference);
        assert_eq!(q.q, reference.q);
        assert_eq!(q.sums, reference.sums);
        assert_eq!(q.dx.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), reference.dx.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        // The sums are the blocks' bytes added up.
        for (b, s) in q.sums.iter().enumerate() {
            assert_eq!(*s, q.q[b * BLOCK..(b + 1) * BLOCK].iter().map(|&v| v as i32).sum::<i32>());
        }
    }

    #[test]
    fn tiny_blocks_quantize_as_documented_and_empty_products_are_zeros() {
        // 127 / max|x| overflows f32 here; the f64 rounding still gives round(x · 127 / max).
        let mut x = vec![0.0f32; 32];
        x[0] = 1e-37;
        x[1] = 1e-38;
        let q = QuantizedRows::new(&x, 1, 32);
        assert_eq!((q.q[0], q.q[1], q.sums[0]), (127, 13, 140));
        // No inputs: zeros; no rows: nothing.
        for kernel in Kernel::available() {
            let mut y = vec![f32::NAN; 6];
            matmul_with(kernel, WeightFormat::Int8, &[], &[], 0, 3, &QuantizedRows::new(&[], 2, 0), &mut y);
            assert_eq!(y, [0.0; 6]);
            matmul_with(kernel, WeightFormat::Int4, &[0; 512], &[0.0; 32], 64, 3, &QuantizedRows::new(&[], 0, 64), &mut []);
        }
    }

    #[test]
    fn a_non_finite_activation_gives_nan_not_a_rounded_value() {
        // Row 17 of 18: in the second group of rows.
        let (d_in, d_out, rows, bad_row) = (64, 9, 18, 17);
        for format in [WeightFormat::Int8, WeightFormat::Int4] {
            let p = PackedMatrix::pack(&values(d_in * d_out, 3, 0.2), d_in, d_out, format).unwrap();
            let (data, scales) = p.raw();
            for bad in [f32::NAN, f32::INFINITY] {
                let mut x = values(rows * d_in, 4, 1.0);
                x[bad_row * d_in + 40] = bad;
                let q = QuantizedRows::new(&x, rows, d_in);
                for kernel in Kernel::available() {
                    let mut y = vec![0.0; rows * d_out];
                    matmul_with(kernel, format, data, scales, d_in, d_out, &q, &mut y);
                    assert!(y[..bad_row * d_out].iter().all(|v| v.is_finite()), "{format} {kernel:?}: the good rows");
                    assert!(y[bad_row * d_out..].iter().all(|v| v.is_nan()), "{format} {kernel:?}: {bad}");
                }
            }
        }
    }
}

