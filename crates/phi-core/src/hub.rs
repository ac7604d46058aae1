//! Models by hub id: `org/name` (optionally `@revision`) wherever a model folder is taken,
//! resolved through the Hugging Face hub's local cache as `huggingface_hub` lays it out, and
//! downloaded into that cache (through the `hf-hub` crate) when it is missing and the network
//! is allowed.
//!
//! The cache is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`,
//! else `~/.cache/huggingface/hub`. A repository `org/name` is the folder `models--org--name`;
//! its `refs/<revision>` file holds the commit a branch or tag points at, and
//! `snapshots/<commit>/` holds the files (links into `blobs/`). A snapshot in the cache is used
//! without asking the network (as `hf-hub` does; pass `@<commit>` to pin one); `HF_HUB_OFFLINE=1`
//! forbids the network altogether, `HF_TOKEN` authenticates and `HF_ENDPOINT` names another
//! hub. A path that exists always wins over an id.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use phi_core::{PhiForCausalLM, hub};
//! // The folder transformers or `huggingface-cli download` left in the cache:
//! let dir = hub::resolve("microsoft/phi-2", hub::Kind::Model)?;
//! let model = PhiForCausalLM::from_pretrained(&dir, &Default::default())?; // or the id itself
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

/// What a folder must hold to count as complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `config.json` and the weights (`model.safetensors`, or every shard of
    /// `model.safetensors.index.json`).
    Model,
    /// A PEFT adapter: `adapter_config.json` and `adapter_model.safetensors`.
    Adapter,
    /// The model's JSON files only (`config.json`; the tokenizer's and the chat template come
    /// with it): enough for `phi inspect` and `phi template`, without downloading weights.
    Config,
}

/// Why an id could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Not in the cache (and, offline, not to be downloaded).
    #[error("`{id}`: not in the hub cache {} (no {}){}{}", cache.display(), repo_dir, if *offline { ", and HF_HUB_OFFLINE is set, so it cannot be downloaded" } else { "" }, no_folder(spec))]
    NotCached { id: String, spec: String, cache: PathBuf, repo_dir: String, offline: bool },
    /// The repository is cached, but not at this revision.
    #[error("`{id}`: no revision `{revision}` in the hub cache {} (cached: {}){}", repo.display(), if known.is_empty() { "none".to_string() } else { known.join(", ") }, if *offline { "; HF_HUB_OFFLINE is set, so it cannot be downloaded" } else { "" })]
    UnknownRevision { id: String, revision: String, repo: PathBuf, known: Vec<String>, offline: bool },
    /// A snapshot that lacks files the model needs (a download cut short).
    #[error("{}: incomplete snapshot of `{id}`: {}", dir.display(), missing.join("; "))]
    Incomplete { id: String, dir: PathBuf, missing: Vec<String> },
    /// The download failed.
    #[error("`{id}`: downloading from {endpoint} into {} failed: {message}", cache.display())]
    Download { id: String, endpoint: String, cache: PathBuf, message: String },
    /// A cache file that cannot be read.
    #[error("{}: {message}", path.display())]
    Cache { path: PathBuf, message: String },
}

fn no_folder(spec: &str) -> String {
    format!("; nor is there a folder `{spec}`")
}

/// `org/name` and the revision of an id (`org/name@revision`), or `None` when `spec` cannot
/// be one (an id has exactly one `/`, and its parts are letters, digits, `-`, `_` and `.`).
pub fn parse_id(spec: &str) -> Option<(String, Option<String>)> {
    let (repo, revision) = match spec.split_once('@') {
        Some((_, rev)) if rev.is_empty() || rev.starts_with('/') || rev.contains("..") || rev.contains(|c: char| c.is_whitespace() || c == '\\') => return None,
        Some((repo, rev)) => (repo, Some(rev.to_string())),
        None => (spec, None),
    };
    let (org, name) = repo.split_once('/')?;
    let part = |s: &str| !s.is_empty() && s != "." && s != ".." && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    (part(org) && part(name)).then(|| (repo.to_string(), revision))
}

/// An environment variable as a path, `~` expanded (as Python's `expanduser` does); unset or
/// empty is `None`.
fn path_var(key: &str) -> Option<PathBuf> {
    let v = std::env::var_os(key).filter(|v| !v.is_empty())?;
    let text = v.to_string_lossy();
    match (text.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Some(PathBuf::from(home).join(rest)),
        _ if text == "~" => std::env::var_os("HOME").map(PathBuf::from),
        _ => Some(PathBuf::from(v)),
    }
}

