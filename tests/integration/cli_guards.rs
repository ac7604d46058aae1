//! The `phi` binary on bad input: a diverging run exits non-zero, bad settings are refused
//! before any work, a closed pipe ends it quietly, and `export` does what `--merge` says.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{fixture, load_reference};

fn phi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_phi"))
}

/// `phi train` on the shipped corpus with `toml` as overrides; returns (success, stdout, stderr).
fn train(out: &Path, toml: &str, extra: &[&str]) -> (bool, String, String) {
    let run = common::train_phi1(out, toml, extra);
    (run.status.success(), String::from_utf8_lossy(&run.stdout).into_owned(), String::from_utf8_lossy(&run.stderr).into_owned())
}

#[test]
fn a_diverging_training_run_exits_non_zero_naming_the_step() {
    let out = tempfile::tempdir().unwrap();
    let toml = "batch_size = 2\nseq_len = 32\neval_batches = 1\ncheckpoint_every = 1\n[schedule]\npeak = 1e30\nfloor = 1e29\n";
    let (ok, _, err) = train(out.path(), toml, &["--steps", "4"]);
    assert!(!ok, "{err}");
    assert!(err.contains("error: step 2: the loss is"), "{err}");
    // Only step 1's checkpoint (finite) exists; nothing of the diverged steps.
    let ckpts: Vec<_> = phi_train::checkpoint::list(&out.path().join(phi_train::checkpoint::CHECKPOINTS_DIR)).into_iter().map(|(s, _)| s).collect();
    assert_eq!(ckpts, vec![1]);
}

#[test]
fn impossible_settings_are_refused_before_the_data_is_prepared() {
    for (toml, steps, expected) in [
        ("", "0", "`max_steps`: must be at least 1"),
        ("batch_size = 0\n", "3", "`batch_size`: must be at least 1"),
        ("seq_len = 0\n", "3", "`seq_len`: must be at least 1"),
        ("grad_accum = 0\n", "3", "`grad_accum`: must be at least 1"),
        ("seq_len = 257\n", "3", "`seq_len`: 257 exceeds the model's max_position_embeddings (256)"),
        ("clip_norm = -1.0\n", "3", "`clip_norm`: -1 must be a positive number"),
        ("[schedule]\npeak = inf\n", "3", "`schedule.peak`: inf"),
        ("max_step = 10\n", "3", "unknown key `max_step`: did you mean `max_steps`?"),
        ("[schedule]\npeek = 1e-3\n", "3", "unknown key `schedule.peek`: did you mean `schedule.peak`?"),
    ] {
        let out = tempfile::tempdir().unwrap();
        let (ok, _, err) = train(out.path(), toml, &["--steps", steps]);
        assert!(!ok && err.contains(expected) && !err.contains("panicked"), "{toml:?}: {err}");
        assert!(!out.path().join("data").exists(), "{toml:?}: refused before preparing data");
    }
}

#[test]
fn finetune_refuses_a_tokenizer_larger_than_the_model_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("phi3-tiny").join(f), dir.path().join(f)).unwrap();
    }
    // 600 words for a model with 512 embedding rows.
    let vocab: serde_json::Map<String, serde_json::Value> = (0..600).map(|i| (if i == 0 { "[UNK]".to_string() } else { format!("w{i}") }, i.into())).collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let data = dir.path().join("sft.jsonl");
    std::fs::write(&data, (0..12).map(|i| format!(r#"{{"prompt": "w{i} w599", "response": "w598 w3"}}"#)).collect::<Vec<_>>().join("\n")).unwrap();
    let run = phi().args(["finetune", "--steps", "2", "--batch-size", "2", "--targets", "qkv_proj"]).arg("--base").arg(dir.path()).arg("--data").arg(&data).arg("--out").arg(dir.path().join("out")).output().unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && !err.contains("panicked"), "{err}");
    assert!(err.contains("tokenizer.json: the tokenizer has 600 tokens but the model's vocab_size is 512"), "{err}");
    // And settings that cannot run are refused by flag.
    let run = phi().args(["finetune", "--steps", "0"]).arg("--base").arg(dir.path()).output().unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && err.contains("--steps must be at least 1"), "{err}");
}

