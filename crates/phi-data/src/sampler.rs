//! Training batches: `[batch, seq_len + 1]` token windows from one dataset or a weighted
//! mixture, deterministic from a seed, reshuffled every epoch, resumable from a small
//! serialisable state.
//!
//! ```
//! use phi_data::sampler::{Mixture, TokenDataset};
//! let code = TokenDataset::from_tokens((0..1000).collect());
//! let prose = TokenDataset::from_tokens((0..500).collect());
//! let mix = Mixture::new(vec![(code, 0.8), (prose, 0.2)]).unwrap();
//! let mut sampler = mix.sampler(16, 42);
//! let batch = sampler.next_batch(4); // 4 × 17 tokens
//! assert_eq!(batch.len(), 4 * 17);
//! let state = sampler.state();       // store it in a checkpoint …
//! let mut resumed = mix.resume(16, &state).unwrap();
//! assert_eq!(resumed.next_batch(4), sampler.next_batch(4));
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::shard::Shard;

/// SplitMix64: the one small PRNG behind shuffles and mixture draws (no dependency on a `rand`
/// version, so a state written today resumes identically tomorrow).
/// SplitMix64's output function: the seeded, counter-keyed randomness of the samplers.
pub fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

enum Part {
    Memory(Vec<u32>),
    Shard(Shard),
}

impl Part {
    fn len(&self) -> usize {
        match self {
            Part::Memory(t) => t.len(),
            Part::Shard(s) => s.len(),
        }
    }
}

/// A token stream held in memory or spread over memory-mapped shards. Windows never straddle
/// two shards (each shard ends with a document boundary anyway).
pub struct TokenDataset {
    parts: Vec<Part>,
    vocab_bound: usize,
}

impl TokenDataset {
    /// An in-memory stream.
    pub fn from_tokens(tokens: Vec<u32>) -> Self {
        let vocab_bound = tokens.iter().max().map_or(0, |&m| m as usize + 1);
        TokenDataset { parts: vec![Part::Memory(tokens)], vocab_bound }
    }

    /// Shards, each opened and fully verified ([`Shard::open`]).
    pub fn from_shards<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) -> Result<Self, DataError> {
        Ok(Self::from_opened(paths.into_iter().map(Shard::open).collect::<Result<Vec<_>, _>>()?))
    }

    /// Shards already opened (and verified as the caller wished).
    pub fn from_opened(shards: Vec<Shard>) -> Self {
        let vocab_bound = shards.iter().map(Shard::vocab_size).max().unwrap_or(0);
        TokenDataset { parts: shards.into_iter().map(Part::Shard).collect(), vocab_bound }
    }

    /// Several datasets one after another (windows stay within each part).
    pub fn concat(datasets: impl IntoIterator<Item = TokenDataset>) -> Self {
        let (mut parts, mut vocab_bound) = (Vec::new(), 0);
        for d in datasets {
            vocab_bound = vocab_bound.max(d.vocab_bound);
            parts.extend(d.parts);
        }
        TokenDataset { parts, vocab_bound }
    }

    /// Every token id is below this (the shards' vocabulary size, or max id + 1 in memory).
    pub fn vocab_bound(&self) -> usize {
        self.vocab_bound
    }

    pub fn num_tokens(&self) -> usize {
        self.parts.iter().map(Part::len).sum()
    }

    fn windows_per_part(&self, seq_len: usize) -> impl Iterator<Item = usize> + '_ {
        self.parts.iter().map(move |p| p.len().saturating_sub(1) / seq_len)
    }

    /// XXH3-64 of the token stream, part by part (a shard contributes its verified payload
    /// checksum and length, memory is hashed): equal streams, equal fingerprints. A run records
    /// it so that resuming on other data is an error.
    pub fn fingerprint(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3Default::new();
        for p in &self.parts {
            match p {
                Part::Memory(t) => {
                    h.update(b"memory");
                    h.update(&(t.len() as u64).to_le_bytes());
                    for chunk in t.chunks(1 << 14) {
                        h.update(&chunk.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
                    }
                }
                Part::Shard(s) => {
                    h.update(b"shard");
                    h.update(&(s.len() as u64).to_le_bytes());
                    h.update(&s.checksum().to_le_bytes());
                }
            }
        }
        h.digest()
    }

    /// Whole non-overlapping windows of `seq_len + 1` tokens.
    pub fn num_windows(&self, seq_len: usize) -> usize {
        self.windows_per_part(seq_len).sum()
    }

    /// Appends window `index` (`seq_len + 1` tokens: inputs and shifted targets) to `out`.
    pub fn read_window(&self, index: usize, seq_len: usize, out: &mut Vec<u32>) {
        let mut i = index;
        for (part, n) in self.parts.iter().zip(self.windows_per_part(seq_len)) {
            if i < n {
                let start = i * seq_len;
                match part {
                    Part::Memory(t) => out.extend_from_slice(&t[start..start + seq_len + 1]),
                    Part::Shard(s) => s.read_into(start, seq_len + 1, out),
                }
                return;
            }
            i -= n;
        }
        panic!("window {index} out of {}", self.num_windows(seq_len));
    }

    /// Every window in order, `batch` at a time (validation: the same data each time). The last
    /// batch may be smaller.
    pub fn sequential_batches(&self, seq_len: usize, batch: usize) -> impl Iterator<Item = Vec<u32>> + '_ {
        let windows = self.num_windows(seq_len);
        (0..windows).step_by(batch.max(1)).map(move |w0| {
            let mut rows = Vec::with_capacity(batch * (seq_len + 1));
            for w in w0..(w0 + batch).min(windows) {
                self.read_window(w, seq_len, &mut rows);
            }
            rows
        })
    }
}

