//! The Linux isolation of one run: what the harness prepares before `fork`, and what the child
//! does between `fork` and `exec`.
//!
//! ```text
//! harness ──fork──▶ supervisor: setsid; as root, drop to the run's own unprivileged uid;
//!                   unshare(user, pid, net, ipc); identity uid/gid maps; parent-death signal
//!                     └──fork──▶ program, pid 1 of the new pid namespace: parent-death signal;
//!                                rlimits (each read back); Landlock; seccomp; exec
//! ```
//! The supervisor reports the program's pid, waits for it and reports its wait status on a pipe.
//! When the program (the namespace's init) exits, the kernel kills every process left in its pid
//! namespace before the exit is complete, so nothing it started survives it, whatever it did
//! with sessions or its pipes. At the timeout the harness kills the program and waits for the
//! supervisor; should the harness die instead, the parent-death signals take both.
//!
//! Everything after `fork` runs in a copy of a possibly multi-threaded process, where another
//! thread may have held the allocator's lock: the child only makes system calls on data built
//! before the fork (paths, maps, the BPF program, the Landlock ruleset), and allocates nothing.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreated,
    RulesetCreatedAttr, RulesetStatus, Scope, path_beneath_rules,
};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

use crate::{Limits, SandboxError};

#[cfg(target_env = "gnu")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type Resource = libc::c_int;

/// Steps of the child's set-up, reported with their errno when one fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Stage {
    Setsid = 1,
    Setgroups,
    Setgid,
    Setuid,
    Unshare,
    SetgroupsDeny,
    UidMap,
    GidMap,
    DeathSignal,
    Fork,
    Landlock,
    LandlockNotEnforced,
    Seccomp,
    Witness,
    /// `Rlimit + i`: the i-th limit of [`rlimits`].
    Rlimit = 32,
}

/// The resource limits of a run, in the order [`Stage::Rlimit`] counts them.
pub(crate) fn rlimits(l: &Limits) -> [(Resource, &'static str, u64); 6] {
    [
        (libc::RLIMIT_CPU, "RLIMIT_CPU (cpu_seconds)", l.cpu_seconds),
        (libc::RLIMIT_AS, "RLIMIT_AS (memory_bytes)", l.memory_bytes),
        (libc::RLIMIT_FSIZE, "RLIMIT_FSIZE (file_size_bytes)", l.file_size_bytes),
        (libc::RLIMIT_NOFILE, "RLIMIT_NOFILE (open_files)", l.open_files),
        (libc::RLIMIT_NPROC, "RLIMIT_NPROC (processes)", l.processes),
        (libc::RLIMIT_CORE, "RLIMIT_CORE", 0),
    ]
}

pub(crate) fn describe_stage(code: u8, limits: &Limits) -> String {
    const NAMES: [&str; 15] = [
        "?",
        "setsid()",
        "setgroups([]) (dropping root's groups)",
        "setresgid() to the run's unprivileged gid",
        "setresuid() to the run's unprivileged uid",
        "unshare(CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC) (user namespaces may be disabled: kernel.unprivileged_userns_clone, user.max_user_namespaces, or a container's seccomp profile)",
        "writing /proc/self/setgroups",
        "writing /proc/self/uid_map",
        "writing /proc/self/gid_map",
        "prctl(PR_SET_PDEATHSIG)",
        "fork() of the program inside its pid namespace",
        "landlock_restrict_self()",
        "Landlock (the kernel enforced none of the requested filesystem rules)",
        "installing the seccomp filter",
        "dup2() of the witness's pipes onto descriptors 3 and 4",
    ];
    let lims = rlimits(limits);
    match code {
        c if (c as usize) < NAMES.len() => NAMES[c as usize].to_string(),
        c if c >= Stage::Rlimit as u8 && ((c - Stage::Rlimit as u8) as usize) < lims.len() => {
            let (_, name, v) = lims[(c - Stage::Rlimit as u8) as usize];
            format!("setting {name} to {v} (set and read back)")
        }
        c => format!("set-up step {c}"),
    }
}

/// The Landlock ABI version the kernel offers (0: none).
pub(crate) fn landlock_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: the documented version query: null attributes, size 0, the version flag.
    let v = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<u8>(), 0usize, LANDLOCK_CREATE_RULESET_VERSION) };
    v.max(0) as i32
}

