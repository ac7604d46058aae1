//! `phi data prepare`: raw corpus → quality-filtered, deduplicated, decontaminated token shards.
//!
//! ```text
//! input (glob / JSONL) ─▶ read ─▶ quality ─▶ exact dedup ─▶ near dedup ─▶ decontaminate ─▶ classifier (optional)
//!                                                                                               │ kept documents (temporary JSONL)
//!                        tokenizer (given, or BPE trained on the training split) ◀┘
//!                                          └─▶ tokenize (parallel) ─▶ train-*.bin / validation-*.bin + manifest.json
//! ```
//!
//! Stages 1–5 stream the input in chunks of `chunk_mb`: memory is one chunk plus a hash per
//! document and a MinHash signature per kept document. Every shard is written atomically, and
//! the whole output folder is built under `<out>.partial` and renamed into place when complete,
//! so a reader never sees a half-prepared dataset. The report counts what each stage kept and
//! dropped, and why. Progress goes to the caller's [`PrepareProgress`], if any.
//!
//! ```no_run
//! use phi_data::prepare::{Input, Manifest, PrepareConfig, TokenizerSource, prepare};
//! let input = Input::Files { root: "corpus/".into(), pattern: "**/*.py".into(), exclude: vec!["**/tests/**".into()] };
//! let config = PrepareConfig::new(vec![input], TokenizerSource::Train { vocab_size: 8192 });
//! let manifest = prepare(&config, "data/code".as_ref(), None)?;
//! let table = manifest.report.table(); // what `phi data prepare` prints
//! assert!(table.contains("near dedup"));
//! let train = manifest.dataset("data/code".as_ref(), "train")?; // verified, memory-mapped
//! # Ok::<(), phi_data::DataError>(())
//! ```

mod input;
mod progress;
mod report;
mod score;
pub mod tasks;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use input::Input;
pub use progress::{PrepareProgress, Stage, Unit};
pub use report::{Dropped, PrepareReport, RepeatedFolders, SplitReport, StageReport};
pub use score::{DocumentScorer, ScoreFilter, ScoreReport};

use crate::error::DataError;
use crate::filters::QualityFilters;
use crate::quality::{Decontaminator, NearDup, NearDupIndex, content_hash};
use crate::sampler::TokenDataset;
use crate::shard::{ShardInfo, ShardWriter, bytes_per_token};
use crate::tokenizer::Tokenizer;

/// Where the tokenizer comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerSource {
    /// An existing `tokenizer.json` (e.g. a `microsoft/phi-1` folder's).
    File(PathBuf),
    /// A byte-level BPE of this vocabulary size, trained on the kept training documents.
    Train { vocab_size: usize },
}

/// Everything `prepare` does, as data (TOML/JSON-able; stored in the manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrepareConfig {
    pub inputs: Vec<Input>,
    /// `None` skips the heuristic stage.
    pub filters: Option<QualityFilters>,
    pub exact_dedup: bool,
    /// `None` skips near-dedup.
    pub near_dedup: Option<NearDup>,
    /// Decontaminate against the built-in HumanEval.
    pub decontaminate_humaneval: bool,
    /// More evaluation sets (JSONL: every string field of a record; other files: whole text).
    pub eval_sets: Vec<PathBuf>,
    /// n of the shared n-gram that marks a document contaminated.
    pub ngram: usize,
    pub tokenizer: TokenizerSource,
    /// Share of documents held out for validation (chosen by content hash: stable across runs).
    pub validation_fraction: f64,
    /// A shard is closed at the first document boundary past this many tokens.
    pub shard_tokens: usize,
    /// Input read per chunk (memory bound of the streaming stages).
    pub chunk_mb: usize,
    /// Also keep the filtered documents as `documents.jsonl` (with their scores when the
    /// classifier stage ran).
    pub keep_documents: bool,
    /// The classifier stage, last before tokenizing; `None` skips it.
    #[serde(default)]
    pub classifier: Option<ScoreFilter>,
}

impl PrepareConfig {
    /// Every stage on, with defaults, for `inputs`.
    pub fn new(inputs: Vec<Input>, tokenizer: TokenizerSource) -> Self {
        PrepareConfig {
            inputs,
            filters: Some(QualityFilters::default()),
            exact_dedup: true,
            near_dedup: Some(NearDup::default()),
            decontaminate_humaneval: true,
            eval_sets: Vec::new(),
            ngram: 13,
            tokenizer,
            validation_fraction: 0.05,
            shard_tokens: 64 << 20,
            chunk_mb: 64,
            keep_documents: false,
            classifier: None,
        }
    }
}

pub const MANIFEST: &str = "manifest.json";
pub const FORMAT: &str = "phi-token-shards";
/// Written first into `<out>.partial`, so that a build that died half-way is still known to be
/// ours (it has no manifest yet) and can be cleared by the next run.
pub const PARTIAL_MARKER: &str = "partial.json";

/// A prepared dataset: our manifest, and only the files `prepare` writes.
pub static DATASET_LAYOUT: crate::owned::Layout = crate::owned::Layout {
    what: "a prepared dataset (phi data prepare)",
    markers: &[crate::owned::Marker { file: MANIFEST, format: FORMAT, version: crate::shard::VERSION }],
    file: is_dataset_file,
    dir: |_| None,
};

