//! f32 products of a few rows by a weight matrix: the decode step, of one sequence or of a
//! batch of them (continuous batching), and short prompts.
//!
//! burn's flex multiplies with the gemm crate, which packs the right-hand matrix for each call
//! (for a 50k-vocabulary LM head, 51 MB copied into fresh pages per decoded token), runs its
//! AVX2 micro-kernels on an AVX-512 CPU, and splits a product of a few rows across threads
//! poorly. With few rows the work is one pass over the weights, so this kernel reads them in
//! place, once per group of rows: each task owns a strip of output columns (row-major weights)
//! or of outputs (column-major: the transposed view of a tied embedding), and keeps the sums of
//! up to six rows in registers while a weight vector is loaded once for all of them.
//!
//! In place, a strip's task reads 256 bytes from each matrix row: `k` pieces a whole row apart,
//! each on its own page and, for a matrix a multiple of 4 KiB wide, on the same few L1 sets —
//! the groups of rows evict one another's weights, and at 16 rows the product ran at half the
//! arithmetic's pace (a 2048 × 1024 matrix: 47 GMAC/s). [`Strips`] repacks a frozen matrix so that
//! each strip is contiguous (the packed format `f32` of CPU inference): the same kernel, the same
//! sums, one sequential stream (121 GMAC/s there; the bench-small head at 16 rows 2.7 → 2.1 ms).
//!
//! A row's result does not depend on the other rows: every row sums over the inputs in the same
//! order whatever the number of rows, so a sequence decoded in a batch gets bitwise the logits it
//! gets alone (its greedy tokens, and its seeded draws, are the same).
//!
//! ```
//! use phi_kernels::rows::{matmul_rows, Weights};
//!
//! // y = x · w for 2 rows, w [3 inputs, 2 outputs] row-major.
//! let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
//! let x = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0];
//! let mut y = [0.0; 4];
//! matmul_rows(&x, 2, Weights::RowMajor(&w), 3, 2, &mut y);
//! assert_eq!(y, [1.0, 2.0, 8.0, 10.0]);
//! ```

use rayon::prelude::*;

use crate::packed::Kernel;

/// Products of at most this many rows take this kernel when the weights are read in place
/// (`linear`); more rows (a long prompt) go to gemm there. Weights in [`Strips`] take every
/// product through it, this many rows at a time (`PackedMatrix::matmul`).
pub const MAX_ROWS: usize = 64;

/// Output columns per task of the row-major kernel: four 16-lane registers; also the width of
/// [`Strips`]' strips.
pub const STRIP: usize = 64;
/// Outputs per task of the column-major kernel.
const OUTPUTS: usize = 16;
/// Inputs per pass: a strip's weights for one pass (`K_BLOCK × STRIP` f32, 256 KiB) stay in L2
/// while every group of rows reads them.
const K_BLOCK: usize = 1024;
/// Inputs per pass when the rows take more than one group and the weights are past
/// [`SHARED_MIN_BYTES`]: every group multiplies a strip's
/// weights for these inputs (16 KiB) while they are in L1, and the first prefetches the next
/// pass's meanwhile — the weights' stream from memory overlaps all the rows' arithmetic instead of
/// only the first group's (16 rows of the bench-small head: 2.9 → 2.7 ms).
const K_SHARED: usize = 64;
/// Weights (bytes) above which several groups of rows take [`K_SHARED`] passes.
const SHARED_MIN_BYTES: usize = 4 << 20;
/// Weight rows the first group of rows prefetches ahead otherwise (one group, or a matrix that
/// stays in cache): a row's 256
/// bytes come from memory every few cycles, and its stride (a whole matrix row) is beyond the
/// hardware prefetchers.
const AHEAD_ALONE: usize = 24;
/// Rows whose sums stay in registers together (6 × 4 accumulators of the 32 AVX-512 registers).
const ROW_GROUP: usize = 6;
/// Below this many multiply-adds a product runs on the calling thread: waking the pool costs
/// ~10–20 µs, more than splitting a decode step's small projections saves (at hidden 256, a
/// `[1, 256] × [256, 768]` product on two threads made `phi bench generate` 4–20% slower).
/// An 8 MiB weight matrix read for one row is where two threads start to pay.
const PARALLEL_MIN: usize = 1 << 21;