/// Writes may only go to `dir` (and /dev/null); reads only to `dir`, `read_roots` and the
/// random and zero devices; TCP bind/connect are refused where the kernel can mediate them,
/// and so are signals and abstract unix sockets to anything outside the sandbox.
pub(crate) fn landlock_ruleset(dir: &Path, read_roots: &[std::path::PathBuf]) -> Result<RulesetCreated, SandboxError> {
    let err = |e: &dyn std::fmt::Display| SandboxError::Unavailable(format!("building the Landlock ruleset for {}: {e}", dir.display()));
    // The newest ABI this code knows; older kernels get what they support (best effort), and the
    // harness reports which ABI was in force.
    let abi = ABI::V6;
    let all = AccessFs::from_all(abi);
    Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .and_then(|r| r.handle_access(AccessNet::from_all(abi)))
        .and_then(|r| r.scope(Scope::from_all(abi)))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(read_roots, AccessFs::from_read(abi))))
        .and_then(|r| r.add_rules(path_beneath_rules(["/dev/urandom", "/dev/random", "/dev/zero"], AccessFs::ReadFile)))
        .and_then(|r| r.add_rules(path_beneath_rules(["/dev/null"], AccessFs::ReadFile | AccessFs::WriteFile)))
        .map_err(|e| err(&e))
        .and_then(|r| {
            let fd = PathFd::new(dir).map_err(|e| err(&e))?;
            r.add_rule(PathBeneath::new(fd, all)).map_err(|e| err(&e))
        })
}

/// The newest system call number reviewed for this filter (`mseal`, Linux 6.10). Numbers from
/// here on are shared by every architecture; anything newer is refused with ENOSYS until it has
/// been looked at (Linux 6.13–6.17 added `setxattrat`, `removexattrat` and `file_setattr`, which
/// would reach around the metadata rules below), and so is the x32 numbering (bit 30).
const FIRST_UNREVIEWED_SYSCALL: u32 = 463;
/// `fchmodat2` (Linux 6.6): the same number on every architecture.
const SYS_FCHMODAT2: i64 = 452;