/// `<out>.partial`, a dataset being built: our partial marker or (just before the rename) our
/// manifest, and only the files `prepare` writes.
pub static PARTIAL_LAYOUT: crate::owned::Layout = crate::owned::Layout {
    what: "a dataset being prepared (phi data prepare)",
    markers: &[
        crate::owned::Marker { file: PARTIAL_MARKER, format: FORMAT, version: crate::shard::VERSION },
        crate::owned::Marker { file: MANIFEST, format: FORMAT, version: crate::shard::VERSION },
    ],
    file: is_dataset_file,
    dir: |_| None,
};

/// The names `prepare` writes: the manifest, the tokenizer, the kept documents, the shards
/// (`train-00000.bin`, `validation-00003.bin`), and the temporaries of their atomic writes.
fn is_dataset_file(name: &str) -> bool {
    let shard = |n: &str| {
        ["train-", "validation-"].iter().any(|split| {
            n.strip_prefix(split)
                .and_then(|rest| rest.strip_suffix(".bin"))
                .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        })
    };
    matches!(name, MANIFEST | PARTIAL_MARKER | "tokenizer.json" | "documents.jsonl" | "documents.jsonl.tmp" | "manifest.tmp" | "partial.tmp" | "tokenizer.json.tmp")
        || shard(name)
        || name.strip_suffix(".tmp").is_some_and(shard)
}

/// One shard as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name, relative to the manifest's folder.
    pub file: String,
    pub tokens: u64,
    /// XXH3-64 of the payload, hex.
    pub checksum: String,
}

/// One split: its shards in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitEntry {
    pub documents: u64,
    pub tokens: u64,
    pub shards: Vec<ShardEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerEntry {
    /// `tokenizer.json`, copied next to the manifest.
    pub file: String,
    pub vocab_size: usize,
    pub eos_id: u32,
    /// Where it came from: a path, or `trained`.
    pub source: String,
}

/// `manifest.json`: what a prepared dataset holds and how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// Hash of the config and of the input files' names, sizes and times: equal fingerprints
    /// mean the same output, so a run can be reused.
    pub fingerprint: String,
    pub tokenizer: TokenizerEntry,
    pub bytes_per_token: usize,
    pub splits: BTreeMap<String, SplitEntry>,
    pub report: PrepareReport,
    pub config: PrepareConfig,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Self, DataError> {
        let path = dir.join(MANIFEST);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            // A plain folder (of sources, a run's): say what was expected and where one is.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir.is_dir() => return Err(DataError::Invalid(not_a_dataset(dir))),
            Err(e) => return Err(DataError::io(&path, e)),
        };
        let m: Manifest = serde_json::from_str(&text).map_err(|e| DataError::Invalid(format!("{}: {e}", path.display())))?;
        if m.format != FORMAT || m.version != crate::shard::VERSION {
            return Err(DataError::Invalid(format!("{}: format {} v{}, expected {FORMAT} v{}", path.display(), m.format, m.version, crate::shard::VERSION)));
        }
        // A downloaded dataset is untrusted: its manifest must not send the reader (or `phi data
        // inspect`) to files outside the dataset folder, as a safetensors index may not.
        let named = std::iter::once(("tokenizer.file".to_string(), &m.tokenizer.file))
            .chain(m.splits.iter().flat_map(|(split, e)| e.shards.iter().enumerate().map(move |(i, s)| (format!("splits.{split}.shards[{i}].file"), &s.file))));
        for (key, file) in named {
            let inside = !file.is_empty() && Path::new(file).components().all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir));
            if !inside {
                return Err(DataError::Invalid(format!("{}: {key} = {file:?} leaves the dataset folder; a manifest may only name files inside it", path.display())));
            }
        }
        Ok(m)
    }

    /// The shards of `split` (`train`, `validation`) as one dataset, each verified, with its
    /// token count checked against the manifest.
    pub fn dataset(&self, dir: &Path, split: &str) -> Result<TokenDataset, DataError> {
        let entry = self.splits.get(split).ok_or_else(|| {
            DataError::Invalid(format!("{}: no split {split:?} (has {:?})", dir.join(MANIFEST).display(), self.splits.keys().collect::<Vec<_>>()))
        })?;
        let mut shards = Vec::with_capacity(entry.shards.len());
        for s in &entry.shards {
            let path = dir.join(&s.file);
            let shard = crate::shard::Shard::open(&path)?;
            if shard.len() as u64 != s.tokens {
                return Err(DataError::Shard { path, offset: 24, message: format!("holds {} tokens, the manifest says {}", shard.len(), s.tokens) });
            }
            shards.push(shard);
        }
        let data = TokenDataset::from_opened(shards);
        if data.vocab_bound() > self.tokenizer.vocab_size {
            return Err(DataError::Invalid(format!("{split} shards use a vocabulary of {} > the tokenizer's {}", data.vocab_bound(), self.tokenizer.vocab_size)));
        }
        Ok(data)
    }

    pub fn tokenizer(&self, dir: &Path) -> Result<Tokenizer, DataError> {
        Ok(Tokenizer::from_file(dir.join(&self.tokenizer.file))?)
    }
}

