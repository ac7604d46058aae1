//! `phi experiment data-quality` end to end on the shipped corpus, at toy size: every arm (the
//! synthetic one too) and
//! seed trained and evaluated, results.json and results.png written, a rerun reuses the runs,
//! and a folder that is not an experiment is refused.

use phi::experiment::{ExperimentOptions, run};
use phi::sandbox::{Limits, Sandbox};

#[test]
fn two_arms_two_seeds_on_the_shipped_corpus() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/corpus/python");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dq");
    let mut o = ExperimentOptions::new(corpus, out.clone());
    // Verified synthetic exercises, as `phi data synth` keeps them: a third arm mixes them in.
    let synthetic = dir.path().join("kept.jsonl");
    let records: String = (0..6)
        .map(|i| {
            let body: String = (0..40).map(|j| format!("    total += values[{j}] * {}\n", i * 7 + j)).collect();
            serde_json::json!({ "text": format!("def weighted_sum_{i}(values):\n    \"\"\"Sum of weighted values.\"\"\"\n    total = 0\n{body}    return total\n") }).to_string() + "\n"
        })
        .collect();
    std::fs::write(&synthetic, records).unwrap();
    o.synthetic = Some(synthetic);
    o.seeds = vec![0, 1];
    o.steps = 3;
    o.held_out_fraction = 0.3;
    o.vocab_size = 400;
    o.humaneval = 2;
    let sandbox = Sandbox::new(Limits::default()).expect("this machine must be able to isolate (Landlock, user namespaces)");
    let mut lines = Vec::new();
    let r = run(&o, None, &sandbox, |l| lines.push(l.to_string())).unwrap();
    assert_eq!(r.arms.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["raw", "filtered", "filtered+synth"]);
    assert!(r.arms[2].train_documents > r.arms[1].train_documents && r.arms[2].data.contains("synthetic"), "{:?}", r.arms[2]);
    assert!(r.held_out_files > 0 && r.held_out_files < r.corpus_files, "{r:?}");
    assert!(r.arms[0].train_documents >= r.arms[1].train_documents, "filtering keeps at most what raw has");
    for a in &r.arms {
        assert_eq!(a.seeds.iter().map(|s| s.seed).collect::<Vec<_>>(), [0, 1]);
        for s in &a.seeds {
            assert!(s.held_out_loss.is_finite() && s.held_out_loss_all.is_finite() && !s.curve.is_empty(), "{s:?}");
            assert!(s.humaneval_pass_at_1.is_some_and(|p| (0.0..=1.0).contains(&p)), "{s:?}");
        }
    }
    // Seeds differ; the same seed on the same data is the same run.
    assert_ne!(r.arms[0].seeds[0].held_out_loss, r.arms[0].seeds[1].held_out_loss);
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(saved["arms"].as_array().unwrap().len(), 3);
    assert!(out.join("results.png").is_file());
    assert!(r.table().contains("held-out loss"));
    // A rerun reuses the prepared data and the finished runs: the same figures.
    let again = run(&o, None, &sandbox, |_| {}).unwrap();
    assert_eq!(again.arms[1].seeds[1].held_out_loss.to_bits(), r.arms[1].seeds[1].held_out_loss.to_bits());
    // Other settings in the same folder, and a seed given twice, are refused.
    let e = run(&ExperimentOptions { vocab_size: 500, ..o.clone() }, None, &sandbox, |_| {}).unwrap_err();
    assert!(e.contains("other settings") && e.contains("vocab_size"), "{e}");
    let e = run(&ExperimentOptions { seeds: vec![1, 1], ..o.clone() }, None, &sandbox, |_| {}).unwrap_err();
    assert!(e.contains("twice"), "{e}");
    let e = run(&ExperimentOptions { synthetic_weight: 1.0, ..o.clone() }, None, &sandbox, |_| {}).unwrap_err();
    assert!(e.contains("synthetic_weight = 1"), "{e}");
    // Not an experiment folder: refused, untouched.
    let mine = dir.path().join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "keep").unwrap();
    let e = run(&ExperimentOptions { out: mine.clone(), ..o.clone() }, None, &sandbox, |_| {}).unwrap_err();
    assert!(e.contains("not a data-quality experiment") && mine.join("notes.txt").is_file(), "{e}");
}