/// Where a [`TokenSampler`] is: enough to continue with exactly the windows it would have given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    pub seed: u64,
    pub epoch: u64,
    /// Windows of the current epoch already handed out.
    pub cursor: usize,
}

/// A seeded permutation of window indices, new every epoch.
#[derive(Debug, Clone)]
pub struct TokenSampler {
    order: Vec<usize>,
    state: SamplerState,
}

impl TokenSampler {
    /// Panics if `num_windows` is zero.
    pub fn new(num_windows: usize, seed: u64) -> Self {
        Self::resume(num_windows, SamplerState { seed, epoch: 0, cursor: 0 })
    }

    pub fn resume(num_windows: usize, state: SamplerState) -> Self {
        assert!(num_windows > 0, "a sampler needs at least one window");
        let mut s = TokenSampler { order: (0..num_windows).collect(), state };
        s.shuffle();
        s
    }

    pub fn state(&self) -> SamplerState {
        self.state
    }

    pub fn num_windows(&self) -> usize {
        self.order.len()
    }

    fn shuffle(&mut self) {
        // Fisher–Yates from a SplitMix64 stream keyed by (seed, epoch).
        let mut x = self.state.seed ^ self.state.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.order.sort_unstable();
        for i in (1..self.order.len()).rev() {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let j = (splitmix(x) % (i as u64 + 1)) as usize;
            self.order.swap(i, j);
        }
    }

    /// The next window index (a new epoch begins when one runs out).
    pub fn next_window(&mut self) -> usize {
        if self.state.cursor == self.order.len() {
            self.state.epoch += 1;
            self.state.cursor = 0;
            self.shuffle();
        }
        let w = self.order[self.state.cursor];
        self.state.cursor += 1;
        w
    }
}

/// Datasets with sampling weights (phi-1.5 style: 80% synthetic textbooks, 20% web). A single
/// dataset is a mixture of one.
pub struct Mixture {
    parts: Vec<(TokenDataset, f64)>,
}

/// Where a [`MixtureSampler`] is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MixtureState {
    pub seed: u64,
    /// Windows drawn so far (the index of the next draw's random number).
    pub draws: u64,
    /// One per dataset, in order.
    pub samplers: Vec<SamplerState>,
}

impl Mixture {
    /// Weights need not sum to one; each must be positive and finite.
    pub fn new(parts: Vec<(TokenDataset, f64)>) -> Result<Self, DataError> {
        if parts.is_empty() {
            return Err(DataError::Invalid("a mixture needs at least one dataset".into()));
        }
        for (i, (_, w)) in parts.iter().enumerate() {
            if !(w.is_finite() && *w > 0.0) {
                return Err(DataError::Invalid(format!("mixture weight {w} of dataset {i} must be positive and finite")));
            }
        }
        Ok(Mixture { parts })
    }

