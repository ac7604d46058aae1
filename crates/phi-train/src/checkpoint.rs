//! Training checkpoints: one directory per step, written to a temporary name and renamed only
//! when complete, so an interrupted write is never mistaken for a checkpoint.
//!
//! ```text
//! out/checkpoints/step-00000100/
//!   config.json, model.safetensors   HF layout: `phi generate` and transformers load it as is
//!   (LoRA runs: adapter_config.json, adapter_model.safetensors, the PEFT adapter alone)
//!   optimizer.bin                     AdamW moments (burn's optimizer record)
//!   trainer_state.json                step, sampler state, schedule, training config, model
//!                                     config and data fingerprint (what makes it the same run)
//!   checkpoint.json                   the completion marker: written last, lists every file
//!                                     with its size and XXH3-64 checksum
//! ```
//!
//! A checkpoint is complete only when `checkpoint.json` says so: a folder without it (a write
//! or a deletion that was cut short, or a checkpoint of a version before the marker) is never
//! resumed from; resuming passes over it with a warning, and a run that reaches its step
//! replaces it. Resuming checks every listed file against its size and checksum and loads the
//! weights only if they are all finite; a checkpoint that fails is passed over, with a warning
//! saying what was wrong, for the newest one before it that passes. Markers of version 1 (before
//! checksums) record sizes only: those checkpoints are still resumed, checked by size.
//!
//! Old checkpoints are retired by renaming them to a `.tmp-step-*` name first (one atomic step
//! that takes them out of the listing) and deleting that afterwards; `.tmp-step-*` folders left
//! by a crash are removed when the next run starts. Nothing is removed or replaced unless it is
//! ours ([`phi_data::owned`]): a `step-*` or `.tmp-step-*` folder under `checkpoints/` holding
//! anything but the files a checkpoint holds is left alone, with an error or warning that names
//! it.

use std::fs;
use std::path::{Path, PathBuf};

use phi_data::owned::{self, Layout, Marker};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

const PREFIX: &str = "step-";
const TMP_PREFIX: &str = ".tmp-step-";

/// The folder of a run's output folder that holds its checkpoints (`OUT/checkpoints`).
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// The completion marker of a checkpoint.
pub const MARKER: &str = "checkpoint.json";
/// The model's HF config (full-parameter checkpoints, and exported model folders).
pub const CONFIG_FILE: &str = "config.json";
/// The model's weights, HF safetensors (full-parameter checkpoints, exported model folders).
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// A LoRA checkpoint's (and a PEFT adapter folder's) adapter config and weights (named where
/// LoRA is, in phi-core).
pub use phi_core::lora::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
/// The AdamW moments (burn's optimizer record).
pub const OPTIMIZER_FILE: &str = "optimizer.bin";
/// [`TrainerState`] as JSON.
pub const STATE_FILE: &str = "trainer_state.json";
/// The tokenizer, added to a checkpoint by the recipes so that it is a usable model folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The generation config, which exports add.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
/// Every file a checkpoint folder may hold.
pub const CHECKPOINT_FILES: &[&str] =
    &[MARKER, CONFIG_FILE, WEIGHTS_FILE, OPTIMIZER_FILE, STATE_FILE, TOKENIZER_FILE, GENERATION_CONFIG_FILE, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE];

/// A run's output folder: one line of metrics per step.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// A run's output folder: the loss curve drawn at the end.
pub const LOSS_CURVE_FILE: &str = "loss.png";
/// A run's output folder: a curriculum's tokens per dataset per stage.
pub const DATA_REPORT_FILE: &str = "data_report.json";
pub const FORMAT: &str = "phi-checkpoint";
/// 2: every file's checksum in the marker; 1: sizes only (still resumed).
pub const VERSION: u32 = 2;
/// The markers a complete checkpoint may carry, newest first.
const MARKERS: &[Marker] = &[Marker { file: MARKER, format: FORMAT, version: VERSION }, Marker { file: MARKER, format: FORMAT, version: 1 }];

/// What may change when a run resumes: how long it runs and its schedule (training longer is
/// what resuming is for), how it is observed and saved, and how the same arithmetic is carried
/// out. Every other field of [`crate::TrainConfig`] (batch size, sequence length, gradient
/// accumulation, seed, optimizer, clipping, and fields added later) defines the run.
pub const MAY_CHANGE_ON_RESUME: &[&str] = &[
    "max_steps",
    "schedule",
    "eval_every",
    "eval_batches",
    "checkpoint_every",
    "keep_checkpoints",
    "peak_flops",
    "activation_checkpointing",
    "precision",
    "loss_scaler",
    "on_non_finite",
    "zero",
];

