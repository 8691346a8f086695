//! The sandbox every script item runs in, driven through bubblewrap
//! (`bwrap`), where composer asks the kernel for namespaces (the one other
//! place: `overlay`'s private mount namespace for a stage thread).
//!
//! Why bubblewrap: it is a small, audited setuid-free helper that Debian,
//! Fedora and most CI images ship; it does the mount, pid, ipc, uts, net and
//! user namespace setup, `pivot_root`, `/proc` and `/dev`, and dies with its
//! parent. composer only describes the filesystem and the process.
//!
//! What a sandbox is:
//! - mount, pid, ipc and uts namespaces always; a net namespace with only
//!   loopback for `network: none`; as a non-root user, also a user
//!   namespace mapping the user to uid 0 (rootless).
//! - root: the stage's root directory, writable. For `variant: host` the
//!   host's system directories ([`HOST_DIRS`]) are bound read-only over it.
//! - fresh `/proc`, `/dev`, `/tmp` (tmpfs); `/tmp/build` bound from the
//!   stage's shared working directory; extra mounts on top in order.
//! - the environment is exactly the given one; the working directory is
//!   `/tmp/build`; the capabilities are a container runtime's default set.
//! - stdin is a pipe nothing is ever written to. A watcher looks for a
//!   process of the sandbox blocked reading it and stops the item at once:
//!   a prompt can never hang a build ([`Outcome::ReadStdin`]).
//! - stdout and stderr go, merged and in order, to a callback per line.
//! - secret files (the session key in `--sign-in-tree` mode) reach the
//!   sandbox through pipes into a tmpfs of its own: never the disk. This
//!   is this module's one `unsafe` block (a `pre_exec` dup2).

use std::fs;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::defs::schema::HOST_DIRS;

/// Capabilities kept inside the sandbox: a container runtime's defaults.
const CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "bubblewrap (`bwrap`) is needed to run build steps and was not found\n  install it: apt-get install bubblewrap (Debian/Ubuntu), dnf install bubblewrap (Fedora)"
    )]
    NoBwrap,
    #[error(
        "cannot create a sandbox on this machine: {detail}\n  composer needs Linux namespaces: run as root, or allow unprivileged user namespaces \
         (sysctl kernel.unprivileged_userns_clone=1; on Ubuntu also kernel.apparmor_restrict_unprivileged_userns=0)"
    )]
    Unsupported { detail: String },
    #[error("sandbox: {0}")]
    Io(#[from] io::Error),
}

/// A bind mount on top of the root.
#[derive(Clone, Debug)]
pub struct Mount {
    pub src: PathBuf,
    /// Absolute path inside the sandbox.
    pub dst: String,
    pub writable: bool,
}

/// Everything about one sandboxed process but the command.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The root directory (writable).
    pub root: PathBuf,
    /// Bind the host's system directories read-only over the root.
    pub host: bool,
    /// The stage's shared working directory, mounted at `/tmp/build`.
    pub build_dir: PathBuf,
    pub mounts: Vec<Mount>,
    pub network: bool,
    pub env: Vec<(String, String)>,
    /// Files that must never touch the disk (the session's private key in
    /// `--sign-in-tree` mode): each directory gets its own tmpfs inside the
    /// sandbox and each file is streamed into it through a pipe.
    pub secret_files: Vec<SecretFile>,
}

/// A file created inside the sandbox from memory.
#[derive(Clone)]
pub struct SecretFile {
    /// Absolute path inside the sandbox; its directory becomes a tmpfs.
    pub dst: String,
    pub content: std::sync::Arc<zeroize::Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretFile({}, {} bytes)", self.dst, self.content.len())
    }
}

/// The first fd number secret files are passed on in the child.
const SECRET_FD_BASE: i32 = 100;

/// How a script item ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failed {
        code: Option<i32>,
    },
    /// A process read from stdin and was stopped.
    ReadStdin {
        command: String,
    },
}

/// Checks once per process that `bwrap` exists and can create namespaces.
pub fn probe() -> Result<(), SandboxError> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    let r = PROBE.get_or_init(|| {
        let out = Command::new("bwrap")
            .args(base_args(false))
            .args(["--ro-bind", "/", "/", "true"])
            .stdin(Stdio::null())
            .output();
        match out {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(String::new()),
            Err(e) => Err(e.to_string()),
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        }
    });
    match r {
        Ok(()) => Ok(()),
        Err(d) if d.is_empty() => Err(SandboxError::NoBwrap),
        Err(d) => Err(SandboxError::Unsupported { detail: d.clone() }),
    }
}

fn base_args(network: bool) -> Vec<String> {
    let mut a: Vec<String> = [
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--hostname",
        "composer",
    ]
    .map(String::from)
    .to_vec();
    if !network {
        a.push("--unshare-net".into());
    }
    if !rustix::process::geteuid().is_root() {
        a.extend(["--unshare-user", "--uid", "0", "--gid", "0"].map(String::from));
    }
    a
}

