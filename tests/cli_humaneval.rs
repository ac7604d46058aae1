//! `phi eval humaneval --completions`: given completions judged in the sandbox, results in
//! human-eval's format, and a sandbox that cannot be set up stops the run instead of
//! downgrading it.

use std::io::Write;
use std::process::Command;

fn phi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_phi"))
}

#[test]
fn judges_a_samples_file_and_writes_human_eval_results() {
    let problems = phi::humaneval::load_problems().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let samples = dir.path().join("samples.jsonl");
    let mut f = std::fs::File::create(&samples).unwrap();
    // Problems 0..4: two samples each, the canonical one and a wrong one → pass@1 = 0.5.
    for p in &problems[..4] {
        writeln!(f, "{}", serde_json::json!({"task_id": p.task_id, "completion": p.canonical_solution})).unwrap();
        writeln!(f, "{}", serde_json::json!({"task_id": p.task_id, "completion": "    return None\n"})).unwrap();
    }
    drop(f);
    let out = phi().args(["eval", "humaneval", "--completions"]).arg(&samples).args(["--timeout", "10"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("sandbox: Landlock ABI"), "{stderr}");
    assert!(stderr.contains("4 of 164 problems attempted"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["problems_attempted"], 4);
    assert_eq!(report["passed"], 4);
    assert_eq!(report["pass@1"], 0.5);
    assert_eq!(report["sandboxed"], true);
    let results = std::fs::read_to_string(dir.path().join("samples.jsonl_results.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = results.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 8);
    assert_eq!((lines[0]["passed"].clone(), lines[0]["result"].clone()), (true.into(), "passed".into()));
    assert_eq!(lines[1]["passed"], false);
    assert!(lines[1]["result"].as_str().unwrap().starts_with("failed: "), "{}", lines[1]);

    // A bad line is an error naming the file and line, and nothing is judged.
    std::fs::write(&samples, "{\"task_id\": \"HumanEval/0\"}\n").unwrap();
    let out = phi().args(["eval", "humaneval", "--completions"]).arg(&samples).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("samples.jsonl line 1"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Under a seccomp filter that refuses `unshare(2)` (as some container runtimes do), the harness
/// stops with the step that failed; `--no-sandbox` is the explicit way to run anyway.
#[test]
fn a_machine_that_cannot_isolate_gets_an_error_unless_no_sandbox_is_asked_for() {
    let problems = phi::humaneval::load_problems().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let samples = dir.path().join("s.jsonl");
    std::fs::write(&samples, serde_json::json!({"task_id": problems[0].task_id, "completion": problems[0].canonical_solution}).to_string() + "\n").unwrap();
    let mut rules = std::collections::BTreeMap::new();
    rules.insert(libc::SYS_unshare, vec![]);
    let filter = seccompiler::SeccompFilter::new(
        rules,
        seccompiler::SeccompAction::Allow,
        seccompiler::SeccompAction::Errno(libc::EPERM as u32),
        std::env::consts::ARCH.try_into().unwrap(),
    )
    .unwrap();
    let prog: seccompiler::BpfProgram = filter.try_into().unwrap();
    let run = |extra: &[&str]| {
        let mut cmd = phi();
        cmd.args(["eval", "humaneval", "--completions"]).arg(&samples).args(extra);
        let prog = prog.clone();
        use std::os::unix::process::CommandExt;
        // SAFETY: installs a prebuilt filter; no allocation between fork and exec.
        unsafe { cmd.pre_exec(move || seccompiler::apply_filter(&prog).map_err(|_| std::io::Error::last_os_error())) };
        cmd.output().unwrap()
    };
    let out = run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("unshare") && stderr.contains("--no-sandbox"), "{stderr}");
    assert!(!dir.path().join("s.jsonl_results.jsonl").exists());
    let out = run(&["--no-sandbox"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("NO SANDBOX"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["passed"].clone(), report["sandboxed"].clone()), (1.into(), false.into()));
}
