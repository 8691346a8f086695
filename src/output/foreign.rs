//! Modules for a kernel the build did not make (a distribution's kernel,
//! built against its headers): no signing session signed them, so the
//! last step before export decides, as the user asked, how they leave.
//!
//! - [`Signing::Key`]: a copy of the target's tree with every module
//!   signed by the user's key (the key a node trusts: enrolled with MOK,
//!   or in the kernel's keyring). The cache keeps the unsigned build: the
//!   key touches only this copy, so another key never rebuilds anything.
//! - [`Signing::Unsigned`]: the modules leave unsigned, as asked.
//!
//! Invariants: the cached output is never modified; the signed copy is
//! made in a directory the caller owns and moves into place, so a failure
//! leaves nothing half-signed in the output.

use std::path::{Path, PathBuf};

use super::OutputError;
use crate::exec::fsops;
use crate::sign::Session;
use crate::sign::tree::{modules, sign_tree};

/// How modules outside a signing session leave the build.
pub enum Signing<'a> {
    /// Signed with this key (not a session's: the user's own).
    Key(&'a Session),
    /// Left unsigned, as asked.
    Unsigned,
}

/// The modules of `tree` (any `.ko`, compressed or not), as paths
/// relative to it.
pub fn modules_of(tree: &Path) -> Vec<PathBuf> {
    modules(tree)
        .into_iter()
        .filter_map(|p| p.strip_prefix(tree).ok().map(Path::to_path_buf))
        .collect()
}

/// Copies `tree` to `dest` (created; must not exist) and signs every
/// module of the copy with `session`; returns how many were signed.
pub fn signed_copy(tree: &Path, dest: &Path, session: &Session) -> Result<usize, OutputError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| OutputError::Io { path, source }
    };
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    fsops::copy_dir_contents(tree, dest).map_err(|e| OutputError::Input {
        path: dest.to_path_buf(),
        message: e.to_string(),
    })?;
    let signed = sign_tree(dest, session).map_err(|e| OutputError::Input {
        path: tree.to_path_buf(),
        message: format!("signing: {e}"),
    })?;
    Ok(signed.len())
}
