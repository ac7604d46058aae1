//! Matrix products against frozen weights for CPU inference: f32 or bf16 in strips, int8/int4 in
//! tiles.
//!
//! Decoding one token multiplies a single row by every weight matrix, so its speed is set by how
//! many weight bytes are read, not by arithmetic: f32 weights cost 4 bytes a value, bf16 2, int8
//! 1 (+ a scale per 32), int4 ½. A [`PackedMatrix`] stores a projection in the order its product
//! streams through it (f32 and bf16: strips of 64 outputs, `rows::Strips`; int8/int4: tiles of
//! 16 outputs, see the type) and multiplies by reading those values directly — nothing is widened
//! to f32 in memory. With bf16 weights activations and accumulation stay f32 (each weight widened
//! in a register once for up to six rows), any number of rows, 64 at a time; int8/int4 products quantize the activations to int8
//! too and run as integer dot products, 64 rows at a time (see `qrows`: llama.cpp's scheme, with
//! AVX-512 VNNI where the CPU has it) — a prompt as a decoded token, so every row gets the bits it
//! gets alone.
//!
//! Quantization is burn's symmetric per-block scheme (`Q8S` / `Q4S`, blocks of 32 along the input
//! dimension, one f32 scale per block: `scale = max|w| / 127` or `/ 7`, `q = round(w / scale)`);
//! the tests check the values against burn's own `quantize_dynamic`. Only the storage is ours:
//! burn's flex backend keeps quantized values one byte each (int4 too) and dequantizes a whole
//! matrix before multiplying, which reads more bytes than f32 does.
//!
//! ```
//! use phi_kernels::packed::{PackedMatrix, WeightFormat};
//!
//! // A 64 → 3 projection in burn's `[in, out]` layout.
//! let w: Vec<f32> = (0..64 * 3).map(|i| ((i * 37 % 101) as f32 - 50.0) / 100.0).collect();
//! let packed = PackedMatrix::pack(&w, 64, 3, WeightFormat::Int8).unwrap();
//! let x = vec![0.5f32; 64];
//! let mut y = vec![0.0f32; 3];
//! packed.matmul(&x, 1, &mut y);
//! let exact: Vec<f32> = (0..3).map(|j| (0..64).map(|i| 0.5 * w[i * 3 + j]).sum()).collect();
//! assert!(y.iter().zip(&exact).all(|(a, b)| (a - b).abs() < 0.05));
//! ```

use rayon::prelude::*;

use crate::rows::{Strips, Weights};

/// Values per quantization block (burn's `per_block([32])`), along the input dimension.
pub const BLOCK: usize = 32;

/// Outputs stored side by side in the int8/int4 layout (16 lanes of an AVX-512 register).
pub const TILE: usize = 16;

/// Below this many weights a product runs on the calling thread (waking the pool costs more than
/// a small decode projection saves).
pub(crate) const PARALLEL_MIN_WEIGHTS: usize = 1 << 16;

/// How a frozen weight matrix is stored for inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// f32, the values as they load (any value, as unpacked), repacked in strips of 64 outputs
    /// ([`crate::rows::Strips`]): the products the unpacked model runs on the CPU, the same sums
    /// in the same order (the same logits, decoding and up to 64 prompt rows), but each task reads one sequential
    /// stream where in place it reads pieces a matrix row apart — a page each, and for a wide
    /// matrix a few L1 sets, which held the unpacked product at 16 rows to about half of what
    /// the arithmetic allows. Longer prompts go 64 rows at a time too, rather than through gemm.
    F32,
    /// bfloat16, rounded to nearest even: 2 bytes a value, no scales.
    Bf16,
    /// Symmetric int8 in blocks of 32 with an f32 scale each (burn's `Q8S`).
    Int8,
    /// Symmetric int4 (−7…7) in blocks of 32 with an f32 scale each (burn's `Q4S`), two a byte.
    Int4,
}

