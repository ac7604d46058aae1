//! Rotary position embedding in HF's half-split (`rotate_half`) layout, partial rotary
//! (`rotary_ndims` of each head rotate, the rest pass through) and LongRoPE.
//!
//! Applied as `x·C + rotate_half(x)·S` over the *whole* head: `C` holds cos on the rotary dims
//! and 1 on the pass-through dims, `S` holds ∓sin on the rotary dims and 0 elsewhere, so partial
//! rotary needs no split and concat. [`phi_kernels::rope_heads_first`] does it in one pass and
//! writes the heads-first layout attention reads.

use burn::tensor::{Device, Tensor, TensorData};
use phi_kernels::Segments;

use crate::config::PhiConfig;

/// Host-side cos/sin tables for positions `0..max_position_embeddings`, one set for the short
/// (default) frequencies and, with LongRoPE, one for the long ones. The default holds no
/// position (an unloaded model's, see `PhiForCausalLM::unloaded`).
#[derive(Debug, Clone, Default)]
pub struct RopeTables {
    head_dim: usize,
    max_positions: usize,
    short: (Vec<f32>, Vec<f32>),
    long: Option<(Vec<f32>, Vec<f32>)>,
    /// LongRoPE switches to the long factors for sequences longer than this.
    original_max: usize,
    rotary_dims: usize,
}

/// The rotation for one forward pass, on one device: positions `offset..offset + len` shared by
/// the batch, or, for packed rows, each token's position in its own sequence — and then also
/// which tokens form a sequence, so attention stays inside it.
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor<2>,
    sin: Tensor<2>,
    rotary_dims: usize,
    segments: Option<Segments>,
}

impl RopeTables {
    pub fn new(config: &PhiConfig) -> Self {
        let hd = config.head_dim;
        let rd = config.rotary_ndims();
        let max = config.max_position_embeddings;
        let base = config.rope_theta as f32;
        // inv_freq = 1 / (factor_i · θ^(2i/rd)), in f32 like HF.
        let inv_freq = |factors: Option<&[f64]>| -> Vec<f32> {
            (0..rd / 2)
                .map(|i| {
                    let f = factors.map_or(1.0, |f| f[i] as f32);
                    1.0 / (f * base.powf((2 * i) as f32 / rd as f32))
                })
                .collect()
        };
        let (short, long, original_max) = match &config.longrope {
            None => (Self::table(&inv_freq(None), hd, rd, max, 1.0), None, usize::MAX),
            Some(l) => {
                let scale = l.attention_factor as f32;
                (
                    Self::table(&inv_freq(Some(&l.short_factor)), hd, rd, max, scale),
                    Some(Self::table(&inv_freq(Some(&l.long_factor)), hd, rd, max, scale)),
                    l.original_max_position_embeddings,
                )
            }
        };
        RopeTables { head_dim: hd, max_positions: max, short, long, original_max, rotary_dims: rd }
    }

    fn table(inv_freq: &[f32], hd: usize, rd: usize, max: usize, scale: f32) -> (Vec<f32>, Vec<f32>) {
        let half = rd / 2;
        let mut cos = vec![1.0f32; max * hd];
        let mut sin = vec![0.0f32; max * hd];
        for p in 0..max {
            for (i, f) in inv_freq.iter().enumerate() {
                let angle = p as f32 * f;
                let (s, c) = ((angle as f64).sin() as f32 * scale, (angle as f64).cos() as f32 * scale);
                cos[p * hd + i] = c;
                cos[p * hd + i + half] = c;
                sin[p * hd + i] = -s;
                sin[p * hd + i + half] = s;
            }
        }
        (cos, sin)
    }

    /// Whether a sequence of `total_len` tokens uses the LongRoPE long factors (HF's rule: the
    /// whole sequence, cache included, is longer than the original context).
    pub fn uses_long(&self, total_len: usize) -> bool {
        self.long.is_some() && total_len > self.original_max
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Uploads the rows for positions `offset..offset + len`; `long` picks the LongRoPE set.
    pub fn at(&self, offset: usize, len: usize, long: bool, device: &Device) -> Rope {
        let hd = self.head_dim;
        let (cos, sin) = match (&self.long, long) {
            (Some(l), true) => l,
            _ => &self.short,
        };
        let rows = offset * hd..(offset + len) * hd;
        let upload = |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [len, hd]), device);
        Rope { cos: upload(&cos[rows.clone()]), sin: upload(&sin[rows]), rotary_dims: self.rotary_dims, segments: None }
    }

    /// The rotation of one new token per row, row `i` at position `positions[i].0` with the
    /// LongRoPE set `positions[i].1` picks (separate sequences decoded together).
    pub fn rows(&self, positions: &[(usize, bool)], device: &Device) -> Rope {
        self.per_token(positions.iter().copied(), None, device)
    }

    /// Tables with a row per token, token `i` at position `p` of the set `long` picks.
    fn per_token(&self, positions: impl ExactSizeIterator<Item = (usize, bool)>, segments: Option<Segments>, device: &Device) -> Rope {
        let (hd, n) = (self.head_dim, positions.len());
        let (mut cos, mut sin) = (Vec::with_capacity(n * hd), Vec::with_capacity(n * hd));
        for (p, long) in positions {
            let (c, s) = match (&self.long, long) {
                (Some(l), true) => l,
                _ => &self.short,
            };
            cos.extend_from_slice(&c[p * hd..(p + 1) * hd]);
            sin.extend_from_slice(&s[p * hd..(p + 1) * hd]);
        }
        let upload = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [n, hd]), device);
        Rope { cos: upload(cos), sin: upload(sin), rotary_dims: self.rotary_dims, segments }
    }

    /// The rotation of packed rows: each token at its position in its own sequence, and each
    /// sequence (padding tails included) on the LongRoPE factors its own length picks, as if it
    /// ran alone. Callers check the sequences fit `max_positions`.
    pub fn packed(&self, segments: &Segments, device: &Device) -> Rope {
        let positions: Vec<(usize, bool)> = (0..segments.batch())
            .flat_map(|r| segments.row(r))
            .flat_map(|&(_, n)| (0..n).map(move |p| (p, self.uses_long(n))))
            .collect();
        self.per_token(positions.into_iter(), Some(segments.clone()), device)
    }
}

impl Rope {
    /// Rotates `x` `[batch, seq, heads, head_dim]` and returns it heads first:
    /// `[batch, heads, seq, head_dim]`.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let (mut cos, mut sin) = (self.cos.clone(), self.sin.clone());
        if x.dtype() != cos.dtype() {
            // Mixed-precision activations: the f32 tables follow them.
            (cos, sin) = (cos.cast(x.dtype()), sin.cast(x.dtype()));
        }
        phi_kernels::rope_heads_first(x, cos, sin, self.rotary_dims)
    }

    /// The packed sequences of the pass, if its rows are packed.
    pub fn segments(&self) -> Option<&Segments> {
        self.segments.as_ref()
    }
}
