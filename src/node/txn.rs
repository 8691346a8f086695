//! Changes to the node as a transaction: every step is taken by rename (or
//! by writing a whole new file and renaming it over the old one) and
//! records how to undo itself; [`Txn::rollback`] undoes the steps taken,
//! last first. Also kmod's `depmod`, which rewrites a module directory's
//! index.
//!
//! Invariants:
//! - A step is recorded only once it happened, so a rollback never undoes
//!   what was not done.
//! - The index files (`modules.*`) of a module directory are copied aside
//!   before depmod runs ([`Txn::guard_index`]) and put back on rollback,
//!   so a depmod that fails halfway leaves the old index.
//! - Staging directories live beside their destination (same filesystem,
//!   so renames are atomic) but never inside a directory depmod reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{NodeError, io};

type UndoStep = Box<dyn FnOnce() -> Result<(), String>>;

/// The steps taken so far, and how to undo them.
#[derive(Default)]
pub struct Txn {
    undo: Vec<(String, UndoStep)>,
    /// Staging directory of each parent directory, removed at the end.
    stagings: BTreeMap<PathBuf, PathBuf>,
    counter: usize,
}

fn describe(e: std::io::Error, p: &Path) -> String {
    format!("{}: {e}", p.display())
}

impl Txn {
    pub fn new() -> Txn {
        Txn::default()
    }

    /// A number not given before in this transaction, for names in
    /// staging directories.
    pub fn unique(&mut self) -> usize {
        self.counter += 1;
        self.counter
    }

    fn push(&mut self, what: String, step: UndoStep) {
        self.undo.push((what, step));
    }

    /// A staging directory in `parent` (one per parent, made once):
    /// removed on rollback after the steps that moved things into it are
    /// undone, and on commit.
    pub fn staging(&mut self, parent: &Path) -> Result<PathBuf, NodeError> {
        if let Some(d) = self.stagings.get(parent) {
            return Ok(d.clone());
        }
        let dir = tempfile::Builder::new()
            .prefix(".composer-")
            .tempdir_in(parent)
            .map_err(io(parent))?
            .keep();
        self.stagings.insert(parent.to_path_buf(), dir.clone());
        let d = dir.clone();
        self.push(
            format!("remove {}", d.display()),
            Box::new(move || crate::exec::fsops::remove_tree(&d).map_err(|e| e.to_string())),
        );
        Ok(dir)
    }

    /// Renames `from` to `to`; undone by renaming it back.
    pub fn rename(&mut self, from: &Path, to: &Path) -> Result<(), NodeError> {
        std::fs::rename(from, to).map_err(|source| NodeError::Io {
            path: from.to_path_buf(),
            source,
        })?;
        let (a, b) = (from.to_path_buf(), to.to_path_buf());
        self.push(
            format!("rename {} back", b.display()),
            Box::new(move || std::fs::rename(&b, &a).map_err(|e| describe(e, &b))),
        );
        Ok(())
    }

    /// Creates `dir` and its missing parents; undone by removing those
    /// created (when empty).
    pub fn create_dirs(&mut self, dir: &Path) -> Result<(), NodeError> {
        let made = super::create_dirs(dir)?;
        if !made.is_empty() {
            self.push(
                format!("remove {}", dir.display()),
                Box::new(move || {
                    super::remove_empty(&made);
                    Ok(())
                }),
            );
        }
        Ok(())
    }

    /// Makes `link` a symlink to `target`; undone by removing it.
    pub fn symlink(&mut self, target: &Path, link: &Path) -> Result<(), NodeError> {
        std::os::unix::fs::symlink(target, link).map_err(io(link))?;
        let l = link.to_path_buf();
        self.push(
            format!("remove {}", l.display()),
            Box::new(move || std::fs::remove_file(&l).map_err(|e| describe(e, &l))),
        );
        Ok(())
    }

