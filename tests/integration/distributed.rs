//! Data-parallel training over MPI, `mpirun -np 2 phi …` on the CPU backend: the same per-step
//! losses, gradient norms, validation losses and final weights as one process (to 1e-5: only the
//! order of float sums differs) for pre-training, LoRA SFT and LoRA DPO, with the AdamW state
//! whole on each rank or sharded (`--zero 1`); rank 0 alone writes; a `grad_accum` two
//! processes cannot share is refused; a rank killed with SIGKILL ends the job within seconds,
//! naming the rank, and the run (sharded) resumes at one process or at two, sharded or not.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::fixture;

fn phi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_phi"))
}

/// `phi args…` in `n` processes: under mpirun for n > 1, alone (no launcher) for n = 1.
fn launch<S: AsRef<OsStr>>(n: usize, args: &[S]) -> Command {
    let mut c = if n == 1 {
        phi()
    } else {
        let mut c = Command::new("mpirun");
        // As root in CI containers; 2 ranks on 2 cores; ranks not pinned to a core each.
        c.args(["--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", &n.to_string()]).arg(env!("CARGO_BIN_EXE_phi"));
        // Shared-memory transport without cross-memory attach, which containers often forbid.
        c.env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
        c
    };
    c.args(args).env("RAYON_NUM_THREADS", "1");
    c
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The shipped corpus prepared once, a 300-token vocabulary.
fn prepared(root: &Path) -> PathBuf {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/corpus/python");
    let dir = root.join("data");
    let out = phi()
        .args(["data", "prepare", "--vocab-size", "300", "--validation-fraction", "0.1", "--input"])
        .arg(&corpus)
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    ok(&out);
    dir
}

/// `phi train --recipe phi-1` on `data` into `out` with the settings `toml`, in `n` processes.
fn train(n: usize, data: &Path, toml: &Path, out: &Path) -> Command {
    let mut c = launch(n, &["train", "--recipe", "phi-1"]);
    c.arg("--data").arg(data).arg("--config").arg(toml).arg("--out").arg(out);
    c
}

/// Each step's (step, loss, grad_norm, val_loss) in `dir/metrics.jsonl`.
fn metrics(dir: &Path) -> Vec<(u64, f64, f64, Option<f64>)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|m| (m["step"].as_u64().unwrap(), m["loss"].as_f64().unwrap(), m["grad_norm"].as_f64().unwrap(), m["val_loss"].as_f64()))
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1e-6)
}

/// Same steps, losses, gradient norms and validation losses, to 1e-5 relative.
fn same_metrics(a: &Path, b: &Path, steps: u64) {
    let (ma, mb) = (metrics(a), metrics(b));
    assert_eq!(ma.len() as u64, steps, "{}: {ma:?}", a.display());
    assert_eq!(ma.iter().map(|m| m.0).collect::<Vec<_>>(), mb.iter().map(|m| m.0).collect::<Vec<_>>());
    for (x, y) in ma.iter().zip(&mb) {
        let val = match (x.3, y.3) {
            (Some(p), Some(q)) => close(p, q),
            (None, None) => true,
            _ => false,
        };
        assert!(close(x.1, y.1) && close(x.2, y.2) && val, "step {}: {x:?} (in {}) vs {y:?} (in {})", x.0, a.display(), b.display());
    }
    assert!(ma.iter().any(|m| m.3.is_some()), "no validation loss was logged");
}

/// Every tensor of the `.safetensors` file `name` in `a` and in `b`, to 1e-5.
fn same_weights(a: &Path, b: &Path, name: &str) {
    let (fa, fb) = (std::fs::read(a.join(name)).unwrap(), std::fs::read(b.join(name)).unwrap());
    let (ta, tb) = (safetensors::SafeTensors::deserialize(&fa).unwrap(), safetensors::SafeTensors::deserialize(&fb).unwrap());
    let mut names = ta.names();
    names.sort();
    let mut other = tb.names();
    other.sort();
    assert_eq!(names, other);
    assert!(!names.is_empty());
    for n in names {
        let (x, y) = (ta.tensor(n).unwrap(), tb.tensor(n).unwrap());
        assert_eq!((x.dtype(), x.shape()), (y.dtype(), y.shape()), "{n}");
        assert_eq!(x.dtype(), safetensors::Dtype::F32, "{n}");
        let f = |d: &[u8]| d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>();
        let worst = f(x.data()).iter().zip(f(y.data())).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-5, "{n}: the weights differ by up to {worst:e} ({} vs {})", a.display(), b.display());
    }
}