/// `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
fn hf_home() -> PathBuf {
    path_var("HF_HOME").unwrap_or_else(|| {
        let cache = path_var("XDG_CACHE_HOME").or_else(|| path_var("HOME").map(|h| h.join(".cache"))).unwrap_or_else(|| PathBuf::from(".cache"));
        cache.join("huggingface")
    })
}

/// The hub cache folder, as `huggingface_hub` finds it: `$HF_HUB_CACHE` (or its older name
/// `$HUGGINGFACE_HUB_CACHE`), else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`,
/// else `~/.cache/huggingface/hub`.
pub fn cache_dir() -> PathBuf {
    path_var("HF_HUB_CACHE").or_else(|| path_var("HUGGINGFACE_HUB_CACHE")).unwrap_or_else(|| hf_home().join("hub"))
}

/// `HF_HUB_OFFLINE` (or transformers' `TRANSFORMERS_OFFLINE`) set to a true value (`1`, `true`,
/// `yes`, `on`), as `huggingface_hub` reads it.
pub fn offline() -> bool {
    let truthy = |k: &str| std::env::var(k).is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
    truthy("HF_HUB_OFFLINE") || truthy("TRANSFORMERS_OFFLINE")
}

/// `$HF_TOKEN`, else the token `huggingface-cli login` saved (`$HF_TOKEN_PATH`, else
/// `$HF_HOME/token`).
fn token() -> Option<String> {
    if let Some(t) = std::env::var("HF_TOKEN").ok().filter(|t| !t.trim().is_empty()) {
        return Some(t.trim().to_string());
    }
    let path = path_var("HF_TOKEN_PATH").unwrap_or_else(|| hf_home().join("token"));
    std::fs::read_to_string(path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
}

/// The folder `spec` names, through the hub as the environment configures it
/// ([`Hub::from_env`]): see [`Hub::resolve`].
pub fn resolve(spec: impl AsRef<Path>, kind: Kind) -> Result<PathBuf, HubError> {
    Hub::from_env().resolve(spec, kind)
}

/// Where hub ids are looked up and fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hub {
    /// The cache folder ([`cache_dir`]).
    pub cache: PathBuf,
    /// Never use the network ([`offline`]).
    pub offline: bool,
    /// The hub's address (`HF_ENDPOINT`, default `https://huggingface.co`).
    pub endpoint: String,
    /// The access token (`HF_TOKEN`; else the one `huggingface-cli login` saved beside the cache).
    pub token: Option<String>,
}

impl Hub {
    /// The hub as `huggingface_hub` reads it from the environment.
    pub fn from_env() -> Self {
        Hub { cache: cache_dir(), offline: offline(), endpoint: endpoint(), token: token() }
    }

    /// The folder `spec` names: `spec` itself when it exists (or cannot be a hub id), else the
    /// cached snapshot of the hub id, downloaded first where it is missing, incomplete or not at
    /// that revision and the network is allowed.
    pub fn resolve(&self, spec: impl AsRef<Path>, kind: Kind) -> Result<PathBuf, HubError> {
        let path = spec.as_ref();
        let Some(text) = path.to_str() else { return Ok(path.to_path_buf()) };
        if path.exists() {
            return Ok(path.to_path_buf());
        }
        let Some((repo, revision)) = parse_id(text) else { return Ok(path.to_path_buf()) };
        match cached(&self.cache, &repo, revision.as_deref(), kind, text, self.offline) {
            Ok(dir) => Ok(dir),
            Err(HubError::NotCached { .. } | HubError::UnknownRevision { .. } | HubError::Incomplete { .. }) if !self.offline => {
                self.download(&repo, revision.as_deref(), kind).map_err(|d| match d {
                    HubError::Download { message, .. } => HubError::Download {
                        id: text.to_string(),
                        endpoint: self.endpoint.clone(),
                        cache: self.cache.clone(),
                        message: format!("{message} (it is not complete in the cache either){}", no_folder(text)),
                    },
                    other => other,
                })
            }
            Err(e) => Err(e),
        }
    }
}

