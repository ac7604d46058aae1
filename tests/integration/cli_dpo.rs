//! `phi eval dpo`: the loss and TRL's reward metrics of a policy against a reference over a
//! preference file, without training — against TRL's fixture (policy = phi-tiny + the
//! lora-phi-tiny adapter, reference = phi-tiny, β 0.1, sigmoid).

use crate::common;

use std::process::Command;

use common::fixture;

fn phi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_phi"))
}

fn eval(extra: &[&str], data: &std::path::Path) -> (bool, serde_json::Value, String) {
    let out = phi()
        .args(["eval", "dpo", "--json", "--policy"])
        .arg(fixture("phi-tiny"))
        .arg("--adapter")
        .arg(fixture("lora-phi-tiny"))
        .arg("--data")
        .arg(data)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let v = serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
    (out.status.success(), v, String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn eval_dpo_matches_trl_in_one_batch_or_several() {
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("dpo-phi-tiny/reference.json")).unwrap()).unwrap();
    let data = fixture("dpo-phi-tiny/pairs.jsonl");
    // The default reference of a PEFT policy is its base without the adapter, as TRL's; given
    // explicitly it is the same model here.
    for extra in [&[][..], &["--batch-size", "3"][..], &["--reference", fixture("phi-tiny").to_str().unwrap()][..]] {
        let (ok, v, err) = eval(extra, &data);
        assert!(ok, "{err}");
        assert_eq!(v["pairs"], 4);
        for key in ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"] {
            let (got, want) = (v[key].as_f64().unwrap(), r[key].as_f64().unwrap());
            assert!((got - want).abs() < 1e-4, "{extra:?} {key}: {got} vs TRL {want}");
        }
        let chosen: f64 = r["policy_chosen_logps"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).sum::<f64>() / 4.0;
        assert!((v["logps/chosen"].as_f64().unwrap() - chosen).abs() < 1e-4);
    }
}

#[test]
fn bad_records_are_skipped_by_line_and_bad_settings_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pairs.jsonl");
    let good = std::fs::read_to_string(fixture("dpo-phi-tiny/pairs.jsonl")).unwrap();
    let first = good.lines().next().unwrap();
    let text = [
        first,
        "not json",
        r#"{"prompt_ids": [1, 2], "chosen_ids": [3]}"#,
        r#"{"prompt_ids": [1, -2], "chosen_ids": [3], "rejected_ids": [4]}"#,
        // A text record, and phi-tiny has no tokenizer.json.
        r#"{"prompt": "hi", "chosen": "a", "rejected": "b"}"#,
    ]
    .join("\n");
    std::fs::write(&data, text).unwrap();
    let (ok, v, err) = eval(&[], &data);
    assert!(ok, "{err}");
    assert_eq!((v["pairs"].as_u64(), v["skipped"].as_u64()), (Some(1), Some(4)));
    for (line, why) in [(2, "invalid JSON"), (3, "no `rejected_ids`"), (4, "not a token id"), (5, "needs the model's tokenizer")] {
        assert!(err.contains(&format!("skipped line {line}: ")) && err.contains(why), "line {line}: {err}");
    }
    // An id the model does not have is an error naming the pair, not a crash.
    std::fs::write(&data, r#"{"prompt_ids": [1], "chosen_ids": [999999], "rejected_ids": [2]}"#).unwrap();
    let (ok, _, err) = eval(&[], &data);
    assert!(!ok && err.contains("pair 0 has token id 999999"), "{err}");
    let (ok, _, err) = eval(&["--loss", "kto"], &fixture("dpo-phi-tiny/pairs.jsonl"));
    assert!(!ok && err.contains("--loss") && err.contains("`kto`"), "{err}");
}

#[test]
fn max_length_truncates_or_skips_as_trl_and_says_how_many() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pairs.jsonl");
    std::fs::write(
        &data,
        [r#"{"prompt_ids": [1, 2, 3, 4, 5, 6], "chosen_ids": [7, 8], "rejected_ids": [9]}"#, r#"{"prompt_ids": [1], "chosen_ids": [2, 3], "rejected_ids": [4]}"#].join("\n"),
    )
    .unwrap();
    // keep_start: the first pair's prompt fills max_length, so it is skipped (nothing to learn).
    let (ok, v, err) = eval(&["--max-length", "5"], &data);
    assert!(ok, "{err}");
    assert_eq!((v["pairs"].as_u64(), v["skipped"].as_u64(), v["truncated"].as_u64()), (Some(1), Some(1), Some(0)));
    assert!(err.contains("skipped line 1: the prompt alone has 6 tokens"), "{err}");
    // keep_end keeps the completions and cuts the prompt's start.
    let (ok, v, err) = eval(&["--max-length", "5", "--truncation", "keep_end"], &data);
    assert!(ok, "{err}");
    assert_eq!((v["pairs"].as_u64(), v["skipped"].as_u64(), v["truncated"].as_u64()), (Some(2), Some(0), Some(1)));
    let (ok, _, err) = eval(&["--max-length", "5", "--truncation", "middle"], &data);
    assert!(!ok && err.contains("keep_start or keep_end"), "{err}");
}