impl WeightFormat {
    /// Storage bits per weight value, scales included.
    pub fn bits_per_value(self) -> f64 {
        match self {
            WeightFormat::F32 => 32.0,
            WeightFormat::Bf16 => 16.0,
            WeightFormat::Int8 => 8.0 + 32.0 / BLOCK as f64,
            WeightFormat::Int4 => 4.0 + 32.0 / BLOCK as f64,
        }
    }
}

impl std::str::FromStr for WeightFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(WeightFormat::F32),
            "bf16" => Ok(WeightFormat::Bf16),
            "int8" => Ok(WeightFormat::Int8),
            "int4" => Ok(WeightFormat::Int4),
            _ => Err(format!("`{s}`: expected f32, bf16, int8 or int4")),
        }
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WeightFormat::F32 => "f32",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Int8 => "int8",
            WeightFormat::Int4 => "int4",
        })
    }
}

/// A `[out, in]` weight matrix in a narrow [`WeightFormat`] (or f32 in strips).
///
/// Layout:
/// - f32: [`crate::rows::Strips`] (64 outputs a strip, the strip's inputs one after another);
/// - bf16: the same strips with bf16 values (128 bytes a strip row);
/// - int8/int4: the outputs in tiles of [`TILE`] (16; the last tile padded with zero weights and
///   scales: their bytes hold the offset, i.e. `q = 0`), tile after tile; within a tile, block (32 inputs) after block, each block's 32
///   weights of the 16 outputs as 64-byte vectors that hold 4 consecutive inputs of every output
///   side by side (`4o + i`), stored unsigned (`q + 128`, `q + 8`) — int8: 8 such vectors, runs
///   of inputs 0–3, 4–7, …; int4: 4, runs `u` in the low nibbles and runs `u + 4` in the high
///   ones. Scales `[tile, block, 16]`. This is the order the integer products (`qrows`) read:
///   one vector times a row's 4 activations gives 16 outputs' sums.
#[derive(Clone)]
pub struct PackedMatrix {
    format: WeightFormat,
    d_in: usize,
    d_out: usize,
    data: Vec<u8>,
    scales: Vec<f32>,
    /// f32's and bf16's values (`data` and `scales` are then empty).
    strips: Option<Strips>,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedMatrix({} {}→{}, {} bytes)", self.format, self.d_in, self.d_out, self.bytes())
    }
}

impl PackedMatrix {
    /// Packs `w`, given in burn's `[in, out]` layout (row-major, `d_in × d_out`).
    ///
    /// Errors when `w` is not `d_in × d_out`, on a non-finite weight, and for int8/int4 when
    /// `d_in` is not a multiple of 32 (every Phi projection's is).
    pub fn pack(w: &[f32], d_in: usize, d_out: usize, format: WeightFormat) -> Result<Self, String> {
        if w.len() != d_in * d_out {
            return Err(format!("{} values for a {d_in}×{d_out} matrix", w.len()));
        }
        // f32 keeps any value, as the unpacked product does.
        if format != WeightFormat::F32
            && let Some(i) = w.iter().position(|v| !v.is_finite())
        {
            return Err(format!("weight [{}, {}] is {}", i / d_out, i % d_out, w[i]));
        }
        match format {
            WeightFormat::F32 => Ok(Self::from_strips(format, Strips::pack(w, d_in, d_out))),
            WeightFormat::Bf16 => Ok(Self::from_strips(format, Strips::pack_bf16(w, d_in, d_out))),
            WeightFormat::Int8 | WeightFormat::Int4 => Self::pack_out_in(&transpose(w, d_in, d_out), d_in, d_out, format),
        }
    }

