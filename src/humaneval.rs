//! HumanEval: generate completions for the 164 problems, run each program with its
//! `check(entry_point)` in its own `python3` process, report pass@k.
//!
//! Isolation, layered because no single mechanism is available everywhere: every program runs in
//! a fresh temporary directory, with `python3 -I` (no site, no user paths), under `setrlimit`
//! limits on CPU time, address space, file size and open files, in a new network namespace when
//! the OS allows it, with a wall-clock timeout, and after a guard (as in OpenAI's human-eval
//! `reliability_guard`) that disables process spawning and destructive `os`/`shutil` calls and
//! refuses writes outside its directory. A program that loops or misbehaves fails only itself.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One HumanEval problem.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Problem {
    pub task_id: String,
    pub prompt: String,
    pub canonical_solution: String,
    pub test: String,
    pub entry_point: String,
}

/// The stop sequences of the HumanEval paper: a completion ends where a new top-level statement
/// would begin.
pub const STOP_SEQUENCES: [&str; 5] = ["\ndef", "\nclass", "\nif", "\nprint", "\n#"];

/// `completion` cut at the first stop sequence.
pub fn truncate_completion(completion: &str) -> &str {
    let end = STOP_SEQUENCES.iter().filter_map(|s| completion.find(s)).min().unwrap_or(completion.len());
    &completion[..end]
}

/// The bundled problems (`crates/phi-data/data/humaneval/HumanEval.jsonl.gz`, MIT).
pub fn load_problems() -> Result<Vec<Problem>, String> {
    parse_problems(&phi_data::evalsets::humaneval_jsonl(), Path::new("HumanEval.jsonl.gz"))
}

pub fn load_problems_from(path: &Path) -> Result<Vec<Problem>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file).read_to_string(&mut text).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_problems(&text, path)
}

fn parse_problems(text: &str, path: &Path) -> Result<Vec<Problem>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("{} line {}: {e}", path.display(), i + 1)))
        .collect()
}

/// What running one program gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Passed,
    Failed(String),
    TimedOut,
}

/// Limits for one program.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    pub cpu_seconds: u64,
    pub memory_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { timeout: Duration::from_secs(10), cpu_seconds: 10, memory_bytes: 2 << 30 }
    }
}

