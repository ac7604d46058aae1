//! The seed's claim, measured on this machine: the same small model with the same token budget
//! and seeds, trained on the raw local Python code and on the same code filtered and
//! deduplicated (and, with a classifier, classified), each evaluated on held-out code no arm saw
//! and on HumanEval. `phi experiment data-quality` is the same program with every setting a flag;
//! see the README for a run's results.
//!
//! ```bash
//! cargo run --release --example data_quality
//! cargo run --release --example data_quality -- runs/quality_filter/classifier   # with the classifier arm
//! ```

use phi::data::prepare::{DocumentScorer, ScoreFilter};
use phi::experiment::{ExperimentOptions, default_corpus, run};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let corpus = default_corpus().ok_or("no python3 standard library found")?;
    // Three seeds, 200 steps of the phi-1 recipe's CPU model per run, 5% of the files held out.
    let mut o = ExperimentOptions::new(corpus, "runs/data_quality".into());
    let device = o.device.device()?;
    // A classifier folder (`phi data classifier train`, or the `quality_filter` example's) adds
    // the classified arm, at the classifier's own cut.
    let scorer = match std::env::args().nth(1) {
        Some(dir) => {
            let s = phi::classify::Scorer::load(dir.as_ref(), None, &device, None, 16)?;
            o.classifier = Some(ScoreFilter { classifier: Some(dir.into()), min_score: s.classifier().min_score, head: Some(s.head().to_string()) });
            Some(s)
        }
        None => None,
    };
    let sandbox = phi::sandbox::Sandbox::new(phi::sandbox::Limits::default()).map_err(|e| format!("the sandbox cannot isolate here ({e}); model-written code runs only isolated"))?;
    let results = run(&o, scorer.as_ref().map(|s| s as &dyn DocumentScorer), &sandbox, |line| println!("{line}"))?;
    print!("{}", results.table());
    println!("wrote {} and {}", o.out.join("results.json").display(), o.out.join("results.png").display());
    Ok(())
}
