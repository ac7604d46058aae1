//! Where documents come from: files matched by a glob (one document per file), JSONL files with
//! a text field (one document per line, optionally gzipped), or Parquet files with a text column
//! (one document per row: the hub's dataset shards). Read in chunks of bounded size — a Parquet
//! file a row group at a time — so a corpus of any size streams through the pipeline.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::report::RepeatedFolders;
use crate::error::DataError;
use crate::filters::DocKind;

/// One input of `phi data prepare`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Input {
    /// Files under `root` matching `pattern` (e.g. `**/*.py`), minus those matching any of
    /// `exclude` (e.g. `**/test/**`), both relative to `root`. `.py` files are Python, others text.
    Files { root: PathBuf, pattern: String, #[serde(default)] exclude: Vec<String> },
    /// These files, one document each (e.g. a subset chosen by a script).
    List { files: Vec<PathBuf> },
    /// A JSONL file (or `.jsonl.gz`) whose records hold the document in `field`.
    Jsonl { path: PathBuf, field: String, kind: DocKind },
    /// Parquet files under `root` matching `pattern` (e.g. `data/**/*.parquet`; `root` may be
    /// one file, then `pattern` is ignored), one document per row: the string column `field`.
    /// `path_field`, a string column such as The Stack's `max_stars_repo_path`, names each
    /// document in the report's examples (else `file:row N`).
    Parquet {
        root: PathBuf,
        pattern: String,
        field: String,
        kind: DocKind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path_field: Option<String>,
    },
}

impl Input {
    /// The Parquet files a shell glob names (`DIR/**/*.parquet`, `data/train-*.parquet`, or one
    /// file or folder: every `.parquet` under it): the folder before the first wildcard and the
    /// pattern after it.
    pub fn parquet(glob: &str, field: &str, kind: DocKind, path_field: Option<&str>) -> Input {
        let path = Path::new(glob);
        let wild = |c: &std::path::Component| c.as_os_str().to_string_lossy().contains(['*', '?', '[']);
        let (root, pattern) = match path.components().position(|c| wild(&c)) {
            Some(i) => {
                let root: PathBuf = path.components().take(i).collect();
                let pattern: PathBuf = path.components().skip(i).collect();
                (if root.as_os_str().is_empty() { PathBuf::from(".") } else { root }, pattern.to_string_lossy().into_owned())
            }
            None if path.is_dir() => (path.to_path_buf(), "**/*.parquet".to_string()),
            None => (path.to_path_buf(), String::new()),
        };
        Input::Parquet { root, pattern, field: field.to_string(), kind, path_field: path_field.map(str::to_string) }
    }

    /// The Parquet files of split `split` in a folder laid out as the hub lays out a dataset
    /// repository, in the first of its layouts the folder has: `data/{split}-00000-of-00004.parquet`
    /// (what `push_to_hub` writes), `{config}/{split}/0000.parquet` (the hub's Parquet
    /// conversion), `data/{split}/….parquet`, `{split}-….parquet` or `{split}.parquet`. An error
    /// names the split and the splits the folder has.
    pub fn hub_split(root: &Path, split: &str, field: &str, kind: DocKind, path_field: Option<&str>) -> Result<Input, DataError> {
        if !root.is_dir() {
            return Err(DataError::Invalid(format!("{}: not a folder", root.display())));
        }
        if split.is_empty() || split.contains(['/', '\\', '*', '?', '[']) {
            return Err(DataError::Invalid(format!("split {split:?}: expected a split name such as train or validation")));
        }
        let layouts = [format!("data/{split}-*.parquet"), format!("*/{split}/*.parquet"), format!("data/{split}/*.parquet"), format!("{split}-*.parquet"), format!("{split}.parquet")];
        for pattern in layouts {
            if !walk(root, &pattern, &[], &mut RepeatedFolders::default())?.is_empty() {
                return Ok(Input::Parquet { root: root.to_path_buf(), pattern, field: field.to_string(), kind, path_field: path_field.map(str::to_string) });
            }
        }
        // The splits it has, as those layouts name them.
        let mut found = std::collections::BTreeSet::new();
        for p in walk(root, "**/*.parquet", &[], &mut RepeatedFolders::default())? {
            let rel = p.strip_prefix(root).unwrap_or(&p);
            let parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
            let name = parts.last().cloned().unwrap_or_default();
            let stem = name.trim_end_matches(".parquet");
            found.insert(if parts.len() >= 3 { parts[parts.len() - 2].clone() } else { stem.split('-').next().unwrap_or(stem).to_string() });
        }
        let has = if found.is_empty() { "no .parquet files".to_string() } else { format!("the splits {}", found.into_iter().collect::<Vec<_>>().join(", ")) };
        Err(DataError::Invalid(format!("{}: no Parquet files of split `{split}` in the hub's layouts (data/{split}-*.parquet, CONFIG/{split}/*.parquet, …); it has {has}", root.display())))
    }
}

