//! What phi-serve can refuse, outside the HTTP replies ([`crate::openai::ApiError`] is what a
//! client of the server gets): loading a model, starting a server, calling an endpoint,
//! reading an answer log. Every variant names the file, address or URL at fault.

use std::path::PathBuf;

/// Errors of loading and serving a model, of the OpenAI client and of the answer logs.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A file or folder that could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The model could not be loaded (or its weights packed).
    #[error(transparent)]
    Model(#[from] phi_core::Error),
    /// The model's chat template could not be read or parsed.
    #[error(transparent)]
    Template(#[from] phi_core::chat::ChatError),
    /// The PEFT adapter could not be loaded onto the model.
    #[error(transparent)]
    Adapter(phi_core::Error),
    /// The model folder's `tokenizer.json` could not be loaded.
    #[error("{}: {source} (serving text needs the model's tokenizer)", path.display())]
    Tokenizer {
        path: PathBuf,
        #[source]
        source: phi_data::TokenizerError,
    },
    /// The backend asked for is not available.
    #[error("{0}")]
    Device(String),
    /// The address could not be bound (or read back).
    #[error("{addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The async runtime could not start.
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The in-process server's thread ended before it was listening.
    #[error("the server thread ended before it was listening")]
    ServerThread,
    /// A request that never got an HTTP reply (connection refused, timeout, …).
    #[error("{url}: {source}")]
    Request {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    /// An HTTP reply other than 200 (`body`: its first 300 characters).
    #[error("{url}: HTTP {status}: {body}")]
    Http { url: String, status: u16, body: String },
    /// A 200 reply that is not JSON.
    #[error("{url}: the reply is not JSON ({source})")]
    ReplyNotJson {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    /// A 200 reply without `choices[0].message.content`.
    #[error("{url}: the reply has no choices[0].message.content: {reply}")]
    NoContent { url: String, reply: String },
    /// A line of an answer log that is not a record of its kind (`what`): the file is not ours.
    #[error("{}: line {line} is not {what} ({source}); not appending to a file that is not ours", path.display())]
    NotOurLog {
        path: PathBuf,
        line: usize,
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A chat message content part that is not text (`kind`: its `type`).
    #[error("a `{kind}` content part (this server takes text)")]
    ContentPart { kind: String },
}

/// The result of phi-serve's operations.
pub type Result<T, E = ServeError> = std::result::Result<T, E>;

impl ServeError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        ServeError::Io { path: path.to_path_buf(), source }
    }

    /// Whether retrying the same request could succeed: no reply at all, or HTTP 408, 409,
    /// 429 or 5xx.
    pub fn is_retryable(&self) -> bool {
        match self {
            ServeError::Request { .. } => true,
            ServeError::Http { status, .. } => matches!(status, 408 | 409 | 429 | 500..=599),
            _ => false,
        }
    }
}
