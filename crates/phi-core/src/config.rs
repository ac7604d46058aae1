//! `PhiConfig`: every Phi variant as data. The model reads only this struct; the HF
//! `config.json` (hub format and the transformers-5 `rope_parameters` format) maps onto it.

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::error::{Error, Result};

/// The HF architecture a config is written as (`model_type` and `architectures` in
/// `config.json`). It fixes what `transformers` builds from the file — block, norm, MLP and
/// projection layout — so [`PhiConfig::validate`] holds the other fields to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `model_type` "phi", `PhiForCausalLM` (Phi-1, 1.5, 2).
    Phi,
    /// `model_type` "phi3", `Phi3ForCausalLM` (Phi-3, 3.5, 4-mini).
    Phi3,
}

impl Family {
    /// Parses HF's `model_type`, with the aliases some hub configs carry (`phi-msft` from the
    /// remote-code era, `phi4` for Phi-4-mini's `Phi3ForCausalLM`).
    pub fn from_model_type(name: &str) -> Option<Self> {
        match name {
            "phi" | "phi-msft" => Some(Family::Phi),
            "phi3" | "phi4" => Some(Family::Phi3),
            _ => None,
        }
    }

    /// The `model_type` written to `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Phi => "phi",
            Family::Phi3 => "phi3",
        }
    }

    /// The `transformers` class that loads this family (`architectures` in `config.json`).
    pub fn architecture(self) -> &'static str {
        match self {
            Family::Phi => "PhiForCausalLM",
            Family::Phi3 => "Phi3ForCausalLM",
        }
    }
}

fn not_phi(model_type: &str) -> String {
    format!("`{model_type}` is not a Phi model (expected \"phi\" or \"phi3\")")
}

/// The layout fields of [`PhiConfig`] that a [`Family`] fixes: what its HF class builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub block: BlockKind,
    pub norm: NormKind,
    pub mlp: MlpKind,
    pub fused_qkv: bool,
    pub linear_bias: bool,
    pub lm_head_bias: bool,
}

impl Family {
    /// What `transformers` builds for this family (`PhiForCausalLM`: parallel block, LayerNorm,
    /// plain MLP, separate biased projections; `Phi3ForCausalLM`: sequential block, RMSNorm,
    /// gated MLP, fused projections without biases).
    pub fn layout(self) -> Layout {
        match self {
            Family::Phi => Layout {
                block: BlockKind::Parallel,
                norm: NormKind::LayerNorm,
                mlp: MlpKind::Plain,
                fused_qkv: false,
                linear_bias: true,
                lm_head_bias: true,
            },
            Family::Phi3 => Layout {
                block: BlockKind::Sequential,
                norm: NormKind::RmsNorm,
                mlp: MlpKind::Gated,
                fused_qkv: true,
                linear_bias: false,
                lm_head_bias: false,
            },
        }
    }

    /// `hidden_act` when `config.json` has none.
    pub fn default_activation(self) -> Activation {
        match self {
            Family::Phi => Activation::GeluTanh,
            Family::Phi3 => Activation::Silu,
        }
    }

    /// `partial_rotary_factor` when `config.json` has none.
    pub fn default_partial_rotary_factor(self) -> f64 {
        match self {
            Family::Phi => 0.5,
            Family::Phi3 => 1.0,
        }
    }

    /// Whether the HF class has the `qk_layernorm` option (only `PhiForCausalLM`).
    pub fn has_qk_layernorm(self) -> bool {
        self == Family::Phi
    }

    /// The `config.json` key of the norms' epsilon.
    pub fn norm_eps_key(self) -> &'static str {
        match self {
            Family::Phi => "layer_norm_eps",
            Family::Phi3 => "rms_norm_eps",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.model_type())
    }
}

impl serde::Serialize for Family {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.model_type())
    }
}

impl<'de> serde::Deserialize<'de> for Family {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Family::from_model_type(&name).ok_or_else(|| serde::de::Error::custom(format!("model_type {}", not_phi(&name))))
    }
}

