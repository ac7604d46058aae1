//! Packed rows: several independent sequences laid end to end in one row of a batch (SFT
//! packing). Attention stays inside each sequence and positions restart at its first token,
//! so a packed row computes what its sequences compute one by one — flash-attn's `cu_seqlens`
//! and transformers' position-id packing, as a description the kernels read.

use std::sync::Arc;

/// Where each row of a `[batch, len]` batch splits into independent sequences.
///
/// ```
/// use phi_kernels::Segments;
/// // Row 0 holds sequences of 3 and 2 tokens; row 1 one of 4, then a padding tail of 1.
/// let s = Segments::new(5, &[vec![3, 2], vec![4]]).unwrap();
/// assert_eq!(s.positions(), [0, 1, 2, 0, 1, 0, 1, 2, 3, 0]);
/// assert_eq!(s.row(1), [(0, 4), (4, 1)]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segments {
    len: usize,
    /// Per row, each sequence's `(start, length)`, in order, covering `0..len`.
    rows: Arc<[Vec<(usize, usize)>]>,
}

impl Segments {
    /// Rows of `len` positions, each holding sequences of the given lengths from its start;
    /// what a row leaves free (its padding) becomes one more sequence, which attends only to
    /// itself. Errors on an empty sequence or a row whose sequences exceed `len`.
    pub fn new(len: usize, rows: &[Vec<usize>]) -> Result<Self, String> {
        let mut out = Vec::with_capacity(rows.len());
        for (r, lengths) in rows.iter().enumerate() {
            let mut spans = Vec::with_capacity(lengths.len() + 1);
            let mut start = 0;
            for &n in lengths {
                if n == 0 {
                    return Err(format!("row {r} of the packed batch has an empty sequence"));
                }
                spans.push((start, n));
                start += n;
            }
            if start > len {
                return Err(format!("row {r} of the packed batch holds {start} tokens, more than its length {len}"));
            }
            if start < len {
                spans.push((start, len - start));
            }
            out.push(spans);
        }
        Ok(Segments { len, rows: out.into() })
    }

    /// Rows in the batch.
    pub fn batch(&self) -> usize {
        self.rows.len()
    }

    /// Positions per row.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Row `b`'s sequences as `(start, length)`, its padding tail included.
    pub fn row(&self, b: usize) -> &[(usize, usize)] {
        &self.rows[b]
    }

    /// Each token's position inside its own sequence, row after row (`batch × len` values).
    pub fn positions(&self) -> Vec<usize> {
        self.rows.iter().flat_map(|row| row.iter().flat_map(|&(_, n)| 0..n)).collect()
    }

    /// Each token's sequence number within its row, row after row (`batch × len` values).
    pub fn ids(&self) -> Vec<i64> {
        self.rows.iter().flat_map(|row| row.iter().enumerate().flat_map(|(i, &(_, n))| std::iter::repeat_n(i as i64, n))).collect()
    }
}

/// Query rows `q0..q0 + n` of one batch row and the keys they see: query `q0 + i` sees keys
/// `k0..k0 + extra + i + 1`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub q0: usize,
    pub k0: usize,
    pub n: usize,
    pub extra: usize,
}

/// The spans of batch row `b` for `t` queries over `s` keys: the whole row, its causal rule
/// aligned to the end of the keys (a KV cache's earlier tokens are the `s − t` extra keys), or
/// one span per packed sequence (no cache: `s == t`).
pub(crate) fn spans(segments: Option<&Segments>, b: usize, t: usize, s: usize) -> Vec<Span> {
    match segments {
        None => vec![Span { q0: 0, k0: 0, n: t, extra: s - t }],
        Some(seg) => {
            assert!(s == t && seg.len() == t, "packed attention: {t} queries over {s} keys, segments of length {}", seg.len());
            seg.row(b).iter().map(|&(start, n)| Span { q0: start, k0: start, n, extra: 0 }).collect()
        }
    }
}
