//! `composer new`: new definitions written from the templates kept in the
//! repository's `templates/` directory, embedded in the binary so an
//! installed composer works anywhere. Beside the build pipeline: it only
//! writes definitions that `defs` then loads like any other.
//!
//! Invariants:
//! - Everything is checked before anything is written: the arguments, the
//!   roots, and every conflict (a file that exists, a stage name or a
//!   Pkgfile variable already defined), all reported in one error.
//! - A file that exists is never overwritten: new files are created
//!   exclusively (`O_EXCL`). Edited files (Pkgfiles) are replaced by a
//!   rename, only if they still hold what was read, keeping their mode.
//! - All or nothing: when a write fails, the files created so far are
//!   removed and the edits undone.
//!
//! Imports from `defs` (templates, the Pkgfile reader), `exec::sources`
//! (finding and verifying a source archive as builds do) and
//! `validate::version` (the extension version formats Talos accepts).

pub mod archive;
pub mod kmod;
pub mod pkgfile;
pub mod source;

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::diag::display_path;

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// Arguments that cannot be used; nothing was written.
    #[error("{}", bullets("invalid arguments (nothing was written):", .0))]
    Invalid(Vec<String>),
    /// Things that already exist; nothing was written.
    #[error("{}", bullets("these already exist (nothing was written; choose another name or remove them):", .0))]
    Conflicts(Vec<String>),
    #[error("template {name}: {message}")]
    Template { name: String, message: String },
    #[error("{} changed while composer was writing; nothing was written", display_path(.0).display())]
    Changed(PathBuf),
    #[error("writing {}: {source} (nothing was written)", display_path(.path).display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn bullets(head: &str, items: &[String]) -> String {
    let mut s = head.to_string();
    for i in items {
        let _ = write!(s, "\n  - {i}");
    }
    s
}

/// One file to write.
#[derive(Clone, Debug)]
pub enum Change {
    /// A new file (its directories are made).
    Create { path: PathBuf, contents: String },
    /// An existing file, replaced by `after` if it still holds `before`;
    /// `added` says what for people (`foo_version, foo_sha256`).
    Edit {
        path: PathBuf,
        before: String,
        after: String,
        added: String,
    },
}

impl Change {
    pub fn path(&self) -> &Path {
        match self {
            Change::Create { path, .. } | Change::Edit { path, .. } => path,
        }
    }
}

/// Checked changes, ready to be written.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub changes: Vec<Change>,
}

/// What has been written so far, to undo it.
#[derive(Default)]
struct Done {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    edits: Vec<(PathBuf, String)>,
}

impl Plan {
    /// Writes every change, or none (see the module invariants).
    pub fn apply(&self) -> Result<(), ScaffoldError> {
        let mut done = Done::default();
        let result = self.write(&mut done);
        if result.is_err() {
            undo(done);
        }
        result
    }

    fn write(&self, done: &mut Done) -> Result<(), ScaffoldError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ScaffoldError::Io { path, source }
        };
        for change in &self.changes {
            if let Change::Create { path, contents } = change {
                let parent = path.parent().unwrap_or(Path::new("."));
                let mut missing: Vec<PathBuf> = parent
                    .ancestors()
                    .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
                    .map(Path::to_path_buf)
                    .collect();
                missing.reverse();
                for d in missing {
                    fs::create_dir(&d).map_err(io(&d))?;
                    done.dirs.push(d);
                }
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(io(path))?;
                done.files.push(path.clone());
                f.write_all(contents.as_bytes()).map_err(io(path))?;
            }
        }
        for change in &self.changes {
            if let Change::Edit {
                path,
                before,
                after,
                ..
            } = change
            {
                let now = fs::read_to_string(path).map_err(io(path))?;
                if now != *before {
                    return Err(ScaffoldError::Changed(path.clone()));
                }
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let tmp = path.with_file_name(format!(".{name}.composer-new"));
                let _ = fs::remove_file(&tmp);
                let written = (|| {
                    let mut f = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&tmp)?;
                    f.write_all(after.as_bytes())?;
                    f.sync_all()?;
                    fs::set_permissions(&tmp, fs::metadata(path)?.permissions())?;
                    fs::rename(&tmp, path)
                })();
                if let Err(e) = written {
                    let _ = fs::remove_file(&tmp);
                    return Err(io(path)(e));
                }
                done.edits.push((path.clone(), before.clone()));
            }
        }
        Ok(())
    }
}

fn undo(done: Done) {
    for (path, before) in done.edits.iter().rev() {
        let _ = fs::write(path, before);
    }
    for f in done.files.iter().rev() {
        let _ = fs::remove_file(f);
    }
    for d in done.dirs.iter().rev() {
        let _ = fs::remove_dir(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(path: PathBuf) -> Change {
        Change::Create {
            path,
            contents: "x\n".into(),
        }
    }

    #[test]
    fn a_failed_write_removes_what_was_created() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("blocker"), "a file").unwrap();
        let plan = Plan {
            changes: vec![
                create(t.path().join("new/dir/a.yaml")),
                create(t.path().join("blocker/b.yaml")),
            ],
        };
        let err = plan.apply().unwrap_err();
        assert!(matches!(err, ScaffoldError::Io { .. }), "{err}");
        let mut left: Vec<String> = fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["blocker"]);
    }

    #[test]
    fn an_edit_of_a_file_that_changed_is_refused_and_undone() {
        let t = tempfile::tempdir().unwrap();
        let pkgfile = t.path().join("Pkgfile");
        fs::write(&pkgfile, "changed\n").unwrap();
        let plan = Plan {
            changes: vec![
                create(t.path().join("a.yaml")),
                Change::Edit {
                    path: pkgfile.clone(),
                    before: "original\n".into(),
                    after: "edited\n".into(),
                    added: "x".into(),
                },
            ],
        };
        assert!(matches!(plan.apply(), Err(ScaffoldError::Changed(_))));
        assert!(!t.path().join("a.yaml").exists());
        assert_eq!(fs::read_to_string(&pkgfile).unwrap(), "changed\n");
    }

    #[test]
    fn existing_files_are_never_overwritten() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("a.yaml"), "mine\n").unwrap();
        let plan = Plan {
            changes: vec![create(t.path().join("a.yaml"))],
        };
        assert!(plan.apply().is_err());
        assert_eq!(
            fs::read_to_string(t.path().join("a.yaml")).unwrap(),
            "mine\n"
        );
    }
}