/// How a decoder layer wires attention and MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Phi-1/1.5/2: `x + attn(ln(x)) + mlp(ln(x))`, one shared LayerNorm.
    Parallel,
    /// Phi-3: `x = x + attn(norm1(x)); x = x + mlp(norm2(x))`.
    Sequential,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// LayerNorm with weight and bias.
    LayerNorm,
    /// RMSNorm with weight only.
    RmsNorm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpKind {
    /// `fc2(act(fc1 x))`, biased (Phi-1/2).
    Plain,
    /// `down_proj(act(gate) * up)` from the fused `gate_up_proj`, gate first (Phi-3).
    Gated,
}

/// The activation named by `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// exact erf GELU (`gelu`).
    Gelu,
    /// `silu` / `swish`.
    Silu,
    Relu,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            "silu" | "swish" => Activation::Silu,
            "relu" => Activation::Relu,
            _ => return None,
        })
    }

    fn hf_name(self) -> &'static str {
        match self {
            Activation::GeluTanh => "gelu_new",
            Activation::Gelu => "gelu",
            Activation::Silu => "silu",
            Activation::Relu => "relu",
        }
    }
}

/// LongRoPE (`rope_scaling.type` = `longrope`, legacy `su`): per-frequency rescale factors,
/// `short_factor` up to `original_max_position_embeddings`, `long_factor` beyond.
#[derive(Debug, Clone, PartialEq)]
pub struct LongRope {
    pub short_factor: Vec<f64>,
    pub long_factor: Vec<f64>,
    /// The pre-training context; sequences longer than this use `long_factor`.
    pub original_max_position_embeddings: usize,
    /// Multiplies cos and sin. Default `sqrt(1 + ln(max/orig) / ln(orig))`, 1 when max ≤ orig.
    pub attention_factor: f64,
}

/// Largest accepted `vocab_size` (the largest Phi vocabulary is 200,064).
pub const MAX_VOCAB: usize = 1 << 24;
/// Largest accepted `hidden_size`, head count or `head_dim` (Phi-3-medium: 5,120).
pub const MAX_WIDTH: usize = 1 << 16;
/// Largest accepted `num_hidden_layers` (Phi-3-medium: 40).
pub const MAX_LAYERS: usize = 1 << 12;
/// Largest accepted `max_position_embeddings` (Phi-3/4: 131,072). The RoPE tables hold
/// `max_position_embeddings × head_dim` values up front.
pub const MAX_POSITIONS: usize = 1 << 20;
/// Largest accepted parameter count (Phi-3-medium: 14B).
pub const MAX_PARAMETERS: u64 = 1 << 40;

/// The whole architecture of one Phi model. Presets are values of this struct
/// ([`PhiConfig::phi_1`], [`PhiConfig::phi_3_mini`], …); `config.json` is parsed into it.
#[derive(Debug, Clone, PartialEq)]
pub struct PhiConfig {
    /// Which HF architecture this is: `model_type` "phi" or "phi3" in `config.json`.
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub hidden_act: Activation,
    pub max_position_embeddings: usize,
    pub norm_eps: f64,
    pub tie_word_embeddings: bool,
    pub rope_theta: f64,
    pub partial_rotary_factor: f64,
    pub longrope: Option<LongRope>,
    pub qk_layernorm: bool,
    pub block: BlockKind,
    pub norm: NormKind,
    pub mlp: MlpKind,
    /// Separate biased `q_proj/k_proj/v_proj/dense` (false) or fused `qkv_proj` + `o_proj` (true).
    pub fused_qkv: bool,
    /// Bias on the attention and MLP projections (Phi-1/2 yes, Phi-3 no).
    pub linear_bias: bool,
    pub lm_head_bias: bool,
    pub resid_pdrop: f64,
    pub embd_pdrop: f64,
    pub attention_dropout: f64,
    pub initializer_range: f64,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

impl PhiConfig {
    /// Rotary dimensions per head: `int(head_dim * partial_rotary_factor)`, as HF computes it.
    pub fn rotary_ndims(&self) -> usize {
        (self.head_dim as f64 * self.partial_rotary_factor) as usize
    }