/// The snapshot of `repo` at `revision` (default `main`) in `cache`, checked complete for `kind`.
fn cached(cache: &Path, repo: &str, revision: Option<&str>, kind: Kind, spec: &str, offline: bool) -> Result<PathBuf, HubError> {
    let id = match revision {
        Some(r) => format!("{repo}@{r}"),
        None => repo.to_string(),
    };
    let repo_dir_name = format!("models--{}", repo.replace('/', "--"));
    let repo_dir = cache.join(&repo_dir_name);
    if !repo_dir.is_dir() {
        return Err(HubError::NotCached { id, spec: spec.to_string(), cache: cache.to_path_buf(), repo_dir: repo_dir_name, offline });
    }
    let revision = revision.unwrap_or("main");
    let ref_file = repo_dir.join("refs").join(revision);
    let commit = match std::fs::read_to_string(&ref_file) {
        Ok(text) => text.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => revision.to_string(),
        Err(e) => return Err(HubError::Cache { path: ref_file, message: e.to_string() }),
    };
    let snapshot = repo_dir.join("snapshots").join(&commit);
    if commit.is_empty() || !snapshot.is_dir() {
        let mut known: Vec<String> = std::fs::read_dir(repo_dir.join("refs")).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        known.extend(std::fs::read_dir(repo_dir.join("snapshots")).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned()));
        known.sort();
        return Err(HubError::UnknownRevision { id, revision: revision.to_string(), repo: repo_dir, known, offline });
    }
    let missing = missing_files(&snapshot, kind)?;
    if !missing.is_empty() {
        return Err(HubError::Incomplete { id, dir: snapshot, missing });
    }
    Ok(snapshot)
}

/// What `dir` lacks to be a complete `kind`, each as a sentence.
fn missing_files(dir: &Path, kind: Kind) -> Result<Vec<String>, HubError> {
    let mut missing = Vec::new();
    let mut need = |file: &str, why: &str| {
        if !dir.join(file).is_file() {
            missing.push(format!("{file} {why}"));
        }
    };
    match kind {
        Kind::Config => need("config.json", "is missing"),
        Kind::Adapter => {
            need("adapter_config.json", "is missing");
            need("adapter_model.safetensors", "is missing");
        }
        Kind::Model => {
            need("config.json", "is missing");
            let index = dir.join("model.safetensors.index.json");
            if index.is_file() {
                for shard in shards(&index)? {
                    need(&shard, "is listed in model.safetensors.index.json but has no file");
                }
            } else {
                need("model.safetensors", "is missing (and there is no model.safetensors.index.json)");
            }
        }
    }
    Ok(missing)
}

/// The shard files a `model.safetensors.index.json` lists, each once, in order.
fn shards(index: &Path) -> Result<Vec<String>, HubError> {
    let bad = |message: String| HubError::Cache { path: index.to_path_buf(), message };
    let text = std::fs::read_to_string(index).map_err(|e| bad(e.to_string()))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let map = value.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut files: Vec<String> = Vec::new();
    for file in map.values() {
        let file = file.as_str().ok_or_else(|| bad("a `weight_map` value is not a file name".into()))?;
        if !files.iter().any(|f| f == file) {
            files.push(file.to_string());
        }
    }
    Ok(files)
}

fn endpoint() -> String {
    std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()).unwrap_or_else(|| "https://huggingface.co".into())
}

