//! Preparation as N tasks keeps exactly what one process keeps: the same documents, the same
//! tokens, the same report counts, whatever the number of tasks, whether the stages run as a
//! local executor or one task at a time, and after a task dies half-way and is run again.

use std::path::Path;

use crate::common::fixture;
use phi_data::prepare::tasks::{self, TaskOutcome, TaskStage};
use phi_data::prepare::{Input, Manifest, PrepareConfig, TokenizerSource, prepare};
use phi_data::shard::Shard;

use super::data_pipeline::{HUMANEVAL_0, module, write};

/// `text` with `k` lines changed, spread through it.
fn edit(text: &str, k: usize) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let step = lines.len() / (k + 1);
    for j in 1..=k {
        lines[j * step] = format!("    edited_{j} = {j}  # changed line {j}");
    }
    lines.join("\n") + "\n"
}

/// Step `step` of chain `k`: each step a few more lines changed than the last, so a step can be
/// near the one before it and not near the one before that.
fn chain(n: usize, k: usize, step: usize) -> String {
    edit(&module(&format!("m{}", (k * 11) % n), (k * 11) % n), 2 * step)
}

/// A corpus of `n` modules read in this order: `a_early/` (near copies of late modules: the copy
/// comes first, so the original is the duplicate), `pkg00/`…, then `zz_late/` (exact copies of
/// early modules with other whitespace, near copies, chains of edits where each step is near the
/// previous one, HumanEval pasted into modules). The duplicates cross every task boundary.
pub fn planted_corpus(dir: &Path, n: usize) {
    for i in 0..n {
        write(dir, &format!("pkg{:02}/mod{i:04}.py", i / 100), &module(&format!("m{i}"), i));
    }
    for k in 0..24 {
        let early = (k * 37) % (n / 2);
        let late = n - 1 - (k * 53) % (n / 2);
        write(dir, &format!("zz_late/exact{k:02}.py"), &module(&format!("m{early}"), early).replace("    ", "\t"));
        write(dir, &format!("a_early/near_of_late{k:02}.py"), &edit(&module(&format!("m{late}"), late), 1));
        write(dir, &format!("zz_late/near{k:02}.py"), &edit(&module(&format!("m{early}"), early), 1 + k % 3));
        for step in 1..=4 {
            write(dir, &format!("zz_late/chain{k:02}_{step}.py"), &chain(n, k, step));
        }
    }
    for k in 0..6 {
        write(dir, &format!("pkg{:02}/leak{k}.py", (k * 3) % (n / 100).max(1)), &format!("{}\n\n{HUMANEVAL_0}", module(&format!("leak{k}"), 5000 + k)));
    }
}

pub fn planted_config(root: &Path, tokenizer: TokenizerSource) -> PrepareConfig {
    let mut c = PrepareConfig::new(vec![Input::Files { root: root.into(), pattern: "**/*.py".into(), exclude: vec![] }], tokenizer);
    c.validation_fraction = 0.1;
    c.shard_tokens = 50_000;
    c.chunk_mb = 1;
    c.keep_documents = true;
    c
}

/// Each split's tokens, all shards in order.
fn tokens(dir: &Path, m: &Manifest, split: &str) -> Vec<u32> {
    m.splits[split].shards.iter().flat_map(|s| Shard::open(dir.join(&s.file)).unwrap().to_vec()).collect()
}

