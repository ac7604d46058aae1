//! The `phi` binary end to end: generate from ids and from text, inspect, clear errors.

use crate::common;

use std::process::Command;

use common::{chat, fixture, load_reference};

fn phi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_phi"))
}

#[test]
fn generate_from_prompt_ids_prints_the_greedy_reference() {
    let reference = load_reference(fixture("phi-tiny").join("reference.safetensors"));
    let expected = reference["greedy_ids"].ids_u32();
    let prompt: Vec<String> = expected[..5].iter().map(u32::to_string).collect();
    let out = phi()
        .args(["generate", "--model"])
        .arg(fixture("phi-tiny"))
        .args(["--prompt-ids", &prompt.join(","), "--max-new-tokens", "12"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Vec<u32> =
        String::from_utf8(out.stdout).unwrap().trim().split(',').map(|t| t.parse().unwrap()).collect();
    // The fixture config's eos id (2) may stop generation early; the prefix must match.
    assert!(printed.len() > 5 && expected.starts_with(&printed), "{printed:?} vs {expected:?}");
}

/// `--batch`: prompts decoded together print transformers' greedy tokens for the reference
/// prompt and, for every record, what `--prompt-ids` prints for it alone; a bad record is named.
#[test]
fn generate_batch_prints_each_prompts_own_continuation() {
    let reference = load_reference(fixture("phi-tiny").join("reference.safetensors"));
    let expected = reference["greedy_ids"].ids_u32();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompts.jsonl");
    let prompts: Vec<Vec<u32>> = vec![expected[..5].to_vec(), vec![7, 8], (10..40).collect(), vec![3]];
    let lines: Vec<String> = prompts.iter().enumerate().map(|(i, p)| serde_json::json!({"prompt_ids": p, "max_new_tokens": 4 + 2 * i, "seed": i, "temperature": if i == 3 { 0.8 } else { 0.0 }}).to_string()).collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = phi().args(["generate", "--max-batch", "2", "--model"]).arg(fixture("phi-tiny")).arg("--batch").arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 4);
    for (i, (row, p)) in rows.iter().zip(&prompts).enumerate() {
        assert_eq!(row["index"], i);
        let ids: Vec<u32> = serde_json::from_value(row["ids"].clone()).unwrap();
        let joined: Vec<String> = p.iter().map(u32::to_string).collect();
        let mut alone = phi();
        alone.args(["generate", "--model"]).arg(fixture("phi-tiny"));
        alone.args(["--prompt-ids", &joined.join(","), "--max-new-tokens", &(4 + 2 * i).to_string(), "--seed", &i.to_string()]);
        if i == 3 {
            alone.args(["--temperature", "0.8"]);
        }
        let alone = alone.output().unwrap();
        let printed: Vec<u32> = String::from_utf8(alone.stdout).unwrap().trim().split(',').map(|t| t.parse().unwrap()).collect();
        assert_eq!(printed[p.len()..], ids[..], "record {i}");
        if i == 0 {
            assert!(expected.starts_with(&printed), "{printed:?} vs transformers' {expected:?}");
        }
    }
    std::fs::write(&file, "{\"prompt_ids\": [1, 2]}\n{\"max_new_tokens\": 3}\n").unwrap();
    let bad = phi().args(["generate", "--model"]).arg(fixture("phi-tiny")).arg("--batch").arg(&file).output().unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("line 2: neither `prompt` (text) nor `prompt_ids`"), "{err}");
}