    /// Packs `wt`, given `[out, in]` (HF's layout, and an embedding table's `[vocab, hidden]`
    /// used as the tied LM head).
    pub fn pack_out_in(wt: &[f32], d_in: usize, d_out: usize, format: WeightFormat) -> Result<Self, String> {
        if wt.len() != d_in * d_out {
            return Err(format!("{} values for a {d_out}×{d_in} matrix", wt.len()));
        }
        // Strips are built from `[in, out]` (the checks are `pack`'s).
        if matches!(format, WeightFormat::F32 | WeightFormat::Bf16) {
            return Self::pack(&transpose(wt, d_out, d_in), d_in, d_out, format);
        }
        if let Some(i) = wt.iter().position(|v| !v.is_finite()) {
            return Err(format!("weight [{}, {}] (in, out) is {}", i % d_in, i / d_in, wt[i]));
        }
        if d_in % BLOCK != 0 {
            return Err(format!("{format} needs in-features divisible by {BLOCK}, got {d_in}"));
        }
        let row = |j: usize| -> &[f32] { &wt[j * d_in..(j + 1) * d_in] };
        // Each output row is written in place into buffers allocated once (collecting per-row
        // pieces and concatenating them copied every packed byte twice more, into fresh pages).
        let levels = if format == WeightFormat::Int8 { 127.0 } else { 7.0 };
        let (blocks, tb) = (d_in / BLOCK, crate::qrows::tile_block_bytes(format));
        let tiles = d_out.div_ceil(TILE);
        let off = crate::qrows::weight_offset(format);
        let mut data = vec![0u8; tiles * blocks * tb];
        let mut scales = vec![0f32; tiles * blocks * TILE];
        let parts = data.par_chunks_mut((blocks * tb).max(1)).zip(scales.par_chunks_mut((blocks * TILE).max(1)));
        parts.enumerate().for_each(|(t, (bytes, tile_scales))| {
            for o in 0..TILE {
                let j = t * TILE + o;
                for b in 0..blocks {
                    // Outputs past d_out: q = 0 with scale 0.
                    let (s, q) = if j < d_out { quantize_block(&row(j)[b * BLOCK..(b + 1) * BLOCK], levels) } else { (0.0, [0; BLOCK]) };
                    tile_scales[b * TILE + o] = s;
                    let block = &mut bytes[b * tb..(b + 1) * tb];
                    for (v, &q) in q.iter().enumerate() {
                        let (byte, high) = crate::qrows::tile_slot(format, o, v);
                        let stored = (q + off) as u8;
                        block[byte] |= if high { stored << 4 } else { stored };
                    }
                }
            }
        });
        Ok(PackedMatrix { format, d_in, d_out, data, scales, strips: None })
    }

    fn from_strips(format: WeightFormat, strips: Strips) -> Self {
        let (d_in, d_out) = strips.dims();
        PackedMatrix { format, d_in, d_out, data: vec![], scales: vec![], strips: Some(strips) }
    }

    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// `(in, out)` features.
    pub fn dims(&self) -> (usize, usize) {
        (self.d_in, self.d_out)
    }

    /// Bytes held: values and scales.
    pub fn bytes(&self) -> usize {
        self.data.len() + 4 * self.scales.len() + self.strips.as_ref().map_or(0, Strips::bytes)
    }

    /// The weights as f32 in burn's `[in, out]` layout: what the products below compute with.
    pub fn dequantize(&self) -> Vec<f32> {
        transpose(&self.dequantize_out_in(), self.d_out, self.d_in)
    }

