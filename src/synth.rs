//! `phi data synth`: synthetic textbook sections and exercises from any model behind the
//! OpenAI API, phi-1's second data source ("textbooks are all you need").
//!
//! ```text
//! lists (topics × audiences × styles, function names) ─▶ prompts(seed) ─▶ generate (resumable
//!   generations.jsonl) ─▶ verify: exercises run their own tests in the sandbox ─▶ MinHash dedup
//!   ─▶ HumanEval decontamination ─▶ kept.jsonl (feeds `phi data prepare --jsonl`) + report
//! ```
//!
//! Diversity comes from the prompt, as phi-1 did ("randomness injected into the prompt") and
//! Cosmopedia's templates do: each prompt is a seeded combination of a topic, an audience and a
//! style; an exercise also names the function to write (a verb × noun), so that a thousand
//! prompts do not ask for a thousand `is_palindrome`s. An exercise is phi-1's CodeExercises form:
//! a signature and docstring, a reference solution, and `check(candidate)` tests; it is kept
//! only if the solution passes its own tests in the sandbox.

use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use phi_data::sampler::splitmix;

use phi_serve::client::Client;

/// What the prompts are drawn from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lists {
    #[serde(default = "builtin_topics")]
    pub topics: Vec<String>,
    #[serde(default = "builtin_audiences")]
    pub audiences: Vec<String>,
    /// Styles of textbook material (exercises have their own form).
    #[serde(default = "builtin_styles")]
    pub styles: Vec<String>,
    /// Function names of exercises are `verb_noun`.
    #[serde(default = "builtin_verbs")]
    pub verbs: Vec<String>,
    #[serde(default = "builtin_nouns")]
    pub nouns: Vec<String>,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn builtin_topics() -> Vec<String> {
    strings(&[
        "variables and assignment", "integer and float arithmetic", "string methods", "string formatting", "lists and indexing",
        "list slicing", "list comprehensions", "tuples and unpacking", "dictionaries", "sets and membership", "if/elif/else",
        "for loops", "while loops", "break and continue", "functions and return values", "default and keyword arguments",
        "recursion", "scope and closures", "exceptions and try/except", "reading and writing files", "classes and objects",
        "inheritance", "iterators and generators", "sorting with keys", "searching: linear and binary search", "stacks and queues",
        "linked lists", "binary trees", "hash maps and counting", "two pointers", "sliding windows", "prefix sums",
        "greedy algorithms", "dynamic programming", "graph traversal: BFS and DFS", "big-O complexity", "bit manipulation",
        "modular arithmetic and primes", "matrices as nested lists", "parsing text input", "unit testing with assert",
    ])
}

fn builtin_audiences() -> Vec<String> {
    strings(&["a beginner who has just written their first program", "a university student in an introductory course", "a professional developer new to Python"])
}

fn builtin_styles() -> Vec<String> {
    strings(&["a textbook section with explanations and short code examples", "a worked example that solves one problem step by step", "a short exercise set with solutions explained"])
}

fn builtin_verbs() -> Vec<String> {
    strings(&["count", "find", "merge", "filter", "group", "rotate", "reverse", "split", "flatten", "compress", "normalize", "rank", "pair", "sum", "validate", "encode", "decode", "interleave", "dedupe", "transpose"])
}

fn builtin_nouns() -> Vec<String> {
    strings(&["words", "digits", "intervals", "pairs", "vowels", "runs", "peaks", "matrix", "brackets", "primes", "scores", "dates", "tokens", "segments", "triples", "windows", "letters", "records", "paths", "coins"])
}

impl Lists {
    pub fn builtin() -> Self {
        Lists { topics: builtin_topics(), audiences: builtin_audiences(), styles: builtin_styles(), verbs: builtin_verbs(), nouns: builtin_nouns() }
    }

