//! Labelled documents: `phi data annotate`'s `annotations.jsonl`, or a team's own JSONL.
//!
//! One record per line with a numeric `score` and the document as `text` (or, for hand labels,
//! a `path` to read, relative to the JSONL file). A record whose `score` is `null` (an answer the
//! annotator could not parse) is skipped and counted; a document labelled twice keeps its last
//! label (a later annotation run, or a correction appended by hand), so the cross-validation
//! folds never hold the same text twice.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::error::{ClassifyError, Result};

/// One training example.
#[derive(Debug, Clone, PartialEq)]
pub struct Labeled {
    pub text: String,
    pub score: f32,
    /// `file:line`.
    pub origin: String,
}

/// What reading the label files found.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabelReport {
    /// Records read, over all files.
    pub records: usize,
    /// Records with `"score": null` (unparsable judge answers).
    pub unscored: usize,
    /// Records that replaced an earlier label of the same text.
    pub relabeled: usize,
    /// Distinct labelled documents.
    pub documents: usize,
}

/// Reads and merges label files, in order.
pub fn read_labels(files: &[&Path]) -> Result<(Vec<Labeled>, LabelReport)> {
    let mut report = LabelReport::default();
    let mut by_text: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<Labeled> = Vec::new();
    for file in files {
        let f = std::fs::File::open(file).map_err(|e| ClassifyError::io(file, e))?;
        for (i, line) in BufReader::new(f).lines().enumerate() {
            let bad = |message: String| ClassifyError::BadLabel { path: file.to_path_buf(), line: i + 1, message };
            let at = format!("{}:{}", file.display(), i + 1);
            let line = line.map_err(|e| bad(e.to_string()))?;
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| bad(format!("not a JSON record ({e})")))?;
            report.records += 1;
            let score = match v.get("score") {
                Some(serde_json::Value::Null) => {
                    report.unscored += 1;
                    continue;
                }
                Some(s) => s.as_f64().filter(|s| s.is_finite()).ok_or_else(|| bad(format!("`score` = {s} is not a number")))? as f32,
                None => return Err(bad("no `score` field (a label record is {\"text\": …, \"score\": 3})".into())),
            };
            let text = match (v.get("text").and_then(|t| t.as_str()), v.get("path").and_then(|p| p.as_str())) {
                (Some(t), _) => t.to_string(),
                (None, Some(p)) => {
                    let path = file.parent().unwrap_or(Path::new(".")).join(p);
                    std::fs::read_to_string(&path).map_err(|e| bad(format!("`path` {}: {e}", path.display())))?
                }
                (None, None) => return Err(bad("no `text` (or `path`) field".into())),
            };
            let labeled = Labeled { text, score, origin: at };
            match by_text.get(&labeled.text) {
                Some(&j) => {
                    report.relabeled += 1;
                    out[j] = labeled;
                }
                None => {
                    by_text.insert(labeled.text.clone(), out.len());
                    out.push(labeled);
                }
            }
        }
    }
    report.documents = out.len();
    Ok((out, report))
}
