//! The Phi decoder and its language-model head: one implementation for every variant.

use std::path::Path;
use std::sync::Arc;

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::block::DecoderLayer;
use crate::config::{Family, PhiConfig};
use crate::error::{Error, Result};
use crate::kv_cache::{KvCache, LayerCaches};
use crate::nn::{Embedding, Linear, Norm};
use crate::rope::{Rope, RopeTables};
use phi_kernels::Segments;
use crate::tree::{Leaf, LeafMut, Listing, ParamRef, Role, join, listing, part};
use crate::weights::{CheckpointReader, ParamSource, RandomInit, StateDict, load_leaves_then, write_atomic};

/// The KV caches a forward pass reads and extends: none, one for the batch, or one per row.
enum ModelCaches<'a> {
    None,
    Batch(&'a mut KvCache),
    PerRow(&'a mut [KvCache]),
    /// Separate sequences' new tokens one after another in one row, with their lengths.
    Runs(&'a mut [KvCache], &'a [usize]),
}

impl ModelCaches<'_> {
    /// Layer `i`'s part of them.
    fn layer(&mut self, i: usize) -> LayerCaches<'_> {
        match self {
            ModelCaches::None => LayerCaches::None,
            ModelCaches::Batch(c) => LayerCaches::Batch(&mut c.layers[i]),
            ModelCaches::PerRow(rows) => LayerCaches::PerRow(rows.iter_mut().map(|c| &mut c.layers[i]).collect()),
            ModelCaches::Runs(caches, lens) => LayerCaches::Runs(caches.iter_mut().zip(lens.iter()).map(|(c, &len)| (&mut c.layers[i], len)).collect()),
        }
    }
}

/// Embeddings, decoder layers, final norm (`model.*` in the checkpoint).
#[derive(Module, Debug)]
pub struct PhiModel {
    pub embed_tokens: Embedding,
    pub embed_dropout: Dropout,
    pub layers: Vec<DecoderLayer>,
    /// `model.final_layernorm` (Phi-1/2) or `model.norm` (Phi-3).
    pub final_layernorm: Norm,
    /// Names the final norm in the checkpoint.
    #[module(skip)]
    pub family: Family,
}

listing!(PhiModel, |this, key, out| {
    let PhiModel { embed_tokens, layers, final_layernorm, family, .. } = this;
    part(out, key, "embed_tokens", embed_tokens);
    part(out, key, "layers", layers);
    let final_norm = match *family {
        Family::Phi => "final_layernorm",
        Family::Phi3 => "norm",
    };
    part(out, key, final_norm, final_layernorm);
});

/// A Phi causal language model: Phi-1, 1.5, 2, 3, 3.5, 4-mini — whatever its [`PhiConfig`] says.
///
/// ```no_run
/// use burn::tensor::{Device, Int, Tensor};
/// use phi_core::{GenerationConfig, PhiForCausalLM};
///
/// let device = Device::default();
/// let model = PhiForCausalLM::from_pretrained("checkpoints/phi-2", &device)?;
/// let ids = Tensor::<2, Int>::from_data([[1, 2, 3]], &device);
/// let logits = model.forward(ids); // [1, 3, vocab]
/// let tokens = model.generate(&[1, 2, 3], &GenerationConfig::greedy(12))?;
/// # Ok::<(), phi_core::Error>(())
/// ```
#[derive(Module, Debug)]
pub struct PhiForCausalLM {
    pub model: PhiModel,
    /// `None` when the embeddings are tied: the head is then `embed_tokens.weight`.
    pub lm_head: Option<Linear>,
    #[module(skip)]
    config: PhiConfig,
    #[module(skip)]
    rope: Arc<RopeTables>,
    /// The tied head (`embed_tokens.weight`) in a narrow format, after
    /// [`pack_weights`](Self::pack_weights); the table itself stays f32 for the lookup.
    #[module(skip)]
    pub(crate) packed_head: Option<Arc<crate::packed::PackedMatrix>>,
}