/// Why `dir` (a folder without a manifest) is not a prepared dataset, and the nearest that are.
fn not_a_dataset(dir: &Path) -> String {
    let mut found = Vec::new();
    find_datasets(dir, 2, &mut found);
    found.sort();
    let nearest = match found.as_slice() {
        [] => "; prepare one from its source files first (phi_data::prepare, or the tool's `phi data prepare`)".to_string(),
        [one] => format!("; the prepared dataset under it is {}", one.display()),
        many => format!("; prepared datasets under it: {}", many.iter().take(5).map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")),
    };
    format!("{} is not a prepared dataset: it has no {MANIFEST} (phi data prepare writes one with the token shards){nearest}", dir.display())
}

/// Folders with a manifest under `dir`, at most `depth` levels down (4096 entries a folder at
/// most: a home directory is not crawled).
fn find_datasets(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten().take(4096) {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        if path.join(MANIFEST).is_file() {
            out.push(path);
        } else if depth > 1 {
            find_datasets(&path, depth - 1, out);
        }
    }
}

/// The fingerprint of `config` over its current input files.
pub fn fingerprint(config: &PrepareConfig) -> Result<String, DataError> {
    let mut h = xxhash_rust::xxh3::Xxh3Default::new();
    h.update(serde_json::to_string(config).expect("config serializes").as_bytes());
    for s in input::list_sources(&config.inputs)? {
        h.update(s.path.to_string_lossy().as_bytes());
        h.update(&s.bytes.to_le_bytes());
        h.update(&s.modified.to_le_bytes());
    }
    if let TokenizerSource::File(p) = &config.tokenizer {
        h.update(&std::fs::read(p).map_err(|e| DataError::io(p, e))?);
    }
    // A retrained classifier in the same folder is another dataset.
    if let Some(clf) = config.classifier.as_ref().and_then(|c| c.classifier.as_ref()) {
        let file = clf.join("classifier.json");
        h.update(&std::fs::read(&file).map_err(|e| DataError::io(&file, e))?);
    }
    Ok(format!("{:016x}", h.digest()))
}

/// Every readable UTF-8 document of `inputs`, unfiltered (what `phi data train-tokenizer` reads).
pub fn documents(inputs: &[Input]) -> Result<Vec<String>, DataError> {
    let mut out = Vec::new();
    input::for_each_chunk(&input::list_sources(inputs)?, 64_000_000, |docs| {
        out.extend(docs.into_iter().filter_map(|d| d.text.ok()));
        Ok(())
    })?;
    if out.is_empty() {
        return Err(DataError::Invalid(format!("no readable documents in {inputs:?}")));
    }
    Ok(out)
}

/// Every readable UTF-8 document of `inputs` with where it came from (`path`, or `path:line`
/// for JSONL), unfiltered, in the inputs' order (what `phi data annotate` samples from).
pub fn documents_with_origin(inputs: &[Input]) -> Result<Vec<(String, String)>, DataError> {
    let mut out = Vec::new();
    input::for_each_chunk(&input::list_sources(inputs)?, 64_000_000, |docs| {
        out.extend(docs.into_iter().filter_map(|d| d.text.ok().map(|t| (d.origin, t))));
        Ok(())
    })?;
    if out.is_empty() {
        return Err(DataError::Invalid(format!("no readable documents in {inputs:?}")));
    }
    Ok(out)
}

/// The documents a prepared dataset kept (`documents.jsonl`, written with `keep_documents`),
/// with their origin as `documents.jsonl:LINE`.
pub fn prepared_documents(dir: &Path) -> Result<Vec<(String, String)>, DataError> {
    let path = dir.join("documents.jsonl");
    if !path.is_file() {
        return Err(DataError::Invalid(format!("{}: no documents.jsonl (prepare with `keep_documents` to keep them)", dir.display())));
    }
    let origin = path.display().to_string();
    Ok(kept_documents(&path)?.enumerate().map(|(i, k)| (format!("{origin}:{}", i + 1), k.text)).collect())
}

/// [`prepare`], unless `out` already holds a dataset with the same fingerprint.
pub fn prepare_or_reuse(config: &PrepareConfig, out: &Path, progress: Option<&dyn PrepareProgress>) -> Result<(Manifest, bool), DataError> {
    prepare_with_or_reuse(config, None, out, progress)
}

/// [`prepare_with`], unless `out` already holds a dataset with the same fingerprint.
pub fn prepare_with_or_reuse(config: &PrepareConfig, scorer: Option<&dyn DocumentScorer>, out: &Path, progress: Option<&dyn PrepareProgress>) -> Result<(Manifest, bool), DataError> {
    if let Ok(m) = Manifest::read(out) {
        if m.fingerprint == fingerprint(config)? {
            return Ok((m, true));
        }
    }
    Ok((prepare_with(config, scorer, out, progress)?, false))
}

/// Runs the pipeline into `out` (replacing a previous prepared dataset there), telling
/// `progress` (if any) how far it has got; a config with a classifier stage needs
/// [`prepare_with`] and the classifier's scorer.
pub fn prepare(config: &PrepareConfig, out: &Path, progress: Option<&dyn PrepareProgress>) -> Result<Manifest, DataError> {
    prepare_with(config, None, out, progress)
}

/// A kept document, as stored between the streaming stages and tokenization.
#[derive(Serialize, Deserialize)]
struct Kept {
    validation: bool,
    text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    score: Option<f32>,
    /// The document's number (preparation as tasks, where the kept documents of each task are
    /// written apart and a later stage may move one across splits by its number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
}

/// [`prepare`] with the scorer of the config's classifier stage (`config.classifier` with a
/// `classifier` folder); `scorer` must be `None` when the config has no such stage.
pub fn prepare_with(config: &PrepareConfig, scorer: Option<&dyn DocumentScorer>, out: &Path, progress: Option<&dyn PrepareProgress>) -> Result<Manifest, DataError> {
    let progress = progress.unwrap_or(&());
    let wall = Instant::now();
    check_config(config)?;
    check_scorer(config, scorer)?;
    // `out` is replaced at the end: refuse now, before any work, unless it is ours to replace.
    crate::owned::check(out, &DATASET_LAYOUT)?;
    let fingerprint = fingerprint(config)?;
    let (sources, repeated_folders) = input::list_sources_walked(&config.inputs)?;
    if sources.is_empty() {
        return Err(DataError::Invalid(format!("no input files match {:?}", config.inputs)));
    }
    let partial = partial_dir(out);
    check_inputs_outside(&sources, out, &[&partial])?;
    start_partial(&partial, out)?;

    // Stages 1–5, streaming.
    let kept_path = partial.join("documents.jsonl");
    let (stages, scores, mut counts) = filter_stages(config, scorer, &sources, &kept_path, progress, Dedup::Here)?;
    let mut report = PrepareReport { stages, scores, repeated_folders, ..Default::default() };
    // A small corpus can leave a split empty by the luck of the hashes (a validation loss of
    // NaN, or no training data): move the one document nearest the boundary over.
    if check_counts(config, counts, &report)? {
        counts = move_one_across(&kept_path, config.validation_fraction)?;
    }

    // The tokenizer.
    let t = Instant::now();
    let (tokenizer, source) = match &config.tokenizer {
        TokenizerSource::File(p) => (Tokenizer::from_file(p)?, p.display().to_string()),
        TokenizerSource::Train { vocab_size } => {
            let stage = Stage::TrainTokenizer { vocab_size: *vocab_size, documents: counts[0] };
            progress.start(stage, None);
            let texts = kept_documents(&kept_path)?.filter(|k| !k.validation).map(|k| k.text);
            let tok = Tokenizer::train_bpe(texts, *vocab_size)?;
            progress.finish(stage);
            (tok, "trained".to_string())
        }
    };
    report.tokenizer_seconds = if matches!(config.tokenizer, TokenizerSource::Train { .. }) { t.elapsed().as_secs_f64() } else { 0.0 };
    let eos = tokenizer.eos_id().ok_or_else(|| DataError::Invalid(format!("tokenizer {source} has no {} token to join documents", crate::tokenizer::EOS)))?;
    let vocab_size = tokenizer.vocab_size();
    tokenizer.save(partial.join("tokenizer.json"))?;

    // Tokenize into shards.
    let t = Instant::now();
    let names = ["train".to_string(), "validation".to_string()];
    let splits = tokenize(config, &tokenizer, eos, &kept_path, &partial, &names, None, counts[0] + counts[1], progress)?;
    report.tokenize_seconds = t.elapsed().as_secs_f64();
    for (name, split) in [("train", &mut report.train), ("validation", &mut report.validation)] {
        let e = &splits[name];
        *split = SplitReport { documents: e.documents, tokens: e.tokens, shards: e.shards.len() };
    }
    if !config.keep_documents {
        std::fs::remove_file(&kept_path).map_err(|e| DataError::io(&kept_path, e))?;
    }
    report.wall_seconds = wall.elapsed().as_secs_f64();
    report.megabytes_per_second = report.stages.first().map_or(0, |s| s.bytes_in) as f64 / 1e6 / report.wall_seconds;
    let manifest = Manifest {
        format: FORMAT.into(),
        version: crate::shard::VERSION,
        fingerprint,
        tokenizer: TokenizerEntry { file: "tokenizer.json".into(), vocab_size, eos_id: eos, source },
        bytes_per_token: bytes_per_token(vocab_size),
        splits,
        report,
        config: config.clone(),
    };
    publish(&partial, out, &manifest)?;
    Ok(manifest)
}

/// `<out>.partial`, where a dataset is built before it is renamed into place.
fn partial_dir(out: &Path) -> PathBuf {
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    PathBuf::from(partial)
}

/// An input inside the output (re-thresholding `out/documents.jsonl` into `out`) would be
/// replaced by the run that reads it; one inside a folder the run writes (`others`: its
/// `.partial`, a run as tasks' work folder) would change under it.
fn check_inputs_outside(sources: &[input::SourceFile], out: &Path, others: &[&Path]) -> Result<(), DataError> {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    for s in sources {
        let src = canon(&s.path);
        if std::iter::once(out).chain(others.iter().copied()).any(|o| src.starts_with(canon(o))) {
            return Err(DataError::Invalid(format!(
                "input {} is inside the output folder {}, which this run replaces: write to another output folder",
                s.path.display(),
                out.display()
            )));
        }
    }
    Ok(())
}

/// A fresh `<out>.partial` with our marker: one left by a run that died is cleared; one that is
/// not ours stops us.
fn start_partial(partial: &Path, out: &Path) -> Result<(), DataError> {
    crate::owned::remove_owned(partial, &PARTIAL_LAYOUT)?;
    std::fs::create_dir_all(partial).map_err(|e| DataError::io(partial, e))?;
    let marker = serde_json::json!({ "format": FORMAT, "version": crate::shard::VERSION, "partial_of": out });
    write_atomic(&partial.join(PARTIAL_MARKER), marker.to_string().as_bytes())
}

/// The checks on the kept documents' counts (`[train, validation]`) before a tokenizer is
/// trained: an error when nothing (or, with a validation split, one document) is left. `true`
/// when one split is empty and a document must move across.
fn check_counts(config: &PrepareConfig, counts: [u64; 2], report: &PrepareReport) -> Result<bool, DataError> {
    if counts[0] + counts[1] == 0 {
        return Err(DataError::Invalid(format!("every document was dropped; nothing to train on:\n{}", report.table())));
    }
    if config.validation_fraction == 0.0 {
        return Ok(false);
    }
    if counts[0] + counts[1] < 2 {
        return Err(DataError::Invalid(format!(
            "only 1 document is left after filtering: a training and a validation split need at least 2 \
             (validation_fraction = {}; set it to 0 to train without validation):\n{}",
            config.validation_fraction,
            report.table()
        )));
    }
    Ok(counts[0] == 0 || counts[1] == 0)
}

/// Writes the manifest into the finished `partial` build and swaps it into place at `out`.
fn publish(partial: &Path, out: &Path, manifest: &Manifest) -> Result<(), DataError> {
    let json = serde_json::to_string_pretty(manifest).expect("manifest serializes");
    write_atomic(&partial.join(MANIFEST), json.as_bytes())?;
    // The manifest now marks the build as ours; the partial marker has done its job.
    std::fs::remove_file(partial.join(PARTIAL_MARKER)).map_err(|e| DataError::io(&partial.join(PARTIAL_MARKER), e))?;
    // Swap the finished folder into place, replacing only a dataset of ours (checked again: the
    // folder may have changed during the run).
    crate::owned::remove_owned(out, &DATASET_LAYOUT)?;
    std::fs::rename(partial, out).map_err(|e| DataError::io(out, e))
}

/// The scorer given must be the one the config's classifier stage needs (or none without one).
fn check_scorer(config: &PrepareConfig, scorer: Option<&dyn DocumentScorer>) -> Result<(), DataError> {
    match (config.classifier.as_ref().and_then(|c| c.classifier.as_ref()), scorer) {
        (Some(clf), None) => {
            return Err(DataError::Invalid(format!(
                "the classifier stage ({}) needs its scorer: load it with phi_classify::Scorer::load and pass it (prepare_with, tasks::run_task)",
                clf.display()
            )));
        }
        (None, Some(s)) => {
            return Err(DataError::Invalid(format!("a scorer ({}) was given but the config has no classifier stage with a classifier folder", s.describe())));
        }
        (Some(_), Some(s)) => {
            let want = config.classifier.as_ref().and_then(|c| c.head.clone());
            if let (Some(want), Some(got)) = (want, s.head()) {
                if want != got {
                    return Err(DataError::Invalid(format!("the config's classifier stage scores with the {want} head, the scorer ({}) with {got}", s.describe())));
                }
            }
        }
        (None, None) => {}
    }
    Ok(())
}

fn check_config(c: &PrepareConfig) -> Result<(), DataError> {
    let bad = |m: String| Err(DataError::Invalid(m));
    if let Some(f) = &c.classifier {
        if !f.min_score.is_finite() {
            return bad(format!("classifier min_score = {}: must be a number", f.min_score));
        }
    }
    if !(0.0..1.0).contains(&c.validation_fraction) {
        return bad(format!("validation_fraction = {} must be in [0, 1)", c.validation_fraction));
    }
    if c.shard_tokens == 0 || c.chunk_mb == 0 || c.ngram == 0 {
        return bad(format!("shard_tokens ({}), chunk_mb ({}) and ngram ({}) must be positive", c.shard_tokens, c.chunk_mb, c.ngram));
    }
    if let Some(nd) = &c.near_dedup {
        if nd.bands == 0 || nd.rows == 0 || nd.shingle == 0 || !(0.0..=1.0).contains(&nd.threshold) {
            return bad(format!("near_dedup {nd:?}: bands, rows and shingle must be positive and threshold in [0, 1]"));
        }
    }
    if let TokenizerSource::Train { vocab_size } = c.tokenizer {
        if vocab_size < 258 {
            return bad(format!("vocab_size = {vocab_size}: a byte-level BPE needs at least 258 (256 bytes + <|endoftext|> + one merge)"));
        }
    }
    Ok(())
}

/// The split key of a document: below `fraction · 2³²` it is a validation document.
fn split_key(text: &str) -> u64 {
    content_hash(text).rotate_left(17) & 0xffff_ffff
}

fn split_threshold(fraction: f64) -> u64 {
    (fraction * (1u64 << 32) as f64) as u64
}

/// One split is empty: moves the document of the other split whose key is nearest the
/// threshold across (deterministic, so reruns agree), rewriting the kept documents. Returns the
/// new counts.
fn move_one_across(kept_path: &Path, fraction: f64) -> Result<[u64; 2], DataError> {
    let (chosen, _) = nearest_to_boundary(kept_documents(kept_path)?, fraction).expect("at least two kept documents");
    let tmp = kept_path.with_extension("jsonl.tmp");
    let mut out = BufWriter::new(std::fs::File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?);
    let mut counts = [0u64; 2];
    for (i, mut k) in kept_documents(kept_path)?.enumerate() {
        if i == chosen {
            k.validation = !k.validation;
        }
        counts[k.validation as usize] += 1;
        writeln!(out, "{}", serde_json::to_string(&k).expect("serializes")).map_err(|e| DataError::io(&tmp, e))?;
    }
    out.into_inner().map_err(|e| DataError::io(&tmp, e.into_error()))?.sync_all().map_err(|e| DataError::io(&tmp, e))?;
    std::fs::rename(&tmp, kept_path).map_err(|e| DataError::io(kept_path, e))?;
    Ok(counts)
}

/// The kept document whose split key is nearest the threshold (the first of equals): its
/// position among `docs`, and its number where it has one.
fn nearest_to_boundary(docs: impl Iterator<Item = Kept>, fraction: f64) -> Option<(usize, Option<u64>)> {
    let threshold = split_threshold(fraction);
    // (distance to the threshold, position, id) of the best candidate.
    let mut best: Option<(u64, usize, Option<u64>)> = None;
    for (i, k) in docs.enumerate() {
        let key = split_key(&k.text);
        let distance = if k.validation { threshold - 1 - key } else { key - threshold };
        if best.is_none_or(|(d, _, _)| distance < d) {
            best = Some((distance, i, k.id));
        }
    }
    best.map(|(_, i, id)| (i, id))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| DataError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}

/// Why the dedup stages drop a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DupReason {
    Exact,
    Near,
}

