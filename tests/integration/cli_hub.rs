//! Models by hub id and chat templates from the command line: `HF_HOME=… HF_HUB_OFFLINE=1 phi
//! generate --model org/name` on a cache laid out as huggingface_hub lays it out gives the same
//! tokens as the folder; its errors; `phi template`; `phi chat` saying which template it uses.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::fixture;

const COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";

fn phi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_phi"))
}

/// `files` as the snapshot of `repo` at COMMIT in the hub cache `cache` (blobs, relative
/// links, `refs/main`), as huggingface_hub writes them.
fn cache_repo(cache: &Path, repo: &str, files: &[(&str, PathBuf)]) -> PathBuf {
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let snapshot = repo_dir.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    for (i, (name, src)) in files.iter().enumerate() {
        let blob = format!("{:064x}", 0xfeed_0000u64 + i as u64);
        std::fs::copy(src, repo_dir.join("blobs").join(&blob)).unwrap();
        std::os::unix::fs::symlink(Path::new("../../blobs").join(&blob), snapshot.join(name)).unwrap();
    }
    std::fs::write(repo_dir.join("refs/main"), COMMIT).unwrap();
    snapshot
}

/// phi3-tiny with the word-level tokenizer over its ids (and Phi-3.5-mini's tokenizer_config.json).
fn phi3_files() -> Vec<(&'static str, PathBuf)> {
    vec![
        ("config.json", fixture("phi3-tiny/config.json")),
        ("model.safetensors", fixture("phi3-tiny/model.safetensors")),
        ("tokenizer.json", fixture("word-tokenizer-512/tokenizer.json")),
        ("tokenizer_config.json", fixture("chat-templates/phi-3.5-mini-instruct/tokenizer_config.json")),
    ]
}

