//! One error type for everything phi-core can refuse: files, config fields, tensors, inputs.

use std::path::PathBuf;

/// Errors from loading, saving and running a Phi model. Every variant names the file,
/// key or value at fault so that the message alone tells the user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A folder given as a model that holds no `config.json`; the message says what it is
    /// instead and names the model folders under it (a training run's checkpoints).
    #[error("{}: {message}", dir.display())]
    NotAModelFolder { dir: PathBuf, message: String },
    /// A hub id that could not be resolved to a folder ([`crate::hub`]).
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A config field is missing, has the wrong type or an impossible value.
    #[error("config field `{field}`: {message}")]
    Config { field: String, message: String },
    #[error("{path}: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("tensor `{key}` is missing from the checkpoint in {dir}")]
    MissingTensor { key: String, dir: PathBuf },
    #[error("tensor `{key}` has shape {found:?} in the checkpoint, the model expects {expected:?}")]
    ShapeMismatch {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{key}` has dtype {dtype}, only F32, F16 and BF16 weights are supported")]
    UnsupportedDtype { key: String, dtype: String },
    #[error("unexpected tensors in the checkpoint (the config does not use them): {}", keys.join(", "))]
    UnexpectedTensors { keys: Vec<String> },
    #[error("token id {token} at position {position} is out of range: vocab_size is {vocab_size}")]
    TokenOutOfRange {
        token: i64,
        position: usize,
        vocab_size: usize,
    },
    #[error(
        "sequence of {len} tokens exceeds the model's max_position_embeddings ({max})"
    )]
    SequenceTooLong { len: usize, max: usize },
    #[error("invalid argument `{name}`: {message}")]
    InvalidArgument { name: String, message: String },
    /// A LoRA adapter that cannot go on the model (no projection targeted, a rank beyond a
    /// targeted projection's sides, an invalid `r` or dropout), or an `adapter_config.json` that
    /// is not a LoRA adapter's; the message names the field or the file.
    #[error("{0}")]
    Lora(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn arg(name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            name: name.into(),
            message: message.into(),
        }
    }
}
