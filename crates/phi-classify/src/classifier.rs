//! The saved classifier and the scorer built from it.
//!
//! A classifier folder holds `classifier.json` — format `phi-quality-classifier` version 1:
//! the embedding model's identity ([`EmbedderIdentity`]), the keep threshold, the head that
//! scores by default, both fitted heads (smartcore's serde form of the forest; the logistic
//! head's standardization, classes, weights and biases), the cross-validation report and the
//! label summary — and `report.txt`, the table printed at training. The folder is replaced only
//! when it is one of ours (the same rule as prepared datasets).

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use phi_data::owned::{Layout, Marker};
use phi_data::prepare::DocumentScorer;
use serde::{Deserialize, Serialize};

use crate::cv::{CvReport, HeadSettings, cross_validate, fit_heads};
use crate::embedder::{Embedder, EmbedderIdentity};
use crate::error::{ClassifyError, Result};
use crate::heads::{Forest, HeadKind, Logistic};
use crate::labels::LabelReport;

pub const FORMAT: &str = "phi-quality-classifier";
pub const VERSION: u32 = 1;
pub const FILE: &str = "classifier.json";

/// A classifier folder: our `classifier.json`, the report, and their temporaries.
pub static LAYOUT: Layout = Layout {
    what: "a quality classifier (phi data classifier train)",
    markers: &[Marker { file: FILE, format: FORMAT, version: VERSION }],
    file: |n| matches!(n, FILE | "report.txt" | "classifier.json.tmp" | "report.txt.tmp"),
    dir: |_| None,
};

/// Everything a classifier is.
#[derive(Debug, Serialize, Deserialize)]
pub struct Classifier {
    pub format: String,
    pub version: u32,
    pub embedder: EmbedderIdentity,
    /// Labels at least this are "keep" in the cross-validation report.
    pub threshold: f32,
    /// The score cut matching it (`threshold - 0.5`): the prepare stage's default `min_score`.
    pub min_score: f32,
    /// The head that scores unless another is asked for: the better F1 at the threshold.
    pub head: HeadKind,
    pub settings: HeadSettings,
    pub labels: LabelReport,
    pub cv: CvReport,
    pub forest: Forest,
    pub logistic: Logistic,
}

/// How to train.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub folds: usize,
    pub threshold: f32,
    pub heads: HeadSettings,
    /// The scoring head; `None`: the one with the better cross-validated F1 at the threshold.
    pub head: Option<HeadKind>,
}

impl TrainOptions {
    /// The settings, and enough labelled documents for the folds: checked before any embedding.
    pub fn check(&self, documents: usize) -> Result<()> {
        if self.folds < 2 || documents < self.folds {
            return Err(ClassifyError::Folds { folds: self.folds, needed: self.folds.max(2), documents });
        }
        if self.heads.trees == 0 {
            return Err(ClassifyError::Setting { key: "trees", value: "0".into(), message: "the random forest needs at least one tree" });
        }
        if !(self.heads.alpha.is_finite() && self.heads.alpha >= 0.0) {
            return Err(ClassifyError::Setting { key: "alpha", value: self.heads.alpha.to_string(), message: "the L2 strength must be a number >= 0" });
        }
        if !self.threshold.is_finite() {
            return Err(ClassifyError::Setting { key: "keep threshold", value: self.threshold.to_string(), message: "must be a number" });
        }
        Ok(())
    }
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions { folds: 5, threshold: 3.0, heads: HeadSettings::default(), head: None }
    }
}

impl Classifier {
    /// Cross-validates both heads on (`x`, `y`), then fits them on all of it.
    pub fn train(x: &[Vec<f32>], y: &[f32], embedder: EmbedderIdentity, labels: LabelReport, o: &TrainOptions) -> Result<Self> {
        if x.len() != y.len() {
            return Err(ClassifyError::Counts { embeddings: x.len(), labels: y.len() });
        }
        o.check(x.len())?;
        if let Some(r) = x.iter().find(|r| r.len() != embedder.hidden_size) {
            return Err(ClassifyError::EmbeddingSize { len: r.len(), hidden_size: embedder.hidden_size });
        }
        let cv = cross_validate(x, y, o.folds, o.threshold, &o.heads)?;
        let (forest, logistic) = fit_heads(x, y, &o.heads)?;
        Ok(Classifier {
            format: FORMAT.into(),
            version: VERSION,
            embedder,
            threshold: o.threshold,
            min_score: crate::cv::cut_of(o.threshold),
            head: o.head.unwrap_or_else(|| cv.best()),
            settings: o.heads,
            labels,
            cv,
            forest,
            logistic,
        })
    }

    /// Scores of `x` (embeddings) by `head`.
    pub fn predict(&self, head: HeadKind, x: &[Vec<f32>]) -> Result<Vec<f32>> {
        match head {
            HeadKind::Forest => self.forest.predict(x),
            HeadKind::Logistic => Ok(self.logistic.predict(x)),
        }
    }