/// Disables what a test program has no business doing; written before the program.
const GUARD: &str = r#"
import builtins, os, shutil, subprocess
_cwd = os.path.realpath(os.getcwd())
_open = builtins.open
def _guarded_open(file, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax+") and not os.path.realpath(os.fspath(file)).startswith(_cwd + os.sep):
        raise PermissionError("writing outside the sandbox directory is not allowed")
    return _open(file, mode, *args, **kwargs)
builtins.open = _guarded_open
def _refuse(*args, **kwargs):
    raise PermissionError("disabled in the HumanEval sandbox")
for _name in ["system", "kill", "killpg", "fork", "forkpty", "remove", "removedirs", "rmdir", "unlink",
              "rename", "renames", "replace", "truncate", "putenv", "chmod", "chown", "chdir", "fchdir",
              "setuid", "execv", "execve", "spawnv", "popen"]:
    if hasattr(os, _name):
        setattr(os, _name, _refuse)
shutil.rmtree = shutil.move = shutil.chown = _refuse
subprocess.Popen = subprocess.run = subprocess.call = subprocess.check_output = _refuse
del _name
"#;

/// Runs `program` (a complete Python file) in the sandbox described in the module docs.
pub fn run_program(program: &str, limits: &Limits) -> Result<Outcome, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let path = dir.path().join("program.py");
    std::fs::write(&path, format!("{GUARD}\n{program}")).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut cmd = Command::new("python3");
    cmd.arg("-I").arg(&path).current_dir(dir.path()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    cmd.env_clear().env("PATH", "/usr/bin:/bin").env("HOME", dir.path());
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let (cpu, mem) = (limits.cpu_seconds, limits.memory_bytes);
        // SAFETY: only async-signal-safe libc calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let set = |res, v: u64| {
                    let lim = libc::rlimit { rlim_cur: v, rlim_max: v };
                    libc::setrlimit(res, &lim);
                };
                set(libc::RLIMIT_CPU, cpu);
                set(libc::RLIMIT_AS, mem);
                set(libc::RLIMIT_FSIZE, 16 << 20);
                set(libc::RLIMIT_NOFILE, 64);
                set(libc::RLIMIT_CORE, 0);
                // No network where the kernel lets us have our own (empty) namespace.
                libc::unshare(libc::CLONE_NEWNET);
                libc::setsid();
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "python3 not found: HumanEval runs every program with python3; install it".to_string(),
        _ => format!("starting python3: {e}"),
    })?;
    let start = Instant::now();
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => {
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
                return Ok(if status.success() {
                    Outcome::Passed
                } else {
                    let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
                    Outcome::Failed(if last.is_empty() { format!("exit status {status}") } else { last })
                });
            }
            None if start.elapsed() > limits.timeout => {
                // The whole session (setsid above): the program and anything it started.
                #[cfg(target_os = "linux")]
                // SAFETY: `kill` takes plain integers; the group is our child's own session.
                unsafe {
                    libc::kill(-(child.id() as i32), libc::SIGKILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                return Ok(Outcome::TimedOut);
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// The program HumanEval runs for a completion.
pub fn program(problem: &Problem, completion: &str) -> String {
    format!("{}{}\n\n{}\n\ncheck({})\n", problem.prompt, completion, problem.test, problem.entry_point)
}

/// One judged sample.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub task_id: String,
    pub completion: String,
    pub outcome: Outcome,
}

/// Runs every `(problem, completion)` pair on `workers` threads; results in input order.
pub fn judge(pairs: &[(&Problem, String)], limits: &Limits, workers: usize) -> Result<Vec<Sample>, String> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<Outcome, String>>>> = pairs.iter().map(|_| Default::default()).collect();
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some((p, c)) = pairs.get(i) else { break };
                *results[i].lock().unwrap() = Some(run_program(&program(p, c), limits));
            });
        }
    });
    pairs
        .iter()
        .zip(results)
        .map(|((p, c), r)| {
            let outcome = r.into_inner().unwrap().expect("every pair ran")?;
            Ok(Sample { task_id: p.task_id.clone(), completion: c.clone(), outcome })
        })
        .collect()
}

/// The unbiased pass@k estimator of the Codex paper: `1 - C(n-c, k) / C(n, k)` for `c` correct
/// of `n` samples.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if n - c < k {
        return 1.0;
    }
    1.0 - ((n - c + 1)..=n).map(|i| 1.0 - k as f64 / i as f64).product::<f64>()
}

/// Mean pass@k over problems, from judged samples grouped by task.
pub fn score(samples: &[Sample], k: usize) -> Option<f64> {
    let mut by_task: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for s in samples {
        let e = by_task.entry(&s.task_id).or_default();
        e.0 += 1;
        e.1 += (s.outcome == Outcome::Passed) as usize;
    }
    if by_task.values().any(|(n, _)| *n < k) {
        return None;
    }
    Some(by_task.values().map(|&(n, c)| pass_at_k(n, c, k)).sum::<f64>() / by_task.len() as f64)
}

/// Writes one JSON line per sample.
pub fn write_jsonl(path: &Path, samples: &[Sample]) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for s in samples {
        writeln!(f, "{}", serde_json::to_string(s).expect("sample serializes"))?;
    }
    f.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_at_k_estimator() {
        assert_eq!(pass_at_k(10, 0, 1), 0.0);
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-12);
        assert_eq!(pass_at_k(10, 10, 10), 1.0);
        // 1 - C(7,5)/C(10,5) = 1 - 21/252
        assert!((pass_at_k(10, 3, 5) - (1.0 - 21.0 / 252.0)).abs() < 1e-12);
    }

    #[test]
    fn completions_stop_at_the_next_top_level_statement() {
        assert_eq!(truncate_completion("    return x\n\ndef g():\n    pass"), "    return x\n");
        assert_eq!(truncate_completion("    return x\nprint(1)"), "    return x");
        assert_eq!(truncate_completion("    return x"), "    return x");
    }
}