    /// Parameter count computed from the shapes alone (nothing is allocated).
    pub fn num_parameters(&self) -> u64 {
        let (h, v, i) = (
            self.hidden_size as u64,
            self.vocab_size as u64,
            self.intermediate_size as u64,
        );
        let (q, kv) = (
            (self.num_attention_heads * self.head_dim) as u64,
            (self.num_key_value_heads * self.head_dim) as u64,
        );
        let b = |n: u64| if self.linear_bias { n } else { 0 };
        let norm = |n: u64| match self.norm {
            NormKind::LayerNorm => 2 * n,
            NormKind::RmsNorm => n,
        };
        let attn = h * (q + 2 * kv) + b(q + 2 * kv) + q * h + b(h);
        let qk_ln = if self.qk_layernorm {
            2 * 2 * self.head_dim as u64
        } else {
            0
        };
        let mlp = match self.mlp {
            MlpKind::Plain => h * i + b(i) + i * h + b(h),
            MlpKind::Gated => h * 2 * i + b(2 * i) + i * h + b(h),
        };
        let norms = match self.block {
            BlockKind::Parallel => norm(h),
            BlockKind::Sequential => 2 * norm(h),
        };
        let layer = attn + qk_ln + mlp + norms;
        let head = if self.tie_word_embeddings {
            0
        } else {
            v * h + if self.lm_head_bias { v } else { 0 }
        };
        v * h + self.num_hidden_layers as u64 * layer + norm(h) + head
    }

