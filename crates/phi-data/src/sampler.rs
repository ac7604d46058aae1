//! Batches of `[batch, seq_len + 1]` token windows: deterministic from a seed, reshuffled every
//! epoch, and resumable from a small serialisable state.

use serde::{Deserialize, Serialize};

/// Where a sampler is: enough to continue with exactly the batches it would have produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    pub seed: u64,
    pub epoch: u64,
    /// Windows of the current epoch already handed out.
    pub cursor: usize,
}

/// Non-overlapping windows of `seq_len + 1` tokens (inputs and shifted targets) over one token
/// stream, visited in a seeded random order that changes every epoch.
#[derive(Debug, Clone)]
pub struct TokenSampler {
    seq_len: usize,
    num_windows: usize,
    order: Vec<usize>,
    state: SamplerState,
}

impl TokenSampler {
    /// Panics if the stream holds fewer than `seq_len + 1` tokens.
    pub fn new(num_tokens: usize, seq_len: usize, seed: u64) -> Self {
        Self::resume(num_tokens, seq_len, SamplerState { seed, epoch: 0, cursor: 0 })
    }

    pub fn resume(num_tokens: usize, seq_len: usize, state: SamplerState) -> Self {
        assert!(num_tokens > seq_len, "need more than seq_len = {seq_len} tokens, have {num_tokens}");
        let num_windows = (num_tokens - 1) / seq_len;
        let mut s = TokenSampler { seq_len, num_windows, order: Vec::new(), state };
        s.shuffle();
        s
    }

    pub fn state(&self) -> SamplerState {
        self.state
    }

    pub fn num_windows(&self) -> usize {
        self.num_windows
    }

    fn shuffle(&mut self) {
        // Fisher–Yates driven by SplitMix64 of (seed, epoch): no dependency on a rand version.
        let mut x = self.state.seed ^ self.state.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        self.order = (0..self.num_windows).collect();
        for i in (1..self.order.len()).rev() {
            let j = (next() % (i as u64 + 1)) as usize;
            self.order.swap(i, j);
        }
    }

    /// Start offsets of the next `batch` windows (a new epoch begins when one runs out).
    pub fn next_offsets(&mut self, batch: usize) -> Vec<usize> {
        (0..batch)
            .map(|_| {
                if self.state.cursor == self.num_windows {
                    self.state.epoch += 1;
                    self.state.cursor = 0;
                    self.shuffle();
                }
                let w = self.order[self.state.cursor];
                self.state.cursor += 1;
                w * self.seq_len
            })
            .collect()
    }

    /// The next batch, row-major `[batch, seq_len + 1]`.
    pub fn next_batch(&mut self, tokens: &[u32], batch: usize) -> Vec<u32> {
        let n = self.seq_len + 1;
        self.next_offsets(batch).into_iter().flat_map(|o| tokens[o..o + n].iter().copied()).collect()
    }
}

/// Every whole window of `tokens` in order, `batch` at a time (validation: the same data each time).
pub fn sequential_batches(tokens: &[u32], seq_len: usize, batch: usize) -> impl Iterator<Item = Vec<u32>> + '_ {
    let windows = (tokens.len().saturating_sub(1)) / seq_len;
    (0..windows).step_by(batch).map(move |w0| {
        (w0..(w0 + batch).min(windows)).flat_map(|w| tokens[w * seq_len..w * seq_len + seq_len + 1].iter().copied()).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_resumable() {
        let tokens: Vec<u32> = (0..1000).collect();
        let mut a = TokenSampler::new(tokens.len(), 16, 7);
        let mut b = TokenSampler::new(tokens.len(), 16, 7);
        let first: Vec<Vec<u32>> = (0..10).map(|_| a.next_batch(&tokens, 4)).collect();
        assert_eq!(first, (0..10).map(|_| b.next_batch(&tokens, 4)).collect::<Vec<_>>());
        // Resume mid-way (crossing an epoch: 62 windows, 40 per 10 batches).
        let state = a.state();
        let mut resumed = TokenSampler::resume(tokens.len(), 16, state);
        for _ in 0..20 {
            assert_eq!(a.next_batch(&tokens, 4), resumed.next_batch(&tokens, 4));
        }
        assert!(a.state().epoch >= 1);
        // Windows are inputs + shifted targets: consecutive tokens.
        let w = &first[0][..17];
        assert!(w.windows(2).all(|p| p[1] == p[0] + 1));
    }

    #[test]
    fn each_epoch_is_a_permutation_and_epochs_differ() {
        let mut s = TokenSampler::new(33 * 10 + 1, 33, 1);
        let e0: Vec<usize> = s.next_offsets(10);
        let e1: Vec<usize> = s.next_offsets(10);
        let mut sorted = e0.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).map(|i| i * 33).collect::<Vec<_>>());
        assert_ne!(e0, e1);
    }
}
