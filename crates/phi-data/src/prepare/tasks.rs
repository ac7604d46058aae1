//! [`prepare`](super::prepare) as N tasks, on one machine or across a cluster: the same pipeline
//! and the same kept documents and tokens, its work split into stages whose tasks can each run in
//! their own process. datatrove's executors and MinHash stages are the model; the decisions stay
//! global, so the result does not depend on N.
//!
//! The stages, in order ([`stages`]; `(N)`: one task per task of the run, `(1)`: one task):
//!
//! | stage | tasks | does |
//! |---|---|---|
//! | `signatures` | N | task i reads its run of the input files (contiguous, balanced by bytes), applies the read and quality stages and writes each surviving document's number, content hash and MinHash signature |
//! | `buckets` | N | task i takes the content hashes ≡ i (mod N): within one hash every document after the first is an exact duplicate; and the LSH bands ≡ i (mod N): within a band's bucket, every pair of documents (the first of each content hash) whose signatures agree at the threshold is an edge |
//! | `clusters` | 1 | walks the edges in reading order: a document is a near duplicate when it has an edge to an earlier document that was kept. That is the one-process rule (a document is compared with the kept documents it shares a bucket with), so the same documents go |
//! | `filter` | N | task i reads its files again and runs stages 1–5 with the dedup verdicts decided (the quality verdicts are the signatures task's), writing its kept documents and its part of the report |
//! | `tokenizer` | 1 | checks the counts, moves a document across splits if one is empty, and trains the BPE once on the kept training documents in reading order (or copies the given tokenizer) |
//! | `tokenize` | N | task i tokenizes its kept documents into its own shards |
//! | `merge` | 1 | links the shards into `<out>` in order, merges the reports, writes the manifest and swaps the dataset into place |
//!
//! Without exact and near dedup the first three stages are skipped. Documents are numbered in
//! reading order, so the merged shards hold the one-process token stream document for document
//! (a task's last shard may be short: shard boundaries differ, the tokens do not), and the merged
//! report has the same counts and examples.
//!
//! Everything is written under `<out>.tasks/`: `plan.json` first (the configuration, the input
//! files and which task reads each; a task of another configuration is refused, naming the
//! difference), each output under its task's own name and atomically, and a completion marker
//! `done-STAGE-IIIII.json` last. A rerun skips the tasks that are done and redoes the others from
//! the start (a task's outputs are a function of the plan, so a task killed half-way and rerun
//! changes nothing). A task runs in one process at a time (a lock file the kernel releases when
//! its holder ends, however it ends). The merge removes the work folder; `<out>` follows the
//! ownership rules of [`prepare`](super::prepare).
//!
//! Limits: a file is read by one task, so one big JSONL or Parquet file is one task's work. A
//! `buckets` task compares every pair in a bucket (one process compares a document with the
//! kept ones only): a family of m near-identical documents costs m²/2 comparisons and edges.
//! The classifier stage scores in batches that follow the tasks' chunks; a scorer whose scores
//! depend on its batch (padding) may move a score at `min_score` across it.
//!
//! ```no_run
//! use phi_data::prepare::{Input, PrepareConfig, TokenizerSource, tasks};
//! let input = Input::Files { root: "corpus/".into(), pattern: "**/*.py".into(), exclude: vec![] };
//! let config = PrepareConfig::new(vec![input], TokenizerSource::Train { vocab_size: 8192 });
//! // 8 tasks, 4 at a time, as threads of this process:
//! let manifest = tasks::prepare_in_tasks(&config, None, "data/code".as_ref(), 8, 4)?;
//! // Or one task of one stage (what a cluster's array job runs, in stage order):
//! for stage in tasks::stages(&config) {
//!     for task in 0..stage.tasks(8) {
//!         tasks::run_task(&config, None, "data/code".as_ref(), 8, stage, task)?;
//!     }
//! }
//! # Ok::<(), phi_data::DataError>(())
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use memmap2::Mmap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{
    DATASET_LAYOUT, Dedup, DocumentScorer, DupReason, Kept, Manifest, PrepareConfig, PrepareReport, ScoreReport, ShardEntry, SplitEntry, SplitReport,
    StageReport, TASK_SHIFT, TokenizerEntry, TokenizerSource, check_config, check_counts, check_inputs_outside, check_scorer, filter_stages, fingerprint,
    input, kept_documents, nearest_to_boundary, partial_dir, publish, read_and_quality, start_partial, tokenize, write_atomic,
};
use crate::error::DataError;
use crate::owned::{Layout, Marker};
use crate::quality::content_hash;
use crate::shard::bytes_per_token;
use crate::tokenizer::Tokenizer;

/// One stage of preparation as tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskStage {
    Signatures,
    Buckets,
    Clusters,
    Filter,
    Tokenizer,
    Tokenize,
    Merge,
}

impl TaskStage {
    pub const ALL: [TaskStage; 7] =
        [TaskStage::Signatures, TaskStage::Buckets, TaskStage::Clusters, TaskStage::Filter, TaskStage::Tokenizer, TaskStage::Tokenize, TaskStage::Merge];

    pub fn name(self) -> &'static str {
        match self {
            TaskStage::Signatures => "signatures",
            TaskStage::Buckets => "buckets",
            TaskStage::Clusters => "clusters",
            TaskStage::Filter => "filter",
            TaskStage::Tokenizer => "tokenizer",
            TaskStage::Tokenize => "tokenize",
            TaskStage::Merge => "merge",
        }
    }

    /// How many tasks the stage has in a run of `tasks` tasks.
    pub fn tasks(self, tasks: usize) -> usize {
        match self {
            TaskStage::Clusters | TaskStage::Tokenizer | TaskStage::Merge => 1,
            _ => tasks,
        }
    }

    /// What the stage does, in a line.
    pub fn what(self) -> &'static str {
        match self {
            TaskStage::Signatures => "read, quality filters, content hashes and MinHash signatures of each task's files",
            TaskStage::Buckets => "exact duplicates by hash, candidate near-duplicate pairs by LSH band",
            TaskStage::Clusters => "near duplicates decided in reading order; each task's drops",
            TaskStage::Filter => "each task's files through every stage with the dedup verdicts; kept documents",
            TaskStage::Tokenizer => "the tokenizer, trained once (or the given one)",
            TaskStage::Tokenize => "each task's kept documents into its shards",
            TaskStage::Merge => "the shards in order, the report and the manifest, into the output folder",
        }
    }
}

