//! Phi-1's learned filter, on this machine: label a sample of the local Python code (standard
//! library + site-packages: real code of mixed quality, vendored and generated files included),
//! embed it with `train_phi1`'s model, cross-validate a random forest and a logistic head, and
//! prepare the whole corpus twice — heuristics + dedup + decontamination alone, then with the
//! classifier stage — to see what the learned filter keeps and drops, and at what speed.
//!
//! The judge: an OpenAI-compatible endpoint when `PHI_JUDGE_ENDPOINT` and `PHI_JUDGE_MODEL` are
//! set (`phi serve` of a strong model, vLLM, a hosted API with `OPENAI_API_KEY`), asked with the
//! built-in `edu-code-v1` rubric; otherwise the mechanical `edu-proxy-v1` rubric
//! (`phi_classify::proxy`), which shows the flow works end to end but teaches the classifier
//! five heuristics, not a judge's sense of educational value.
//!
//! ```bash
//! cargo run --release --example quality_filter            # trains train_phi1's model first if needed
//! PHI_JUDGE_ENDPOINT=http://127.0.0.1:8000/v1 PHI_JUDGE_MODEL=phi-3-mini cargo run --release --example quality_filter
//! ```

use std::path::{Path, PathBuf};

use phi::classify::{Scorer, TrainOptions, train_classifier};
use phi::data::prepare::{DocumentScorer, Input, PrepareConfig, ScoreFilter, TokenizerSource, prepare_with};
use phi::progress::PrepareBars;
use rand::SeedableRng;
use rand::seq::IndexedRandom;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const OUT: &str = "runs/quality_filter";
const LABELS: usize = 1000;

fn corpus() -> Result<Vec<Input>, String> {
    let root = phi::data::corpus::python_stdlib_dir().ok_or("no python3 standard library found")?;
    Ok(vec![Input::Files { root, pattern: "**/*.py".into(), exclude: vec!["**/test/**".into(), "**/tests/**".into()] }])
}

/// Labels for a seeded sample: the endpoint's answers, or the proxy rubric's.
fn labels(inputs: &[Input], out: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    // Empty files (the corpus has many `__init__.py`) are not worth a judge's time.
    let documents: Vec<(String, String)> = phi::data::prepare::documents_with_origin(inputs)?.into_iter().filter(|(_, t)| !t.trim().is_empty()).collect();
    match (std::env::var("PHI_JUDGE_ENDPOINT"), std::env::var("PHI_JUDGE_MODEL")) {
        (Ok(endpoint), Ok(model)) => {
            use phi::annotate::{AnnotateOptions, PromptTemplate, annotate};
            let client = phi::serve::client::Client::new(&endpoint, &model, std::env::var("OPENAI_API_KEY").ok());
            let path = out.join("annotations.jsonl");
            let opts = AnnotateOptions { n: LABELS, ..AnnotateOptions::new(documents, client, PromptTemplate::builtin(), path.clone()) };
            println!("judge: `{model}` at {endpoint}, prompt {}", opts.prompt.version);
            let r = annotate(&opts, |_| {})?;
            println!("{} scored, {} unparsable, {} failed; histogram {:?}", r.scored, r.unparsed, r.failed.len(), r.histogram);
            Ok(path)
        }
        _ => {
            println!("judge: none set (PHI_JUDGE_ENDPOINT, PHI_JUDGE_MODEL): labelling with the mechanical {} rubric", phi::classify::proxy::VERSION);
            let sample = documents.choose_multiple(&mut rand::rngs::StdRng::seed_from_u64(0), LABELS);
            let path = out.join("proxy-labels.jsonl");
            let mut lines = String::new();
            let mut histogram = [0usize; 6];
            for (origin, text) in sample {
                let score = phi::classify::proxy::score(text);
                histogram[score as usize] += 1;
                lines += &format!("{}\n", serde_json::json!({ "text": text, "score": score, "origin": origin, "prompt_version": phi::classify::proxy::VERSION }));
            }
            std::fs::write(&path, lines)?;
            println!("{} labels, histogram 0..5: {histogram:?}", histogram.iter().sum::<usize>());
            Ok(path)
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(OUT);
    std::fs::create_dir_all(&out)?;
    let model = phi::finetune::base_checkpoint(&phi::finetune::FinetuneOptions::default())?;
    println!("embedding model: {}", model.display());
    let inputs = corpus()?;
    let labels = labels(&inputs, &out)?;

    let device = phi::device::Backend::Cpu.device()?;
    let t = std::time::Instant::now();
    let clf = train_classifier(&[&labels], &model, &device, None, None, 16, &TrainOptions::default())?;
    let clf_dir = out.join("classifier");
    clf.save(&clf_dir)?;
    print!("{}", clf.report());
    println!("classifier trained in {:.1}s -> {}\n", t.elapsed().as_secs_f64(), clf_dir.display());

    let mut config = PrepareConfig::new(inputs, TokenizerSource::File(model.join("tokenizer.json")));
    config.keep_documents = true;
    let plain = prepare_with(&config, None, &out.join("data-heuristic"), Some(&PrepareBars::new()))?;
    println!("heuristics + dedup + decontamination:\n{}", plain.report.table());
    let scorer = Scorer::load(&clf_dir, None, &device, None, 16)?;
    config.classifier = Some(ScoreFilter { classifier: Some(clf_dir.clone()), min_score: clf.min_score, head: Some(scorer.head().to_string()) });
    let scored = prepare_with(&config, Some(&scorer as &dyn DocumentScorer), &out.join("data-classified"), Some(&PrepareBars::new()))?;
    println!("... then the classifier stage ({}):\n{}", scorer.describe(), scored.report.table());
    let s = scored.report.scores.as_ref().expect("the stage ran");
    let docs = scored.report.train.documents + scored.report.validation.documents;
    println!(
        "classifier stage: {:.0} documents/s over {} documents; tokenize stage: {:.0} documents/s",
        s.documents_per_second,
        s.kept + s.dropped,
        docs as f64 / scored.report.tokenize_seconds.max(1e-9)
    );
    // What the filter did to the labelled quality: the proxy rubric over every document each
    // dataset kept (when the labels came from a judge, only the judge could say).
    if std::env::var("PHI_JUDGE_ENDPOINT").is_err() {
        for name in ["data-heuristic", "data-classified"] {
            let docs = phi::data::prepare::prepared_documents(&out.join(name))?;
            let scores: Vec<u8> = docs.iter().map(|(_, t)| phi::classify::proxy::score(t)).collect();
            let mean = scores.iter().map(|&s| s as f64).sum::<f64>() / scores.len() as f64;
            let high = scores.iter().filter(|&&s| s >= 3).count() as f64 / scores.len() as f64;
            println!("{name}: {} documents, mean {} score {mean:.2}, {:.1}% score >= 3", docs.len(), phi::classify::proxy::VERSION, 100.0 * high);
        }
    }
    Ok(())
}
