//! `phi data annotate`: labels for the learned quality filter from any OpenAI-compatible
//! endpoint, as phi-1 had GPT-4 rate code for "educational value for a student whose goal is to
//! learn basic coding concepts" and FineWeb-Edu had Llama-3 score web pages on an additive 0–5
//! rubric.
//!
//! A seeded sample of the documents is sent, a bounded number at a time, with a versioned
//! prompt; each answer is appended to `annotations.jsonl` as it arrives (document hash, origin,
//! the text the judge saw, score or null, the raw answer, the prompt version, the model) — a
//! labelled set a classifier can train on by itself — so a run can be stopped at any
//! point and a rerun never asks again for a document it has an answer for under that prompt.
//!
//! ```no_run
//! use phi::annotate::{AnnotateOptions, PromptTemplate, annotate};
//! use phi::serve::client::Client;
//! # fn demo(docs: Vec<(String, String)>) -> Result<(), String> {
//! let client = Client::new("http://127.0.0.1:8000/v1", "judge", None);
//! let opts = AnnotateOptions::new(docs, client, PromptTemplate::builtin(), "annotations.jsonl".into());
//! let report = annotate(&opts, |_done| {})?;
//! // Every answer is scored 0–5 or kept unparsed; the histogram counts the scored ones.
//! assert_eq!(report.histogram.iter().sum::<usize>(), report.scored);
//! # Ok(()) }
//! ```

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use phi_serve::client::Client;

/// The built-in prompt: an additive 0–5 educational-value rubric for code, in the spirit of
/// phi-1's annotation and FineWeb-Edu's prompt. `{document}` is replaced by the document.
pub const EDU_CODE_V1: &str = r#"Below is an extract from a source file. Evaluate whether it has high educational value and could be useful in an educational setting for teaching basic coding concepts to a student, using the additive 5-point scoring system described below. Points are accumulated based on the satisfaction of each criterion:

- Add 1 point if the extract contains valid code, even if it is not educational, like boilerplate code, configurations, or niche concepts.
- Add another point if the extract addresses practical concepts, even if it lacks comments.
- Add a third point if the extract is suitable for educational use and introduces key concepts in programming, even if the topic is advanced. The code should be well-structured and contain some comments.
- Award a fourth point if the extract is self-contained and highly relevant to teaching programming. It should be similar to a school exercise, a tutorial, or a textbook section.
- Grant a fifth point if the extract is outstanding in its educational value and is perfectly suited for teaching programming. It should be well-written, easy to understand, and contain step-by-step explanations and comments.

The extract:
{document}

After examining the extract:
- Briefly justify your total score, up to 100 words.
- Conclude with the score using the format: "Educational score: <total points>""#;

/// A prompt and its version (stored with every answer, so answers to different prompts never
/// mix).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptTemplate {
    pub version: String,
    /// Holds `{document}` once.
    pub text: String,
}

impl PromptTemplate {
    /// [`EDU_CODE_V1`], version `edu-code-v1`.
    pub fn builtin() -> Self {
        PromptTemplate { version: "edu-code-v1".into(), text: EDU_CODE_V1.into() }
    }

    /// A user's prompt file; its version is the file name and a hash of its text, so editing
    /// the prompt starts a new set of answers.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if text.matches("{document}").count() != 1 {
            return Err(format!("{}: the prompt must hold `{{document}}` exactly once", path.display()));
        }
        let name = path.file_name().map_or("prompt".into(), |n| n.to_string_lossy().into_owned());
        Ok(PromptTemplate { version: format!("{name}@{:08x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()) as u32), text })
    }

    pub fn render(&self, document: &str) -> String {
        self.text.replacen("{document}", document, 1)
    }
}

/// The score in an answer: the last `score: N` (any case, `*`/spaces allowed around N) with N
/// in 0..=5, else `None`.
pub fn parse_score(answer: &str) -> Option<u8> {
    let lower = answer.to_lowercase();
    let mut found = None;
    for (i, _) in lower.match_indices("score") {
        let rest = lower[i + 5..].trim_start_matches(|c: char| c == ':' || c == '*' || c == ' ' || c == '"');
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let after = &rest[digits.len()..];
        // `3.` ends a sentence; `2.5` is not a score on this scale (`3.0` is 3).
        let fraction = after.starts_with('.') && after[1..].starts_with(|c: char| c.is_ascii_digit()) && !after.starts_with(".0");
        if let Ok(n) = digits.parse::<u8>()
            && n <= 5
            && !fraction
        {
            found = Some(n);
        }
    }
    found
}

/// One line of `annotations.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Annotation {
    /// XXH3-64 of the document text, hex.
    pub hash: String,
    pub origin: String,
    /// The text the judge saw (the document, cut to `max_doc_chars`).
    pub text: String,
    /// `None` when the answer held no score.
    pub score: Option<u8>,
    pub answer: String,
    pub prompt_version: String,
    pub model: String,
}

/// The hash annotations key documents by.
pub fn document_hash(text: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}

/// What to annotate and how.
pub struct AnnotateOptions {
    /// `(origin, text)` of every candidate document.
    pub documents: Vec<(String, String)>,
    /// How many to sample (seeded) from them.
    pub n: usize,
    pub seed: u64,
    pub client: Client,
    pub prompt: PromptTemplate,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Retries per request (with exponential backoff) on connection errors, 429 and 5xx.
    pub retries: usize,
    /// A document longer than this is cut (at a character boundary) before it is sent.
    pub max_doc_chars: usize,
    /// Tokens the judge may answer with.
    pub max_tokens: usize,
    pub out: PathBuf,
}

