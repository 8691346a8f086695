//! The node as the kernel shows it: every path composer reads or writes on
//! the node goes through [`Host`], whose `root` stands for `/` (the real
//! `/` on a node, a directory in tests or for a chroot).
//!
//! - the running kernel's release: `/proc/sys/kernel/osrelease` (what
//!   `uname -r` prints), else `uname(2)` when the root is `/`;
//! - whether it enforces module signatures:
//!   `/sys/module/module/parameters/sig_enforce` (`Y`/`N`; absent on a
//!   kernel built without module signatures);
//! - its taint (`/proc/sys/kernel/tainted`), decoded into the kernel's
//!   letters ([`decode_taint`], `kernel/panic.c`'s `taint_flags`);
//! - its modules, read once into a [`Snapshot`] ([`Host::snapshot`]):
//!   `/proc/modules` (reference count, the modules that use each, its
//!   state, `[permanent]` for one without an exit function), then
//!   `/sys/module/<name>/` (`initstate`, absent for a module built into
//!   the kernel, whose directory exists only when it has parameters or a
//!   version; `holders/`, `srcversion`, `version`, `taint`) and
//!   `/lib/modules/<release>/modules.builtin`;
//! - `firmware_class.path` (`/sys/module/firmware_class/parameters/path`).
//!
//! Invariants: [`Host::path`] never leaves the root: `..` components of a
//! node path are refused by the callers' checks (releases and names are
//! validated before they become path components) and dropped here.
//! Nothing here changes the system but [`Host::set_firmware_path`].

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use super::NodeError;
use super::snapshot::{Loaded, Snapshot, normalize, parse_proc_line};
use crate::validate::modules::module_name;

const OSRELEASE: &str = "/proc/sys/kernel/osrelease";
const SIG_ENFORCE: &str = "/sys/module/module/parameters/sig_enforce";
const TAINTED: &str = "/proc/sys/kernel/tainted";
const PROC_MODULES: &str = "/proc/modules";
const FIRMWARE_PATH: &str = "/sys/module/firmware_class/parameters/path";
const SYS_MODULE: &str = "/sys/module";

/// The node: where its `/` is.
#[derive(Clone, Debug)]
pub struct Host {
    root: PathBuf,
}

/// Whether the kernel checks module signatures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// `sig_enforce` is `Y`: an unsigned or untrusted module is refused.
    Enforced,
    /// `sig_enforce` is `N`: such a module loads and taints the kernel.
    NotEnforced,
    /// No `sig_enforce`: the kernel has no module signature support.
    Unsupported,
}

/// The kernel's modules cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{}: {source} (is /proc mounted?)", path.display())]
    Proc {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: not a line of /proc/modules: `{text}`", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        text: String,
    },
}

impl Host {
    /// A node whose `/` is `root` (a directory in tests, a chroot).
    pub fn new(root: impl Into<PathBuf>) -> Host {
        Host { root: root.into() }
    }

    /// The running system.
    pub fn system() -> Host {
        Host::new("/")
    }

    /// Where `/` is.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of the node path `p` (absolute, as the kernel sees it).
    pub fn path(&self, p: impl AsRef<Path>) -> PathBuf {
        let mut out = self.root.clone();
        for c in p.as_ref().components() {
            if let Component::Normal(n) = c {
                out.push(n);
            }
        }
        out
    }

    fn read(&self, p: &str) -> Option<String> {
        std::fs::read_to_string(self.path(p)).ok()
    }

    /// The running kernel's release.
    pub fn running_release(&self) -> Result<String, NodeError> {
        if let Some(r) = self.read(OSRELEASE) {
            return Ok(r.trim().to_string());
        }
        if self.root == Path::new("/") {
            let uts = rustix::system::uname();
            return Ok(uts.release().to_string_lossy().into_owned());
        }
        Err(NodeError::Input(format!(
            "the running kernel's release is unknown: {} cannot be read (pass --kernel-release)",
            self.path(OSRELEASE).display()
        )))
    }