listing!(PhiForCausalLM, |this, key, out| {
    let PhiForCausalLM { model, lm_head, .. } = this;
    part(out, key, "model", model);
    part(out, key, "lm_head", Head(lm_head));
});

/// The language-model head: a projection, or [`Leaf::Tied`] to the embedding table.
struct Head<T>(T);

impl<'a> Listing<'a, Leaf<'a>> for Head<&'a Option<Linear>> {
    fn list(self, key: &str, out: &mut Vec<(String, Leaf<'a>)>) {
        match self.0 {
            Some(head) => head.list(key, out),
            None => out.push((key.to_string(), Leaf::Tied)),
        }
    }
}

impl<'a> Listing<'a, LeafMut<'a>> for Head<&'a mut Option<Linear>> {
    fn list(self, key: &str, out: &mut Vec<(String, LeafMut<'a>)>) {
        match self.0 {
            Some(head) => head.list(key, out),
            None => out.push((key.to_string(), LeafMut::Tied)),
        }
    }
}

impl PhiForCausalLM {
    /// Loads a HF-format folder: `config.json` and `model.safetensors` (or the shards of
    /// `model.safetensors.index.json`), as f32. `dir` may be a hub id (`org/name[@revision]`),
    /// resolved through the hub cache ([`crate::hub::resolve`]).
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::from_pretrained_with_dtype(dir, device, DType::F32)
    }

    /// Like [`from_pretrained`](Self::from_pretrained), converting every weight to `dtype`
    /// (f16/bf16/f32 checkpoints are all accepted).
    pub fn from_pretrained_with_dtype(dir: impl AsRef<Path>, device: &Device, dtype: DType) -> Result<Self> {
        let dir = crate::hub::resolve(dir.as_ref(), crate::hub::Kind::Model)?;
        let dir = dir.as_path();
        let config = PhiConfig::from_file(dir.join("config.json"))?;
        let mut reader = CheckpointReader::open(dir, device, dtype)?;
        let model = Self::load(config, &mut reader)?;
        reader.finish()?;
        Ok(model)
    }

    /// A freshly initialised model (normal(0, initializer_range) weights, unit norms).
    pub fn init(config: PhiConfig, device: &Device, seed: u64) -> Result<Self> {
        Self::load(config, &mut RandomInit::new(device, seed))
    }

    /// Builds the model from any parameter source, asking for every tensor of its listing
    /// ([`leaves_mut`](Self::leaves_mut)) by its HF key.
    pub fn load(config: PhiConfig, src: &mut impl ParamSource) -> Result<Self> {
        Self::load_then(config, src, |_, _| Ok(()))
    }