/// Two optimizer records (`optimizer.bin`, burn's burnpack) hold the same state: the same
/// tensors (names, parameter ids, dtypes, shapes) and values within 1e-4 of each tensor's
/// largest magnitude (the sums ran in another order), and the same scalars and metadata. Not
/// their bytes or sizes: burnpack pads each tensor to 256 bytes in the order it was given, so
/// two writes of one state in another order differ in length.
fn same_optimizer(a: &Path, b: &Path) {
    let read = |p: &Path| burn_pack::Reader::from_file(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let (ra, rb) = (read(a), read(b));
    assert_eq!(ra.scalars(), rb.scalars(), "{} vs {}", a.display(), b.display());
    assert_eq!(ra.metadata(), rb.metadata(), "{} vs {}", a.display(), b.display());
    let tensors = |r: burn_pack::Reader| {
        let mut v: Vec<_> = r.into_tensors().unwrap().into_iter().map(|t| t.into_parts().unwrap()).collect();
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    };
    let (ta, tb) = (tensors(ra), tensors(rb));
    let names = |t: &[(String, burn_pack::DType, burn_pack::Shape, Option<u64>, burn_pack::Bytes)]| t.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&ta), names(&tb), "{} vs {}", a.display(), b.display());
    assert!(!ta.is_empty());
    for (x, y) in ta.iter().zip(&tb) {
        assert_eq!((&x.1, &x.2, x.3), (&y.1, &y.2, y.3), "{}", x.0);
        assert_eq!(x.1, burn_pack::DType::F32, "{}", x.0);
        let f = |d: &[u8]| d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>();
        let (p, q) = (f(&x.4), f(&y.4));
        let scale = p.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = p.iter().zip(&q).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-4 * scale, "{}: the moments differ by up to {worst:e} (largest {scale:e})", x.0);
    }
}

/// A scratch folder with the prepared corpus and `OVER` as `over.toml`.
fn pretraining() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let data = prepared(root.path());
    let toml = root.path().join("over.toml");
    std::fs::write(&toml, OVER).unwrap();
    (root, data, toml)
}

/// `job` (a run into `dir` with steps slowed to 300 ms) started, once `steps` steps are logged.
fn started_until_step(mut job: Command, dir: &Path, steps: usize) -> std::process::Child {
    let mut child = job.env("PHI_TEST_STEP_DELAY_MS", "300").stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let t = Instant::now();
    while !std::fs::read_to_string(dir.join("metrics.jsonl")).is_ok_and(|m| m.lines().count() >= steps) {
        assert!(t.elapsed() < Duration::from_secs(300) && child.try_wait().unwrap().is_none(), "the run did not reach step {steps}");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Waits up to 60 s for `job` to end (`None`: it still runs).
fn ended_within_a_minute(job: &mut std::process::Child) -> Option<std::process::ExitStatus> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        if let Some(status) = job.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Whether process `pid` has ended (gone, or a zombie no one reaped yet).
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).map_or(true, |s| s.contains("State:\tZ"))
}

fn checkpoint(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("checkpoints/step-{step:08}"))
}

const OVER: &str = "max_steps = 20\nbatch_size = 2\nseq_len = 32\ngrad_accum = 4\neval_every = 5\neval_batches = 5\ncheckpoint_every = 5\n\
                    [schedule]\nwarmup_steps = 2\ntotal_steps = 20\n";

#[test]
fn pretraining_in_two_processes_is_the_one_process_run_and_rank_0_alone_writes() {
    let (root, data, toml) = pretraining();
    let (one, two) = (root.path().join("one"), root.path().join("two"));
    let single = ok(&train(1, &data, &toml, &one).output().unwrap());
    let out = train(2, &data, &toml, &two).output().unwrap();
    let double = ok(&out);
    same_metrics(&one, &two, 20);
    same_weights(&checkpoint(&one, 20), &checkpoint(&two, 20), "model.safetensors");
    // ZeRO-1: the same run, and the same checkpoint — the optimizer state gathered into the
    // one-process record (the same tensors, keys and values).
    let sharded = root.path().join("sharded");
    ok(&train(2, &data, &toml, &sharded).args(["--zero", "1"]).output().unwrap());
    same_metrics(&one, &sharded, 20);
    same_weights(&checkpoint(&one, 20), &checkpoint(&sharded, 20), "model.safetensors");
    same_optimizer(&checkpoint(&one, 20).join("optimizer.bin"), &checkpoint(&sharded, 20).join("optimizer.bin"));
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(checkpoint(&sharded, 20).join("trainer_state.json")).unwrap()).unwrap();
    assert_eq!(state["config"]["zero"], 1, "the run was sharded");
    // Rank 0's output once, as one process prints it (the other rank prints nothing).
    for line in ["validation loss before training", "validation loss:", "(phi generate --model"] {
        assert_eq!(double.matches(line).count(), 1, "{line}: {double}");
        assert_eq!(single.matches(line).count(), 1, "{line}: {single}");
    }
    // Written once: one metrics line per step, the checkpoints one process writes.
    let listing = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d.join("checkpoints")).unwrap().map(|e| e.unwrap().file_name()).collect();
        v.sort();
        v
    };
    assert_eq!(listing(&one), listing(&two));
    assert!(two.join("loss.png").is_file());

    // The global batch at any number of processes: 3 micro-batches cannot be shared by 2.
    let odd = root.path().join("odd.toml");
    std::fs::write(&odd, OVER.replace("grad_accum = 4", "grad_accum = 3")).unwrap();
    let out = train(2, &data, &odd, &root.path().join("odd")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("grad_accum = 3") && err.contains("2 processes") && err.contains("rank"), "{err}");
}

