//! Text → vector with a Phi model folder, and the identity that ties a classifier to it.
//!
//! A classifier learned on one model's embeddings means nothing on another's, so a saved
//! classifier carries [`EmbedderIdentity`]: hashes of the folder's `config.json`, weights and
//! `tokenizer.json`, and the embedding settings (layer, tokens per document). Loading it with a
//! folder whose identity differs is an error that names what differs.

use std::io::Read;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use phi_core::PhiForCausalLM;
use phi_core::embeddings::{EmbeddingConfig, embed};
use phi_data::Tokenizer;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{ClassifyError, Result};

/// What embeds: the model's files and the settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedderIdentity {
    /// The folder the classifier was trained with (informational: it may move).
    pub model: PathBuf,
    /// XXH3-64 (hex) of `config.json`.
    pub config_xxh3: String,
    /// XXH3-64 (hex) over the `*.safetensors` files, by name, names and bytes.
    pub weights_xxh3: String,
    /// XXH3-64 (hex) of `tokenizer.json`.
    pub tokenizer_xxh3: String,
    pub hidden_size: usize,
    /// The hidden state, as HF's `hidden_states` index; `None`: the last (after the final norm).
    pub layer: Option<usize>,
    /// A document's first `max_tokens` tokens are embedded (mean-pooled; chunked to the context).
    pub max_tokens: usize,
}

impl EmbedderIdentity {
    /// Checks the files of `dir` against this identity, config first, before anything is
    /// loaded; `Err` names the first file that differs.
    pub fn check_folder(&self, dir: &Path) -> Result<Hashes> {
        let differs = |what: &'static str, got: &str, want: &str| ClassifyError::OtherModel {
            trained: self.model.clone(),
            dir: dir.to_path_buf(),
            what,
            got: got.to_string(),
            expected: want.to_string(),
        };
        let config = xxh3_files(&[dir.join("config.json")])?;
        if config != self.config_xxh3 {
            return Err(differs("config.json", &config, &self.config_xxh3));
        }
        let weights = xxh3_files(&weight_files(dir)?)?;
        if weights != self.weights_xxh3 {
            return Err(differs("weights (*.safetensors)", &weights, &self.weights_xxh3));
        }
        let tokenizer = xxh3_files(&[dir.join("tokenizer.json")])?;
        if tokenizer != self.tokenizer_xxh3 {
            return Err(differs("tokenizer.json", &tokenizer, &self.tokenizer_xxh3));
        }
        Ok(Hashes { config, weights, tokenizer })
    }
}

/// XXH3-64 (hex) of a model folder's files.
#[derive(Debug, Clone)]
pub struct Hashes {
    config: String,
    weights: String,
    tokenizer: String,
}

fn xxh3_files(paths: &[PathBuf]) -> Result<String> {
    let mut h = xxhash_rust::xxh3::Xxh3Default::new();
    let mut buf = vec![0u8; 8 << 20];
    for p in paths {
        h.update(p.file_name().map_or(&[][..], |n| n.as_encoded_bytes()));
        let mut f = std::fs::File::open(p).map_err(|e| ClassifyError::io(p, e))?;
        loop {
            let n = f.read(&mut buf).map_err(|e| ClassifyError::io(p, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(format!("{:016x}", h.digest()))
}

fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut weights: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ClassifyError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    weights.sort();
    if weights.is_empty() {
        return Err(ClassifyError::NoWeights { dir: dir.to_path_buf() });
    }
    Ok(weights)
}

fn hash_folder(dir: &Path) -> Result<Hashes> {
    Ok(Hashes { config: xxh3_files(&[dir.join("config.json")])?, weights: xxh3_files(&weight_files(dir)?)?, tokenizer: xxh3_files(&[dir.join("tokenizer.json")])? })
}

/// A model folder loaded for embedding (no autodiff).
pub struct Embedder {
    model: PhiForCausalLM,
    tokenizer: Tokenizer,
    config: EmbeddingConfig,
    identity: EmbedderIdentity,
}

impl Embedder {
    /// Loads `dir` (config, weights, `tokenizer.json`). `max_tokens`: `None` is the model's
    /// context; `batch`: chunks per forward pass.
    pub fn load(dir: &Path, device: &Device, layer: Option<usize>, max_tokens: Option<usize>, batch: usize) -> Result<Self> {
        Embedder::load_hashed(dir, device, layer, max_tokens, batch, hash_folder(dir)?)
    }

    fn load_hashed(dir: &Path, device: &Device, layer: Option<usize>, max_tokens: Option<usize>, batch: usize, h: Hashes) -> Result<Self> {
        let model = PhiForCausalLM::from_pretrained(dir, device).map_err(|source| ClassifyError::Model { dir: dir.to_path_buf(), source })?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tok_path).map_err(|source| ClassifyError::Tokenizer { path: tok_path.clone(), source })?;
        let c = model.config();
        if let Some(l) = layer {
            if l > c.num_hidden_layers {
                return Err(ClassifyError::Layer { layer: l, dir: dir.to_path_buf(), layers: c.num_hidden_layers });
            }
        }
        let max_tokens = max_tokens.unwrap_or(c.max_position_embeddings);
        if max_tokens == 0 || batch == 0 {
            return Err(ClassifyError::EmbedSettings { max_tokens, batch });
        }
        let identity = EmbedderIdentity {
            model: dir.to_path_buf(),
            config_xxh3: h.config,
            weights_xxh3: h.weights,
            tokenizer_xxh3: h.tokenizer,
            hidden_size: c.hidden_size, layer, max_tokens };
        let config = EmbeddingConfig { layer, batch, chunk: None };
        Ok(Embedder { model, tokenizer, config, identity })
    }

    /// Loads `dir` with the settings of `expected`, refusing another model.
    pub fn load_as(dir: &Path, device: &Device, expected: &EmbedderIdentity, batch: usize) -> Result<Self> {
        let hashes = expected.check_folder(dir)?;
        Embedder::load_hashed(dir, device, expected.layer, Some(expected.max_tokens), batch, hashes)
    }

    pub fn identity(&self) -> &EmbedderIdentity {
        &self.identity
    }

    /// One `hidden_size` vector per text: the mean of the chosen hidden state over the text's
    /// first `max_tokens` tokens (tokenized in parallel).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let ids: Vec<Vec<u32>> = texts
            .par_iter()
            .map(|t| {
                let mut ids = self.tokenizer.encode(t);
                ids.truncate(self.identity.max_tokens);
                ids
            })
            .collect();
        Ok(embed(&self.model, &ids, &self.config)?)
    }
}