fn bwrap_args(spec: &Spec) -> io::Result<Vec<String>> {
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let mut a = base_args(spec.network);
    a.extend(["--bind".into(), s(&spec.root), "/".into()]);
    if spec.host {
        for name in HOST_DIRS {
            let host = Path::new("/").join(name);
            let Ok(meta) = fs::symlink_metadata(&host) else {
                continue;
            };
            let dst = format!("/{name}");
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&host)?;
                // bwrap refuses to replace an existing entry: a previous
                // item of the stage may have created the link already.
                let _ = fs::remove_file(spec.root.join(name));
                a.extend(["--symlink".into(), s(&target), dst]);
            } else if meta.is_dir() {
                a.extend(["--ro-bind".into(), s(&host), dst]);
            }
        }
    }
    a.extend(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"].map(String::from));
    a.extend(["--bind".into(), s(&spec.build_dir), "/tmp/build".into()]);
    for m in &spec.mounts {
        let flag = if m.writable { "--bind" } else { "--ro-bind" };
        a.extend([flag.into(), s(&m.src), m.dst.clone()]);
    }
    for (i, f) in spec.secret_files.iter().enumerate() {
        let dir = Path::new(&f.dst)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into());
        a.extend(["--tmpfs".into(), dir]);
        a.extend([
            "--file".into(),
            (SECRET_FD_BASE + i as i32).to_string(),
            f.dst.clone(),
        ]);
    }
    a.push("--cap-drop".into());
    a.push("ALL".into());
    for c in CAPS {
        a.extend(["--cap-add".into(), c.into()]);
    }
    a.push("--clearenv".into());
    for (k, v) in &spec.env {
        a.extend(["--setenv".into(), k.clone(), v.clone()]);
    }
    a.extend(["--chdir".into(), "/tmp/build".into()]);
    Ok(a)
}

/// Runs `argv` in the sandbox; every output line goes to `on_line`.
pub fn run(
    spec: &Spec,
    argv: &[String],
    on_line: &mut dyn FnMut(&str),
) -> Result<Outcome, SandboxError> {
    probe()?;
    let (stdin_r, stdin_w) = io::pipe()?;
    let stdin_ino = rustix::fs::fstat(&stdin_r).map_err(io::Error::from)?.st_ino;
    let (out_r, out_w) = io::pipe()?;
    let err_w = out_w.try_clone()?;
    let mut cmd = Command::new("bwrap");
    cmd.args(bwrap_args(spec)?)
        .arg("--")
        .args(argv)
        .stdin(Stdio::from(stdin_r))
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w));
    // Secret files: written into pipes here (a key is far below the pipe
    // buffer), read by bwrap into the sandbox's tmpfs. The read ends stay
    // close-on-exec in this process and are duplicated onto fixed numbers
    // only in this child, so no other sandbox started meanwhile sees them.
    let mut secret_pipes = Vec::new();
    for f in &spec.secret_files {
        let (r, mut w) = io::pipe()?;
        std::io::Write::write_all(&mut w, &f.content)?;
        drop(w);
        secret_pipes.push(r);
    }
    if !secret_pipes.is_empty() {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let raw: Vec<i32> = secret_pipes.iter().map(|p| p.as_raw_fd()).collect();
        // SAFETY: the closure runs in the forked child before exec and only
        // calls dup2, which is async-signal-safe; it touches no memory but
        // the captured integers.
        unsafe {
            cmd.pre_exec(move || {
                for (i, fd) in raw.iter().enumerate() {
                    if libc::dup2(*fd, SECRET_FD_BASE + i as i32) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    let spawned = cmd.spawn();
    // The command holds the parent's copies of the output pipe's write
    // ends: drop it so the reader sees end-of-file when the child exits.
    drop(cmd);
    drop(secret_pipes);
    let mut child = spawned.map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => SandboxError::NoBwrap,
        _ => SandboxError::Io(e),
    })?;

    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(out_r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    if tx
                        .send(line.trim_end_matches(['\n', '\r']).to_string())
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });

    let outcome = watch(&mut child, stdin_ino, &rx, on_line)?;
    drop(stdin_w);
    let _ = reader.join();
    for line in rx.try_iter() {
        on_line(&line);
    }
    Ok(outcome)
}

/// Waits for the child, passing output on and watching for stdin readers.
fn watch(
    child: &mut Child,
    stdin_ino: u64,
    rx: &std::sync::mpsc::Receiver<String>,
    on_line: &mut dyn FnMut(&str),
) -> Result<Outcome, SandboxError> {
    let mut ticks = 0u32;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                on_line(&line);
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some(status) = child.try_wait()? {
            return Ok(if status.success() {
                Outcome::Success
            } else {
                Outcome::Failed {
                    code: status.code(),
                }
            });
        }
        ticks += 1;
        if ticks.is_multiple_of(2)
            && let Some(command) = stdin_reader(stdin_ino)
        {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Outcome::ReadStdin { command });
        }
    }
}

/// The command line of a process blocked reading the pipe `ino` as its
/// stdin, if there is one.
fn stdin_reader(ino: u64) -> Option<String> {
    let want = format!("pipe:[{ino}]");
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry.file_name();
        let Some(pid) = pid
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let proc_dir = Path::new("/proc").join(pid);
        let Ok(link) = fs::read_link(proc_dir.join("fd/0")) else {
            continue;
        };
        if link.as_os_str() != want.as_str() {
            continue;
        }
        if reads_fd0(&proc_dir) {
            let cmd = fs::read(proc_dir.join("cmdline")).unwrap_or_default();
            let cmd: Vec<String> = cmd
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            return Some(cmd.join(" "));
        }
    }
    None
}

/// Whether the process sits in `read`, `readv` or `pread` on fd 0 (per
/// /proc/PID/syscall: the syscall number, then the first argument). Only
/// fd 0 counts: a process blocked on another pipe (tar reading from xz) is
/// not reading stdin.
fn reads_fd0(proc_dir: &Path) -> bool {
    // x86_64: read 0, pread64 17, readv 19; aarch64: read 63, readv 65, pread64 67.
    let reads: &[&str] = if cfg!(target_arch = "x86_64") {
        &["0", "17", "19"]
    } else {
        &["63", "65", "67"]
    };
    let s = fs::read_to_string(proc_dir.join("syscall")).unwrap_or_default();
    let mut it = s.split_whitespace();
    it.next().is_some_and(|nr| reads.contains(&nr)) && it.next() == Some("0x0")
}