fn dpo(out: &std::path::Path, extra: &[&str], abort_after: Option<usize>) -> std::process::Output {
    let mut cmd = phi();
    cmd.args(["dpo", "--policy"])
        .arg(fixture("phi-tiny"))
        .arg("--data")
        .arg(fixture("dpo-phi-tiny/pairs.jsonl"))
        .arg("--out")
        .arg(out)
        .args(["--batch-size", "2", "--grad-accum", "2", "--lr", "1e-3", "--checkpoint-every", "2"])
        .args(extra);
    if let Some(step) = abort_after {
        cmd.env("PHI_TEST_ABORT_AFTER_STEP", step.to_string());
    }
    cmd.output().unwrap()
}

fn steps(dir: &std::path::Path) -> Vec<(u64, u64, u64, u64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|m| {
            let bits = |k: &str| m[k].as_f64().unwrap().to_bits();
            (m["step"].as_u64().unwrap(), bits("loss"), bits("grad_norm"), bits("rewards/margins"))
        })
        .collect()
}

#[test]
fn lora_dpo_killed_mid_run_resumes_bitwise_and_writes_a_peft_adapter() {
    let root = tempfile::tempdir().unwrap();
    let adapter = fixture("lora-phi-tiny");
    let lora = ["--adapter", adapter.to_str().unwrap(), "--steps", "6", "--warmup-steps", "1"];
    let (whole, split) = (root.path().join("whole"), root.path().join("split"));
    let r = dpo(&whole, &lora, None);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(stdout.contains("4 pairs for training") && stdout.contains("scored once before training"), "{stdout}");
    // The loss in words, not its Rust value (`Sigmoid { label_smoothing: 0.0 }`).
    assert!(stdout.contains("loss sigmoid, beta 0.1"), "{stdout}");
    // Killed after step 3 (its checkpoint is step 2's; step 3's metrics line is on disk).
    let r = dpo(&split, &lora, Some(3));
    assert!(!r.status.success());
    assert!(split.join("checkpoints/step-00000002").is_dir() && !split.join("adapter").exists());
    let r = dpo(&split, &lora, None);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stdout).contains("resumed from the checkpoint at step 2"));
    assert_eq!(steps(&whole).len(), 6);
    assert_eq!(steps(&split), steps(&whole));
    let adapter = |d: &std::path::Path| std::fs::read(d.join("adapter/adapter_model.safetensors")).unwrap();
    assert_eq!(adapter(&split), adapter(&whole));
    // The adapter is a PEFT adapter of phi-tiny: `phi eval dpo` scores it, against the base,
    // with the margins the run reached; the merged model loads on its own.
    let (ok, before, err) = eval(&[], &fixture("dpo-phi-tiny/pairs.jsonl"));
    assert!(ok, "{err}");
    let out = phi()
        .args(["eval", "dpo", "--json", "--policy"])
        .arg(fixture("phi-tiny"))
        .arg("--adapter")
        .arg(whole.join("adapter"))
        .arg("--data")
        .arg(fixture("dpo-phi-tiny/pairs.jsonl"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let get = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap();
    assert!(get(&after, "rewards/margins") > get(&before, "rewards/margins") && get(&after, "loss") < get(&before, "loss"), "{before} → {after}");
    phi::core::PhiForCausalLM::from_pretrained(whole.join("merged"), &Default::default()).unwrap();
}

#[test]
fn full_parameter_dpo_against_an_explicit_live_reference_writes_a_model_folder() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("full");
    let reference = fixture("phi-tiny");
    let r = dpo(&out, &["--reference", reference.to_str().unwrap(), "--live-reference", "--steps", "2"], None);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stdout).contains("run on every batch"));
    assert_eq!(steps(&out).len(), 2);
    phi::core::PhiForCausalLM::from_pretrained(out.join("model"), &Default::default()).unwrap();
    // Reference-free losses need no reference; a bad flag is named.
    let r = dpo(&root.path().join("orpo"), &["--loss", "orpo", "--steps", "2", "--fresh"], None);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stdout).contains("reference-free") && String::from_utf8_lossy(&r.stdout).contains("loss orpo, beta"));
    let r = dpo(&root.path().join("bad"), &["--steps", "6", "--warmup-steps", "9"], None);
    assert!(String::from_utf8_lossy(&r.stderr).contains("--warmup-steps 9"));
    let r = dpo(&root.path().join("bad"), &["--beta=-1"], None);
    assert!(String::from_utf8_lossy(&r.stderr).contains("beta -1"));
    // Flags that would be silently unused are refused.
    for (flags, says) in [
        (&["--loss", "orpo", "--live-reference"][..], "reference-free"),
        (&["--loss", "ipo", "--label-smoothing", "0.1"][..], "label smoothing is for the sigmoid and simpo losses"),
        (&["--simpo-gamma", "1"][..], "simpo gamma is for the simpo loss"),
        (&["--rank", "4"][..], "--lora"),
        (&["--holdout", "0.2", "--val-data", "x.jsonl"][..], "cannot be used with"),
    ] {
        let r = dpo(&root.path().join("bad"), flags, None);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success() && err.contains(says), "{flags:?}: {err}");
    }
    // A run never writes its outputs over its own inputs: training the model it wrote, into the
    // same folder, is refused before anything happens.
    let mut again = phi();
    again.args(["dpo", "--policy"]).arg(out.join("model")).arg("--data").arg(fixture("dpo-phi-tiny/pairs.jsonl")).arg("--out").arg(&out);
    let r = again.output().unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("which this run writes at its end"), "{err}");
    phi::core::PhiForCausalLM::from_pretrained(out.join("model"), &Default::default()).unwrap();
}
