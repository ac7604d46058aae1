//! Data files a user downloaded are untrusted: a JSONL line that is not UTF-8, a corpus that is
//! one enormous line. Each bad record is skipped and counted — never a panic or an out-of-memory
//! kill. (Hostile model files: phi-core's `tests/hostile_input.rs`.)

mod common;

use common::fixture;
use phi_data::prepare::{Input, PrepareConfig, TokenizerSource, prepare};
use serde_json::json;

#[test]
fn a_jsonl_line_that_is_not_utf8_is_skipped_and_counted_like_other_bad_records() {
    let dir = tempfile::tempdir().unwrap();
    let good = |i: usize| json!({"text": format!("{} {i}", "The quick brown fox jumps over the lazy dog. ".repeat(10 + i))}).to_string();
    let mut bytes = Vec::new();
    for i in 0..3 {
        bytes.extend(good(i).as_bytes());
        bytes.push(b'\n');
    }
    bytes.extend(b"{\"text\": \"caf\xe9 au lait\"}\r\n"); // Latin-1, line 4
    bytes.extend(b"{broken\n");
    for i in 3..6 {
        bytes.extend(good(i).as_bytes());
        bytes.extend(b"\r\n");
    }
    let path = dir.path().join("web.jsonl");
    std::fs::write(&path, bytes).unwrap();
    let mut cfg = PrepareConfig::new(
        vec![Input::Jsonl { path, field: "text".into(), kind: phi_data::filters::DocKind::Text }],
        TokenizerSource::File(fixture("tokenizers/gpt2/tokenizer.json")),
    );
    cfg.near_dedup = None; // the records are deliberately alike
    cfg.validation_fraction = 0.0;
    let m = prepare(&cfg, &dir.path().join("out"), false).unwrap();
    let read = m.report.stages.iter().find(|s| s.name == "read").unwrap();
    let utf8 = &read.dropped["not utf-8"];
    assert_eq!(utf8.documents, 1);
    assert!(utf8.examples[0].ends_with("web.jsonl:4"), "{:?}", utf8.examples);
    assert!(read.dropped["not a JSON line"].examples[0].ends_with("web.jsonl:5"));
    assert_eq!(m.splits["train"].documents, 6, "every good record is kept (CRLF lines included)");
}

#[test]
fn one_multi_megabyte_line_prepares_with_a_capped_pre_token_length() {
    let dir = tempfile::tempdir().unwrap();
    // 3 MB of letters on one line (a minified or encoded blob): to GPT-2's pre-tokenizer, one
    // "word" of 3 million bytes.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let blob: String = (0..3_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            alphabet[(x % 52) as usize] as char
        })
        .collect();
    std::fs::create_dir(dir.path().join("in")).unwrap();
    std::fs::write(dir.path().join("in/blob.txt"), &blob).unwrap();
    let mut cfg = PrepareConfig::new(
        vec![Input::Files { root: dir.path().join("in"), pattern: "*.txt".into(), exclude: vec![] }],
        TokenizerSource::Train { vocab_size: 400 },
    );
    cfg.filters = None; // `--no-filters`: the size and line-length filters would drop it
    cfg.validation_fraction = 0.0;
    let t = std::time::Instant::now();
    let out = dir.path().join("out");
    let m = prepare(&cfg, &out, false).unwrap();
    let tok = phi_data::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let ids = tok.encode(&blob);
    assert_eq!(tok.decode(&ids), blob);
    assert_eq!(m.splits["train"].tokens, ids.len() as u64 + 1, "the document and its EOS");
    // Every 256-byte piece is encoded on its own.
    let per_piece: usize = blob.as_bytes().chunks(phi_data::tokenizer::MAX_PRETOKEN_BYTES).map(|c| tok.encode(std::str::from_utf8(c).unwrap()).len()).sum();
    assert_eq!(ids.len(), per_piece);
    assert!(t.elapsed().as_secs() < 120, "took {:?}", t.elapsed());
}
