//! The `phi` binary on the usual mistakes and the sizes nothing can hold: a config field that
//! would divide by zero, a batch or a LoRA rank no memory fits, a run folder or a mistyped
//! preset given as a model, a weight that is no number, a plain folder given as a dataset, data
//! of another tokenizer. Each is an error that says what was expected and the nearest valid
//! thing — never a panic, an abort or a bare OS error. Also: what a run shows when its output
//! is no terminal, its MFU, and that `--steps` and `max_steps` are one setting.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

use common::{corpus, fixture};

fn phi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_phi"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A refusal: a non-zero exit with `expected` on stderr, and no panic or abort.
fn assert_refused(out: &Output, expected: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "succeeded: {err}");
    assert_eq!(out.status.code(), Some(1), "not a plain error exit (a panic is 101, an abort 134): {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(expected), "expected {expected:?} in: {err}");
}

/// `phi train` on a fifth of the shipped corpus with `toml` as overrides.
fn train(out: &Path, toml: &str, extra: &[&str]) -> Output {
    common::train_phi1(out, toml, extra)
}

#[test]
fn a_zero_head_count_is_an_error_naming_the_key_in_every_command() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("phi3-tiny/model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("phi3-tiny/config.json")).unwrap()).unwrap();
    // With num_key_value_heads beside it, this divided by zero in the parser (exit 101).
    config["num_attention_heads"] = 0.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let model = dir.path().to_str().unwrap();
    for args in [vec!["inspect", "--model", model], vec!["generate", "--model", model, "--prompt-ids", "1"]] {
        assert_refused(&phi().args(&args).output().unwrap(), "config field `num_attention_heads`");
    }
    let out = tempfile::tempdir().unwrap();
    let dpo = phi()
        .args(["dpo", "--policy"])
        .arg(fixture("phi-tiny"))
        .arg("--reference")
        .arg(dir.path())
        .arg("--data")
        .arg(fixture("dpo-phi-tiny/pairs.jsonl"))
        .arg("--out")
        .arg(out.path())
        .args(["--steps", "1", "--batch-size", "2"])
        .output()
        .unwrap();
    assert_refused(&dpo, "config field `num_attention_heads`");
}

#[test]
fn sizes_no_memory_holds_are_refused_with_the_estimate_before_anything_is_allocated() {
    // 100,000 sequences a micro-batch: the estimate against the memory there is, and the batch
    // that fits; before any data is prepared.
    let out = tempfile::tempdir().unwrap();
    let run = train(out.path(), "batch_size = 100000\n", &["--steps", "2"]);
    assert_refused(&run, "training config `batch_size`: this run needs about ");
    let err = stderr(&run);
    assert!(err.contains(" is available (") && err.contains("lower batch_size to at most"), "{err}");
    assert!(!out.path().join("data").exists(), "refused before preparing data");
    // A billion micro-batches a step allocate nothing (they are drawn one by one) but would
    // never finish a step: refused by name.
    let run = train(out.path(), "grad_accum = 1000000000\n", &["--steps", "2"]);
    assert_refused(&run, "training config `grad_accum`: 1000000000 micro-batches");
    // A LoRA rank beyond the projections' sides (64 here).
    let dpo = phi()
        .args(["dpo", "--lora", "--rank", "100000", "--policy"])
        .arg(fixture("phi-tiny"))
        .arg("--data")
        .arg(fixture("dpo-phi-tiny/pairs.jsonl"))
        .arg("--out")
        .arg(out.path().join("dpo"))
        .output()
        .unwrap();
    assert_refused(&dpo, "LoRA `rank` (r) 100000 is larger than the targeted projection");
}