/// A file to read, with how to read it.
#[derive(Debug, Clone)]
pub(crate) struct SourceFile {
    pub path: PathBuf,
    pub bytes: u64,
    pub modified: u64,
    pub format: Format,
}

#[derive(Debug, Clone)]
pub(crate) enum Format {
    Whole(DocKind),
    Jsonl { field: String, kind: DocKind },
    Parquet { field: String, kind: DocKind, path_field: Option<String> },
}

/// A document read from the input, or the reason it could not be.
pub(crate) struct Doc {
    /// `path` or `path:line`, for the report's examples.
    pub origin: String,
    pub kind: DocKind,
    pub text: Result<String, &'static str>,
    pub bytes: u64,
    /// A JSONL record's numeric `score` (a classifier's, kept by an earlier `prepare`).
    pub score: Option<f32>,
}

fn metadata(path: &Path) -> Result<(u64, u64), DataError> {
    let m = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    let modified = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
    Ok((m.len(), modified))
}

/// Every file the inputs name, in a reproducible order.
pub(crate) fn list_sources(inputs: &[Input]) -> Result<Vec<SourceFile>, DataError> {
    Ok(list_sources_walked(inputs)?.0)
}

/// [`list_sources`], with the folders the walk reached more than once.
pub(crate) fn list_sources_walked(inputs: &[Input]) -> Result<(Vec<SourceFile>, RepeatedFolders), DataError> {
    let mut out = Vec::new();
    let mut repeats = RepeatedFolders::default();
    for input in inputs {
        match input {
            Input::Files { root, pattern, exclude } => {
                if !root.is_dir() {
                    return Err(DataError::Invalid(format!("{}: not a folder", root.display())));
                }
                let bad = |p: &str, e: &dyn std::fmt::Display| DataError::Invalid(format!("glob pattern {p:?}: {e}"));
                let exclude = exclude.iter().map(|p| glob::Pattern::new(p).map_err(|e| bad(p, &e))).collect::<Result<Vec<_>, _>>()?;
                let mut paths = walk(root, pattern, &exclude, &mut repeats)?;
                paths.sort();
                for path in paths {
                    let (bytes, modified) = metadata(&path)?;
                    let format = Format::Whole(DocKind::from_path(&path));
                    out.push(SourceFile { path, bytes, modified, format });
                }
            }
            Input::List { files } => {
                for path in files {
                    let (bytes, modified) = metadata(path)?;
                    out.push(SourceFile { path: path.clone(), bytes, modified, format: Format::Whole(DocKind::from_path(path)) });
                }
            }
            Input::Jsonl { path, field, kind } => {
                let (bytes, modified) = metadata(path)?;
                out.push(SourceFile { path: path.clone(), bytes, modified, format: Format::Jsonl { field: field.clone(), kind: *kind } });
            }
            Input::Parquet { root, pattern, field, kind, path_field } => {
                let mut paths = if root.is_file() {
                    vec![root.clone()]
                } else if root.is_dir() {
                    walk(root, pattern, &[], &mut repeats)?
                } else {
                    return Err(DataError::Invalid(format!("{}: no such file or folder (the Parquet input)", root.display())));
                };
                if paths.is_empty() {
                    return Err(DataError::Invalid(format!("{}: no file matches {pattern:?} (the Parquet input)", root.display())));
                }
                paths.sort();
                for path in paths {
                    let (bytes, modified) = metadata(&path)?;
                    let format = Format::Parquet { field: field.clone(), kind: *kind, path_field: path_field.clone() };
                    out.push(SourceFile { path, bytes, modified, format });
                }
            }
        }
    }
    Ok((out, repeats))
}