/// Runs `phi args` with its stdout a pipe whose reading end is already closed, as in
/// `phi … | head -0`: every write fails.
fn with_closed_stdout(args: &[&str]) -> std::process::Output {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: `pipe` fills two new descriptors; each is owned exactly once below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fds[0] is the fresh read end, closed here before the child exists.
    drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(fds[0]) });
    // SAFETY: fds[1] is the fresh write end, handed to the child as its stdout.
    let write_end = unsafe { std::os::fd::OwnedFd::from_raw_fd(fds[1]) };
    let child = phi().args(args).stdout(std::process::Stdio::from(write_end)).stderr(std::process::Stdio::piped()).spawn().unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn a_closed_pipe_ends_printing_commands_quietly() {
    use std::os::unix::process::ExitStatusExt;
    for args in [vec!["inspect", "--model", "phi-2"], vec!["generate", "--model", fixture("phi-tiny").to_str().unwrap(), "--prompt-ids", "1,2", "--max-new-tokens", "2"]] {
        let out = with_closed_stdout(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{args:?}: {err}");
        // Ended by SIGPIPE, as `cat` or `grep` would be.
        assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{args:?}: {:?} {err}", out.status);
    }
}

#[test]
fn export_merges_with_merge_and_keeps_the_adapter_beside_the_base_without() {
    let device = burn::tensor::Device::default();
    let reference = load_reference(fixture("lora-phi-tiny/reference.safetensors"));
    let export = |merge: bool| {
        let out = tempfile::tempdir().unwrap();
        let mut cmd = phi();
        cmd.args(["export", "--model"]).arg(fixture("phi-tiny")).arg("--adapter").arg(fixture("lora-phi-tiny")).arg("--out").arg(out.path());
        if merge {
            cmd.arg("--merge");
        }
        let run = cmd.output().unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        out
    };
    let logits = |dir: &Path| {
        let m = phi_core::PhiForCausalLM::from_pretrained(dir, &device).unwrap();
        m.forward(reference["input_ids"].ids_tensor(&device))
    };
    // --merge: one plain checkpoint with PEFT's adapted logits.
    let merged = export(true);
    assert!(!merged.path().join("adapter").exists());
    let d = common::max_abs_diff("logits", logits(merged.path()), &reference["logits"]);
    assert!(d < 1e-4, "merged export differs from PEFT's adapted logits by {d}");
    // Without: the base's weights unchanged, the adapter beside them, and the pair gives the
    // adapted logits.
    let separate = export(false);
    let base = std::fs::read(fixture("phi-tiny/model.safetensors")).unwrap();
    let base = safetensors::SafeTensors::deserialize(&base).unwrap();
    let saved = std::fs::read(separate.path().join("model.safetensors")).unwrap();
    let saved = safetensors::SafeTensors::deserialize(&saved).unwrap();
    for (name, t) in base.tensors() {
        assert_eq!(saved.tensor(&name).unwrap().data(), t.data(), "{name} is the base's");
    }
    let adapted = phi_train::lora::load(phi_core::PhiForCausalLM::from_pretrained(separate.path(), &device).unwrap(), separate.path().join("adapter")).unwrap();
    let d = common::max_abs_diff("logits", adapted.forward(reference["input_ids"].ids_tensor(&device)), &reference["logits"]);
    assert!(d < 1e-4, "base + adapter differ from PEFT's adapted logits by {d}");
    // --merge without an adapter has nothing to merge.
    let run = phi().args(["export", "--merge", "--out", "/tmp/x", "--model"]).arg(fixture("phi-tiny")).output().unwrap();
    assert!(!run.status.success() && String::from_utf8_lossy(&run.stderr).contains("--adapter"));
}

#[test]
#[allow(clippy::zombie_processes)] // reaped by wait4 below, which Child cannot do
fn prepare_of_one_multi_megabyte_line_keeps_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("in")).unwrap();
    // 8 MB of minified-code-like text on one line.
    let words = ["alpha", "beta", "gamma", "x1", "==", "(", ")", "{", "}", ";", "return", "function"];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut line = String::new();
    while line.len() < 8_000_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        line += words[(x % 12) as usize];
        line.push(' ');
    }
    std::fs::write(dir.path().join("in/min.js.txt"), &line).unwrap();
    let out = dir.path().join("out");
    let child = phi()
        .args(["data", "prepare", "--no-filters", "--glob", "*.txt", "--vocab-size", "400", "--validation-fraction", "0", "--json", "--input"])
        .arg(dir.path().join("in"))
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // wait4 rather than Child::wait: it reports this child's own peak memory.
    let (mut status, mut usage) = (0, std::mem::MaybeUninit::<libc::rusage>::zeroed());
    // SAFETY: waits for our own child once (Child never waits for it); `usage` is written by the call.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, usage.as_mut_ptr()) };
    assert_eq!(pid, child.id() as i32);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status}");
    // SAFETY: wait4 succeeded, so it filled `usage`.
    let peak_mb = unsafe { usage.assume_init() }.ru_maxrss / 1024;
    // Whole, this line cost ~1.2 GB in `tokenizers`' per-token bookkeeping (150 B per byte; the
    // issue's 50 MB line took 20 GB); in pieces, ~400 MB whatever the line's length.
    assert!(peak_mb < 700, "peak {peak_mb} MB");
    let m = phi_data::Manifest::read(&out).unwrap();
    let tok = phi_data::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    assert_eq!(m.splits["train"].tokens, tok.encode(&line).len() as u64 + 1);
}

#[test]
fn finetune_refuses_an_output_folder_that_would_overwrite_its_inputs() {
    let run = tempfile::tempdir().unwrap();
    // The base is one of the output folder's own checkpoints: the run would prune it away.
    let base = run.path().join("checkpoints/step-00000010");
    std::fs::create_dir_all(&base).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("phi-tiny").join(f), base.join(f)).unwrap();
    }
    let finetune = |base: &Path, out: &Path, data: Option<&Path>| {
        let mut cmd = phi();
        cmd.args(["finetune", "--steps", "2"]).arg("--base").arg(base).arg("--out").arg(out);
        if let Some(d) = data {
            cmd.arg("--data").arg(d);
        }
        let o = cmd.output().unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (ok, err) = finetune(&base, run.path(), None);
    assert!(!ok && err.contains("--base") && err.contains("is inside") && err.contains("checkpoints") && err.contains("choose another --out"), "{err}");
    // Refused before anything was written: no lock, no metrics, the base as it was.
    assert!(!run.path().join(".phi-run.lock").exists() && !run.path().join("metrics.jsonl").exists());
    assert_eq!(std::fs::read(base.join("model.safetensors")).unwrap(), std::fs::read(fixture("phi-tiny/model.safetensors")).unwrap());
    // --out the base itself: the run would write among the files it reads.
    let (ok, err) = finetune(&base, &base, None);
    assert!(!ok && err.contains("is --base itself") && err.contains("only reads"), "{err}");
    assert!(!base.join(".phi-run.lock").exists());
    // --data among what the run writes.
    let other = tempfile::tempdir().unwrap();
    let data = other.path().join("adapter/sft.jsonl");
    let (ok, err) = finetune(&base, other.path(), Some(&data));
    assert!(!ok && err.contains("--data") && err.contains("is inside"), "{err}");
}
