//! Key/value cache for incremental decoding.

use burn::tensor::Tensor;

/// One layer's keys and values: `[batch, kv_heads, capacity, head_dim]` buffers whose first
/// `len` positions are filled, before GQA repetition. Appending writes into the buffers in place
/// (between steps nothing else holds them) and grows them — to the capacity asked for with
/// [`KvCache::reserve`], else by doubling — only when full, so a decoded token costs its own keys
/// and values, not a copy of the whole cache as a concatenation per step did.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    kv: Option<(Tensor<4>, Tensor<4>)>,
    len: usize,
    /// Positions to allocate at the first append (0: just what it holds).
    reserve: usize,
}

impl LayerCache {
    /// Appends the new keys/values `[batch, kv_heads, t, head_dim]` and returns the full ones
    /// (views of the first `len + t` positions).
    pub fn append(&mut self, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let [b, h, t, d] = k.dims();
        let len = self.len;
        let (bk, bv) = match self.kv.take() {
            Some((bk, bv)) if bk.dims()[2] >= len + t => (bk, bv),
            old => {
                let was = old.as_ref().map_or(0, |(bk, _)| bk.dims()[2]);
                let cap = (len + t).max(2 * was).max(self.reserve);
                let fresh = |like: &Tensor<4>| Tensor::<4>::zeros([b, h, cap, like.dims()[3]], (&like.device(), like.dtype()));
                let (mut nk, mut nv) = (fresh(&k), fresh(&v));
                if let Some((ok, ov)) = old
                    && len > 0
                {
                    let dv = ov.dims()[3];
                    nk = nk.slice_assign([0..b, 0..h, 0..len, 0..d], ok.narrow(2, 0, len));
                    nv = nv.slice_assign([0..b, 0..h, 0..len, 0..dv], ov.narrow(2, 0, len));
                }
                (nk, nv)
            }
        };
        let dv = v.dims()[3];
        let bk = bk.slice_assign([0..b, 0..h, len..len + t, 0..d], k);
        let bv = bv.slice_assign([0..b, 0..h, len..len + t, 0..dv], v);
        self.len = len + t;
        self.kv = Some((bk.clone(), bv.clone()));
        (bk.narrow(2, 0, self.len), bv.narrow(2, 0, self.len))
    }
}

/// New tokens a sequence's cache is allocated for up front, beyond its prompt: a budget larger
/// than this (a chat reply may take the rest of a 128k context) grows by doubling as it is used,
/// rather than zero-filling gigabytes it may never use before the first token.
pub const RESERVE_AHEAD: usize = 256;

/// What one layer's attention reads and extends: no cache, one cache for the whole batch, one
/// per row — separate sequences, each at its own length, decoded together
/// ([`PhiForCausalLM::decode_step`](crate::PhiForCausalLM::decode_step)) — or one per run of
/// tokens of a single row: separate sequences' new tokens one after another, each run with its
/// cache and its length ([`PhiForCausalLM::forward_sequences`](crate::PhiForCausalLM::forward_sequences)).
pub enum LayerCaches<'a> {
    None,
    Batch(&'a mut LayerCache),
    PerRow(Vec<&'a mut LayerCache>),
    Runs(Vec<(&'a mut LayerCache, usize)>),
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

    /// Allocates room for `tokens` positions at the first append (a sequence's prompt plus its
    /// budget: then it never grows, and holds no more than that).
    pub fn reserve(&mut self, tokens: usize) {
        self.layers.iter_mut().for_each(|l| l.reserve = tokens);
    }

    /// Empties the cache, keeping its reservation.
    pub fn clear(&mut self) {
        let reserve = self.layers.first().map_or(0, |l| l.reserve);
        *self = KvCache::new(self.layers.len());
        self.reserve(reserve);
    }
}
