//! `phi data synth`'s engine against a scripted teacher: resumable generation, and verification
//! that drops a wrong reference solution, a copy of a HumanEval solution and duplicates.

use crate::common::serving;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use phi::sandbox::{Limits, Sandbox};
use phi::serve::client::Client;
use phi::synth::{GenerateOptions, Generation, Lists, SynthKind, generate, prompts, verify};

const HUMANEVAL_0: &str = "    for idx, elem in enumerate(numbers):\n        for idx2, elem2 in enumerate(numbers):\n            if idx != idx2:\n                distance = abs(elem - elem2)\n                if distance < threshold:\n                    return True\n";

/// An exercise for `name`: its docstring and tests drawn from the name's hash (so different
/// names give dissimilar texts); `count_*` solutions are wrong, `find_*` ones carry a HumanEval
/// solution's loop.
fn exercise(name: &str) -> String {
    let mut x = xxhash_rust::xxh3::xxh3_64(name.as_bytes());
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % 1000
    };
    let words: Vec<String> = (0..20).map(|_| format!("w{}", next())).collect();
    let lists: Vec<Vec<u64>> = (0..4).map(|i| (0..i + 1).map(|_| next()).collect()).collect();
    let body = if name.starts_with("count_") { "    return len(xs) + 1\n".to_string() } else { "    return len(xs)\n".to_string() };
    let extra = if name.starts_with("find_") { format!("    numbers, threshold = xs, 0\n    if False:\n{}", HUMANEVAL_0.lines().map(|l| format!("    {l}\n")).collect::<String>()) } else { String::new() };
    let tests: String = lists.iter().map(|l| format!("    assert candidate({l:?}) == {}\n", l.len())).collect();
    format!("```python\ndef {name}(xs: list) -> int:\n    \"\"\"Return how many: {}.\"\"\"\n{extra}{body}\n\ndef check(candidate):\n{tests}```\n", words.join(" "))
}

fn teacher() -> (String, Arc<AtomicUsize>) {
    serving::scripted((20, 50), |_, prompt| {
        Ok(match prompt.split("a function `").nth(1).and_then(|r| r.split('`').next()) {
            Some(name) => exercise(name),
            None if prompt.contains("beginner") => "Too short.".to_string(),
            // Distinct material for each prompt (words drawn from its hash).
            None => format!("# A section\n\n{}\n", exercise(prompt).split_whitespace().filter(|w| w.starts_with('w')).collect::<Vec<_>>().join(" ").repeat(3)),
        })
    })
}

#[test]
fn generation_resumes_and_verification_keeps_only_passing_unique_clean_exercises() {
    let (url, hits) = teacher();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("generations.jsonl");
    let lists = Lists::builtin();
    let opts = |n: usize| GenerateOptions {
        prompts: prompts(&lists, SynthKind::Exercise, n, 3),
        client: Client::new(&url, "teacher", None),
        temperature: 0.8,
        max_tokens: 512,
        concurrency: 3,
        retries: 1,
        out: out.clone(),
    };
    let r = generate(&opts(30), |_| {}).unwrap();
    assert_eq!((r.prompts, r.already, r.asked, r.failed.len(), r.prompt_tokens, r.completion_tokens), (30, 0, 30, 0, 600, 1500), "{r:?}");
    // A rerun asks for nothing; a larger one only for the new prompts.
    assert_eq!(generate(&opts(30), |_| {}).unwrap().asked, 0);
    let r = generate(&opts(40), |_| {}).unwrap();
    assert_eq!((r.already, r.asked), (30, 10));
    assert_eq!(hits.load(Ordering::SeqCst), 40);
    let gens: Vec<Generation> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(gens.len(), 40);

    let sandbox = Sandbox::new(Limits::default()).expect("this machine must be able to isolate (Landlock, user namespaces)");
    let (kept, report) = verify(&gens, &lists, &sandbox, 2, 200).unwrap();
    // What the teacher's answers say should happen, in order.
    let mut seen = std::collections::HashSet::new();
    let (mut wrong, mut dup, mut contaminated, mut good) = (0, 0, 0, 0);
    for g in &gens {
        let name = g.prompt.function.clone().unwrap();
        if name.starts_with("count_") {
            wrong += 1;
        } else if !seen.insert(name.clone()) {
            dup += 1;
        } else if name.starts_with("find_") {
            contaminated += 1;
        } else {
            good += 1;
        }
    }
    assert!(wrong > 0 && contaminated > 0, "the seed should draw some of each: {wrong} {contaminated}");
    let dropped = |why: &str| report.dropped.get(why).copied().unwrap_or(0);
    assert_eq!(dropped("the solution fails its own tests"), wrong, "{report:?}");
    assert_eq!(dropped("near duplicate"), dup, "{report:?}");
    assert_eq!(dropped("shares a 13-gram with HumanEval"), contaminated, "{report:?}");
    assert_eq!((kept.len(), report.kept), (good, good));
    assert!(kept.iter().all(|k| k.kind == SynthKind::Exercise && k.text.starts_with("def ") && k.tests.as_deref().unwrap().starts_with("def check(")));
    assert!(report.distinct_4grams > 0.5 && report.topic_audience_covered > 5 && report.topic_audience_total == 41 * 3, "{report:?}");
    // A solution that ends the program, status 0, before its tests have returned is not verified.
    let mut early = gens.iter().find(|g| g.prompt.id == kept[0].id).unwrap().clone();
    early.text = early.text.replace("    return len(xs)\n", "    import os\n    os._exit(0)\n");
    let (none, report) = verify(&[early], &lists, &sandbox, 1, 200).unwrap();
    assert!(none.is_empty() && report.dropped.get("the solution fails its own tests") == Some(&1), "{report:?}");

    // Textbook material: too-short answers are dropped.
    let tb = dir.path().join("textbook.jsonl");
    let o = GenerateOptions { prompts: prompts(&lists, SynthKind::Textbook, 12, 1), out: tb.clone(), ..opts(0) };
    generate(&o, |_| {}).unwrap();
    let gens: Vec<Generation> = std::fs::read_to_string(&tb).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let beginners = gens.iter().filter(|g| g.prompt.audience.contains("beginner")).count();
    let (kept, report) = verify(&gens, &lists, &sandbox, 2, 200).unwrap();
    assert_eq!(report.dropped.get("too short").copied().unwrap_or(0), beginners);
    assert_eq!(kept.len() + beginners, 12, "{report:?}");

    // A file that is not a generations log is never appended to.
    std::fs::write(&tb, "{\"something\": \"else\"}\n").unwrap();
    let e = generate(&o, |_| {}).unwrap_err();
    assert!(e.contains("line 1 is not a generation"), "{e}");
}