impl std::fmt::Display for TaskStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for TaskStage {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, DataError> {
        TaskStage::ALL.into_iter().find(|st| st.name() == s).ok_or_else(|| {
            DataError::Invalid(format!("no stage {s:?}: the stages are {}", TaskStage::ALL.map(TaskStage::name).join(", ")))
        })
    }
}

/// The stages `config` runs, in order: without exact and near dedup, no signatures, buckets or
/// clusters.
pub fn stages(config: &PrepareConfig) -> Vec<TaskStage> {
    let dedup = config.exact_dedup || config.near_dedup.is_some();
    TaskStage::ALL.into_iter().filter(|s| dedup || !matches!(s, TaskStage::Signatures | TaskStage::Buckets | TaskStage::Clusters)).collect()
}

/// `<out>.tasks`, the work folder of a run as tasks.
pub fn work_dir(out: &Path) -> PathBuf {
    let mut dir = out.as_os_str().to_owned();
    dir.push(".tasks");
    PathBuf::from(dir)
}

pub const PLAN: &str = "plan.json";
pub const TASKS_FORMAT: &str = "phi-prepare-tasks";
pub const TASKS_VERSION: u32 = 1;

/// The work folder: its plan, and only the files the stages write.
pub static TASKS_LAYOUT: Layout = Layout {
    what: "the work folder of a dataset prepared as tasks",
    markers: &[Marker { file: PLAN, format: TASKS_FORMAT, version: TASKS_VERSION }],
    file: is_work_file,
    dir: |_| None,
};

/// The names the stages write (and the temporaries of their atomic writes).
fn is_work_file(name: &str) -> bool {
    let base = name.strip_suffix(".tmp").unwrap_or(name);
    let (stem, ext) = base.split_once('.').unwrap_or((base, ""));
    // Numbers are written with at least five digits.
    let digits = |s: &str, n: usize| s.len() >= n && s.bytes().all(|b| b.is_ascii_digit());
    let ext_ok = matches!(ext, "" | "bin" | "json" | "jsonl");
    let parts: Vec<&str> = stem.split('-').collect();
    match parts.as_slice() {
        ["plan"] => ext == "json" || (name.ends_with(".tmp") && !ext.is_empty() && ext.bytes().all(|b| b.is_ascii_digit())),
        ["tokenizer"] | ["tokenizer", "stage"] => ext_ok,
        [word, t] => ext_ok && digits(t, 5) && ["signatures", "quality", "dups", "edges", "drops", "kept", "filter", "tokenize"].contains(word),
        ["train" | "validation", t, k] => ext_ok && digits(t, 5) && digits(k, 5),
        ["done", stage, t] => ext_ok && digits(t, 5) && TaskStage::ALL.iter().any(|s| s.name() == *stage),
        ["lock", stage, t] => ext.is_empty() && digits(t, 5) && TaskStage::ALL.iter().any(|s| s.name() == *stage),
        _ => false,
    }
}

/// What a run as tasks reads and who reads it; written first, read by every task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub format: String,
    pub version: u32,
    /// [`fingerprint`](super::fingerprint) of the config over its input files: the prepared
    /// dataset's too.
    pub fingerprint: String,
    pub tasks: usize,
    pub config: PrepareConfig,
    /// The input files in reading order, each with the task that reads it.
    pub files: Vec<PlannedFile>,
    /// When the plan was made (seconds since the Unix epoch): the report's wall time counts
    /// from it.
    pub created: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedFile {
    pub path: PathBuf,
    pub bytes: u64,
    pub modified: u64,
    pub task: usize,
}

