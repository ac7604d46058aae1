//! The HumanEval harness itself: canonical solutions all pass, wrong ones all fail, and a
//! program that loops or writes outside its directory fails only itself.

use std::time::Duration;

use phi::humaneval::{Limits, Outcome, judge, load_problems, run_program, score};

#[test]
fn canonical_solutions_pass_and_wrong_ones_fail() {
    let problems = load_problems().unwrap();
    assert_eq!(problems.len(), 164);
    let limits = Limits { timeout: Duration::from_secs(20), ..Default::default() };
    let canonical: Vec<_> = problems.iter().map(|p| (p, p.canonical_solution.clone())).collect();
    let judged = judge(&canonical, &limits, 2).unwrap();
    let failed: Vec<_> = judged.iter().filter(|s| s.outcome != Outcome::Passed).map(|s| (&s.task_id, &s.outcome)).collect();
    assert!(failed.is_empty(), "canonical solutions failed: {failed:?}");
    assert_eq!(score(&judged, 1), Some(1.0));

    let wrong: Vec<_> = problems.iter().map(|p| (p, "    raise NotImplementedError\n".to_string())).collect();
    let judged = judge(&wrong, &limits, 2).unwrap();
    assert_eq!(judged.iter().filter(|s| s.outcome == Outcome::Passed).count(), 0);
    assert_eq!(score(&judged, 1), Some(0.0));
}

#[test]
fn a_looping_or_escaping_program_fails_only_itself() {
    let limits = Limits { timeout: Duration::from_secs(2), cpu_seconds: 2, ..Default::default() };
    assert_eq!(run_program("while True:\n    pass\n", &limits).unwrap(), Outcome::TimedOut);
    let target = std::env::temp_dir().join(format!("phi-humaneval-escape-{}", std::process::id()));
    let escape = format!("open({:?}, 'w').write('x')\n", target.display().to_string());
    assert!(matches!(run_program(&escape, &limits).unwrap(), Outcome::Failed(_)));
    assert!(!target.exists(), "the program wrote outside its directory");
    let spawn = "import os\nos.system('touch /tmp/phi-should-not-exist')\n";
    assert!(matches!(run_program(spawn, &limits).unwrap(), Outcome::Failed(_)));
    // Inside its own directory a program may write (some solutions use temporary files).
    assert_eq!(run_program("open('scratch.txt', 'w').write('ok')\n", &limits).unwrap(), Outcome::Passed);
}
