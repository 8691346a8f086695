//! What composer installed on the node: `<state-dir>/installed.json`, one
//! entry per image and kernel release, and the status report built from it
//! and the running kernel (`composer kmod status`).
//!
//! ```json
//! {"version": 1, "images": [{"name": "hello-kmod", "reference": "…", "digest": "sha256:…",
//!   "release": "6.1.0-57-cloud-amd64", "modprobe_dir": "/",
//!   "dir": "/lib/modules/6.1.0-57-cloud-amd64/updates/composer/hello-kmod",
//!   "modules": [{"name": "hello_pcie", "path": "…/hello_pcie.ko", "depends": [], "signer": "CN=…"}],
//!   "firmware_dir": "/lib/firmware/updates/6.1.0-57-cloud-amd64", "firmware": ["…"]}]}
//! ```
//!
//! Invariants: the file is replaced by rename, never written in place
//! ([`write_atomically`]); paths in it are node paths; an install or
//! removal holds [`lock`] while it reads and writes it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::host::{TaintFlag, decode_taint};
use super::snapshot::{Snapshot, State as SnapState};
use super::{Host, NodeError, io};

pub const STATE_FILE: &str = "installed.json";
const VERSION: u32 = 1;

/// One installed module.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledModule {
    /// The kernel's name for it (`-` as `_`), what modprobe takes.
    pub name: String,
    /// Where the file is (node path).
    pub path: PathBuf,
    /// Its `depends=` names.
    pub depends: Vec<String>,
    /// The certificate its signature verified against, if any did.
    pub signer: Option<String>,
}

/// One installed image, for one kernel release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    pub name: String,
    /// The reference as given (`${KERNEL_FULL_VERSION}` kept).
    pub reference: String,
    /// The reference read: the release substituted, a path made absolute.
    pub resolved: String,
    /// `sha256:<hex>` of the image's manifest.
    pub digest: String,
    pub release: String,
    /// `KMM kmod image`, `Talos system extension` or `image`.
    pub layout: String,
    /// What `modprobe -d` takes: `/` when the modules are in the system's
    /// `/lib/modules/<release>`, else composer's own directory.
    pub modprobe_dir: PathBuf,
    /// The image's module directory (node path).
    pub dir: PathBuf,
    /// In load order: each after the image's modules it depends on.
    pub modules: Vec<InstalledModule>,
    /// Where its firmware went (node path), when it has any.
    pub firmware_dir: Option<PathBuf>,
    /// Firmware files installed (node paths).
    pub firmware: Vec<PathBuf>,
}

impl Installed {
    /// The `modules.dep` modprobe reads for these modules.
    pub fn modules_dep(&self) -> PathBuf {
        self.modprobe_dir
            .join("lib/modules")
            .join(&self.release)
            .join("modules.dep")
    }

    /// The arguments modprobe needs before a module name: `-d DIR` for
    /// composer's own directory, none for the system's.
    pub fn modprobe_args(&self) -> Vec<String> {
        if self.modprobe_dir == Path::new("/") {
            Vec::new()
        } else {
            vec!["-d".into(), self.modprobe_dir.display().to_string()]
        }
    }
}

/// `installed.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub images: Vec<Installed>,
}

impl State {
    /// The host path of the state file under the node's `state_dir`.
    pub fn path(host: &Host, state_dir: &Path) -> PathBuf {
        host.path(state_dir).join(STATE_FILE)
    }

    /// Reads the state (none yet: empty).
    pub fn read(host: &Host, state_dir: &Path) -> Result<State, NodeError> {
        let path = State::path(host, state_dir);
        let bytes = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            r => r.map_err(io(&path))?,
        };
        let state: State = serde_json::from_slice(&bytes).map_err(|e| NodeError::State {
            path: path.clone(),
            message: format!("not composer's installed.json: {e}"),
        })?;
        if state.version != VERSION {
            return Err(NodeError::State {
                path,
                message: format!(
                    "version {} is not {VERSION}, the one this composer reads",
                    state.version
                ),
            });
        }
        Ok(state)
    }

    /// The bytes of the file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = self.clone();
        s.version = VERSION;
        s.images
            .sort_by(|a, b| (&a.release, &a.name).cmp(&(&b.release, &b.name)));
        let mut out = serde_json::to_vec_pretty(&s).expect("the state serializes");
        out.push(b'\n');
        out
    }

    /// The entry of `name` for `release`.
    pub fn find(&self, release: &str, name: &str) -> Option<&Installed> {
        self.images
            .iter()
            .find(|i| i.release == release && i.name == name)
    }
}

