//! Append-only JSONL logs of paid-for answers (annotations, generations): read back on a rerun
//! so nothing is asked twice, appended to as answers arrive, and never written into a file that
//! is not one (a line of another kind is an error, not something to append after).

use std::fs::File;
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{Result, ServeError};

/// The records of `path` (none if it does not exist). A torn last line — a kill mid-write — is
/// skipped; any other line that is not a `T` is an error naming it and `what` the file should be.
pub fn read_log<T: DeserializeOwned>(path: &Path, what: &str) -> Result<Vec<T>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ServeError::io(path, e)),
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<T>(line) {
            Ok(r) => out.push(r),
            Err(_) if line.trim().is_empty() || (i + 1 == lines.len() && !text.ends_with('\n')) => {}
            Err(source) => return Err(ServeError::NotOurLog { path: path.to_path_buf(), line: i + 1, what: what.to_string(), source }),
        }
    }
    Ok(out)
}

/// Opens `path` for appending (creating it and its folder), first cutting a torn last line off
/// so that the next record starts on a line of its own. Call after [`read_log`] accepted it.
pub fn open_append(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| ServeError::io(dir, e))?;
    }
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| ServeError::io(path, e))?;
    let bytes = std::fs::read(path).map_err(|e| ServeError::io(path, e))?;
    if bytes.last().is_some_and(|&c| c != b'\n') {
        let keep = bytes.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
        file.set_len(keep as u64).map_err(|e| ServeError::io(path, e))?;
    }
    Ok(file)
}