    /// The printed report: labels, cross-validation, the chosen head.
    pub fn report(&self) -> String {
        let l = &self.labels;
        format!(
            "labels: {} records, {} without a score (skipped), {} relabelled, {} documents\n{}scoring head: {}, keeping scores >= {} by default (embeddings: layer {}, first {} tokens of {})\n",
            l.records,
            l.unscored,
            l.relabeled,
            l.documents,
            self.cv.table(),
            self.head,
            self.min_score,
            self.embedder.layer.map_or("last".to_string(), |l| l.to_string()),
            self.embedder.max_tokens,
            self.embedder.model.display()
        )
    }

    /// Writes `dir/classifier.json` and `dir/report.txt`, each atomically; refuses a folder
    /// that is not one of ours.
    pub fn save(&self, dir: &Path) -> Result<()> {
        phi_data::owned::check(dir, &LAYOUT)?;
        std::fs::create_dir_all(dir).map_err(|e| ClassifyError::io(dir, e))?;
        let write = |name: &str, bytes: &[u8]| phi_core::weights::write_atomic(&dir.join(name), bytes);
        // The classifier (our marker) first: a folder with only a report would not be ours.
        let json = serde_json::to_string(self).map_err(|source| ClassifyError::Json { path: dir.join(FILE), source })?;
        write(FILE, json.as_bytes())?;
        Ok(write("report.txt", self.report().as_bytes())?)
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ClassifyError::NotAClassifier { path: path.clone(), source })?;
        let json = |source| ClassifyError::Json { path: path.clone(), source };
        let head: serde_json::Value = serde_json::from_str(&text).map_err(json)?;
        if head.get("format").and_then(|f| f.as_str()) != Some(FORMAT) || head.get("version").and_then(|v| v.as_u64()) != Some(VERSION as u64) {
            return Err(ClassifyError::Format { path: path.clone(), format: head.get("format").cloned(), version: head.get("version").cloned() });
        }
        serde_json::from_value(head).map_err(json)
    }
}

/// A classifier with its embedding model: the scorer of `phi data prepare`'s classifier stage.
///
/// ```no_run
/// use phi_classify::Scorer;
/// use phi_data::prepare::{DocumentScorer, Input, PrepareConfig, ScoreFilter, TokenizerSource, prepare_with};
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let device = phi_core::device::Backend::Cpu.device()?;
/// let scorer = Scorer::load("clf".as_ref(), None, &device, None, 16)?; // the model folder it was trained with
/// let scores = scorer.score(&["def add(a, b):\n    return a + b\n"])?; // one per document
/// assert_eq!(scores.len(), 1);
/// let mut config = PrepareConfig::new(vec![Input::Files { root: "corpus".into(), pattern: "**/*.py".into(), exclude: vec![] }], TokenizerSource::Train { vocab_size: 8192 });
/// config.classifier = Some(ScoreFilter { classifier: Some("clf".into()), min_score: 2.5, head: None });
/// prepare_with(&config, Some(&scorer), "data/filtered".as_ref(), None)?;
/// # Ok(()) }
/// ```
pub struct Scorer {
    classifier: Classifier,
    embedder: Embedder,
    head: HeadKind,
    dir: PathBuf,
    batch: usize,
}

impl Scorer {
    /// Loads the classifier in `dir` and its embedding model: `model`, or the folder it was
    /// trained with; a model whose files differ from those it was trained on is an error.
    /// `head`: the classifier's choice when `None`. `batch`: documents per forward pass.
    pub fn load(dir: &Path, model: Option<&Path>, device: &Device, head: Option<HeadKind>, batch: usize) -> Result<Self> {
        let classifier = Classifier::load(dir)?;
        let model_dir = model.map_or_else(|| classifier.embedder.model.clone(), Path::to_path_buf);
        let embedder = Embedder::load_as(&model_dir, device, &classifier.embedder, batch)?;
        let head = head.unwrap_or(classifier.head);
        Ok(Scorer { classifier, embedder, head, dir: dir.to_path_buf(), batch })
    }

    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }
}

impl Scorer {
    pub fn head(&self) -> HeadKind {
        self.head
    }
}

impl DocumentScorer for Scorer {
    fn score(&self, texts: &[&str]) -> std::result::Result<Vec<f32>, String> {
        let x = self.embedder.embed(texts).map_err(|e| e.to_string())?;
        self.classifier.predict(self.head, &x).map_err(|e| e.to_string())
    }

    fn batch(&self) -> usize {
        self.batch
    }

    fn describe(&self) -> String {
        format!("{} ({} head)", self.dir.display(), self.head)
    }

    fn head(&self) -> Option<String> {
        Some(self.head.to_string())
    }
}