    /// [`load`](Self::load), handing each leaf module to `loaded` as soon as it is filled
    /// ([`load_leaves_then`](crate::weights::load_leaves_then)).
    pub(crate) fn load_then(config: PhiConfig, src: &mut impl ParamSource, loaded: impl FnMut(&str, LeafMut<'_>) -> Result<()>) -> Result<Self> {
        config.validate()?;
        let device = src.device().clone();
        let mut model = Self::unloaded(config, &device);
        model.rope = Arc::new(RopeTables::new(&model.config));
        let std = model.config.initializer_range;
        load_leaves_then(model.leaves_mut(), src, std, loaded)?;
        Ok(model)
    }

    /// The modules `c` describes with every parameter pending and no RoPE tables: the model's
    /// listing, each parameter's shape included ([`Param::lazy_shape`](burn::module::Param::lazy_shape)),
    /// with nothing allocated. [`load_then`](Self::load_then) fills it; on its own it answers
    /// what a model of `c` would hold (e.g. [`crate::lora::projection_shapes`]) and must not be
    /// run (a forward refuses every sequence: the empty tables hold no position).
    pub(crate) fn unloaded(config: PhiConfig, device: &Device) -> Self {
        let c = &config;
        PhiForCausalLM {
            model: PhiModel {
                embed_tokens: Embedding::new(c.vocab_size, c.hidden_size, device),
                embed_dropout: DropoutConfig::new(c.embd_pdrop).init(),
                layers: (0..c.num_hidden_layers).map(|_| DecoderLayer::new(c, device)).collect(),
                final_layernorm: Norm::new(c.norm, c.hidden_size, c.norm_eps, device),
                family: c.family,
            },
            lm_head: (!c.tie_word_embeddings).then(|| Linear::new(c.hidden_size, c.vocab_size, c.lm_head_bias, device)),
            rope: Arc::default(),
            config,
            packed_head: None,
        }
    }

    /// Every module that holds parameters, under its HF key prefix, in checkpoint order:
    /// `model.embed_tokens`, `model.layers.0.input_layernorm`, …, `lm_head` (the model's one
    /// listing, see [`crate::tree`]).
    pub fn leaves(&self) -> Vec<(String, Leaf<'_>)> {
        let mut out = Vec::new();
        self.list("", &mut out);
        out
    }

    /// [`leaves`](Self::leaves), to change in place.
    pub fn leaves_mut(&mut self) -> Vec<(String, LeafMut<'_>)> {
        let mut out = Vec::new();
        self.list("", &mut out);
        out
    }

    /// Every parameter under its HF checkpoint key (`model.layers.0.self_attn.q_proj.weight`, …),
    /// with its [`Role`], in checkpoint order.
    pub fn named_params(&self) -> Vec<(String, Role, ParamRef<'_>)> {
        self.leaves()
            .into_iter()
            .flat_map(|(prefix, leaf)| leaf.params().into_iter().map(move |(name, role, p)| (join(&prefix, name), role, p)))
            .collect()
    }

    pub fn config(&self) -> &PhiConfig {
        &self.config
    }

    /// Parameters of this instance (what is allocated, tied weights counted once).
    pub fn num_params(&self) -> usize {
        Module::num_params(self)
    }

    /// The format the weights were packed in for inference, if they were
    /// ([`pack_weights`](Self::pack_weights)).
    pub fn packed_format(&self) -> Option<crate::packed::WeightFormat> {
        // Every projection is packed or none is; the head alone is not enough to ask (f32 leaves
        // a tied head in place).
        self.leaves().into_iter().find_map(|(_, leaf)| match leaf {
            crate::tree::Leaf::Linear(l) => l.packed.as_ref().map(|p| p.format()),
            _ => None,
        })
    }

    /// Every weight under its HF checkpoint key, as f32 (a projection back in HF's `[out, in]`).
    ///
    /// # Panics
    /// On a model whose weights were packed for inference ([`pack_weights`](Self::pack_weights)).
    pub fn state_dict(&self) -> StateDict {
        if let Some(format) = self.packed_format() {
            panic!("state_dict of a model packed as {format} for inference: its f32 weights are gone");
        }
        let mut out = StateDict::default();
        for (key, role, p) in self.named_params() {
            match p {
                ParamRef::Matrix(p) if role == Role::Projection => out.put(key, p.val().transpose()),
                ParamRef::Matrix(p) => out.put(key, p.val()),
                ParamRef::Vector(p) => out.put(key, p.val()),
            }
        }
        out
    }

    /// Writes `config.json` and `model.safetensors` in the HF layout that `transformers` and
    /// [`from_pretrained`](Self::from_pretrained) load. Each file is written atomically.
    pub fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<()> {
        self.save_pretrained_sharded(dir, crate::weights::DEFAULT_MAX_SHARD_BYTES).map(drop)
    }

    /// [`save_pretrained`](Self::save_pretrained) with transformers' `max_shard_size`: weights
    /// larger than `max_shard_bytes` go to `model-0000i-of-0000n.safetensors` shards and a
    /// `model.safetensors.index.json` ([`StateDict::save_sharded`]). Returns the weight files
    /// written.
    pub fn save_pretrained_sharded(&self, dir: impl AsRef<Path>, max_shard_bytes: u64) -> Result<Vec<String>> {
        let dir = dir.as_ref();
        if let Some(format) = self.packed_format() {
            return Err(Error::arg("model", format!("its projections are packed as {format} for inference and their f32 weights are gone; save before packing")));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let config = serde_json::to_string_pretty(&self.config.to_hf_json()).expect("JSON value serializes");
        write_atomic(&dir.join("config.json"), config.as_bytes())?;
        self.state_dict().save_sharded(dir, max_shard_bytes, self.num_params() as u64)
    }

    /// Logits `[batch, seq, vocab]` for `input_ids` `[batch, seq]`.
    ///
    /// # Panics
    /// On a token id outside the vocabulary or a sequence longer than
    /// `max_position_embeddings`; [`try_forward`](Self::try_forward) returns those as errors.
    /// Ids are checked against the vocabulary here when `input_ids` lives in host memory; on an
    /// accelerator, where that check would be a device→host sync per call, ids made by
    /// [`ids_tensor`](Self::ids_tensor) (or the training objectives) were checked on the host.
    pub fn forward(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        self.try_forward(input_ids).unwrap_or_else(|e| panic!("PhiForCausalLM::forward: {e}"))
    }

    pub fn try_forward(&self, input_ids: Tensor<2, Int>) -> Result<Tensor<3>> {
        self.run(input_ids, None, None, false, None)
    }

    /// Logits `[batch, seq, vocab]` of packed rows: each row of `input_ids` holds the sequences
    /// `segments` describes, laid end to end, and each is computed as if it ran alone — its
    /// positions start at 0 and its tokens attend only to its own earlier tokens (transformers'
    /// position-id packing, flash-attn's variable-length attention).
    ///
    /// ```
    /// # use phi_core::{PhiConfig, PhiForCausalLM, burn::tensor::{Device, Int, Tensor}};
    /// # let model = PhiForCausalLM::init(PhiConfig::phi3_family(32, 2, 4, 2, 48, 64), &Device::flex(), 0).unwrap();
    /// use phi_core::Segments;
    /// // One row: a 3-token and a 2-token sequence.
    /// let ids = Tensor::<2, Int>::from_data([[5, 6, 7, 8, 9]], &model.device());
    /// let packed = model.forward_packed(ids, &Segments::new(5, &[vec![3, 2]]).unwrap()).unwrap();
    /// let alone = model.forward(Tensor::from_data([[8, 9]], &model.device()));
    /// let diff = (packed.narrow(1, 3, 2) - alone).abs().max().into_scalar::<f32>();
    /// assert!(diff < 1e-5);
    /// ```
    pub fn forward_packed(&self, input_ids: Tensor<2, Int>, segments: &Segments) -> Result<Tensor<3>> {
        self.run(input_ids, None, None, false, Some(segments))
    }

    /// Logits plus the hidden states as HF's `output_hidden_states` returns them: index 0 the
    /// embeddings, `1..L` the outputs of layers `0..L-1`, and last the final norm's output.
    pub fn forward_with_hidden_states(&self, input_ids: Tensor<2, Int>) -> Result<(Tensor<3>, Vec<Tensor<3>>)> {
        let mut hidden = Vec::with_capacity(self.config.num_hidden_layers + 1);
        let logits = self.run(input_ids, None, Some(&mut hidden), false, None)?;
        Ok((logits, hidden))
    }

    /// One hidden state, HF's `hidden_states[layer]` (0 the embeddings, `i` the output of layer
    /// `i - 1`, `num_hidden_layers` the final norm's output), `[batch, seq, hidden]`, without
    /// running the later layers or the head.
    pub fn hidden_state(&self, input_ids: Tensor<2, Int>, layer: usize) -> Result<Tensor<3>> {
        let last = self.config.num_hidden_layers;
        if layer > last {
            return Err(Error::arg("layer", format!("{layer} is past the last hidden state ({last})")));
        }
        self.check_ids(&input_ids)?;
        let [_, t] = input_ids.dims();
        if t > self.rope.max_positions() {
            return Err(Error::SequenceTooLong { len: t, max: self.rope.max_positions() });
        }
        let rope = self.rope.at(0, t, self.rope.uses_long(t), &input_ids.device());
        let m = &self.model;
        let mut x = m.embed_dropout.forward(m.embed_tokens.forward(input_ids));
        for block in m.layers.iter().take(layer) {
            x = block.forward(x, &rope, LayerCaches::None);
        }
        Ok(if layer == last { m.final_layernorm.forward(x) } else { x })
    }

    /// Runs the new tokens `input_ids` after those already in `cache`, appending theirs to it.
    /// With `last_only`, the head runs on the last position only (`[batch, 1, vocab]`).
    pub fn forward_cached(&self, input_ids: Tensor<2, Int>, cache: &mut KvCache, last_only: bool) -> Result<Tensor<3>> {
        self.run(input_ids, Some(cache), None, last_only, None)
    }

    /// One decoding step of several separate sequences at once: `tokens[i]` is sequence `i`'s
    /// next token, run after what `caches[i]` holds and appended to it. Returns the next-token
    /// logits `[n, vocab]`, row `i` what [`forward_cached`](Self::forward_cached) of that token
    /// alone would give (to rounding: the projections run as one `[n, hidden]` batch, so every
    /// weight is read once for all `n` sequences — what continuous batching is for).
    ///
    /// A cache whose keys were rotated with the other LongRoPE set than its next position needs
    /// (the sequence crossed the original context) is refused, as by `forward_cached`: clear it
    /// and prefill again.
    ///
    /// ```
    /// # use phi_core::{PhiConfig, PhiForCausalLM, burn::tensor::Device};
    /// # let model = PhiForCausalLM::init(PhiConfig::phi3_family(32, 2, 4, 2, 48, 64), &Device::flex(), 0).unwrap();
    /// let mut caches = vec![model.new_cache(), model.new_cache()];
    /// model.forward_cached(model.ids_tensor(&[1, 2, 3]).unwrap(), &mut caches[0], true).unwrap();
    /// model.forward_cached(model.ids_tensor(&[4]).unwrap(), &mut caches[1], true).unwrap();
    /// let logits = model.decode_step(&[5, 6], &mut caches).unwrap();
    /// assert_eq!(logits.dims(), [2, 64]);
    /// assert_eq!((caches[0].len(), caches[1].len()), (4, 2));
    /// ```
    pub fn decode_step(&self, tokens: &[u32], caches: &mut [KvCache]) -> Result<Tensor<2>> {
        let n = tokens.len();
        if caches.len() != n {
            return Err(Error::arg("caches", format!("{} caches for {n} tokens: one per sequence", caches.len())));
        }
        if n == 0 {
            return Err(Error::arg("tokens", "must hold at least one sequence's token"));
        }
        let group = phi_kernels::rows::MAX_ROWS;
        if n > group {
            // Beyond the few-rows kernel's rows a product goes to gemm, which rounds differently:
            // groups of at most that many keep each sequence's logits what they are alone.
            let mut parts = Vec::with_capacity(n.div_ceil(group));
            for (t, c) in tokens.chunks(group).zip(caches.chunks_mut(group)) {
                parts.push(self.decode_step(t, c)?);
            }
            return Ok(Tensor::cat(parts, 0));
        }
        let mut positions = Vec::with_capacity(n);
        for c in caches.iter() {
            positions.push((c.len, self.long_rope_after(Some(c), 1)?));
        }
        self.check_host_ids(tokens.iter().map(|&t| i64::from(t)))?;
        let device = self.device();
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [n, 1]), &device);
        let rope = self.rope.rows(&positions, &device);
        let x = self.layers(ids, &rope, ModelCaches::PerRow(&mut *caches), None);
        for (c, &(p, long)) in caches.iter_mut().zip(&positions) {
            c.len = p + 1;
            c.long_rope = long;
        }
        Ok(self.head(x).reshape([n, self.config.vocab_size]))
    }