/// The pid of rank `rank` among `mpirun`'s children (Open MPI starts the local ranks itself).
fn rank_pid(mpirun: u32, rank: usize) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let parent = status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|p| p.trim().parse::<u32>().ok());
        if parent != Some(mpirun) {
            continue;
        }
        let env = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if env.split(|&b| b == 0).any(|kv| kv == format!("OMPI_COMM_WORLD_RANK={rank}").as_bytes()) {
            return Some(pid);
        }
    }
    None
}

#[test]
fn a_rank_killed_mid_run_ends_the_job_naming_it_and_the_run_resumes_at_one_or_two_processes() {
    let (root, data, toml) = pretraining();
    let whole = root.path().join("whole");
    ok(&train(1, &data, &toml, &whole).output().unwrap());

    // Two processes with the AdamW state sharded, steps slowed to 300 ms; rank 1 gets SIGKILL
    // once step 10 is logged.
    let killed = root.path().join("killed");
    let mut sharded = train(2, &data, &toml, &killed);
    sharded.args(["--zero", "1"]);
    let mut job = started_until_step(sharded, &killed, 10);
    let (rank0, rank1) = (rank_pid(job.id(), 0).expect("rank 0 runs"), rank_pid(job.id(), 1).expect("rank 1 runs"));
    // SAFETY: kill(2) on a pid of ours.
    assert_eq!(unsafe { libc::kill(rank1 as i32, libc::SIGKILL) }, 0);
    let status = ended_within_a_minute(&mut job).expect("the job ends within 60 s of a rank's death");
    let out = job.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "{err}");
    assert!(err.contains("rank 1"), "the message names the rank: {err}");
    assert!(gone(rank0), "rank 0 ended too");
    let logged = metrics(&killed).len();
    assert!((10..20).contains(&logged), "{logged} steps logged");

    // Resumed from its last complete checkpoint (the gathered state), at 1 and at 2 processes,
    // sharded again or not: where the whole run ends.
    for (n, zero) in [(1, "0"), (2, "0"), (2, "1")] {
        let again = root.path().join(format!("again{n}-{zero}"));
        copy_dir(&killed, &again);
        let out = ok(&train(n, &data, &toml, &again).args(["--zero", zero]).output().unwrap());
        assert!(out.contains("resumed from the checkpoint at step"), "{out}");
        same_metrics(&whole, &again, 20);
        same_weights(&checkpoint(&whole, 20), &checkpoint(&again, 20), "model.safetensors");
    }
}

#[test]
fn a_rank_that_hangs_ends_the_job_once_a_collective_has_waited_past_the_timeout() {
    let (root, data, toml) = pretraining();
    let run = root.path().join("run");
    let mut slow = train(2, &data, &toml, &run);
    slow.env("PHI_COLLECTIVE_TIMEOUT_S", "3");
    let mut job = started_until_step(slow, &run, 3);
    // SIGSTOP: rank 1 neither dies nor answers, which no launcher notices.
    let rank1 = rank_pid(job.id(), 1).expect("rank 1 runs");
    // SAFETY: kill(2) on a pid of ours.
    assert_eq!(unsafe { libc::kill(rank1 as i32, libc::SIGSTOP) }, 0);
    if ended_within_a_minute(&mut job).is_none() {
        // SAFETY: as above; the test must not leave a stopped process behind.
        unsafe { libc::kill(rank1 as i32, libc::SIGKILL) };
        let _ = job.kill();
        panic!("the job still waits 60 s after rank 1 stopped");
    }
    let out = job.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("rank 0 of 2: a collective operation has waited 3 s"), "{err}");
    assert!(gone(rank1), "rank 1 ended too");

    // A timeout that is no number: refused by name before any step, and the folder's run is
    // left as it was.
    let before = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let out = train(2, &data, &toml, &run).env("PHI_COLLECTIVE_TIMEOUT_S", "soon").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("PHI_COLLECTIVE_TIMEOUT_S=\"soon\"") && err.contains("positive number of seconds"), "{err}");
    assert_eq!(std::fs::read_to_string(run.join("metrics.jsonl")).unwrap(), before);
}

