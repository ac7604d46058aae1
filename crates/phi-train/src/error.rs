//! Errors of the training loop.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Model(#[from] phi_core::Error),
    #[error("{0}")]
    Invalid(String),
    /// The output folder's checkpoints cannot be resumed from (another run's, or none of them
    /// readable); the message says why. The run can start over without resuming
    /// ([`crate::Resume::No`]) or write to another folder.
    #[error("{0}\nStart over without resuming (Resume::No) or use another output folder.")]
    NotResumable(String),
}

impl TrainError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io { path: path.to_path_buf(), source }
    }
}

pub type Result<T> = std::result::Result<T, TrainError>;