/// phi3-tiny in a scratch folder with a word-level tokenizer over its 512 ids: "the cat sat" are
/// 3, 4, 5, the chat markers have ids too, the rest are "wN".
fn phi3_tiny_with_tokenizer() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("phi3-tiny").join(f), dir.path().join(f)).unwrap();
    }
    std::fs::copy(fixture("word-tokenizer-512").join("tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
    dir
}

#[test]
fn generate_from_text_uses_the_folder_tokenizer() {
    let dir = phi3_tiny_with_tokenizer();
    let out = phi()
        .args(["generate", "--model"])
        .arg(dir.path())
        .args(["--prompt", "the cat sat", "--max-new-tokens", "5", "--stop", "0,1,2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("the cat sat"), "{text}");
    assert!(text.trim().len() > "the cat sat".len(), "nothing generated: {text:?}");
}


#[test]
fn chat_streams_replies_keeps_history_and_ends_at_eof() {
    // Three turns, the second of them a reset; the history of 40 words overflows the
    // 128-token context, so old turns must be dropped rather than erroring.
    let long = "the cat sat ".repeat(14);
    let out = chat(phi3_tiny_with_tokenizer().path(), format!("the cat\n/reset\n{long}\n{long}\n").as_bytes());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.matches("> ").count(), 5, "a prompt per input line plus the final one: {text:?}");
    assert!(text.contains('w'), "replies were printed: {text:?}");
}

#[test]
fn chat_shows_a_banner_and_its_commands_and_survives_a_line_that_is_not_utf8() {
    // After /quit nothing more is read: the last line gets no prompt and no reply.
    let dir = phi3_tiny_with_tokenizer();
    let out = chat(dir.path(), b"/help\n\xff\xfe latin-1 \xe9t\xe9\nthe cat\n/reset\n/nonsense\n/quit\nthe cat\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let banner = text.lines().next().unwrap();
    assert!(banner.contains(&dir.path().display().to_string()) && banner.contains("phi3 family") && banner.contains("Phi-3 chat format"), "{text}");
    assert!(text.contains("/help shows this, /reset starts a new conversation, /quit"), "{text}");
    assert!(text.contains("(that line is not UTF-8 text, so it was not sent"), "{text}");
    assert!(text.contains("(conversation cleared)"), "{text}");
    assert!(text.contains("(unknown command /nonsense;"), "{text}");
    assert_eq!(text.matches("> ").count(), 6, "a prompt per line up to /quit: {text:?}");
    assert!(text.contains('w'), "the reply to `the cat` was printed: {text:?}");
}

#[test]
fn missing_model_folder_is_a_clear_error() {
    let out = phi().args(["generate", "--model", "/nonexistent/model", "--prompt-ids", "1"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("/nonexistent/model/config.json"), "{err}");
}

#[test]
fn a_backend_that_is_not_built_in_is_named_as_the_flag_takes_it() {
    // ndarray: the one backend scripts/test never compiles in (its build has flex, wgpu and cuda).
    if cfg!(feature = "ndarray") {
        return;
    }
    let out = phi().args(["generate", "--device", "ndarray", "--prompt-ids", "1", "--model"]).arg(fixture("phi-tiny")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("the ndarray backend needs the `ndarray` cargo feature: rebuild with `--features ndarray`"), "{err}");
}

#[test]
fn inspect_reports_preset_parameters() {
    let out = phi().args(["inspect", "--model", "phi-2"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("2779683840"), "{text}");
    assert!(text.contains("parallel / LayerNorm / plain (gelu_new)"), "{text}");
}

#[test]
fn train_recipe_runs_end_to_end_on_the_shipped_corpus_and_resumes() {
    let out = tempfile::tempdir().unwrap();
    let toml = out.path().join("override.toml");
    std::fs::write(&toml, "batch_size = 4\nseq_len = 32\neval_batches = 2\ncheckpoint_every = 2\n[schedule]\nwarmup_steps = 1\n").unwrap();
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/corpus/python");
    let run = |steps: &str| {
        phi()
            .args(["train", "--recipe", "phi-3-mini", "--steps", steps, "--vocab-size", "300", "--max-corpus-mb", "0.2"])
            .arg("--corpus")
            .arg(&corpus)
            .arg("--config")
            .arg(&toml)
            .arg("--out")
            .arg(out.path())
            .output()
            .unwrap()
    };
    let first = run("3");
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let text = String::from_utf8(first.stdout).unwrap();
    assert!(text.contains("validation loss:") && text.contains("def fibonacci"), "{text}");
    let second = run("4");
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    let text = String::from_utf8(second.stdout).unwrap();
    assert!(text.contains("resumed from the checkpoint at step 3"), "{text}");
    assert!(text.contains("data: reusing"), "the prepared shards are reused: {text}");
    let metrics = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 4);
    assert!(std::fs::read(out.path().join("loss.png")).unwrap().starts_with(b"\x89PNG"), "the loss curve is drawn");
    // The final checkpoint is a complete HF folder with its tokenizer: `phi generate` runs on it.
    let ckpt = out.path().join("checkpoints/step-00000004");
    let generated = phi().args(["generate", "--max-new-tokens", "5", "--prompt", "def f(x):"]).arg("--model").arg(&ckpt).output().unwrap();
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
}

#[test]
fn export_merges_a_peft_adapter_into_a_plain_checkpoint() {
    let out = tempfile::tempdir().unwrap();
    let status = phi()
        .args(["export", "--model"])
        .arg(fixture("phi-tiny"))
        .arg("--adapter")
        .arg(fixture("lora-phi-tiny"))
        .arg("--merge")
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let device = burn::tensor::Device::default();
    let merged = phi_core::PhiForCausalLM::from_pretrained(out.path(), &device).unwrap();
    let reference = load_reference(fixture("lora-phi-tiny/reference.safetensors"));
    let d = common::max_abs_diff("logits", merged.forward(reference["input_ids"].ids_tensor(&device)), &reference["logits"]);
    assert!(d < 1e-4, "merged export differs from PEFT's adapted logits by {d}");
}

/// `--max-shard-size`: weights over the limit go to shards and an index, as transformers'
/// `save_pretrained` writes them (the same index, byte for byte; transformers loads the folder
/// to its reference logits exactly, checked once); the folder loads back to the same logits,
/// and exporting over it (ours, sharded) again works.
#[test]
fn export_shards_weights_over_the_max_shard_size_and_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sharded");
    let export = |size: &str| phi().args(["export", "--max-shard-size", size, "--model"]).arg(fixture("phi3-tiny")).arg("--out").arg(&out).output().unwrap();
    let run = export("200KB");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let text = std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap();
    // What transformers' save_pretrained(max_shard_size="200KB") writes for this model
    // (fixtures/sharded-index/make_index.py): the same shards, the same index, byte for byte.
    assert_eq!(text, std::fs::read_to_string(fixture("sharded-index/phi3-tiny-200KB.index.json")).unwrap());
    let index: serde_json::Value = serde_json::from_str(&text).unwrap();
    let shards: std::collections::BTreeSet<&str> = index["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap()).collect();
    let n = shards.len();
    assert!(n >= 3, "{index}");
    for (i, shard) in shards.iter().enumerate() {
        assert_eq!(*shard, format!("model-{:05}-of-{n:05}.safetensors", i + 1));
        let bytes = std::fs::metadata(out.join(shard)).unwrap().len();
        // The limit counts tensor bytes; a shard file adds its header.
        assert!(bytes < 200_000 + 4096, "{shard}: {bytes} bytes");
    }
    assert!(!out.join("model.safetensors").exists());
    let device = burn::tensor::Device::default();
    let model = phi_core::PhiForCausalLM::from_pretrained(&out, &device).unwrap();
    let params = model.num_params() as u64;
    assert_eq!(index["metadata"], serde_json::json!({"total_parameters": params, "total_size": 4 * params}), "f32 tensors' bytes");
    let reference = load_reference(fixture("phi3-tiny/reference.safetensors"));
    let d = common::max_abs_diff("logits", model.forward(reference["input_ids"].ids_tensor(&device)), &reference["logits"]);
    assert!(d < 1e-5, "sharded export differs from transformers' logits by {d}");
    // Over our own sharded export, unsharded: one file, the shards gone with the old folder.
    let run = export("50GB");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(out.join("model.safetensors").is_file() && !out.join("model.safetensors.index.json").exists());
    let bad = export("5 parsecs");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected a size such as 5GB"), "{}", String::from_utf8_lossy(&bad.stderr));
}

#[test]
fn eval_perplexity_equals_the_training_validation_loss() {
    let dir = tempfile::tempdir().unwrap();
    let tokens: Vec<u32> = (0..1000u32).map(|i| (i * 2654435761) >> 23).collect(); // < 512
    let path = dir.path().join("val.bin");
    phi_data::shard::write_shard(&path, 512, &tokens).unwrap();
    let out = phi()
        .args(["eval", "perplexity", "--seq-len", "32", "--batch-size", "4", "--model"])
        .arg(fixture("phi-tiny"))
        .arg("--data")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let model = phi_core::PhiForCausalLM::from_pretrained(fixture("phi-tiny"), &burn::tensor::Device::default()).unwrap();
    let expected = phi_train::evaluate(&model, &phi_data::TokenDataset::from_tokens(tokens), 32, 4, usize::MAX);
    assert_eq!(v["loss"].as_f64().unwrap(), expected);
    assert!((v["perplexity"].as_f64().unwrap() - expected.exp()).abs() < 1e-9);
}

#[test]
fn finetune_on_a_jsonl_file_reports_bad_records_and_exports() {
    let base = phi3_tiny_with_tokenizer();
    let data = base.path().join("sft.jsonl");
    let mut lines: Vec<String> = (0..12).map(|i| format!(r#"{{"prompt": "the cat w{}", "response": "sat the cat"}}"#, 10 + i)).collect();
    lines.insert(3, r#"{"prompt": "no response here"}"#.to_string());
    lines.insert(7, "{broken".to_string());
    std::fs::write(&data, lines.join("\n")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let run = phi()
        // No --targets: a Phi-3 base gets its own family's (they were Phi-1's, which match
        // nothing in a Phi-3 model).
        .args(["finetune", "--steps", "3", "--batch-size", "2"])
        .arg("--base")
        .arg(base.path())
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let text = String::from_utf8(run.stdout).unwrap();
    assert!(text.contains("12 examples, 2 skipped"), "{text}");
    assert!(text.contains("skipped line 4: no `response`") && text.contains("skipped line 8: invalid JSON"), "{text}");
    assert!(text.contains("held-out loss (response tokens)"), "{text}");
    let adapter: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("adapter/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(adapter["target_modules"], serde_json::json!(["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]), "{adapter}");
    phi_core::PhiForCausalLM::from_pretrained(out.path().join("merged"), &burn::tensor::Device::default()).unwrap();
}

/// `--packing`: examples of skewed lengths packed into rows of `--max-len`, trained and
/// exported; the packing is reported, and resuming the run unpacked is refused as other data.
#[test]
fn finetune_with_packing_packs_rows_and_trains() {
    let base = phi3_tiny_with_tokenizer();
    let data = base.path().join("sft.jsonl");
    let lines: Vec<String> = (0..16).map(|i| format!(r#"{{"prompt": "the cat w{}", "response": "{}"}}"#, 10 + i, "sat the cat ".repeat(1 + i % 5).trim())).collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let finetune = |steps: &str, extra: &[&str]| phi().args(["finetune", "--steps", steps, "--batch-size", "2", "--checkpoint-every", "2"]).args(extra).arg("--base").arg(base.path()).arg("--data").arg(&data).arg("--out").arg(out.path()).output().unwrap();
    let run = finetune("3", &["--packing", "--max-len", "48"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let text = String::from_utf8(run.stdout).unwrap();
    let line = text.lines().find(|l| l.starts_with("packing: ")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("examples in") && line.contains("rows of 48 tokens"), "{line}");
    let rows: usize = line.split(" examples in ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(rows >= 2 && rows < 15, "{line}");
    assert!(text.contains("held-out loss (response tokens)"), "{text}");
    phi_core::PhiForCausalLM::from_pretrained(out.path().join("merged"), &burn::tensor::Device::default()).unwrap();
    let metrics = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 3, "{metrics}");
    // The run's checkpoints were trained on packed rows: unpacked, it is other data.
    let again = finetune("4", &[]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && err.contains("packed into"), "{err}");
    let tiny = finetune("3", &["--packing", "--max-len", "1"]);
    let err = String::from_utf8_lossy(&tiny.stderr);
    assert!(!tiny.status.success() && err.contains("--max-len 1: an example needs at least 2 tokens"), "{err}");
}

/// The same SFT records as a Parquet file in the hub's layout (`prompt`/`response` columns, a
/// row without a response, a row of nulls) and as JSONL: the same examples, so the same
/// training, step for step; bad rows reported by row.
#[test]
fn finetune_on_a_parquet_file_trains_as_on_its_jsonl_twin() {
    let base = phi3_tiny_with_tokenizer();
    let mut records: Vec<(Option<String>, Option<String>)> = (0..12).map(|i| (Some(format!("the cat w{}", 10 + i)), Some("sat the cat".to_string()))).collect();
    records.insert(3, (Some("no response here".into()), None));
    records.insert(7, (None, None));
    let rows: Vec<Vec<Option<Vec<u8>>>> = records.iter().map(|(p, r)| vec![p.clone().map(String::into_bytes), r.clone().map(String::into_bytes)]).collect();
    let parquet = base.path().join("train-00000-of-00001.parquet");
    phi::data::parquet::write_string_columns(&parquet, &["prompt", "response"], &[rows[..8].to_vec(), rows[8..].to_vec()]).unwrap();
    let jsonl = base.path().join("sft.jsonl");
    let lines: Vec<String> = records
        .iter()
        .map(|(p, r)| {
            let mut o = serde_json::Map::new();
            p.iter().for_each(|p| drop(o.insert("prompt".into(), p.clone().into())));
            r.iter().for_each(|r| drop(o.insert("response".into(), r.clone().into())));
            serde_json::Value::Object(o).to_string()
        })
        .collect();
    std::fs::write(&jsonl, lines.join("\n")).unwrap();
    let run = |data: &std::path::Path| {
        let out = tempfile::tempdir().unwrap();
        let r = phi().args(["finetune", "--steps", "3", "--batch-size", "2"]).arg("--base").arg(base.path()).arg("--data").arg(data).arg("--out").arg(out.path()).output().unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let losses: Vec<f64> = std::fs::read_to_string(out.path().join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
            .collect();
        (String::from_utf8(r.stdout).unwrap(), losses)
    };
    let (text, from_parquet) = run(&parquet);
    let (_, from_jsonl) = run(&jsonl);
    assert!(text.contains("12 examples, 2 skipped"), "{text}");
    assert!(text.contains("skipped row 4: no `response`") && text.contains("skipped row 8: neither `messages` nor `prompt`"), "{text}");
    assert_eq!(from_parquet.len(), 3);
    assert_eq!(from_parquet, from_jsonl);
}

#[test]
fn train_tokenizer_refuses_a_small_vocabulary_and_a_foreign_file_and_says_when_the_vocabulary_is_smaller() {
    let work = tempfile::tempdir().unwrap();
    let corpus = work.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    std::fs::write(corpus.join("a.py"), "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n".repeat(3)).unwrap();
    let train = |vocab: &str, out: &std::path::Path| phi().args(["data", "train-tokenizer", "--vocab-size", vocab, "--input"]).arg(&corpus).arg("--out").arg(out).output().unwrap();
    // Below 258, as `phi data prepare` refuses it.
    let out = work.path().join("tok.json");
    let r = train("100", &out);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("--vocab-size 100") && err.contains("258"), "{err}");
    assert!(!out.exists());
    // A file the tool did not write is never replaced.
    let notes = work.path().join("mynotes.txt");
    std::fs::write(&notes, "my notes").unwrap();
    let r = train("300", &notes);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("mynotes.txt") && err.contains("left as it is"), "{err}");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "my notes");
    // A vocabulary larger than the corpus supports: written, and said to be smaller.
    let r = train("100000", &out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let size = phi_data::Tokenizer::from_file(&out).unwrap().vocab_size();
    assert!(size < 100_000);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains(&format!("the vocabulary came out at {size} tokens, not the 100000 asked for")), "{err}");
    // Its own file is replaced by the next run, without a warning when the size is met.
    let r = train("260", &out);
    assert!(r.status.success() && !String::from_utf8_lossy(&r.stderr).contains("warning"), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(phi_data::Tokenizer::from_file(&out).unwrap().vocab_size(), 260);
    let mut names: Vec<String> = std::fs::read_dir(work.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["corpus", "mynotes.txt", "tok.json"], "no temporary files left");
}

#[test]
fn data_prepare_inspect_train_tokenizer_and_train_on_a_mixture() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/corpus/python");
    let out = tempfile::tempdir().unwrap();
    let prepare = |name: &str, extra: &[&str]| {
        let run = phi()
            .args(["data", "prepare", "--json", "--shard-tokens", "20000", "--validation-fraction", "0.2"])
            .args(extra)
            .arg("--input")
            .arg(&corpus)
            .arg("--out")
            .arg(out.path().join(name))
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        serde_json::from_slice::<serde_json::Value>(&run.stdout).unwrap()
    };
    let report = prepare("code", &["--vocab-size", "400"]);
    let stages: Vec<&str> = report["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(stages, ["read", "quality", "exact dedup", "near dedup", "decontaminate"]);
    assert!(report["train"]["tokens"].as_u64().unwrap() > 10_000 && report["train"]["shards"].as_u64().unwrap() > 1, "{report}");
    // The same data a second time, unfiltered: a second mixture component with the same tokenizer
    // is only possible with --tokenizer.
    let tok = out.path().join("code/tokenizer.json");
    prepare("raw", &["--no-filters", "--no-near-dedup", "--tokenizer", tok.to_str().unwrap()]);

    let inspect = phi().args(["data", "inspect"]).arg(out.path().join("code")).output().unwrap();
    assert!(inspect.status.success(), "{}", String::from_utf8_lossy(&inspect.stderr));
    let text = String::from_utf8(inspect.stdout).unwrap();
    assert!(text.contains("all verified") && text.contains("near dedup"), "{text}");
    // A damaged shard: inspect names it.
    let shard = out.path().join("raw/train-00000.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes.truncate(bytes.len() - 1);
    std::fs::write(&shard, bytes).unwrap();
    let bad = phi().args(["data", "inspect"]).arg(out.path().join("raw")).output().unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("train-00000.bin") && err.contains("truncated"), "{err}");
    prepare("raw", &["--no-filters", "--no-near-dedup", "--tokenizer", tok.to_str().unwrap()]);

    let trained = out.path().join("tok.json");
    let run = phi().args(["data", "train-tokenizer", "--vocab-size", "300", "--input"]).arg(&corpus).arg("--out").arg(&trained).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(phi_data::Tokenizer::from_file(&trained).unwrap().vocab_size(), 300);

    let toml = out.path().join("small.toml");
    std::fs::write(&toml, "batch_size = 2\nseq_len = 32\neval_batches = 2\n").unwrap();
    let run = phi()
        .args(["train", "--steps", "2", "--data"])
        .arg(format!("{}:0.8", out.path().join("code").display()))
        .arg("--data")
        .arg(format!("{}:0.2", out.path().join("raw").display()))
        .arg("--config")
        .arg(&toml)
        .arg("--out")
        .arg(out.path().join("run"))
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let text = String::from_utf8(run.stdout).unwrap();
    assert!(text.contains("weight 0.8") && text.contains("weight 0.2") && text.contains("validation loss:"), "{text}");
    let state = std::fs::read_to_string(out.path().join("run/checkpoints/step-00000002/trainer_state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["sampler"]["samplers"].as_array().unwrap().len(), 2, "{state}");

    // The same two datasets as a curriculum: "code" alone for 2 steps, then a mix, annealed.
    let cur = out.path().join("cur.toml");
    std::fs::write(
        &cur,
        "anneal = true\n[[datasets]]\nname = \"code\"\npath = \"code\"\n[[datasets]]\nname = \"raw\"\npath = \"raw\"\nmax_epochs = 50.0\n\
         [[stages]]\nname = \"first\"\nuntil_step = 2\nweights = { code = 1.0 }\n[[stages]]\nname = \"mix\"\nweights = { code = 0.5, raw = 0.5 }\n",
    )
    .unwrap();
    let run = phi().args(["train", "--steps", "4", "--curriculum"]).arg(&cur).arg("--config").arg(&toml).arg("--out").arg(out.path().join("cur-run")).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let text = String::from_utf8(run.stdout).unwrap();
    assert!(text.contains("stage first: steps 0..2") && text.contains("stage mix: steps 2..4") && text.contains("tokens per dataset per stage"), "{text}");
    let metrics = std::fs::read_to_string(out.path().join("cur-run/metrics.jsonl")).unwrap();
    let stages: Vec<String> = metrics.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["stage"].as_str().unwrap().to_string()).collect();
    assert_eq!(stages, ["first", "first", "mix", "mix"]);
    let lr: Vec<f64> = metrics.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["lr"].as_f64().unwrap()).collect();
    assert!(lr[0] == lr[1] && lr[2] > lr[3], "stable, then the anneal: {lr:?}");
    assert!(out.path().join("cur-run/data_report.json").is_file());
    // A curriculum that names a dataset it does not have is refused, naming it.
    std::fs::write(&cur, "[[datasets]]\nname = \"code\"\npath = \"code\"\n[[stages]]\nname = \"x\"\nweights = { books = 1.0 }\n").unwrap();
    let run = phi().args(["train", "--steps", "4", "--curriculum"]).arg(&cur).arg("--config").arg(&toml).arg("--out").arg(out.path().join("cur-bad")).output().unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && err.contains("cur.toml") && err.contains("`books`, which is not a dataset"), "{err}");
}

#[test]
fn a_run_stopped_and_resumed_in_a_new_process_matches_the_uninterrupted_run_bitwise() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/corpus/python");
    let out = tempfile::tempdir().unwrap();
    // The schedule is pinned to 6 steps; the first process of the split run has max_steps = 3,
    // as if it had been killed right after its step-3 checkpoint.
    let base = "batch_size = 2\nseq_len = 32\neval_batches = 2\neval_every = 2\ncheckpoint_every = 3\n[schedule]\nwarmup_steps = 1\ntotal_steps = 6\n";
    let config = |max_steps: usize| {
        let path = out.path().join(format!("max{max_steps}.toml"));
        std::fs::write(&path, format!("max_steps = {max_steps}\n{base}")).unwrap();
        path
    };
    let run = |dir: &std::path::Path, max_steps: usize| {
        let r = phi()
            .args(["train", "--recipe", "phi-2", "--vocab-size", "300", "--max-corpus-mb", "0.2", "--corpus"])
            .arg(&corpus)
            .arg("--config")
            .arg(config(max_steps))
            .arg("--out")
            .arg(dir)
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    };
    let losses = |dir: &std::path::Path| -> Vec<(u64, u64, u64)> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|m| (m["step"].as_u64().unwrap(), m["loss"].as_f64().unwrap().to_bits(), m["grad_norm"].as_f64().unwrap().to_bits()))
            .collect()
    };
    let (whole, split) = (out.path().join("whole"), out.path().join("split"));
    run(&whole, 6);
    run(&split, 3);
    run(&split, 6);
    assert_eq!(losses(&whole).len(), 6);
    assert_eq!(losses(&split), losses(&whole));
}

#[test]
fn train_resumes_only_the_same_run_and_fresh_starts_over() {
    let root = tempfile::tempdir().unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/corpus/python");
    let small = root.path().join("small.toml");
    std::fs::write(&small, "batch_size = 2\nseq_len = 32\neval_batches = 2\n").unwrap();
    let run_dir = root.path().join("run");
    let run = |recipe: &str, corpus: &std::path::Path, config: &std::path::Path, extra: &[&str]| {
        phi()
            .args(["train", "--recipe", recipe, "--steps", "2", "--vocab-size", "300", "--max-corpus-mb", "0.2", "--corpus"])
            .arg(corpus)
            .arg("--config")
            .arg(config)
            .arg("--out")
            .arg(&run_dir)
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = |r: std::process::Output, expect: &[&str]| {
        let err = String::from_utf8_lossy(&r.stderr).to_string();
        assert!(!r.status.success(), "must refuse: {}", String::from_utf8_lossy(&r.stdout));
        for e in expect {
            assert!(err.contains(e), "{e:?} not in: {err}");
        }
    };
    let first = run("phi-1", &shipped, &small, &[]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let before = common::snapshot(&run_dir);

    // Another recipe on the phi-1 run: the checkpoint is not silently continued.
    refused(run("phi-3-mini", &shipped, &small, &[]), &["not the same run", "model.model_type: \"phi\" in the checkpoint, \"phi3\" now", "--fresh"]);
    // Another batch size: another run.
    let bigger = root.path().join("bigger.toml");
    std::fs::write(&bigger, "batch_size = 4\nseq_len = 32\neval_batches = 2\n").unwrap();
    refused(run("phi-1", &shipped, &bigger, &[]), &["batch_size: 2 in the checkpoint, 4 now"]);
    // Another corpus: refused before its data replaces the run's.
    let other = root.path().join("other-corpus");
    std::fs::create_dir(&other).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(&shipped).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "py")).collect();
    files.sort();
    for f in files.iter().take(8) {
        std::fs::copy(f, other.join(f.file_name().unwrap())).unwrap();
    }
    refused(run("phi-1", &other, &small, &[]), &["holds the data of the run", "--fresh"]);
    // metrics.jsonl and loss.png are rewritten by a run that trains; none of these did.
    assert_eq!(common::snapshot(&run_dir), before, "refused resumes leave the run as it was");

    // --fresh with a file of the user's among the checkpoints: refused, nothing removed.
    std::fs::write(run_dir.join("checkpoints/notes.txt"), b"my notes").unwrap();
    refused(run("phi-3-mini", &other, &small, &["--fresh"]), &[&run_dir.join("checkpoints").display().to_string(), "notes.txt"]);
    std::fs::remove_file(run_dir.join("checkpoints/notes.txt")).unwrap();
    assert_eq!(common::snapshot(&run_dir), before);

    // --fresh starts over: the new corpus is prepared and the other recipe trains from scratch.
    let fresh = run("phi-3-mini", &other, &small, &["--fresh"]);
    assert!(fresh.status.success(), "{}", String::from_utf8_lossy(&fresh.stderr));
    let text = String::from_utf8(fresh.stdout).unwrap();
    assert!(!text.contains("resumed from") && text.contains("other-corpus"), "{text}");
    let state = std::fs::read_to_string(run_dir.join("checkpoints/step-00000002/trainer_state.json")).unwrap();
    assert!(state.contains("\"phi3\""), "{state}");
    // And that run is the one that resumes now.
    let again = run("phi-3-mini", &other, &small, &[]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let text = String::from_utf8(again.stdout).unwrap();
    assert!(text.contains("resumed from the checkpoint at step 2") && text.contains("data: reusing"), "{text}");
}

#[test]
fn export_and_prepare_refuse_folders_that_are_not_theirs() {
    let root = tempfile::tempdir().unwrap();
    let export = |out: &std::path::Path| phi().args(["export", "--model"]).arg(fixture("phi-tiny")).arg("--out").arg(out).output().unwrap();
    let refused = |r: std::process::Output, guarded: &std::path::Path, before: Vec<(std::path::PathBuf, Vec<u8>)>| {
        let err = String::from_utf8_lossy(&r.stderr).to_string();
        assert!(!r.status.success() && err.contains(&guarded.display().to_string()), "{err}");
        assert_eq!(common::snapshot(guarded), before, "{} untouched", guarded.display());
    };
    // A folder of the user's files.
    let mine = root.path().join("mine");
    std::fs::create_dir_all(mine.join("sub")).unwrap();
    std::fs::write(mine.join("notes.txt"), b"notes").unwrap();
    std::fs::write(mine.join("sub/x.csv"), b"1,2").unwrap();
    refused(export(&mine), &mine, common::snapshot(&mine));
    // A user's own HF model folder: same file names as an export, but not ours.
    let theirs = root.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("phi-tiny").join(f), theirs.join(f)).unwrap();
    }
    refused(export(&theirs), &theirs, common::snapshot(&theirs));
    // A user's folder at `<out>.partial`.
    let out = root.path().join("out");
    std::fs::create_dir(root.path().join("out.partial")).unwrap();
    std::fs::write(root.path().join("out.partial/keep.txt"), b"keep").unwrap();
    refused(export(&out), &root.path().join("out.partial"), common::snapshot(&root.path().join("out.partial")));
    assert!(!out.exists());
    std::fs::remove_dir_all(root.path().join("out.partial")).unwrap();
    // Our own export: written, and replaced by the next one.
    for _ in 0..2 {
        let r = export(&out);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    assert!(out.join("phi_export.json").is_file() && !root.path().join("out.partial").exists());
    phi_core::PhiForCausalLM::from_pretrained(&out, &burn::tensor::Device::default()).unwrap();
    // Our export with a user's file added: no longer ours to replace.
    std::fs::write(out.join("eval.txt"), b"my results").unwrap();
    refused(export(&out), &out, common::snapshot(&out));

    // `phi finetune --out`: its `merged/` holding a user's file stops it before any training.
    let ft = root.path().join("ft");
    std::fs::create_dir_all(ft.join("merged")).unwrap();
    std::fs::write(ft.join("merged/notes.txt"), b"mine").unwrap();
    let r = phi().args(["finetune", "--steps", "1"]).arg("--base").arg(fixture("phi-tiny")).arg("--out").arg(&ft).output().unwrap();
    refused(r, &ft.join("merged"), common::snapshot(&ft.join("merged")));
    assert!(!ft.join("adapter").exists());

    // `phi data prepare --out` a folder with somebody else's manifest.json.
    let app = root.path().join("app");
    std::fs::create_dir(&app).unwrap();
    std::fs::write(app.join("manifest.json"), br#"{"name": "app"}"#).unwrap();
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/corpus/python");
    let r = phi().args(["data", "prepare", "--vocab-size", "300", "--input"]).arg(&corpus).arg("--out").arg(&app).output().unwrap();
    refused(r, &app, common::snapshot(&app));
}

#[test]
fn serve_answers_over_http_and_stops_cleanly_on_ctrl_c() {
    use std::io::{BufRead, Read, Write};
    let dir = phi3_tiny_with_tokenizer();
    let mut child = phi()
        .args(["serve", "--name", "tiny", "--port", "0", "--model"])
        .arg(dir.path())
        // Not a filter: said once, and the default log (phi_serve at info) kept.
        .env("RUST_LOG", "phi_serve=loud")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.split("http://").nth(1).and_then(|r| r.split('/').next()).unwrap_or_else(|| panic!("{line}")).to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    let body = r#"{"model": "tiny", "messages": [{"role": "user", "content": "the cat"}], "max_tokens": 3, "temperature": 0}"#;
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200") && reply.contains("\"chat.completion\""), "{reply}");
    // `phi data annotate` with the server as its judge (a short prompt: the context is 128).
    let work = tempfile::tempdir().unwrap();
    let prompt = work.path().join("short.txt");
    std::fs::write(&prompt, "Rate: {document}").unwrap();
    let out = work.path().join("annotations.jsonl");
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/corpus/python");
    let annotate = |n: &str| {
        phi()
            .args(["data", "annotate", "--model", "tiny", "--n", n, "--max-tokens", "4", "--max-doc-chars", "30", "--endpoint"])
            .arg(format!("http://{addr}/v1"))
            .arg("--input")
            .arg(&corpus)
            .arg("--prompt")
            .arg(&prompt)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap()
    };
    let r = annotate("3");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stdout).contains("3 sampled: 0 already answered, 3 asked"), "{}", String::from_utf8_lossy(&r.stdout));
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 3);
    let r = annotate("4");
    assert!(String::from_utf8_lossy(&r.stdout).contains("4 sampled: 3 already answered, 1 asked"), "{}", String::from_utf8_lossy(&r.stdout));
    // `phi bench serve --endpoint` puts its load on this server as on its own (a warm-up request,
    // then 2 requests from 1 client and 2 from each of 2).
    let bench = |extra: &[&str]| {
        phi().args(["bench", "serve", "--clients", "1,2", "--requests", "2", "--gen-tokens", "3", "--json", "--served-model", "tiny"]).args(extra).arg("--endpoint").arg(format!("http://{addr}/v1")).output().unwrap()
    };
    let r = bench(&[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&r.stdout).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect();
    assert_eq!(rows.iter().map(|r| (r["clients"].as_u64(), r["requests"].as_u64())).collect::<Vec<_>>(), [(Some(1), Some(2)), (Some(2), Some(4))]);
    for row in &rows {
        assert!(row["completion_tokens"].as_u64().unwrap() > 0 && row["ttft_p50_ms"].as_f64().unwrap() > 0.0, "{row}");
    }
    // And on our server in-process, on the same folder (`--model`).
    let r = phi().args(["bench", "serve", "--clients", "2", "--requests", "2", "--gen-tokens", "2", "--json", "--model"]).arg(dir.path()).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let row: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&r.stdout).trim()).unwrap();
    assert!(row["clients"] == 2 && row["requests"] == 4 && row["params"].as_u64().unwrap() > 0 && row["completion_tokens"].as_u64().unwrap() > 0, "{row}");
    // Packing is for our own server; nothing is sent.
    let r = bench(&["--weights", "int8"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("--weights applies to our server"), "{err}");
    // Ctrl-C: the server stops and exits 0.
    let killed = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "phi serve did not stop on SIGINT");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    // The server's log, on stderr: a line per request (1 + 3 + 1 + 7 here), and its stop.
    let mut log = String::new();
    child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    let served: Vec<&str> = log.lines().filter(|l| l.contains("INFO") && l.contains("request served")).collect();
    assert_eq!(served.len(), 12, "{log}");
    assert!(served[0].contains("endpoint=\"/v1/chat/completions\"") && served[0].contains("model=\"tiny\"") && served[0].contains("status=200"), "{log}");
    assert!(log.contains("shutting down") && log.contains("stopped"), "{log}");
    assert_eq!(log.matches("warning: RUST_LOG=\"phi_serve=loud\" is not in `target=level,…` form").count(), 1, "{log}");
}