    pub fn single(dataset: TokenDataset) -> Self {
        Mixture { parts: vec![(dataset, 1.0)] }
    }

    pub fn datasets(&self) -> impl Iterator<Item = &TokenDataset> {
        self.parts.iter().map(|(d, _)| d)
    }

    /// The datasets' fingerprints with their weights, as text (`a1b2…:0.8+c3d4…:0.2`).
    pub fn fingerprint(&self) -> String {
        self.parts.iter().map(|(d, w)| format!("{:016x}:{w}", d.fingerprint())).collect::<Vec<_>>().join("+")
    }

    /// Every id of every dataset is below this.
    pub fn vocab_bound(&self) -> usize {
        self.datasets().map(TokenDataset::vocab_bound).max().unwrap_or(0)
    }

    /// Checks that every dataset holds at least one window of `seq_len + 1` tokens.
    pub fn check(&self, seq_len: usize) -> Result<(), DataError> {
        for (i, d) in self.datasets().enumerate() {
            if d.num_windows(seq_len) == 0 {
                return Err(DataError::Invalid(format!(
                    "dataset {i} of the mixture has {} tokens, fewer than one window of seq_len + 1 = {}",
                    d.num_tokens(),
                    seq_len + 1
                )));
            }
        }
        Ok(())
    }

    /// A fresh sampler; each dataset gets its own seed derived from `seed`. Panics if a dataset
    /// has no window ([`Mixture::check`] says which).
    pub fn sampler(&self, seq_len: usize, seed: u64) -> MixtureSampler<'_> {
        let samplers = (0..self.parts.len())
            .map(|i| SamplerState { seed: if i == 0 { seed } else { splitmix(seed ^ (i as u64) << 32) }, epoch: 0, cursor: 0 })
            .collect();
        self.resume(seq_len, &MixtureState { seed, draws: 0, samplers }).expect("a fresh state matches its mixture")
    }

    /// A sampler continuing from `state`.
    pub fn resume(&self, seq_len: usize, state: &MixtureState) -> Result<MixtureSampler<'_>, DataError> {
        self.check(seq_len)?;
        if state.samplers.len() != self.parts.len() {
            return Err(DataError::Invalid(format!(
                "sampler state is for a mixture of {} datasets, this one has {}",
                state.samplers.len(),
                self.parts.len()
            )));
        }
        let samplers = self.parts.iter().zip(&state.samplers).map(|((d, _), s)| TokenSampler::resume(d.num_windows(seq_len), *s)).collect();
        let total: f64 = self.parts.iter().map(|(_, w)| w).sum();
        let mut acc = 0.0;
        let cumulative = self.parts.iter().map(|(_, w)| { acc += w / total; acc }).collect();
        Ok(MixtureSampler { mixture: self, seq_len, samplers, cumulative, seed: state.seed, draws: state.draws })
    }
}

/// Draws windows from a [`Mixture`]: each draw picks a dataset by weight, then that dataset's
/// next shuffled window.
pub struct MixtureSampler<'a> {
    mixture: &'a Mixture,
    seq_len: usize,
    samplers: Vec<TokenSampler>,
    cumulative: Vec<f64>,
    seed: u64,
    draws: u64,
}