impl DupReason {
    fn label(self) -> &'static str {
        match self {
            DupReason::Exact => "exact duplicate",
            DupReason::Near => "near duplicate",
        }
    }
}

/// Where the dedup stages' verdicts come from.
pub(crate) enum Dedup<'a> {
    /// Decided here as the documents stream by (one process): a hash set and the LSH index.
    Here,
    /// Decided beforehand over the whole corpus (preparation as tasks) for the documents of
    /// `task`: the reason to drop each dropped one, by document number. Kept documents carry
    /// their number.
    Decided {
        task: usize,
        drops: &'a HashMap<u64, DupReason>,
        digest: &'a mut xxhash_rust::xxh3::Xxh3Default,
        /// The read and quality stages already run (by the signatures task): the numbers of
        /// the documents they left and their reports, so the quality filters run once.
        read_and_quality: Option<(&'a HashSet<u64>, &'a [StageReport; 2])>,
    },
}

/// Documents are numbered in reading order, those of task `t` from `t << TASK_SHIFT` (a task
/// reads a contiguous run of the input files, so the numbers order the whole corpus as one
/// process reads it; one process is task 0).
pub(crate) const TASK_SHIFT: u32 = 40;

/// Stage 1 (read) and stage 2 (quality) on one chunk: the documents left, numbered from
/// `next_id` in reading order (every document read counts, dropped or not).
fn read_and_quality(config: &PrepareConfig, read: &mut StageReport, quality: &mut StageReport, docs: Vec<input::Doc>, next_id: &mut u64) -> Vec<Live> {
    let t = Instant::now();
    let mut live: Vec<Live> = Vec::with_capacity(docs.len());
    for d in docs {
        let id = *next_id;
        *next_id += 1;
        match d.text {
            Ok(text) if text.trim().is_empty() => read.drop_doc("empty", d.bytes, &d.origin),
            Ok(text) => {
                read.keep(text.len() as u64);
                live.push(Live { id, origin: d.origin, kind: d.kind, text, score: d.score });
            }
            Err(reason) => read.drop_doc(reason, d.bytes, &d.origin),
        }
    }
    read.seconds += t.elapsed().as_secs_f64();

    let t = Instant::now();
    let verdicts: Vec<_> = match &config.filters {
        Some(f) => live.par_iter().map(|d| f.check(&d.text, d.kind)).collect(),
        None => vec![None; live.len()],
    };
    let live = stage(quality, live, verdicts.into_iter().map(|v| v.map(|r| r.label())).collect());
    quality.seconds += t.elapsed().as_secs_f64();
    live
}