/// Which task reads each file: contiguous runs in reading order, balanced by bytes (a file goes
/// to the task its middle byte falls in). Never decreasing, so task numbers order the corpus.
fn assign(bytes: &[u64], tasks: usize) -> Vec<usize> {
    let total: u64 = bytes.iter().sum();
    let mut before = 0u64;
    bytes
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let t = if total == 0 { i * tasks / bytes.len() } else { ((before as u128 * 2 + b as u128) * tasks as u128 / (total as u128 * 2)) as usize };
            before += b;
            t.min(tasks - 1)
        })
        .collect()
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl Plan {
    fn make(config: &PrepareConfig, fingerprint: &str, tasks: usize) -> Result<Plan, DataError> {
        let sources = input::list_sources(&config.inputs)?;
        if sources.is_empty() {
            return Err(DataError::Invalid(format!("no input files match {:?}", config.inputs)));
        }
        let owners = assign(&sources.iter().map(|s| s.bytes).collect::<Vec<_>>(), tasks);
        let files = sources.iter().zip(owners).map(|(s, task)| PlannedFile { path: s.path.clone(), bytes: s.bytes, modified: s.modified, task }).collect();
        Ok(Plan { format: TASKS_FORMAT.into(), version: TASKS_VERSION, fingerprint: fingerprint.into(), tasks, config: config.clone(), files, created: now() })
    }

    /// The plan in `dir`, made there first if there is none (by whichever task comes first:
    /// written aside and linked into place, so concurrent tasks agree on one). A plan of another
    /// configuration, other input files or another number of tasks is refused, naming the
    /// difference.
    fn open_or_make(dir: &Path, config: &PrepareConfig, fingerprint: &str, tasks: usize) -> Result<Plan, DataError> {
        let path = dir.join(PLAN);
        if !path.is_file() {
            // A folder holding nothing but plans being written (a task killed before it linked
            // its plan) is as good as empty; otherwise the ownership rules decide.
            let only_plans = std::fs::read_dir(dir).is_ok_and(|entries| {
                entries.flatten().all(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("plan.") && n.ends_with(".tmp") && is_work_file(n)))
            });
            if !only_plans {
                // Without a plan: absent, empty, or someone else's (an error naming it).
                crate::owned::check(dir, &TASKS_LAYOUT)?;
            }
            std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
            let plan = Plan::make(config, fingerprint, tasks)?;
            // Unique to this process and call: tasks may be threads of one process.
            static CALLS: AtomicUsize = AtomicUsize::new(0);
            let tmp = dir.join(format!("plan.{}{:06}.tmp", std::process::id(), CALLS.fetch_add(1, Ordering::Relaxed) % 1_000_000));
            write_atomic_exact(&tmp, serde_json::to_string_pretty(&plan).expect("plan serializes").as_bytes())?;
            let linked = std::fs::hard_link(&tmp, &path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(DataError::io(&path, e)),
            }
        } else {
            crate::owned::check(dir, &TASKS_LAYOUT)?;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
        let plan: Plan = serde_json::from_str(&text).map_err(|e| DataError::Invalid(format!("{}: {e}", path.display())))?;
        if plan.fingerprint == fingerprint && plan.tasks == tasks {
            return Ok(plan);
        }
        let mut why = Vec::new();
        if plan.tasks != tasks {
            why.push(format!("it was planned for {} tasks, not {tasks}", plan.tasks));
        }
        let (was, is) = (serde_json::to_value(&plan.config).expect("serializes"), serde_json::to_value(config).expect("serializes"));
        let mut keys = Vec::new();
        json_diff("", &was, &is, &mut keys);
        if !keys.is_empty() {
            why.push(format!("the configuration differs: {}", keys.join("; ")));
        }
        if plan.fingerprint != fingerprint && keys.is_empty() {
            let now = input::list_sources(&config.inputs)?;
            let then: HashMap<&Path, &PlannedFile> = plan.files.iter().map(|f| (f.path.as_path(), f)).collect();
            let mut files = Vec::new();
            for s in &now {
                match then.get(s.path.as_path()) {
                    None => files.push(format!("{} is new", s.path.display())),
                    Some(f) if (f.bytes, f.modified) != (s.bytes, s.modified) => files.push(format!("{} changed", s.path.display())),
                    Some(_) => {}
                }
            }
            let listed: HashSet<&Path> = now.iter().map(|s| s.path.as_path()).collect();
            files.extend(plan.files.iter().filter(|f| !listed.contains(f.path.as_path())).map(|f| format!("{} is gone", f.path.display())));
            let more = files.len().saturating_sub(3);
            files.truncate(3);
            if more > 0 {
                files.push(format!("{more} more"));
            }
            why.push(if files.is_empty() { "the tokenizer file or the classifier changed".to_string() } else { format!("the input files changed: {}", files.join(", ")) });
        }
        Err(DataError::Invalid(format!(
            "{}: this work folder was planned for another run ({}); its finished tasks are kept: run with the planned configuration, \
             or remove the folder to plan again",
            dir.display(),
            why.join("; ")
        )))
    }

    /// The input files task `task` reads, listed again (the fingerprint has checked they are
    /// the planned ones).
    fn sources(&self, task: usize) -> Result<Vec<input::SourceFile>, DataError> {
        let sources = input::list_sources(&self.config.inputs)?;
        if sources.len() != self.files.len() || sources.iter().zip(&self.files).any(|(s, f)| s.path != f.path) {
            return Err(DataError::Invalid("the input files changed since the plan was made".into()));
        }
        Ok(sources.into_iter().zip(&self.files).filter(|(_, f)| f.task == task).map(|(s, _)| s).collect())
    }
}

/// `key: was → is` for each leaf where two JSON values differ.
fn json_diff(at: &str, was: &serde_json::Value, is: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (was, is) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let key = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                json_diff(&key, a.get(k).unwrap_or(&Value::Null), b.get(k).unwrap_or(&Value::Null), out);
            }
        }
        (a, b) if a != b => out.push(format!("{at}: {a} → {b}")),
        _ => {}
    }
}

/// `write_atomic` for a name that is already a temporary (the plan's).
fn write_atomic_exact(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let mut f = std::fs::File::create(path).map_err(|e| DataError::io(path, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| DataError::io(path, e))
}

/// A task's completion marker, written last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDone {
    pub stage: String,
    pub task: usize,
    pub fingerprint: String,
    pub seconds: f64,
    /// The process's peak resident memory when the task ended (Linux), MB.
    pub peak_memory_mb: Option<f64>,
    /// What it did, in a line ("3,912 signatures").
    pub summary: String,
    /// A signatures task's digest of the documents it numbered (numbers and content hashes):
    /// its filter task must see the same documents, or the dedup verdicts would land on others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// What [`run_task`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutcome {
    Ran(TaskDone),
    /// The task's marker was there: nothing was done.
    AlreadyDone(TaskDone),
    /// The output folder already holds the dataset of this configuration.
    AlreadyPrepared,
}

fn done_name(stage: TaskStage, task: usize) -> String {
    format!("done-{stage}-{task:05}.json")
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| DataError::Invalid(format!("{}: {e}", path.display())))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), DataError> {
    write_atomic(path, serde_json::to_string(value).expect("serializes").as_bytes())
}

