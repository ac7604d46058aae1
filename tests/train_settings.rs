//! Settings files for a training run: unknown or misspelt keys are refused, naming the key and the
//! nearest known one. The other training guards are phi-train's `tests/train_guards.rs`; this one
//! is here while `apply_toml_overrides` is in the `phi` crate's `recipes`.

#[path = "../crates/phi-train/tests/common/tiny.rs"]
mod tiny;

use phi_train::{OnNonFinite, TrainConfig};
use tiny::tiny;

#[test]
fn settings_files_with_unknown_or_misspelt_keys_are_refused() {
    let (_, cfg, _, _) = tiny();
    let dir = tempfile::tempdir().unwrap();
    let apply = |text: &str| {
        let path = dir.path().join("over.toml");
        std::fs::write(&path, text).unwrap();
        phi::recipes::apply_toml_overrides(&cfg, &path)
    };
    let e = apply("max_step = 10\n").unwrap_err();
    assert!(e.ends_with("over.toml: unknown key `max_step`: did you mean `max_steps`?"), "{e}");
    let e = apply("[schedule]\npeek = 3e-4\n").unwrap_err();
    assert!(e.ends_with("unknown key `schedule.peek`: did you mean `schedule.peak`?"), "{e}");
    let e = apply("on_non_finite = \"ignore\"\n").unwrap_err();
    assert!(e.contains("ignore") && e.contains("stop") && e.contains("skip"), "{e}");
    let ok = apply("max_steps = 10\non_non_finite = \"skip\"\n[schedule]\npeak = 3e-4\n").unwrap();
    assert_eq!((ok.max_steps, ok.on_non_finite, ok.schedule.peak), (10, OnNonFinite::Skip, 3e-4));
    // A config without the new key (an older checkpoint's) reads as "stop".
    let mut json = serde_json::to_value(&cfg).unwrap();
    json.as_object_mut().unwrap().remove("on_non_finite");
    assert_eq!(serde_json::from_value::<TrainConfig>(json).unwrap().on_non_finite, OnNonFinite::Stop);
}