    /// A TOML file with any of `topics`, `audiences`, `styles`, `verbs`, `nouns` (the rest
    /// built in).
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let l: Lists = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for (key, v) in [("topics", &l.topics), ("audiences", &l.audiences), ("styles", &l.styles), ("verbs", &l.verbs), ("nouns", &l.nouns)] {
            if v.is_empty() || v.iter().any(|s| s.trim().is_empty()) {
                return Err(format!("{}: `{key}` must be a non-empty list of non-empty strings", path.display()));
            }
        }
        Ok(l)
    }
}

/// Textbook material or exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SynthKind {
    Textbook,
    Exercise,
}

impl std::fmt::Display for SynthKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SynthKind::Textbook => "textbook",
            SynthKind::Exercise => "exercise",
        })
    }
}

impl std::str::FromStr for SynthKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "textbook" => Ok(SynthKind::Textbook),
            "exercise" => Ok(SynthKind::Exercise),
            _ => Err(format!("`{s}`: expected textbook or exercise")),
        }
    }
}

/// One prompt and what it was made of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthPrompt {
    /// XXH3-64 of the prompt text, hex: what a rerun recognises.
    pub id: String,
    pub kind: SynthKind,
    pub topic: String,
    pub audience: String,
    pub style: String,
    /// The function an exercise must define.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    pub prompt: String,
}

/// `n` distinct prompts, the same for the same lists, kind and seed. Fewer when the lists
/// cannot make `n` distinct ones.
pub fn prompts(lists: &Lists, kind: SynthKind, n: usize, seed: u64) -> Vec<SynthPrompt> {
    let mut out = Vec::with_capacity(n);
    let mut seen = HashSet::new();
    let pick = |v: &[String], x: u64| v[(x % v.len() as u64) as usize].clone();
    for i in 0..(n as u64).saturating_mul(20).max(20) {
        if out.len() == n {
            break;
        }
        let x = splitmix(seed.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ i);
        let (topic, audience) = (pick(&lists.topics, x), pick(&lists.audiences, splitmix(x ^ 1)));
        let (style, function, prompt) = match kind {
            SynthKind::Textbook => {
                let style = pick(&lists.styles, splitmix(x ^ 2));
                let prompt = format!(
                    "Write {style} about {topic} in Python for {audience}. Be clear and correct; explain the ideas in prose, \
                     and put code in ```python blocks. Write only the material itself."
                );
                (style, None, prompt)
            }
            SynthKind::Exercise => {
                let name = format!("{}_{}", pick(&lists.verbs, splitmix(x ^ 3)), pick(&lists.nouns, splitmix(x ^ 4)));
                let prompt = format!(
                    "Write a Python exercise about {topic} for {audience}, as one ```python block that contains, in order:\n\
                     1. a function `{name}` with type hints and a docstring that states the task and gives one example;\n\
                     2. its correct implementation (standard library only);\n\
                     3. a function `check(candidate)` with at least three `assert` statements that test `candidate` \
                     (called as `check({name})`).\nWrite nothing outside the block."
                );
                ("exercise".to_string(), Some(name), prompt)
            }
        };
        let id = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(prompt.as_bytes()));
        if seen.insert(id.clone()) {
            out.push(SynthPrompt { id, kind, topic, audience, style, function, prompt });
        }
    }
    out
}

/// `max_tokens` when none is given: room for a textbook section or an exercise.
pub const DEFAULT_MAX_TOKENS: usize = 1024;

