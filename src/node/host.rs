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
//! - the loaded modules (`/proc/modules`) and `/sys/module/<name>`;
//! - `firmware_class.path` (`/sys/module/firmware_class/parameters/path`).
//!
//! Invariant: [`Host::path`] never leaves the root: `..` components of a
//! node path are refused by the callers' checks (releases and names are
//! validated before they become path components) and dropped here.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use super::NodeError;

const OSRELEASE: &str = "/proc/sys/kernel/osrelease";
const SIG_ENFORCE: &str = "/sys/module/module/parameters/sig_enforce";
const TAINTED: &str = "/proc/sys/kernel/tainted";
const PROC_MODULES: &str = "/proc/modules";
const FIRMWARE_PATH: &str = "/sys/module/firmware_class/parameters/path";

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

/// One line of `/proc/modules`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedModule {
    /// `Live`, `Loading` or `Unloading`.
    pub state: String,
    /// The modules using it.
    pub used_by: Vec<String>,
}

impl Host {
    pub fn new(root: impl Into<PathBuf>) -> Host {
        Host { root: root.into() }
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

    /// The modules `/proc/modules` lists, by name.
    pub fn loaded_modules(&self) -> BTreeMap<String, LoadedModule> {
        let text = self.read(PROC_MODULES).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let used_by = f
                    .get(3)?
                    .split(',')
                    .filter(|s| !s.is_empty() && *s != "-")
                    .map(str::to_string)
                    .collect();
                let state = f.get(4).unwrap_or(&"Live").to_string();
                Some((f[0].to_string(), LoadedModule { state, used_by }))
            })
            .collect()
    }

    /// `/sys/module/<name>` exists (loaded, or built in with parameters).
    pub fn sys_module(&self, name: &str) -> bool {
        self.path("/sys/module").join(name).is_dir()
    }

    /// `/sys/module/<name>/taint` (`OE`, or empty), when loaded.
    pub fn module_taint(&self, name: &str) -> Option<String> {
        let p = self.path("/sys/module").join(name).join("taint");
        std::fs::read_to_string(p)
            .ok()
            .map(|t| t.trim().to_string())
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
    fn proc_modules_lines_give_state_and_users() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("proc")).unwrap();
        std::fs::write(
            d.path().join("proc/modules"),
            "a 16384 1 b, Live 0x0 (OE)\nb 16384 0 - Loading 0x0\n",
        )
        .unwrap();
        let m = Host::new(d.path()).loaded_modules();
        assert_eq!(m["a"].used_by, vec!["b".to_string()]);
        assert_eq!(m["b"].state, "Loading");
        assert!(m["b"].used_by.is_empty());
    }
}
