//! The learned filter end to end: heads on synthetic embeddings, label files, a classifier on a
//! fixture model's embeddings, its identity check, and the prepare stage it drives.

use std::path::{Path, PathBuf};

use phi_classify::cv::cross_validate;
use phi_classify::{Classifier, ClassifyError, HeadKind, HeadSettings, Scorer, TrainOptions, read_labels, train_classifier};
use phi_data::prepare::{DocumentScorer, Input, PrepareConfig, ScoreFilter, TokenizerSource, prepare_with};
use rand::{Rng, SeedableRng};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../phi-core/tests/fixtures").join(name)
}

/// Six classes 0..=5, each a cluster around its own random centre in 16 dimensions.
fn clusters(per_class: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<f32>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let centres: Vec<Vec<f32>> = (0..6).map(|_| (0..16).map(|_| rng.random_range(-3.0..3.0)).collect()).collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for i in 0..per_class * 6 {
        let c = i % 6;
        x.push(centres[c].iter().map(|m| m + rng.random_range(-0.5..0.5)).collect());
        y.push(c as f32);
    }
    (x, y)
}

#[test]
fn both_heads_learn_separable_embeddings_under_cross_validation() {
    let (x, y) = clusters(25, 7);
    let r = cross_validate(&x, &y, 5, 3.0, &HeadSettings { trees: 60, ..Default::default() }).unwrap();
    print!("{}", r.table());
    for (name, m) in [("forest", &r.forest), ("logistic", &r.logistic)] {
        assert!(m.accuracy > 0.9 && m.macro_f1 > 0.9 && m.f1_at_threshold > 0.95, "{name}: {m:?}");
        assert!(m.spearman.unwrap() > 0.9, "{name}: {m:?}");
    }
    // The baseline is what chance-level looks like here: one class in six.
    assert!(r.majority.accuracy < 0.2, "{:?}", r.majority);
    assert_eq!(r.class_counts, (0..6).map(|c| (c, 25)).collect::<Vec<_>>());
    // Shuffled labels: nothing to learn, and cross-validation must say so.
    let mut shuffled = y.clone();
    use rand::seq::SliceRandom;
    shuffled.shuffle(&mut rand::rngs::StdRng::seed_from_u64(1));
    let r = cross_validate(&x, &shuffled, 5, 3.0, &HeadSettings { trees: 60, ..Default::default() }).unwrap();
    assert!(r.forest.accuracy < 0.45 && r.logistic.accuracy < 0.45, "{}", r.table());
}

#[test]
fn label_files_skip_unscored_relabel_read_paths_and_name_bad_records() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("doc.py"), "def f():\n    return 1\n").unwrap();
    let a = dir.path().join("annotations.jsonl");
    std::fs::write(&a, "{\"hash\":\"1\",\"text\":\"x = 1\",\"score\":1}\n{\"text\":\"y = 2\",\"score\":null}\n\n{\"text\":\"z = 3\",\"score\":4}\n").unwrap();
    let b = dir.path().join("mine.jsonl");
    std::fs::write(&b, "{\"path\":\"doc.py\",\"score\":5}\n{\"text\":\"x = 1\",\"score\":0}\n").unwrap();
    let (l, r) = read_labels(&[&a, &b]).unwrap();
    assert_eq!((r.records, r.unscored, r.relabeled, r.documents), (5, 1, 1, 3));
    let got: Vec<(&str, f32)> = l.iter().map(|l| (l.text.as_str(), l.score)).collect();
    assert_eq!(got, [("x = 1", 0.0), ("z = 3", 4.0), ("def f():\n    return 1\n", 5.0)]);
    assert!(l[0].origin.ends_with("mine.jsonl:2"), "{}", l[0].origin);

    for (line, want) in [
        ("{\"text\":\"a\"}", "no `score` field"),
        ("{\"text\":\"a\",\"score\":\"high\"}", "is not a number"),
        ("{\"score\":3}", "no `text` (or `path`) field"),
        ("{\"path\":\"missing.py\",\"score\":3}", "missing.py"),
        ("not json", "not a JSON record"),
    ] {
        std::fs::write(&b, format!("{{\"text\":\"ok\",\"score\":1}}\n{line}\n")).unwrap();
        let e = read_labels(&[&b]).unwrap_err().to_string();
        assert!(e.contains("mine.jsonl:2") && e.contains(want), "{line}: {e}");
    }
}

/// phi3-tiny with the word-level tokenizer (ids 0..512: "w7" is 7).
fn tiny_model(dir: &Path) -> PathBuf {
    let m = dir.join("model");
    std::fs::create_dir_all(&m).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("phi3-tiny").join(f), m.join(f)).unwrap();
    }
    std::fs::copy(fixture("word-tokenizer-512").join("tokenizer.json"), m.join("tokenizer.json")).unwrap();
    m
}

/// A document of 12 words drawn from ids `lo..hi`.
fn doc(rng: &mut impl Rng, lo: u32, hi: u32) -> String {
    (0..12).map(|_| format!("w{}", rng.random_range(lo..hi))).collect::<Vec<_>>().join(" ")
}

