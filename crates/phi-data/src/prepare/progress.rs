//! How far [`prepare`](super::prepare) has got, for a caller that shows it: the pipeline calls a
//! [`PrepareProgress`] as each of its long stages starts, advances and finishes. The library
//! draws nothing itself; pass `None` for no progress (the `phi` tool passes progress bars).
//!
//! ```
//! use std::sync::Mutex;
//! use phi_data::prepare::{PrepareProgress, Stage, Unit};
//!
//! /// Counts what each stage did.
//! #[derive(Default)]
//! struct Tally(Mutex<Vec<(String, u64)>>);
//!
//! impl PrepareProgress for Tally {
//!     fn start(&self, stage: Stage, _len: Option<(u64, Unit)>) {
//!         self.0.lock().unwrap().push((stage.to_string(), 0));
//!     }
//!     fn advance(&self, _stage: Stage, n: u64) {
//!         self.0.lock().unwrap().last_mut().unwrap().1 += n;
//!     }
//! }
//!
//! let tally = Tally::default();
//! tally.start(Stage::Tokenize, Some((3, Unit::Documents)));
//! tally.advance(Stage::Tokenize, 3);
//! tally.finish(Stage::Tokenize);
//! assert_eq!(*tally.0.lock().unwrap(), [("tokenize".to_string(), 3)]);
//! ```

/// A long stage of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Stages 1–5 over the inputs (read, quality filters, exact and near dedup,
    /// decontamination, the classifier), counted in bytes of input.
    Filter,
    /// Training the byte-level BPE tokenizer on the kept training documents: no count.
    TrainTokenizer { vocab_size: usize, documents: u64 },
    /// Tokenizing the kept documents into shards, counted in documents.
    Tokenize,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stage::Filter => f.write_str("filter + dedup"),
            Stage::TrainTokenizer { vocab_size, documents } => write!(f, "training a byte-level BPE tokenizer (vocab {vocab_size}) on {documents} documents"),
            Stage::Tokenize => f.write_str("tokenize"),
        }
    }
}

/// What a stage's length and advances count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Documents,
}

/// Receives the pipeline's progress. Every method does nothing by default; the stages come one
/// after another (a stage finishes before the next starts), each `start`ed once and `finish`ed
/// once when it completes (a stage that fails is not finished).
pub trait PrepareProgress: Sync {
    /// `stage` starts, with `len` units of work to do (`None`: a stage with no count).
    fn start(&self, stage: Stage, len: Option<(u64, Unit)>) {
        let _ = (stage, len);
    }

    /// `n` more units of `stage` are done.
    fn advance(&self, stage: Stage, n: u64) {
        let _ = (stage, n);
    }

    /// `stage` is done.
    fn finish(&self, stage: Stage) {
        let _ = stage;
    }
}

/// No progress.
impl PrepareProgress for () {}
