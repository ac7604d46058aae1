//! The recipes' settings files (`phi train --config over.toml`): read by the command layer, with
//! every key checked against the training config's fields.

use phi::recipes::{Recipe, apply_toml_overrides};
use phi::train::OnNonFinite;

#[test]
fn settings_files_with_unknown_or_misspelt_keys_are_refused() {
    let cfg = Recipe::phi_1().mini;
    let dir = tempfile::tempdir().unwrap();
    let apply = |text: &str| {
        let path = dir.path().join("over.toml");
        std::fs::write(&path, text).unwrap();
        apply_toml_overrides(&cfg, &path)
    };
    let e = apply("max_step = 10\n").unwrap_err();
    assert!(e.ends_with("over.toml: unknown key `max_step`: did you mean `max_steps`?"), "{e}");
    let e = apply("[schedule]\npeek = 3e-4\n").unwrap_err();
    assert!(e.ends_with("unknown key `schedule.peek`: did you mean `schedule.peak`?"), "{e}");
    let e = apply("on_non_finite = \"ignore\"\n").unwrap_err();
    assert!(e.contains("ignore") && e.contains("stop") && e.contains("skip"), "{e}");
    let ok = apply("max_steps = 10\non_non_finite = \"skip\"\n[schedule]\npeak = 3e-4\n").unwrap();
    assert_eq!((ok.max_steps, ok.on_non_finite, ok.schedule.peak), (10, OnNonFinite::Skip, 3e-4));
}