/// Stages 1–5; writes the kept documents to `kept_path`. Returns the stage reports, the
/// classifier stage's scores, and the numbers of kept training and validation documents.
fn filter_stages(
    config: &PrepareConfig,
    scorer: Option<&dyn DocumentScorer>,
    sources: &[input::SourceFile],
    kept_path: &Path,
    progress: &dyn PrepareProgress,
    dedup: Dedup,
) -> Result<(Vec<StageReport>, Option<ScoreReport>, [u64; 2]), DataError> {
    let mut read = StageReport::new("read");
    let mut quality = StageReport::new("quality");
    let mut exact = StageReport::new("exact dedup");
    let mut near = StageReport::new("near dedup");
    let mut decon = StageReport::new("decontaminate");
    let mut classify = StageReport::new("classifier");
    let mut scores = config.classifier.as_ref().map(|f| ScoreReport {
        scorer: scorer.map_or_else(|| "stored scores".to_string(), |s| s.describe()),
        min_score: f.min_score,
        ..Default::default()
    });
    let mut eval_texts = if config.decontaminate_humaneval { crate::evalsets::humaneval() } else { Vec::new() };
    for p in &config.eval_sets {
        eval_texts.extend(crate::evalsets::load(p)?);
    }
    let decontaminator = (!eval_texts.is_empty()).then(|| Decontaminator::new(&eval_texts, config.ngram));
    let mut seen = HashSet::new();
    let mut index = config.near_dedup.clone().map(NearDupIndex::new);
    let mut out = BufWriter::new(std::fs::File::create(kept_path).map_err(|e| DataError::io(kept_path, e))?);
    let mut kept = [0u64; 2];
    let total: u64 = sources.iter().map(|s| s.bytes).sum();
    let (mut next_id, decided, mut digest, done) = match dedup {
        Dedup::Here => (0, None, None, None),
        Dedup::Decided { task, drops, digest, read_and_quality } => ((task as u64) << TASK_SHIFT, Some(drops), Some(digest), read_and_quality),
    };
    let is = |id: u64, reason: DupReason| decided.and_then(|d| d.get(&id)) == Some(&reason);
    progress.start(Stage::Filter, Some((total, Unit::Bytes)));
    input::for_each_chunk(sources, config.chunk_mb as u64 * 1_000_000, |docs| {
        progress.advance(Stage::Filter, docs.iter().map(|d| d.bytes).sum());
        let live = match done {
            None => read_and_quality(config, &mut read, &mut quality, docs, &mut next_id),
            Some((left, _)) => docs
                .into_iter()
                .filter_map(|d| {
                    let id = next_id;
                    next_id += 1;
                    // A document the quality stage left that reads otherwise now fails the
                    // digest check below.
                    let text = d.text.ok().filter(|_| left.contains(&id))?;
                    Some(Live { id, origin: d.origin, kind: d.kind, text, score: d.score })
                })
                .collect(),
        };
        if let Some(digest) = digest.as_mut() {
            // The documents this task numbers, as its signatures task numbered them.
            let hashes: Vec<u64> = live.par_iter().map(|d| content_hash(&d.text)).collect();
            for (d, h) in live.iter().zip(hashes) {
                digest.update(&d.id.to_le_bytes());
                digest.update(&h.to_le_bytes());
            }
        }

        let t = Instant::now();
        let live = match (config.exact_dedup, decided) {
            (false, _) => live,
            (true, None) => {
                let hashes: Vec<u64> = live.par_iter().map(|d| content_hash(&d.text)).collect();
                let verdicts = hashes.into_iter().map(|h| (!seen.insert(h)).then_some(DupReason::Exact.label())).collect();
                stage(&mut exact, live, verdicts)
            }
            (true, Some(_)) => {
                let verdicts = live.iter().map(|d| is(d.id, DupReason::Exact).then_some(DupReason::Exact.label())).collect();
                stage(&mut exact, live, verdicts)
            }
        };
        exact.seconds += t.elapsed().as_secs_f64();

        let t = Instant::now();
        let live = match (&mut index, &config.near_dedup, decided) {
            (Some(index), Some(nd), None) => {
                let sigs: Vec<Vec<u64>> = live.par_iter().map(|d| nd.signature(&d.text)).collect();
                let verdicts = sigs.into_iter().map(|s| index.insert(s).map(|_| DupReason::Near.label())).collect();
                stage(&mut near, live, verdicts)
            }
            (_, Some(_), Some(_)) => {
                let verdicts = live.iter().map(|d| is(d.id, DupReason::Near).then_some(DupReason::Near.label())).collect();
                stage(&mut near, live, verdicts)
            }
            _ => live,
        };
        near.seconds += t.elapsed().as_secs_f64();

        let t = Instant::now();
        let live = match &decontaminator {
            Some(d) => {
                let verdicts = live.par_iter().map(|doc| d.is_contaminated(&doc.text).then_some("shares an n-gram with an eval set")).collect();
                stage(&mut decon, live, verdicts)
            }
            None => live,
        };
        decon.seconds += t.elapsed().as_secs_f64();

        let live = match (&config.classifier, &mut scores) {
            (Some(filter), Some(report)) => classifier_stage(filter, scorer, report, &mut classify, live)?,
            _ => live,
        };

        let threshold = split_threshold(config.validation_fraction);
        for Live { id, text, score, .. } in live {
            // A `score` field of the input (labels, upvotes) is not a classifier's score: it is
            // not carried into documents.jsonl, where a later --min-score would filter on it.
            let score = score.filter(|_| config.classifier.is_some());
            let validation = split_key(&text) < threshold;
            kept[validation as usize] += 1;
            let id = decided.map(|_| id);
            let line = serde_json::to_string(&Kept { validation, text, score, id }).expect("serializes");
            writeln!(out, "{line}").map_err(|e| DataError::io(kept_path, e))?;
        }
        Ok(())
    })?;
    progress.finish(Stage::Filter);
    out.into_inner().map_err(|e| DataError::io(kept_path, e.into_error()))?.sync_all().map_err(|e| DataError::io(kept_path, e))?;
    if let Some((_, [r, q])) = done {
        (read, quality) = (r.clone(), q.clone());
    }
    let mut stages = vec![read];
    if config.filters.is_some() {
        stages.push(quality);
    }
    if config.exact_dedup {
        stages.push(exact);
    }
    if config.near_dedup.is_some() {
        stages.push(near);
    }
    if decontaminator.is_some() {
        stages.push(decon);
    }
    if let Some(s) = &mut scores {
        s.seconds = classify.seconds;
        s.documents_per_second = (s.kept + s.dropped) as f64 / classify.seconds.max(1e-9);
        stages.push(classify);
    }
    Ok((stages, scores, kept))
}