/// The `max_tokens` of every request to `model` (served in-process), decided before the first
/// one: each prompt, in the model's chat template, plus its answer must fit the model's context,
/// or every request would be refused. `requested` if the longest prompt leaves that much, else
/// an error saying what fits; without a request, [`DEFAULT_MAX_TOKENS`] or what the context
/// leaves, if less.
pub fn fit_max_tokens(model: &phi_serve::ServedModel, prompts: &[SynthPrompt], requested: Option<usize>) -> Result<usize, String> {
    let context = model.model.config().max_position_embeddings;
    let mut longest = 0;
    for p in prompts {
        let text = model.template.prompt([("user", p.prompt.as_str())]).map_err(|e| e.to_string())?;
        longest = longest.max(model.tokenizer.encode(&text).len());
    }
    let room = context.saturating_sub(longest);
    let fits = format!("the model's context is {context} tokens and the longest prompt takes {longest}");
    match requested {
        _ if room == 0 => Err(format!("{fits}: no room is left for an answer; use a model with a longer context")),
        Some(0) => Err("--max-tokens 0: an answer needs at least one token".into()),
        Some(m) if m > room => Err(format!("--max-tokens {m} does not fit: {fits}, which leaves {room}; give --max-tokens {room} or less")),
        Some(m) => Ok(m),
        None => Ok(DEFAULT_MAX_TOKENS.min(room)),
    }
}

/// One answer, as appended to `generations.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    #[serde(flatten)]
    pub prompt: SynthPrompt,
    pub model: String,
    pub text: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// How to generate.
pub struct GenerateOptions {
    pub prompts: Vec<SynthPrompt>,
    pub client: Client,
    pub temperature: f64,
    pub max_tokens: usize,
    pub concurrency: usize,
    pub retries: usize,
    /// `generations.jsonl`: appended as answers arrive; what it holds is not asked again.
    pub out: std::path::PathBuf,
}

/// What a generation run did, with the totals that cost money.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerateReport {
    pub prompts: usize,
    /// Already answered by this model in `out`.
    pub already: usize,
    pub asked: usize,
    pub retried: usize,
    /// `(prompt id, error)` of requests that failed after their retries (asked again next run).
    pub failed: Vec<(String, String)>,
    /// Tokens of this run's answers (prompt + completion: what a hosted API bills).
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Asks for every prompt `out` has no answer to from this model; appends each answer.
pub fn generate(o: &GenerateOptions, on_done: impl Fn(usize) + Sync) -> Result<GenerateReport, String> {
    if o.concurrency == 0 {
        return Err("concurrency must be at least 1".into());
    }
    let have: HashSet<String> = phi_serve::log::read_log::<Generation>(&o.out, "a generation").map_err(|e| e.to_string())?.into_iter().filter(|g| g.model == o.client.model).map(|g| g.prompt.id).collect();
    let todo: Vec<&SynthPrompt> = o.prompts.iter().filter(|p| !have.contains(&p.id)).collect();
    let report = Mutex::new(GenerateReport { prompts: o.prompts.len(), already: o.prompts.len() - todo.len(), ..Default::default() });
    let file = Mutex::new(phi_serve::log::open_append(&o.out).map_err(|e| e.to_string())?);
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..o.concurrency.min(todo.len().max(1)) {
            s.spawn(|| {
                while let Some(p) = todo.get(next.fetch_add(1, Ordering::SeqCst)) {
                    let result = o.client.chat(&[("user", p.prompt.as_str())], o.temperature, o.max_tokens, o.retries);
                    let mut r = report.lock().unwrap();
                    r.asked += 1;
                    match result {
                        Ok(reply) => {
                            let g = Generation {
                                prompt: (*p).clone(),
                                model: o.client.model.clone(),
                                text: reply.text,
                                prompt_tokens: reply.prompt_tokens.unwrap_or(0),
                                completion_tokens: reply.completion_tokens.unwrap_or(0),
                            };
                            let mut f = file.lock().unwrap();
                            if let Err(e) = writeln!(f, "{}", serde_json::to_string(&g).expect("serializes")).and_then(|_| f.flush()) {
                                r.failed.push((p.id.clone(), format!("{}: {e}", o.out.display())));
                                continue;
                            }
                            r.prompt_tokens += g.prompt_tokens;
                            r.completion_tokens += g.completion_tokens;
                            r.retried += usize::from(reply.attempts > 1);
                            on_done(r.asked);
                        }
                        Err(e) => r.failed.push((p.id.clone(), e.to_string())),
                    }
                }
            });
        }
    });
    Ok(report.into_inner().unwrap())
}