/// The peak resident memory of this process, MB (`VmHWM`; Linux only).
pub fn peak_memory_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Runs task `task` of `stage` in a run of `tasks` tasks into `out` (see the module docs): skips
/// it when its marker says it is done, refuses it when the previous stage has unfinished tasks.
/// `scorer` is the classifier stage's, needed by the filter stage of a config with a
/// classifier (as for [`prepare_with`](super::prepare_with)).
pub fn run_task(
    config: &PrepareConfig,
    scorer: Option<&dyn DocumentScorer>,
    out: &Path,
    tasks: usize,
    stage: TaskStage,
    task: usize,
) -> Result<TaskOutcome, DataError> {
    check_config(config)?;
    check_tasks(tasks)?;
    let order = stages(config);
    let Some(at) = order.iter().position(|s| *s == stage) else {
        return Err(DataError::Invalid(format!(
            "stage {stage} is not part of this run (exact_dedup and near_dedup are off): its stages are {}",
            order.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
        )));
    };
    if task >= stage.tasks(tasks) {
        return Err(DataError::Invalid(format!("stage {stage} has {} task(s), numbered from 0: there is no task {task}", stage.tasks(tasks))));
    }
    if stage == TaskStage::Filter {
        check_scorer(config, scorer)?;
    }
    let fingerprint = fingerprint(config)?;
    let dir = work_dir(out);
    if Manifest::read(out).is_ok_and(|m| m.fingerprint == fingerprint) {
        // A merge cut short after the dataset was in place may have left its work folder.
        remove_work_dir(&dir)?;
        return Ok(TaskOutcome::AlreadyPrepared);
    }
    // `out` is replaced by the merge: refuse now, before any work, unless it is ours to replace.
    crate::owned::check(out, &DATASET_LAYOUT)?;
    check_inputs_outside(&input::list_sources(&config.inputs)?, out, &[&partial_dir(out), &dir])?;
    let plan = Plan::open_or_make(&dir, config, &fingerprint, tasks)?;
    // One process at a time per task (a requeued array task, an executor's orphan): the lock is
    // the kernel's, so it goes with the process that holds it, however that process ends.
    let lock_path = dir.join(format!("lock-{stage}-{task:05}"));
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(|e| DataError::io(&lock_path, e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(DataError::Invalid(format!(
                "stage {stage}, task {task} is being run by another process (it holds {}): wait for it to end",
                lock_path.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(DataError::io(&lock_path, e)),
    }
    let marker = dir.join(done_name(stage, task));
    if marker.is_file() {
        return Ok(TaskOutcome::AlreadyDone(read_json(&marker)?));
    }
    if let Some(prev) = at.checked_sub(1).map(|i| order[i]) {
        let missing: Vec<String> = (0..prev.tasks(tasks)).filter(|&i| !dir.join(done_name(prev, i)).is_file()).map(|i| i.to_string()).collect();
        if !missing.is_empty() {
            return Err(DataError::Invalid(format!(
                "stage {stage} needs every task of stage {prev}, and task(s) {} of its {} have not finished: run them first",
                missing.join(", "),
                prev.tasks(tasks)
            )));
        }
    }
    let t = Instant::now();
    let mut digest = None;
    let summary = match stage {
        TaskStage::Signatures => {
            let (summary, d) = signatures(&plan, &dir, task)?;
            digest = Some(d);
            summary
        }
        TaskStage::Buckets => buckets(&plan, &dir, task)?,
        TaskStage::Clusters => clusters(&plan, &dir)?,
        TaskStage::Filter => filter(&plan, &dir, task, scorer, order.contains(&TaskStage::Clusters))?,
        TaskStage::Tokenizer => tokenizer(&plan, &dir)?,
        TaskStage::Tokenize => tokenize_task(&plan, &dir, task)?,
        TaskStage::Merge => merge(&plan, &dir, out)?,
    };
    let done = TaskDone { stage: stage.name().into(), task, fingerprint, seconds: t.elapsed().as_secs_f64(), peak_memory_mb: peak_memory_mb(), summary, digest };
    // The merge removed the work folder: the dataset is its marker.
    if stage != TaskStage::Merge {
        write_json(&marker, &done)?;
    }
    Ok(TaskOutcome::Ran(done))
}

/// Task numbers are written with five digits and shifted into document numbers.
fn check_tasks(tasks: usize) -> Result<(), DataError> {
    if !(1..=99_999).contains(&tasks) {
        return Err(DataError::Invalid(format!("tasks = {tasks}: a run has 1 to 99999 tasks")));
    }
    Ok(())
}

/// Removes the work folder if it is there and ours: every file but the plan first, the plan
/// last, so a removal cut short leaves a folder that is still ours (and is finished next time).
fn remove_work_dir(dir: &Path) -> Result<(), DataError> {
    if crate::owned::check(dir, &TASKS_LAYOUT)? == crate::owned::Ownership::Absent {
        return Ok(());
    }
    let entries: Vec<_> = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?.collect::<Result<_, _>>().map_err(|e| DataError::io(dir, e))?;
    for e in entries {
        let name = e.file_name();
        if name != PLAN && name.to_str().is_some_and(is_work_file) {
            std::fs::remove_file(e.path()).map_err(|err| DataError::io(&e.path(), err))?;
        }
    }
    let plan = dir.join(PLAN);
    if plan.exists() {
        std::fs::remove_file(&plan).map_err(|e| DataError::io(&plan, e))?;
    }
    std::fs::remove_dir(dir).map_err(|e| DataError::io(dir, e))
}

/// Runs every stage in order, each stage's unfinished tasks `workers` at a time, through
/// `launch` (which runs one task: in this process, or as a process of its own as the `phi` tool
/// does); stops at the first failure, naming the task. Returns the prepared dataset's manifest.
pub fn run_local(
    config: &PrepareConfig,
    out: &Path,
    tasks: usize,
    workers: usize,
    launch: &(dyn Fn(TaskStage, usize) -> Result<(), DataError> + Sync),
) -> Result<Manifest, DataError> {
    check_config(config)?;
    check_tasks(tasks)?;
    if workers == 0 {
        return Err(DataError::Invalid("workers = 0: at least 1 task must run at a time".into()));
    }
    let fingerprint = fingerprint(config)?;
    let dir = work_dir(out);
    if let Ok(m) = Manifest::read(out) {
        if m.fingerprint == fingerprint {
            remove_work_dir(&dir)?;
            return Ok(m);
        }
    }
    for stage in stages(config) {
        let pending: Vec<usize> = (0..stage.tasks(tasks)).filter(|&i| !dir.join(done_name(stage, i)).is_file()).collect();
        let next = AtomicUsize::new(0);
        let failed: Mutex<Option<DataError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..workers.min(pending.len()) {
                s.spawn(|| {
                    loop {
                        if failed.lock().expect("not poisoned").is_some() {
                            return;
                        }
                        let Some(&task) = pending.get(next.fetch_add(1, Ordering::SeqCst)) else { return };
                        if let Err(e) = launch(stage, task) {
                            let mut f = failed.lock().expect("not poisoned");
                            f.get_or_insert(DataError::Invalid(format!("stage {stage}, task {task}: {e}")));
                            return;
                        }
                    }
                });
            }
        });
        if let Some(e) = failed.into_inner().expect("not poisoned") {
            return Err(e);
        }
    }
    Manifest::read(out)
}

/// [`prepare_with`](super::prepare_with) as `tasks` tasks, `workers` at a time, as threads of
/// this process (see [`run_local`] for processes).
pub fn prepare_in_tasks(config: &PrepareConfig, scorer: Option<&dyn DocumentScorer>, out: &Path, tasks: usize, workers: usize) -> Result<Manifest, DataError> {
    run_local(config, out, tasks, workers, &|stage, task| run_task(config, scorer, out, tasks, stage, task).map(|_| ()))
}

// ---- signatures ----

/// `signatures-IIIII.bin`: a header (magic, signature length K), then per document left after
/// the quality stage its number, content hash and K MinHash values, little-endian u64s.
const SIG_MAGIC: &[u8; 8] = b"PHISIG01";

fn signatures_file(dir: &Path, task: usize) -> PathBuf {
    dir.join(format!("signatures-{task:05}.bin"))
}

/// The digest of a task's numbered documents: their numbers and content hashes, in order.
fn digest_of(h: &xxhash_rust::xxh3::Xxh3Default) -> String {
    format!("{:016x}", h.digest())
}

fn signatures(plan: &Plan, dir: &Path, task: usize) -> Result<(String, String), DataError> {
    let config = &plan.config;
    let sources = plan.sources(task)?;
    let near = config.near_dedup.as_ref();
    let k = near.map_or(0, |nd| nd.bands * nd.rows);
    let path = signatures_file(dir, task);
    let tmp = path.with_extension("tmp");
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?);
    let io = |e| DataError::io(&tmp, e);
    w.write_all(SIG_MAGIC).and_then(|_| w.write_all(&(k as u64).to_le_bytes())).map_err(io)?;
    let (mut read, mut quality) = (StageReport::new("read"), StageReport::new("quality"));
    let mut next_id = (task as u64) << TASK_SHIFT;
    let mut written = 0u64;
    let mut digest = xxhash_rust::xxh3::Xxh3Default::new();
    input::for_each_chunk(&sources, config.chunk_mb as u64 * 1_000_000, |docs| {
        let live = read_and_quality(config, &mut read, &mut quality, docs, &mut next_id);
        let records: Vec<Vec<u8>> = live
            .par_iter()
            .map(|d| {
                let mut r = Vec::with_capacity(16 + 8 * k);
                r.extend(d.id.to_le_bytes());
                r.extend(content_hash(&d.text).to_le_bytes());
                if let Some(nd) = near {
                    r.extend(nd.signature(&d.text).iter().flat_map(|v| v.to_le_bytes()));
                }
                r
            })
            .collect();
        for r in &records {
            digest.update(&r[..16]);
            w.write_all(r).map_err(io)?;
        }
        written += records.len() as u64;
        Ok(())
    })?;
    w.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(|e| DataError::io(&path, e))?;
    let read_in = read.documents_in;
    // The read and quality stages' books: the filter task takes them instead of running the
    // quality filters again (a tree-sitter parse per Python file).
    write_json(&dir.join(format!("quality-{task:05}.json")), &[read, quality])?;
    Ok((format!("{written} signatures of {read_in} documents read"), digest_of(&digest)))
}

/// A signatures file, memory-mapped: a bucket task touches only the signatures it compares.
struct Signatures {
    map: Mmap,
    k: usize,
}

impl Signatures {
    fn open(path: &Path) -> Result<Self, DataError> {
        let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
        // SAFETY: the file is ours, complete (renamed into place before the task's marker) and
        // never written again while the run lasts.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(path, e))?;
        let bad = || DataError::Invalid(format!("{}: not a signatures file of this run", path.display()));
        if map.len() < 16 || &map[..8] != SIG_MAGIC {
            return Err(bad());
        }
        let k = u64::from_le_bytes(map[8..16].try_into().expect("8 bytes")) as usize;
        if (map.len() - 16) % (16 + 8 * k) != 0 {
            return Err(bad());
        }
        Ok(Signatures { map, k })
    }

    fn len(&self) -> usize {
        (self.map.len() - 16) / (16 + 8 * self.k)
    }

    fn record(&self, i: usize) -> &[u8] {
        let w = 16 + 8 * self.k;
        &self.map[16 + i * w..16 + (i + 1) * w]
    }

    fn id(&self, i: usize) -> u64 {
        u64::from_le_bytes(self.record(i)[..8].try_into().expect("8 bytes"))
    }

    fn hash(&self, i: usize) -> u64 {
        u64::from_le_bytes(self.record(i)[8..16].try_into().expect("8 bytes"))
    }

    /// The signature's bytes.
    fn signature(&self, i: usize) -> &[u8] {
        &self.record(i)[16..]
    }
}

// ---- buckets ----

fn write_u64s(path: &Path, values: impl IntoIterator<Item = u64>) -> Result<(), DataError> {
    let tmp = path.with_extension("tmp");
    let io = |e| DataError::io(&tmp, e);
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp).map_err(io)?);
    for v in values {
        w.write_all(&v.to_le_bytes()).map_err(io)?;
    }
    w.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}