/// System calls a test program has no use for, refused with EPERM: sockets of every family and
/// socket pairs (a datagram socket from a pair can `sendto` any pathname unix socket, which
/// neither the empty network namespace nor Landlock stops), tracing other processes, mounting,
/// namespaces (also through `clone` flags; `clone3`, whose flags seccomp cannot read, answers
/// ENOSYS so that libc falls back to `clone`), BPF, perf, keyrings, io_uring (its operations
/// bypass seccomp), memfd (memory outside the address-space limit), path truncation (which
/// Landlock mediates only from ABI 3 on), module and kexec loading, reboot, swap, file handles,
/// and changes of permissions, owners, times, extended attributes and inode flags — Landlock
/// does not mediate those, and a harness run by a normal user would leave that user's own files
/// open to them.
pub(crate) fn seccomp_program() -> Result<BpfProgram, SandboxError> {
    use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
    #[cfg(target_arch = "x86_64")]
    let arch = TargetArch::x86_64;
    #[cfg(target_arch = "aarch64")]
    let arch = TargetArch::aarch64;
    #[cfg(target_arch = "riscv64")]
    let arch = TargetArch::riscv64;
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64")))]
    return Err(SandboxError::Unavailable(format!("no seccomp filter for {}", std::env::consts::ARCH)));
    let err = |e: &dyn std::fmt::Display| SandboxError::Unavailable(format!("seccomp filter: {e}"));
    let mut denied = vec![
        libc::SYS_socket,
        libc::SYS_socketpair,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_memfd_create,
        libc::SYS_truncate,
        libc::SYS_userfaultfd,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_fchmod,
        libc::SYS_fchmodat,
        SYS_FCHMODAT2,
        libc::SYS_fchown,
        libc::SYS_fchownat,
        libc::SYS_utimensat,
        libc::SYS_setxattr,
        libc::SYS_lsetxattr,
        libc::SYS_fsetxattr,
        libc::SYS_removexattr,
        libc::SYS_lremovexattr,
        libc::SYS_fremovexattr,
    ];
    // The legacy path-based forms, which newer architectures do not have.
    #[cfg(target_arch = "x86_64")]
    denied.extend([libc::SYS_chmod, libc::SYS_chown, libc::SYS_lchown, libc::SYS_utime, libc::SYS_utimes, libc::SYS_futimesat]);
    let mut rules: std::collections::BTreeMap<i64, Vec<SeccompRule>> = denied.into_iter().map(|nr| (nr, vec![])).collect();
    // Inode flags (immutable, append-only, nodump, …) set through ioctl on any readable file.
    const FS_IOC_SETFLAGS: u64 = 0x4008_6602;
    const FS_IOC32_SETFLAGS: u64 = 0x4004_6602;
    const FS_IOC_FSSETXATTR: u64 = 0x401c_5820;
    let ioctl = [FS_IOC_SETFLAGS, FS_IOC32_SETFLAGS, FS_IOC_FSSETXATTR]
        .into_iter()
        .map(|cmd| SeccompRule::new(vec![SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, cmd).map_err(|e| err(&e))?]).map_err(|e| err(&e)))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctl);
    // New namespaces through clone's flags (its first argument on these architectures).
    let namespaces = [
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWNS,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWCGROUP,
    ];
    let clone = namespaces
        .into_iter()
        .map(|f| {
            let f = f as u64;
            SeccompRule::new(vec![SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(f), f).map_err(|e| err(&e))?]).map_err(|e| err(&e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone);
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch).map_err(|e| err(&e))?;
    let program: BpfProgram = filter.try_into().map_err(|e| err(&e))?;
    Ok([enosys_prefix(), program].concat())
}

/// Instructions run before seccompiler's program: `clone3` and every system call number from
/// [`FIRST_UNREVIEWED_SYSCALL`] on (x32 included) fail with ENOSYS. Refusing only, so it is
/// safe before the architecture check that follows.
fn enosys_prefix() -> BpfProgram {
    use seccompiler::sock_filter;
    // BPF_LD | BPF_W | BPF_ABS (the first two are 0).
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JEQ_K: u16 = 0x05 | 0x10;
    const BPF_JGE_K: u16 = 0x05 | 0x30;
    const BPF_RET_K: u16 = 0x06;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    vec![
        // seccomp_data.nr is at offset 0.
        sock_filter { code: BPF_LD_W_ABS, jt: 0, jf: 0, k: 0 },
        sock_filter { code: BPF_JEQ_K, jt: 1, jf: 0, k: libc::SYS_clone3 as u32 },
        sock_filter { code: BPF_JGE_K, jt: 0, jf: 1, k: FIRST_UNREVIEWED_SYSCALL },
        sock_filter { code: BPF_RET_K, jt: 0, jf: 0, k: SECCOMP_RET_ERRNO | libc::ENOSYS as u32 },
    ]
}

/// Everything the child needs, built before the fork.
pub(crate) struct Plan {
    /// Root only: the run's own unprivileged uid and gid.
    pub drop_to: Option<(libc::uid_t, libc::gid_t)>,
    /// Namespaces, Landlock and seccomp (false: `--no-sandbox`, limits and process group only).
    pub isolate: bool,
    pub uid_map: Vec<u8>,
    pub gid_map: Vec<u8>,
    pub rlimits: Vec<(Resource, u64)>,
    pub ruleset: Option<RulesetCreated>,
    pub seccomp: BpfProgram,
    /// Write end of the report pipe (close-on-exec).
    pub report: OwnedFd,
    /// The harness's pid: the supervisor must still be its child after arming the death signal.
    pub harness_pid: libc::pid_t,
    /// A witnessed run: the nonce pipe's read end and the report pipe's write end, which the
    /// program gets as descriptors 3 and 4 (both numbered 10 or above here, as is `report`).
    pub witness: Option<(OwnedFd, OwnedFd)>,
}

