//! Published Phi architectures as data. Values are those of the `microsoft/*` hub configs.

use crate::config::{Activation, Family, Layout, PhiConfig};

impl PhiConfig {
    /// A Phi-1/1.5/2-family config (parallel block, LayerNorm, GELU MLP, biases, partial rotary).
    pub fn phi_family(
        hidden_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        vocab_size: usize,
        partial_rotary_factor: f64,
    ) -> Self {
        let Layout { block, norm, mlp, fused_qkv, linear_bias, lm_head_bias } = Family::Phi.layout();
        PhiConfig {
            family: Family::Phi,
            vocab_size,
            hidden_size,
            intermediate_size: 4 * hidden_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: num_attention_heads,
            // Zero heads (a typo in `phi bench --heads`, say) is left for `validate` to name
            // rather than a division by zero here.
            head_dim: hidden_size.checked_div(num_attention_heads).unwrap_or(0),
            hidden_act: Activation::GeluTanh,
            max_position_embeddings: 2048,
            norm_eps: 1e-5,
            tie_word_embeddings: false,
            rope_theta: 10000.0,
            partial_rotary_factor,
            longrope: None,
            qk_layernorm: false,
            block,
            norm,
            mlp,
            fused_qkv,
            linear_bias,
            lm_head_bias,
            resid_pdrop: 0.0,
            embd_pdrop: 0.0,
            attention_dropout: 0.0,
            initializer_range: 0.02,
            bos_token_id: Some(50256),
            eos_token_ids: vec![50256],
            pad_token_id: None,
        }
    }

    /// A Phi-3-family config (sequential block, RMSNorm, SwiGLU, fused qkv, no biases).
    pub fn phi3_family(
        hidden_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
        intermediate_size: usize,
        vocab_size: usize,
    ) -> Self {
        let Layout { block, norm, mlp, fused_qkv, linear_bias, lm_head_bias } = Family::Phi3.layout();
        PhiConfig {
            family: Family::Phi3,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            // Zero heads (a typo in `phi bench --heads`, say) is left for `validate` to name
            // rather than a division by zero here.
            head_dim: hidden_size.checked_div(num_attention_heads).unwrap_or(0),
            hidden_act: Activation::Silu,
            max_position_embeddings: 4096,
            norm_eps: 1e-5,
            tie_word_embeddings: false,
            rope_theta: 10000.0,
            partial_rotary_factor: 1.0,
            longrope: None,
            qk_layernorm: false,
            block,
            norm,
            mlp,
            fused_qkv,
            linear_bias,
            lm_head_bias,
            resid_pdrop: 0.0,
            embd_pdrop: 0.0,
            attention_dropout: 0.0,
            initializer_range: 0.02,
            bos_token_id: Some(1),
            eos_token_ids: vec![32000],
            pad_token_id: Some(32000),
        }
    }

    /// microsoft/phi-1 (1.3B, code).
    pub fn phi_1() -> Self {
        Self::phi_family(2048, 24, 32, 51200, 0.5)
    }

    /// microsoft/phi-1_5 (1.3B, same architecture as phi-1).
    pub fn phi_1_5() -> Self {
        Self::phi_1()
    }

    /// microsoft/phi-2 (2.7B).
    pub fn phi_2() -> Self {
        Self {
            resid_pdrop: 0.1,
            ..Self::phi_family(2560, 32, 32, 51200, 0.4)
        }
    }

    /// microsoft/Phi-3-mini-4k-instruct (3.8B).
    pub fn phi_3_mini() -> Self {
        Self {
            max_position_embeddings: 4096,
            eos_token_ids: vec![32000],
            ..Self::phi3_family(3072, 32, 32, 32, 8192, 32064)
        }
    }

    /// microsoft/Phi-3-medium-4k-instruct (14B, GQA 40/10).
    pub fn phi_3_medium() -> Self {
        Self::phi3_family(5120, 40, 40, 10, 17920, 32064)
    }

    /// microsoft/Phi-4-mini-instruct (3.8B: GQA 24/8, partial rotary 0.75, tied embeddings).
    pub fn phi_4_mini() -> Self {
        Self {
            tie_word_embeddings: true,
            partial_rotary_factor: 0.75,
            rope_theta: 10000.0,
            max_position_embeddings: 131072,
            bos_token_id: Some(199999),
            eos_token_ids: vec![199999],
            pad_token_id: Some(199999),
            ..Self::phi3_family(3072, 32, 24, 8, 8192, 200064)
        }
    }

    /// Looks a preset up by its name (`phi-1`, `phi-1.5`, `phi-2`, `phi-3-mini`, `phi-3-medium`,
    /// `phi-4-mini`).
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            "phi-1" => Self::phi_1(),
            "phi-1.5" | "phi-1_5" => Self::phi_1_5(),
            "phi-2" => Self::phi_2(),
            "phi-3-mini" => Self::phi_3_mini(),
            "phi-3-medium" => Self::phi_3_medium(),
            "phi-4-mini" => Self::phi_4_mini(),
            _ => return None,
        })
    }

    /// Names accepted by [`PhiConfig::preset`].
    pub const PRESETS: [&'static str; 6] =
        ["phi-1", "phi-1.5", "phi-2", "phi-3-mini", "phi-3-medium", "phi-4-mini"];

    /// The preset a mistyped `name` most likely meant: the same letters and digits
    /// (`phi2` → `phi-2`), else the first whose name starts with them (`phi3` → `phi-3-mini`),
    /// else the closest within two edits (`phi-3-mni`). `None` when nothing is that close.
    pub fn nearest_preset(name: &str) -> Option<&'static str> {
        let squash = |s: &str| s.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect::<String>();
        let key = squash(name);
        if key.is_empty() {
            return None;
        }
        let by_letters = Self::PRESETS.iter().find(|p| squash(p) == key).or_else(|| Self::PRESETS.iter().find(|p| squash(p).starts_with(&key)));
        if let Some(p) = by_letters {
            return Some(p);
        }
        Self::PRESETS
            .iter()
            .map(|p| (edit_distance(&key, &squash(p)), *p))
            .filter(|(d, _)| *d <= 2)
            .min_by_key(|(d, _)| *d)
            .map(|(_, p)| p)
    }
}

/// Levenshtein distance (the preset names are a few characters: no need for a crate).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1).min(row[j] + 1).min(diag + usize::from(ca != *cb));
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}
