//! What phi-eval can refuse: every variant names the file, line, sample or setting at fault.

use std::path::{Path, PathBuf};

/// Errors of HumanEval, perplexity and tested exercises.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file that could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line of a problems file that is not a HumanEval problem.
    #[error("{} line {line}: {source}", path.display())]
    Problem {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    /// A line of a samples file that is not a `{"task_id", "completion"}` object.
    #[error("{} line {line}: {source} (expected {{\"task_id\": …, \"completion\": …}})", path.display())]
    Sample {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    /// A samples file that is not UTF-8.
    #[error("{}: not UTF-8: {source}", path.display())]
    NotUtf8 {
        path: PathBuf,
        #[source]
        source: std::string::FromUtf8Error,
    },
    /// Nothing to judge: an empty samples file (`file`), or no completions at all.
    #[error("{} (expected one {{\"task_id\": …, \"completion\": …}} per line)", no_samples(file.as_deref()))]
    NoSamples { file: Option<PathBuf> },
    /// A sample (1-based, in input order) whose `task_id` is not a problem.
    #[error("sample {sample}: unknown task_id {task_id:?}")]
    UnknownTask { sample: usize, task_id: String },
    /// `workers` outside 1..=`max`.
    #[error("workers = {workers}: programs are judged by 1 to {max} workers at once")]
    Workers { workers: usize, max: usize },
    /// Where results go (`out`) or its partial file cannot be written: see [`OutProblem`].
    #[error("{}", problem.describe(path, "`out`"))]
    Out { path: PathBuf, problem: OutProblem },
    /// The model failed on a problem's prompt.
    #[error("{task_id}: {source}")]
    Generate {
        task_id: String,
        #[source]
        source: phi_core::Error,
    },
    /// The sandbox cannot run programs at all.
    #[error(transparent)]
    Sandbox(#[from] phi_sandbox::SandboxError),
    /// Data with token ids the model's vocabulary does not have.
    #[error("the data has token ids up to {max_id} but the model's vocab_size is {vocab_size}")]
    Vocab { max_id: usize, vocab_size: usize },
    /// `seq_len` or `batch_size` of zero.
    #[error("seq_len ({seq_len}) and batch_size ({batch_size}) must be at least 1")]
    ZeroSize { seq_len: usize, batch_size: usize },
    /// Fewer tokens than one window of `seq_len + 1`.
    #[error("{tokens} tokens: fewer than one window of {window} (lower `seq_len`)")]
    TooFewTokens { tokens: usize, window: usize },
    /// An error of phi-data's (a manifest, a dataset).
    #[error(transparent)]
    Data(#[from] phi_data::DataError),
    /// A `tokenizer.json` that could not be loaded.
    #[error(transparent)]
    Tokenizer(#[from] phi_data::TokenizerError),
}

/// The result of phi-eval's operations.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;

fn no_samples(file: Option<&Path>) -> String {
    file.map_or("no completions".to_string(), |f| format!("{}: no samples", f.display()))
}

impl EvalError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        EvalError::Io { path: path.to_path_buf(), source }
    }
}

/// Why a results file (`out`) or its `.partial` file may not be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutProblem {
    /// `out` is the samples file itself.
    SamplesFile,
    /// There is something at the path, and it is not a file.
    NotAFile,
    /// A line of an existing file that is not a HumanEval result: not a file this tool wrote.
    NotResults { line: usize },
    /// A line of a partial file that is not JSON (and not its cut last line).
    NotJson { line: usize },
    /// A line of a partial file written for another samples file (`sample`: the one it names).
    OtherSamples { line: usize, sample: Option<usize> },
}

impl OutProblem {
    /// The message about `path`, naming the option that chose it as `option` (`` `out` `` in
    /// the library's own messages; a tool names its flag).
    pub fn describe(&self, path: &Path, option: &str) -> String {
        let path = path.display();
        match self {
            OutProblem::SamplesFile => format!("{option} {path} is the samples file itself: results go to another file"),
            OutProblem::NotAFile => format!("{path} exists and is not a results file; choose another {option}"),
            OutProblem::NotResults { line } => format!(
                "{path} line {line} is not a HumanEval result (task_id, completion, result, passed): the file is not one this tool wrote, so it is left alone; choose another {option}"
            ),
            OutProblem::NotJson { line } => format!("{path} line {line}: not JSON"),
            OutProblem::OtherSamples { line, sample } => format!(
                "{path} line {line} does not match sample {} of this samples file: it was written for another one; remove it or choose another {option}",
                sample.map_or("?".into(), |i| i.to_string())
            ),
        }
    }
}