const SETGROUPS: &[u8] = b"/proc/self/setgroups\0";
const UID_MAP: &[u8] = b"/proc/self/uid_map\0";
const GID_MAP: &[u8] = b"/proc/self/gid_map\0";

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// Reports a failed stage on the report pipe and turns it into the error `pre_exec` returns.
fn fail(fd: RawFd, stage: u8, err: i32) -> io::Error {
    let e = err.to_ne_bytes();
    let msg = [b'E', stage, e[0], e[1], e[2], e[3]];
    // SAFETY: writes a stack buffer to a pipe this process owns.
    unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
    io::Error::from_raw_os_error(err)
}

fn write_file(path: &[u8], data: &[u8]) -> Result<(), i32> {
    // SAFETY: `path` is NUL-terminated; the buffer outlives the calls.
    unsafe {
        let fd = libc::open(path.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(errno());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let e = errno();
        libc::close(fd);
        if n != data.len() as isize { Err(e) } else { Ok(()) }
    }
}

/// Closes every descriptor but `keep` (the supervisor must not hold the program's pipes, nor
/// std's exec-status pipe, or `spawn` would wait for it).
fn close_all_but(keep: RawFd) {
    // SAFETY: closing descriptors of this process; close_range ignores unused numbers.
    unsafe {
        let lo = if keep > 0 { libc::syscall(libc::SYS_close_range, 0u32, keep as u32 - 1, 0u32) } else { 0 };
        let hi = libc::syscall(libc::SYS_close_range, keep as u32 + 1, u32::MAX, 0u32);
        if lo != 0 || hi != 0 {
            // Kernels before 5.9 have no close_range: one by one.
            for fd in 0..65536 {
                if fd != keep {
                    libc::close(fd);
                }
            }
        }
    }
}

impl Plan {
    /// The code between fork and exec (see the module docs). Returns only in the process that
    /// is to exec the program.
    pub(crate) fn enter(&mut self) -> io::Result<()> {
        let fd = self.report.as_raw_fd();
        // SAFETY: system calls on buffers built before the fork, no allocation; see module docs.
        unsafe {
            if libc::setsid() < 0 {
                return Err(fail(fd, Stage::Setsid as u8, errno()));
            }
            if self.isolate {
                if let Some((uid, gid)) = self.drop_to {
                    if libc::setgroups(0, std::ptr::null()) != 0 {
                        return Err(fail(fd, Stage::Setgroups as u8, errno()));
                    }
                    if libc::setresgid(gid, gid, gid) != 0 {
                        return Err(fail(fd, Stage::Setgid as u8, errno()));
                    }
                    if libc::setresuid(uid, uid, uid) != 0 {
                        return Err(fail(fd, Stage::Setuid as u8, errno()));
                    }
                    // The uid change made the process non-dumpable, which hands its /proc files
                    // to root: it could not write its own uid_map below.
                    if libc::prctl(libc::PR_SET_DUMPABLE, 1) != 0 {
                        return Err(fail(fd, Stage::Setuid as u8, errno()));
                    }
                }
                if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWPID | libc::CLONE_NEWNET | libc::CLONE_NEWIPC) != 0 {
                    return Err(fail(fd, Stage::Unshare as u8, errno()));
                }
                if let Err(e) = write_file(SETGROUPS, b"deny") {
                    return Err(fail(fd, Stage::SetgroupsDeny as u8, e));
                }
                if let Err(e) = write_file(UID_MAP, &self.uid_map) {
                    return Err(fail(fd, Stage::UidMap as u8, e));
                }
                if let Err(e) = write_file(GID_MAP, &self.gid_map) {
                    return Err(fail(fd, Stage::GidMap as u8, e));
                }
                // Armed after the credential changes above, which clear it.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() != self.harness_pid {
                    return Err(fail(fd, Stage::DeathSignal as u8, errno()));
                }
                let pid = libc::fork();
                if pid < 0 {
                    return Err(fail(fd, Stage::Fork as u8, errno()));
                }
                if pid > 0 {
                    self.supervise(pid);
                }
                // The program: pid 1 of the new namespace. Its parent is the supervisor.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(fail(fd, Stage::DeathSignal as u8, errno()));
                }
            }
            for (i, &(res, v)) in self.rlimits.iter().enumerate() {
                let want = libc::rlimit { rlim_cur: v, rlim_max: v };
                let mut got = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                if libc::setrlimit(res, &want) != 0 {
                    return Err(fail(fd, Stage::Rlimit as u8 + i as u8, errno()));
                }
                if libc::getrlimit(res, &mut got) != 0 || got.rlim_cur != v || got.rlim_max != v {
                    return Err(fail(fd, Stage::Rlimit as u8 + i as u8, libc::EINVAL));
                }
            }
            // Descriptors that other code in the harness opened without close-on-exec (a file,
            // a socket) must not reach the program: mark everything above stdio close-on-exec
            // (not closed: std's exec-status pipe must last until the exec itself).
            if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) != 0 {
                for fd in 3..4096 {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            if self.isolate {
                let ruleset = self.ruleset.take().expect("a ruleset per run");
                match ruleset.restrict_self() {
                    Ok(status) if status.ruleset == RulesetStatus::NotEnforced => {
                        return Err(fail(fd, Stage::LandlockNotEnforced as u8, libc::ENOSYS));
                    }
                    Ok(_) => {}
                    Err(_) => return Err(fail(fd, Stage::Landlock as u8, errno())),
                }
                if seccompiler::apply_filter(&self.seccomp).is_err() {
                    return Err(fail(fd, Stage::Seccomp as u8, errno()));
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(fail(fd, Stage::DeathSignal as u8, errno()));
                }
            }
            // The witness's pipes on 3 and 4 (dup2 clears close-on-exec on the copies). Last:
            // any descriptor of the set-up, the Landlock ruleset's among them, may be 3 or 4
            // until then (restrict_self has closed it by now).
            if let Some((nonce, report)) = &self.witness {
                if libc::dup2(nonce.as_raw_fd(), 3) != 3 || libc::dup2(report.as_raw_fd(), 4) != 4 {
                    return Err(fail(fd, Stage::Witness as u8, errno()));
                }
            }
        }
        Ok(())
    }

    /// The supervisor: waits for the program, reports its raw wait status, exits with a
    /// shell-style code. Never returns.
    fn supervise(&self, pid: libc::pid_t) -> ! {
        let fd = self.report.as_raw_fd();
        close_all_but(fd);
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid on our own child, stack buffers written to our pipe, then _exit.
        unsafe {
            // The program's pid as the harness sees it: at the timeout the harness kills the
            // program itself, and this wait returns only once its namespace is empty.
            let p = pid.to_ne_bytes();
            let msg = [b'P', p[0], p[1], p[2], p[3]];
            libc::write(fd, msg.as_ptr().cast(), msg.len());
            loop {
                let r = libc::waitpid(pid, &mut status, 0);
                if r == pid {
                    break;
                }
                if r < 0 && errno() != libc::EINTR {
                    libc::_exit(125);
                }
            }
            let s = status.to_ne_bytes();
            let msg = [b'S', s[0], s[1], s[2], s[3]];
            libc::write(fd, msg.as_ptr().cast(), msg.len());
            if libc::WIFEXITED(status) {
                libc::_exit(libc::WEXITSTATUS(status));
            }
            libc::_exit(128 + libc::WTERMSIG(status));
        }
    }
}

/// `"<id> <id> 1\n"`: the run's uid (or gid) maps to itself in its user namespace, so it keeps no
/// capability once it execs.
pub(crate) fn identity_map(id: u32) -> Vec<u8> {
    format!("{id} {id} 1\n").into_bytes()
}
