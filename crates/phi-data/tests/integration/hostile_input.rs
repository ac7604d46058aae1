//! Data files a user downloaded are untrusted: a JSONL line that is not UTF-8, a corpus that is
//! one enormous line. Each bad record is skipped and counted — never a panic or an out-of-memory
//! kill. (Hostile model files: phi-core's `tests/integration/hostile_input.rs`.)

use crate::common;

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
    let m = prepare(&cfg, &dir.path().join("out"), None).unwrap();
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
    let m = prepare(&cfg, &out, None).unwrap();
    let tok = phi_data::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let ids = tok.encode(&blob);
    assert_eq!(tok.decode(&ids), blob);
    assert_eq!(m.splits["train"].tokens, ids.len() as u64 + 1, "the document and its EOS");
    // Every 256-byte piece is encoded on its own.
    let per_piece: usize = blob.as_bytes().chunks(phi_data::tokenizer::MAX_PRETOKEN_BYTES).map(|c| tok.encode(std::str::from_utf8(c).unwrap()).len()).sum();
    assert_eq!(ids.len(), per_piece);
    assert!(t.elapsed().as_secs() < 120, "took {:?}", t.elapsed());
}

/// A small prepared input folder: `n` distinct text files under `in/`.
fn text_folder(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let input = dir.join("in");
    std::fs::create_dir_all(input.join("sub")).unwrap();
    for i in 0..n {
        let sub = if i % 2 == 0 { "" } else { "sub/" };
        std::fs::write(input.join(format!("{sub}doc{i}.txt")), format!("{} number {i}\n", "Some words for a document of text. ".repeat(8 + i))).unwrap();
    }
    input
}

fn files_config(input: &std::path::Path) -> PrepareConfig {
    let mut cfg = PrepareConfig::new(
        vec![Input::Files { root: input.to_path_buf(), pattern: "**/*.txt".into(), exclude: vec![] }],
        TokenizerSource::File(fixture("tokenizers/gpt2/tokenizer.json")),
    );
    cfg.filters = None;
    cfg.near_dedup = None;
    cfg.validation_fraction = 0.0;
    cfg
}

#[test]
fn a_symlink_cycle_in_the_input_is_walked_once_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let input = text_folder(dir.path(), 4);
    // `ln -s .. in/sub/up`: in/sub/up/sub/up/... without end; and a second name for in/sub.
    std::os::unix::fs::symlink("..", input.join("sub/up")).unwrap();
    std::os::unix::fs::symlink("sub", input.join("alias")).unwrap();
    let cfg = files_config(&input);
    let out = dir.path().join("out");
    // On its own thread, so that a walk that never ends fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    let (c, o) = (cfg.clone(), out.clone());
    std::thread::spawn(move || tx.send(prepare(&c, &o, None).map_err(|e| e.to_string())));
    let m = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the walk ends").unwrap();
    let read = m.report.stages.iter().find(|s| s.name == "read").unwrap();
    assert_eq!(read.documents_in, 4, "each file once, under its own path");
    let r = &m.report.repeated_folders;
    assert_eq!(r.folders, 2, "{r:?}");
    assert!(r.examples.iter().any(|e| e.ends_with("sub/up")) && r.examples.iter().any(|e| e.ends_with("alias")), "{r:?}");
    assert!(m.report.table().contains("2 folder(s) reached again through symlinks"), "{}", m.report.table());
    // A folder reached only through a link is read (once).
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("linked.txt"), "A document that lives outside the folder, linked in.\n".repeat(5)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, input.join("more")).unwrap();
    std::os::unix::fs::symlink(&input, elsewhere.join("back")).unwrap();
    let m = prepare(&cfg, &dir.path().join("out2"), None).unwrap();
    assert_eq!(m.report.stages.iter().find(|s| s.name == "read").unwrap().documents_in, 5);
    assert_eq!(m.report.repeated_folders.folders, 3, "{:?}", m.report.repeated_folders);
}

#[test]
fn a_manifest_naming_files_outside_its_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = text_folder(dir.path(), 3);
    let out = dir.path().join("data");
    prepare(&files_config(&input), &out, None).unwrap();
    let original = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    phi_data::Manifest::read(&out).unwrap();
    for (edit, key) in [
        (&(|m: &mut serde_json::Value| m["splits"]["train"]["shards"][0]["file"] = json!("../elsewhere.bin")) as &dyn Fn(&mut serde_json::Value), "splits.train.shards[0].file"),
        (&|m: &mut serde_json::Value| m["tokenizer"]["file"] = json!("/etc/passwd"), "tokenizer.file"),
        (&|m: &mut serde_json::Value| m["tokenizer"]["file"] = json!("sub/../../x.json"), "tokenizer.file"),
    ] {
        let mut m: serde_json::Value = serde_json::from_str(&original).unwrap();
        edit(&mut m);
        std::fs::write(out.join("manifest.json"), m.to_string()).unwrap();
        let e = phi_data::Manifest::read(&out).unwrap_err().to_string();
        assert!(e.contains("manifest.json") && e.contains(key) && e.contains("leaves the dataset folder"), "{e}");
    }
}