    /// The weights as f32 `[out, in]` (each output's row contiguous), built in parallel.
    pub fn dequantize_out_in(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.d_in * self.d_out];
        out.par_chunks_mut(self.d_in.max(1)).enumerate().for_each(|(j, row)| self.row_f32(j, 0, row));
        out
    }

    /// Output row `j`'s weights from input `lo` on (a multiple of [`BLOCK`]), `out.len()` of them.
    fn row_f32(&self, j: usize, lo: usize, out: &mut [f32]) {
        if let Some(s) = &self.strips {
            for (i, o) in out.iter_mut().enumerate() {
                *o = s.get(lo + i, j);
            }
            return;
        }
        let (blocks, tb) = (self.d_in / BLOCK, crate::qrows::tile_block_bytes(self.format));
        let (t, o) = (j / TILE, j % TILE);
        for (i, chunk) in out.chunks_exact_mut(BLOCK).enumerate() {
            let b = t * blocks + lo / BLOCK + i;
            let (block, scale) = (&self.data[b * tb..(b + 1) * tb], self.scales[b * TILE + o]);
            for (v, w) in chunk.iter_mut().enumerate() {
                *w = crate::qrows::tile_weight(self.format, block, o, v) as f32 * scale;
            }
        }
    }

    /// `y = x Wᵀ` for `rows` input rows: `x` is `[rows, in]`, `y` `[rows, out]` (overwritten).
    ///
    /// Outputs are split across threads; each task streams its outputs' weights once per 64 rows
    /// and multiplies every input row by them while they are in cache: f32 and bf16 through the
    /// strips kernel (`rows`), int8/int4 as integer products (`qrows`). A row gets the bits it
    /// gets alone, whatever the number of rows.
    pub fn matmul(&self, x: &[f32], rows: usize, y: &mut [f32]) {
        let (d_in, d_out) = (self.d_in, self.d_out);
        assert_eq!(x.len(), rows * d_in, "x is not [{rows}, {d_in}]");
        assert_eq!(y.len(), rows * d_out, "y is not [{rows}, {d_out}]");
        if rows == 0 || d_out == 0 {
            return;
        }
        if d_in == 0 {
            return y.fill(0.0);
        }
        // A long prompt 64 rows at a time (the kernels' largest group): the rows stay in cache
        // while every strip or tile of weights is multiplied by them (at 2048 inputs a tile's
        // share is 16 KiB, read from L1 by each group of rows), and re-reading the weights per
        // 64 rows costs far less than the products.
        let chunk = if self.strips.is_some() { crate::rows::MAX_ROWS } else { crate::qrows::MAX_ROWS };
        for (xc, yc) in x.chunks(chunk * d_in).zip(y.chunks_mut(chunk * d_out)) {
            let n = xc.len() / d_in;
            match &self.strips {
                Some(s) => crate::rows::matmul_rows(xc, n, Weights::Strips(s), d_in, d_out, yc),
                None => crate::qrows::matmul(self.format, &self.data, &self.scales, d_in, d_out, &crate::qrows::QuantizedRows::new(xc, n, d_in), yc),
            }
        }
    }

    /// The packed values and scales (in the type's layout).
    #[cfg(test)]
    pub(crate) fn raw(&self) -> (&[u8], &[f32]) {
        (&self.data, &self.scales)
    }
}

/// `[rows, cols]` → `[cols, rows]`, in 32 × 32 tiles so that neither side is read with a stride
/// that misses the cache on every value.
fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0.0f32; rows * cols];
    // Each task fills TILE output rows (= TILE input columns).
    out.par_chunks_mut((TILE * rows).max(1)).enumerate().for_each(|(t, chunk)| {
        let c0 = t * TILE;
        let c1 = (c0 + TILE).min(cols);
        for r0 in (0..rows).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..c1 {
                    chunk[(c - c0) * rows + r] = w[r * cols + c];
                }
            }
        }
    });
    out
}

/// burn's symmetric quantization of one block: `scale = max|v| / levels`, `q = round(v / scale)`
/// clamped to `±levels` (an all-zero block gets scale 0 and zeros).
fn quantize_block(block: &[f32], levels: f32) -> (f32, [i32; BLOCK]) {
    let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let mut q = [0i32; BLOCK];
    if amax == 0.0 {
        return (0.0, q);
    }
    let scale = amax / levels;
    for (q, v) in q.iter_mut().zip(block) {
        *q = (v / scale).round().clamp(-levels, levels) as i32;
    }
    (scale, q)
}