    /// Replaces `path` with `bytes` by rename; undone by putting the old
    /// content back (or removing the file, when there was none).
    pub fn write(&mut self, path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
        let old = match std::fs::read(path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(NodeError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        super::state::write_atomically(path, bytes)?;
        let p = path.to_path_buf();
        self.push(
            format!("restore {}", p.display()),
            Box::new(move || match old {
                Some(b) => super::state::write_atomically(&p, &b).map_err(|e| e.to_string()),
                None => std::fs::remove_file(&p).map_err(|e| describe(e, &p)),
            }),
        );
        Ok(())
    }

    /// Runs `step` now, and `undo` on rollback.
    pub fn step(
        &mut self,
        what: &str,
        step: impl FnOnce() -> Result<(), NodeError>,
        undo: impl FnOnce() -> Result<(), String> + 'static,
    ) -> Result<(), NodeError> {
        step()?;
        self.push(what.to_string(), Box::new(undo));
        Ok(())
    }

    /// Copies the index files (`modules.*`) of `dir` into `backup` (which
    /// must exist); on rollback they are put back and index files made
    /// since are removed.
    pub fn guard_index(&mut self, dir: &Path, backup: &Path) -> Result<(), NodeError> {
        let mut saved = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with("modules.")
                && entry.file_type().is_ok_and(|t| t.is_file())
            {
                let to = backup.join(&name);
                std::fs::copy(entry.path(), &to).map_err(io(&to))?;
                saved.push(name);
            }
        }
        let (dir, backup) = (dir.to_path_buf(), backup.to_path_buf());
        self.push(
            format!("restore the index of {}", dir.display()),
            Box::new(move || {
                for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let name = entry.file_name();
                    if name.to_string_lossy().starts_with("modules.") && !saved.contains(&name) {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
                for name in &saved {
                    let to = dir.join(name);
                    std::fs::rename(backup.join(name), &to).map_err(|e| describe(e, &to))?;
                }
                Ok(())
            }),
        );
        Ok(())
    }

    /// Undoes every step taken, last first; returns what could not be
    /// undone.
    pub fn rollback(mut self) -> Vec<String> {
        let mut failed = Vec::new();
        while let Some((what, step)) = self.undo.pop() {
            if let Err(e) = step() {
                failed.push(format!("{what}: {e}"));
            }
        }
        failed
    }

    /// Keeps every step; the staging directories go.
    pub fn commit(mut self) {
        self.undo.clear();
        for d in self.stagings.values() {
            let _ = crate::exec::fsops::remove_tree(d);
        }
    }
}

/// An error after `txn` took steps: the steps are undone, and the error
/// says so (and what could not be undone).
pub fn undo(txn: Txn, e: NodeError) -> NodeError {
    let failed = txn.rollback();
    if failed.is_empty() {
        return e;
    }
    NodeError::Rollback(format!(
        "{e}; and undoing the steps taken failed, the node may be half-changed:\n  {}",
        failed.join("\n  ")
    ))
}

/// `depmod -b BASE RELEASE`: kmod's depmod, else busybox's.
pub fn depmod(base: &Path, release: &str) -> Result<(), NodeError> {
    let run = |cmd: &mut Command| cmd.arg("-b").arg(base).arg(release).output();
    let out = match run(&mut Command::new("depmod")) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            run(Command::new("busybox").arg("depmod")).map_err(|e| NodeError::Tool {
                tool: "depmod",
                message: format!(
                    "neither kmod's depmod nor busybox is on PATH ({e}): install kmod"
                ),
            })?
        }
        Err(e) => {
            return Err(NodeError::Tool {
                tool: "depmod",
                message: e.to_string(),
            });
        }
        Ok(o) => o,
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(NodeError::Tool {
            tool: "depmod",
            message: format!(
                "depmod -b {} {release} failed ({}){}",
                base.display(),
                out.status,
                if stderr.is_empty() {
                    String::new()
                } else {
                    format!(": {stderr}")
                }
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_undoes_renames_writes_and_index_changes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::write(p.join("a"), b"a").unwrap();
        std::fs::write(p.join("state"), b"old").unwrap();
        std::fs::create_dir(p.join("mods")).unwrap();
        std::fs::create_dir(p.join("backup")).unwrap();
        std::fs::write(p.join("mods/modules.dep"), b"old index").unwrap();
        let mut t = Txn::new();
        t.rename(&p.join("a"), &p.join("b")).unwrap();
        t.create_dirs(&p.join("x/y")).unwrap();
        t.write(&p.join("state"), b"new").unwrap();
        t.write(&p.join("fresh"), b"new").unwrap();
        t.guard_index(&p.join("mods"), &p.join("backup")).unwrap();
        std::fs::write(p.join("mods/modules.dep"), b"new index").unwrap();
        std::fs::write(p.join("mods/modules.alias"), b"new").unwrap();
        assert!(t.rollback().is_empty());
        assert_eq!(std::fs::read(p.join("a")).unwrap(), b"a");
        assert!(!p.join("b").exists() && !p.join("x").exists() && !p.join("fresh").exists());
        assert_eq!(std::fs::read(p.join("state")).unwrap(), b"old");
        assert_eq!(
            std::fs::read(p.join("mods/modules.dep")).unwrap(),
            b"old index"
        );
        assert!(!p.join("mods/modules.alias").exists());
    }
}