    /// Several separate sequences' new tokens in one forward: `tokens[i]` (one token of a
    /// sequence being decoded, or a prompt, or a chunk of one) runs after what `caches[i]` holds
    /// and is appended to it. Returns each sequence's next-token logits `[n, vocab]` (its last
    /// token's): what a serving step needs when prompts join beside running sequences (vLLM's
    /// mixed prefill and decode batches). The tokens of all sequences go through the
    /// projections as the rows of one matrix, so each weight is read once for the step, and
    /// each sequence's attention reads its own cache.
    ///
    /// Row `i` is bitwise what [`forward_cached`](Self::forward_cached) of `tokens[i]` alone
    /// gives on the CPU with f32, int8 or int4 weights: sequences are run in groups of at most
    /// [`phi_kernels::rows::MAX_ROWS`] tokens (a longer one alone), whose products compute every
    /// row as it is computed alone. Each sequence is checked (its length against the context,
    /// its cache's LongRoPE set) before any cache changes.
    ///
    /// ```
    /// # use phi_core::{PhiConfig, PhiForCausalLM, burn::tensor::Device};
    /// # let model = PhiForCausalLM::init(PhiConfig::phi3_family(32, 2, 4, 2, 48, 64), &Device::flex(), 0).unwrap();
    /// let mut caches = vec![model.new_cache(), model.new_cache()];
    /// model.forward_cached(model.ids_tensor(&[1, 2, 3]).unwrap(), &mut caches[0], true).unwrap();
    /// // Sequence 0 decodes its next token while sequence 1's prompt is prefilled.
    /// let logits = model.forward_sequences(&[&[4], &[5, 6, 7, 8]], &mut caches).unwrap();
    /// assert_eq!(logits.dims(), [2, 64]);
    /// assert_eq!((caches[0].len(), caches[1].len()), (4, 4));
    /// ```
    pub fn forward_sequences(&self, tokens: &[&[u32]], caches: &mut [KvCache]) -> Result<Tensor<2>> {
        let n = tokens.len();
        if caches.len() != n {
            return Err(Error::arg("caches", format!("{} caches for {n} sequences: one each", caches.len())));
        }
        if n == 0 {
            return Err(Error::arg("tokens", "must hold at least one sequence"));
        }
        let mut runs = Vec::with_capacity(n);
        for (i, (t, c)) in tokens.iter().zip(caches.iter()).enumerate() {
            let long = self.check_sequence(t, c).map_err(|e| Error::arg("tokens", format!("sequence {i}: {e}")))?;
            runs.push((c.len, t.len(), long));
        }
        // Groups of at most MAX_ROWS tokens: beyond them the products go to gemm, which rounds
        // differently from the few-rows kernels each sequence's tokens take alone.
        let limit = phi_kernels::rows::MAX_ROWS;
        let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
        let (mut start, mut rows) = (0, 0);
        for (i, t) in tokens.iter().enumerate() {
            if i > start && rows + t.len() > limit {
                groups.push(start..i);
                (start, rows) = (i, 0);
            }
            rows += t.len();
        }
        groups.push(start..n);
        let device = self.device();
        let mut last_rows = Vec::with_capacity(groups.len());
        for g in groups {
            let ids: Vec<i64> = tokens[g.clone()].iter().flat_map(|t| t.iter().map(|&id| i64::from(id))).collect();
            let t = ids.len();
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, t]), &device);
            let positions: Vec<(usize, bool)> = runs[g.clone()].iter().flat_map(|&(offset, len, long)| (offset..offset + len).map(move |p| (p, long))).collect();
            let rope = self.rope.rows(&positions, &device);
            let lens: Vec<usize> = runs[g.clone()].iter().map(|&(_, len, _)| len).collect();
            let x = self.layers(ids, &rope, ModelCaches::Runs(&mut caches[g.clone()], &lens), None);
            // Each sequence's last token.
            let last: Vec<i64> = lens.iter().scan(0usize, |end, len| {
                *end += len;
                Some(*end as i64 - 1)
            }).collect();
            last_rows.push(x.select(1, Tensor::<1, Int>::from_data(TensorData::new(last, [lens.len()]), &device)));
            for (c, &(offset, len, long)) in caches[g.clone()].iter_mut().zip(&runs[g]) {
                c.len = offset + len;
                c.long_rope = long;
            }
        }
        // One head for the step (in groups of the few-rows kernel's rows), not one a group: at a
        // 50k vocabulary it is the largest matrix there is.
        let x = Tensor::cat(last_rows, 1);
        let logits: Vec<Tensor<2>> = (0..n).step_by(limit).map(|r0| {
            let rows = limit.min(n - r0);
            self.head(x.clone().narrow(1, r0, rows)).reshape([rows, self.config.vocab_size])
        }).collect();
        Ok(Tensor::cat(logits, 0))
    }

    /// Whether `tokens` can run after what `cache` holds (at least one, within the context,
    /// on the LongRoPE set the cache's keys were rotated with, ids in the vocabulary), and
    /// with which LongRoPE set.
    pub(crate) fn check_sequence(&self, tokens: &[u32], cache: &KvCache) -> Result<bool> {
        if tokens.is_empty() {
            return Err(Error::arg("tokens", "no new token"));
        }
        let long = self.long_rope_after(Some(cache), tokens.len())?;
        self.check_host_ids(tokens.iter().map(|&id| i64::from(id)))?;
        Ok(long)
    }

    /// The LongRoPE set `new` tokens after `cache` (none: from position 0) are rotated with,
    /// or why they cannot run: past the context, or after keys rotated with the other set.
    fn long_rope_after(&self, cache: Option<&KvCache>, new: usize) -> Result<bool> {
        let (len, was) = cache.map_or((0, false), |c| (c.len, c.long_rope));
        let (total, max) = (len + new, self.rope.max_positions());
        if total > max {
            return Err(Error::SequenceTooLong { len: total, max });
        }
        let long = self.rope.uses_long(total);
        if len > 0 && was != long {
            return Err(Error::arg("cache", format!("its keys were rotated with the {} LongRoPE factors; clear it and recompute", if was { "long" } else { "short" })));
        }
        Ok(long)
    }

    /// Bytes one sequence's KV cache holds at `tokens` tokens: keys and values of every layer,
    /// before GQA repetition, in the activations' precision — what a server budgets a request.
    pub fn kv_cache_bytes(&self, tokens: usize) -> usize {
        let c = &self.config;
        let elem = self.model.embed_tokens.weight.val().dtype().size();
        tokens.saturating_mul(c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim * elem)
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.num_hidden_layers)
    }

    /// Whether a sequence of `len` tokens is rotated with the LongRoPE long factors.
    pub fn uses_long_rope(&self, len: usize) -> bool {
        self.rope.uses_long(len)
    }

    /// Ids that are already a tensor are checked only where they live in host memory (flex,
    /// ndarray), where reading them back is a copy. On an accelerator that read is a
    /// device→host sync on every micro-batch and every decoded token, so ids are checked where
    /// host ids become a tensor instead: [`ids_tensor`](Self::ids_tensor), and the training
    /// data's check of its largest id against the vocabulary.
    fn check_ids(&self, ids: &Tensor<2, Int>) -> Result<()> {
        if !crate::device::is_host(&ids.device()) {
            return Ok(());
        }
        let data = ids.to_data().convert::<i64>();
        let values = data.as_slice::<i64>().expect("converted to i64");
        self.check_host_ids(values.iter().copied())
    }

    pub(crate) fn check_host_ids(&self, ids: impl IntoIterator<Item = i64>) -> Result<()> {
        let vocab = self.config.vocab_size;
        if let Some((position, token)) = ids.into_iter().enumerate().find(|&(_, t)| t < 0 || t as usize >= vocab) {
            return Err(Error::TokenOutOfRange { token, position, vocab_size: vocab });
        }
        Ok(())
    }

    fn run(
        &self,
        ids: Tensor<2, Int>,
        mut cache: Option<&mut KvCache>,
        hidden: Option<&mut Vec<Tensor<3>>>,
        last_only: bool,
        segments: Option<&Segments>,
    ) -> Result<Tensor<3>> {
        self.check_ids(&ids)?;
        let [b, t] = ids.dims();
        if let Some(seg) = segments {
            return self.run_packed(ids, seg, hidden, [b, t]);
        }
        let offset = cache.as_ref().map_or(0, |c| c.len);
        let total = offset + t;
        let long = self.long_rope_after(cache.as_deref(), t)?;
        let rope = self.rope.at(offset, t, long, &ids.device());
        let x = self.layers(ids, &rope, cache.as_deref_mut().map_or(ModelCaches::None, ModelCaches::Batch), hidden);
        if let Some(c) = cache {
            c.len = total;
            c.long_rope = long;
        }
        Ok(self.head(if last_only { x.narrow(1, t - 1, 1) } else { x }))
    }

    /// [`forward_packed`](Self::forward_packed)'s run: rotation per token, attention per sequence.
    fn run_packed(&self, ids: Tensor<2, Int>, seg: &Segments, hidden: Option<&mut Vec<Tensor<3>>>, [b, t]: [usize; 2]) -> Result<Tensor<3>> {
        if seg.batch() != b || seg.len() != t {
            return Err(Error::arg("segments", format!("they describe [{}, {}] packed rows, the ids are [{b}, {t}]", seg.batch(), seg.len())));
        }
        let max = self.rope.max_positions();
        if let Some(&(_, n)) = (0..b).flat_map(|r| seg.row(r)).find(|&&(_, n)| n > max) {
            return Err(Error::SequenceTooLong { len: n, max });
        }
        let rope = self.rope.packed(seg, &ids.device());
        let x = self.layers(ids, &rope, ModelCaches::None, hidden);
        Ok(self.head(x))
    }

    /// Embeddings, the decoder layers and the final norm: `[batch, seq, hidden]`.
    fn layers(&self, ids: Tensor<2, Int>, rope: &Rope, mut caches: ModelCaches<'_>, mut hidden: Option<&mut Vec<Tensor<3>>>) -> Tensor<3> {
        let m = &self.model;
        let mut x = m.embed_dropout.forward(m.embed_tokens.forward(ids));
        for (i, layer) in m.layers.iter().enumerate() {
            if let Some(h) = hidden.as_deref_mut() {
                h.push(x.clone());
            }
            x = layer.forward(x, rope, caches.layer(i));
        }
        let x = m.final_layernorm.forward(x);
        if let Some(h) = hidden {
            h.push(x.clone());
        }
        x
    }

    /// The LM head: `[batch, seq, hidden]` → `[batch, seq, vocab]` logits.
    fn head(&self, x: Tensor<3>) -> Tensor<3> {
        let m = &self.model;
        match &self.lm_head {
            Some(head) => head.forward(x),
            None if self.packed_head.is_some() => {
                crate::packed::packed_linear(self.packed_head.as_ref().expect("checked"), x, None)
            }
            None => {
                // Tied: `x · Eᵀ`, the transposed view read in place (by gemm's strides, or by
                // the few-rows kernel's column-major layout).
                phi_kernels::linear(x, m.embed_tokens.weight.val().transpose(), None)
            }
        }
    }

    /// Every projection with its checkpoint key prefix (`model.layers.0.self_attn.q_proj`, …,
    /// `lm_head`), from the model's listing: the hook for adapters such as LoRA. The tied head is
    /// not a `Linear` and is not listed.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        self.leaves_mut()
            .into_iter()
            .filter_map(|(key, leaf)| match leaf {
                LeafMut::Linear(l) => Some((key, l)),
                _ => None,
            })
            .collect()
    }

    /// Token ids as a `[1, n]` tensor on the model's device, checked against the vocabulary
    /// here, on the host: the forward passes do not read ids back from an accelerator.
    pub fn ids_tensor(&self, ids: &[u32]) -> Result<Tensor<2, Int>> {
        self.check_host_ids(ids.iter().map(|&t| i64::from(t)))?;
        let data: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
        Ok(Tensor::from_data(TensorData::new(data, [1, ids.len()]), &self.device()))
    }

    pub fn device(&self) -> Device {
        self.model.embed_tokens.weight.device()
    }
}