/// What a checkpoint needs besides the weights and optimizer moments to continue exactly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    /// The objective's data cursor ([`crate::Objective::state`]).
    pub sampler: serde_json::Value,
    pub config: crate::TrainConfig,
    /// Tokens consumed so far.
    pub tokens_seen: u64,
    /// The f16 loss scale where it stood (`None` for f32/bf16 runs).
    #[serde(default)]
    pub loss_scaler: Option<crate::LossScaler>,
    /// The model config the run trains (its `config.json` form).
    pub model: serde_json::Value,
    /// The fingerprint of the training mixture and validation data ([`data_fingerprint`]).
    pub data: String,
}

/// What identifies a run's data: the mixture's datasets (token checksums) and weights, and the
/// validation data. A retrained tokenizer changes the token ids, hence this.
pub fn data_fingerprint(train: &phi_data::Mixture, validation: &phi_data::TokenDataset) -> String {
    format!("train {} / validation {:016x}", train.fingerprint(), validation.fingerprint())
}

impl TrainerState {
    /// `Ok` when this checkpoint (in `dir`) belongs to the run described by `model`, `config`
    /// and `data`; otherwise an error listing every difference.
    pub fn check_same_run(&self, dir: &Path, model: &serde_json::Value, config: &crate::TrainConfig, data: &str) -> Result<()> {
        let mut diffs = Vec::new();
        diff_json("model.", &self.model, model, &[], &mut diffs);
        let saved = serde_json::to_value(&self.config).expect("config serializes");
        let now = serde_json::to_value(config).expect("config serializes");
        diff_json("", &saved, &now, MAY_CHANGE_ON_RESUME, &mut diffs);
        if self.data != data {
            diffs.push(format!("data: {} in the checkpoint, {data} now (other corpus, tokenizer, shards or mixture weights)", self.data));
        }
        if diffs.is_empty() {
            return Ok(());
        }
        Err(TrainError::NotResumable(format!(
            "{}: cannot resume, this is not the same run:\n  {}\nOnly these may change on resume: {}.",
            dir.display(),
            diffs.join("\n  "),
            MAY_CHANGE_ON_RESUME.join(", ")
        )))
    }
}

/// Differences between two JSON values as `key: old in the checkpoint, new now`, skipping the
/// top-level keys in `skip`.
fn diff_json(prefix: &str, old: &serde_json::Value, new: &serde_json::Value, skip: &[&str], out: &mut Vec<String>) {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys.into_iter().filter(|k| !skip.contains(&k.as_str())) {
                let (x, y) = (a.get(k).unwrap_or(&Value::Null), b.get(k).unwrap_or(&Value::Null));
                diff_json(&format!("{prefix}{k}."), x, y, &[], out);
            }
        }
        _ if old != new => out.push(format!("{}: {old} in the checkpoint, {new} now", prefix.trim_end_matches('.'))),
        _ => {}
    }
}

/// A `step-*` folder under `checkpoints/`: a checkpoint, complete (with its marker) or not (a
/// write, deletion or `--fresh` cut short). Its name in our folder says it is ours; every entry
/// must still be a checkpoint file, so one holding a file of the user's is never replaced.
pub static CHECKPOINT_LAYOUT: Layout = Layout {
    what: "a phi checkpoint (a step-* folder of checkpoint files only)",
    markers: &[],
    file: is_checkpoint_file,
    dir: |_| None,
};

/// A `.tmp-step-*` folder: a checkpoint being written or retired. Its name says it is ours;
/// every entry must still be a checkpoint file.
pub static TMP_LAYOUT: Layout = Layout {
    what: "a checkpoint being written or removed (.tmp-step-*)",
    markers: &[],
    file: is_checkpoint_file,
    dir: |_| None,
};

/// `out/checkpoints`: checkpoints of ours and nothing else.
pub static ROOT_LAYOUT: Layout = Layout {
    what: "a folder of phi checkpoints only",
    markers: &[],
    file: |_| false,
    dir: |name| {
        if name.starts_with(TMP_PREFIX) {
            Some(&TMP_LAYOUT)
        } else if step_of(name).is_some() {
            Some(&CHECKPOINT_LAYOUT)
        } else {
            None
        }
    },
};

/// The files a checkpoint folder holds (the tokenizer and generation config are added by
/// recipes and exports), and the temporaries of their atomic writes.
fn is_checkpoint_file(name: &str) -> bool {
    CHECKPOINT_FILES.contains(&name.strip_suffix(".tmp").unwrap_or(name))
}