#[test]
fn data_synth_fits_max_tokens_to_a_local_model_before_asking_and_hints_only_at_what_it_kept() {
    let model = phi3_tiny_with_tokenizer();
    let out = tempfile::tempdir().unwrap();
    let synth = |dir: &str, extra: &[&str]| {
        phi()
            .args(["data", "synth", "--kind", "textbook", "--n", "3"])
            .args(extra)
            .arg("--local")
            .arg(model.path())
            .arg("--out")
            .arg(out.path().join(dir))
            .output()
            .unwrap()
    };
    // More than the 128-token context holds: refused before any request, nothing written.
    let r = synth("big", &["--max-tokens", "1024"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("--max-tokens 1024 does not fit") && err.contains("context is 128 tokens"), "{err}");
    assert!(!out.path().join("big").exists());
    // The default fits the model; nothing kept (every answer is shorter than --min-chars): no
    // next step is suggested for an empty kept.jsonl.
    let r = synth("none", &["--min-chars", "100000"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let text = String::from_utf8(r.stdout).unwrap();
    let max: usize = text.split("answers of up to ").nth(1).and_then(|t| t.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{text}"));
    assert!(max > 0 && max < 128, "{text}");
    assert!(text.contains("3 asked") && text.contains("0 failed"), "{text}");
    assert!(text.contains("nothing was kept") && !text.contains("phi data prepare"), "{text}");
    // Textbook material is prose: the hint says --kind text.
    let r = synth("kept", &["--min-chars", "1"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let text = String::from_utf8(r.stdout).unwrap();
    assert!(text.contains("--kind text") && !text.contains("--kind python"), "{text}");
}

/// `phi data annotate --local`: the judge is a model folder served in-process (its requests
/// decoded together); every sampled document gets an answer line, a rerun asks for none again,
/// and --local with --endpoint is refused.
#[test]
fn data_annotate_judges_with_a_local_model() {
    let model = phi3_tiny_with_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs.jsonl");
    std::fs::write(&docs, (0..6).map(|i| format!("{{\"text\": \"the cat sat w{i}\"}}\n")).collect::<String>()).unwrap();
    let prompt = dir.path().join("prompt.txt");
    std::fs::write(&prompt, "rate: {document}").unwrap();
    let out = dir.path().join("annotations.jsonl");
    let annotate = |extra: &[&str]| {
        phi()
            .args(["data", "annotate", "--jsonl"])
            .arg(&docs)
            .args(["--n", "6", "--max-tokens", "4", "--prompt"])
            .arg(&prompt)
            .args(extra)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap()
    };
    let local = model.path().to_str().unwrap();
    let r = annotate(&["--local", local]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let text = String::from_utf8(r.stdout).unwrap();
    assert!(text.contains("6 sampled: 0 already answered, 6 asked") && text.contains("0 failed"), "{text}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 6);
    assert!(lines.iter().all(|l| l["answer"].is_string() && l["text"].as_str().unwrap().starts_with("the cat sat w")), "{lines:?}");
    let again = String::from_utf8(annotate(&["--local", local]).stdout).unwrap();
    assert!(again.contains("6 already answered, 0 asked"), "{again}");
    let both = annotate(&["--local", local, "--endpoint", "http://127.0.0.1:9/v1", "--model", "x"]);
    assert!(!both.status.success() && String::from_utf8_lossy(&both.stderr).contains("--local"), "{}", String::from_utf8_lossy(&both.stderr));
}

#[test]
fn data_synth_with_a_local_model_logs_resumes_and_refuses_a_foreign_folder() {
    let model = phi3_tiny_with_tokenizer();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("synth");
    let synth = |n: &str| {
        phi()
            .args(["data", "synth", "--kind", "textbook", "--n", n, "--max-tokens", "8", "--min-chars", "1", "--local"])
            .arg(model.path())
            .arg("--out")
            .arg(&dir)
            .output()
            .unwrap()
    };
    let r = synth("3");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let text = String::from_utf8(r.stdout).unwrap();
    assert!(text.contains("3 asked") && text.contains("tokens:") && text.contains("coverage"), "{text}");
    assert_eq!(std::fs::read_to_string(dir.join("generations.jsonl")).unwrap().lines().count(), 3);
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["verification"]["generations"], 3);
    let text = String::from_utf8(synth("5").stdout).unwrap();
    assert!(text.contains("3 already answered, 2 asked"), "{text}");
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    let r = synth("5");
    assert!(!r.status.success() && String::from_utf8_lossy(&r.stderr).contains("notes.txt"));
}

/// `phi bench generate --llama-cpp SCRIPT`: the script runs once per format with a llama.cpp
/// counterpart (int8 → q8_0, int4 → q4_0; bf16 has none), given the bench's shape, and each of
/// our rows carries its counterpart's decode rate and the ratio. A stand-in script (run by `sh`
/// through `--python`) reports a fixed rate; one that fails is an error naming it.
#[test]
fn bench_generate_pairs_each_format_with_its_llama_cpp_type() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("fake_llama.sh");
    let calls = dir.path().join("calls.txt");
    std::fs::write(
        &script,
        format!(
            r#"echo "$@" >> '{}'
while [ $# -gt 0 ]; do [ "$1" = --type ] && t=$2; shift; done
[ "$t" = q4_0 ] && [ -n "$FAIL" ] && {{ echo "no llama here" >&2; exit 3; }}
echo '{{"workload": "generate", "type": "'$t'", "tokens_per_s": 90.0, "decode_tokens_per_s": 100.0, "first_token_s": 0.5, "peak_rss_mib": 1.0, "file_bytes": 2048}}'
"#,
            calls.display()
        ),
    )
    .unwrap();
    let shape = ["bench", "generate", "--arch", "phi", "--hidden", "64", "--layers", "1", "--heads", "2", "--vocab", "128", "--gen-tokens", "3", "--json", "--python", "sh", "--llama-cpp"];
    let r = phi().args(shape).arg(&script).args(["--weights", "int8,bf16,int4"]).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let called = std::fs::read_to_string(&calls).unwrap();
    let types: Vec<&str> = called.lines().map(|l| l.split_whitespace().skip_while(|w| *w != "--type").nth(1).unwrap()).collect();
    assert_eq!(types, ["q8_0", "q4_0"], "{called}");
    assert!(called.lines().all(|l| l.contains("--hidden 64") && l.contains("--vocab 128") && l.contains("--gen-tokens 3")), "{called}");
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&r.stdout).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect();
    let ours: Vec<&serde_json::Value> = rows.iter().filter(|r| r.get("llama_cpp").is_none()).collect();
    assert_eq!(ours.iter().map(|r| r["weights"].as_str().unwrap()).collect::<Vec<_>>(), ["int8", "bf16", "int4"]);
    for row in &ours {
        let dec = row["decode_tokens_per_s"].as_f64().unwrap();
        match row["weights"].as_str().unwrap() {
            "bf16" => assert!(row["llama_cpp_type"].is_null() && row["decode_vs_llama_cpp"].is_null(), "{row}"),
            w => {
                assert_eq!(row["llama_cpp_type"], if w == "int8" { "q8_0" } else { "q4_0" }, "{row}");
                assert_eq!(row["llama_cpp_decode_tokens_per_s"], 100.0);
                assert!((row["decode_vs_llama_cpp"].as_f64().unwrap() - dec / 100.0).abs() < 1e-9, "{row}");
                assert!((row["first_token_vs_llama_cpp"].as_f64().unwrap() - row["first_token_s"].as_f64().unwrap() / 0.5).abs() < 1e-9, "{row}");
            }
        }
    }
    let theirs: Vec<&str> = rows.iter().filter(|r| r["llama_cpp"] == true).map(|r| r["weights"].as_str().unwrap()).collect();
    assert_eq!(theirs, ["q8_0", "q4_0"]);
    // A script that fails stops the bench with its own message.
    let r = phi().args(shape).arg(&script).args(["--weights", "int4"]).env("FAIL", "1").output().unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("fake_llama.sh failed") && err.contains("no llama here"), "{err}");
}

/// `--sequences N`: each format's row also carries N sequences decoded together (llama.cpp's
/// batched-bench phases), in JSON and in the table; without it, nothing batched runs.
#[test]
fn bench_generate_reports_sequences_decoded_together() {
    let shape = ["bench", "generate", "--arch", "phi3", "--hidden", "64", "--layers", "1", "--heads", "2", "--vocab", "128", "--gen-tokens", "4"];
    let r = phi().args(shape).args(["--json", "--sequences", "3", "--weights", "f32,int8"]).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&r.stdout).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!(row["sequences"], 3, "{row}");
        let (all, dec, first) = (row["batch_tokens_per_s"].as_f64().unwrap(), row["batch_decode_tokens_per_s"].as_f64().unwrap(), row["batch_first_token_s"].as_f64().unwrap());
        assert!(all > 0.0 && dec > 0.0 && first > 0.0, "{row}");
        assert!((row["batch_decode_vs_one"].as_f64().unwrap() - dec / row["decode_tokens_per_s"].as_f64().unwrap()).abs() < 1e-9, "{row}");
    }
    let r = phi().args(shape).args(["--sequences", "3"]).output().unwrap();
    let table = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success() && table.contains("3 sequences together"), "{table}");
    let r = phi().args(shape).args(["--json", "--weights", "int8"]).output().unwrap();
    let row: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&r.stdout).lines().next().unwrap()).unwrap();
    assert!(row["sequences"].is_null() && row["batch_tokens_per_s"].is_null(), "{row}");
}