/// Stage 5 on one chunk: scores (from the scorer in batches, or the documents' stored scores)
/// and drops those below the threshold; kept documents carry their score on.
fn classifier_stage(
    filter: &ScoreFilter,
    scorer: Option<&dyn DocumentScorer>,
    report: &mut ScoreReport,
    stage_report: &mut StageReport,
    live: Vec<Live>,
) -> Result<Vec<Live>, DataError> {
    let t = Instant::now();
    let scored: Vec<Option<f32>> = match scorer {
        Some(s) => {
            let mut out = Vec::with_capacity(live.len());
            for batch in live.chunks(s.batch().max(1)) {
                let texts: Vec<&str> = batch.iter().map(|d| d.text.as_str()).collect();
                let got = s.score(&texts).map_err(|e| DataError::Invalid(format!("classifier stage ({}): {e}", s.describe())))?;
                if got.len() != texts.len() {
                    return Err(DataError::Invalid(format!("classifier stage ({}): {} scores for {} documents", s.describe(), got.len(), texts.len())));
                }
                if let Some((d, v)) = batch.iter().zip(&got).find(|(_, v)| !v.is_finite()) {
                    return Err(DataError::Invalid(format!("classifier stage ({}): the score of {} is {v}", s.describe(), d.origin)));
                }
                out.extend(got.into_iter().map(Some));
            }
            out
        }
        None => live.iter().map(|d| d.score).collect(),
    };
    let mut verdicts = Vec::with_capacity(live.len());
    let mut live = live;
    for (d, s) in live.iter_mut().zip(scored) {
        d.score = s.filter(|s| s.is_finite());
        verdicts.push(match d.score {
            None if s.is_some() => Some("score is not a number"),
            None => Some("no stored score"),
            Some(s) => {
                let keep = s >= filter.min_score;
                report.book(&d.origin, s, keep);
                (!keep).then_some("score below min_score")
            }
        });
    }
    let live = stage(stage_report, live, verdicts);
    stage_report.seconds += t.elapsed().as_secs_f64();
    Ok(live)
}

