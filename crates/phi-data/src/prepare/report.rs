//! What each stage of `phi data prepare` kept and dropped, and why: the table a user reads to
//! decide their data, also stored as JSON in the manifest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Documents and bytes that one reason dropped, with a few examples to look at.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dropped {
    pub documents: u64,
    pub bytes: u64,
    /// Up to three origins (`path` or `path:line`).
    pub examples: Vec<String>,
}

/// One stage's books.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    pub name: String,
    pub documents_in: u64,
    pub bytes_in: u64,
    pub documents_kept: u64,
    pub bytes_kept: u64,
    pub dropped: BTreeMap<String, Dropped>,
    pub seconds: f64,
}

impl StageReport {
    pub fn new(name: &str) -> Self {
        StageReport { name: name.into(), ..Default::default() }
    }

    pub(crate) fn keep(&mut self, bytes: u64) {
        self.documents_in += 1;
        self.bytes_in += bytes;
        self.documents_kept += 1;
        self.bytes_kept += bytes;
    }

    pub(crate) fn drop_doc(&mut self, reason: &str, bytes: u64, origin: &str) {
        self.documents_in += 1;
        self.bytes_in += bytes;
        let d = self.dropped.entry(reason.to_string()).or_default();
        d.documents += 1;
        d.bytes += bytes;
        if d.examples.len() < 3 {
            d.examples.push(origin.to_string());
        }
    }
}

/// Folders that a walk reached again (through a symlink back up the tree, or a second link to
/// one folder) and did not walk twice: how many, and the first few paths.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RepeatedFolders {
    pub folders: u64,
    pub examples: Vec<String>,
}

impl RepeatedFolders {
    pub fn is_empty(&self) -> bool {
        self.folders == 0
    }

    pub(crate) fn add(&mut self, path: &std::path::Path) {
        self.folders += 1;
        if self.examples.len() < 3 {
            self.examples.push(path.display().to_string());
        }
    }
}

/// Token counts of one split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitReport {
    pub documents: u64,
    pub tokens: u64,
    pub shards: usize,
}

/// The whole run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrepareReport {
    pub stages: Vec<StageReport>,
    /// The classifier stage's scores, when it ran.
    #[serde(default)]
    pub scores: Option<super::ScoreReport>,
    /// Folders the input walk reached again through symlinks, walked only once.
    #[serde(default, skip_serializing_if = "RepeatedFolders::is_empty")]
    pub repeated_folders: RepeatedFolders,
    pub train: SplitReport,
    pub validation: SplitReport,
    /// Seconds spent training the tokenizer (0 when one was given).
    pub tokenizer_seconds: f64,
    /// Seconds of the tokenize-and-write stage alone.
    pub tokenize_seconds: f64,
    pub wall_seconds: f64,
    /// Input bytes over wall time.
    pub megabytes_per_second: f64,
}

/// The last two components of a path: enough to tell `email/__init__.py` from `json/__init__.py`.
pub(crate) fn short(origin: &str) -> String {
    let parts: Vec<&str> = origin.rsplitn(3, '/').collect();
    parts.iter().take(2).rev().copied().collect::<Vec<_>>().join("/")
}

fn mb(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

impl PrepareReport {
    /// A plain-text table (the terminal summary).
    pub fn table(&self) -> String {
        let mut rows: Vec<[String; 5]> = vec![["stage / reason".into(), "docs in".into(), "kept".into(), "dropped".into(), "bytes kept".into()]];
        for s in &self.stages {
            let dropped: u64 = s.dropped.values().map(|d| d.documents).sum();
            rows.push([
                format!("{} ({:.1}s)", s.name, s.seconds),
                s.documents_in.to_string(),
                s.documents_kept.to_string(),
                dropped.to_string(),
                format!("{} of {}", mb(s.bytes_kept), mb(s.bytes_in)),
            ]);
            for (reason, d) in &s.dropped {
                rows.push([
                    format!("  - {reason}"),
                    String::new(),
                    String::new(),
                    d.documents.to_string(),
                    format!("-{}  e.g. {}", mb(d.bytes), d.examples.first().map_or(String::new(), |e| short(e))),
                ]);
            }
        }
        let widths: Vec<usize> = (0..4).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
        let mut out = String::new();
        for (i, r) in rows.iter().enumerate() {
            out += &format!("{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {}\n", r[0], r[1], r[2], r[3], r[4], w0 = widths[0], w1 = widths[1], w2 = widths[2], w3 = widths[3]);
            if i == 0 {
                out += &format!("{}\n", "-".repeat(widths.iter().sum::<usize>() + 8 + 24));
            }
        }
        if let Some(s) = &self.scores {
            out += &s.lines();
        }
        if !self.repeated_folders.is_empty() {
            let r = &self.repeated_folders;
            out += &format!("{} folder(s) reached again through symlinks, read once (e.g. {})\n", r.folders, r.examples.join(", "));
        }
        out += &format!(
            "train: {} documents, {} tokens in {} shard(s); validation: {} documents, {} tokens in {} shard(s)\n",
            self.train.documents, self.train.tokens, self.train.shards, self.validation.documents, self.validation.tokens, self.validation.shards
        );
        out += &format!(
            "wall {:.1}s ({:.2} MB/s of input); tokenizer training {:.1}s; tokenize + write {:.1}s\n",
            self.wall_seconds, self.megabytes_per_second, self.tokenizer_seconds, self.tokenize_seconds
        );
        out
    }
}