/// A kept item, one line of `kept.jsonl` (`text` is what `phi data prepare --jsonl` reads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    pub id: String,
    pub kind: SynthKind,
    pub topic: String,
    pub audience: String,
    pub style: String,
    /// The textbook material, or the exercise's function (signature, docstring, solution).
    pub text: String,
    /// An exercise's `check(candidate)` tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<String>,
    /// The model that wrote it.
    pub model: String,
}

/// What verification kept and dropped, and how diverse the result is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub generations: usize,
    pub kept: usize,
    /// Reason → count.
    pub dropped: std::collections::BTreeMap<String, usize>,
    /// Distinct word 4-grams over all 4-grams of the kept texts (1 = no repetition).
    pub distinct_4grams: f64,
    /// Near duplicates dropped over the items that reached dedup.
    pub near_duplicate_rate: f64,
    /// Topic × audience combinations present in the kept items, and how many the lists make.
    pub topic_audience_covered: usize,
    pub topic_audience_total: usize,
}

/// The first ```python block (or any fenced block), else the whole text.
fn code_of(text: &str) -> String {
    for fence in ["```python", "```py", "```"] {
        if let Some(start) = text.find(fence) {
            let body = &text[start + fence.len()..];
            let body = body.strip_prefix('\n').unwrap_or(body);
            return body.split("```").next().unwrap_or(body).to_string();
        }
    }
    text.to_string()
}

/// Splits an exercise's code into the function (up to `def check`) and the tests.
fn split_exercise(code: &str, function: &str) -> Result<(String, String), &'static str> {
    let def = code.find(&format!("def {function}(")).ok_or("no function of the requested name")?;
    let at = code.find("def check(").ok_or("no check(candidate) tests")?;
    if at < def {
        return Err("the tests come before the function");
    }
    let tests = code[at..].trim_end().to_string() + "\n";
    if !tests.contains("assert") {
        return Err("the tests assert nothing");
    }
    Ok((code[..at].trim_end().to_string() + "\n", tests))
}

