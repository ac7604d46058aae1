//! Errors of the training loop, one variant per kind of trouble, so that a caller can match on
//! what went wrong (a setting to change, a run that diverged, data that does not fit the model,
//! a checkpoint to set aside) and print the rest. Every message says what to fix by the names a
//! library user knows: config keys (`schedule.peak`), files, steps — never a CLI flag.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Reading or writing `path` failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Building, loading or saving the model (or a LoRA adapter) failed.
    #[error(transparent)]
    Model(#[from] phi_core::Error),
    /// A setting of the run that is out of range, inconsistent with another or with the model,
    /// or that the device cannot run. `key` is the setting as it is spelled where it is set: a
    /// [`crate::TrainConfig`] field (`batch_size`, `schedule.warmup_steps`,
    /// `optimizer.beta1`, `precision`) or a preference objective's
    /// ([`crate::preference::PreferenceSettings`]: `beta`, `loss`, `loss.label_smoothing`,
    /// `loss.gamma`, `collate.max_length`); `value` is the value given, as text. `message` is
    /// the whole error as it prints (a `TrainConfig` field's starts ``training config `key`:``).
    #[error("{message}")]
    Config { key: String, value: String, message: String },
    /// A training step whose loss, gradient norm or updated weights are NaN or infinite stopped
    /// the run (under `on_non_finite = "stop"`, or after too many skipped steps), or a
    /// checkpoint was about to be written with such weights. `what` is the rest of the message:
    /// what was not finite, what the run did and what to change.
    #[error("step {step}: {what}")]
    NonFinite { step: usize, what: String },
    /// Training data that does not fit the model or the run: token ids past the vocabulary,
    /// sequences longer than the context, no examples or pairs at all, windows of another
    /// length than `seq_len`, a curriculum planned for another run, the model folder's tokenizer
    /// for text pairs; also a checkpoint's data-sampler state that does not fit the data it
    /// is resumed on.
    #[error("{0}")]
    Data(String),
    /// A checkpoint (the folder, or a file in it: `path`) that cannot be read, verified, written
    /// or removed: a file whose size or checksum is not what its marker recorded, an unreadable
    /// trainer state or optimizer file, weights that are NaN, a folder that is not ours to
    /// replace. `message` is the whole error as it prints (it names the file where it can).
    /// While resuming, such a checkpoint is passed over for the one before it.
    #[error("{message}")]
    Checkpoint { path: PathBuf, message: String },
    /// The output folder's checkpoints cannot be resumed from (another run's, or none of them
    /// readable); the message says why. The run can start over without resuming
    /// ([`crate::Resume::No`]) or write to another folder.
    #[error("{0}\nStart over without resuming (Resume::No) or use another output folder.")]
    NotResumable(String),
    /// The run would need about `needed` bytes of memory and `available` are free: refused
    /// before any work. `message` says where each part goes and what to lower (`batch_size`,
    /// the LoRA `rank`, or the model).
    #[error("{message}")]
    Memory { needed: u64, available: u64, message: String },
    /// The output folder cannot be written in: another run holds it, or a file the run would
    /// write (its lock, `metrics.jsonl`) is something that is not ours, left as it is. `path` is
    /// the folder or that file.
    #[error("{message}")]
    OutputFolder { path: PathBuf, message: String },
    /// The model is on a device the call cannot use (a [`crate::Trainer`] needs an autodiff
    /// device).
    #[error("{0}")]
    Device(String),
    /// A data-parallel run (see [`crate::dist`]) that cannot go on: a launcher's world this
    /// build or its MPI cannot join, ranks that disagree (on the checkpoint to resume, the
    /// gradients they hold), a `grad_accum` the number of processes does not divide. The
    /// message names the rank and the numbers.
    #[error("{0}")]
    Distributed(String),
}

impl TrainError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io { path: path.to_path_buf(), source }
    }

    /// A [`TrainError::Config`] error of a [`crate::TrainConfig`] field, reading
    /// ``training config `key`: reason``.
    pub(crate) fn config(key: &str, value: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        TrainError::Config { key: key.to_string(), value: value.to_string(), message: format!("training config `{key}`: {reason}") }
    }

    /// A [`TrainError::Config`] error of another setting (the preference objective's, the
    /// precision's fit to the device), with its own message.
    pub(crate) fn setting(key: &str, value: impl std::fmt::Display, message: String) -> Self {
        TrainError::Config { key: key.to_string(), value: value.to_string(), message }
    }

    /// A [`TrainError::Checkpoint`] error about `path`.
    pub(crate) fn checkpoint(path: &Path, message: String) -> Self {
        TrainError::Checkpoint { path: path.to_path_buf(), message }
    }
}

pub type Result<T> = std::result::Result<T, TrainError>;
