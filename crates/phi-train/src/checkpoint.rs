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
//!                                     with its size
//! ```
//!
//! A checkpoint is complete only when `checkpoint.json` says so: a folder without it (a write
//! or a deletion that was cut short, or a checkpoint of a version before the marker) is never
//! resumed from. Old checkpoints are retired by renaming them to a `.tmp-step-*` name first (one
//! atomic step that takes them out of the listing) and deleting that afterwards; `.tmp-step-*`
//! folders left by a crash are removed when the next run starts. Nothing is removed or replaced
//! unless it is ours ([`phi_data::owned`]): a folder holding anything we never write is left
//! alone, with an error or warning that names it.

use std::fs;
use std::path::{Path, PathBuf};

use phi_data::owned::{self, Layout, Marker};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

const PREFIX: &str = "step-";
const TMP_PREFIX: &str = ".tmp-step-";
/// The completion marker of a checkpoint.
pub const MARKER: &str = "checkpoint.json";
pub const FORMAT: &str = "phi-checkpoint";
pub const VERSION: u32 = 1;

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
        Err(TrainError::Invalid(format!(
            "{}: cannot resume, this is not the same run:\n  {}\nStart over with --fresh (Start::Scratch) or use another output folder. \
             Only these may change on resume: {}.",
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

/// A complete checkpoint: our marker, and only the files a checkpoint holds.
pub static CHECKPOINT_LAYOUT: Layout = Layout {
    what: "a phi checkpoint (with its checkpoint.json marker)",
    markers: &[Marker { file: MARKER, format: FORMAT, version: VERSION }],
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
    const FILES: &[&str] =
        &[MARKER, "config.json", "model.safetensors", "optimizer.bin", "trainer_state.json", "tokenizer.json", "generation_config.json", "adapter_config.json", "adapter_model.safetensors"];
    FILES.contains(&name.strip_suffix(".tmp").unwrap_or(name))
}

fn step_of(name: &str) -> Option<usize> {
    let digits = name.strip_prefix(PREFIX)?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

fn invalid(e: phi_data::DataError) -> TrainError {
    TrainError::Invalid(e.to_string())
}

/// `dir/step-00000042`.
pub fn checkpoint_dir(root: &Path, step: usize) -> PathBuf {
    root.join(format!("{PREFIX}{step:08}"))
}

/// Complete checkpoints under `root` (a `step-*` folder with a valid marker), oldest first.
/// Temporary folders and anything without the marker are ignored.
pub fn list(root: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = fs::read_dir(root) else { return vec![] };
    let mut found: Vec<(usize, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let step = step_of(e.file_name().to_str()?)?;
            let path = e.path();
            owned::read_marker(&path, &CHECKPOINT_LAYOUT.markers[0]).is_ok().then_some((step, path))
        })
        .collect();
    found.sort();
    found
}

/// The newest complete checkpoint, if any.
pub fn latest(root: &Path) -> Option<PathBuf> {
    list(root).pop().map(|(_, p)| p)
}

/// Every file of `dir` is there with the size its marker recorded (a truncated or missing file
/// is an error naming it).
pub fn verify(dir: &Path) -> Result<()> {
    let marker = owned::read_marker(dir, &CHECKPOINT_LAYOUT.markers[0]).map_err(TrainError::Invalid)?;
    let files = marker.get("files").and_then(|f| f.as_object()).ok_or_else(|| TrainError::Invalid(format!("{}: no \"files\"", dir.join(MARKER).display())))?;
    for (name, size) in files {
        let path = dir.join(name);
        let actual = fs::metadata(&path).map_err(|e| TrainError::io(&path, e))?.len();
        if Some(actual) != size.as_u64() {
            return Err(TrainError::Invalid(format!("{}: {actual} bytes, the checkpoint marker recorded {size}", path.display())));
        }
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = fs::File::create(path).map_err(|e| TrainError::io(path, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| TrainError::io(path, e))
}

/// Writes a checkpoint through `write_contents` into a temporary directory, syncs it, writes the
/// completion marker, renames it to its final name, then keeps only the newest `keep`
/// checkpoints.
pub fn save(root: &Path, step: usize, keep: usize, write_contents: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    fs::create_dir_all(root).map_err(|e| TrainError::io(root, e))?;
    let final_dir = checkpoint_dir(root, step);
    // A folder already at the final name (a run that resumed from an earlier checkpoint, or an
    // empty one) is replaced only if it is ours: checked before the work, removed after it.
    let not_ours = |e: phi_data::DataError| TrainError::Invalid(format!("cannot write checkpoint {step}: {e}"));
    owned::check(&final_dir, &CHECKPOINT_LAYOUT).map_err(not_ours)?;
    let tmp = root.join(format!("{TMP_PREFIX}{step:08}-{}", std::process::id()));
    owned::remove_owned(&tmp, &TMP_LAYOUT).map_err(invalid)?;
    fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    let written = write_contents(&tmp).and_then(|_| {
        let mut files = serde_json::Map::new();
        for entry in fs::read_dir(&tmp).map_err(|e| TrainError::io(&tmp, e))? {
            let path = entry.map_err(|e| TrainError::io(&tmp, e))?.path();
            let f = fs::File::open(&path).map_err(|e| TrainError::io(&path, e))?;
            f.sync_all().map_err(|e| TrainError::io(&path, e))?;
            let size = f.metadata().map_err(|e| TrainError::io(&path, e))?.len();
            files.insert(path.file_name().expect("named").to_string_lossy().into_owned(), size.into());
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
    owned::remove_owned(&final_dir, &CHECKPOINT_LAYOUT).map_err(not_ours)?;
    fs::rename(&tmp, &final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
    if let Ok(d) = fs::File::open(root) {
        let _ = d.sync_all();
    }
    let all = list(root);
    for (old_step, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        if let Err(e) = retire(root, *old_step, old) {
            // The new checkpoint is safe; an old one we may not delete costs disk, not the run.
            eprintln!("warning: old checkpoint not removed: {e}");
        }
    }
    Ok(final_dir)
}

/// Removes an old checkpoint: renamed to a `.tmp-step-*` name first (atomic: from then on it is
/// not a checkpoint, and a kill during the deletion leaves a folder the next start clears),
/// then deleted entry by entry.
fn retire(root: &Path, step: usize, dir: &Path) -> Result<()> {
    owned::check(dir, &CHECKPOINT_LAYOUT).map_err(invalid)?;
    let doomed = root.join(format!("{TMP_PREFIX}{step:08}-{}-old", std::process::id()));
    owned::remove_owned(&doomed, &TMP_LAYOUT).map_err(invalid)?;
    fs::rename(dir, &doomed).map_err(|e| TrainError::io(dir, e))?;
    owned::remove_owned(&doomed, &TMP_LAYOUT).map_err(invalid)
}

/// Removes the `.tmp-step-*` folders under `root` that a crashed write or deletion left, if
/// they are ours; returns a warning for each one that is not (it is left as it is).
pub fn remove_stale_tmp(root: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(root) else { return vec![] };
    let mut warnings = Vec::new();
    for e in entries.filter_map(|e| e.ok()) {
        if e.file_name().to_str().is_some_and(|n| n.starts_with(TMP_PREFIX)) {
            if let Err(err) = owned::remove_owned(&e.path(), &TMP_LAYOUT) {
                warnings.push(format!("stale checkpoint folder not removed: {err}"));
            }
        }
    }
    warnings
}

/// Removes `root` and the checkpoints in it (`--fresh`), only if everything there is ours;
/// otherwise an error naming what is not, with nothing removed.
pub fn remove_all(root: &Path) -> Result<()> {
    owned::remove_owned(root, &ROOT_LAYOUT).map_err(|e| TrainError::Invalid(format!("cannot start over in {}: {e}", root.display())))
}

/// A checkpoint a run resumes from.
pub struct Resumed<T> {
    pub dir: PathBuf,
    pub state: TrainerState,
    /// What `load` made of it (the model and optimizer).
    pub loaded: T,
}

/// The newest complete checkpoint under `root` that `load` can read, falling back to older
/// ones when it cannot (each skip is printed as a warning and pushed onto `warnings`). A
/// checkpoint that reads but belongs to another run (`same_run` fails) is an error, not a
/// reason to fall back. `None` when there is no complete checkpoint; an error when there are
/// some and none can be read.
pub fn resume_newest<T>(
    root: &Path,
    same_run: impl Fn(&Path, &TrainerState) -> Result<()>,
    mut load: impl FnMut(&Path) -> Result<T>,
    warnings: &mut Vec<String>,
) -> Result<Option<Resumed<T>>> {
    let all = list(root);
    let mut skipped = Vec::new();
    for (_, dir) in all.iter().rev() {
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
    Err(TrainError::Invalid(format!(
        "{}: no checkpoint could be read:\n  {}\nStart over with --fresh (Start::Scratch) or use another output folder.",
        root.display(),
        skipped.join("\n  ")
    )))
}

fn skip(dir: &Path, e: TrainError, warnings: &mut Vec<String>) -> String {
    let w = format!("checkpoint {} is unreadable ({e}); falling back to the one before it", dir.display());
    eprintln!("warning: {w}");
    warnings.push(w);
    format!("{}: {e}", dir.display())
}

pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join("trainer_state.json");
    let text = fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))
}