fn read_u64s(path: &Path) -> Result<Vec<u64>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if bytes.len() % 8 != 0 {
        return Err(DataError::Invalid(format!("{}: cut short ({} bytes)", path.display(), bytes.len())));
    }
    Ok(bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
}

fn buckets(plan: &Plan, dir: &Path, task: usize) -> Result<String, DataError> {
    let config = &plan.config;
    let n = plan.tasks;
    let files = (0..n).map(|t| Signatures::open(&signatures_file(dir, t))).collect::<Result<Vec<_>, _>>()?;
    if let Some((t, s)) = files.iter().enumerate().find(|(_, s)| s.len() > u32::MAX as usize) {
        return Err(DataError::Invalid(format!("task {t} numbered {} documents: at most {} a task; use more tasks", s.len(), u32::MAX)));
    }
    // Every record as (file, position).
    let all = || files.iter().enumerate().flat_map(|(f, s)| (0..s.len()).map(move |i| (f, i)));

    // Exact duplicates: the hashes of this task's residue class; after the first document of a
    // hash (in reading order: the least number), every other one is a duplicate.
    let mut dups = Vec::new();
    if config.exact_dedup {
        let mut mine: Vec<(u64, u64)> = all().map(|(f, i)| (files[f].hash(i), files[f].id(i))).filter(|(h, _)| h % n as u64 == task as u64).collect();
        mine.sort_unstable();
        for group in mine.chunk_by(|a, b| a.0 == b.0) {
            dups.extend(group[1..].iter().map(|&(_, id)| id));
        }
        dups.sort_unstable();
    }
    write_u64s(&dir.join(format!("dups-{task:05}.bin")), dups.iter().copied())?;

    // Near-duplicate pairs: the bands of this task's residue class. Within a bucket (a band's
    // rows hashed alike) only the first document of each content hash takes part when exact
    // dedup runs: the others never reach the near-dedup stage.
    let mut edges: Vec<(u64, u64)> = Vec::new();
    if let Some(nd) = &config.near_dedup {
        let rows = 8 * nd.rows;
        for band in (task..nd.bands).step_by(n) {
            // (band key, content hash, number, file, position)
            let mut entries: Vec<(u64, u64, u64, u32, u32)> = all()
                .map(|(f, i)| {
                    let s = &files[f];
                    let key = crate::quality::band_key(s.signature(i)[band * rows..(band + 1) * rows].iter().copied());
                    (key, s.hash(i), s.id(i), f as u32, i as u32)
                })
                .collect();
            entries.par_sort_unstable();
            let groups: Vec<&[(u64, u64, u64, u32, u32)]> = entries.chunk_by(|a, b| a.0 == b.0).filter(|g| g.len() > 1).collect();
            let found: Vec<(u64, u64)> = groups
                .par_iter()
                .flat_map_iter(|group| {
                    let reps: Vec<_> = if config.exact_dedup { group.chunk_by(|a, b| a.1 == b.1).map(|g| g[0]).collect() } else { group.to_vec() };
                    let mut pairs = Vec::new();
                    for (a, x) in reps.iter().enumerate() {
                        for y in &reps[a + 1..] {
                            let (sx, sy) = (files[x.3 as usize].signature(x.4 as usize), files[y.3 as usize].signature(y.4 as usize));
                            if similar_bytes(sx, sy, nd.threshold) {
                                pairs.push((x.2.min(y.2), x.2.max(y.2)));
                            }
                        }
                    }
                    pairs
                })
                .collect();
            edges.extend(found);
        }
        edges.sort_unstable();
        edges.dedup();
    }
    write_u64s(&dir.join(format!("edges-{task:05}.bin")), edges.iter().flat_map(|&(j, k)| [j, k]))?;
    Ok(format!("{} exact duplicates, {} near-duplicate pairs", dups.len(), edges.len()))
}

