//! `phi eval dpo`: the loss and TRL's reward metrics of a policy against a reference over a
//! preference file, without training — against TRL's fixture (policy = phi-tiny + the
//! lora-phi-tiny adapter, reference = phi-tiny, β 0.1, sigmoid).

mod common;

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
    assert!(!ok && err.contains("--loss `kto`"), "{err}");
}
