//! # phi-classify: the learned data-quality filter of the Phi-1 recipe
//!
//! phi-1 had GPT-4 label ~100k code files for educational value, embedded them with a pretrained
//! code model, and trained a random forest on the embeddings to filter The Stack; FineWeb-Edu did
//! the same for the web with a linear head and `score >= 3`. This crate is that step:
//!
//! ```text
//! annotations.jsonl / your labels ─▶ read_labels ─▶ Embedder (a Phi model folder, no autodiff)
//!        ─▶ cross_validate (forest + logistic, k folds) ─▶ fit on all ─▶ Classifier::save (CLF/)
//! CLF/ + the same model folder ─▶ Scorer ─▶ phi_data::prepare_with (the classifier stage)
//! ```
//!
//! ```no_run
//! use phi_classify::{TrainOptions, train_classifier};
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let device = phi_core::device::Backend::Cpu.device()?;
//! let labels = ["annotations.jsonl".as_ref()];
//! let clf = train_classifier(&labels, "models/phi-1_5".as_ref(), &device, None, None, 8, &TrainOptions::default())?;
//! // Every labelled document was scored once under cross-validation; `clf.report()` is the
//! // table `phi data classifier train` prints.
//! assert_eq!(clf.cv.documents, clf.labels.documents);
//! clf.save("clf".as_ref())?; // classifier.json and report.txt
//! # Ok(()) }
//! ```

pub mod classifier;
pub mod cv;
pub mod embedder;
pub mod error;
pub mod heads;
pub mod labels;
pub mod proxy;

use std::path::Path;

pub use classifier::{Classifier, Scorer, TrainOptions};
pub use cv::{CvReport, HeadSettings, Metrics};
pub use embedder::{Embedder, EmbedderIdentity};
pub use error::{ClassifyError, Result};
pub use heads::HeadKind;
pub use labels::{LabelReport, Labeled, read_labels};

/// Reads the label files, embeds every labelled document with the model in `model`
/// (hidden state `layer`, the first `max_tokens` tokens; `batch` chunks per forward pass),
/// cross-validates and fits both heads.
pub fn train_classifier(
    label_files: &[&Path],
    model: &Path,
    device: &burn::tensor::Device,
    layer: Option<usize>,
    max_tokens: Option<usize>,
    batch: usize,
    options: &TrainOptions,
) -> Result<Classifier> {
    let (labeled, report) = read_labels(label_files)?;
    if labeled.is_empty() {
        return Err(ClassifyError::NoLabels { files: label_files.iter().map(|f| f.to_path_buf()).collect(), records: report.records, unscored: report.unscored });
    }
    options.check(labeled.len())?;
    let embedder = Embedder::load(model, device, layer, max_tokens, batch)?;
    let texts: Vec<&str> = labeled.iter().map(|l| l.text.as_str()).collect();
    let x = embedder.embed(&texts)?;
    let y: Vec<f32> = labeled.iter().map(|l| l.score).collect();
    Classifier::train(&x, &y, embedder.identity().clone(), report, options)
}
