//! "Is this folder ours?" — the one rule behind every folder the framework replaces or removes
//! (prepared datasets and their `.partial` builds, checkpoints, exports).
//!
//! A folder is ours when it carries one of our marker files (a JSON file whose `format` and
//! `version` are ours) and holds nothing but entries we would have written. Anything else —
//! a user's file next to ours, a `manifest.json` of some other tool, a folder without a marker —
//! makes it someone else's, and it is neither replaced nor removed: the caller gets an error that
//! names the folder and the entry that decided it. Removal goes entry by entry over the names the
//! layout allows (never a blind `remove_dir_all`), so a file that appears in between stops it.
//!
//! ```
//! use phi_data::owned::{Layout, Marker, remove_owned};
//! static DATA: Layout = Layout {
//!     what: "an example folder",
//!     markers: &[Marker { file: "manifest.json", format: "example", version: 1 }],
//!     file: |name| name == "manifest.json" || name.ends_with(".bin"),
//!     dir: |_| None,
//! };
//! let tmp = std::env::temp_dir().join(format!("owned-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&tmp).unwrap();
//! std::fs::write(tmp.join("manifest.json"), r#"{"format": "example", "version": 1}"#).unwrap();
//! std::fs::write(tmp.join("notes.txt"), "mine").unwrap();
//! let e = remove_owned(&tmp, &DATA).unwrap_err().to_string();
//! assert!(e.contains("notes.txt") && tmp.join("notes.txt").exists());
//! std::fs::remove_file(tmp.join("notes.txt")).unwrap();
//! remove_owned(&tmp, &DATA).unwrap();
//! assert!(!tmp.exists());
//! ```

use std::path::Path;

use crate::error::DataError;

/// A marker file: JSON with `"format": format` and `"version": version`.
#[derive(Debug, Clone, Copy)]
pub struct Marker {
    pub file: &'static str,
    pub format: &'static str,
    pub version: u32,
}

/// What a folder of ours may hold.
pub struct Layout {
    /// What the folder is, for errors ("a prepared dataset").
    pub what: &'static str,
    /// One of these must be present and valid; empty: the folder needs no marker (only for
    /// folders whose names already say they are ours, such as `.tmp-step-*` build folders, and
    /// whose every entry is checked).
    pub markers: &'static [Marker],
    /// File names we write there.
    pub file: fn(&str) -> bool,
    /// Sub-folder names we write there, with their own layout.
    pub dir: fn(&str) -> Option<&'static Layout>,
}

/// What [`check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Nothing there.
    Absent,
    /// An empty folder: nothing of anyone's to lose.
    Empty,
    /// Carries our marker and only our entries.
    Ours,
}

/// Whether `dir` carries `marker` (a readable JSON file with our format and version). `Err`
/// says what is wrong with it.
pub fn read_marker(dir: &Path, marker: &Marker) -> Result<serde_json::Value, String> {
    let path = dir.join(marker.file);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: not JSON ({e})", path.display()))?;
    let (format, version) = (v.get("format").and_then(|f| f.as_str()), v.get("version").and_then(|f| f.as_u64()));
    if format != Some(marker.format) || version != Some(marker.version as u64) {
        return Err(format!(
            "{}: format {} version {}, not {} version {}",
            path.display(),
            format.map_or("(none)".into(), |f| format!("{f:?}")),
            version.map_or("(none)".into(), |v| v.to_string()),
            marker.format,
            marker.version
        ));
    }
    Ok(v)
}

/// Decides whether `dir` is ours under `layout` (see the module docs). `Err` names the folder
/// and says why not.
pub fn check(dir: &Path, layout: &Layout) -> Result<Ownership, DataError> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ownership::Absent),
        Err(e) => return Err(DataError::io(dir, e)),
    };
    let refuse = |why: String| Err(DataError::Invalid(format!("{}: {why}; it is not {}, so it is left as it is", dir.display(), layout.what)));
    if !meta.is_dir() {
        return refuse("exists and is not a folder".into());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?.collect::<Result<Vec<_>, _>>().map_err(|e| DataError::io(dir, e))?;
    if entries.is_empty() {
        return Ok(Ownership::Empty);
    }
    if !layout.markers.is_empty() {
        let results: Vec<Result<_, String>> = layout.markers.iter().map(|m| read_marker(dir, m)).collect();
        if !results.iter().any(Result::is_ok) {
            let why: Vec<String> = results.into_iter().filter_map(Result::err).collect();
            return refuse(format!("does not carry our marker ({})", why.join("; ")));
        }
    }
    for entry in entries {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return refuse(format!("holds {:?}, which we never write", entry.file_name()));
        };
        let kind = entry.file_type().map_err(|e| DataError::io(&entry.path(), e))?;
        if kind.is_file() && (layout.file)(name) {
            continue;
        }
        if kind.is_dir() {
            if let Some(sub) = (layout.dir)(name) {
                // An empty or our own sub-folder; a foreign one makes the whole folder foreign.
                check(&entry.path(), sub).map_err(|e| DataError::Invalid(format!("{}: holds {name}, which is not ours ({e})", dir.display())))?;
                continue;
            }
        }
        return refuse(format!("holds {name:?}, which we never write there (a file of yours?)"));
    }
    Ok(Ownership::Ours)
}

/// Removes `dir` if it is absent, empty or ours under `layout`; otherwise an error naming it,
/// with nothing touched. Our entries go one by one, the folder last (`remove_dir`, which fails
/// rather than take anything that appeared meanwhile).
pub fn remove_owned(dir: &Path, layout: &Layout) -> Result<(), DataError> {
    match check(dir, layout)? {
        Ownership::Absent => Ok(()),
        Ownership::Empty | Ownership::Ours => remove_entries(dir, layout),
    }
}

/// Removes what [`check`] accepted. Marker files go first, so a folder whose removal is cut
/// short no longer claims to be complete.
fn remove_entries(dir: &Path, layout: &Layout) -> Result<(), DataError> {
    for m in layout.markers {
        let path = dir.join(m.file);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DataError::io(&path, e)),
        }
    }
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        let name = entry.file_name().to_str().map(str::to_string).unwrap_or_default();
        let kind = entry.file_type().map_err(|e| DataError::io(&path, e))?;
        if kind.is_file() && (layout.file)(&name) {
            std::fs::remove_file(&path).map_err(|e| DataError::io(&path, e))?;
        } else if let (true, Some(sub)) = (kind.is_dir(), (layout.dir)(&name)) {
            remove_owned(&path, sub)?;
        } else {
            return Err(DataError::Invalid(format!("{}: {name:?} appeared while removing {}; stopped, it is left there", dir.display(), layout.what)));
        }
    }
    std::fs::remove_dir(dir).map_err(|e| DataError::io(dir, e))
}