/// Keeps what passes: exercises whose solution passes their own tests in `sandbox` (`workers`
/// at a time), textbook material of at least `min_chars`; then drops near duplicates (MinHash)
/// and anything sharing a 13-gram with HumanEval. `lists` gives the coverage's denominator.
pub fn verify(generations: &[Generation], lists: &Lists, sandbox: &phi_sandbox::Sandbox, workers: usize, min_chars: usize) -> Result<(Vec<Kept>, VerifyReport), String> {
    let mut report = VerifyReport { generations: generations.len(), topic_audience_total: lists.topics.len() * lists.audiences.len(), ..Default::default() };
    let mut drop = |why: &str| *report.dropped.entry(why.to_string()).or_default() += 1;
    // One answer per prompt (the first), in order.
    let mut seen = HashSet::new();
    let mut candidates: Vec<Kept> = Vec::new();
    let mut programs: Vec<(usize, String)> = Vec::new();
    for g in generations.iter().filter(|g| seen.insert(g.prompt.id.clone())) {
        let p = &g.prompt;
        let mut kept = Kept { id: p.id.clone(), kind: p.kind, topic: p.topic.clone(), audience: p.audience.clone(), style: p.style.clone(), text: String::new(), tests: None, model: g.model.clone() };
        match (p.kind, &p.function) {
            (SynthKind::Exercise, Some(f)) => match split_exercise(&code_of(&g.text), f) {
                Ok((function, tests)) => {
                    programs.push((candidates.len(), format!("{function}\n\n{tests}\n\ncheck({f})\n")));
                    kept.text = function;
                    kept.tests = Some(tests);
                }
                Err(why) => {
                    drop(why);
                    continue;
                }
            },
            (SynthKind::Exercise, None) => {
                drop("exercise without a function name");
                continue;
            }
            (SynthKind::Textbook, _) => {
                if g.text.trim().chars().count() < min_chars {
                    drop("too short");
                    continue;
                }
                kept.text = g.text.trim().to_string() + "\n";
            }
        }
        candidates.push(kept);
    }
    let texts: Vec<String> = programs.iter().map(|(_, p)| p.clone()).collect();
    let outcomes = phi_eval::humaneval::run_programs(&texts, sandbox, workers).map_err(|e| e.to_string())?;
    let mut failed = HashSet::new();
    for ((i, _), outcome) in programs.iter().zip(outcomes) {
        match outcome {
            phi_eval::humaneval::Outcome::Passed => {}
            phi_eval::humaneval::Outcome::TimedOut => {
                drop("tests time out");
                failed.insert(*i);
            }
            phi_eval::humaneval::Outcome::Failed(_) => {
                drop("the solution fails its own tests");
                failed.insert(*i);
            }
        }
    }
    let passed: Vec<Kept> = candidates.into_iter().enumerate().filter(|(i, _)| !failed.contains(i)).map(|(_, k)| k).collect();
    let reached = passed.len();
    let nd = phi_data::quality::NearDup::default();
    let mut index = phi_data::quality::NearDupIndex::new(nd.clone());
    let decon = phi_data::quality::Decontaminator::new(&phi_data::evalsets::humaneval(), 13);
    let mut kept = Vec::new();
    let mut near = 0;
    for k in passed {
        let full = format!("{}{}", k.text, k.tests.as_deref().unwrap_or(""));
        if index.insert(nd.signature(&full)).is_some() {
            near += 1;
            drop("near duplicate");
        } else if decon.is_contaminated(&full) {
            drop("shares a 13-gram with HumanEval");
        } else {
            kept.push(k);
        }
    }
    report.kept = kept.len();
    report.near_duplicate_rate = if reached == 0 { 0.0 } else { near as f64 / reached as f64 };
    let mut grams = HashSet::new();
    let mut total = 0usize;
    for k in &kept {
        let words: Vec<&str> = k.text.split_whitespace().collect();
        for w in words.windows(4) {
            total += 1;
            grams.insert(w.join(" "));
        }
    }
    report.distinct_4grams = if total == 0 { 0.0 } else { grams.len() as f64 / total as f64 };
    report.topic_audience_covered = kept.iter().map(|k| (k.topic.as_str(), k.audience.as_str())).collect::<BTreeSet<_>>().len();
    Ok((kept, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_prompts_and_exercises_name_their_function() {
        let l = Lists::builtin();
        let a = prompts(&l, SynthKind::Exercise, 50, 7);
        assert_eq!(a, prompts(&l, SynthKind::Exercise, 50, 7));
        assert_ne!(a, prompts(&l, SynthKind::Exercise, 50, 8));
        assert_eq!(a.len(), 50);
        assert_eq!(a.iter().map(|p| &p.id).collect::<HashSet<_>>().len(), 50, "distinct");
        assert!(a.iter().all(|p| p.prompt.contains(&format!("`{}`", p.function.as_ref().unwrap()))));
        // A longer run starts with the shorter one's prompts.
        assert_eq!(prompts(&l, SynthKind::Exercise, 80, 7)[..50], a[..]);
        let t = prompts(&l, SynthKind::Textbook, 30, 7);
        assert!(t.iter().all(|p| p.function.is_none() && p.prompt.contains(&p.topic) && p.prompt.contains(&p.style)));
        assert!(t.iter().map(|p| &p.topic).collect::<HashSet<_>>().len() > 15, "topics vary");
        // Tiny lists cannot make many distinct prompts: fewer come back, never duplicates.
        let tiny = Lists { topics: strings(&["loops"]), audiences: strings(&["a student"]), styles: strings(&["a section"]), ..Lists::builtin() };
        assert_eq!(prompts(&tiny, SynthKind::Textbook, 5, 0).len(), 1);
    }

    #[test]
    fn exercises_split_into_function_and_tests() {
        let text = "Here:\n```python\ndef count_words(s: str) -> int:\n    \"\"\"Count.\"\"\"\n    return len(s.split())\n\ndef check(candidate):\n    assert candidate('a b') == 2\n```\nDone.";
        let (f, t) = split_exercise(&code_of(text), "count_words").unwrap();
        assert!(f.starts_with("def count_words") && f.contains("return len") && !f.contains("check"));
        assert!(t.starts_with("def check(candidate):") && t.contains("assert"));
        assert_eq!(split_exercise(&code_of(text), "other"), Err("no function of the requested name"));
        assert_eq!(split_exercise("def f(x):\n    return x\n", "f"), Err("no check(candidate) tests"));
        assert_eq!(split_exercise("def check(c):\n    assert c(1)\ndef f(x):\n    return x\n", "f"), Err("the tests come before the function"));
        assert_eq!(split_exercise("def f(x):\n    return x\ndef check(c):\n    pass\n", "f"), Err("the tests assert nothing"));
    }
}

/// A whole `phi data synth` run into a folder: `generations.jsonl` (the resumable log),
/// `kept.jsonl` and `report.json` (rewritten atomically from the whole log each run).
pub struct SynthRun {
    pub lists: Lists,
    pub kind: SynthKind,
    pub n: usize,
    pub seed: u64,
    pub client: Client,
    pub temperature: f64,
    pub max_tokens: usize,
    pub concurrency: usize,
    pub retries: usize,
    /// Textbook material shorter than this is dropped.
    pub min_chars: usize,
    /// Sandboxed test runs at once.
    pub workers: usize,
    pub out: std::path::PathBuf,
}

/// Generates what the log lacks, then verifies this run's prompts as this model answered them
/// (the log may also hold other models' answers and other prompts: they stay, unverified).
pub fn run(o: &SynthRun, sandbox: &phi_sandbox::Sandbox, on_done: impl Fn(usize) + Sync) -> Result<(GenerateReport, VerifyReport), String> {
    // The folder is ours, or new: nothing else is written next to a user's files.
    if let Ok(entries) = std::fs::read_dir(&o.out) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !matches!(name.as_str(), "generations.jsonl" | "kept.jsonl" | "report.json" | "kept.jsonl.tmp" | "report.json.tmp") {
                return Err(format!("{}: holds {name}, which phi data synth does not write; use another --out", o.out.display()));
            }
        }
    }
    let log = o.out.join("generations.jsonl");
    let options = GenerateOptions {
        prompts: prompts(&o.lists, o.kind, o.n, o.seed),
        client: o.client.clone(),
        temperature: o.temperature,
        max_tokens: o.max_tokens,
        concurrency: o.concurrency,
        retries: o.retries,
        out: log.clone(),
    };
    let generated = generate(&options, on_done)?;
    let current: HashSet<&str> = options.prompts.iter().map(|p| p.id.as_str()).collect();
    let all: Vec<Generation> = phi_serve::log::read_log::<Generation>(&log, "a generation").map_err(|e| e.to_string())?
        .into_iter()
        .filter(|g| g.model == o.client.model && current.contains(g.prompt.id.as_str()))
        .collect();
    let (kept, verified) = verify(&all, &o.lists, sandbox, o.workers, o.min_chars)?;
    let write = |name: &str, text: String| phi_core::weights::write_atomic(&o.out.join(name), text.as_bytes()).map_err(|e| e.to_string());
    write("kept.jsonl", kept.iter().map(|k| serde_json::to_string(k).expect("serializes") + "\n").collect())?;
    let report = serde_json::json!({ "generation": generated, "verification": verified });
    write("report.json", serde_json::to_string_pretty(&report).expect("serializes"))?;
    Ok((generated, verified))
}