/// The files under `root` whose path relative to it matches `pattern` and none of `exclude`.
/// Symlinks are followed (a corpus assembled from links is normal), but each folder is walked
/// once: a link back up the tree (`ln -s .. in/sub/up`) would otherwise make the walk endless,
/// its memory growing with every round. Real folders are walked before linked ones, so a
/// folder reached both ways is listed under its own path; each repeat is counted in `repeats`.
/// Unreadable sub-folders and dangling links are passed over, as a shell glob does.
fn walk(root: &Path, pattern: &str, exclude: &[glob::Pattern], repeats: &mut RepeatedFolders) -> Result<Vec<PathBuf>, DataError> {
    let bad = |why: &str| DataError::Invalid(format!("glob pattern {pattern:?}: {why}"));
    let relative = pattern.strip_prefix("./").unwrap_or(pattern);
    if Path::new(relative).is_absolute() || Path::new(relative).components().any(|c| c == std::path::Component::ParentDir) {
        return Err(bad("must name files inside the input folder (no absolute path, no `..`)"));
    }
    let matcher = glob::Pattern::new(relative).map_err(|e| bad(&e.to_string()))?;
    // As in a shell, `*` stays within one path component; `**` crosses folders.
    let options = glob::MatchOptions { case_sensitive: true, require_literal_separator: true, require_literal_leading_dot: false };
    // Without `**`, matches lie at the pattern's own depth: nothing deeper needs reading.
    let max_depth = if relative.contains("**") { usize::MAX } else { Path::new(relative).components().count().saturating_sub(1) };

    let mut seen = std::collections::HashSet::new();
    // (path, path relative to root, depth); real folders first, linked ones after them.
    let mut real = std::collections::VecDeque::from([(root.to_path_buf(), PathBuf::new(), 0usize)]);
    let mut linked = std::collections::VecDeque::new();
    let mut files = Vec::new();
    while let Some((dir, rel, depth)) = real.pop_front().or_else(|| linked.pop_front()) {
        let Ok(meta) = std::fs::metadata(&dir) else { continue };
        if !seen.insert(crate::corpus::folder_id(&dir, &meta)) {
            repeats.add(&dir);
            continue;
        }
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if depth == 0 => return Err(DataError::io(&dir, e)),
            Err(_) => continue,
        };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = rel.join(e.file_name());
            let is_link = e.file_type().is_ok_and(|t| t.is_symlink());
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if meta.is_dir() {
                if depth < max_depth {
                    (if is_link { &mut linked } else { &mut real }).push_back((path, rel, depth + 1));
                }
            } else if meta.is_file() && matcher.matches_path_with(&rel, options) && !exclude.iter().any(|x| x.matches_path(&rel)) {
                files.push(path);
            }
        }
    }
    Ok(files)
}

/// Reads `sources` in chunks of about `chunk_bytes`, calling `f` on each chunk in order.
pub(crate) fn for_each_chunk(
    sources: &[SourceFile],
    chunk_bytes: u64,
    mut f: impl FnMut(Vec<Doc>) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let mut pending: Vec<&SourceFile> = Vec::new();
    let mut pending_bytes = 0;
    let flush = |pending: &mut Vec<&SourceFile>, f: &mut dyn FnMut(Vec<Doc>) -> Result<(), DataError>| {
        let docs: Vec<Doc> = pending.par_iter().map(|s| read_whole(s)).collect();
        pending.clear();
        f(docs)
    };
    for source in sources {
        match &source.format {
            Format::Whole(_) => {
                pending.push(source);
                pending_bytes += source.bytes;
                if pending_bytes >= chunk_bytes {
                    flush(&mut pending, &mut f)?;
                    pending_bytes = 0;
                }
            }
            Format::Jsonl { field, kind } => {
                if !pending.is_empty() {
                    flush(&mut pending, &mut f)?;
                    pending_bytes = 0;
                }
                read_jsonl(source, field, *kind, chunk_bytes, &mut f)?;
            }
            Format::Parquet { field, kind, path_field } => {
                if !pending.is_empty() {
                    flush(&mut pending, &mut f)?;
                    pending_bytes = 0;
                }
                read_parquet(&source.path, field, path_field.as_deref(), *kind, &mut f)?;
            }
        }
    }
    if !pending.is_empty() {
        flush(&mut pending, &mut f)?;
    }
    Ok(())
}