/// What must not depend on how the run was split: kept documents, tokens, report counts and
/// examples, the tokenizer.
fn assert_same(one: (&Path, &Manifest), other: (&Path, &Manifest), what: &str) {
    let (a, ma) = one;
    let (b, mb) = other;
    assert_eq!(std::fs::read(a.join("documents.jsonl")).unwrap(), std::fs::read(b.join("documents.jsonl")).unwrap(), "{what}: kept documents");
    for split in ["train", "validation"] {
        assert_eq!(ma.splits[split].documents, mb.splits[split].documents, "{what}: {split} documents");
        assert_eq!(ma.splits[split].tokens, mb.splits[split].tokens, "{what}: {split} tokens");
        assert!(tokens(a, ma, split) == tokens(b, mb, split), "{what}: {split} token streams differ");
    }
    let counts = |m: &Manifest| {
        m.report.stages.iter().map(|s| (s.name.clone(), s.documents_in, s.documents_kept, s.bytes_kept, s.dropped.clone())).collect::<Vec<_>>()
    };
    assert_eq!(counts(ma), counts(mb), "{what}: report");
    // (Shard counts aside: each task rolls its own shards.)
    let split = |r: &phi_data::prepare::SplitReport| (r.documents, r.tokens);
    assert_eq!((split(&ma.report.train), split(&ma.report.validation)), (split(&mb.report.train), split(&mb.report.validation)), "{what}: split report");
    assert_eq!(ma.fingerprint, mb.fingerprint, "{what}: fingerprint");
    assert_eq!(std::fs::read(a.join("tokenizer.json")).unwrap(), std::fs::read(b.join("tokenizer.json")).unwrap(), "{what}: tokenizer");
    // The dataset reads and verifies as any prepared dataset.
    for split in ["train", "validation"] {
        assert_eq!(mb.dataset(b, split).unwrap().num_tokens() as u64, mb.splits[split].tokens);
    }
}

fn dropped(m: &Manifest, stage: &str, reason: &str) -> u64 {
    m.report.stages.iter().find(|s| s.name == stage).and_then(|s| s.dropped.get(reason)).map_or(0, |d| d.documents)
}

#[test]
fn tasks_keep_exactly_what_one_process_keeps() {
    let src = tempfile::tempdir().unwrap();
    planted_corpus(src.path(), 1200);
    let out = tempfile::tempdir().unwrap();
    let gpt2 = TokenizerSource::File(fixture("tokenizers/gpt2/tokenizer.json"));
    let cfg = planted_config(src.path(), gpt2);
    let one_dir = out.path().join("one");
    let one = prepare(&cfg, &one_dir, None).unwrap();
    // The planted duplicates and leaks are there to be found.
    assert!(dropped(&one, "exact dedup", "exact duplicate") >= 24, "{}", one.report.table());
    assert!(dropped(&one, "near dedup", "near duplicate") >= 40, "{}", one.report.table());
    assert!(dropped(&one, "decontaminate", "shares an n-gram with an eval set") >= 6, "{}", one.report.table());
    // Chains where a kept document's near duplicate is dropped and that duplicate's own near
    // duplicate is not near the kept one: kept by the one-process rule, dropped by clustering.
    let nd = phi_data::quality::NearDup::default();
    let chains = (0..24)
        .filter(|&k| {
            let sig = |step| if step == 0 { nd.signature(&module(&format!("m{}", (k * 11) % 1200), (k * 11) % 1200)) } else { nd.signature(&chain(1200, k, step)) };
            let s: Vec<Vec<u64>> = (0..=4).map(sig).collect();
            (0..3).any(|a| nd.similar(&s[a], &s[a + 1]) && nd.similar(&s[a + 1], &s[a + 2]) && !nd.similar(&s[a], &s[a + 2]))
        })
        .count();
    assert!(chains >= 3, "only {chains} chains where clustering and the one-process rule differ");

    for (n, workers) in [(4, 2), (3, 3), (1, 1)] {
        let dir = out.path().join(format!("tasks{n}"));
        let m = tasks::prepare_in_tasks(&cfg, None, &dir, n, workers).unwrap();
        assert_same((&one_dir, &one), (&dir, &m), &format!("{n} tasks"));
        assert!(!tasks::work_dir(&dir).exists(), "the work folder is removed after the merge");
        assert!(m.splits["train"].shards.len() >= 2, "several shards");
        // A second run finds the dataset made.
        let again = tasks::run_task(&cfg, None, &dir, n, TaskStage::Signatures, 0).unwrap();
        assert_eq!(again, TaskOutcome::AlreadyPrepared);
    }

    // The stages one task at a time, in an order a cluster might run them (last task first),
    // and a trained tokenizer: trained once, the same as one process trains.
    let trained = {
        let mut c = cfg.clone();
        c.tokenizer = TokenizerSource::Train { vocab_size: 600 };
        c
    };
    let one_t = out.path().join("one-trained");
    let m1 = prepare(&trained, &one_t, None).unwrap();
    let dir = out.path().join("by-hand");
    for stage in tasks::stages(&trained) {
        for task in (0..stage.tasks(4)).rev() {
            match tasks::run_task(&trained, None, &dir, 4, stage, task).unwrap() {
                TaskOutcome::Ran(done) => assert!(done.stage == stage.name() && done.task == task && !done.summary.is_empty()),
                other => panic!("{stage} {task}: {other:?}"),
            }
        }
    }
    assert_same((&one_t, &m1), (&dir, &Manifest::read(&dir).unwrap()), "stages by hand, trained tokenizer");
}