#[test]
fn a_classifier_on_model_embeddings_is_tied_to_its_model_and_filters_prepare() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    // "Good" documents use words 10..20, "bad" ones 300..310: the labels a judge would give.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let labels = tmp.path().join("labels.jsonl");
    let mut lines = String::new();
    for i in 0..40 {
        let (text, score) = if i % 2 == 0 { (doc(&mut rng, 10, 20), 4) } else { (doc(&mut rng, 300, 310), 1) };
        lines += &format!("{}\n", serde_json::json!({ "text": text, "score": score }));
    }
    std::fs::write(&labels, lines).unwrap();
    let device = phi_core::device::Backend::Cpu.device().unwrap();
    let opts = TrainOptions { folds: 4, heads: HeadSettings { trees: 40, ..Default::default() }, ..Default::default() };
    let clf = train_classifier(&[&labels], &model, &device, None, None, 8, &opts).unwrap();
    print!("{}", clf.report());
    assert!(clf.cv.forest.f1_at_threshold > 0.8 && clf.cv.logistic.f1_at_threshold > 0.8, "{}", clf.report());
    assert_eq!((clf.embedder.hidden_size, clf.embedder.max_tokens, clf.embedder.layer), (64, 128, None));
    let out = tmp.path().join("clf");
    clf.save(&out).unwrap();
    assert!(std::fs::read_to_string(out.join("report.txt")).unwrap().contains("cross-validation"));

    // Loaded again, both heads score as they did before saving.
    let back = Classifier::load(&out).unwrap();
    let probe: Vec<Vec<f32>> = clusters(1, 0).0.into_iter().map(|v| v.into_iter().cycle().take(64).collect()).collect();
    for head in [HeadKind::Forest, HeadKind::Logistic] {
        assert_eq!(back.predict(head, &probe).unwrap(), clf.predict(head, &probe).unwrap(), "{head}");
    }
    let scorer = Scorer::load(&out, None, &device, None, 8).unwrap();
    let (good, bad) = (doc(&mut rng, 10, 20), doc(&mut rng, 300, 310));
    let s = scorer.score(&[&good, &bad]).unwrap();
    assert!(s[0] > 2.5 && s[1] < 2.5, "unseen documents: good {}, bad {}", s[0], s[1]);

    // Another model, or the same config with other weights, is refused by name.
    let e = Scorer::load(&out, Some(&fixture("phi-tiny")), &device, None, 8).err().unwrap();
    assert!(matches!(e, ClassifyError::OtherModel { what: "config.json", .. }), "{e:?}");
    assert!(e.to_string().contains("config.json"), "{e}");
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(model.join(f), other.join(f)).unwrap();
    }
    let mut w = std::fs::read(model.join("model.safetensors")).unwrap();
    let last = w.len() - 1;
    w[last] ^= 1;
    std::fs::write(other.join("model.safetensors"), w).unwrap();
    let e = Scorer::load(&out, Some(&other), &device, None, 8).err().unwrap();
    assert!(matches!(e, ClassifyError::OtherModel { what: "weights (*.safetensors)", .. }), "{e:?}");
    assert!(e.to_string().contains("weights"), "{e}");
    // Not a classifier folder; and a folder of someone else's is never overwritten.
    let e = Classifier::load(tmp.path()).unwrap_err();
    assert!(matches!(e, ClassifyError::NotAClassifier { .. }) && e.to_string().contains("classifier.json"), "{e}");
    std::fs::write(tmp.path().join("mine.txt"), "keep").unwrap();
    assert!(matches!(clf.save(tmp.path()), Err(ClassifyError::Data(_))));
    assert_eq!(std::fs::read_to_string(tmp.path().join("mine.txt")).unwrap(), "keep");

    // The prepare stage: 20 good and 20 bad documents, the bad ones dropped.
    let corpus = tmp.path().join("corpus.jsonl");
    let mut lines = String::new();
    for i in 0..40 {
        let text = if i < 20 { doc(&mut rng, 10, 20) } else { doc(&mut rng, 300, 310) };
        lines += &format!("{}\n", serde_json::json!({ "text": text }));
    }
    std::fs::write(&corpus, lines).unwrap();
    let mut config = PrepareConfig::new(
        vec![Input::Jsonl { path: corpus, field: "text".into(), kind: phi_data::filters::DocKind::Text }],
        TokenizerSource::Train { vocab_size: 300 }, // the word-level fixture has no <|endoftext|>
    );
    config.filters = None;
    config.near_dedup = None;
    config.keep_documents = true;
    config.validation_fraction = 0.1;
    assert_eq!(clf.min_score, 2.5, "halfway between the classes of 'keep' (3) and below");
    config.classifier = Some(ScoreFilter { classifier: Some(out.clone()), min_score: clf.min_score, head: Some(scorer.head().to_string()) });
    let m = prepare_with(&config, Some(&scorer), &tmp.path().join("data"), None).unwrap();
    let r = m.report.scores.as_ref().unwrap();
    print!("{}", m.report.table());
    assert!(r.kept >= 18 && r.kept <= 22 && r.kept + r.dropped == 40, "{r:?}");
    let kept = std::fs::read_to_string(tmp.path().join("data/documents.jsonl")).unwrap();
    let low = kept.lines().filter(|l| l.split_whitespace().filter(|w| w.trim_start_matches("\"text\":\"").starts_with('w')).any(|w| w.trim_matches(|c: char| !c.is_ascii_digit()).parse::<u32>().is_ok_and(|n| n >= 300))).count();
    assert!(low <= 2, "{low} bad documents kept:\n{kept}");
}