fn generate(model: &str, env: &[(&str, &Path)], cwd: Option<&Path>) -> Output {
    let mut cmd = phi();
    cmd.args(["generate", "--model", model, "--prompt-ids", "3,4,5", "--max-new-tokens", "6"]).env("HF_HUB_OFFLINE", "1").env_remove("HF_HUB_CACHE").env_remove("HF_HOME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd.output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn refused(out: &Output) -> String {
    assert!(!out.status.success(), "expected a refusal: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stderr.clone()).unwrap()
}

#[test]
fn generate_by_hub_id_equals_the_folder() {
    let home = tempfile::tempdir().unwrap();
    let snapshot = cache_repo(&home.path().join("hub"), "tiny-org/phi3-tiny", &phi3_files());
    let by_folder = ok(&generate(snapshot.to_str().unwrap(), &[], None));
    let by_id = ok(&generate("tiny-org/phi3-tiny", &[("HF_HOME", home.path())], None));
    assert_eq!(by_id, by_folder);
    assert_eq!(ok(&generate(&format!("tiny-org/phi3-tiny@{COMMIT}"), &[("HF_HOME", home.path())], None)), by_folder);
    // HF_HUB_CACHE names the cache itself and wins over HF_HOME.
    let elsewhere = tempfile::tempdir().unwrap();
    assert_eq!(ok(&generate("tiny-org/phi3-tiny", &[("HF_HUB_CACHE", &home.path().join("hub")), ("HF_HOME", elsewhere.path())], None)), by_folder);
}

#[test]
fn hub_id_errors_say_what_was_looked_for() {
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("hub");
    let snapshot = cache_repo(&cache, "tiny-org/phi3-tiny", &phi3_files());
    let env = [("HF_HOME", home.path())];
    let err = refused(&generate("tiny-org/phi3-tiny@v9", &env, None));
    assert!(err.contains("no revision `v9`") && err.contains("main"), "{err}");
    let err = refused(&generate("nobody/nothing", &env, None));
    assert!(err.contains("not in the hub cache") && err.contains(&cache.display().to_string()) && err.contains("HF_HUB_OFFLINE"), "{err}");
    // A download cut short: the weights' link is there, its blob is not.
    std::fs::remove_file(snapshot.join("model.safetensors")).unwrap();
    let err = refused(&generate("tiny-org/phi3-tiny", &env, None));
    assert!(err.contains("incomplete snapshot") && err.contains("model.safetensors is missing"), "{err}");
    // The snapshot folder gone altogether: refs/main points at nothing.
    std::fs::remove_dir_all(&snapshot).unwrap();
    let err = refused(&generate("tiny-org/phi3-tiny", &env, None));
    assert!(err.contains("no revision `main`"), "{err}");
}

#[test]
fn a_folder_that_exists_wins_over_an_id() {
    let home = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    // The cache's copy is broken; the folder `tiny-org/phi3-tiny` under the working directory is not.
    let snapshot = cache_repo(&home.path().join("hub"), "tiny-org/phi3-tiny", &phi3_files());
    std::fs::remove_file(snapshot.join("config.json")).unwrap();
    let local = cwd.path().join("tiny-org/phi3-tiny");
    std::fs::create_dir_all(&local).unwrap();
    for (name, src) in phi3_files() {
        std::fs::copy(src, local.join(name)).unwrap();
    }
    let by_folder = ok(&generate(local.to_str().unwrap(), &[], None));
    assert_eq!(ok(&generate("tiny-org/phi3-tiny", &[("HF_HOME", home.path())], Some(cwd.path()))), by_folder);
}

#[test]
fn phi_template_prints_what_transformers_renders() {
    let renderings: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("chat-templates/renderings.json")).unwrap()).unwrap();
    let home = tempfile::tempdir().unwrap();
    cache_repo(&home.path().join("hub"), "tiny-org/phi3-tiny", &phi3_files());
    let scratch = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for case in renderings["renderings"].as_array().unwrap().iter().filter(|c| c["model"] == "phi-3.5-mini-instruct") {
        let messages = scratch.path().join("messages.json");
        std::fs::write(&messages, case["messages"].to_string()).unwrap();
        let mut cmd = phi();
        cmd.args(["template", "--model", "tiny-org/phi3-tiny", "--messages"]).arg(&messages).env("HF_HOME", home.path()).env("HF_HUB_OFFLINE", "1");
        if case["add_generation_prompt"] == true {
            cmd.arg("--add-generation-prompt");
        }
        let out = cmd.output().unwrap();
        assert_eq!(ok(&out), case["text"].as_str().unwrap(), "{}", case["conversation"]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("rendered with the model's chat template (tokenizer_config.json, chat_template)"));
        checked += 1;
    }
    assert_eq!(checked, 12);
    // --template overrides; a bad messages file is named.
    let messages = scratch.path().join("messages.json");
    std::fs::write(&messages, r#"[{"role": "user", "content": "hi"}]"#).unwrap();
    let out = phi().args(["template", "--template", "plain", "--add-generation-prompt", "--model"]).arg(fixture("phi3-tiny")).arg("--messages").arg(&messages).output().unwrap();
    assert_eq!(ok(&out), "hi");
    std::fs::write(&messages, r#"{"messages": "hi"}"#).unwrap();
    let err = refused(&phi().args(["template", "--model"]).arg(fixture("phi3-tiny")).arg("--messages").arg(&messages).output().unwrap());
    assert!(err.contains("messages.json") && err.contains("`messages` must be a list"), "{err}");
}

/// The banner of `phi chat` on `dir` with one line, `the cat`, then end of input.
fn chat_banner(dir: &Path) -> String {
    let text = ok(&crate::common::chat(dir, b"the cat\n"));
    text.lines().next().unwrap().to_string()
}

#[test]
fn chat_says_which_template_renders_it() {
    // A phi-2-like model (family `phi`) without a template: the plain format, and it says so.
    let plain = tempfile::tempdir().unwrap();
    for (name, src) in [("config.json", fixture("phi-tiny/config.json")), ("model.safetensors", fixture("phi-tiny/model.safetensors")), ("tokenizer.json", fixture("word-tokenizer-512/tokenizer.json"))] {
        std::fs::copy(src, plain.path().join(name)).unwrap();
    }
    let banner = chat_banner(plain.path());
    assert!(banner.contains("plain format") && banner.contains("no chat template"), "{banner}");
    // A Phi-3 model with Phi-4-mini's template in its tokenizer_config.json: that one.
    let own = tempfile::tempdir().unwrap();
    for (name, src) in [("config.json", fixture("phi3-tiny/config.json")), ("model.safetensors", fixture("phi3-tiny/model.safetensors")), ("tokenizer.json", fixture("word-tokenizer-512/tokenizer.json")), ("tokenizer_config.json", fixture("chat-templates/phi-4-mini-instruct/tokenizer_config.json"))] {
        std::fs::copy(src, own.path().join(name)).unwrap();
    }
    let banner = chat_banner(own.path());
    assert!(banner.contains("the model's chat template (tokenizer_config.json"), "{banner}");
}

/// A hub on loopback serving `files` of `repo` at COMMIT as the hub's API answers hf-hub: the
/// revision's file listing (`/api/models/{repo}/revision/{rev}`), and each file
/// (`/{repo}/resolve/{rev}/{file}`) by byte range with its commit and etag headers. Returns the
/// endpoint and the files asked for, in order.
fn mock_hub(repo: &'static str, files: Vec<(&'static str, Vec<u8>)>) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::extract::Path as UrlPath;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    use std::sync::{Arc, Mutex};
    let files = Arc::new(files);
    let asked = Arc::new(Mutex::new(Vec::new()));
    let listing = files.clone();
    let served = files.clone();
    let log = asked.clone();
    let app = axum::Router::new()
        .route(
            "/api/models/{org}/{name}/revision/{rev}",
            axum::routing::get(move |UrlPath((org, name, _rev)): UrlPath<(String, String, String)>| async move {
                if format!("{org}/{name}") != repo {
                    return StatusCode::NOT_FOUND.into_response();
                }
                let siblings: Vec<serde_json::Value> = listing.iter().map(|(n, _)| serde_json::json!({ "rfilename": n })).collect();
                axum::Json(serde_json::json!({ "id": repo, "sha": COMMIT, "siblings": siblings })).into_response()
            }),
        )
        .route(
            "/{org}/{name}/resolve/{rev}/{*file}",
            axum::routing::get(move |UrlPath((org, name, rev, file)): UrlPath<(String, String, String, String)>, headers: HeaderMap| async move {
                let Some((_, data)) = served.iter().find(|(n, _)| *n == file) else { return StatusCode::NOT_FOUND.into_response() };
                if format!("{org}/{name}") != repo || rev != COMMIT {
                    return StatusCode::NOT_FOUND.into_response();
                }
                log.lock().unwrap().push(file.clone());
                let len = data.len();
                let range = headers.get(header::RANGE).and_then(|r| r.to_str().ok()).and_then(|r| r.strip_prefix("bytes=")).unwrap_or("0-").to_string();
                let (a, b) = range.split_once('-').unwrap();
                let start: usize = a.parse().unwrap();
                let end: usize = if b.is_empty() { len - 1 } else { b.parse::<usize>().unwrap().min(len - 1) };
                let etag = format!("\"{:016x}{:048x}\"", len, file.len());
                (
                    StatusCode::PARTIAL_CONTENT,
                    [("x-repo-commit", COMMIT.to_string()), ("etag", etag), (header::CONTENT_RANGE.as_str(), format!("bytes {start}-{end}/{len}"))],
                    data[start..=end].to_vec(),
                )
                    .into_response()
            }),
        );
    let base = crate::common::serving::spawn(app);
    (base.trim_end_matches("/v1").to_string(), asked)
}