/// How the `[k, n]` weight matrix lies in memory.
#[derive(Debug, Clone, Copy)]
pub enum Weights<'a> {
    /// `w[i * n + j]`: burn's `[in, out]` projection layout.
    RowMajor(&'a [f32]),
    /// `w[j * k + i]`: each output's inputs contiguous — the transposed view of a `[vocab,
    /// hidden]` embedding used as a tied LM head.
    ColMajor(&'a [f32]),
    /// A row-major matrix repacked in strips of [`STRIP`] columns, each contiguous
    /// ([`Strips::pack`]): what a strip's task reads is one sequential stream, where in place
    /// it is `k` pieces of 256 bytes a whole matrix row apart (a page each, and for a 50k-column
    /// head a few L1 sets). The same sums in the same order: the same bits as in place.
    Strips(&'a Strips),
}

/// A `[k, n]` row-major matrix as ⌈n / 64⌉ strips (the last zero-padded), each `[k, 64]`
/// row-major and contiguous, 64-byte aligned: `w[i][j]` is value `(j / 64) · 64k + 64i + j % 64`.
/// The values are f32 ([`Strips::pack`]) or bf16 ([`Strips::pack_bf16`]: half the bytes to read,
/// widened to f32 in registers once for every row of a group; the products are f32).
#[derive(Debug, Clone)]
pub struct Strips {
    lines: Vec<Line>,
    k: usize,
    n: usize,
    bf16: bool,
}

/// One cache line of 16 values: the storage unit of [`Strips`], for its alignment.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

impl Strips {
    /// Repacks the row-major `[k, n]` matrix `w`, as f32.
    ///
    /// # Panics
    /// When `w` is not `k · n` long.
    pub fn pack(w: &[f32], k: usize, n: usize) -> Self {
        Self::build(w, k, n, false)
    }

    /// Repacks the row-major `[k, n]` matrix `w` as bf16 (rounded to nearest even).
    ///
    /// # Panics
    /// When `w` is not `k · n` long.
    pub fn pack_bf16(w: &[f32], k: usize, n: usize) -> Self {
        Self::build(w, k, n, true)
    }

    fn build(w: &[f32], k: usize, n: usize, bf16: bool) -> Self {
        assert_eq!(w.len(), k * n, "w is not [{k}, {n}]");
        let size = if bf16 { 2 } else { 4 };
        let (row_bytes, strips) = (STRIP * size, n.div_ceil(STRIP));
        let mut lines = vec![Line([0.0; 16]); strips * k * row_bytes / 64];
        // SAFETY: `Line` is 64 bytes of f32 with no padding; any bytes are valid f32.
        let bytes = unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr() as *mut u8, lines.len() * 64) };
        bytes.par_chunks_mut((k * row_bytes).max(1)).enumerate().for_each(|(s, strip)| {
            for (i, row) in strip.chunks_mut(row_bytes).enumerate() {
                for c in 0..STRIP.min(n - s * STRIP) {
                    let v = w[i * n + s * STRIP + c];
                    if bf16 {
                        row[2 * c..2 * c + 2].copy_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes());
                    } else {
                        row[4 * c..4 * c + 4].copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
        });
        Strips { lines, k, n, bf16 }
    }

    /// `[k, n]`.
    pub fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// Whether the values are bf16.
    pub fn is_bf16(&self) -> bool {
        self.bf16
    }

    /// The values of f32 strips, strip after strip.
    ///
    /// # Panics
    /// On bf16 strips.
    pub fn values(&self) -> &[f32] {
        assert!(!self.bf16, "bf16 strips hold no f32 values");
        // SAFETY: `Line` is 16 f32 with no padding (repr(C), 64 bytes).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const f32, self.lines.len() * 16) }
    }

    /// The values' bytes, strip after strip (little-endian f32 or bf16).
    fn raw(&self) -> &[u8] {
        // SAFETY: `Line` is 64 bytes with no padding (repr(C)).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const u8, self.lines.len() * 64) }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.lines.len() * 64
    }

    /// `w[i][j]` (a bf16 value widened).
    ///
    /// # Panics
    /// Outside `[k, n]`.
    pub fn get(&self, i: usize, j: usize) -> f32 {
        assert!(i < self.k && j < self.n, "[{i}, {j}] is outside [{}, {}]", self.k, self.n);
        let at = (j / STRIP) * STRIP * self.k + i * STRIP + j % STRIP;
        weight(self.raw(), at, self.bf16)
    }
}

/// Value `at` of `bytes`, f32 or bf16 widened (exactly: bf16 is f32's upper half).
#[inline(always)]
fn weight(bytes: &[u8], at: usize, bf16: bool) -> f32 {
    if bf16 {
        f32::from_bits((u16::from_le_bytes([bytes[2 * at], bytes[2 * at + 1]]) as u32) << 16)
    } else {
        f32::from_le_bytes(bytes[4 * at..4 * at + 4].try_into().expect("4 bytes"))
    }
}

/// The bytes of f32 values.
fn f32_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and u8 no alignment.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

/// `y = x · w`: `x` is `[rows, k]` row-major, `w` is `[k, n]` in any of the layouts, `y` is `[rows,
/// n]` (overwritten).
///
/// # Panics
/// When a slice's length does not match the dimensions.
pub fn matmul_rows(x: &[f32], rows: usize, w: Weights<'_>, k: usize, n: usize, y: &mut [f32]) {
    assert_eq!(x.len(), rows * k, "x is not [{rows}, {k}]");
    assert_eq!(y.len(), rows * n, "y is not [{rows}, {n}]");
    let (fits, per_task) = match w {
        Weights::RowMajor(v) => (v.len() == k * n, STRIP),
        Weights::ColMajor(v) => (v.len() == k * n, OUTPUTS),
        Weights::Strips(s) => (s.dims() == (k, n), STRIP),
    };
    assert!(fits, "w is not [{k}, {n}]");
    if rows == 0 || n == 0 {
        return;
    }
    if k == 0 {
        y.fill(0.0);
        return;
    }
    let kernel = Kernel::detect();
    let out = crate::flex::OutPtr(y.as_mut_ptr());
    let task = move |t: usize| {
        let (j0, width) = (t * per_task, per_task.min(n - t * per_task));
        // SAFETY: task `t` writes only columns j0..j0 + width of each of the `rows` rows of `y`
        // (rows × n values); tasks' column ranges are disjoint, and `y` outlives them.
        unsafe {
            match w {
                Weights::RowMajor(w) => strip(kernel, x, rows, f32_bytes(&w[j0..]), false, n, STRIP, k, n, j0, width, out.get()),
                // Strip t starts at value t · 64k; the next one is 64k values on.
                Weights::Strips(s) => {
                    let size = if s.bf16 { 2 } else { 4 };
                    strip(kernel, x, rows, &s.raw()[t * STRIP * k * size..], s.bf16, STRIP, STRIP * k, k, n, j0, width, out.get())
                }
                Weights::ColMajor(w) => outputs(kernel, x, rows, w, k, n, j0, width, out.get()),
            }
        }
    };
    let tasks = n.div_ceil(per_task);
    if rows * k * n < PARALLEL_MIN {
        (0..tasks).for_each(task);
    } else {
        (0..tasks).into_par_iter().with_min_len(4).for_each(task);
    }
}

/// Row-major weights: columns `j0..j0 + width` (≤ [`STRIP`]) of every row. `w` (the bytes of f32
/// values, or of bf16 ones when `bf16`: then strips, whose padding is read whole) starts at the
/// strip's first column, its rows `ws` values apart; the next strip starts `next` values on
/// (a matrix row's `n` and 64 in place, 64 and `64k` in [`Strips`]).
///
/// # Safety
/// `y` addresses `rows × n` values; no other thread touches these columns meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn strip(kernel: Kernel, x: &[f32], rows: usize, w: &[u8], bf16: bool, ws: usize, next: usize, k: usize, n: usize, j0: usize, width: usize, y: *mut f32) {
    // Shared passes only where the weights come from beyond L2 (a small matrix stays in cache
    // between calls, and the passes' extra loads and stores of the sums cost it more).
    let shared = rows > ROW_GROUP && k * n * if bf16 { 2 } else { 4 } > SHARED_MIN_BYTES;
    let (k_block, ahead) = if shared { (K_SHARED, K_SHARED) } else { (K_BLOCK, AHEAD_ALONE) };
    for k0 in (0..k).step_by(k_block) {
        let k1 = (k0 + k_block).min(k);
        for r0 in (0..rows).step_by(ROW_GROUP) {
            let rg = ROW_GROUP.min(rows - r0);
            let (xr, yr) = (&x[r0 * k..], y.wrapping_add(r0 * n + j0));
            // SAFETY: rows r0..r0 + rg of `y` exist; the kernels read `w` rows k0..k1 (`ws`
            // apart), `width` wide, and `x` rows r0..r0 + rg — all inside the slices.
            unsafe {
                match kernel {
                    #[cfg(target_arch = "x86_64")]
                    // The first group of rows streams the strip's weights from memory: it
                    // prefetches `ahead` weight rows on, into the next strip at the end.
                    Kernel::Avx512 => x86::strip512(rg, xr, k, w, bf16, ws, next, n, k0, k1, width, yr, k0 == 0, if r0 == 0 && j0 + STRIP < n { ahead } else { 0 }),
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx2 => x86::strip256(rg, xr, k, w, bf16, ws, n, k0, k1, width, yr, k0 == 0),
                    Kernel::Portable => portable_strip(rg, xr, k, w, bf16, ws, n, k0, k1, width, yr, k0 == 0),
                }
            }
        }
    }
}

/// Column-major weights: outputs `j0..j0 + width` (≤ [`OUTPUTS`]) of every row, each a dot
/// product over the inputs.
///
/// # Safety
/// As [`strip`].
#[allow(clippy::too_many_arguments)]
unsafe fn outputs(kernel: Kernel, x: &[f32], rows: usize, w: &[f32], k: usize, n: usize, j0: usize, width: usize, y: *mut f32) {
    for r0 in (0..rows).step_by(4) {
        let rg = 4.min(rows - r0);
        for j in j0..j0 + width {
            let wj = &w[j * k..(j + 1) * k];
            let mut sums = [0.0f32; 4];
            match kernel {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX-512 was detected; the slices are `k` long.
                Kernel::Avx512 => unsafe { x86::dots512(rg, &x[r0 * k..], k, wj, &mut sums) },
                _ => portable_dots(rg, &x[r0 * k..], k, wj, &mut sums),
            }
            for (r, s) in sums.iter().take(rg).enumerate() {
                // SAFETY: row r0 + r < rows, column j < n.
                unsafe { *y.add((r0 + r) * n + j) = *s };
            }
        }
    }
}

/// The scalar strip: the reference the SIMD ones are tested against (multiply, then add).
#[allow(clippy::too_many_arguments)]
unsafe fn portable_strip(rg: usize, x: &[f32], k: usize, w: &[u8], bf16: bool, ws: usize, n: usize, k0: usize, k1: usize, width: usize, y: *mut f32, first: bool) {
    for r in 0..rg {
        let mut acc = [0.0f32; STRIP];
        if !first {
            for (c, a) in acc.iter_mut().take(width).enumerate() {
                // SAFETY: the caller's `y` covers `width` columns of each of `rg` rows.
                *a = unsafe { *y.add(r * n + c) };
            }
        }
        for i in k0..k1 {
            let xv = x[r * k + i];
            for (c, a) in acc.iter_mut().take(width).enumerate() {
                *a += xv * weight(w, i * ws + c, bf16);
            }
        }
        for (c, a) in acc.iter().take(width).enumerate() {
            // SAFETY: as above.
            unsafe { *y.add(r * n + c) = *a };
        }
    }
}

/// Scalar dot products of `rg` rows of `x` with one output's weights, 16 partial sums each in
/// the order the AVX-512 kernel keeps them.
fn portable_dots(rg: usize, x: &[f32], k: usize, w: &[f32], sums: &mut [f32; 4]) {
    for (r, s) in sums.iter_mut().take(rg).enumerate() {
        let xr = &x[r * k..(r + 1) * k];
        let mut lanes = [0.0f32; 16];
        for (i, (xv, wv)) in xr.iter().zip(w).enumerate() {
            lanes[i % 16] += xv * wv;
        }
        *s = lanes.iter().sum();
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `rg` (1…6) rows × up to 64 columns, inputs `k0..k1`: `y` (+)= `x` · `w`. Sums start at
    /// zero when `first`, else from `y` (the previous input block's). Each weight row read
    /// prefetches the one `ahead` rows on (0: none). `w` holds f32 values, or bf16 ones when
    /// `bf16` (a strip's, padded: each row's 64 values are read whole and widened once for all
    /// the rows).
    ///
    /// # Safety
    /// AVX-512F is available; `x` holds `rg` rows of `k`, `w` rows up to `k1` of stride `ws`
    /// values with `width` columns from its start (64 when `bf16`), `y` `rg` rows of stride `n`
    /// with `width` columns.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn strip512(rg: usize, x: &[f32], k: usize, w: &[u8], bf16: bool, ws: usize, next: usize, n: usize, k0: usize, k1: usize, width: usize, y: *mut f32, first: bool, ahead: usize) {
        // SAFETY: forwarded from the caller's contract.
        unsafe {
            if bf16 {
                strip512_any::<true>(rg, x, k, w, ws, next, n, k0, k1, width, y, first, ahead)
            } else {
                strip512_any::<false>(rg, x, k, w, ws, next, n, k0, k1, width, y, first, ahead)
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn strip512_any<const BF16: bool>(rg: usize, x: &[f32], k: usize, w: &[u8], ws: usize, next: usize, n: usize, k0: usize, k1: usize, width: usize, y: *mut f32, first: bool, ahead: usize) {
        // SAFETY: forwarded from the caller's contract.
        unsafe {
            match (rg, ahead > 0) {
                (1, false) => strip512_rows::<1, false, BF16>(x, k, w, ws, next, n, k0, k1, width, y, first, ahead),
                (1, true) => strip512_rows::<1, true, BF16>(x, k, w, ws, next, n, k0, k1, width, y, first, ahead),
                (2, false) => strip512_rows::<2, false, BF16>(x, k, w, ws, next, n, k0, k1, width, y, first, ahead),
                (2, true) => strip512_rows::<2, true, BF16>(x, k, w, ws, next, n, k0, k1, width, y, first, ahead),
                (3, false) => strip512_rows::<3, false, BF16>(x, k, w, ws, next, n, k0, k1, width, y, first, ahead),
                (3, true) => strip512_rows::<3, true, BF16>(x, k, w, ws, next, n, k0, k1, width, y, first, ahead),
                (4, false) => strip512_rows::<4, false, BF16>(x, k, w, ws, next, n, k0, k1, width, y, first, ahead),
                (4, true) => strip512_rows::<4, true, BF16>(x, k, w, ws, next, n, k0, k1, width, y, first, ahead),
                (5, false) => strip512_rows::<5, false, BF16>(x, k, w, ws, next, n, k0, k1, width, y, first, ahead),
                (5, true) => strip512_rows::<5, true, BF16>(x, k, w, ws, next, n, k0, k1, width, y, first, ahead),
                (_, false) => strip512_rows::<6, false, BF16>(x, k, w, ws, next, n, k0, k1, width, y, first, ahead),
                (_, true) => strip512_rows::<6, true, BF16>(x, k, w, ws, next, n, k0, k1, width, y, first, ahead),
            }
        }
    }

    /// Lane masks for `width` columns in four 16-lane vectors.
    fn masks16(width: usize) -> [__mmask16; 4] {
        std::array::from_fn(|v| {
            let lanes = width.saturating_sub(16 * v).min(16);
            ((1u32 << lanes) - 1) as __mmask16
        })
    }

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn strip512_rows<const R: usize, const PREFETCH: bool, const BF16: bool>(x: &[f32], k: usize, w: &[u8], ws: usize, next: usize, n: usize, k0: usize, k1: usize, width: usize, y: *mut f32, first: bool, ahead: usize) {
        let size = if BF16 { 2 } else { 4 };
        let m = masks16(width);
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        // SAFETY (every block below): masked lanes are neither read nor written, so a vector
        // past the strip's last column touches no memory (bf16 rows are read whole: a strip's
        // padding is allocated); the pointers are formed with `wrapping_add` and only
        // dereferenced through those masks or inside a strip.
        if !first {
            for (r, a) in acc.iter_mut().enumerate() {
                for (v, av) in a.iter_mut().enumerate() {
                    *av = unsafe { _mm512_maskz_loadu_ps(m[v], y.wrapping_add(r * n + 16 * v)) };
                }
            }
        }
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        for i in k0..k1 {
            let row = wp.wrapping_add(i * ws * size);
            if PREFETCH {
                // Row i + ahead of this strip, or past its end the first rows of the next strip
                // (`next` values on). A prefetch never faults, whatever the address.
                let to = if i + ahead < k { wp.wrapping_add((i + ahead) * ws * size) } else { wp.wrapping_add(((i + ahead - k) * ws + next) * size) };
                for line in 0..size {
                    _mm_prefetch::<_MM_HINT_T0>(to.wrapping_add(64 * line) as *const i8);
                }
            }
            let wv: [__m512; 4] = std::array::from_fn(|v| unsafe {
                if BF16 {
                    // bf16 is f32's upper half: widen 16 values by a shift.
                    let h = _mm256_loadu_si256(row.wrapping_add(32 * v) as *const __m256i);
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
                } else {
                    _mm512_maskz_loadu_ps(m[v], row.wrapping_add(64 * v) as *const f32)
                }
            });
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: row r < rg of `x`, input i < k.
                let xb = _mm512_set1_ps(unsafe { *xp.add(r * k + i) });
                for v in 0..4 {
                    a[v] = _mm512_fmadd_ps(xb, wv[v], a[v]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (v, av) in a.iter().enumerate() {
                unsafe { _mm512_mask_storeu_ps(y.wrapping_add(r * n + 16 * v), m[v], *av) };
            }
        }
    }

    /// As [`strip512`] with 8-lane AVX2 registers: the strip in two 32-column halves, up to
    /// three rows at a time (12 accumulators of 16 registers).
    ///
    /// # Safety
    /// AVX2 and FMA are available; otherwise as [`strip512`].
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn strip256(rg: usize, x: &[f32], k: usize, w: &[u8], bf16: bool, ws: usize, n: usize, k0: usize, k1: usize, width: usize, y: *mut f32, first: bool) {
        let size = if bf16 { 2 } else { 4 };
        for half in 0..2 {
            let c0 = 32 * half;
            if width <= c0 {
                break;
            }
            let wd = (width - c0).min(32);
            for r0 in (0..rg).step_by(3) {
                let (xr, yr, wr) = (&x[r0 * k..], y.wrapping_add(r0 * n + c0), &w[(c0 * size).min(w.len())..]);
                // SAFETY: forwarded from the caller's contract, for rows r0.. and columns c0..
                unsafe {
                    match ((rg - r0).min(3), bf16) {
                        (1, false) => strip256_rows::<1, false>(xr, k, wr, ws, n, k0, k1, wd, yr, first),
                        (2, false) => strip256_rows::<2, false>(xr, k, wr, ws, n, k0, k1, wd, yr, first),
                        (_, false) => strip256_rows::<3, false>(xr, k, wr, ws, n, k0, k1, wd, yr, first),
                        (1, true) => strip256_rows::<1, true>(xr, k, wr, ws, n, k0, k1, wd, yr, first),
                        (2, true) => strip256_rows::<2, true>(xr, k, wr, ws, n, k0, k1, wd, yr, first),
                        (_, true) => strip256_rows::<3, true>(xr, k, wr, ws, n, k0, k1, wd, yr, first),
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn strip256_rows<const R: usize, const BF16: bool>(x: &[f32], k: usize, w: &[u8], ws: usize, n: usize, k0: usize, k1: usize, width: usize, y: *mut f32, first: bool) {
        let size = if BF16 { 2 } else { 4 };
        let m: [__m256i; 4] = std::array::from_fn(|v| {
            let lanes = width.saturating_sub(8 * v).min(8) as i32;
            _mm256_setr_epi32(
                -((lanes > 0) as i32), -((lanes > 1) as i32), -((lanes > 2) as i32), -((lanes > 3) as i32),
                -((lanes > 4) as i32), -((lanes > 5) as i32), -((lanes > 6) as i32), -((lanes > 7) as i32),
            )
        });
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        // SAFETY (every block below): as in `strip512_rows`, with AVX2's masked loads and stores.
        if !first {
            for (r, a) in acc.iter_mut().enumerate() {
                for (v, av) in a.iter_mut().enumerate() {
                    *av = unsafe { _mm256_maskload_ps(y.wrapping_add(r * n + 8 * v), m[v]) };
                }
            }
        }
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        for i in k0..k1 {
            let row = wp.wrapping_add(i * ws * size);
            let wv: [__m256; 4] = std::array::from_fn(|v| unsafe {
                if BF16 {
                    let h = _mm_loadu_si128(row.wrapping_add(16 * v) as *const __m128i);
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
                } else {
                    _mm256_maskload_ps(row.wrapping_add(32 * v) as *const f32, m[v])
                }
            });
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: row r of `x`, input i < k.
                let xb = _mm256_set1_ps(unsafe { *xp.add(r * k + i) });
                for v in 0..4 {
                    a[v] = _mm256_fmadd_ps(xb, wv[v], a[v]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (v, av) in a.iter().enumerate() {
                unsafe { _mm256_maskstore_ps(y.wrapping_add(r * n + 8 * v), m[v], *av) };
            }
        }
    }

    /// Dot products of `rg` (1…4) rows of `x` with one output's `k` weights: 16 lanes each,
    /// summed at the end.
    ///
    /// # Safety
    /// AVX-512F is available; `x` holds `rg` rows of `k`, `w` `k` values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dots512(rg: usize, x: &[f32], k: usize, w: &[f32], sums: &mut [f32; 4]) {
        let mut acc = [_mm512_setzero_ps(); 4];
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        for i in (0..k).step_by(16) {
            let m = ((1u32 << (k - i).min(16)) - 1) as __mmask16;
            // SAFETY: lanes past `k` are masked off.
            let wv = unsafe { _mm512_maskz_loadu_ps(m, wp.wrapping_add(i)) };
            for (r, a) in acc.iter_mut().enumerate().take(rg) {
                let xv = unsafe { _mm512_maskz_loadu_ps(m, xp.wrapping_add(r * k + i)) };
                *a = _mm512_fmadd_ps(xv, wv, *a);
            }
        }
        for (s, a) in sums.iter_mut().zip(&acc).take(rg) {
            *s = _mm512_reduce_add_ps(*a);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    fn reference(x: &[f32], rows: usize, w: &[f32], k: usize, n: usize) -> Vec<f64> {
        let mut y = vec![0.0f64; rows * n];
        for r in 0..rows {
            for i in 0..k {
                for j in 0..n {
                    y[r * n + j] += x[r * k + i] as f64 * w[i * n + j] as f64;
                }
            }
        }
        y
    }

    fn transposed(w: &[f32], k: usize, n: usize) -> Vec<f32> {
        (0..n * k).map(|idx| w[(idx % k) * n + idx / k]).collect()
    }

    /// Every kernel this CPU has, every layout, odd shapes (partial strips, input blocks, row
    /// groups, the shared passes of a matrix past 4 MiB), against an f64 reference; and each
    /// row's result is bitwise the same whether it runs alone or with others.
    #[test]
    fn products_match_the_reference_and_do_not_depend_on_the_other_rows() {
        for &(rows, k, n) in &[(1, 1, 1), (1, 3, 70), (5, 17, 33), (7, 1030, 129), (13, 64, 200), (64, 40, 65), (2, 2500, 31), (9, 1100, 1000)] {
            let (x, w) = (values(rows * k, rows as u64), values(k * n, (k * n) as u64));
            let (wt, strips, halves) = (transposed(&w, k, n), Strips::pack(&w, k, n), Strips::pack_bf16(&w, k, n));
            let exact = reference(&x, rows, &w, k, n);
            let rounded: Vec<f32> = w.iter().map(|v| half::bf16::from_f32(*v).to_f32()).collect();
            let exact_bf16 = reference(&x, rows, &rounded, k, n);
            for kernel in Kernel::available() {
                for (name, weights) in [("row-major", Weights::RowMajor(&w)), ("col-major", Weights::ColMajor(&wt)), ("strips", Weights::Strips(&strips)), ("bf16 strips", Weights::Strips(&halves))] {
                    let exact = if name == "bf16 strips" { &exact_bf16 } else { &exact };
                    let mut y = vec![f32::NAN; rows * n];
                    with_kernel(kernel, || matmul_rows(&x, rows, weights, k, n, &mut y));
                    for (i, (a, b)) in y.iter().zip(exact).enumerate() {
                        assert!((*a as f64 - b).abs() < 1e-5 * (k as f64).sqrt().max(1.0), "{kernel:?} {name} [{rows}, {k}] × [{k}, {n}] at {i}: {a} vs {b}");
                    }
                    if name == "strips" {
                        // The same sums in the same order as in place.
                        let mut in_place = vec![f32::NAN; rows * n];
                        with_kernel(kernel, || matmul_rows(&x, rows, Weights::RowMajor(&w), k, n, &mut in_place));
                        assert!(y.iter().zip(&in_place).all(|(a, b)| a.to_bits() == b.to_bits()), "{kernel:?} strips against in place, [{rows}, {k}] × [{k}, {n}]");
                    }
                    for r in [0, rows / 2, rows - 1] {
                        let mut alone = vec![0.0; n];
                        with_kernel(kernel, || matmul_rows(&x[r * k..(r + 1) * k], 1, weights, k, n, &mut alone));
                        assert_eq!(alone.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), y[r * n..(r + 1) * n].iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{kernel:?} {name} row {r} alone");
                    }
                }
            }
        }
    }

    #[test]
    fn empty_products() {
        let mut y = [1.0f32; 6];
        matmul_rows(&[], 2, Weights::RowMajor(&[]), 0, 3, &mut y);
        assert_eq!(y, [0.0; 6]);
        matmul_rows(&[], 0, Weights::RowMajor(&[0.0; 6]), 2, 3, &mut []);
    }

    #[test]
    #[should_panic(expected = "w is not [3, 2]")]
    fn mismatched_weights_are_refused() {
        matmul_rows(&[0.0; 3], 1, Weights::RowMajor(&[0.0; 5]), 3, 2, &mut [0.0; 2]);
    }

    #[test]
    #[should_panic(expected = "w is not [3, 2]")]
    fn mismatched_strips_are_refused() {
        matmul_rows(&[0.0; 3], 1, Weights::Strips(&Strips::pack(&[0.0; 6], 2, 3)), 3, 2, &mut [0.0; 2]);
    }

    /// The layout is the documented one, the last strip zero-padded.
    #[test]
    fn strips_lay_out_64_columns_each() {
        let (k, n) = (3, 70);
        let w: Vec<f32> = (0..k * n).map(|v| v as f32).collect();
        let s = Strips::pack(&w, k, n);
        assert_eq!(s.values().len(), 2 * 64 * k);
        assert_eq!(s.values().as_ptr() as usize % 64, 0);
        for i in 0..k {
            for j in 0..n {
                assert_eq!(s.values()[(j / 64) * 64 * k + i * 64 + j % 64], w[i * n + j]);
                assert_eq!(s.get(i, j), w[i * n + j]);
            }
        }
        assert!(s.values()[64 * k..].chunks(64).all(|row| row[n - 64..].iter().all(|v| *v == 0.0)));
        // bf16: half the bytes, each value rounded to nearest even.
        let w: Vec<f32> = (0..k * n).map(|v| 1.0 + v as f32 / 1024.0).collect();
        let b = Strips::pack_bf16(&w, k, n);
        assert!(b.is_bf16() && b.bytes() == s.bytes() / 2);
        for i in 0..k {
            for j in 0..n {
                assert_eq!(b.get(i, j), half::bf16::from_f32(w[i * n + j]).to_f32());
            }
        }
    }

    /// Runs `f` with `kernel` forced (tests only; the kernel is otherwise detected once).
    pub(crate) fn with_kernel(kernel: Kernel, f: impl FnOnce()) {
        crate::packed::FORCED.with(|k| k.set(Some(kernel)));
        f();
        crate::packed::FORCED.with(|k| k.set(None));
    }
}