/// Books one stage: `verdicts[i]` is the reason to drop document `i`, if any.
fn stage(report: &mut StageReport, docs: Vec<Live>, verdicts: Vec<Option<&'static str>>) -> Vec<Live> {
    docs.into_iter()
        .zip(verdicts)
        .filter_map(|(d, v)| match v {
            Some(reason) => {
                report.drop_doc(reason, d.text.len() as u64, &d.origin);
                None
            }
            None => {
                report.keep(d.text.len() as u64);
                Some(d)
            }
        })
        .collect()
}

/// A document still in the running.
struct Live {
    /// Its number (see [`TASK_SHIFT`]).
    id: u64,
    origin: String,
    kind: crate::filters::DocKind,
    text: String,
    /// The classifier's (or, before stage 5, the input record's stored) score.
    score: Option<f32>,
}

fn kept_documents(path: &Path) -> Result<impl Iterator<Item = Kept> + Send + use<>, DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    Ok(BufReader::with_capacity(1 << 20, file)
        .lines()
        .map_while(Result::ok)
        .map(|l| serde_json::from_str::<Kept>(&l).expect("written by this module")))
}

/// Rolls shards of one split: a new file once the current one passes `shard_tokens`.
struct SplitWriter {
    dir: PathBuf,
    /// Shard files are `{name}-00000.bin`, `{name}-00001.bin`, …
    name: String,
    vocab_size: usize,
    shard_tokens: usize,
    current: Option<ShardWriter>,
    done: Vec<ShardInfo>,
    documents: u64,
}