#[test]
fn a_model_not_in_the_cache_is_downloaded_into_it_in_the_hubs_layout() {
    let mut files: Vec<(&'static str, Vec<u8>)> = phi3_files().into_iter().map(|(n, p)| (n, std::fs::read(p).unwrap())).collect();
    // What a model folder does not need is left on the hub.
    files.push(("pytorch_model.bin", b"not wanted".to_vec()));
    files.push(("onnx/model.onnx", b"not wanted".to_vec()));
    let (endpoint, asked) = mock_hub("tiny-org/phi3-tiny", files);
    let home = tempfile::tempdir().unwrap();
    let folder = tempfile::tempdir().unwrap();
    for (name, src) in phi3_files() {
        std::fs::copy(src, folder.path().join(name)).unwrap();
    }
    let by_folder = ok(&generate(folder.path().to_str().unwrap(), &[], None));

    let mut cmd = phi();
    cmd.args(["generate", "--model", "tiny-org/phi3-tiny", "--prompt-ids", "3,4,5", "--max-new-tokens", "6"]).env("HF_HOME", home.path()).env("HF_ENDPOINT", &endpoint);
    cmd.env_remove("HF_HUB_OFFLINE").env_remove("TRANSFORMERS_OFFLINE").env_remove("HF_HUB_CACHE").env_remove("HF_TOKEN");
    assert_eq!(ok(&cmd.output().unwrap()), by_folder);
    let mut got = asked.lock().unwrap().clone();
    got.sort();
    got.dedup();
    assert_eq!(got, ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);

    // The hub's layout: refs/main names the commit, the snapshot links into blobs.
    let repo_dir = home.path().join("hub/models--tiny-org--phi3-tiny");
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), COMMIT);
    assert!(!repo_dir.join("refs").join(COMMIT).exists(), "no ref named by a commit");
    let config = repo_dir.join("snapshots").join(COMMIT).join("config.json");
    assert!(std::fs::symlink_metadata(&config).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&config).unwrap(), std::fs::read(fixture("phi3-tiny/config.json")).unwrap());

    // Offline now, from the cache alone; and nothing is fetched again online.
    let before = asked.lock().unwrap().len();
    assert_eq!(ok(&generate("tiny-org/phi3-tiny", &[("HF_HOME", home.path())], None)), by_folder);
    let mut again = phi();
    again.args(["generate", "--model", "tiny-org/phi3-tiny", "--prompt-ids", "3,4,5", "--max-new-tokens", "6"]).env("HF_HOME", home.path()).env("HF_ENDPOINT", &endpoint).env_remove("HF_HUB_OFFLINE");
    assert_eq!(ok(&again.output().unwrap()), by_folder);
    assert_eq!(asked.lock().unwrap().len(), before);

    // A repository the hub does not have: the error names the endpoint.
    let mut missing = phi();
    missing.args(["generate", "--model", "nobody/nothing", "--prompt-ids", "1"]).env("HF_HOME", home.path()).env("HF_ENDPOINT", &endpoint).env_remove("HF_HUB_OFFLINE");
    let err = refused(&missing.output().unwrap());
    assert!(err.contains(&endpoint) && err.contains("`nobody/nothing`"), "{err}");
}

#[test]
fn an_export_keeps_the_models_chat_template() {
    let model = tempfile::tempdir().unwrap();
    for (name, src) in phi3_files() {
        std::fs::copy(src, model.path().join(name)).unwrap();
    }
    std::fs::write(model.path().join("chat_template.jinja"), "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}").unwrap();
    let out = tempfile::tempdir().unwrap();
    let exported = out.path().join("export");
    ok(&phi().args(["export", "--model"]).arg(model.path()).arg("--out").arg(&exported).output().unwrap());
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
        assert_eq!(std::fs::read(exported.join(f)).unwrap(), std::fs::read(model.path().join(f)).unwrap(), "{f}");
    }
    let messages = out.path().join("m.json");
    std::fs::write(&messages, r#"[{"role": "user", "content": "hi"}]"#).unwrap();
    let rendered = phi().args(["template", "--model"]).arg(&exported).arg("--messages").arg(&messages).output().unwrap();
    assert_eq!(ok(&rendered), "[user] hi\n");
}