#[test]
fn finetune_refuses_a_rank_beyond_the_base() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("phi3-tiny").join(f), dir.path().join(f)).unwrap();
    }
    std::fs::copy(fixture("word-tokenizer-512/tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
    let data = dir.path().join("sft.jsonl");
    std::fs::write(&data, (0..12).map(|i| format!(r#"{{"prompt": "w{i} w9", "response": "w8 w3"}}"#)).collect::<Vec<_>>().join("\n")).unwrap();
    let run = phi()
        .args(["finetune", "--steps", "2", "--batch-size", "2", "--rank", "100000", "--targets", "qkv_proj"])
        .arg("--base")
        .arg(dir.path())
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert_refused(&run, "LoRA `rank` (r) 100000 is larger than the targeted projection model.layers.0.self_attn.qkv_proj (64 → 192)");
}

#[test]
fn the_usual_mistakes_say_what_was_expected_and_the_nearest_valid_thing() {
    // A training run's folder as a model: where its models are.
    let run = tempfile::tempdir().unwrap();
    let ckpt = run.path().join("checkpoints/step-00000004");
    std::fs::create_dir_all(&ckpt).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("phi-tiny").join(f), ckpt.join(f)).unwrap();
    }
    let out = phi().args(["generate", "--prompt-ids", "1", "--model"]).arg(run.path()).output().unwrap();
    assert_refused(&out, &format!("not a model folder; the model folder under it is {}", ckpt.display()));
    // A mistyped preset: the presets, and the one meant.
    let out = phi().args(["inspect", "--model", "phi3"]).output().unwrap();
    assert_refused(&out, "`phi3` is neither a preset nor a model folder");
    assert!(stderr(&out).contains("phi-1, phi-1.5, phi-2, phi-3-mini") && stderr(&out).contains("did you mean `phi-3-mini`?"), "{}", stderr(&out));
    // A weight that is no number.
    let data = tempfile::tempdir().unwrap();
    let spec = format!("{}:abc", data.path().display());
    let out = train(&data.path().join("run"), "", &["--steps", "1", "--data", &spec]);
    assert_refused(&out, "the weight `abc` is not a number (expected DIR or DIR:WEIGHT");
    // A plain folder as a prepared dataset.
    let out = phi().args(["data", "inspect"]).arg(corpus()).output().unwrap();
    assert_refused(&out, "is not a prepared dataset: it has no manifest.json");
    assert!(stderr(&out).contains("phi data prepare"), "{}", stderr(&out));
}

#[test]
fn perplexity_refuses_data_of_another_tokenizer_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let prepared = phi()
        .args(["data", "prepare", "--vocab-size", "300", "--validation-fraction", "0.2", "--input"])
        .arg(corpus())
        .arg("--out")
        .arg(&data)
        .output()
        .unwrap();
    assert!(prepared.status.success(), "{}", stderr(&prepared));
    // Its output is no terminal: each stage says when it starts and ends.
    let err = stderr(&prepared);
    for stage in ["filter + dedup: 0.0 MiB/", "training a byte-level BPE tokenizer (vocab 300)", "tokenize: 0/"] {
        assert!(err.contains(stage), "{stage:?} in {err}");
    }
    assert!(err.contains("tokenize: ") && err.contains("(100%)  [done in "), "{err}");

    // phi3-tiny (512 ids) with a word-level tokenizer: the data's 300 BPE ids fit its
    // vocabulary, and would be scored as words.
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("phi3-tiny").join(f), model.join(f)).unwrap();
    }
    std::fs::copy(fixture("word-tokenizer-512/tokenizer.json"), model.join("tokenizer.json")).unwrap();
    let eval = |extra: &[&str]| phi().args(["eval", "perplexity", "--seq-len", "16", "--max-batches", "1", "--model"]).arg(&model).arg("--data").arg(&data).args(extra).output().unwrap();
    let out = eval(&[]);
    assert_refused(&out, &format!("{} was tokenized with {}", data.display(), data.join("tokenizer.json").display()));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    let forced = eval(&["--force"]);
    assert!(forced.status.success() && stderr(&forced).contains("warning: ") && stderr(&forced).contains("scoring it anyway"), "{}", stderr(&forced));
    // The data's own tokenizer: scored without a word.
    std::fs::copy(data.join("tokenizer.json"), model.join("tokenizer.json")).unwrap();
    let ok = eval(&[]);
    assert!(ok.status.success() && !stderr(&ok).contains("warning"), "{}", stderr(&ok));
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert!(v["loss"].as_f64().unwrap().is_finite(), "{v}");
}

#[test]
fn a_run_without_a_terminal_prints_progress_lines_and_mfu_only_against_a_peak() {
    let out = tempfile::tempdir().unwrap();
    let toml = "batch_size = 2\nseq_len = 32\neval_batches = 1\n";
    // On a CPU without --peak-flops: no MFU (the recipe's made-up peak gave figures over 100%).
    let run = train(out.path(), toml, &["--steps", "2"]);
    assert!(run.status.success(), "{}", stderr(&run));
    let err = stderr(&run);
    assert!(err.contains("train: 0/2 steps (0%)  [elapsed "), "{err}");
    assert!(err.contains("train: 2/2 steps (100%)  loss ") && err.contains("[done in "), "{err}");
    assert!(!err.contains("mfu"), "{err}");
    let metrics = |dir: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    assert!(metrics(out.path()).iter().all(|m| m["mfu"].is_null()), "{:?}", metrics(out.path()));
    // With the device's peak given: a figure in (0, 1].
    let run = train(out.path(), toml, &["--steps", "2", "--fresh", "--peak-flops", "1e15"]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stderr(&run).contains(" mfu "), "{}", stderr(&run));
    for m in metrics(out.path()) {
        let mfu = m["mfu"].as_f64().unwrap_or_else(|| panic!("{m}"));
        assert!(mfu > 0.0 && mfu <= 1.0, "{m}");
    }
}

#[test]
fn help_says_steps_and_max_steps_are_one_setting() {
    let help = phi().args(["train", "--help"]).output().unwrap();
    let text = String::from_utf8(help.stdout).unwrap();
    assert!(text.contains("the same as `max_steps` in --config") && text.contains("schedule follows the run's length"), "{text}");
}