impl SplitWriter {
    fn write_document(&mut self, tokens: &[u32], eos: u32) -> Result<(), DataError> {
        if self.current.is_none() {
            let path = self.dir.join(format!("{}-{:05}.bin", self.name, self.done.len()));
            self.current = Some(ShardWriter::create(path, self.vocab_size)?);
        }
        let w = self.current.as_mut().expect("just opened");
        w.write(tokens)?;
        w.write(&[eos])?;
        self.documents += 1;
        if w.len() as usize >= self.shard_tokens {
            self.done.push(self.current.take().expect("open").finish()?);
        }
        Ok(())
    }

    fn finish(mut self) -> Result<SplitEntry, DataError> {
        if let Some(w) = self.current.take() {
            self.done.push(w.finish()?);
        }
        let shards: Vec<ShardEntry> = self
            .done
            .iter()
            .map(|s| ShardEntry {
                file: s.path.file_name().expect("named").to_string_lossy().into(),
                tokens: s.tokens,
                checksum: format!("{:016x}", s.checksum),
            })
            .collect();
        Ok(SplitEntry { documents: self.documents, tokens: shards.iter().map(|s| s.tokens).sum(), shards })
    }
}

/// Tokenizes the kept documents in parallel chunks into the two splits' shards, named
/// `{names[0]}-00000.bin`… (train) and `{names[1]}-…` (validation); the document numbered `flip`
/// (if any) goes to the other split.
#[allow(clippy::too_many_arguments)]
fn tokenize(
    config: &PrepareConfig,
    tokenizer: &Tokenizer,
    eos: u32,
    kept_path: &Path,
    dir: &Path,
    names: &[String; 2],
    flip: Option<u64>,
    documents: u64,
    progress: &dyn PrepareProgress,
) -> Result<BTreeMap<String, SplitEntry>, DataError> {
    let writer = |name: &String| SplitWriter {
        dir: dir.to_path_buf(),
        name: name.clone(),
        vocab_size: tokenizer.vocab_size(),
        shard_tokens: config.shard_tokens,
        current: None,
        done: Vec::new(),
        documents: 0,
    };
    let mut writers = [writer(&names[0]), writer(&names[1])];
    progress.start(Stage::Tokenize, Some((documents, Unit::Documents)));
    let mut docs = kept_documents(kept_path)?.peekable();
    let chunk_bytes = config.chunk_mb * 1_000_000;
    while docs.peek().is_some() {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        while bytes < chunk_bytes {
            let Some(mut k) = docs.next() else { break };
            if flip.is_some() && k.id == flip {
                k.validation = !k.validation;
            }
            bytes += k.text.len();
            chunk.push(k);
        }
        let encoded: Vec<Vec<u32>> = chunk.par_iter().map(|k| tokenizer.encode(&k.text)).collect();
        for (k, ids) in chunk.iter().zip(encoded) {
            writers[k.validation as usize].write_document(&ids, eos)?;
        }
        progress.advance(Stage::Tokenize, chunk.len() as u64);
    }
    progress.finish(Stage::Tokenize);
    let [train, validation] = writers;
    Ok(BTreeMap::from([("train".to_string(), train.finish()?), ("validation".to_string(), validation.finish()?)]))
}