/// [`NearDup::similar`](crate::quality::NearDup::similar) on signatures as stored.
fn similar_bytes(a: &[u8], b: &[u8], threshold: f64) -> bool {
    let same = a.chunks_exact(8).zip(b.chunks_exact(8)).filter(|(x, y)| x == y).count();
    same as f64 / (a.len() / 8) as f64 >= threshold
}

// ---- clusters ----

fn drops_file(dir: &Path, task: usize) -> PathBuf {
    dir.join(format!("drops-{task:05}.bin"))
}

fn clusters(plan: &Plan, dir: &Path) -> Result<String, DataError> {
    let n = plan.tasks;
    let mut drops: Vec<(u64, DupReason)> = Vec::new();
    let mut edges: Vec<(u64, u64)> = Vec::new();
    for t in 0..n {
        drops.extend(read_u64s(&dir.join(format!("dups-{t:05}.bin")))?.into_iter().map(|id| (id, DupReason::Exact)));
        // (later, earlier): grouped by the later document.
        edges.extend(read_u64s(&dir.join(format!("edges-{t:05}.bin")))?.chunks_exact(2).map(|p| (p[1], p[0])));
    }
    let exact = drops.len();
    edges.sort_unstable();
    edges.dedup();
    // In reading order: a document goes when an earlier document it matches was kept.
    let mut near = HashSet::new();
    for group in edges.chunk_by(|a, b| a.0 == b.0) {
        if group.iter().any(|(_, earlier)| !near.contains(earlier)) {
            near.insert(group[0].0);
        }
    }
    drops.extend(near.iter().map(|&id| (id, DupReason::Near)));
    drops.sort_unstable_by_key(|d| d.0);
    // Sorted by number, so by task: each task's drops are one run.
    let mut rest = drops.as_slice();
    for t in 0..n {
        let end = rest.partition_point(|d| d.0 >> TASK_SHIFT <= t as u64);
        let (mine, after) = rest.split_at(end);
        write_u64s(&drops_file(dir, t), mine.iter().flat_map(|&(id, r)| [id, (r == DupReason::Near) as u64]))?;
        rest = after;
    }
    Ok(format!("{exact} exact and {} near duplicates to drop", near.len()))
}

// ---- filter ----

/// A filter task's part of the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FilterOutput {
    stages: Vec<StageReport>,
    scores: Option<ScoreReport>,
    /// Kept documents: [train, validation].
    kept: [u64; 2],
}

fn kept_file(dir: &Path, task: usize) -> PathBuf {
    dir.join(format!("kept-{task:05}.jsonl"))
}

fn filter(plan: &Plan, dir: &Path, task: usize, scorer: Option<&dyn DocumentScorer>, deduped: bool) -> Result<String, DataError> {
    let mut drops = HashMap::new();
    let mut left = HashSet::new();
    let mut books: Option<[StageReport; 2]> = None;
    if deduped {
        let values = read_u64s(&drops_file(dir, task))?;
        for pair in values.chunks_exact(2) {
            drops.insert(pair[0], if pair[1] == 1 { DupReason::Near } else { DupReason::Exact });
        }
        // What the signatures task's read and quality stages left, and their books.
        let signed = Signatures::open(&signatures_file(dir, task))?;
        left.extend((0..signed.len()).map(|i| signed.id(i)));
        books = Some(read_json(&dir.join(format!("quality-{task:05}.json")))?);
    }
    let sources = plan.sources(task)?;
    let path = kept_file(dir, task);
    let tmp = path.with_extension("tmp");
    let mut digest = xxhash_rust::xxh3::Xxh3Default::new();
    let read_and_quality = books.as_ref().map(|b| (&left, b));
    let (stages, scores, kept) = filter_stages(&plan.config, scorer, &sources, &tmp, &(), Dedup::Decided { task, drops: &drops, digest: &mut digest, read_and_quality })?;
    if deduped {
        let signed: TaskDone = read_json(&dir.join(done_name(TaskStage::Signatures, task)))?;
        if signed.digest.as_deref() != Some(digest_of(&digest).as_str()) {
            let files: Vec<String> = sources.iter().take(3).map(|s| s.path.display().to_string()).collect();
            return Err(DataError::Invalid(format!(
                "task {task} read other documents than its signatures task did: its input files ({}{}) changed during the run; \
                 remove {} and run again",
                files.join(", "),
                if sources.len() > 3 { ", …" } else { "" },
                dir.display()
            )));
        }
    }
    std::fs::rename(&tmp, &path).map_err(|e| DataError::io(&path, e))?;
    let read = stages.first().map_or(0, |s| s.documents_in);
    write_json(&dir.join(format!("filter-{task:05}.json")), &FilterOutput { stages, scores, kept })?;
    Ok(format!("kept {} of {read} documents", kept[0] + kept[1]))
}

