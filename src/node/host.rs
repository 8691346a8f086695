//! What the running kernel says about its modules, read from a root
//! directory: `/` on a node, a temporary tree in tests.
//!
//! - `<root>/proc/modules`: every loaded module, its reference count, the
//!   modules that use it ("used by"), its state (`Live`, `Loading`,
//!   `Unloading`) and `[permanent]` for a module without an exit function;
//! - `<root>/sys/module/<name>/`: `initstate` (absent for a module built
//!   into the kernel, whose directory exists only when it has parameters
//!   or a version), `holders/`, `srcversion`, `version`, `taint`;
//! - `<root>/lib/modules/<release>/modules.builtin`: the modules built into
//!   the kernel (when the file exists).
//!
//! Invariants: everything is read once into a [`Snapshot`] that later
//! decisions use (plans are pure functions of it); names are in the
//! kernel's form (`-` as `_`); nothing here changes the system.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where the kernel's view of its modules is read from.
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
}

/// The kernel's name for a module: `-` as `_` (`hello-user` is `hello_user`).
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// A module in the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Loaded {
    pub name: String,
    /// Still initialising (`Loading` / `coming`).
    pub initialising: bool,
    /// Being unloaded (`Unloading` / `going`).
    pub going: bool,
    /// No exit function: the kernel never unloads it.
    pub permanent: bool,
    /// References held on it (its users count one each); `None` when the
    /// kernel cannot unload modules at all.
    pub refcnt: Option<u64>,
    /// The modules that use it.
    pub holders: BTreeSet<String>,
    /// `/sys/module/<name>/srcversion`, when the module has one.
    pub srcversion: Option<String>,
    /// `/sys/module/<name>/version` (`MODULE_VERSION`).
    pub version: Option<String>,
    /// `/sys/module/<name>/taint`: `O` out-of-tree, `E` unsigned or of an
    /// unknown key, ...
    pub taint: String,
}

impl Loaded {
    /// References beyond those of the modules that use it: held by
    /// processes (an open device or file), which no unload can drop.
    pub fn foreign_refs(&self) -> u64 {
        self.refcnt
            .unwrap_or(0)
            .saturating_sub(self.holders.len() as u64)
    }
}

/// A module's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State<'a> {
    Absent,
    /// Built into the kernel: nothing to load or unload.
    Builtin,
    Loaded(&'a Loaded),
}

/// The kernel's modules at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub loaded: BTreeMap<String, Loaded>,
    pub builtin: BTreeSet<String>,
}

impl Snapshot {
    pub fn state(&self, name: &str) -> State<'_> {
        let name = normalize(name);
        match self.loaded.get(&name) {
            Some(l) => State::Loaded(l),
            None if self.builtin.contains(&name) => State::Builtin,
            None => State::Absent,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{}: {source} (is /proc mounted? loading modules needs it)", path.display())]
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
    /// The running system (`/`).
    pub fn system() -> Host {
        Host::at("/")
    }

    /// A system whose `/proc`, `/sys` and `/lib/modules` are under `root`.
    pub fn at(root: impl Into<PathBuf>) -> Host {
        Host { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads the kernel's modules; `release` finds `modules.builtin`.
    pub fn snapshot(&self, release: &str) -> Result<Snapshot, HostError> {
        let proc = self.root.join("proc/modules");
        let text = std::fs::read_to_string(&proc).map_err(|source| HostError::Proc {
            path: proc.clone(),
            source,
        })?;
        let mut loaded = BTreeMap::new();
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

    fn sysfs(&self, name: &str) -> PathBuf {
        self.root.join("sys/module").join(name)
    }

    /// Adds what `/sys/module/<name>/` says; missing files say nothing.
    fn read_sysfs(&self, m: &mut Loaded) {
        let dir = self.sysfs(&m.name);
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
        let Ok(entries) = std::fs::read_dir(self.root.join("sys/module")) else {
            return BTreeSet::new();
        };
        entries
            .flatten()
            .filter(|e| !e.path().join("initstate").exists())
            .map(|e| normalize(&e.file_name().to_string_lossy()))
            .collect()
    }

    /// The names in `lib/modules/<release>/modules.builtin`.
    fn builtin_list(&self, release: &str) -> BTreeSet<String> {
        let file = self
            .root
            .join("lib/modules")
            .join(release)
            .join("modules.builtin");
        let text = std::fs::read_to_string(file).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let base = l.trim().rsplit('/').next()?;
                crate::validate::modules::module_name(base)
            })
            .collect()
    }
}

/// One line of `/proc/modules`:
/// `name size refcnt used,by, state address [(taint)]`, where "used by" is
/// `-` for none and may hold `[permanent]` and `[unsafe]`, and refcnt is
/// `-` when the kernel cannot unload modules.
pub fn parse_proc_line(line: &str) -> Option<Loaded> {
    let mut words = line.split_whitespace();
    let name = normalize(words.next()?);
    let _size: u64 = words.next()?.parse().ok()?;
    let refcnt = match words.next()? {
        "-" => None,
        n => Some(n.parse().ok()?),
    };
    let used_by = words.next()?;
    let state = words.next()?;
    let mut m = Loaded {
        name,
        refcnt,
        initialising: state == "Loading",
        going: state == "Unloading",
        ..Loaded::default()
    };
    for user in used_by.split(',').filter(|u| !u.is_empty() && *u != "-") {
        match user {
            "[permanent]" => m.permanent = true,
            "[unsafe]" => {}
            u => {
                m.holders.insert(normalize(u));
            }
        }
    }
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_modules_line_gives_refcnt_users_and_state() {
        let m =
            parse_proc_line("hello_pcie 16384 1 hello_user, Live 0xffffffffc0367000 (OE)").unwrap();
        assert_eq!(m.name, "hello_pcie");
        assert_eq!(m.refcnt, Some(1));
        assert_eq!(m.holders, BTreeSet::from(["hello_user".to_string()]));
        assert!(!m.initialising && !m.going && !m.permanent);
        assert_eq!(m.foreign_refs(), 0);

        let m = parse_proc_line("dummy 16384 0 - Live 0x0").unwrap();
        assert!(m.holders.is_empty());
        let m = parse_proc_line("x 4096 2 [permanent], Unloading 0x0").unwrap();
        assert!(m.permanent && m.going);
        assert_eq!(m.foreign_refs(), 2);
        assert!(parse_proc_line("x 4096").is_none());
        assert!(parse_proc_line("x big 0 - Live 0x0").is_none());
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

        let s = Host::at(r).snapshot("6.1.0").unwrap();
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
        let e = Host::at(t.path()).snapshot("6.1.0").unwrap_err();
        assert!(e.to_string().contains("is /proc mounted?"), "{e}");
    }
}
