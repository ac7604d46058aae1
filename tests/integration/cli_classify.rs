//! `phi data classifier train` and `phi data prepare --classifier` end to end on a fixture model.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::fixture;

fn phi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_phi"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{:?}\n{}\n{}", cmd, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn fails(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{cmd:?} should fail:\n{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stderr).unwrap()
}

/// 12 words from ids `lo..lo + 10` of the word-level fixture tokenizer, a different draw for
/// every `i` (splitmix64).
fn doc(lo: usize, i: usize) -> String {
    let mut x = i as u64;
    (0..12)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            format!("w{}", lo + ((z ^ (z >> 31)) % 10) as usize)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn jsonl(path: &Path, records: impl Iterator<Item = serde_json::Value>) {
    std::fs::write(path, records.map(|r| format!("{r}\n")).collect::<String>()).unwrap();
}

#[test]
fn classifier_train_then_prepare_with_it_then_rethreshold_stored_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("phi3-tiny").join(f), model.join(f)).unwrap();
    }
    std::fs::copy(fixture("word-tokenizer-512").join("tokenizer.json"), model.join("tokenizer.json")).unwrap();
    // Annotations as `phi data annotate` writes them (one unparsed), plus hand labels.
    let ann = tmp.path().join("annotations.jsonl");
    jsonl(
        &ann,
        (0..30).map(|i| {
            let (text, score) = if i % 2 == 0 { (doc(10, i), serde_json::json!(4)) } else { (doc(300, i), serde_json::json!(1)) };
            serde_json::json!({ "hash": i.to_string(), "origin": "x", "text": text, "score": if i == 29 { serde_json::Value::Null } else { score } })
        }),
    );
    let mine = tmp.path().join("mine.jsonl");
    jsonl(&mine, (30..40).map(|i| serde_json::json!({ "text": if i % 2 == 0 { doc(10, i) } else { doc(300, i) }, "score": if i % 2 == 0 { 5 } else { 0 } })));
    let clf = tmp.path().join("clf");
    let out = run(phi()
        .args(["data", "classifier", "train", "--folds", "3", "--trees", "30", "--annotations"])
        .arg(&ann)
        .arg("--labels")
        .arg(&mine)
        .arg("--embed-model")
        .arg(&model)
        .arg("--out")
        .arg(&clf));
    assert!(out.contains("40 records, 1 without a score (skipped), 0 relabelled, 39 documents"), "{out}");
    assert!(out.contains("3-fold cross-validation") && out.contains("forest") && out.contains("logistic") && out.contains("majority"), "{out}");
    assert!(out.contains("keeping scores >= 2.5 by default"), "{out}");
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(clf.join("classifier.json")).unwrap()).unwrap();
    assert_eq!(saved["format"], "phi-quality-classifier");
    assert!(saved["cv"]["logistic"]["f1_at_threshold"].as_f64().unwrap() > 0.8, "{}", saved["cv"]);

    // Prepare with it: half the corpus is the "bad" kind.
    let corpus = tmp.path().join("corpus.jsonl");
    jsonl(&corpus, (100..140).map(|i| serde_json::json!({ "text": if i < 120 { doc(10, i) } else { doc(300, i) } })));
    let prep = |out: &Path| {
        let mut c = phi();
        c.args(["data", "prepare", "--no-filters", "--no-near-dedup", "--no-exact-dedup", "--vocab-size", "300", "--validation-fraction", "0.1", "--keep-documents", "--jsonl"])
            .arg(&corpus)
            .arg("--out")
            .arg(out);
        c
    };
    let data = tmp.path().join("data");
    let out = run(prep(&data).arg("--classifier").arg(&clf));
    assert!(out.contains("classifier") && out.contains("at >= 2.5"), "{out}");
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(data.join("manifest.json")).unwrap()).unwrap();
    let kept = manifest["report"]["scores"]["kept"].as_u64().unwrap();
    assert!((18..=22).contains(&kept), "{}", manifest["report"]["scores"]);
    assert_eq!(manifest["config"]["classifier"]["min_score"], 2.5);
    assert_eq!(manifest["config"]["classifier"]["head"], saved["head"], "the scoring head is recorded");

    // A `[classifier]` table from --config keeps what the flags do not name; another head is
    // another dataset.
    let toml = tmp.path().join("prep.toml");
    std::fs::write(&toml, "[classifier]\nmin_score = 3.9\n").unwrap();
    let other_head = if saved["head"] == "forest" { "logistic" } else { "forest" };
    let d2 = tmp.path().join("data2");
    run(prep(&d2).arg("--config").arg(&toml).arg("--classifier").arg(&clf).args(["--classifier-head", other_head]));
    let m2: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d2.join("manifest.json")).unwrap()).unwrap();
    assert_eq!((m2["config"]["classifier"]["min_score"].as_f64(), m2["config"]["classifier"]["head"].as_str()), (Some(3.9), Some(other_head)));
    assert_ne!(m2["fingerprint"], manifest["fingerprint"]);

    // Re-threshold the kept documents by their stored scores: no model needed.
    let stored: Vec<f64> = std::fs::read_to_string(data.join("documents.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["score"].as_f64().unwrap())
        .collect();
    assert_eq!(stored.len() as u64, kept);
    let mut sorted = stored.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2] as f32;
    let above = stored.iter().filter(|&&s| s as f32 >= median).count();
    for (min, want) in [(median, above), (-100.0, stored.len())] {
        let again = tmp.path().join(format!("again{min}"));
        let out = run(phi()
            .args(["data", "prepare", "--no-filters", "--no-near-dedup", "--vocab-size", "300", "--validation-fraction", "0.1", "--min-score", &min.to_string(), "--jsonl"])
            .arg(data.join("documents.jsonl"))
            .arg("--out")
            .arg(&again));
        assert!(out.contains("stored scores") && out.contains(&format!("kept {want} at >= {min}")), "{out}");
    }

    // Mistakes are named.
    let e = fails(prep(&tmp.path().join("x")).arg("--classifier").arg(&clf).arg("--embed-model").arg(fixture("phi-tiny")));
    assert!(e.contains("config.json") && e.contains("meaningless"), "{e}");
    let e = fails(prep(&tmp.path().join("x")).args(["--classifier-head", "forest"]));
    assert!(e.contains("go with --classifier"), "{e}");
    let e = fails(prep(&tmp.path().join("x")).arg("--classifier").arg(tmp.path()));
    assert!(e.contains("classifier.json"), "{e}");
    let e = fails(phi().args(["data", "classifier", "train", "--embed-model"]).arg(&model).arg("--out").arg(tmp.path().join("c2")));
    assert!(e.contains("no labels"), "{e}");
    // Too few labels for the folds, and an --out that is not ours: refused before embedding.
    let e = fails(phi().args(["data", "classifier", "train", "--folds", "50", "--labels"]).arg(&mine).arg("--embed-model").arg(&model).arg("--out").arg(tmp.path().join("c3")));
    assert!(e.contains("50-fold") && e.contains("have 10"), "{e}");
    let e = fails(phi().args(["data", "classifier", "train", "--labels"]).arg(&mine).arg("--embed-model").arg(&model).arg("--out").arg(&model));
    assert!(e.contains("not a quality classifier"), "{e}");
    assert!(model.join("model.safetensors").is_file());
}
