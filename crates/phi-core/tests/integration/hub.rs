//! Hub ids through the hub cache as huggingface_hub lays it out: `models--org--name/` with
//! `blobs/` (the files, named by their hash), `snapshots/<commit>/` (relative links into
//! blobs) and `refs/<branch or tag>` (the commit). Offline here: the network is never asked.

use std::path::{Path, PathBuf};

use phi_core::PhiForCausalLM;
use phi_core::hub::{Hub, HubError, Kind, parse_id};

use crate::common::fixture;

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// `files` of `repo` at `commit` in the hub cache `cache`, as huggingface_hub writes them (blob
/// names stand for the files' hashes), and `refs` pointing at that commit. Returns the snapshot.
pub fn cache_repo(cache: &Path, repo: &str, commit: &str, refs: &[&str], files: &[(&str, &Path)]) -> PathBuf {
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let snapshot = repo_dir.join("snapshots").join(commit);
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    for (i, (name, src)) in files.iter().enumerate() {
        let blob = format!("{:064x}", 0xb10b_0000u64 + i as u64 + commit.len() as u64 * 1000);
        std::fs::copy(src, repo_dir.join("blobs").join(&blob)).unwrap();
        std::os::unix::fs::symlink(Path::new("../../blobs").join(&blob), snapshot.join(name)).unwrap();
    }
    for r in refs {
        let file = repo_dir.join("refs").join(r);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, commit).unwrap();
    }
    snapshot
}

fn offline(cache: &Path) -> Hub {
    Hub { cache: cache.to_path_buf(), offline: true, endpoint: "http://127.0.0.1:9".into(), token: None }
}

fn tiny_files() -> Vec<(&'static str, PathBuf)> {
    vec![("config.json", fixture("phi-tiny/config.json")), ("model.safetensors", fixture("phi-tiny/model.safetensors"))]
}

fn with_refs<'a>(files: &'a [(&'static str, PathBuf)]) -> Vec<(&'static str, &'a Path)> {
    files.iter().map(|(n, p)| (*n, p.as_path())).collect()
}

#[test]
fn an_id_resolves_to_its_snapshot_and_loads_the_same_model() {
    let cache = tempfile::tempdir().unwrap();
    let files = tiny_files();
    let snapshot = cache_repo(cache.path(), "tiny-org/phi-tiny", COMMIT, &["main", "v1.0"], &with_refs(&files));
    let hub = offline(cache.path());
    assert_eq!(hub.resolve("tiny-org/phi-tiny", Kind::Model).unwrap(), snapshot);
    assert_eq!(hub.resolve("tiny-org/phi-tiny@v1.0", Kind::Model).unwrap(), snapshot);
    assert_eq!(hub.resolve(format!("tiny-org/phi-tiny@{COMMIT}"), Kind::Model).unwrap(), snapshot);
    let device = burn::tensor::Device::default();
    let ids = burn::tensor::Tensor::from_data([[1, 5, 9, 2]], &device);
    let a = PhiForCausalLM::from_pretrained(&snapshot, &device).unwrap().forward(ids.clone()).into_data();
    let b = PhiForCausalLM::from_pretrained(fixture("phi-tiny"), &device).unwrap().forward(ids).into_data();
    assert_eq!(a, b);
}

#[test]
fn a_path_that_exists_wins_and_paths_are_not_ids() {
    let hub = offline(Path::new("/nonexistent-cache"));
    let dir = fixture("phi-tiny");
    assert_eq!(hub.resolve(&dir, Kind::Model).unwrap(), dir);
    // Not id-shaped: handed back as given, for the loader's own "no such folder" error.
    for p in ["/nonexistent/model", "runs", "a/b/c", "./x/y"] {
        assert_eq!(hub.resolve(p, Kind::Model).unwrap(), PathBuf::from(p));
        assert!(parse_id(p).is_none());
    }
}

#[test]
fn offline_and_not_cached_says_where_it_looked() {
    let cache = tempfile::tempdir().unwrap();
    let err = offline(cache.path()).resolve("nobody/nothing", Kind::Model).unwrap_err();
    assert!(matches!(err, HubError::NotCached { .. }), "{err:?}");
    let text = err.to_string();
    for want in ["`nobody/nothing`", "models--nobody--nothing", "HF_HUB_OFFLINE", &cache.path().display().to_string(), "nor is there a folder `nobody/nothing`"] {
        assert!(text.contains(want), "{want}: {text}");
    }
}

#[test]
fn a_bad_revision_names_the_cached_ones() {
    let cache = tempfile::tempdir().unwrap();
    let files = tiny_files();
    cache_repo(cache.path(), "tiny-org/phi-tiny", COMMIT, &["main"], &with_refs(&files));
    let err = offline(cache.path()).resolve("tiny-org/phi-tiny@v2", Kind::Model).unwrap_err();
    assert!(matches!(err, HubError::UnknownRevision { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("no revision `v2`") && text.contains("main") && text.contains(COMMIT) && text.contains("HF_HUB_OFFLINE"), "{text}");
}

#[test]
fn a_ref_to_a_missing_snapshot_is_an_unknown_revision() {
    let cache = tempfile::tempdir().unwrap();
    let files = tiny_files();
    let snapshot = cache_repo(cache.path(), "tiny-org/phi-tiny", COMMIT, &["main"], &with_refs(&files));
    std::fs::remove_dir_all(&snapshot).unwrap();
    let err = offline(cache.path()).resolve("tiny-org/phi-tiny", Kind::Model).unwrap_err();
    assert!(matches!(err, HubError::UnknownRevision { .. }), "{err:?}");
}

#[test]
fn an_incomplete_snapshot_names_the_missing_shard() {
    let cache = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let index = scratch.path().join("index.json");
    std::fs::write(&index, r#"{"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#).unwrap();
    let config = fixture("phi-tiny/config.json");
    let shard = fixture("phi-tiny/model.safetensors");
    cache_repo(
        cache.path(),
        "tiny-org/sharded",
        COMMIT,
        &["main"],
        &[("config.json", &config), ("model.safetensors.index.json", &index), ("model-00001-of-00002.safetensors", &shard)],
    );
    let err = offline(cache.path()).resolve("tiny-org/sharded", Kind::Model).unwrap_err();
    assert!(matches!(err, HubError::Incomplete { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("incomplete snapshot of `tiny-org/sharded`") && text.contains("model-00002-of-00002.safetensors is listed in model.safetensors.index.json but has no file"), "{text}");
    assert!(!text.contains("00001-of"), "{text}");
    // An adapter needs its own two files.
    let err = offline(cache.path()).resolve("tiny-org/sharded", Kind::Adapter).unwrap_err().to_string();
    assert!(err.contains("adapter_config.json is missing") && err.contains("adapter_model.safetensors is missing"), "{err}");
}

#[test]
fn online_a_failed_download_names_the_endpoint() {
    let cache = tempfile::tempdir().unwrap();
    // Port 9 (discard) on loopback: refused at once, nothing leaves the machine.
    let hub = Hub { offline: false, ..offline(cache.path()) };
    let err = hub.resolve("nobody/nothing", Kind::Model).unwrap_err();
    assert!(matches!(err, HubError::Download { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("http://127.0.0.1:9") && text.contains("`nobody/nothing`") && text.contains("nor is there a folder"), "{text}");
}
