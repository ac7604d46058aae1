//! Key/value cache for incremental decoding.

use burn::tensor::Tensor;

/// One layer's keys and values, `[batch, kv_heads, seq, head_dim]`, before GQA repetition.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    kv: Option<(Tensor<4>, Tensor<4>)>,
}

impl LayerCache {
    /// Appends the new keys/values and returns the full ones.
    pub fn append(&mut self, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let (k, v) = match self.kv.take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        self.kv = Some((k.clone(), v.clone()));
        (k, v)
    }
}

/// What one layer's attention reads and extends: no cache, one cache for the whole batch, or
/// one per row — separate sequences, each at its own length, decoded together
/// ([`PhiForCausalLM::decode_step`](crate::PhiForCausalLM::decode_step)).
pub enum LayerCaches<'a> {
    None,
    Batch(&'a mut LayerCache),
    PerRow(Vec<&'a mut LayerCache>),
}

impl<'a> From<Option<&'a mut LayerCache>> for LayerCaches<'a> {
    fn from(cache: Option<&'a mut LayerCache>) -> Self {
        cache.map_or(LayerCaches::None, LayerCaches::Batch)
    }
}

/// The cache of a whole model: one [`LayerCache`] per layer, the number of tokens it holds, and
/// which LongRoPE frequencies rotated its keys (switching means recomputing, as HF does).
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<LayerCache>,
    pub(crate) len: usize,
    pub(crate) long_rope: bool,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        KvCache { layers: vec![LayerCache::default(); num_layers], len: 0, long_rope: false }
    }

    /// Tokens already in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        let n = self.layers.len();
        *self = KvCache::new(n);
    }
}