impl AnnotateOptions {
    pub fn new(documents: Vec<(String, String)>, client: Client, prompt: PromptTemplate, out: PathBuf) -> Self {
        AnnotateOptions { documents, n: 1000, seed: 0, client, prompt, concurrency: 4, retries: 4, max_doc_chars: 6000, max_tokens: 256, out }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AnnotateReport {
    pub sampled: usize,
    /// Already answered under this prompt and model in `out` (not asked again).
    pub already: usize,
    pub asked: usize,
    pub scored: usize,
    /// Answers without a parsable score (kept, with `score: null`).
    pub unparsed: usize,
    /// `(origin, error)` of requests that failed after their retries (not written: a rerun
    /// asks again).
    pub failed: Vec<(String, String)>,
    /// Scores 0..=5 among this run's answers.
    pub histogram: [usize; 6],
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Requests that needed a retry.
    pub retried: usize,
}

/// Answers already in `out` under `version` and `model`, by document hash. A torn last line (a
/// run killed mid-write) is ignored; any other line that is not an annotation is an error, so a
/// file that is not ours is never appended to.
fn answered(out: &Path, version: &str, model: &str) -> Result<HashSet<String>, String> {
    let all: Vec<Annotation> = phi_serve::log::read_log(out, "an annotation").map_err(|e| e.to_string())?;
    Ok(all.into_iter().filter(|a| a.prompt_version == version && a.model == model).map(|a| a.hash).collect())
}

/// Samples, asks and appends; `on_done(answers so far)` after each answer.
pub fn annotate(o: &AnnotateOptions, on_done: impl Fn(usize) + Sync) -> Result<AnnotateReport, String> {
    if o.n == 0 || o.concurrency == 0 {
        return Err("n and concurrency must be at least 1".into());
    }
    // One candidate per distinct text, in the inputs' order, then a seeded sample.
    let mut seen = HashSet::new();
    let mut docs: Vec<(&str, &str, String)> =
        o.documents.iter().map(|(origin, text)| (origin.as_str(), text.as_str(), document_hash(text))).filter(|d| seen.insert(d.2.clone())).collect();
    docs.shuffle(&mut rand::rngs::StdRng::seed_from_u64(o.seed));
    docs.truncate(o.n);
    let done = answered(&o.out, &o.prompt.version, &o.client.model)?;
    let mut report = AnnotateReport { sampled: docs.len(), ..Default::default() };
    let todo: Vec<_> = docs.into_iter().filter(|d| !done.contains(&d.2)).collect();
    report.already = report.sampled - todo.len();
    let file = Mutex::new(phi_serve::log::open_append(&o.out).map_err(|e| e.to_string())?);
    let state = Mutex::new(report);
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..o.concurrency.min(todo.len().max(1)) {
            s.spawn(|| {
                while let Some((origin, text, hash)) = todo.get(next.fetch_add(1, Ordering::SeqCst)) {
                    let cut = match text.char_indices().nth(o.max_doc_chars) {
                        Some((i, _)) => &text[..i],
                        None => text,
                    };
                    let prompt = o.prompt.render(cut);
                    let result = o.client.chat(&[("user", prompt.as_str())], 0.0, o.max_tokens, o.retries);
                    let mut r = state.lock().unwrap();
                    r.asked += 1;
                    match result {
                        Ok(reply) => {
                            let score = parse_score(&reply.text);
                            let line = Annotation { hash: hash.clone(), origin: origin.to_string(), text: cut.to_string(), score, answer: reply.text, prompt_version: o.prompt.version.clone(), model: o.client.model.clone() };
                            let mut f = file.lock().unwrap();
                            let written = writeln!(f, "{}", serde_json::to_string(&line).expect("annotation serializes")).and_then(|_| f.flush());
                            if let Err(e) = written {
                                r.failed.push((origin.to_string(), format!("{}: {e}", o.out.display())));
                                continue;
                            }
                            match score {
                                Some(n) => {
                                    r.scored += 1;
                                    r.histogram[n as usize] += 1;
                                }
                                None => r.unparsed += 1,
                            }
                            r.prompt_tokens += reply.prompt_tokens.unwrap_or(0);
                            r.completion_tokens += reply.completion_tokens.unwrap_or(0);
                            r.retried += (reply.attempts > 1) as usize;
                            on_done(r.scored + r.unparsed);
                        }
                        Err(e) => r.failed.push((origin.to_string(), e.to_string())),
                    }
                }
            });
        }
    });
    Ok(state.into_inner().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_read_from_the_last_score_line() {
        assert_eq!(parse_score("Justification... Educational score: 3"), Some(3));
        assert_eq!(parse_score("score 1 at first.\n**Educational Score:** **4**"), Some(4));
        assert_eq!(parse_score("Educational score: 7"), None);
        assert_eq!(parse_score("Educational score: 2.5"), None);
        assert_eq!(parse_score("Educational score: 3."), Some(3));
        assert_eq!(parse_score("Educational score: 3.0"), Some(3));
        assert_eq!(parse_score("I think it is good."), None);
    }

    #[test]
    fn a_user_prompt_needs_the_document_placeholder_and_is_versioned_by_its_text() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mine.txt");
        std::fs::write(&p, "Rate: {document}").unwrap();
        let t = PromptTemplate::from_file(&p).unwrap();
        assert!(t.version.starts_with("mine.txt@"));
        assert_eq!(t.render("x"), "Rate: x");
        std::fs::write(&p, "Rate this").unwrap();
        assert!(PromptTemplate::from_file(&p).unwrap_err().contains("{document}"));
    }
}
