//! Training checkpoints: one directory per step, written to a temporary name and renamed only
//! when complete, so an interrupted write is never mistaken for a checkpoint.
//!
//! ```text
//! out/checkpoints/step-00000100/
//!   config.json, model.safetensors   HF layout: `phi generate` and transformers load it as is
//!   optimizer.bin                     AdamW moments (burn's optimizer record)
//!   trainer_state.json                step, sampler state, schedule, training config
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

const PREFIX: &str = "step-";

/// What a checkpoint needs besides the weights and optimizer moments to continue exactly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    pub sampler: phi_data::MixtureState,
    pub config: crate::TrainConfig,
    /// Tokens consumed so far.
    pub tokens_seen: u64,
    /// The f16 loss scale where it stood (`None` for f32/bf16 runs).
    #[serde(default)]
    pub loss_scaler: Option<crate::LossScaler>,
}

/// `dir/step-00000042`.
pub fn checkpoint_dir(root: &Path, step: usize) -> PathBuf {
    root.join(format!("{PREFIX}{step:08}"))
}

/// Complete checkpoints under `root`, oldest first. Temporary (interrupted) directories and
/// anything without a `trainer_state.json` are ignored.
pub fn list(root: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = fs::read_dir(root) else { return vec![] };
    let mut found: Vec<(usize, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix(PREFIX)?.parse::<usize>().ok()?;
            let path = e.path();
            path.join("trainer_state.json").is_file().then_some((step, path))
        })
        .collect();
    found.sort();
    found
}

/// The newest complete checkpoint, if any.
pub fn latest(root: &Path) -> Option<PathBuf> {
    list(root).pop().map(|(_, p)| p)
}

/// Writes a checkpoint through `write_contents` into a temporary directory, syncs it, renames it
/// to its final name, then keeps only the newest `keep` checkpoints.
pub fn save(root: &Path, step: usize, keep: usize, write_contents: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    fs::create_dir_all(root).map_err(|e| TrainError::io(root, e))?;
    let final_dir = checkpoint_dir(root, step);
    let tmp = root.join(format!(".tmp-{PREFIX}{step:08}-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    write_contents(&tmp)?;
    for entry in fs::read_dir(&tmp).map_err(|e| TrainError::io(&tmp, e))? {
        let path = entry.map_err(|e| TrainError::io(&tmp, e))?.path();
        fs::File::open(&path).and_then(|f| f.sync_all()).map_err(|e| TrainError::io(&path, e))?;
    }
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
    }
    fs::rename(&tmp, &final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
    if let Ok(d) = fs::File::open(root) {
        let _ = d.sync_all();
    }
    let all = list(root);
    for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        fs::remove_dir_all(old).map_err(|e| TrainError::io(old, e))?;
    }
    Ok(final_dir)
}

pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join("trainer_state.json");
    let text = fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))
}
