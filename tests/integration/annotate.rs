//! `phi data annotate`'s engine against a scripted OpenAI-compatible endpoint (scores by
//! content, one 500 to retry) and against `phi serve` itself.

use crate::common::serving;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use phi::annotate::{AnnotateOptions, Annotation, PromptTemplate, annotate};
use phi::serve::client::Client;


/// A judge that answers 500 to its first request, then scores by what the document says.
fn judge() -> (String, Arc<AtomicUsize>) {
    serving::scripted((10, 5), |n, prompt| match n {
        0 => Err(500),
        _ if prompt.contains("good") => Ok("Clear and well commented.\nEducational score: 4".into()),
        _ if prompt.contains("bad") => Ok("Boilerplate. Educational score: 1".into()),
        _ => Ok("I cannot tell.".into()),
    })
}

fn docs() -> Vec<(String, String)> {
    let kinds = ["good", "bad", "weird"];
    (0..12).map(|i| (format!("doc{i}.py"), format!("def f{i}(): pass  # {}", kinds[i % 3]))).collect()
}

fn lines(path: &std::path::Path) -> Vec<Annotation> {
    std::fs::read_to_string(path).unwrap().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[test]
fn answers_are_appended_scored_and_never_asked_twice() {
    let (url, hits) = judge();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("annotations.jsonl");
    let mut client = Client::new(&url, "judge", None);
    client.backoff = std::time::Duration::from_millis(5);
    let opts = AnnotateOptions { n: 6, seed: 1, concurrency: 3, retries: 2, ..AnnotateOptions::new(docs(), client.clone(), PromptTemplate::builtin(), out.clone()) };
    let r = annotate(&opts, |_| {}).unwrap();
    assert_eq!((r.sampled, r.already, r.asked, r.failed.len(), r.retried), (6, 0, 6, 0, 1), "{r:?}");
    assert_eq!(r.scored + r.unparsed, 6);
    let got = lines(&out);
    assert_eq!(got.len(), 6);
    for a in &got {
        let want = if a.origin.ends_with(".py") && docs().iter().find(|d| d.0 == a.origin).unwrap().1.contains("good") {
            Some(4)
        } else if docs().iter().find(|d| d.0 == a.origin).unwrap().1.contains("bad") {
            Some(1)
        } else {
            None
        };
        assert_eq!(a.score, want, "{a:?}");
        assert_eq!(a.text, docs().iter().find(|d| d.0 == a.origin).unwrap().1);
        assert_eq!(a.prompt_version, "edu-code-v1");
    }
    assert_eq!(r.histogram[4] + r.histogram[1], r.scored);
    assert_eq!(r.prompt_tokens, 60);

    // A rerun asks nothing; a kill mid-write left a torn line, which is skipped.
    std::fs::OpenOptions::new().append(true).open(&out).unwrap().write_all_torn();
    let before = hits.load(Ordering::SeqCst);
    let again = annotate(&opts, |_| {}).unwrap();
    assert_eq!((again.already, again.asked), (6, 0));
    assert_eq!(hits.load(Ordering::SeqCst), before);
    // A larger sample asks only for the new documents (the same seed draws the same first 6).
    let more = AnnotateOptions { n: 12, ..opts };
    let r = annotate(&more, |_| {}).unwrap();
    assert_eq!((r.already, r.asked), (6, 6), "{r:?}");
    assert_eq!(lines(&out).len(), 12);
    // A file that is not ours is not appended to.
    let foreign = dir.path().join("notes.jsonl");
    std::fs::write(&foreign, "my notes\nmore notes\n").unwrap();
    let err = annotate(&AnnotateOptions { out: foreign.clone(), ..AnnotateOptions::new(docs(), client, PromptTemplate::builtin(), foreign.clone()) }, |_| {}).unwrap_err();
    assert!(err.contains("not an annotation"), "{err}");
    assert_eq!(std::fs::read_to_string(&foreign).unwrap(), "my notes\nmore notes\n");
}

trait Torn {
    fn write_all_torn(self);
}

impl Torn for std::fs::File {
    fn write_all_torn(mut self) {
        use std::io::Write;
        self.write_all(br#"{"hash": "ab"#).unwrap();
    }
}

#[test]
fn a_failing_endpoint_is_reported_not_written_and_phi_serve_is_a_judge() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: every request fails after its retries; nothing is written.
    let mut dead = Client::new("http://127.0.0.1:9/v1", "judge", None);
    dead.backoff = std::time::Duration::from_millis(1);
    let out = dir.path().join("a.jsonl");
    let opts = AnnotateOptions { n: 2, retries: 1, ..AnnotateOptions::new(docs(), dead, PromptTemplate::builtin(), out.clone()) };
    let r = annotate(&opts, |_| {}).unwrap();
    assert_eq!((r.asked, r.failed.len()), (2, 2), "{r:?}");
    assert!(lines(&out).is_empty());

    // Our own server as the judge: its tiny random model rarely writes a score, and whatever it
    // writes is kept and counted.
    let model = serving::model_dir();
    let addr = serving::start(model.path());
    let client = Client::new(&format!("http://{addr}/v1"), "tiny", None);
    // (Its context is 128 tokens: a short prompt.)
    let short = PromptTemplate { version: "short".into(), text: "Rate this: {document}".into() };
    let opts = AnnotateOptions { n: 3, max_tokens: 8, max_doc_chars: 40, ..AnnotateOptions::new(docs(), client, short, out.clone()) };
    let r = annotate(&opts, |_| {}).unwrap();
    assert_eq!((r.asked, r.failed.len(), r.scored + r.unparsed), (3, 0, 3), "{r:?}");
    assert_eq!(lines(&out).len(), 3);
}
