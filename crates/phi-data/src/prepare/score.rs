//! The classifier stage of `phi data prepare`: every document that survived the heuristics,
//! dedup and decontamination gets a quality score, and those below `min_score` are dropped
//! (phi-1's filter of The Stack, FineWeb-Edu's `score >= 3`).
//!
//! This crate has no model: the scores come from a [`DocumentScorer`] the caller hands to
//! [`prepare_with`](super::prepare_with) (`phi_classify::Scorer` embeds with a Phi model and
//! applies a trained classifier), or, without one, from the `score` each JSONL record already
//! carries — a dataset prepared with `--keep-documents` keeps every kept document's score in
//! `documents.jsonl`, so it can be re-thresholded higher without scoring again.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Scores documents; higher is better. Called from one thread with batches of
/// [`batch`](DocumentScorer::batch) documents; an implementation parallelises inside.
pub trait DocumentScorer: Sync {
    /// One score per text, in order.
    fn score(&self, texts: &[&str]) -> Result<Vec<f32>, String>;
    /// Documents per call.
    fn batch(&self) -> usize {
        64
    }
    /// What scores (for the report), e.g. the classifier's folder and head.
    fn describe(&self) -> String;
    /// Which of the classifier's heads scores, when it has several; checked against
    /// [`ScoreFilter::head`].
    fn head(&self) -> Option<String> {
        None
    }
}

/// The stage's settings, part of [`PrepareConfig`](super::PrepareConfig) (and so of the
/// fingerprint and the manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreFilter {
    /// The classifier folder (`phi data classifier train`) the scorer was loaded from; `None`:
    /// use the `score` field the JSONL inputs already carry (a document without one is dropped).
    pub classifier: Option<PathBuf>,
    /// Documents scoring below this are dropped.
    pub min_score: f32,
    /// The classifier head that scores (recorded, so that datasets scored by different heads
    /// have different fingerprints; the scorer must agree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
}

/// What the stage saw: the score histogram and examples on both sides of the threshold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreReport {
    /// Where the scores came from.
    pub scorer: String,
    pub min_score: f32,
    /// Documents per unit bin: key `k` counts scores in `[k, k + 1)`.
    pub histogram: BTreeMap<i32, u64>,
    pub kept: u64,
    pub dropped: u64,
    /// Up to three kept and three dropped documents: (origin, score).
    pub kept_examples: Vec<(String, f32)>,
    pub dropped_examples: Vec<(String, f32)>,
    /// Documents scored per second of the stage (scoring included).
    pub documents_per_second: f64,
    pub seconds: f64,
}

impl ScoreReport {
    pub(crate) fn book(&mut self, origin: &str, score: f32, kept: bool) {
        *self.histogram.entry(score.floor() as i32).or_default() += 1;
        let (count, examples) = if kept { (&mut self.kept, &mut self.kept_examples) } else { (&mut self.dropped, &mut self.dropped_examples) };
        *count += 1;
        if examples.len() < 3 {
            examples.push((origin.to_string(), score));
        }
    }

    /// Two lines for the terminal.
    pub fn lines(&self) -> String {
        let bins: Vec<String> = self.histogram.iter().map(|(k, n)| format!("[{k},{}): {n}", k + 1)).collect();
        let ex = |v: &[(String, f32)]| v.iter().map(|(o, s)| format!("{} ({s:.2})", super::report::short(o))).collect::<Vec<_>>().join(", ");
        format!(
            "scores ({}): {}; kept {} at >= {}, dropped {}; {:.1} documents/s\n  kept e.g. {}\n  dropped e.g. {}\n",
            self.scorer,
            bins.join("  "),
            self.kept,
            self.min_score,
            self.dropped,
            self.documents_per_second,
            ex(&self.kept_examples),
            ex(&self.dropped_examples)
        )
    }
}