    /// Reads and validates a HF `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            // A folder that exists but is no model (a run folder, a parent of checkpoints): say
            // so, and where the models are, rather than a bare "No such file".
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.file_name().is_some_and(|n| n == "config.json") => {
                return Err(match path.parent().filter(|d| d.is_dir()) {
                    Some(dir) => Error::NotAModelFolder { dir: dir.to_path_buf(), message: not_a_model_folder(dir) },
                    None => Error::io(path, e),
                });
            }
            Err(e) => return Err(Error::io(path, e)),
        };
        let value: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_hf_json(&value).map_err(|e| match e {
            Error::Config { field, message } => Error::Config {
                field: format!("{field}` in `{}", path.display()),
                message,
            },
            e => e,
        })
    }

    /// Parses a HF config (`model_type` `phi` or `phi3`), hub or transformers-5 format.
    pub fn from_hf_json(value: &Value) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| Error::config("<root>", "expected a JSON object"))?;
        let f = Fields(obj);
        let model_type = f.string("model_type")?.unwrap_or_default();
        let family = Family::from_model_type(&model_type).ok_or_else(|| {
            Error::config("model_type", not_phi(&model_type))
        })?;
        let hidden_size = f.req_usize("hidden_size")?;
        let num_attention_heads = f.req_usize("num_attention_heads")?;
        // The head counts divide other fields below (head_dim, the GQA groups): a zero must be
        // refused here, naming its own key, before any division by it.
        if num_attention_heads == 0 {
            return Err(Error::config("num_attention_heads", "must be positive"));
        }
        let num_key_value_heads = f.usize("num_key_value_heads")?.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 {
            return Err(Error::config("num_key_value_heads", "must be positive"));
        }
        if !num_attention_heads.is_multiple_of(num_key_value_heads) {
            return Err(Error::config(
                "num_key_value_heads",
                format!("{num_key_value_heads} must divide num_attention_heads ({num_attention_heads})"),
            ));
        }
        let head_dim = match f.usize("head_dim")? {
            Some(d) => d,
            None => {
                if !hidden_size.is_multiple_of(num_attention_heads) {
                    return Err(Error::config(
                        "num_attention_heads",
                        format!("{num_attention_heads} does not divide hidden_size ({hidden_size})"),
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        let max_position_embeddings = f.usize("max_position_embeddings")?.unwrap_or(2048);
        let act_name = f
            .string("hidden_act")?
            .unwrap_or_else(|| family.default_activation().hf_name().to_string());
        let hidden_act = Activation::parse(&act_name).ok_or_else(|| {
            Error::config("hidden_act", format!("unsupported activation `{act_name}`"))
        })?;

        // RoPE: hub format has top-level rope_theta / partial_rotary_factor / rope_scaling;
        // transformers 5 moves them into rope_parameters.
        let rope_params = match obj.get("rope_parameters") {
            Some(Value::Object(m)) => Some(Fields(m)),
            None | Some(Value::Null) => None,
            Some(_) => return Err(Error::config("rope_parameters", "expected an object")),
        };
        let rope_theta = match rope_params.as_ref().map(|p| p.f64("rope_theta")).transpose()? {
            Some(Some(t)) => t,
            _ => f.f64("rope_theta")?.unwrap_or(10000.0),
        };
        let partial_rotary_factor = match rope_params
            .as_ref()
            .map(|p| p.f64("partial_rotary_factor"))
            .transpose()?
        {
            Some(Some(p)) => p,
            _ => f
                .f64("partial_rotary_factor")?
                .unwrap_or(family.default_partial_rotary_factor()),
        };
        if !(partial_rotary_factor > 0.0 && partial_rotary_factor <= 1.0) {
            return Err(Error::config(
                "partial_rotary_factor",
                format!("{partial_rotary_factor} is not in (0, 1]"),
            ));
        }
        if rope_theta <= 0.0 {
            return Err(Error::config("rope_theta", format!("{rope_theta} must be positive")));
        }
        let scaling = match (&rope_params, obj.get("rope_scaling")) {
            (Some(p), _) => Some(("rope_parameters", Fields(p.0))),
            (None, Some(Value::Object(m))) => Some(("rope_scaling", Fields(m))),
            (None, None | Some(Value::Null)) => None,
            (None, Some(_)) => return Err(Error::config("rope_scaling", "expected an object or null")),
        };
        let layout = family.layout();
        let mut config = PhiConfig {
            family,
            vocab_size: f.req_usize("vocab_size")?,
            hidden_size,
            intermediate_size: f.req_usize("intermediate_size")?,
            num_hidden_layers: f.req_usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            hidden_act,
            max_position_embeddings,
            norm_eps: f.f64(family.norm_eps_key())?.unwrap_or(1e-5),
            tie_word_embeddings: f.bool("tie_word_embeddings")?.unwrap_or(false),
            rope_theta,
            partial_rotary_factor,
            longrope: None,
            qk_layernorm: f.bool("qk_layernorm")?.unwrap_or(false),
            block: layout.block,
            norm: layout.norm,
            mlp: layout.mlp,
            fused_qkv: layout.fused_qkv,
            linear_bias: layout.linear_bias,
            lm_head_bias: layout.lm_head_bias,
            resid_pdrop: f.f64("resid_pdrop")?.unwrap_or(0.0),
            embd_pdrop: f.f64("embd_pdrop")?.unwrap_or(0.0),
            attention_dropout: f.f64("attention_dropout")?.unwrap_or(0.0),
            initializer_range: f.f64("initializer_range")?.unwrap_or(0.02),
            bos_token_id: f.token_id("bos_token_id")?,
            eos_token_ids: f.token_ids("eos_token_id")?,
            pad_token_id: f.token_id("pad_token_id")?,
        };
        if let Some((name, s)) = scaling {
            let kind = s
                .string("rope_type")?
                .or(s.string("type")?)
                .unwrap_or_else(|| "default".into());
            match kind.as_str() {
                "default" => {}
                "longrope" | "su" => {
                    let orig = match s.usize("original_max_position_embeddings")? {
                        Some(o) => Some(o),
                        None => f.usize("original_max_position_embeddings")?,
                    };
                    config.longrope = Some(parse_longrope(name, &s, &config, orig)?);
                }
                other => {
                    return Err(Error::config(
                        format!("{name}.type"),
                        format!("unsupported RoPE scaling `{other}` (supported: default, longrope, su)"),
                    ));
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks values no architecture allows; called by every constructor of a config.
    pub fn validate(&self) -> Result<()> {
        for (field, v, max) in [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("hidden_size", self.hidden_size, MAX_WIDTH),
            ("intermediate_size", self.intermediate_size, MAX_WIDTH * 8),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_WIDTH),
            ("num_key_value_heads", self.num_key_value_heads, MAX_WIDTH),
            ("head_dim", self.head_dim, MAX_WIDTH),
            ("max_position_embeddings", self.max_position_embeddings, MAX_POSITIONS),
        ] {
            if v == 0 {
                return Err(Error::config(field, "must be positive"));
            }
            // Sizes drive allocation (embeddings, RoPE tables): an absurd value must be an error
            // here, not a capacity-overflow panic or an out-of-memory kill later.
            if v > max {
                return Err(Error::config(field, format!("{v} is beyond any Phi model (at most {max})")));
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(Error::config(
                "num_key_value_heads",
                format!("{} must divide num_attention_heads ({})", self.num_key_value_heads, self.num_attention_heads),
            ));
        }
        // The fields are bounded one by one above; their product (hidden × layers × …) is bounded
        // here. num_parameters cannot overflow u64 within the per-field bounds.
        if self.num_parameters() > MAX_PARAMETERS {
            return Err(Error::config(
                "hidden_size/num_hidden_layers",
                format!(
                    "{} parameters ({} layers × hidden {}, vocab {}): more than {MAX_PARAMETERS}",
                    self.num_parameters(),
                    self.num_hidden_layers,
                    self.hidden_size,
                    self.vocab_size
                ),
            ));
        }
        // NaN passes a plain `<= 0` test, and a NaN or infinite float here would only show up
        // as NaN logits: each must be finite.
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return Err(Error::config(self.family.norm_eps_key(), format!("{} must be a positive finite number", self.norm_eps)));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(Error::config("rope_theta", format!("{} must be a positive finite number", self.rope_theta)));
        }
        if !(self.partial_rotary_factor > 0.0 && self.partial_rotary_factor <= 1.0) {
            return Err(Error::config("partial_rotary_factor", format!("{} is not in (0, 1]", self.partial_rotary_factor)));
        }
        if !(self.initializer_range.is_finite() && self.initializer_range >= 0.0) {
            return Err(Error::config("initializer_range", format!("{} must be a finite number ≥ 0 (the std of the initial weights)", self.initializer_range)));
        }
        for (field, p) in [
            ("resid_pdrop", self.resid_pdrop),
            ("embd_pdrop", self.embd_pdrop),
            ("attention_dropout", self.attention_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(Error::config(field, format!("{p} is not in [0, 1)")));
            }
        }
        if self.rotary_ndims() % 2 != 0 {
            return Err(Error::config(
                "partial_rotary_factor",
                format!(
                    "gives {} rotary dims (head_dim {} × {}), which must be even",
                    self.rotary_ndims(),
                    self.head_dim,
                    self.partial_rotary_factor
                ),
            ));
        }
        self.validate_family()?;
        if let Some(l) = &self.longrope {
            let half = self.rotary_ndims() / 2;
            for (field, v) in [("short_factor", &l.short_factor), ("long_factor", &l.long_factor)] {
                if v.len() != half {
                    return Err(Error::config(
                        format!("rope_scaling.{field}"),
                        format!(
                            "has {} entries, rotary_ndims/2 = {half} expected (`head_dim` {} × `partial_rotary_factor` {})",
                            v.len(),
                            self.head_dim,
                            self.partial_rotary_factor
                        ),
                    ));
                }
                // Each divides a frequency: zero, negative or NaN factors give inf/NaN angles.
                if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !(x.is_finite() && **x > 0.0)) {
                    return Err(Error::config(format!("rope_scaling.{field}"), format!("entry {i} is {x}; every factor must be a positive finite number")));
                }
            }
            if !(l.attention_factor.is_finite() && l.attention_factor > 0.0) {
                return Err(Error::config("rope_scaling.attention_factor", format!("{} must be a positive finite number", l.attention_factor)));
            }
            if l.original_max_position_embeddings == 0 {
                return Err(Error::config("original_max_position_embeddings", "must be positive"));
            }
        }
        Ok(())
    }

    /// Rejects a field the family's HF class cannot express: `config.json` carries only
    /// `model_type`, so `transformers` would silently build the family's own layout instead
    /// (e.g. a `phi` config with a sequential block loads as parallel).
    fn validate_family(&self) -> Result<()> {
        let family = self.family;
        let Layout { block, norm, mlp, fused_qkv, linear_bias, lm_head_bias } = family.layout();
        let wrong = |field: &str, value: String, expected: String| {
            Err(Error::config(
                field,
                format!(
                    "{value} cannot be written as model_type \"{family}\" ({} has {expected}); \
                     transformers would load another architecture",
                    family.architecture()
                ),
            ))
        };
        if self.block != block {
            return wrong("block", format!("{:?}", self.block), format!("a {block:?} block"));
        }
        if self.norm != norm {
            return wrong("norm", format!("{:?}", self.norm), format!("{norm:?}"));
        }
        if self.mlp != mlp {
            return wrong("mlp", format!("{:?}", self.mlp), format!("a {mlp:?} MLP"));
        }
        for (field, value, expected) in [
            ("fused_qkv", self.fused_qkv, fused_qkv),
            ("linear_bias", self.linear_bias, linear_bias),
            ("lm_head_bias", self.lm_head_bias, lm_head_bias),
        ] {
            if value != expected {
                return wrong(field, value.to_string(), format!("{field} = {expected}"));
            }
        }
        if self.qk_layernorm && !family.has_qk_layernorm() {
            return wrong("qk_layernorm", "true".into(), "no qk_layernorm".into());
        }
        Ok(())
    }

    /// The HF hub-format `config.json` that `transformers` loads.
    pub fn to_hf_json(&self) -> Value {
        let family = self.family;
        let mut m = Map::new();
        m.insert("architectures".into(), json!([family.architecture()]));
        m.insert("model_type".into(), json!(family.model_type()));
        for (k, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            m.insert(k.into(), json!(v));
        }
        if self.head_dim * self.num_attention_heads != self.hidden_size {
            m.insert("head_dim".into(), json!(self.head_dim));
        }
        m.insert("hidden_act".into(), json!(self.hidden_act.hf_name()));
        m.insert(family.norm_eps_key().into(), json!(self.norm_eps));
        m.insert("tie_word_embeddings".into(), json!(self.tie_word_embeddings));
        m.insert("rope_theta".into(), json!(self.rope_theta));
        m.insert("partial_rotary_factor".into(), json!(self.partial_rotary_factor));
        match &self.longrope {
            None => {
                m.insert("rope_scaling".into(), Value::Null);
            }
            Some(l) => {
                m.insert(
                    "rope_scaling".into(),
                    json!({"type": "longrope", "short_factor": l.short_factor,
                           "long_factor": l.long_factor, "attention_factor": l.attention_factor}),
                );
                m.insert(
                    "original_max_position_embeddings".into(),
                    json!(l.original_max_position_embeddings),
                );
            }
        }
        if family.has_qk_layernorm() {
            m.insert("qk_layernorm".into(), json!(self.qk_layernorm));
        }
        m.insert("resid_pdrop".into(), json!(self.resid_pdrop));
        m.insert("embd_pdrop".into(), json!(self.embd_pdrop));
        m.insert("attention_dropout".into(), json!(self.attention_dropout));
        m.insert("initializer_range".into(), json!(self.initializer_range));
        m.insert("bos_token_id".into(), json!(self.bos_token_id));
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        m.insert("eos_token_id".into(), eos);
        m.insert("pad_token_id".into(), json!(self.pad_token_id));
        m.insert("torch_dtype".into(), json!("float32"));
        m.insert("use_cache".into(), json!(true));
        Value::Object(m)
    }
}

/// Folders at most this deep under a non-model folder are searched for models to suggest.
const MODEL_SEARCH_DEPTH: usize = 2;
/// Entries read per folder in that search (a home directory must not be crawled).
const MODEL_SEARCH_ENTRIES: usize = 4096;

/// Model folders (holding `config.json`) under `dir`, at most [`MODEL_SEARCH_DEPTH`] levels
/// down, sorted by path: a training run's `checkpoints/step-00000300` sorts last when newest.
pub fn model_folders_under(dir: &Path) -> Vec<std::path::PathBuf> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten().take(MODEL_SEARCH_ENTRIES) {
            let path = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if path.join("config.json").is_file() {
                out.push(path);
            } else if depth > 1 {
                walk(&path, depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, MODEL_SEARCH_DEPTH, &mut out);
    out.sort();
    out
}

/// Why `dir` (which has no `config.json`) is not a model folder, and the nearest ones that are.
fn not_a_model_folder(dir: &Path) -> String {
    let found = model_folders_under(dir);
    match found.as_slice() {
        [] => "no config.json here, so this is not a model folder (a model folder holds config.json and \
               model.safetensors; a training run keeps its models in <run>/checkpoints/step-…)"
            .to_string(),
        [only] => format!("no config.json here, so this is not a model folder; the model folder under it is {}", only.display()),
        [.., newest] => format!(
            "no config.json here, so this is not a model folder; it holds {} model folders, the newest by name is {}",
            found.len(),
            newest.display()
        ),
    }
}

fn parse_longrope(name: &str, s: &Fields, c: &PhiConfig, orig: Option<usize>) -> Result<LongRope> {
    let factors = |key: &str| -> Result<Vec<f64>> {
        let v = s
            .0
            .get(key)
            .ok_or_else(|| Error::config(format!("{name}.{key}"), "missing for longrope"))?;
        v.as_array()
            .and_then(|a| a.iter().map(|x| x.as_f64()).collect::<Option<Vec<_>>>())
            .ok_or_else(|| Error::config(format!("{name}.{key}"), "expected a list of numbers"))
    };
    // HF derives the scale from max/original when the original context is known,
    // and falls back to the `factor` field otherwise.
    let (orig, factor) = match orig {
        Some(0) => {
            return Err(Error::config("original_max_position_embeddings", "must be positive"));
        }
        Some(o) => (o, c.max_position_embeddings as f64 / o as f64),
        None => (c.max_position_embeddings, s.f64("factor")?.unwrap_or(1.0)),
    };
    let attention_factor = match s.f64("attention_factor")? {
        Some(a) => a,
        None if factor <= 1.0 => 1.0,
        None => (1.0 + factor.ln() / (orig as f64).ln()).sqrt(),
    };
    Ok(LongRope {
        short_factor: factors("short_factor")?,
        long_factor: factors("long_factor")?,
        original_max_position_embeddings: orig,
        attention_factor,
    })
}

/// Typed, error-naming access to a JSON object's fields. `null` counts as absent.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }
    fn usize(&self, k: &str) -> Result<Option<usize>> {
        self.get(k)
            .map(|v| {
                v.as_u64()
                    .map(|u| u as usize)
                    .ok_or_else(|| Error::config(k, format!("expected a non-negative integer, got {v}")))
            })
            .transpose()
    }
    fn req_usize(&self, k: &str) -> Result<usize> {
        self.usize(k)?.ok_or_else(|| Error::config(k, "missing"))
    }
    fn f64(&self, k: &str) -> Result<Option<f64>> {
        self.get(k)
            .map(|v| v.as_f64().ok_or_else(|| Error::config(k, format!("expected a number, got {v}"))))
            .transpose()
    }
    fn bool(&self, k: &str) -> Result<Option<bool>> {
        self.get(k)
            .map(|v| v.as_bool().ok_or_else(|| Error::config(k, format!("expected true/false, got {v}"))))
            .transpose()
    }
    fn string(&self, k: &str) -> Result<Option<String>> {
        self.get(k)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Error::config(k, format!("expected a string, got {v}")))
            })
            .transpose()
    }
    fn token_id(&self, k: &str) -> Result<Option<u32>> {
        self.get(k).map(|v| to_token_id(k, v)).transpose()
    }
    fn token_ids(&self, k: &str) -> Result<Vec<u32>> {
        match self.get(k) {
            None => Ok(vec![]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| to_token_id(k, v))
                .collect(),
            Some(_) => Ok(self.token_id(k)?.into_iter().collect()),
        }
    }
}

/// A token id: a non-negative integer that fits u32 (a larger one would wrap to another token).
fn to_token_id(k: &str, v: &Value) -> Result<u32> {
    let n = v.as_u64().ok_or_else(|| Error::config(k, format!("expected a token id (a non-negative integer), got {v}")))?;
    u32::try_from(n).map_err(|_| Error::config(k, format!("token id {n} does not fit in 32 bits")))
}
