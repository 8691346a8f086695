//! Signing and verifying every module of a directory tree.
//!
//! Invariants: a module is rewritten atomically (temp file + rename, mode
//! kept), so a crash never leaves a half-written `.ko`; compressed modules
//! are refused (modules are signed uncompressed, then compressed); symlinks
//! are not followed.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::kmod::SigError;
use super::session::Session;
use super::verify::{Trusted, Verified, verify};

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {error}")]
    Sig { path: PathBuf, error: SigError },
    #[error(
        "{0}: compressed module; composer signs modules uncompressed (turn off CONFIG_MODULE_COMPRESS_* and compress after signing)"
    )]
    Compressed(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TreeError + '_ {
    move |source| TreeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Every `.ko` (and compressed `.ko.*`) file under `root`, sorted.
pub fn modules(root: &Path) -> Vec<PathBuf> {
    let (mut out, _) = walk(root);
    out.sort();
    out
}

/// Modules under `root`, and the entries that could not be read (path,
/// reason) rather than skipping them silently.
fn walk(root: &Path) -> (Vec<PathBuf>, Vec<(PathBuf, String)>) {
    let mut mods = Vec::new();
    let mut errors = Vec::new();
    for e in walkdir::WalkDir::new(root) {
        match e {
            Ok(e) if e.file_type().is_file() && is_module(e.path()) => mods.push(e.into_path()),
            Ok(_) => {}
            Err(err) => {
                let path = err
                    .path()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| root.to_path_buf());
                let reason = err
                    .io_error()
                    .map(|io| io.to_string())
                    .unwrap_or_else(|| err.to_string());
                errors.push((path, format!("cannot read: {reason}")));
            }
        }
    }
    mods.sort();
    (mods, errors)
}

fn is_module(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    name.ends_with(".ko")
        || [".ko.xz", ".ko.gz", ".ko.zst"]
            .iter()
            .any(|s| name.ends_with(s))
}

/// Signs every module under `root` with the session key; returns them.
pub fn sign_tree(root: &Path, session: &Session) -> Result<Vec<PathBuf>, TreeError> {
    let mods = modules(root);
    for path in &mods {
        if !path.to_string_lossy().ends_with(".ko") {
            return Err(TreeError::Compressed(path.clone()));
        }
        let bytes = fs::read(path).map_err(io_err(path))?;
        if !bytes.starts_with(b"\x7fELF") {
            return Err(TreeError::Sig {
                path: path.clone(),
                error: SigError::NotElf("no ELF header"),
            });
        }
        let signed = session
            .sign_module(&bytes)
            .map_err(|error| TreeError::Sig {
                path: path.clone(),
                error,
            })?;
        let mode = fs::metadata(path)
            .map_err(io_err(path))?
            .permissions()
            .mode();
        let tmp = path.with_extension("ko.composer-tmp");
        fs::write(&tmp, &signed).map_err(io_err(&tmp))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))?;
    }
    Ok(mods)
}

/// The verdict on one module.
pub struct Checked {
    pub path: PathBuf,
    pub result: Result<Verified, String>,
}

/// Verifies every module under each of `roots` (a file is checked itself),
/// on all cores; results keep the sorted order.
pub fn verify_paths(roots: &[PathBuf], trusted: &[Trusted]) -> Vec<Checked> {
    use rayon::prelude::*;
    let mut out = Vec::new();
    for root in roots {
        let files = if root.is_file() {
            vec![root.clone()]
        } else {
            let (mods, errors) = walk(root);
            for (path, reason) in errors {
                out.push(Checked {
                    path,
                    result: Err(reason),
                });
            }
            mods
        };
        let is_dir = root.is_dir();
        let checked: Vec<Checked> = files
            .into_par_iter()
            .map(|path| {
                let result = if !path.to_string_lossy().ends_with(".ko") && is_dir {
                    Err("compressed module: decompress to verify".to_string())
                } else {
                    match fs::read(&path) {
                        Err(e) => Err(e.to_string()),
                        Ok(bytes) => verify(&bytes, trusted).map_err(|e| e.to_string()),
                    }
                };
                Checked { path, result }
            })
            .collect();
        out.extend(checked);
    }
    out
}
