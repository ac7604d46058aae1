//! A run's output folder: one run at a time in it ([`RunLock`]), and never one of the run's
//! own inputs among what it writes ([`check_inputs`]).
//!
//! Two runs resuming in one folder trample each other: one prunes the checkpoint whose
//! optimizer state the other is reading, and each rewrites `metrics.jsonl` under the other.
//! So [`crate::fit()`] (and the orchestrations around it: the `phi` tool's `recipes::run`,
//! `finetune::run`, `dpo_run::train`) hold an exclusive `flock` on
//! `OUT/.phi-run.lock` for as long as they write there. The kernel drops the lock when the
//! process ends however it ends, so a crash never leaves a folder locked; the file itself stays
//! (removing it would let a third run lock a fresh file while a second still holds the old
//! one). The holder writes its pid into it, which is how the run that is refused names it.
//!
//! ```
//! use phi_train::run_dir::RunLock;
//! let out = std::env::temp_dir().join(format!("run-lock-doc-{}", std::process::id()));
//! let held = RunLock::acquire(&out)?;
//! // The same thread may take it again (`fit` inside `finetune::run`); another may not.
//! let again = RunLock::acquire(&out)?;
//! let e = std::thread::scope(|s| s.spawn(|| RunLock::acquire(&out).err().unwrap().to_string()).join().unwrap());
//! assert!(e.contains(&format!("pid {}", std::process::id())));
//! drop((held, again));
//! std::thread::scope(|s| s.spawn(|| RunLock::acquire(&out).map(drop)).join().unwrap())?;
//! # std::fs::remove_dir_all(&out).unwrap();
//! # Ok::<(), phi_train::TrainError>(())
//! ```

use std::cell::RefCell;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Component, Path, PathBuf};
use std::rc::{Rc, Weak};

use crate::error::{Result, TrainError};

/// The lock file in a run's output folder.
pub const LOCK_FILE: &str = ".phi-run.lock";
const FORMAT: &str = "phi-run-lock";

/// An exclusive hold on a run's output folder; released when the last clone on this thread is
/// dropped (or the process ends).
#[derive(Clone)]
pub struct RunLock {
    _held: Rc<Held>,
}

struct Held {
    file: File,
    key: FolderKey,
}

type FolderKey = (u64, u64, PathBuf);

thread_local! {
    /// The folders this thread holds: taking one again is not a second run but the same one
    /// (`fit` called by an orchestration that already holds the folder).
    static HELD: RefCell<Vec<Weak<Held>>> = const { RefCell::new(Vec::new()) };
}

impl Drop for Held {
    fn drop(&mut self) {
        // Emptied before it is released, so that no one reads a finished run's pid as a holder.
        let _ = self.file.set_len(0);
    }
}

#[cfg(unix)]
fn folder_key(dir: &Path) -> std::io::Result<FolderKey> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir)?;
    Ok((m.dev(), m.ino(), PathBuf::new()))
}

#[cfg(not(unix))]
fn folder_key(dir: &Path) -> std::io::Result<FolderKey> {
    Ok((0, 0, std::fs::canonicalize(dir)?))
}

