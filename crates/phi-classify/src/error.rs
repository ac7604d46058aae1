//! What phi-classify can refuse: every variant names the file, line, setting or model at fault.

use std::path::PathBuf;

/// Errors of training, saving, loading and running a quality classifier.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    /// A file or folder that could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A classifier folder without a readable `classifier.json`.
    #[error("{}: {source} (not a classifier folder?)", path.display())]
    NotAClassifier {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A `classifier.json` that is not JSON, or not a classifier's (or one that does not serialize).
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A `classifier.json` of another format or version.
    #[error("{}: not a {} v{} file (format {format:?}, version {version:?})", path.display(), crate::classifier::FORMAT, crate::classifier::VERSION)]
    Format { path: PathBuf, format: Option<serde_json::Value>, version: Option<serde_json::Value> },
    /// A record of a label file that is not a label (`path:line: …`).
    #[error("{}:{line}: {message}", path.display())]
    BadLabel { path: PathBuf, line: usize, message: String },
    /// Label files that hold no scored document.
    #[error("no labelled documents in {files:?} ({records} records, {unscored} without a score)")]
    NoLabels { files: Vec<PathBuf>, records: usize, unscored: usize },
    /// Too few folds, or too few labelled documents for them.
    #[error("{folds}-fold cross-validation needs folds >= 2 and at least {needed} labelled documents (have {documents})")]
    Folds { folds: usize, needed: usize, documents: usize },
    /// A training setting ([`crate::TrainOptions`], [`crate::HeadSettings`]) out of range.
    #[error("{key} = {value}: {message}")]
    Setting { key: &'static str, value: String, message: &'static str },
    /// A random forest asked for with no tree.
    #[error("a random forest needs at least one tree")]
    NoTrees,
    /// `max_tokens` or `batch` of an [`crate::Embedder`] is zero.
    #[error("max_tokens = {max_tokens}, batch = {batch}: both must be at least 1")]
    EmbedSettings { max_tokens: usize, batch: usize },
    /// A hidden-state layer the model does not have.
    #[error("layer {layer}: {} has hidden states 0..={layers}", dir.display())]
    Layer { layer: usize, dir: PathBuf, layers: usize },
    /// Embeddings and labels of different counts.
    #[error("{embeddings} embeddings for {labels} labels")]
    Counts { embeddings: usize, labels: usize },
    /// An embedding whose length is not the model's hidden size.
    #[error("an embedding of {len} values; the model's hidden size is {hidden_size}")]
    EmbeddingSize { len: usize, hidden_size: usize },
    /// Embeddings of different lengths given to a head.
    #[error("embeddings of different lengths")]
    Ragged,
    /// A model folder whose files differ from those the classifier was trained on.
    #[error(
        "the classifier was trained on the embeddings of {} but {} has another {what} (xxh3 {got}, expected {expected}): \
         scores from another model's embeddings would be meaningless",
        trained.display(),
        dir.display()
    )]
    OtherModel { trained: PathBuf, dir: PathBuf, what: &'static str, got: String, expected: String },
    /// A model folder without weights.
    #[error("{}: no *.safetensors weights", dir.display())]
    NoWeights { dir: PathBuf },
    /// The embedding model could not be loaded.
    #[error("{}: {source}", dir.display())]
    Model {
        dir: PathBuf,
        #[source]
        source: phi_core::Error,
    },
    /// The embedding model's `tokenizer.json` could not be loaded.
    #[error("{}: {source} (embedding text needs the model's tokenizer)", path.display())]
    Tokenizer {
        path: PathBuf,
        #[source]
        source: phi_data::tokenizer::TokenizerError,
    },
    /// An error of phi-core's (embedding, writing a file).
    #[error(transparent)]
    Core(#[from] phi_core::Error),
    /// An error of phi-data's (a folder that is not ours).
    #[error(transparent)]
    Data(#[from] phi_data::DataError),
    /// smartcore refused to fit or predict (`what`: the random forest or the logistic regression).
    #[error("{what}: {source}")]
    Smartcore {
        what: &'static str,
        #[source]
        source: smartcore::error::Failed,
    },
    /// A head name that is neither `forest` nor `logistic`.
    #[error("`{0}`: expected forest or logistic")]
    UnknownHead(String),
}

/// The result of phi-classify's operations.
pub type Result<T, E = ClassifyError> = std::result::Result<T, E>;

impl ClassifyError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        ClassifyError::Io { path: path.to_path_buf(), source }
    }
}