/// `phi data prepare --parquet GLOB`: the shipped corpus as rows of two Parquet shards laid out
/// as the hub lays them out, prepared as its files are (the same documents kept, each row named
/// by its `path` column); a text column the files do not have is refused by name.
#[test]
fn data_prepare_reads_parquet_shards_by_glob_as_it_reads_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<_> = std::fs::read_dir(corpus()).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "py")).collect();
    files.sort();
    let rows: Vec<Vec<Option<Vec<u8>>>> = files.iter().map(|p| vec![Some(std::fs::read(p).unwrap()), Some(p.file_name().unwrap().to_string_lossy().as_bytes().to_vec())]).collect();
    std::fs::create_dir_all(dir.path().join("hub/data")).unwrap();
    let half = rows.len() / 2;
    for (i, part) in [&rows[..half], &rows[half..]].into_iter().enumerate() {
        let groups: Vec<_> = part.chunks(4).map(|g| g.to_vec()).collect();
        let path = dir.path().join(format!("hub/data/train-0000{i}-of-00002.parquet"));
        phi::data::parquet::write_string_columns(&path, &["content", "path"], &groups).unwrap();
    }
    let prepare = |out: &str, input: &[&str]| {
        let mut c = phi();
        let gpt2 = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/phi-data/tests/fixtures/tokenizers/gpt2/tokenizer.json");
        c.args(["data", "prepare", "--tokenizer"]).arg(gpt2).args(input).arg("--out").arg(dir.path().join(out));
        c.output().unwrap()
    };
    let glob = format!("{}/hub/data/*.parquet", dir.path().display());
    let out = prepare("from-parquet", &["--parquet", &glob, "--text-field", "content", "--path-field", "path", "--kind", "python", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let from_files = prepare("from-files", &["--input", corpus().to_str().unwrap(), "--json"]);
    assert!(from_files.status.success(), "{}", stderr(&from_files));
    let manifest = |out: &str| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(dir.path().join(out).join("manifest.json")).unwrap()).unwrap() };
    let (p, f) = (manifest("from-parquet"), manifest("from-files"));
    for split in ["train", "validation"] {
        assert_eq!(p["splits"][split]["documents"], f["splits"][split]["documents"], "{split}");
        assert_eq!(p["splits"][split]["tokens"], f["splits"][split]["tokens"], "{split}");
    }
    assert!(p["splits"]["train"]["documents"].as_u64().unwrap() > 10);

    let out = prepare("no-column", &["--parquet", &glob, "--text-field", "text"]);
    assert_refused(&out, "no column `text` (its columns: content, path)");
}

#[test]
fn a_zero_stage_the_tool_does_not_have_is_refused_by_the_flag() {
    let out = phi().args(["train", "--recipe", "phi-1", "--zero", "2"]).output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("--zero") && err.contains("expected 0 (no sharding) or 1"), "{err}");
}

/// A folder laid out as the hub lays out a dataset (`data/{split}-0000N-of-0000M.parquet`, or the
/// hub's conversion `{config}/{split}/NNNN.parquet`): `--input DIR --split S` reads that split's
/// shards; a split the folder does not have is refused, naming those it has.
#[test]
fn data_prepare_reads_a_split_of_a_dataset_in_the_hubs_layout() {
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<_> = std::fs::read_dir(corpus()).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "py")).collect();
    files.sort();
    let rows: Vec<Vec<Option<Vec<u8>>>> = files.iter().map(|p| vec![Some(std::fs::read(p).unwrap())]).collect();
    let write = |rel: &str, rows: &[Vec<Option<Vec<u8>>>]| {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        phi::data::parquet::write_string_columns(&path, &["text"], &[rows.to_vec()]).unwrap();
    };
    let (train, test) = rows.split_at(rows.len() - 3);
    write("pushed/data/train-00000-of-00002.parquet", &train[..6]);
    write("pushed/data/train-00001-of-00002.parquet", &train[6..]);
    write("pushed/data/test-00000-of-00001.parquet", test);
    write("converted/default/train/0000.parquet", train);
    let gpt2 = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/phi-data/tests/fixtures/tokenizers/gpt2/tokenizer.json");
    let prepare = |input: &str, split: &str, out: &str| {
        phi().args(["data", "prepare", "--kind", "python", "--split", split, "--tokenizer"]).arg(&gpt2).arg("--input").arg(dir.path().join(input)).arg("--out").arg(dir.path().join(out)).output().unwrap()
    };
    let documents = |out: &str| -> u64 {
        let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join(out).join("manifest.json")).unwrap()).unwrap();
        m["splits"]["train"]["documents"].as_u64().unwrap() + m["splits"]["validation"]["documents"].as_u64().unwrap()
    };
    for (input, out) in [("pushed", "a"), ("converted", "b")] {
        let r = prepare(input, "train", out);
        assert!(r.status.success(), "{input}: {}", stderr(&r));
    }
    assert_eq!(documents("a"), documents("b"), "both layouts hold the same train rows");
    assert!(documents("a") > 10);
    let r = prepare("pushed", "test", "c");
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(documents("c") <= 3);
    assert_refused(&prepare("pushed", "validation", "d"), "no Parquet files of split `validation`");
    assert_refused(&prepare("pushed", "validation", "d"), "it has the splits test, train");
}