    /// Whether the kernel enforces module signatures.
    pub fn enforcement(&self) -> Result<Enforcement, NodeError> {
        let path = self.path(SIG_ENFORCE);
        match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Enforcement::Unsupported),
            Err(source) => Err(NodeError::Io { path, source }),
            Ok(v) => match v.trim() {
                "Y" | "1" => Ok(Enforcement::Enforced),
                "N" | "0" => Ok(Enforcement::NotEnforced),
                other => Err(NodeError::Input(format!(
                    "{}: {other:?} is neither Y nor N",
                    path.display()
                ))),
            },
        }
    }

    /// `/proc/sys/kernel/tainted`, when readable.
    pub fn tainted(&self) -> Option<u64> {
        self.read(TAINTED)?.trim().parse().ok()
    }

    /// The kernel's modules now; `release` finds `modules.builtin`.
    pub fn snapshot(&self, release: &str) -> Result<Snapshot, HostError> {
        let proc = self.path(PROC_MODULES);
        let text = std::fs::read_to_string(&proc).map_err(|source| HostError::Proc {
            path: proc.clone(),
            source,
        })?;
        let mut loaded = std::collections::BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let mut m = parse_proc_line(line).ok_or_else(|| HostError::Line {
                path: proc.clone(),
                line: i + 1,
                text: line.to_string(),
            })?;
            self.read_sysfs(&mut m);
            loaded.insert(m.name.clone(), m);
        }
        let mut builtin = self.sysfs_builtin();
        builtin.extend(self.builtin_list(release));
        builtin.retain(|n| !loaded.contains_key(n));
        Ok(Snapshot { loaded, builtin })
    }

    /// Adds what `/sys/module/<name>/` says; missing files say nothing.
    fn read_sysfs(&self, m: &mut Loaded) {
        let dir = self.path(SYS_MODULE).join(&m.name);
        let read = |file: &str| {
            std::fs::read_to_string(dir.join(file))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        match read("initstate").as_deref() {
            Some("coming") => m.initialising = true,
            Some("going") => m.going = true,
            _ => {}
        }
        if let Ok(entries) = std::fs::read_dir(dir.join("holders")) {
            for e in entries.flatten() {
                m.holders
                    .insert(normalize(&e.file_name().to_string_lossy()));
            }
        }
        if m.refcnt.is_none() {
            m.refcnt = read("refcnt").and_then(|r| r.parse().ok());
        }
        m.srcversion = read("srcversion");
        m.version = read("version");
        m.taint = read("taint").unwrap_or_default();
    }

    /// `/sys/module/*` directories without `initstate`: built-in modules
    /// that have parameters or a version.
    fn sysfs_builtin(&self) -> BTreeSet<String> {
        let Ok(entries) = std::fs::read_dir(self.path(SYS_MODULE)) else {
            return BTreeSet::new();
        };
        entries
            .flatten()
            .filter(|e| !e.path().join("initstate").exists())
            .map(|e| normalize(&e.file_name().to_string_lossy()))
            .collect()
    }

    /// The names in `/lib/modules/<release>/modules.builtin`.
    fn builtin_list(&self, release: &str) -> BTreeSet<String> {
        let file = self
            .path("/lib/modules")
            .join(release)
            .join("modules.builtin");
        let text = std::fs::read_to_string(file).unwrap_or_default();
        text.lines()
            .filter_map(|l| module_name(l.trim().rsplit('/').next()?))
            .collect()
    }

    /// The file holding `firmware_class.path`, when the kernel has it.
    pub fn firmware_path_param(&self) -> Option<PathBuf> {
        let p = self.path(FIRMWARE_PATH);
        p.is_file().then_some(p)
    }

    /// `firmware_class.path`'s value (empty: not set).
    pub fn firmware_path(&self) -> Option<String> {
        self.read(FIRMWARE_PATH).map(|v| v.trim().to_string())
    }

    /// Sets `firmware_class.path`.
    pub fn set_firmware_path(&self, value: &str) -> Result<(), NodeError> {
        let path = self.path(FIRMWARE_PATH);
        std::fs::write(&path, value).map_err(|source| NodeError::Io { path, source })
    }

    /// `true` when `p` (a host path) exists and may be written: a
    /// read-only filesystem answers `EROFS`.
    pub fn writable(p: &Path) -> bool {
        p.is_dir() && rustix::fs::access(p, rustix::fs::Access::WRITE_OK).is_ok()
    }

    /// A symlink on the node followed once, inside the root: an absolute
    /// target is taken under the root (Debian's `build` link names
    /// `/usr/src/linux-headers-<release>`).
    pub fn follow(&self, p: &Path) -> PathBuf {
        match std::fs::read_link(p) {
            Ok(t) if t.is_absolute() => self.path(t),
            Ok(t) => p.parent().map(|d| d.join(&t)).unwrap_or(t),
            Err(_) => p.to_path_buf(),
        }
    }
}

/// One taint flag the kernel has set.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TaintFlag {
    pub bit: u32,
    pub letter: char,
    pub description: &'static str,
}