impl RunLock {
    /// Creates `out` if needed and takes its lock. Fails at once, naming the holder's pid,
    /// when another run (another process, or another thread of this one) holds it; fails,
    /// touching nothing, when `out/.phi-run.lock` is something other than our lock file.
    pub fn acquire(out: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
        let key = folder_key(out).map_err(|e| TrainError::io(out, e))?;
        let mine = HELD.with(|h| {
            let mut h = h.borrow_mut();
            h.retain(|w| w.strong_count() > 0);
            h.iter().filter_map(Weak::upgrade).find(|held| held.key == key)
        });
        if let Some(held) = mine {
            return Ok(RunLock { _held: held });
        }
        let path = out.join(LOCK_FILE);
        let not_ours = |why: &str| TrainError::OutputFolder {
            path: path.clone(),
            message: format!("{}: {why}; it is not a phi run lock, so it is left as it is (a file of yours? move it, or use another output folder)", path.display()),
        };
        match std::fs::symlink_metadata(&path) {
            Ok(m) if !m.file_type().is_file() => return Err(not_ours("exists and is not a plain file")),
            _ => {}
        }
        let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(|e| TrainError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = read_holder(&mut file).map_or_else(|| "its pid is not written yet".to_string(), |pid| format!("pid {pid}"));
                return Err(TrainError::OutputFolder {
                    path: out.to_path_buf(),
                    message: format!(
                        "{}: another run is writing in this folder ({holder}; it holds {}). Wait for it to finish, or use another output folder.",
                        out.display(),
                        path.display()
                    ),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(TrainError::io(&path, e)),
        }
        // Ours to overwrite only if empty (fresh, or left by a finished run) or our own format.
        let mut text = String::new();
        if file.read_to_string(&mut text).is_err() || !(text.trim().is_empty() || read_pid(&text).is_some()) {
            return Err(not_ours("holds something else"));
        }
        let record = serde_json::json!({ "format": FORMAT, "pid": std::process::id() }).to_string();
        file.set_len(0).and_then(|_| file.rewind()).and_then(|_| file.write_all(record.as_bytes())).map_err(|e| TrainError::io(&path, e))?;
        let held = Rc::new(Held { file, key });
        HELD.with(|h| h.borrow_mut().push(Rc::downgrade(&held)));
        Ok(RunLock { _held: held })
    }
}

fn read_holder(file: &mut File) -> Option<u64> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    read_pid(&text)
}

fn read_pid(text: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    (v.get("format")?.as_str()? == FORMAT).then(|| v.get("pid")?.as_u64()).flatten()
}

/// What a run writes in `out`: checkpoints, metrics, the loss curve, the data report, the lock,
/// and each folder of `finals` (with its `.partial` build) that it writes at its end.
pub fn written_paths(out: &Path, finals: &[&str]) -> Vec<PathBuf> {
    use crate::checkpoint::{CHECKPOINTS_DIR, DATA_REPORT_FILE, LOSS_CURVE_FILE, METRICS_FILE};
    let mut paths: Vec<PathBuf> = [CHECKPOINTS_DIR, METRICS_FILE, LOSS_CURVE_FILE, DATA_REPORT_FILE, LOCK_FILE].iter().map(|n| out.join(n)).collect();
    for f in finals {
        paths.push(out.join(f));
        paths.push(crate::export::partial_of(&out.join(f)));
    }
    paths
}

/// Refuses a run whose writes under `out` would reach one of its `inputs` (name, path): an input
/// inside something the run writes or replaces (a base model in `OUT/checkpoints/step-…` would be
/// pruned under the run, one in `OUT/merged` replaced by its result), or `out` being an input
/// folder itself (the run's checkpoints, metrics and outputs would go in among, and over, the
/// files it reads). An `out` further inside an input folder is the run's own folder and fine.
/// The names are the caller's, `out.0` the output folder's (the `phi` tool passes its flags:
/// `("--out", …)`, `("--base", …)`), and the error says which to change.
pub fn check_inputs(inputs: &[(&str, &Path)], out: (&str, &Path), finals: &[&str]) -> std::result::Result<(), String> {
    let (out_name, out) = out;
    let written: Vec<(PathBuf, PathBuf)> = written_paths(out, finals).into_iter().map(|w| (resolve(&w), w)).collect();
    let out_resolved = resolve(out);
    for (name, input) in inputs {
        let resolved = resolve(input);
        if resolved == out_resolved {
            return Err(format!(
                "{out_name} {} is {name} itself: the run would write its checkpoints, metrics and outputs among the files it only reads; choose another {out_name}",
                out.display()
            ));
        }
        if let Some((_, w)) = written.iter().find(|(w_resolved, _)| resolved.starts_with(w_resolved)) {
            let when = if finals.iter().any(|f| w.starts_with(out.join(f)) || *w == crate::export::partial_of(&out.join(f))) { "at its end" } else { "as it trains" };
            return Err(format!("{name} {} is inside {}, which this run writes {when}: choose another {out_name}", input.display(), w.display()));
        }
    }
    Ok(())
}

/// `path` absolute, with every symlink of its existing part resolved and `.`/`..` of the rest
/// applied, so that two names of one place compare equal.
pub fn resolve(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut base = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(canon) = std::fs::canonicalize(base) {
            let mut out = canon;
            for c in rest.iter().rev() {
                match c {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::CurDir => {}
                    c => out.push(c),
                }
            }
            return out;
        }
        match (base.parent(), base.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                base = parent;
            }
            _ => return absolute,
        }
    }
}
