//! `phi data prepare --tasks N` as a user runs it: the local executor (each task a process of
//! its own), the stages one task at a time as a Slurm array job runs them (`--stages`, then
//! `--stage S` with `SLURM_ARRAY_TASK_ID`), and a run killed with its tasks and started again.
//! Each keeps exactly the documents and tokens one process keeps.

use std::path::Path;
use std::process::{Command, Output};

use phi_data::prepare::Manifest;
use phi_data::shard::Shard;

/// The GPT-2 tokenizer (phi-data's fixture): a given tokenizer makes the tokens comparable.
fn gpt2() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/phi-data/tests/fixtures/tokenizers/gpt2/tokenizer.json")
}

fn phi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_phi"))
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A module of functions, distinct for each seed.
fn module(seed: usize) -> String {
    let words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "lambda", "zeta", "rho", "tau"];
    let mut x = seed as u64 * 0x9E37_79B9_7F4A_7C15 + 7;
    let mut next = |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    let mut s = format!("\"\"\"Module {seed}: {} helpers.\"\"\"\n\nimport math\n", words[next(12)]);
    for f in 0..5 {
        let (a, b, c) = (words[next(12)], words[next(12)], next(100));
        s += &format!(
            "\n\ndef {a}_{b}_{seed}_{f}(values, scale={c}):\n    \"\"\"The {a} of values, by {b}.\"\"\"\n    total = {c}\n    for v in values:\n        total += v * scale - {f}\n    return math.sqrt(abs(total)) / (len(values) + {c})\n"
        );
    }
    s
}

const HUMANEVAL_0: &str = "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n    for idx, elem in enumerate(numbers):\n        for idx2, elem2 in enumerate(numbers):\n            if idx != idx2:\n                distance = abs(elem - elem2)\n                if distance < threshold:\n                    return True\n\n    return False\n";

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// 400 modules, with exact copies (other whitespace) and one-line edits of early modules read
/// late and of late modules read early, and HumanEval pasted into a few.
fn corpus(dir: &Path) {
    for i in 0..400 {
        write(dir, &format!("m{:02}/mod{i:03}.py", i / 50), &module(i));
    }
    for k in 0..12 {
        let (early, late) = (k * 7, 399 - k * 11);
        write(dir, &format!("zz/exact{k}.py"), &module(early).replace("    ", "\t"));
        write(dir, &format!("zz/near{k}.py"), &module(early).replacen("    total = ", "    total = 1 + ", 1));
        write(dir, &format!("a0/near_late{k}.py"), &module(late).replacen("import math", "import math  # edited", 1));
    }
    for k in 0..3 {
        write(dir, &format!("m0{}/leak{k}.py", k * 3), &format!("{}\n\n{HUMANEVAL_0}", module(900 + k)));
    }
}

fn prepare(src: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = phi();
    cmd.args(["data", "prepare", "--input"])
        .arg(src)
        .arg("--out")
        .arg(out)
        .arg("--tokenizer")
        .arg(gpt2())
        .args(["--keep-documents", "--shard-tokens", "20000", "--validation-fraction", "0.1"])
        .args(extra);
    cmd
}

/// The kept documents, and each split's tokens over all its shards in order.
fn result(dir: &Path) -> (Vec<u8>, Vec<u32>, Vec<u32>) {
    let m = Manifest::read(dir).unwrap();
    let tokens = |split: &str| m.splits[split].shards.iter().flat_map(|s| Shard::open(dir.join(&s.file)).unwrap().to_vec()).collect::<Vec<u32>>();
    (std::fs::read(dir.join("documents.jsonl")).unwrap(), tokens("train"), tokens("validation"))
}