fn step_of(name: &str) -> Option<usize> {
    let digits = name.strip_prefix(PREFIX)?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

/// The error for `dir`, a checkpoint folder (or one being written or removed) that is not ours
/// to replace or remove: the [`phi_data::DataError`] says what in it is not.
fn not_ours(dir: &Path) -> impl Fn(phi_data::DataError) -> TrainError + '_ {
    move |e| TrainError::checkpoint(dir, e.to_string())
}

/// `dir/step-00000042`.
pub fn checkpoint_dir(root: &Path, step: usize) -> PathBuf {
    root.join(format!("{PREFIX}{step:08}"))
}

/// Every `step-*` folder under `root`, oldest first, with its marker (or why it has none that
/// is valid: such a folder is an incomplete checkpoint).
fn step_folders(root: &Path) -> Vec<(usize, PathBuf, std::result::Result<serde_json::Value, String>)> {
    let Ok(entries) = fs::read_dir(root) else { return vec![] };
    let mut found: Vec<_> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let step = step_of(e.file_name().to_str()?)?;
            let path = e.path();
            let marker = read_marker(&path);
            Some((step, path, marker))
        })
        .collect();
    found.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    found
}

/// The marker of `dir`, of any version we read.
fn read_marker(dir: &Path) -> std::result::Result<serde_json::Value, String> {
    let mut first_error = None;
    for m in MARKERS {
        match owned::read_marker(dir, m) {
            Ok(v) => return Ok(v),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_default())
}

/// Complete checkpoints under `root` (a `step-*` folder with a valid marker), oldest first.
/// Temporary folders and anything without the marker are ignored.
pub fn list(root: &Path) -> Vec<(usize, PathBuf)> {
    step_folders(root).into_iter().filter(|f| f.2.is_ok()).map(|(step, path, _)| (step, path)).collect()
}

/// The newest complete checkpoint, if any.
pub fn latest(root: &Path) -> Option<PathBuf> {
    list(root).pop().map(|(_, p)| p)
}

/// Every file of `dir` is there with the size and checksum its marker recorded (a truncated,
/// missing or altered file is an error naming it). A version-1 marker records sizes only.
pub fn verify(dir: &Path) -> Result<()> {
    let marker_path = dir.join(MARKER);
    let marker = read_marker(dir).map_err(|why| TrainError::checkpoint(&marker_path, why))?;
    let bad = |what: String| TrainError::checkpoint(&marker_path, format!("{}: {what}", marker_path.display()));
    let files = marker.get("files").and_then(|f| f.as_object()).ok_or_else(|| bad("no \"files\"".into()))?;
    let with_checksums = marker.get("version").and_then(|v| v.as_u64()) == Some(VERSION as u64);
    for (name, entry) in files {
        // The marker names files of this folder only; anything else is not a marker of ours.
        if !is_checkpoint_file(name) {
            return Err(bad(format!("lists {name:?}, which is not a checkpoint file")));
        }
        let (size, checksum) = match (with_checksums, entry) {
            (true, serde_json::Value::Object(e)) => (e.get("bytes").and_then(|b| b.as_u64()), e.get("xxh3").and_then(|c| c.as_str())),
            (false, e) => (e.as_u64(), None),
            (true, _) => (None, None),
        };
        let size = size.ok_or_else(|| bad(format!("files.{name} = {entry} is not a recorded size{}", if with_checksums { " and checksum" } else { "" })))?;
        let path = dir.join(name);
        let actual = fs::metadata(&path).map_err(|e| TrainError::io(&path, e))?.len();
        if actual != size {
            return Err(TrainError::checkpoint(&path, format!("{}: {actual} bytes, the checkpoint marker recorded {size}", path.display())));
        }
        if with_checksums {
            let want = checksum.ok_or_else(|| bad(format!("files.{name} has no \"xxh3\"")))?;
            let got = checksum_of(&path)?;
            if got != want {
                return Err(TrainError::checkpoint(
                    &path,
                    format!("{}: checksum {got}, the checkpoint marker recorded {want} (the file changed after it was written)", path.display()),
                ));
            }
        }
    }
    Ok(())
}

/// XXH3-64 of a file's bytes, hex, read in pieces (weights can be gigabytes).
fn checksum_of(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    let mut h = xxhash_rust::xxh3::Xxh3Default::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| TrainError::io(path, e))?;
        if n == 0 {
            return Ok(format!("{:016x}", h.digest()));
        }
        h.update(&buf[..n]);
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = fs::File::create(path).map_err(|e| TrainError::io(path, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| TrainError::io(path, e))
}

/// Writes a checkpoint through `write_contents` into a temporary directory, syncs it, writes the
/// completion marker, renames it to its final name, then keeps only the newest `keep`
/// checkpoints. An old checkpoint that may not be removed costs disk, not the run: that is a
/// warning, pushed onto `warnings` (and emitted with `tracing::warn!`).
pub fn save(root: &Path, step: usize, keep: usize, write_contents: impl FnOnce(&Path) -> Result<()>, warnings: &mut Vec<String>) -> Result<PathBuf> {
    fs::create_dir_all(root).map_err(|e| TrainError::io(root, e))?;
    let final_dir = checkpoint_dir(root, step);
    // A folder already at the final name (a run that resumed from an earlier checkpoint, or an
    // empty one) is replaced only if it is ours: checked before the work, removed after it.
    let cannot_write = |e: phi_data::DataError| TrainError::checkpoint(&final_dir, format!("cannot write checkpoint {step}: {e}"));
    owned::check(&final_dir, &CHECKPOINT_LAYOUT).map_err(cannot_write)?;
    let tmp = root.join(format!("{TMP_PREFIX}{step:08}-{}", std::process::id()));
    owned::remove_owned(&tmp, &TMP_LAYOUT).map_err(not_ours(&tmp))?;
    fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    let written = write_contents(&tmp).and_then(|_| {
        let mut files = serde_json::Map::new();
        for entry in fs::read_dir(&tmp).map_err(|e| TrainError::io(&tmp, e))? {
            let path = entry.map_err(|e| TrainError::io(&tmp, e))?.path();
            let f = fs::File::open(&path).map_err(|e| TrainError::io(&path, e))?;
            f.sync_all().map_err(|e| TrainError::io(&path, e))?;
            let bytes = f.metadata().map_err(|e| TrainError::io(&path, e))?.len();
            let entry = serde_json::json!({ "bytes": bytes, "xxh3": checksum_of(&path)? });
            files.insert(path.file_name().expect("named").to_string_lossy().into_owned(), entry);
        }
        // Last: the marker that makes it a complete checkpoint.
        let marker = serde_json::json!({ "format": FORMAT, "version": VERSION, "step": step, "files": files });
        write_synced(&tmp.join(MARKER), serde_json::to_string_pretty(&marker).expect("serializes").as_bytes())
    });
    if let Err(e) = written {
        // Our own half-written folder; the next start would clear it too.
        let _ = owned::remove_owned(&tmp, &TMP_LAYOUT);
        return Err(e);
    }
    remove_checkpoint(&final_dir).map_err(cannot_write)?;
    fs::rename(&tmp, &final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
    if let Ok(d) = fs::File::open(root) {
        let _ = d.sync_all();
    }
    let all = list(root);
    for (old_step, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        if let Err(e) = retire(root, *old_step, old) {
            // The new checkpoint is safe; an old one we may not delete costs disk, not the run.
            warn(warnings, format!("old checkpoint not removed: {e}"));
        }
    }
    Ok(final_dir)
}

/// Removes an old checkpoint: renamed to a `.tmp-step-*` name first (atomic: from then on it is
/// not a checkpoint, and a kill during the deletion leaves a folder the next start clears),
/// then deleted entry by entry.
fn retire(root: &Path, step: usize, dir: &Path) -> Result<()> {
    owned::check(dir, &CHECKPOINT_LAYOUT).map_err(not_ours(dir))?;
    let doomed = root.join(format!("{TMP_PREFIX}{step:08}-{}-old", std::process::id()));
    owned::remove_owned(&doomed, &TMP_LAYOUT).map_err(not_ours(&doomed))?;
    fs::rename(dir, &doomed).map_err(|e| TrainError::io(dir, e))?;
    owned::remove_owned(&doomed, &TMP_LAYOUT).map_err(not_ours(&doomed))
}

/// Removes the `.tmp-step-*` folders under `root` that a crashed write or deletion left, if
/// they are ours; returns a warning for each one that is not (it is left as it is), also
/// emitted with `tracing::warn!`.
pub fn remove_stale_tmp(root: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(root) else { return vec![] };
    let mut warnings = Vec::new();
    for e in entries.filter_map(|e| e.ok()) {
        if e.file_name().to_str().is_some_and(|n| n.starts_with(TMP_PREFIX)) {
            if let Err(err) = owned::remove_owned(&e.path(), &TMP_LAYOUT) {
                warn(&mut warnings, format!("stale checkpoint folder not removed: {err}"));
            }
        }
    }
    warnings
}

/// Removes `root` and the checkpoints in it (`--fresh`), only if everything there is ours;
/// otherwise an error naming what is not, with nothing removed.
pub fn remove_all(root: &Path) -> Result<()> {
    let refuse = |e: phi_data::DataError| TrainError::checkpoint(root, format!("cannot start over in {}: {e}", root.display()));
    owned::check(root, &ROOT_LAYOUT).map_err(refuse)?;
    // Every marker first: a removal cut short leaves incomplete checkpoints, never one that
    // claims to be complete with files missing.
    for (_, dir, _) in step_folders(root) {
        remove_marker(&dir)?;
    }
    owned::remove_owned(root, &ROOT_LAYOUT).map_err(refuse)
}

/// Removes a `step-*` folder of ours (absent or empty is fine), its marker first.
fn remove_checkpoint(dir: &Path) -> std::result::Result<(), phi_data::DataError> {
    if owned::check(dir, &CHECKPOINT_LAYOUT)? == owned::Ownership::Ours {
        remove_marker(dir).map_err(|e| phi_data::DataError::Invalid(e.to_string()))?;
    }
    owned::remove_owned(dir, &CHECKPOINT_LAYOUT)
}

fn remove_marker(dir: &Path) -> Result<()> {
    let path = dir.join(MARKER);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(TrainError::io(&path, e)),
        _ => Ok(()),
    }
}

/// A checkpoint a run resumes from.
pub struct Resumed<T> {
    pub dir: PathBuf,
    pub state: TrainerState,
    /// What `load` made of it (the model and optimizer).
    pub loaded: T,
}

/// The newest complete checkpoint under `root` whose files match their checksums and that
/// `load` can read, falling back to older ones when not (each skip is a warning pushed onto
/// `warnings` and emitted with `tracing::warn!`, saying what was wrong). Incomplete `step-*` folders newer than it
/// (no valid `checkpoint.json`) are passed over with a warning too. A checkpoint that reads but
/// belongs to another run (`same_run` fails) is an error, not a reason to fall back. `None`
/// when there is no complete checkpoint; an error when there are some and none can be read.
pub fn resume_newest<T>(
    root: &Path,
    same_run: impl Fn(&Path, &TrainerState) -> Result<()>,
    mut load: impl FnMut(&Path) -> Result<T>,
    warnings: &mut Vec<String>,
) -> Result<Option<Resumed<T>>> {
    let all = step_folders(root);
    let mut skipped = Vec::new();
    for (_, dir, marker) in all.iter().rev() {
        if let Err(why) = marker {
            let why = if dir.join(MARKER).exists() { format!("its {MARKER} is not valid: {why}") } else { format!("no {MARKER}") };
            let then = match owned::check(dir, &CHECKPOINT_LAYOUT) {
                Ok(_) => "replaced when the run reaches its step".to_string(),
                Err(e) => format!("it is not ours to replace ({e}), so the run will stop at its step unless you move it"),
            };
            warn(warnings, format!("checkpoint {} is incomplete ({why}); passed over, {then}", dir.display()));
            continue;
        }
        let attempt = verify(dir).and_then(|_| read_state(dir));
        let state = match attempt {
            Ok(s) => s,
            Err(e) => {
                skipped.push(skip(dir, e, warnings));
                continue;
            }
        };
        same_run(dir, &state)?;
        match load(dir) {
            Ok(loaded) => return Ok(Some(Resumed { dir: dir.clone(), state, loaded })),
            Err(e) => skipped.push(skip(dir, e, warnings)),
        }
    }
    if skipped.is_empty() {
        return Ok(None);
    }
    Err(TrainError::NotResumable(format!(
        "{}: no checkpoint could be read:\n  {}",
        root.display(),
        skipped.join("\n  ")
    )))
}

fn skip(dir: &Path, e: TrainError, warnings: &mut Vec<String>) -> String {
    warn(warnings, format!("checkpoint {} is not resumed from ({e}); falling back to the one before it", dir.display()));
    format!("{}: {e}", dir.display())
}

/// A warning of a run: emitted with `tracing::warn!` as it happens (a long load can follow) and
/// kept for the caller ([`crate::TrainOutcome`]'s `resume_warnings` and `warnings`). The library
/// prints nothing itself.
pub(crate) fn warn(warnings: &mut Vec<String>, w: String) {
    tracing::warn!("{w}");
    warnings.push(w);
}

/// The [`TrainerState`] of the checkpoint in `dir` (its [`STATE_FILE`]).
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(STATE_FILE);
    let text = fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::checkpoint(&path, format!("{}: {e}", path.display())))
}
