//! Evaluation sets to decontaminate against: HumanEval is built in (the 164 problems, MIT,
//! embedded in the binary); users add their own JSONL or text files.

use std::io::Read;
use std::path::Path;

use crate::error::DataError;

/// The bundled `HumanEval.jsonl.gz` (OpenAI, MIT licence: `data/humaneval/LICENSE`).
pub const HUMANEVAL_JSONL_GZ: &[u8] = include_bytes!("../data/humaneval/HumanEval.jsonl.gz");

/// Decompresses gzip data (by its magic bytes); other bytes pass through.
fn maybe_gunzip(bytes: Vec<u8>, what: &Path) -> Result<Vec<u8>, DataError> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut out).map_err(|e| DataError::io(what, e))?;
        Ok(out)
    } else {
        Ok(bytes)
    }
}

/// The HumanEval problems as JSON lines (`task_id`, `prompt`, `canonical_solution`, `test`, …).
pub fn humaneval_jsonl() -> String {
    let bytes = maybe_gunzip(HUMANEVAL_JSONL_GZ.to_vec(), Path::new("HumanEval.jsonl.gz")).expect("the embedded file is valid gzip");
    String::from_utf8(bytes).expect("the embedded file is UTF-8")
}

/// One text per HumanEval problem: prompt, canonical solution and tests.
pub fn humaneval() -> Vec<String> {
    humaneval_jsonl()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("the embedded file is valid JSONL");
            ["prompt", "canonical_solution", "test"].iter().filter_map(|k| v[k].as_str()).collect::<Vec<_>>().join("\n")
        })
        .collect()
}

/// Texts of a user evaluation set: a `.jsonl` file (optionally gzipped) gives one text per line,
/// the concatenation of its string fields; any other file is one text.
pub fn load(path: &Path) -> Result<Vec<String>, DataError> {
    let bytes = maybe_gunzip(std::fs::read(path).map_err(|e| DataError::io(path, e))?, path)?;
    let text = String::from_utf8(bytes).map_err(|e| DataError::Invalid(format!("{}: not UTF-8 ({e})", path.display())))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if !(name.ends_with(".jsonl") || name.ends_with(".jsonl.gz")) {
        return Ok(vec![text]);
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l)
                .map_err(|e| DataError::Invalid(format!("{} line {}: not JSON ({e})", path.display(), i + 1)))?;
            let obj = v.as_object().ok_or_else(|| DataError::Invalid(format!("{} line {}: not a JSON object", path.display(), i + 1)))?;
            Ok(obj.values().filter_map(|x| x.as_str()).collect::<Vec<_>>().join("\n"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn humaneval_is_built_in() {
        let h = super::humaneval();
        assert_eq!(h.len(), 164);
        assert!(h[0].contains("def has_close_elements"));
    }
}