/// Which inner loops this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Kernel {
    /// The widest this CPU has. `PHI_PORTABLE_KERNELS` (any value) forces the scalar loops,
    /// `PHI_NO_AVX512` the AVX2 ones — to compare, or to rule a kernel out. Decided once per
    /// process: `matmul` asks on every call, ~150 times a decoded token.
    pub(crate) fn detect() -> Kernel {
        #[cfg(test)]
        if let Some(k) = FORCED.with(|k| k.get()) {
            return k;
        }
        static DETECTED: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| Kernel::available()[0])
    }

    /// Every kernel this CPU can run, widest first (the tests check each against the others).
    pub(crate) fn available() -> Vec<Kernel> {
        let mut all = vec![];
        #[cfg(target_arch = "x86_64")]
        if std::env::var_os("PHI_PORTABLE_KERNELS").is_none() {
            if std::env::var_os("PHI_NO_AVX512").is_none() && is_x86_feature_detected!("avx512f") {
                all.push(Kernel::Avx512);
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                all.push(Kernel::Avx2);
            }
        }
        all.push(Kernel::Portable);
        all
    }
}

#[cfg(test)]
thread_local! {
    /// A kernel the tests force on this thread instead of the detected one.
    pub(crate) static FORCED: std::cell::Cell<Option<Kernel>> = const { std::cell::Cell::new(None) };
}