fn filter_outputs(plan: &Plan, dir: &Path) -> Result<Vec<FilterOutput>, DataError> {
    (0..plan.tasks).map(|t| read_json(&dir.join(format!("filter-{t:05}.json")))).collect()
}

/// The filter tasks' reports as one, in task (reading) order: counts summed, the first examples.
fn merged_report(outputs: &[FilterOutput]) -> PrepareReport {
    let mut stages: Vec<StageReport> = outputs[0].stages.iter().map(|s| StageReport::new(&s.name)).collect();
    let mut scores = outputs[0].scores.as_ref().map(|s| ScoreReport { scorer: s.scorer.clone(), min_score: s.min_score, ..Default::default() });
    for o in outputs {
        for (into, s) in stages.iter_mut().zip(&o.stages) {
            into.documents_in += s.documents_in;
            into.bytes_in += s.bytes_in;
            into.documents_kept += s.documents_kept;
            into.bytes_kept += s.bytes_kept;
            into.seconds += s.seconds;
            for (reason, d) in &s.dropped {
                let e = into.dropped.entry(reason.clone()).or_default();
                e.documents += d.documents;
                e.bytes += d.bytes;
                let room = 3usize.saturating_sub(e.examples.len());
                e.examples.extend(d.examples.iter().take(room).cloned());
            }
        }
        if let (Some(into), Some(s)) = (&mut scores, &o.scores) {
            for (bin, count) in &s.histogram {
                *into.histogram.entry(*bin).or_default() += count;
            }
            into.kept += s.kept;
            into.dropped += s.dropped;
            into.seconds += s.seconds;
            let room = 3usize.saturating_sub(into.kept_examples.len());
            into.kept_examples.extend(s.kept_examples.iter().take(room).cloned());
            let room = 3usize.saturating_sub(into.dropped_examples.len());
            into.dropped_examples.extend(s.dropped_examples.iter().take(room).cloned());
        }
    }
    if let Some(s) = &mut scores {
        s.documents_per_second = (s.kept + s.dropped) as f64 / s.seconds.max(1e-9);
    }
    PrepareReport { stages, scores, ..Default::default() }
}

/// Every task's kept documents, in reading order.
fn all_kept(dir: &Path, tasks: usize) -> Result<impl Iterator<Item = Kept>, DataError> {
    let files = (0..tasks).map(|t| kept_documents(&kept_file(dir, t))).collect::<Result<Vec<_>, _>>()?;
    Ok(files.into_iter().flatten())
}

// ---- tokenizer ----

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenizerOutput {
    /// The document moved across splits (one split was empty), by number.
    flip: Option<u64>,
    /// Where the tokenizer came from: a path, or `trained`.
    source: String,
    seconds: f64,
}

fn tokenizer(plan: &Plan, dir: &Path) -> Result<String, DataError> {
    let config = &plan.config;
    let outputs = filter_outputs(plan, dir)?;
    let counts = outputs.iter().fold([0u64; 2], |c, o| [c[0] + o.kept[0], c[1] + o.kept[1]]);
    let flip = if check_counts(config, counts, &merged_report(&outputs))? {
        nearest_to_boundary(all_kept(dir, plan.tasks)?, config.validation_fraction).and_then(|(_, id)| id)
    } else {
        None
    };
    let t = Instant::now();
    let (tok, source, what) = match &config.tokenizer {
        TokenizerSource::File(p) => (Tokenizer::from_file(p)?, p.display().to_string(), format!("took {}", p.display())),
        TokenizerSource::Train { vocab_size } => {
            let flipped = |k: &Kept| k.validation != (flip.is_some() && k.id == flip);
            let train = counts[0] as i64 + flip.map_or(0, |_| if counts[0] == 0 { 1 } else { -1 });
            let texts = all_kept(dir, plan.tasks)?.filter(|k| !flipped(k)).map(|k| k.text);
            (Tokenizer::train_bpe(texts, *vocab_size)?, "trained".to_string(), format!("trained a BPE of {vocab_size} on {train} documents"))
        }
    };
    if tok.eos_id().is_none() {
        return Err(DataError::Invalid(format!("tokenizer {source} has no {} token to join documents", crate::tokenizer::EOS)));
    }
    let seconds = if matches!(config.tokenizer, TokenizerSource::Train { .. }) { t.elapsed().as_secs_f64() } else { 0.0 };
    let path = dir.join("tokenizer.json");
    let tmp = dir.join("tokenizer.json.tmp");
    tok.save(&tmp)?;
    std::fs::rename(&tmp, &path).map_err(|e| DataError::io(&path, e))?;
    write_json(&dir.join("tokenizer-stage.json"), &TokenizerOutput { flip, source, seconds })?;
    Ok(what)
}

// ---- tokenize ----

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenizeOutput {
    splits: BTreeMap<String, SplitEntry>,
    seconds: f64,
}

fn tokenize_task(plan: &Plan, dir: &Path, task: usize) -> Result<String, DataError> {
    let t = Instant::now();
    let stage: TokenizerOutput = read_json(&dir.join("tokenizer-stage.json"))?;
    let tok = Tokenizer::from_file(dir.join("tokenizer.json"))?;
    let eos = tok.eos_id().ok_or_else(|| DataError::Invalid("the tokenizer stage's tokenizer has no end-of-text token".into()))?;
    let mine: FilterOutput = read_json(&dir.join(format!("filter-{task:05}.json")))?;
    let names = [format!("train-{task:05}"), format!("validation-{task:05}")];
    let splits = tokenize(&plan.config, &tok, eos, &kept_file(dir, task), dir, &names, stage.flip, mine.kept[0] + mine.kept[1], &())?;
    let tokens: u64 = splits.values().map(|s| s.tokens).sum();
    let shards: usize = splits.values().map(|s| s.shards.len()).sum();
    write_json(&dir.join(format!("tokenize-{task:05}.json")), &TokenizeOutput { splits, seconds: t.elapsed().as_secs_f64() })?;
    Ok(format!("{tokens} tokens in {shards} shard(s)"))
}