/// `kernel/panic.c`'s `taint_flags` (6.1): bit, letter when set, meaning.
const TAINTS: &[(u32, char, &str)] = &[
    (0, 'P', "proprietary module was loaded"),
    (1, 'F', "module was force loaded"),
    (2, 'S', "kernel running on an out of specification system"),
    (3, 'R', "module was force unloaded"),
    (4, 'M', "processor reported a Machine Check Exception"),
    (5, 'B', "bad page referenced or unexpected page flags"),
    (6, 'U', "taint requested by userspace"),
    (7, 'D', "kernel died recently (OOPS or BUG)"),
    (8, 'A', "ACPI table overridden by user"),
    (9, 'W', "kernel issued a warning"),
    (10, 'C', "staging driver was loaded"),
    (11, 'I', "workaround for a platform firmware bug applied"),
    (12, 'O', "externally-built (out-of-tree) module was loaded"),
    (13, 'E', "unsigned module was loaded"),
    (14, 'L', "soft lockup occurred"),
    (15, 'K', "kernel has been live patched"),
    (16, 'X', "auxiliary taint (distribution-defined)"),
    (
        17,
        'T',
        "kernel was built with the struct randomization plugin",
    ),
    (18, 'N', "an in-kernel test has been run"),
];

/// The flags of a taint value, lowest bit first; unknown bits are named
/// by number.
pub fn decode_taint(value: u64) -> Vec<TaintFlag> {
    (0..64u32)
        .filter(|bit| value & (1u64 << bit) != 0)
        .map(|bit| match TAINTS.iter().find(|t| t.0 == bit) {
            Some(&(bit, letter, description)) => TaintFlag {
                bit,
                letter,
                description,
            },
            None => TaintFlag {
                bit,
                letter: '?',
                description: "unknown to composer",
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::snapshot::State;

    #[test]
    fn taint_12288_is_out_of_tree_and_unsigned() {
        let flags = decode_taint(12288);
        let letters: String = flags.iter().map(|f| f.letter).collect();
        assert_eq!(letters, "OE");
        assert!(decode_taint(0).is_empty());
        assert_eq!(decode_taint(1 << 40)[0].letter, '?');
    }

    #[test]
    fn node_paths_stay_under_the_root() {
        let h = Host::new("/r");
        assert_eq!(h.path("/lib/modules"), PathBuf::from("/r/lib/modules"));
        assert_eq!(h.path("/../etc"), PathBuf::from("/r/etc"));
        assert_eq!(Host::new("/").path("/proc"), PathBuf::from("/proc"));
    }

    #[test]
    fn snapshot_reads_sysfs_and_tells_builtin_from_absent() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("proc")).unwrap();
        std::fs::write(
            r.join("proc/modules"),
            "hello_user 16384 0 - Live 0x0 (OE)\nhello_pcie 16384 1 hello_user, Live 0x0 (OE)\n",
        )
        .unwrap();
        let pcie = r.join("sys/module/hello_pcie");
        std::fs::create_dir_all(pcie.join("holders/hello_user")).unwrap();
        std::fs::write(pcie.join("initstate"), "live\n").unwrap();
        std::fs::write(pcie.join("srcversion"), "ABC\n").unwrap();
        std::fs::write(pcie.join("taint"), "OE\n").unwrap();
        std::fs::create_dir_all(r.join("sys/module/printk/parameters")).unwrap();
        std::fs::create_dir_all(r.join("lib/modules/6.1.0/")).unwrap();
        std::fs::write(
            r.join("lib/modules/6.1.0/modules.builtin"),
            "kernel/fs/ext4/ext4.ko\nkernel/drivers/x/a-b.ko\n",
        )
        .unwrap();

        let s = Host::new(r).snapshot("6.1.0").unwrap();
        let State::Loaded(p) = s.state("hello-pcie") else {
            panic!("{s:?}")
        };
        assert_eq!(p.srcversion.as_deref(), Some("ABC"));
        assert_eq!(p.taint, "OE");
        assert_eq!(p.holders.len(), 1);
        assert_eq!(s.state("printk"), State::Builtin);
        assert_eq!(s.state("a-b"), State::Builtin);
        assert_eq!(s.state("ext4"), State::Builtin);
        assert_eq!(s.state("nouveau"), State::Absent);
    }

    #[test]
    fn snapshot_without_proc_says_proc_is_needed() {
        let t = tempfile::tempdir().unwrap();
        let e = Host::new(t.path()).snapshot("6.1.0").unwrap_err();
        assert!(e.to_string().contains("is /proc mounted?"), "{e}");
        std::fs::create_dir_all(t.path().join("proc")).unwrap();
        std::fs::write(t.path().join("proc/modules"), "a 1 0 - Live 0x0\nbroken\n").unwrap();
        let e = Host::new(t.path()).snapshot("6.1.0").unwrap_err();
        assert!(
            e.to_string()
                .ends_with("modules:2: not a line of /proc/modules: `broken`"),
            "{e}"
        );
    }
}
