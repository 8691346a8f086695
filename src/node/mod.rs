//! The node side: kernel module images installed on the machine that runs
//! them (`composer kmod install|remove|status`), the way Forklift, KMM's
//! worker and Talos' extensions put drivers on a node, with the
//! signatures checked before anything is written; their modules loaded in
//! dependency order and unloaded dependants first with the kernel's own
//! calls (`composer kmod load|unload`, `install --load`); the systemd unit
//! that does both at boot (`composer kmod unit`).
//!
//! - `host`: the node as the kernel shows it (release, `sig_enforce`,
//!   taint, `firmware_class.path`, a [`Snapshot`] of its modules), every
//!   path under an injectable root.
//! - `snapshot`: the kernel's modules at one moment (loaded, built in).
//! - `source`: references (`${KERNEL_FULL_VERSION}` substituted), images
//!   read with composer's own readers into a cache per kernel release
//!   (used when the image cannot be had), and where an image keeps its
//!   modules and firmware.
//! - `kernel`: what the node's kernel accepts: the certificates it trusts,
//!   its vermagic, the symbols it exports, the modules it has.
//! - `verify`: every module of an image checked against that kernel.
//! - `state`: `installed.json` (what is installed where), the lock.
//! - `txn`: staged changes applied by rename, undone in reverse order.
//! - `install`: an install checked: images read and verified, conflicts
//!   found, before anything is written.
//! - `apply`: installs and removals applied as one transaction each.
//! - `index`: module directories' `modules.dep` and the load order it
//!   gives; by default those of the images `installed.json` lists, then
//!   the system's.
//! - `syscall`: `finit_module(2)`, `init_module(2)`, `delete_module(2)`,
//!   their refusals in plain words.
//! - `load`, `unload`: plans made from an index and a snapshot, then
//!   carried out in order, stopping at the first refusal.
//! - `request`: a load or unload asked on the command line, from the
//!   node's index to the kernel's calls.
//! - `unit`: the boot-time systemd unit.
//!
//! Invariants:
//! - Nothing on the node is written before every module of every image
//!   given passed verification; a refused install leaves the node (and the
//!   cache) as it was.
//! - An install or removal is all or nothing: files are staged beside
//!   their destination and renamed into place; on any failure (depmod
//!   included) every step taken is undone, and `installed.json` is
//!   replaced by rename, last.
//! - Paths recorded in `installed.json` are node paths (as the kernel and
//!   modprobe see them), never paths under a test root.
//! - Load and unload plans are pure functions of an index and a snapshot;
//!   only carrying them out calls the kernel. Loading what is loaded from
//!   the same build, and unloading what is not loaded, change nothing.

pub mod apply;
pub mod host;
pub mod index;
pub mod install;
pub mod kernel;
pub mod load;
pub mod request;
pub mod snapshot;
pub mod source;
pub mod state;
pub mod syscall;
pub mod txn;
pub mod unit;
pub mod unload;
pub mod verify;

use std::path::{Path, PathBuf};

pub use apply::{RemoveOptions, remove};
pub use host::Host;
pub use install::{InstallOptions, install};
pub use snapshot::Snapshot;
pub use state::{Installed, InstalledModule};

/// Why the node was left alone.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Input(String),
    #[error("image `{reference}`: {message}")]
    Image { reference: String, message: String },
    #[error("{}", refused_text(.0))]
    Refused(Vec<String>),
    #[error("{tool}: {message}")]
    Tool { tool: &'static str, message: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    State { path: PathBuf, message: String },
    #[error("{0}")]
    Rollback(String),
    #[error(transparent)]
    Host(#[from] host::HostError),
    #[error(transparent)]
    Load(#[from] load::LoadError),
}

fn refused_text(images: &[String]) -> String {
    format!("refused, nothing was written:\n{}", images.join("\n"))
}

/// A line of progress for the command to print.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    Info(String),
    Warning(String),
}

pub(crate) fn io(path: &Path) -> impl Fn(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` and its missing parents; returns those it created,
/// outermost first, so a failure can remove them again.
pub(crate) fn create_dirs(dir: &Path) -> Result<Vec<PathBuf>, NodeError> {
    let mut missing = Vec::new();
    let mut p = Some(dir);
    while let Some(d) = p {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        p = d.parent();
    }
    missing.reverse();
    for d in &missing {
        match std::fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                remove_empty(&missing);
                return Err(NodeError::Io {
                    path: d.clone(),
                    source,
                });
            }
        }
    }
    Ok(missing)
}

/// Removes the directories `create_dirs` made, innermost first, as long as
/// they are empty.
pub(crate) fn remove_empty(created: &[PathBuf]) {
    for d in created.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
}

/// A name for files and directories: letters, digits, `.`, `_`, `+`, `-`,
/// not starting with `.`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-');
    if name.is_empty() || name.starts_with('.') || !name.chars().all(ok) || name.len() > 128 {
        return Err(format!(
            "`{name}` is not a usable image name: letters, digits, `.`, `_`, `+` and `-`, not starting with `.`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_dirs_are_listed_and_removed_again() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a/b/c");
        let made = create_dirs(&deep).unwrap();
        assert_eq!(
            made,
            vec![d.path().join("a"), d.path().join("a/b"), deep.clone()]
        );
        assert!(create_dirs(&deep).unwrap().is_empty());
        remove_empty(&made);
        assert!(!d.path().join("a").exists());
    }

    #[test]
    fn names_cannot_leave_their_directory() {
        assert!(check_name("hello-kmod").is_ok());
        for bad in ["", ".", "..", "a/b", ".hidden", "a b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