// ---- merge ----

/// A hard link (the work folder and the output are siblings, so on one file system), else a copy.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), DataError> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to).map(|_| ()).map_err(|e| DataError::io(to, e))
}

fn merge(plan: &Plan, dir: &Path, out: &Path) -> Result<String, DataError> {
    let config = &plan.config;
    crate::owned::check(out, &DATASET_LAYOUT)?;
    let partial = partial_dir(out);
    let (sources, repeated_folders) = input::list_sources_walked(&config.inputs)?;
    check_inputs_outside(&sources, out, &[&partial, dir])?;
    start_partial(&partial, out)?;

    let outputs: Vec<TokenizeOutput> = (0..plan.tasks).map(|t| read_json(&dir.join(format!("tokenize-{t:05}.json")))).collect::<Result<_, _>>()?;
    // The shards are linked, not moved: a merge cut short and rerun finds them all again.
    let mut splits = BTreeMap::new();
    for split in ["train", "validation"] {
        let mut entry = SplitEntry::default();
        for o in &outputs {
            let part = &o.splits[split];
            entry.documents += part.documents;
            for s in &part.shards {
                let file = format!("{split}-{:05}.bin", entry.shards.len());
                link_or_copy(&dir.join(&s.file), &partial.join(&file))?;
                entry.tokens += s.tokens;
                entry.shards.push(ShardEntry { file, ..s.clone() });
            }
        }
        splits.insert(split.to_string(), entry);
    }
    let tok_stage: TokenizerOutput = read_json(&dir.join("tokenizer-stage.json"))?;
    link_or_copy(&dir.join("tokenizer.json"), &partial.join("tokenizer.json"))?;
    let tok = Tokenizer::from_file(partial.join("tokenizer.json"))?;
    if config.keep_documents {
        let path = partial.join("documents.jsonl");
        let tmp = partial.join("documents.jsonl.tmp");
        let io = |e| DataError::io(&tmp, e);
        let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp).map_err(io)?);
        for mut k in all_kept(dir, plan.tasks)? {
            if tok_stage.flip.is_some() && k.id == tok_stage.flip {
                k.validation = !k.validation;
            }
            k.id = None;
            writeln!(w, "{}", serde_json::to_string(&k).expect("serializes")).map_err(io)?;
        }
        w.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(|e| DataError::io(&path, e))?;
    }

    let mut report = merged_report(&filter_outputs(plan, dir)?);
    report.repeated_folders = repeated_folders;
    for (name, split) in [("train", &mut report.train), ("validation", &mut report.validation)] {
        let e = &splits[name];
        *split = SplitReport { documents: e.documents, tokens: e.tokens, shards: e.shards.len() };
    }
    report.tokenizer_seconds = tok_stage.seconds;
    report.tokenize_seconds = outputs.iter().map(|o| o.seconds).sum();
    report.wall_seconds = (now() - plan.created).max(0.0);
    report.megabytes_per_second = report.stages.first().map_or(0, |s| s.bytes_in) as f64 / 1e6 / report.wall_seconds.max(1e-9);
    let vocab_size = tok.vocab_size();
    let eos_id = tok.eos_id().expect("checked by the tokenizer stage");
    let manifest = Manifest {
        format: super::FORMAT.into(),
        version: crate::shard::VERSION,
        fingerprint: plan.fingerprint.clone(),
        tokenizer: TokenizerEntry { file: "tokenizer.json".into(), vocab_size, eos_id, source: tok_stage.source },
        bytes_per_token: bytes_per_token(vocab_size),
        splits,
        report,
        config: config.clone(),
    };
    publish(&partial, out, &manifest)?;
    let (train, validation) = (&manifest.splits["train"], &manifest.splits["validation"]);
    let summary = format!("{} + {} tokens in {} + {} shards", train.tokens, validation.tokens, train.shards.len(), validation.shards.len());
    remove_work_dir(dir)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_go_to_tasks_in_contiguous_runs_balanced_by_bytes() {
        assert_eq!(assign(&[10, 10, 10, 10], 2), [0, 0, 1, 1]);
        assert_eq!(assign(&[100, 1, 1, 1, 1], 2), [0, 1, 1, 1, 1]);
        assert_eq!(assign(&[0, 0, 0], 3), [0, 1, 2]);
        let a = assign(&(1..50).collect::<Vec<u64>>(), 4);
        assert!(a.windows(2).all(|w| w[0] <= w[1]) && a[0] == 0 && a[48] == 3);
        assert_eq!(assign(&[5, 5], 4).len(), 2);
    }

    #[test]
    fn the_work_folder_names_are_ours_and_nothing_else() {
        for name in [
            "plan.json",
            "plan.1234.tmp",
            "signatures-00003.bin",
            "signatures-00003.tmp",
            "kept-00000.jsonl",
            "train-00001-00002.bin",
            "train-00001-00002.bin.tmp",
            "done-filter-00004.json",
            "tokenizer.json.tmp",
            "tokenizer-stage.json",
        ] {
            assert!(is_work_file(name), "{name}");
        }
        assert!(is_work_file("lock-merge-00000") && is_work_file("train-00001-123456.bin"));
        for name in ["notes.txt", "plan.txt", "kept-3.jsonl", "done-other-00001.json", "train-00001.bin", "signatures-00003.parquet", "lock-filter-00001.json"] {
            assert!(!is_work_file(name), "{name}");
        }
    }

    #[test]
    fn stage_names_round_trip() {
        for s in TaskStage::ALL {
            assert_eq!(s.name().parse::<TaskStage>().unwrap(), s);
        }
        assert!("sigs".parse::<TaskStage>().unwrap_err().to_string().contains("signatures, buckets"));
    }
}