impl Hub {
    /// Downloads what `kind` needs of `repo` at `revision` into the cache, in the hub's layout,
    /// and returns the snapshot folder. The revision is pinned to the commit the hub names for
    /// it, so that files already in that commit's snapshot are kept and the rest come from the
    /// same commit (never a mix of an old `main` and a new one); `refs/<revision>` is written
    /// last, once the snapshot is complete.
    fn download(&self, repo: &str, revision: Option<&str>, kind: Kind) -> Result<PathBuf, HubError> {
        use hf_hub::api::sync::ApiBuilder;
        use hf_hub::{Repo, RepoType};
        let failed = |message: String| HubError::Download { id: repo.to_string(), endpoint: self.endpoint.clone(), cache: self.cache.clone(), message };
        let mut builder = ApiBuilder::from_cache(hf_hub::Cache::new(self.cache.clone())).with_progress(false).with_endpoint(self.endpoint.clone());
        if self.token.is_some() {
            builder = builder.with_token(self.token.clone());
        }
        let api = builder.build().map_err(|e| failed(e.to_string()))?;
        let revision = revision.unwrap_or("main");
        let info = api.repo(Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string())).info().map_err(|e| failed(e.to_string()))?;
        let sha = info.sha;
        if !is_commit(&sha) {
            return Err(failed(format!("the hub answered `{sha}` as the commit of `{revision}`")));
        }
        let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
        let mut wanted = wanted_files(&files, kind);
        if wanted.is_empty() {
            let what = match kind {
                Kind::Model => "a model",
                Kind::Adapter => "a LoRA adapter",
                Kind::Config => "a model's config",
            };
            return Err(failed(format!("the repository has none of the files {what} needs (it has: {})", files.join(", "))));
        }
        let repo_dir = self.cache.join(format!("models--{}", repo.replace('/', "--")));
        let snapshot = repo_dir.join("snapshots").join(&sha);
        let pinned = api.repo(Repo::with_revision(repo.to_string(), RepoType::Model, sha.clone()));
        let sha_ref = repo_dir.join("refs").join(&sha);
        let had_sha_ref = sha_ref.exists();
        let fetch = |file: &str| -> Result<(), HubError> {
            if !snapshot.join(file).is_file() {
                pinned.download(file).map_err(|e| failed(format!("{file}: {e}")))?;
            }
            Ok(())
        };
        for file in &wanted {
            fetch(file)?;
        }
        // A sharded model's shards, as its index names them: each one of the repository's own
        // files, at its top level (a name with a folder or `..` in it is refused, not followed).
        let index = snapshot.join("model.safetensors.index.json");
        if kind == Kind::Model && index.is_file() {
            for shard in shards(&index)? {
                if shard.contains(['/', '\\']) || shard.starts_with('.') || !files.contains(&shard) {
                    return Err(failed(format!("model.safetensors.index.json names `{shard}`, which is not a file of the repository")));
                }
                fetch(&shard)?;
                wanted.push(shard);
            }
        }
        let missing = missing_files(&snapshot, kind)?;
        if !missing.is_empty() {
            return Err(HubError::Incomplete { id: repo.to_string(), dir: snapshot, missing });
        }
        // hf-hub recorded the download under a ref named by the commit; huggingface_hub names
        // refs by branch or tag.
        if !had_sha_ref && revision != sha {
            let _ = std::fs::remove_file(&sha_ref);
        }
        if revision != sha {
            let ref_file = repo_dir.join("refs").join(revision);
            let write = || -> std::io::Result<()> {
                std::fs::create_dir_all(ref_file.parent().expect("refs/<revision> has a parent"))?;
                let tmp = ref_file.with_extension(format!("tmp-{}", std::process::id()));
                std::fs::write(&tmp, &sha)?;
                std::fs::rename(&tmp, &ref_file)
            };
            write().map_err(|e| HubError::Cache { path: ref_file.clone(), message: e.to_string() })?;
        }
        Ok(snapshot)
    }
}

/// A full commit hash (40 hex digits).
fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Of a repository's files, those a model (or adapter) folder needs: its JSON (config,
/// tokenizer, generation config), the chat template, and safetensors weights — a sharded
/// model's shards come from its index, not from here.
fn wanted_files(files: &[String], kind: Kind) -> Vec<String> {
    let sharded = files.iter().any(|f| f == "model.safetensors.index.json");
    files
        .iter()
        .filter(|f| !f.contains('/'))
        .filter(|f| match kind {
            Kind::Adapter => f.ends_with(".json") || f.as_str() == "adapter_model.safetensors" || f.ends_with(".jinja"),
            Kind::Model => f.ends_with(".json") || f.ends_with(".jinja") || f.ends_with(".txt") || (!sharded && f.as_str() == "model.safetensors"),
            Kind::Config => f.ends_with(".json") || f.ends_with(".jinja") || f.ends_with(".txt"),
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_paths() {
        assert_eq!(parse_id("microsoft/phi-2"), Some(("microsoft/phi-2".into(), None)));
        assert_eq!(parse_id("microsoft/Phi-3.5-mini-instruct@main"), Some(("microsoft/Phi-3.5-mini-instruct".into(), Some("main".into()))));
        assert_eq!(parse_id("org/name@refs/pr/1"), Some(("org/name".into(), Some("refs/pr/1".into()))));
        for path in ["runs", "./runs/step-1", "/abs/path", "a/b/c", "../x", "a/", "/a", "org/name@", "o rg/name", "./x"] {
            assert_eq!(parse_id(path), None, "{path}");
        }
        assert_eq!(wanted_files(&["config.json".into(), "model.safetensors".into(), "pytorch_model.bin".into(), "onnx/model.onnx".into()], Kind::Model), ["config.json", "model.safetensors"]);
        assert_eq!(wanted_files(&["model.safetensors.index.json".into(), "model-00001-of-00002.safetensors".into()], Kind::Model), ["model.safetensors.index.json"]);
    }
}