#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(d_in: usize, d_out: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..d_in * d_out)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
            })
            .collect()
    }

    /// `x W` with the dequantized weights, in f64.
    fn reference(x: &[f32], rows: usize, w: &[f32], d_in: usize, d_out: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; rows * d_out];
        for r in 0..rows {
            for j in 0..d_out {
                y[r * d_out + j] = (0..d_in).map(|i| x[r * d_in + i] as f64 * w[i * d_out + j] as f64).sum::<f64>() as f32;
            }
        }
        y
    }

    #[test]
    fn products_equal_the_dequantized_matrix_on_every_kernel() {
        let (d_in, d_out, rows) = (96, 300, 3);
        let w = matrix(d_in, d_out, 1);
        let x = matrix(rows, d_in, 2);
        for format in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Int8, WeightFormat::Int4] {
            let p = PackedMatrix::pack(&w, d_in, d_out, format).unwrap();
            let expect = reference(&x, rows, &p.dequantize(), d_in, d_out);
            let mut y = vec![f32::NAN; rows * d_out];
            p.matmul(&x, rows, &mut y);
            let worst = y.iter().zip(&expect).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            // int8/int4 quantize the activations too (qrows' tests bound that error exactly).
            let tolerance = if matches!(format, WeightFormat::F32 | WeightFormat::Bf16) { 1e-5 } else { 5e-3 };
            assert!(worst < tolerance, "{format}: {worst}");
            // Every kernel this CPU has (the strips' are `rows`' own, tested there too).
            for kernel in Kernel::available() {
                let mut y = vec![f32::NAN; rows * d_out];
                crate::rows::tests::with_kernel(kernel, || p.matmul(&x, rows, &mut y));
                let worst = y.iter().zip(&expect).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(worst < tolerance, "{format} {kernel:?}: {worst}");
            }
        }
        // Many rows, 64 at a time (the last chunk short; a short last strip, 300 = 4 × 64 + 44):
        // each row the bits it gets alone.
        let (d_in, rows) = (2048 + 96, 2 * crate::qrows::MAX_ROWS + 5);
        let w = matrix(d_in, d_out, 5);
        let x = matrix(rows, d_in, 6);
        for format in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Int8, WeightFormat::Int4] {
            let p = PackedMatrix::pack(&w, d_in, d_out, format).unwrap();
            let expect = reference(&x, rows, &p.dequantize(), d_in, d_out);
            let mut y = vec![f32::NAN; rows * d_out];
            p.matmul(&x, rows, &mut y);
            let worst = y.iter().zip(&expect).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            let tolerance = if matches!(format, WeightFormat::F32 | WeightFormat::Bf16) { 1e-4 } else { 5e-3 };
            assert!(worst < tolerance, "{format}, {rows} rows: {worst}");
            for r in [0, 63, 64, 100, rows - 1] {
                let mut alone = vec![f32::NAN; d_out];
                p.matmul(&x[r * d_in..(r + 1) * d_in], 1, &mut alone);
                assert!(alone.iter().zip(&y[r * d_out..(r + 1) * d_out]).all(|(a, b)| a.to_bits() == b.to_bits()), "{format} row {r} of {rows}");
            }
        }
        // bf16 batches of every size a decode step has: close to the reference, each row the
        // bits it gets alone.
        let (d_in, d_out) = (2048 + 40, 70);
        let w = matrix(d_in, d_out, 7);
        let p = PackedMatrix::pack(&w, d_in, d_out, WeightFormat::Bf16).unwrap();
        let deq = p.dequantize();
        for rows in (1..=17).chain([31, 64]) {
            let x = matrix(rows, d_in, 8 + rows as u64);
            let mut y = vec![f32::NAN; rows * d_out];
            p.matmul(&x, rows, &mut y);
            let expect = reference(&x, rows, &deq, d_in, d_out);
            let worst = y.iter().zip(&expect).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(worst < 1e-5, "bf16, {rows} rows: {worst}");
            for r in [0, rows / 2, rows - 1] {
                let mut alone = vec![f32::NAN; d_out];
                p.matmul(&x[r * d_in..(r + 1) * d_in], 1, &mut alone);
                assert!(alone.iter().zip(&y[r * d_out..(r + 1) * d_out]).all(|(a, b)| a.to_bits() == b.to_bits()), "bf16 row {r} of {rows}");
            }
        }
        // bf16 with in-features and outputs off every multiple.
        let w = matrix(21, 5, 3);
        let p = PackedMatrix::pack(&w, 21, 5, WeightFormat::Bf16).unwrap();
        let x = matrix(1, 21, 4);
        let mut y = vec![0.0; 5];
        p.matmul(&x, 1, &mut y);
        let expect = reference(&x, 1, &p.dequantize(), 21, 5);
        assert!(y.iter().zip(&expect).all(|(a, b)| (a - b).abs() < 1e-5));
    }

    /// f32 in strips holds the values exactly (packed from either layout) and gives the
    /// unpacked product's bits — the same kernel and order reading in place — at every row count
    /// up to 64 (a decode step, a batch, a short prompt), with a short last strip, one input
    /// block (small matrices) or several (past 4 MiB: shared passes over the groups of rows).
    #[test]
    fn f32_strips_hold_the_values_and_give_the_unpacked_bits() {
        use crate::rows::{Weights, matmul_rows};
        for (d_in, d_out) in [(40, 150), (1100, 1000)] {
            let w = matrix(d_in, d_out, 11);
            let p = PackedMatrix::pack(&w, d_in, d_out, WeightFormat::F32).unwrap();
            assert_eq!(p.dequantize(), w);
            assert_eq!(p.bytes(), d_out.div_ceil(64) * 64 * d_in * 4);
            let from_out_in = PackedMatrix::pack_out_in(&transpose(&w, d_in, d_out), d_in, d_out, WeightFormat::F32).unwrap();
            assert_eq!(from_out_in.dequantize(), w);
            for rows in [1, 2, 5, 6, 7, 13, 16, 64] {
                let x = matrix(rows, d_in, 12 + rows as u64);
                let (mut packed, mut in_place) = (vec![f32::NAN; rows * d_out], vec![f32::NAN; rows * d_out]);
                p.matmul(&x, rows, &mut packed);
                matmul_rows(&x, rows, Weights::RowMajor(&w), d_in, d_out, &mut in_place);
                assert!(packed.iter().zip(&in_place).all(|(a, b)| a.to_bits() == b.to_bits()), "[{d_in}, {d_out}], {rows} rows");
            }
        }
    }

    #[test]
    fn quantization_is_burns_symmetric_per_block_scheme() {
        use burn::tensor::quantization::{QuantScheme, QuantValue, ScaleDtype};
        use burn::tensor::{Device, Tensor, TensorData};
        let (d_in, d_out) = (64, 40);
        let w = matrix(d_in, d_out, 5);
        let device = Device::flex();
        for (format, value) in [(WeightFormat::Int8, QuantValue::Q8S), (WeightFormat::Int4, QuantValue::Q4S)] {
            let ours = PackedMatrix::pack(&w, d_in, d_out, format).unwrap().dequantize();
            // burn quantizes blocks along the last dimension: give it `[out, in]`.
            let t = Tensor::<2>::from_data(TensorData::new(w.clone(), [d_in, d_out]), &device).transpose();
            let scheme = QuantScheme::default().with_value(value).per_block([BLOCK as u8], ScaleDtype::F32);
            let theirs = t.quantize_dynamic(&scheme).dequantize().transpose().into_data().try_to_vec::<f32>().unwrap();
            let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(worst < 1e-6, "{format}: differs from burn by {worst}");
            // And it is a quantization: within half a step of the original.
            let step = if format == WeightFormat::Int8 { 0.1 / 127.0 } else { 0.1 / 7.0 };
            assert!(ours.iter().zip(&w).all(|(a, b)| (a - b).abs() <= step / 2.0 + 1e-6));
        }
        let bf = PackedMatrix::pack(&w, d_in, d_out, WeightFormat::Bf16).unwrap().dequantize();
        assert!(bf.iter().zip(&w).all(|(a, b)| *a == half::bf16::from_f32(*b).to_f32()));
    }

    #[test]
    fn bad_shapes_and_values_are_refused() {
        assert!(PackedMatrix::pack(&[0.0; 10], 4, 3, WeightFormat::Bf16).unwrap_err().contains("10 values"));
        assert!(PackedMatrix::pack(&[0.0; 10], 4, 3, WeightFormat::F32).unwrap_err().contains("10 values"));
        assert!(PackedMatrix::pack(&[f32::INFINITY; 6], 2, 3, WeightFormat::Bf16).unwrap_err().contains("[0, 0]"));
        // f32 keeps what it is given, as the unpacked product does.
        let inf = PackedMatrix::pack(&[f32::INFINITY; 6], 2, 3, WeightFormat::F32).unwrap();
        assert!(inf.dequantize().iter().all(|v| *v == f32::INFINITY));
        // f32 takes any in-features (no blocks).
        assert!(PackedMatrix::pack(&[0.5; 21 * 5], 21, 5, WeightFormat::F32).is_ok());
        assert!(PackedMatrix::pack(&[0.0; 40], 20, 2, WeightFormat::Int8).unwrap_err().contains("divisible by 32"));
        let mut w = vec![0.0; 64];
        w[33] = f32::NAN;
        assert!(PackedMatrix::pack(&w, 32, 2, WeightFormat::Int4).unwrap_err().contains("[16, 1]"));
        // An all-zero block packs to zeros, not NaN.
        let p = PackedMatrix::pack(&[0.0; 64], 32, 2, WeightFormat::Int4).unwrap();
        assert!(p.dequantize().iter().all(|v| *v == 0.0));
        // Two outputs take a whole 16-output tile: 16 × 32 values at 4 bits, 16 scales.
        assert_eq!(p.bytes(), 16 * 32 / 2 + 16 * 4);
        // No inputs: zeros; no outputs: nothing (whatever the rows, through the 64-row chunks and
        // bf16's gemm tiles).
        for format in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Int8, WeightFormat::Int4] {
            let empty = PackedMatrix::pack(&[], 0, 3, format).unwrap();
            let mut y = vec![f32::NAN; 70 * 3];
            empty.matmul(&[], 70, &mut y);
            assert!(y.iter().all(|v| *v == 0.0), "{format}");
            assert!(empty.dequantize().is_empty());
            PackedMatrix::pack(&[], 64, 0, format).unwrap().matmul(&[0.0; 70 * 64], 70, &mut []);
        }
    }
}
