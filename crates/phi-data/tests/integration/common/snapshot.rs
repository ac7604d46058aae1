//! Directory snapshots: a guarded folder is compared before and after a refused operation. Used by
//! phi-data's tests and, included by path, by phi-train's and the `phi` tool's.

use std::path::PathBuf;

/// Every file under `dir` with its bytes, sorted: equal snapshots, untouched files.
pub fn snapshot(dir: &std::path::Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(snapshot(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}