#[test]
fn tasks_as_processes_and_as_an_array_job_keep_what_one_process_keeps() {
    let src = tempfile::tempdir().unwrap();
    corpus(src.path());
    let out = tempfile::tempdir().unwrap();
    let one = out.path().join("one");
    let table = ok(prepare(src.path(), &one, &[]).output().unwrap());
    assert!(table.contains("exact duplicate") && table.contains("near duplicate") && table.contains("shares an n-gram"), "{table}");
    let want = result(&one);
    assert!(want.1.len() > 20_000 && !want.2.is_empty());

    // The local executor, 3 tasks, 2 processes at a time.
    let local = out.path().join("local");
    let output = prepare(src.path(), &local, &["--tasks", "3", "--workers", "2"]).output().unwrap();
    let progress = String::from_utf8_lossy(&output.stderr).into_owned();
    let table3 = ok(output);
    assert!(result(&local) == want, "the local executor's dataset differs from one process's");
    // Every task reported, and the same report as one process (but for the seconds).
    for line in ["signatures 3/3", "buckets 1/3", "clusters 1/1", "filter 2/3", "tokenizer 1/1", "tokenize 3/3", "merge 1/1"] {
        assert!(progress.contains(line), "{line:?} not in:\n{progress}");
    }
    // The table's words but the seconds, the wall time and the shard counts (each task rolls
    // its own shards; the tokens were compared above).
    let no_seconds = |t: &str| {
        t.lines()
            .filter(|l| !["wall", "wrote", "train:"].iter().any(|p| l.starts_with(p)))
            .map(|l| l.split_whitespace().filter(|w| !(w.starts_with('(') && w.ends_with("s)"))).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
    };
    assert_eq!(no_seconds(&table3), no_seconds(&table));

    // The stages as a cluster runs them: `--stages` lists them, each task is a process that
    // finds its number in SLURM_ARRAY_TASK_ID.
    let listed = ok(prepare(src.path(), &one, &["--tasks", "3", "--stages"]).output().unwrap());
    let stages: Vec<(String, usize)> = listed.lines().map(|l| {
        let mut w = l.split_whitespace();
        (w.next().unwrap().to_string(), w.next().unwrap().parse().unwrap())
    }).collect();
    let names: Vec<&str> = stages.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(names, ["signatures", "buckets", "clusters", "filter", "tokenizer", "tokenize", "merge"], "{listed}");
    assert_eq!(stages.iter().map(|s| s.1).collect::<Vec<_>>(), [3, 3, 1, 3, 1, 3, 1]);
    let array = out.path().join("array");
    for (stage, count) in &stages {
        for task in 0..*count {
            let line = ok(prepare(src.path(), &array, &["--tasks", "3", "--stage", stage]).env("SLURM_ARRAY_TASK_ID", task.to_string()).output().unwrap());
            assert!(line.starts_with(&format!("{stage} {}/{count}: ", task + 1)), "{line}");
        }
    }
    assert!(result(&array) == want, "the array job's dataset differs from one process's");

    // A task run again is skipped; a stage out of order is refused with the reason.
    let again = ok(prepare(src.path(), &array, &["--tasks", "3", "--stage", "filter", "--task", "1"]).output().unwrap());
    assert!(again.contains("already holds this dataset"), "{again}");
    let fresh = out.path().join("fresh");
    let refused = prepare(src.path(), &fresh, &["--tasks", "3", "--stage", "buckets", "--task", "0"]).output().unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("needs every task of stage signatures"), "{err}");
    let refused = prepare(src.path(), &fresh, &["--tasks", "3", "--stage", "merge"]).env_remove("SLURM_ARRAY_TASK_ID").output().unwrap();
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--stage needs --task"));
}

#[test]
fn a_run_killed_with_its_tasks_and_started_again_changes_nothing() {
    let src = tempfile::tempdir().unwrap();
    corpus(src.path());
    let out = tempfile::tempdir().unwrap();
    let one = out.path().join("one");
    ok(prepare(src.path(), &one, &[]).output().unwrap());
    let want = result(&one);
    // Killed (the executor and its task processes, as a scheduler kills a job) at a few points
    // in the run, then run to the end.
    let dir = out.path().join("killed");
    for wait_ms in [300, 900, 1500] {
        use std::os::unix::process::CommandExt;
        let mut child = prepare(src.path(), &dir, &["--tasks", "4", "--workers", "1"])
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(wait_ms));
        let _ = Command::new("kill").args(["-9", "--", &format!("-{}", child.id())]).status();
        let _ = child.wait();
        if wait_ms == 300 {
            assert!(!dir.join("manifest.json").exists(), "the run ended before it was killed");
        }
    }
    ok(prepare(src.path(), &dir, &["--tasks", "4", "--workers", "2"]).output().unwrap());
    assert!(result(&dir) == want, "the dataset after kills differs from one process's");
    assert!(!phi_data::prepare::tasks::work_dir(&dir).exists());
}