#[test]
fn finetune_without_a_base_under_a_launcher_is_refused_rather_than_training_one_per_rank() {
    // In a fresh folder there is no default base (runs/phi-1): one process would train one
    // first; two processes are told to give --base.
    let cwd = tempfile::tempdir().unwrap();
    let out = launch(2, &["finetune", "--steps", "2", "--out", "ft"]).current_dir(cwd.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("rank") && err.contains("give --base"), "{err}");
    assert!(!cwd.path().join("runs").exists() && !cwd.path().join("ft/checkpoints").exists(), "nothing trained");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// phi3-tiny with the word tokenizer (see `cli.rs`), and SFT records over its words.
fn sft_base(root: &Path) -> (PathBuf, PathBuf) {
    let base = root.join("base");
    std::fs::create_dir_all(&base).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("phi3-tiny").join(f), base.join(f)).unwrap();
    }
    std::fs::copy(fixture("word-tokenizer-512").join("tokenizer.json"), base.join("tokenizer.json")).unwrap();
    let data = root.join("sft.jsonl");
    let lines: Vec<String> = (0..24).map(|i| format!(r#"{{"prompt": "the cat w{}", "response": "sat the cat w{}"}}"#, 10 + i, 40 + i % 5)).collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    (base, data)
}

#[test]
fn lora_sft_in_two_processes_is_the_one_process_run() {
    let root = tempfile::tempdir().unwrap();
    let (base, data) = sft_base(root.path());
    let run = |n: usize, zero: &str, out: &Path| {
        let mut c = launch(n, &["finetune", "--steps", "6", "--batch-size", "2", "--grad-accum", "2", "--lr", "1e-2", "--zero", zero]);
        c.arg("--base").arg(&base).arg("--data").arg(&data).arg("--out").arg(out);
        ok(&c.output().unwrap())
    };
    let one = root.path().join("one");
    run(1, "0", &one);
    for zero in ["0", "1"] {
        let two = root.path().join(format!("two-{zero}"));
        let printed = run(2, zero, &two);
        assert_eq!(printed.matches("held-out loss (response tokens)").count(), 1, "{printed}");
        same_metrics(&one, &two, 6);
        same_weights(&one.join("adapter"), &two.join("adapter"), "adapter_model.safetensors");
        same_weights(&one.join("merged"), &two.join("merged"), "model.safetensors");
    }
}

#[test]
fn lora_dpo_in_two_processes_is_the_one_process_run() {
    let root = tempfile::tempdir().unwrap();
    let adapter = fixture("lora-phi-tiny");
    let run = |n: usize, zero: &str, out: &Path| {
        let mut c = launch(n, &["dpo", "--steps", "4", "--warmup-steps", "1", "--batch-size", "1", "--grad-accum", "2", "--lr", "1e-3", "--zero", zero]);
        // The fixture's 4 pairs train; validated on them too (the held-out part would be empty).
        let pairs = fixture("dpo-phi-tiny/pairs.jsonl");
        c.arg("--policy").arg(fixture("phi-tiny")).arg("--adapter").arg(&adapter).arg("--data").arg(&pairs).arg("--val-data").arg(&pairs).arg("--out").arg(out);
        ok(&c.output().unwrap())
    };
    let one = root.path().join("one");
    run(1, "0", &one);
    for zero in ["0", "1"] {
        let two = root.path().join(format!("two-{zero}"));
        run(2, zero, &two);
        same_metrics(&one, &two, 4);
        same_weights(&one.join("adapter"), &two.join("adapter"), "adapter_model.safetensors");
        // TRL's reward metrics are the step's too.
        let margins = |d: &Path| -> Vec<f64> {
            std::fs::read_to_string(d.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["rewards/margins"].as_f64().unwrap()).collect()
        };
        for (a, b) in margins(&one).iter().zip(margins(&two)) {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1e-3), "rewards/margins {a} vs {b}");
        }
    }
}