/// What a task killed at any point leaves: a temporary, outputs without their marker, a merge's
/// half-built `.partial`. Rerunning redoes those tasks and the result is unchanged.
#[test]
fn a_task_killed_half_way_and_rerun_changes_nothing() {
    let src = tempfile::tempdir().unwrap();
    planted_corpus(src.path(), 600);
    let out = tempfile::tempdir().unwrap();
    let cfg = planted_config(src.path(), TokenizerSource::File(fixture("tokenizers/gpt2/tokenizer.json")));
    let one_dir = out.path().join("one");
    let one = prepare(&cfg, &one_dir, None).unwrap();

    let dir = out.path().join("killed");
    let work = tasks::work_dir(&dir);
    let run = |stage, task| tasks::run_task(&cfg, None, &dir, 3, stage, task).unwrap();
    for stage in tasks::stages(&cfg) {
        for task in 0..stage.tasks(3) {
            match (stage, task) {
                (TaskStage::Merge, _) => {
                    // Died half-way: the .partial holds a marker and one linked shard.
                    let partial = out.path().join("killed.partial");
                    std::fs::create_dir_all(&partial).unwrap();
                    std::fs::write(partial.join("partial.json"), r#"{"format": "phi-token-shards", "version": 1}"#).unwrap();
                    std::fs::write(partial.join("train-00000.bin"), b"half").unwrap();
                }
                (TaskStage::Signatures, 1) | (TaskStage::Filter, 2) | (TaskStage::Tokenize, 0) => {
                    // Its outputs written, killed before the marker; and a stale temporary.
                    assert!(matches!(run(stage, task), TaskOutcome::Ran(_)));
                    let marker = work.join(format!("done-{stage}-{task:05}.json"));
                    std::fs::remove_file(&marker).unwrap();
                    std::fs::write(work.join(format!("kept-{task:05}.tmp")), b"{\"validation\": fal").unwrap();
                    if stage == TaskStage::Filter {
                        // Cut short mid-write, as a kill between write and rename cannot leave it,
                        // but as a full disk might.
                        std::fs::write(work.join(format!("kept-{task:05}.jsonl")), b"").unwrap();
                    }
                }
                _ => {}
            }
            if stage != TaskStage::Merge {
                run(stage, task);
            }
        }
    }
    assert!(matches!(run(TaskStage::Merge, 0), TaskOutcome::Ran(_)));
    let m = Manifest::read(&dir).unwrap();
    assert_same((&one_dir, &one), (&dir, &m), "killed and rerun");
}

#[test]
fn a_task_of_another_run_is_refused_naming_the_difference() {
    let src = tempfile::tempdir().unwrap();
    planted_corpus(src.path(), 200);
    let out = tempfile::tempdir().unwrap();
    let cfg = planted_config(src.path(), TokenizerSource::File(fixture("tokenizers/gpt2/tokenizer.json")));
    let dir = out.path().join("d");
    let work = tasks::work_dir(&dir);
    tasks::run_task(&cfg, None, &dir, 2, TaskStage::Signatures, 0).unwrap();

    // Out of order: buckets before every signatures task is done.
    let e = tasks::run_task(&cfg, None, &dir, 2, TaskStage::Buckets, 0).unwrap_err().to_string();
    assert!(e.contains("stage buckets needs every task of stage signatures") && e.contains("task(s) 1 of its 2"), "{e}");
    // No such task.
    let e = tasks::run_task(&cfg, None, &dir, 2, TaskStage::Clusters, 1).unwrap_err().to_string();
    assert!(e.contains("stage clusters has 1 task(s)"), "{e}");
    // A task another process is running (it holds the task's lock) is refused, not run twice.
    let held = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(work.join("lock-signatures-00001")).unwrap();
    held.lock().unwrap();
    let e = tasks::run_task(&cfg, None, &dir, 2, TaskStage::Signatures, 1).unwrap_err().to_string();
    assert!(e.contains("being run by another process"), "{e}");
    drop(held);
    // Another configuration, another number of tasks, changed input files.
    let mut other = cfg.clone();
    other.near_dedup.as_mut().unwrap().threshold = 0.8;
    let e = tasks::run_task(&other, None, &dir, 2, TaskStage::Signatures, 1).unwrap_err().to_string();
    assert!(e.contains("near_dedup.threshold: 0.7 → 0.8") && e.contains("finished tasks are kept"), "{e}");
    let e = tasks::run_task(&cfg, None, &dir, 3, TaskStage::Signatures, 1).unwrap_err().to_string();
    assert!(e.contains("planned for 2 tasks, not 3"), "{e}");
    write(src.path(), "pkg00/new.py", &module("new", 9999));
    let e = tasks::run_task(&cfg, None, &dir, 2, TaskStage::Signatures, 1).unwrap_err().to_string();
    assert!(e.contains("the input files changed") && e.contains("new.py is new"), "{e}");
    std::fs::remove_file(src.path().join("pkg00/new.py")).unwrap();
    // Without dedup there are no dedup stages.
    let mut plain = cfg.clone();
    plain.exact_dedup = false;
    plain.near_dedup = None;
    assert_eq!(tasks::stages(&plain), [TaskStage::Filter, TaskStage::Tokenizer, TaskStage::Tokenize, TaskStage::Merge]);

    // A file of someone else's in the work folder: nothing is touched, the error names it.
    std::fs::write(work.join("notes.txt"), "mine").unwrap();
    let e = tasks::run_task(&cfg, None, &dir, 2, TaskStage::Signatures, 1).unwrap_err().to_string();
    assert!(e.contains("notes.txt"), "{e}");
    assert!(work.join("notes.txt").exists());
    std::fs::remove_file(work.join("notes.txt")).unwrap();
    // A work folder that is not ours at all.
    let foreign = out.path().join("f");
    std::fs::create_dir_all(tasks::work_dir(&foreign)).unwrap();
    std::fs::write(tasks::work_dir(&foreign).join("data.csv"), "a,b").unwrap();
    let e = tasks::run_task(&cfg, None, &foreign, 2, TaskStage::Signatures, 0).unwrap_err().to_string();
    assert!(e.contains("does not carry our marker") && e.contains("left as it is"), "{e}");
    assert!(tasks::work_dir(&foreign).join("data.csv").exists());

    // The run completes after all that, as planned.
    let m = tasks::prepare_in_tasks(&cfg, None, &dir, 2, 2).unwrap();
    let one = prepare(&cfg, &out.path().join("one"), None).unwrap();
    assert_same((&out.path().join("one"), &one), (&dir, &m), "after the refusals");
}

/// The corpus's `.py` files, in reading order, as (relative path, text).
fn files_of(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.strip_prefix(dir).unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_kind_of_run_keeps_what_one_process_keeps() {
    use phi_data::filters::DocKind;
    use phi_data::prepare::{DocumentScorer, ScoreFilter, prepare_with};
    let src = tempfile::tempdir().unwrap();
    planted_corpus(src.path(), 300);
    let out = tempfile::tempdir().unwrap();
    let base = planted_config(src.path(), TokenizerSource::File(fixture("tokenizers/gpt2/tokenizer.json")));
    let mut cases: Vec<(&str, PrepareConfig, usize, Option<&dyn DocumentScorer>)> = Vec::new();

    // Near dedup alone: exact copies are near duplicates; exact dedup alone; neither (no dedup stages).
    let mut c = base.clone();
    c.exact_dedup = false;
    cases.push(("near dedup alone", c, 3, None));
    let mut c = base.clone();
    c.near_dedup = None;
    cases.push(("exact dedup alone", c, 2, None));
    let mut c = base.clone();
    (c.exact_dedup, c.near_dedup) = (false, None);
    cases.push(("no dedup", c, 3, None));

    // The classifier stage (a stand-in scorer: m{i} scores i / 3).
    let clf = out.path().join("clf");
    std::fs::create_dir_all(&clf).unwrap();
    std::fs::write(clf.join("classifier.json"), "{}").unwrap();
    let mut c = base.clone();
    c.classifier = Some(ScoreFilter { classifier: Some(clf), min_score: 60.0, head: None });
    cases.push(("classifier", c, 3, Some(&super::data_pipeline::NameScorer)));

    // The same documents as 5 JSONL files (with a blank line and a malformed record), and as 3
    // Parquet files of 2 row groups (with a null).
    let files = files_of(src.path());
    let jsonl = out.path().join("jsonl");
    std::fs::create_dir_all(&jsonl).unwrap();
    let mut inputs = Vec::new();
    for (i, part) in files.chunks(files.len().div_ceil(5)).enumerate() {
        let path = jsonl.join(format!("part{i}.jsonl"));
        let mut text: String = part.iter().map(|(p, t)| serde_json::json!({ "text": t, "path": p }).to_string() + "\n").collect();
        if i == 2 {
            text += "\n{\"text\": 3}\nnot json\n";
        }
        std::fs::write(&path, text).unwrap();
        inputs.push(Input::Jsonl { path, field: "text".into(), kind: DocKind::Python });
    }
    let mut c = base.clone();
    c.inputs = inputs;
    cases.push(("JSONL", c, 4, None));
    let parquet = out.path().join("parquet");
    std::fs::create_dir_all(&parquet).unwrap();
    for (i, part) in files.chunks(files.len().div_ceil(3)).enumerate() {
        let mut rows: Vec<Vec<Option<Vec<u8>>>> = part.iter().map(|(p, t)| vec![Some(t.clone().into_bytes()), Some(p.clone().into_bytes())]).collect();
        if i == 1 {
            rows.insert(5, vec![None, Some(b"null.py".to_vec())]);
        }
        let groups: Vec<Vec<Vec<Option<Vec<u8>>>>> = rows.chunks(rows.len().div_ceil(2)).map(<[_]>::to_vec).collect();
        phi_data::parquet::write_string_columns(&parquet.join(format!("train-{i:05}-of-00003.parquet")), &["content", "path"], &groups).unwrap();
    }
    let mut c = base.clone();
    c.inputs = vec![Input::parquet(&format!("{}/*.parquet", parquet.display()), "content", DocKind::Python, Some("path"))];
    cases.push(("Parquet", c, 3, None));

    // More tasks than files, every document hashed into validation: one moves across, as in one process.
    let few = out.path().join("few");
    for i in 0..3 {
        write(&few, &format!("m{i}.py"), &module(&format!("m{i}"), 7000 + i));
    }
    let mut c = planted_config(&few, TokenizerSource::Train { vocab_size: 300 });
    c.validation_fraction = 0.999;
    cases.push(("5 tasks on 3 files, a document moved across splits", c, 5, None));

    for (i, (what, c, n, scorer)) in cases.into_iter().enumerate() {
        let (a, b) = (out.path().join(format!("one{i}")), out.path().join(format!("tasks{i}")));
        let one = prepare_with(&c, scorer, &a, None).unwrap();
        let m = tasks::prepare_in_tasks(&c, scorer, &b, n, 2).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_same((&a, &one), (&b, &m), what);
        assert!(one.splits["train"].documents > 0, "{what}");
    }
}
