//! Finding a local code corpus: the machine's Python standard library, or files under a folder.
//! (Turning it into shards is [`crate::prepare`]'s job.)

use std::path::{Path, PathBuf};
use std::process::Command;

/// The standard library folder of the machine's `python3`, if there is one.
pub fn python_stdlib_dir() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"])
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && dir.is_dir()).then_some(dir)
}

/// Files under `root` whose name ends with `suffix`, skipping folders named in `exclude`
/// (and `site-packages`), sorted so that the corpus order is reproducible.
pub fn collect_files(root: &Path, suffix: &str, exclude: &[&str]) -> Vec<PathBuf> {
    collect(root, suffix, exclude, false)
}

/// [`collect_files`], with `site-packages` (a Python installation's third-party code: real code
/// of mixed quality, vendored and generated files included).
pub fn collect_files_with_site_packages(root: &Path, suffix: &str, exclude: &[&str]) -> Vec<PathBuf> {
    collect(root, suffix, exclude, true)
}

fn collect(root: &Path, suffix: &str, exclude: &[&str], site_packages: bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    // Symlinks are followed, each folder once: a link back up the tree would loop forever.
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        match std::fs::metadata(&dir) {
            Ok(meta) if seen.insert(folder_id(&dir, &meta)) => {}
            _ => continue,
        }
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if path.is_dir() {
                if !exclude.contains(&name.as_str()) && (site_packages || name != "site-packages") && name != "__pycache__" {
                    stack.push(path);
                }
            } else if name.ends_with(suffix) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// What identifies a folder however it is reached: device and inode (the canonical path where
/// there are no inodes).
#[cfg(unix)]
pub(crate) fn folder_id(_path: &Path, meta: &std::fs::Metadata) -> (u64, u64, PathBuf) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino(), PathBuf::new())
}

#[cfg(not(unix))]
pub(crate) fn folder_id(path: &Path, _meta: &std::fs::Metadata) -> (u64, u64, PathBuf) {
    (0, 0, std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()))
}
