//! Finding a code corpus and turning it into token streams, cached on disk.
//!
//! This is the small path `train_phi1` needs: files → byte-level BPE → one token stream per
//! split, documents joined by `<|endoftext|>`. Filtering, dedup and sharded output are the
//! `phi data prepare` pipeline's job.

use std::path::{Path, PathBuf};
use std::process::Command;

use rayon::prelude::*;

use crate::tokenizer::{Tokenizer, TokenizerError};

/// The standard library folder of the machine's `python3`, if there is one.
pub fn python_stdlib_dir() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"])
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && dir.is_dir()).then_some(dir)
}

/// Files under `root` whose name ends with `suffix`, skipping folders named in `exclude`
/// (and `site-packages`), sorted so that the corpus order is reproducible.
pub fn collect_files(root: &Path, suffix: &str, exclude: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if path.is_dir() {
                if !exclude.contains(&name.as_str()) && name != "site-packages" && name != "__pycache__" {
                    stack.push(path);
                }
            } else if name.ends_with(suffix) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Token streams of a corpus: training and validation, documents separated by EOS.
pub struct TokenizedCorpus {
    pub tokenizer: Tokenizer,
    pub train: Vec<u32>,
    pub validation: Vec<u32>,
    pub documents: usize,
    pub bytes: u64,
}

const MAGIC: &[u8; 8] = b"PHITOKS1";

/// The non-empty contents of `files` (lossily decoded), in order.
pub fn read_documents(files: &[PathBuf]) -> Vec<String> {
    files
        .par_iter()
        .filter_map(|p| std::fs::read(p).ok().map(|b| String::from_utf8_lossy(&b).into_owned()))
        .filter(|d| !d.trim().is_empty())
        .collect()
}

/// Tokenizes `docs` with a BPE of `vocab_size` trained on them, holding out every
/// `val_every`-th document for validation. The tokenizer and both streams are cached in
/// `cache_dir` under a fingerprint of the inputs; a cache that does not match is rebuilt.
pub fn tokenize_corpus(docs: &[String], vocab_size: usize, val_every: usize, cache_dir: &Path) -> Result<TokenizedCorpus, TokenizerError> {
    let err = |path: &Path, e: &dyn std::fmt::Display| TokenizerError { path: path.display().to_string(), message: e.to_string() };
    let bytes: u64 = docs.iter().map(|d| d.len() as u64).sum();
    let fingerprint = {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for d in docs {
            for b in d.as_bytes().iter().step_by(97).chain(&(d.len() as u64).to_le_bytes()) {
                h = (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{h:016x}-v{vocab_size}-e{val_every}")
    };
    let dir = cache_dir.join(&fingerprint);
    let tok_path = dir.join("tokenizer.json");
    let (train_path, val_path) = (dir.join("train.tokens"), dir.join("validation.tokens"));
    if let (Ok(tokenizer), Some(train), Some(validation)) =
        (Tokenizer::from_file(&tok_path), read_tokens(&train_path), read_tokens(&val_path))
    {
        return Ok(TokenizedCorpus { tokenizer, train, validation, documents: docs.len(), bytes });
    }
    let tokenizer = Tokenizer::train_bpe(docs.iter(), vocab_size)?;
    let eos = tokenizer.eos_id().expect("trained with <|endoftext|>");
    let encoded: Vec<Vec<u32>> = docs.par_iter().map(|d| tokenizer.encode(d)).collect();
    let (mut train, mut validation) = (Vec::new(), Vec::new());
    for (i, ids) in encoded.into_iter().enumerate() {
        let stream = if val_every > 0 && i % val_every == val_every - 1 { &mut validation } else { &mut train };
        stream.extend(ids);
        stream.push(eos);
    }
    std::fs::create_dir_all(&dir).map_err(|e| err(&dir, &e))?;
    write_tokens(&train_path, &train).map_err(|e| err(&train_path, &e))?;
    write_tokens(&val_path, &validation).map_err(|e| err(&val_path, &e))?;
    tokenizer.save(&tok_path)?;
    Ok(TokenizedCorpus { tokenizer, train, validation, documents: docs.len(), bytes })
}

/// Writes a token file: `PHITOKS1`, u64 count, u32 little-endian ids; to a temporary name, then
/// renamed.
pub fn write_tokens(path: &Path, tokens: &[u32]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(16 + 4 * tokens.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(tokens.len() as u64).to_le_bytes());
    for t in tokens {
        bytes.extend_from_slice(&t.to_le_bytes());
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

/// Reads a token file; `None` for a missing, foreign or truncated one.
pub fn read_tokens(path: &Path) -> Option<Vec<u32>> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return None;
    }
    let n = u64::from_le_bytes(bytes[8..16].try_into().ok()?) as usize;
    if bytes.len() != 16 + 4 * n {
        return None;
    }
    Some(bytes[16..].chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect())
}