impl MixtureSampler<'_> {
    pub fn state(&self) -> MixtureState {
        MixtureState { seed: self.seed, draws: self.draws, samplers: self.samplers.iter().map(TokenSampler::state).collect() }
    }

    /// Which dataset the next draw comes from.
    fn pick(&self) -> usize {
        let u = (splitmix(self.seed.rotate_left(17) ^ self.draws.wrapping_mul(0xD1B5_4A32_D192_ED03)) >> 11) as f64 / (1u64 << 53) as f64;
        self.cumulative.iter().position(|&c| u < c).unwrap_or(self.cumulative.len() - 1)
    }

    /// Appends the next window to `out`; returns the dataset it came from.
    pub fn next_window(&mut self, out: &mut Vec<u32>) -> usize {
        let d = self.pick();
        self.draws += 1;
        let w = self.samplers[d].next_window();
        self.mixture.parts[d].0.read_window(w, self.seq_len, out);
        d
    }

    /// The next batch, row-major `[batch, seq_len + 1]`.
    pub fn next_batch(&mut self, batch: usize) -> Vec<u32> {
        let mut rows = Vec::with_capacity(batch * (self.seq_len + 1));
        for _ in 0..batch {
            self.next_window(&mut rows);
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_resumable_across_epochs() {
        let data = Mixture::single(TokenDataset::from_tokens((0..1000).collect()));
        let mut a = data.sampler(16, 7);
        let mut b = data.sampler(16, 7);
        let first: Vec<Vec<u32>> = (0..10).map(|_| a.next_batch(4)).collect();
        assert_eq!(first, (0..10).map(|_| b.next_batch(4)).collect::<Vec<_>>());
        // Resume mid-way (crossing an epoch: 62 windows, 40 per 10 batches).
        let state: MixtureState = serde_json::from_str(&serde_json::to_string(&a.state()).unwrap()).unwrap();
        let mut resumed = data.resume(16, &state).unwrap();
        for _ in 0..20 {
            assert_eq!(a.next_batch(4), resumed.next_batch(4));
        }
        assert!(a.state().samplers[0].epoch >= 1);
        // Windows are inputs + shifted targets: consecutive tokens.
        assert!(first[0][..17].windows(2).all(|p| p[1] == p[0] + 1));
        let other: Vec<Vec<u32>> = { let mut c = data.sampler(16, 8); (0..10).map(|_| c.next_batch(4)).collect() };
        assert_ne!(first, other, "the seed matters");
    }

    #[test]
    fn each_epoch_is_a_permutation_and_epochs_differ() {
        let mut s = TokenSampler::new(10, 1);
        let e0: Vec<usize> = (0..10).map(|_| s.next_window()).collect();
        let e1: Vec<usize> = (0..10).map(|_| s.next_window()).collect();
        let mut sorted = e0.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_ne!(e0, e1);
    }

    #[test]
    fn mixture_proportions_follow_the_weights() {
        // Tokens tell the datasets apart: ids < 1000 come from the first.
        let mix = Mixture::new(vec![
            (TokenDataset::from_tokens((0..900).collect()), 0.8),
            (TokenDataset::from_tokens((1000..1300).collect()), 0.2),
        ])
        .unwrap();
        let mut s = mix.sampler(8, 3);
        let n = 20_000;
        let from_first = (0..n).filter(|_| s.next_batch(1)[0] < 1000).count();
        let p = from_first as f64 / n as f64;
        assert!((p - 0.8).abs() < 0.015, "first dataset drawn {p:.3} of the time, want 0.8");
        let three = Mixture::new(vec![
            (TokenDataset::from_tokens(vec![0; 100]), 1.0),
            (TokenDataset::from_tokens(vec![1; 100]), 2.0),
            (TokenDataset::from_tokens(vec![2; 100]), 1.0),
        ])
        .unwrap();
        let mut s = three.sampler(4, 9);
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[s.next_window(&mut Vec::new())] += 1;
        }
        for (c, want) in counts.iter().zip([0.25, 0.5, 0.25]) {
            assert!((*c as f64 / n as f64 - want).abs() < 0.015, "{counts:?}");
        }
    }

    #[test]
    fn bad_mixtures_and_states_are_refused() {
        let err = |r: Result<Mixture, DataError>| r.err().unwrap().to_string();
        assert!(err(Mixture::new(vec![])).contains("at least one"));
        assert!(err(Mixture::new(vec![(TokenDataset::from_tokens(vec![1; 10]), 0.0)])).contains("weight 0"));
        let mix = Mixture::single(TokenDataset::from_tokens(vec![1; 10]));
        assert!(mix.check(16).unwrap_err().to_string().contains("fewer than one window"));
        let mix = Mixture::single(TokenDataset::from_tokens(vec![1; 100]));
        let state = MixtureState { seed: 0, draws: 0, samplers: vec![] };
        assert!(mix.resume(8, &state).err().unwrap().to_string().contains("0 datasets"));
    }

    #[test]
    fn sequential_batches_cover_every_window_once() {
        let d = TokenDataset::from_tokens((0..101).collect());
        let batches: Vec<Vec<u32>> = d.sequential_batches(10, 3).collect();
        assert_eq!(batches.iter().map(|b| b.len() / 11).collect::<Vec<_>>(), vec![3, 3, 3, 1]);
        assert_eq!(batches[3], (90..101).collect::<Vec<u32>>());
    }
}