/// Writes `path` whole: a temporary file beside it, synced, renamed over.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    tmp.write_all(bytes).map_err(io(path))?;
    tmp.as_file().sync_all().map_err(io(path))?;
    tmp.persist(path).map_err(|e| NodeError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// An exclusive lock on the state directory, held while it lives: an
/// `flock` on `<dir>/lock`, or, on a kernel built without file locking
/// (`CONFIG_FILE_LOCKING` off: `flock` answers ENOSYS, as on minimal
/// kernels), the file `<dir>/lock.pid` created exclusively, holding the
/// owner's pid, and removed when the lock is dropped; one whose process is
/// gone is taken over.
pub struct Lock {
    _file: std::fs::File,
    pid_file: Option<PathBuf>,
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some(p) = &self.pid_file {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Waits for the lock of `dir` (a host path, created when missing).
pub fn lock(dir: &Path) -> Result<Lock, NodeError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive) {
        Ok(()) => Ok(Lock {
            _file: file,
            pid_file: None,
        }),
        Err(rustix::io::Errno::NOSYS) => {
            let pid_file = pid_lock(&dir.join("lock.pid"))?;
            Ok(Lock {
                _file: file,
                pid_file: Some(pid_file),
            })
        }
        Err(e) => Err(NodeError::Io {
            path,
            source: e.into(),
        }),
    }
}

/// Creates `path` exclusively with this process's pid, waiting while
/// another live process holds it and replacing it when its process is
/// gone.
fn pid_lock(path: &Path) -> Result<PathBuf, NodeError> {
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(mut f) => {
                use std::io::Write;
                f.write_all(std::process::id().to_string().as_bytes())
                    .map_err(io(path))?;
                return Ok(path.to_path_buf());
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = std::fs::read_to_string(path).unwrap_or_default();
                let alive = owner
                    .trim()
                    .parse::<u32>()
                    .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                if alive {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                } else {
                    // Its owner is gone (or never wrote its pid): stale.
                    let _ = std::fs::remove_file(path);
                }
            }
            Err(e) => return Err(io(path)(e)),
        }
    }
}

/// The node's modules and kernel, for `composer kmod status`.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub running_release: Option<String>,
    /// `true`: the kernel refuses modules not signed by a key it trusts;
    /// `null`: it has no module signatures.
    pub sig_enforce: Option<bool>,
    pub tainted: Option<u64>,
    pub taint_flags: Vec<TaintFlag>,
    pub images: Vec<ImageStatus>,
}

/// One installed image and the state of its modules.
#[derive(Clone, Debug, Serialize)]
pub struct ImageStatus {
    pub name: String,
    pub reference: String,
    pub digest: String,
    pub release: String,
    /// Installed for the running kernel.
    pub running: bool,
    pub modprobe_dir: PathBuf,
    pub dir: PathBuf,
    pub firmware_dir: Option<PathBuf>,
    pub firmware: Vec<PathBuf>,
    pub modules: Vec<ModuleStatus>,
}

/// One module's state.
#[derive(Clone, Debug, Serialize)]
pub struct ModuleStatus {
    pub name: String,
    pub path: PathBuf,
    /// The file is where it was installed.
    pub present: bool,
    /// `loaded`, `loading`, `unloading`, `built-in`, `not loaded`, or
    /// `other kernel` for a release that is not running.
    pub state: String,
    pub used_by: Vec<String>,
    /// The module's taint letters when loaded (`/sys/module/NAME/taint`).
    pub taint: Option<String>,
    pub signer: Option<String>,
}

/// One module's state in `snap` (none: another kernel runs).
fn module_status(host: &Host, snap: Option<&Snapshot>, m: &InstalledModule) -> ModuleStatus {
    let (state, loaded) = match snap.map(|s| s.state(&m.name)) {
        None => ("other kernel", None),
        Some(SnapState::Loaded(l)) => (l.state_word(), Some(l)),
        Some(SnapState::Builtin) => ("built-in", None),
        Some(SnapState::Absent) => ("not loaded", None),
    };
    ModuleStatus {
        name: m.name.clone(),
        path: m.path.clone(),
        present: host.path(&m.path).is_file(),
        state: state.to_string(),
        used_by: loaded
            .map(|l| l.holders.iter().cloned().collect())
            .unwrap_or_default(),
        taint: loaded.map(|l| l.taint.clone()),
        signer: m.signer.clone(),
    }
}

/// The status of everything installed under `state_dir`.
pub fn status(host: &Host, state_dir: &Path) -> Result<Status, NodeError> {
    let state = State::read(host, state_dir)?;
    let running = host.running_release().ok();
    let enforcement = host.enforcement()?;
    let snapshot = match &running {
        Some(r) => Some(host.snapshot(r)?),
        None => None,
    };
    let tainted = host.tainted();
    let images = state
        .images
        .iter()
        .map(|i| {
            let is_running = running.as_deref() == Some(i.release.as_str());
            let snap = snapshot.as_ref().filter(|_| is_running);
            let modules = i
                .modules
                .iter()
                .map(|m| module_status(host, snap, m))
                .collect();
            ImageStatus {
                name: i.name.clone(),
                reference: i.reference.clone(),
                digest: i.digest.clone(),
                release: i.release.clone(),
                running: is_running,
                modprobe_dir: i.modprobe_dir.clone(),
                dir: i.dir.clone(),
                firmware_dir: i.firmware_dir.clone(),
                firmware: i.firmware.clone(),
                modules,
            }
        })
        .collect();
    Ok(Status {
        running_release: running,
        sig_enforce: match enforcement {
            super::host::Enforcement::Enforced => Some(true),
            super::host::Enforcement::NotEnforced => Some(false),
            super::host::Enforcement::Unsupported => None,
        },
        taint_flags: tainted.map(decode_taint).unwrap_or_default(),
        tainted,
        images,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_lock_whose_owner_is_gone_is_taken_over_and_removed_when_dropped() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("lock.pid");
        // No process has this pid (above the kernel's pid_max limit).
        std::fs::write(&path, "4194305").unwrap();
        let taken = pid_lock(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&taken).unwrap(),
            std::process::id().to_string()
        );
        let lock = Lock {
            _file: std::fs::File::open(&taken).unwrap(),
            pid_file: Some(taken.clone()),
        };
        drop(lock);
        assert!(!taken.exists());
    }
}