fn read_whole(source: &SourceFile) -> Doc {
    let Format::Whole(kind) = source.format else { unreachable!("only whole files are read here") };
    let origin = source.path.display().to_string();
    match std::fs::read(&source.path) {
        Ok(bytes) => {
            let n = bytes.len() as u64;
            Doc { origin, kind, text: String::from_utf8(bytes).map_err(|_| "not utf-8"), bytes: n, score: None }
        }
        Err(_) => Doc { origin, kind, text: Err("unreadable"), bytes: source.bytes, score: None },
    }
}

fn read_jsonl(
    source: &SourceFile,
    field: &str,
    kind: DocKind,
    chunk_bytes: u64,
    f: &mut dyn FnMut(Vec<Doc>) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let path = &source.path;
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader: Box<dyn Read> =
        if path.extension().is_some_and(|e| e == "gz") { Box::new(flate2::read::GzDecoder::new(file)) } else { Box::new(file) };
    // Lines as bytes: one line that is not UTF-8 is a bad record, skipped and counted like a
    // malformed one (`lines()` would fail the whole file on it).
    let mut lines = BufReader::with_capacity(1 << 20, reader).split(b'\n').enumerate();
    loop {
        let mut raw: Vec<(usize, Vec<u8>)> = Vec::new();
        let mut bytes = 0u64;
        for (i, line) in lines.by_ref() {
            let mut line = line.map_err(|e| DataError::Invalid(format!("{} line {}: {e}", path.display(), i + 1)))?;
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            bytes += line.len() as u64;
            raw.push((i + 1, line));
            if bytes >= chunk_bytes {
                break;
            }
        }
        if raw.is_empty() {
            return Ok(());
        }
        let docs = raw
            .into_par_iter()
            .map(|(line_no, line)| {
                let origin = format!("{}:{line_no}", path.display());
                let n = line.len() as u64;
                let mut score = None;
                let text = match String::from_utf8(line) {
                    Err(_) => Err("not utf-8"),
                    Ok(line) => match serde_json::from_str::<serde_json::Value>(&line) {
                        Ok(v) => {
                            score = v.get("score").and_then(serde_json::Value::as_f64).map(|s| s as f32);
                            v.get(field).and_then(|t| t.as_str()).map(str::to_owned).ok_or("record without the text field")
                        }
                        Err(_) => Err("not a JSON line"),
                    },
                };
                Doc { origin, kind, text, bytes: n, score }
            })
            .collect();
        f(docs)?;
    }
}

/// A Parquet file's rows as documents, one chunk per row group: the text from column `field`
/// (a null or a value that is not UTF-8 is a dropped document with its reason), named by the
/// row's `path_field` value where given, else `file:row N` (1-based, as JSONL's lines).
fn read_parquet(path: &Path, field: &str, path_field: Option<&str>, kind: DocKind, f: &mut dyn FnMut(Vec<Doc>) -> Result<(), DataError>) -> Result<(), DataError> {
    let columns: Vec<&str> = std::iter::once(field).chain(path_field).collect();
    crate::parquet::for_each_row_group(path, &columns, |first_row, mut values| {
        let names = if values.len() > 1 { values.pop() } else { None };
        let texts = values.pop().expect("the text column");
        let docs = texts
            .into_par_iter()
            .enumerate()
            .map(|(i, value)| {
                let named = names.as_ref().and_then(|n| n[i].as_deref()).map(|n| String::from_utf8_lossy(n).into_owned());
                let origin = named.unwrap_or_else(|| format!("{}:row {}", path.display(), first_row + i as u64 + 1));
                let bytes = value.as_ref().map_or(0, |v| v.len() as u64);
                let text = match value {
                    None => Err("null text"),
                    Some(v) => String::from_utf8(v).map_err(|_| "not utf-8"),
                };
                Doc { origin, kind, text, bytes, score: None }
            })
            .collect();
        f(docs)
    })
}
